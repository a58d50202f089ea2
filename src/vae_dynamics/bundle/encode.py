"""Encoding scans with an exported encoder: what a MONAI bundle of this package runs (configs/inference.json).

Portable: it imports only torch, NumPy and the standard library, so that the bundle carries this very file
(as scripts/encode.py) and runs without vae_dynamics installed. The preprocessing is the bundle's
scripts/transforms.py (the package's data/transforms.py), passed in as `transform`.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

CODES_FILE = "codes.csv"


def subject_items(input_dir: str | os.PathLike[str], modalities: Sequence[str]) -> list[dict[str, str]]:
    """The subjects of a BraTS-layout folder: one folder per subject holding <subject>-<modality>.nii.gz
    (or .nii) for every modality; folders without all of them are left out (and named on stderr)."""
    root = Path(input_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"input_dir {root} is not a folder")
    items, skipped = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = {}
        for key in modalities:
            found = [folder / f"{folder.name}-{key}{ext}" for ext in (".nii.gz", ".nii")]
            hit = next((f for f in found if f.is_file()), None)
            if hit is not None:
                files[key] = str(hit)
        if len(files) == len(modalities):
            items.append({"subject_id": folder.name, **files})
        else:
            skipped.append(folder.name)
    if skipped:
        print(f"left out (a modality is missing): {', '.join(skipped)}", file=sys.stderr)
    if not items:
        names = ", ".join(f"<subject>-{m}.nii.gz" for m in modalities)
        raise FileNotFoundError(f"{root}: no subject folder holds all of {names}")
    return items


def code_row(subject_id: str, mu: torch.Tensor, logvar: torch.Tensor) -> dict[str, Any]:
    """One row of a codes table: subject_id, mu_0.., logvar_0.. (the columns of `vae-dynamics encode`)."""
    return {
        "subject_id": subject_id,
        **{f"mu_{i}": float(v) for i, v in enumerate(mu.tolist())},
        **{f"logvar_{i}": float(v) for i, v in enumerate(logvar.tolist())},
    }


def encode_scans(
    encoder: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    transform: Callable[[dict[str, Any]], dict[str, Any]],
    items: Sequence[dict[str, str]],
    output_dir: str | os.PathLike[str],
    device: str | torch.device = "cpu",
) -> Path:
    """μ and log σ² of each scan (float32) -> <output_dir>/codes.csv, written beside and renamed into
    place. `encoder` maps images [n, 4, 128³] to (μ, log σ²) [n, d]: the TorchScript encoder of a bundle
    or the model's own encoder."""
    rows = []
    for item in items:
        image = torch.as_tensor(transform(dict(item))["image"], dtype=torch.float32)
        with torch.inference_mode():
            mu, logvar = encoder(image[None].to(device))
        rows.append(code_row(item["subject_id"], mu[0].float().cpu(), logvar[0].float().cpu()))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path, tmp = out / CODES_FILE, out / f".{CODES_FILE}.tmp"
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    print(f"{len(rows)} scans encoded -> {path}")
    return path
