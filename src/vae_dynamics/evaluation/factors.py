"""Subject factors measured from each segmentation at native resolution (+ the demo's ground truth).

    vae-dynamics factors --subjects results/index/subjects.csv \
        --out results/factors/factors.csv [--demo-factors results/demo/data/factors.csv]

Per subject: ET, NETC, SNFH and whole-tumour (WT = any label) volumes in mm³ and the WT centroid in
RAS millimetres (world coordinates of the NIfTI affine). A subject without tumour gets volumes 0 and
an empty centroid. Demo ground-truth factors are joined on subject_id with the prefix `gt_`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

from vae_dynamics.data import TUMOUR_LABELS, read_subject_table
from vae_dynamics.data.index import load_image
from vae_dynamics.io import write_csv
from vae_dynamics.parallel import map_in_processes

MEASURED = [
    "et_mm3",
    "netc_mm3",
    "snfh_mm3",
    "wt_mm3",
    "wt_centroid_x_mm",
    "wt_centroid_y_mm",
    "wt_centroid_z_mm",
]
GT_PREFIX = "gt_"


def measure_segmentation(seg_path: str | os.PathLike[str]) -> dict[str, float]:
    """Tumour volumes (mm³) and whole-tumour centroid (RAS mm) of one BraTS segmentation file."""
    img = load_image(seg_path)
    seg = np.asarray(img.dataobj).astype(np.int16)
    voxel_mm3 = float(abs(np.linalg.det(img.affine[:3, :3])))
    out = {f"{name}_mm3": float(np.sum(seg == label)) * voxel_mm3 for name, label in TUMOUR_LABELS.items()}
    tumour = np.argwhere(seg > 0)
    out["wt_mm3"] = float(len(tumour)) * voxel_mm3
    centroid = img.affine[:3, :3] @ tumour.mean(axis=0) + img.affine[:3, 3] if len(tumour) else [np.nan] * 3
    out.update({f"wt_centroid_{axis}_mm": float(v) for axis, v in zip("xyz", centroid)})
    return out


def _measure_row(subject_id: str, seg_path: str) -> dict[str, Any]:
    try:
        return {"subject_id": subject_id, **measure_segmentation(seg_path)}
    except Exception as exc:
        raise RuntimeError(f"subject {subject_id}: cannot measure segmentation {seg_path}: {exc}") from exc


def subject_factors(
    subjects_csv: str | os.PathLike[str],
    out_csv: str | os.PathLike[str] | None = None,
    demo_factors_csv: str | os.PathLike[str] | None = None,
    workers: int = 1,
) -> pd.DataFrame:
    """One row per indexed subject: measured factors, and the demo's `gt_*` factors when given."""
    subjects = read_subject_table(subjects_csv)
    for column in ("subject_id", "seg"):
        if column not in subjects.columns:
            raise ValueError(f"{subjects_csv}: missing column {column!r}")
    ids, segs = subjects["subject_id"].tolist(), subjects["seg"].tolist()
    rows = map_in_processes(_measure_row, ids, segs, workers=workers)
    table = pd.DataFrame(rows, columns=["subject_id", *MEASURED])
    if demo_factors_csv is not None:
        gt = read_subject_table(demo_factors_csv)
        if "subject_id" not in gt.columns:
            raise ValueError(f"{demo_factors_csv}: missing column 'subject_id'")
        gt = gt.rename(columns={c: f"{GT_PREFIX}{c}" for c in gt.columns if c != "subject_id"})
        table = table.merge(gt, on="subject_id", how="left")
    if out_csv is not None:
        write_csv(table, out_csv)
    return table
