"""How much the crop box of new scans without seg differs from the training crop (image ∪ seg).

    python bench/seg_free_crop.py [--subjects 20] [--out bench/results/seg_free_crop.json]

Inference crops to the non-zero image when a scan has no seg (data/transforms.ForegroundMaskd); training
crops to image ∪ tumour. This script generates demo subjects, computes both foreground boxes (voxels at
1 mm RAS, before the 2 mm margin) and the largest difference of any box face, and the tumour voxels that
lie outside the non-zero image.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from vae_dynamics.config import config_path, load_config
from vae_dynamics.data import SEG_KEY
from vae_dynamics.data.demo import generate
from vae_dynamics.io import write_json


def box(mask: torch.Tensor) -> list[int]:
    idx = torch.nonzero(mask[0])
    return [*idx.min(0).values.tolist(), *(idx.max(0).values + 1).tolist()]


def main(argv: list[str] | None = None) -> None:
    from monai.transforms import (
        Compose,
        ConcatItemsd,
        EnsureChannelFirstd,
        LoadImaged,
        Orientationd,
        Spacingd,
    )

    from vae_dynamics.data.transforms import RAS_LABELS

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subjects", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "seg_free_crop.json"))
    args = parser.parse_args(argv)
    data = load_config(config_path("exp2")).data
    mods = list(data.modalities)
    # The preprocessing up to the foreground mask (data/transforms.build_transforms), on image and seg.
    load = Compose(
        [
            LoadImaged(keys=[*mods, SEG_KEY], image_only=True),
            EnsureChannelFirstd(keys=[*mods, SEG_KEY]),
            ConcatItemsd(keys=mods, name="image"),
            Orientationd(keys=["image", SEG_KEY], axcodes="RAS", labels=RAS_LABELS),
            Spacingd(keys="image", pixdim=data.spacing),
            Spacingd(keys=SEG_KEY, pixdim=data.spacing, mode="nearest"),
        ]
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp), args.subjects, seed=0, workers=args.workers)
        for subject in sorted(p for p in Path(tmp).iterdir() if p.is_dir()):
            d = load({k: str(subject / f"{subject.name}-{k}.nii.gz") for k in [*mods, SEG_KEY]})
            image = (d["image"] != 0).any(0, keepdim=True)
            with_seg, without = box(image | (d[SEG_KEY] > 0)), box(image)
            outside = int(((d[SEG_KEY] > 0) & ~image).sum())
            rows.append(
                {
                    "subject_id": subject.name,
                    "box_with_seg": with_seg,
                    "box_without_seg": without,
                    "max_face_difference_voxels": int(np.abs(np.subtract(with_seg, without)).max()),
                    "tumour_voxels_outside_image": outside,
                }
            )
    result = {
        "setup": f"{args.subjects} demo subjects (seed 0), boxes in voxels at {data['spacing']} mm, RAS",
        "max_face_difference_voxels": max(r["max_face_difference_voxels"] for r in rows),
        "subjects_with_a_different_box": sum(r["max_face_difference_voxels"] > 0 for r in rows),
        "rows": rows,
    }
    write_json(result, args.out)
    print({k: v for k, v in result.items() if k != "rows"})


if __name__ == "__main__":
    main()
