"""index_subjects: find BraTS-MEN subject folders, validate every file, write subjects.csv/rejected.csv.

vae-dynamics index --root /data/BraTS_Men_Train --out-dir results/index --workers 8
"""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from tqdm import tqdm

from vae_dynamics.data import FILE_KEYS, MODALITIES, SEG_KEY, SEG_LABELS
from vae_dynamics.io import write_csv
from vae_dynamics.parallel import process_pool

SUBJECT_DIR = re.compile(r"BraTS-[A-Za-z]+-\d+-\d+")  # used with fullmatch ($ accepts a trailing newline)
# A volume above this many voxels is rejected from its header, before it is read (BraTS: 240·240·155 =
# 8.9 M); reading a huge file would exhaust a pool worker's memory and fail the whole index.
MAX_VOXELS = 2**28
SUBJECT_COLUMNS = ["subject_id", *FILE_KEYS]
REJECTED_COLUMNS = ["subject_id", "file", "reason"]


class NoValidSubjectsError(RuntimeError):
    """No valid subject could be indexed (or the root does not exist)."""


def find_subject_dirs(root: Path) -> list[Path]:
    """Subject folders directly below `root` or nested one level deeper, sorted by name."""
    found = [p for p in root.glob("*") if p.is_dir() and SUBJECT_DIR.fullmatch(p.name)]
    found += [p for p in root.glob("*/*") if p.is_dir() and SUBJECT_DIR.fullmatch(p.name)]
    return sorted(found, key=lambda p: (p.name, str(p)))


def subject_files(subject_dir: Path) -> dict[str, Path | None]:
    """The expected file of each modality and seg (.nii.gz preferred, .nii accepted), None if absent."""
    files: dict[str, Path | None] = {}
    for key in FILE_KEYS:
        candidates = [subject_dir / f"{subject_dir.name}-{key}{ext}" for ext in (".nii.gz", ".nii")]
        files[key] = next((c for c in candidates if c.is_file()), None)
    return files


def header_problem(shape: tuple[int, ...], affine: np.ndarray | None) -> str | None:
    """Why a NIfTI header cannot be a subject's volume (None if it can), checked before reading data."""
    if len(shape) != 3:
        return f"expected a 3D volume, got shape {tuple(shape)}"
    if min(shape) < 1:
        return f"empty volume (shape {tuple(shape)})"
    if int(np.prod(shape, dtype=np.int64)) > MAX_VOXELS:
        return (
            f"shape {tuple(shape)} has more than {MAX_VOXELS} voxels (not a brain MRI at BraTS resolution?)"
        )
    if affine is None or not np.isfinite(affine).all():
        return "the affine is missing or not finite"
    det = float(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3]))
    if abs(det) < 1e-6:
        return f"singular affine (voxel volume {abs(det):.3g} mm³): the voxels have no extent in space"
    return None


def validate_subject(subject_dir: Path) -> tuple[dict | None, dict | None]:
    """(subjects.csv row, None) if the subject is valid, else (None, rejected.csv row with one reason)."""
    sid = subject_dir.name
    files = subject_files(subject_dir)

    def reject(key: str, reason: str) -> tuple[None, dict]:
        name = files.get(key).name if files.get(key) else f"{sid}-{key}.nii.gz"
        return None, {"subject_id": sid, "file": name, "reason": reason}

    for key, path in files.items():
        if path is None:
            return reject(key, f"missing file (expected {sid}-{key}.nii.gz or .nii in {subject_dir})")
    reference = None
    for key in FILE_KEYS:
        path = files[key]
        try:
            img = nib.load(path)  # the header only
        except Exception as exc:  # noqa: BLE001 - any read failure is a rejection reason
            return reject(key, f"unreadable: {type(exc).__name__}: {exc}")
        problem = header_problem(img.shape, img.affine)
        if problem:
            return reject(key, problem)
        try:
            data = np.asanyarray(img.dataobj)  # reads to the end: a truncated gzip fails here
        except Exception as exc:  # noqa: BLE001
            return reject(key, f"unreadable: {type(exc).__name__}: {exc}")
        if reference is None:
            reference = (key, data.shape, img.affine)
        elif data.shape != reference[1]:
            return reject(key, f"shape {data.shape} differs from {reference[0]} shape {reference[1]}")
        elif not np.allclose(img.affine, reference[2], atol=1e-3):
            return reject(key, f"affine differs from {reference[0]} affine")
        if key == SEG_KEY:
            labels = np.unique(data)
            bad = sorted(set(labels.tolist()) - set(SEG_LABELS))
            if bad:
                return reject(key, f"unexpected seg labels {bad} (allowed {list(SEG_LABELS)})")
        elif np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
            n_bad = int((~np.isfinite(data)).sum())
            return reject(key, f"{n_bad} non-finite image values (NaN/inf)")
    row = {"subject_id": sid, **{k: str(files[k].resolve()) for k in FILE_KEYS}}
    return row, None


def index_subjects(root: str | Path, out_dir: str | Path, workers: int = 1, progress: bool = True):
    """Validate all subjects below `root`; write subjects.csv and rejected.csv; return both tables."""
    root = Path(root)
    if not root.is_dir():
        raise NoValidSubjectsError(f"data root {root} does not exist or is not a directory")
    dirs = find_subject_dirs(root)
    if not dirs:
        raise NoValidSubjectsError(
            f"no subject folders (named like BraTS-MEN-00000-000) found in {root} or one level below"
        )
    bar = dict(total=len(dirs), desc="index_subjects", unit="subject", disable=not progress)
    if workers > 1:
        with process_pool(workers) as pool:
            results = list(tqdm(pool.map(validate_subject, dirs, chunksize=4), **bar))
    else:
        results = [validate_subject(d) for d in tqdm(dirs, **bar)]
    valid = [r for r, _ in results if r is not None]
    rejected = [x for _, x in results if x is not None]
    seen: set[str] = set()
    unique = []
    for row in valid:  # the same subject id nested twice: keep the first, reject the copy
        if row["subject_id"] in seen:
            rejected.append(
                {
                    "subject_id": row["subject_id"],
                    "file": row[MODALITIES[0]],
                    "reason": "duplicate subject id",
                }
            )
        else:
            seen.add(row["subject_id"])
            unique.append(row)
    subjects = pd.DataFrame(unique, columns=SUBJECT_COLUMNS)
    rejected_df = pd.DataFrame(rejected, columns=REJECTED_COLUMNS)
    out_dir = Path(out_dir)
    write_csv(rejected_df, out_dir / "rejected.csv")
    if subjects.empty:
        reasons = "; ".join(f"{r['subject_id']}: {r['file']}: {r['reason']}" for r in rejected[:5])
        raise NoValidSubjectsError(
            f"no valid subject among {len(dirs)} found in {root}; first problems: {reasons}"
        )
    write_csv(subjects, out_dir / "subjects.csv")
    return subjects, rejected_df
