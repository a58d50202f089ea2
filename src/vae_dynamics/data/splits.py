"""make_splits: a seeded, reproducible train/val split of the indexed subjects.

    vae-dynamics splits --subjects results/index/subjects.csv --out-dir results/splits \
        --val-split 0.1 --seed 42
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from vae_dynamics.data import read_subject_table, subject_id_problem
from vae_dynamics.io import write_csv


def check_subject_ids(table: pd.DataFrame, source: str | Path) -> None:
    """Refuse a split table whose subject ids cannot be file names (ids become panel and snapshot names)."""
    if "subject_id" not in table.columns:
        raise ValueError(f"{source}: no subject_id column (columns: {list(table.columns)})")
    ids = table["subject_id"].fillna("").astype(str)
    problems = [p for p in map(subject_id_problem, ids) if p]
    if problems:
        count = len(problems)
        raise ValueError(f"{source}: {count} subject id(s) cannot be file names; first: {problems[0]}")
    duplicated = sorted(set(ids[ids.duplicated()]))
    if duplicated:
        raise ValueError(f"{source}: duplicate subject id(s) {duplicated[:5]}")


def check_split_dir(splits_dir: str | Path) -> None:
    """A user-supplied splits folder: train.csv and val.csv exist and their subject ids are safe."""
    for name in ("train.csv", "val.csv"):
        path = Path(splits_dir) / name
        if not path.is_file():
            raise FileNotFoundError(f"--splits: {path} not found")
        check_subject_ids(read_subject_table(path), path)


def split_subjects(subjects: pd.DataFrame, val_split: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Shuffle subjects (sorted by id first, so file-system order never matters) and cut off val."""
    if not 0.0 < val_split < 1.0:
        raise ValueError(f"val_split must lie strictly between 0 and 1, got {val_split}")
    if len(subjects) < 2:
        raise ValueError(f"need at least 2 subjects for a train/val split, got {len(subjects)}")
    ordered = subjects.sort_values("subject_id").reset_index(drop=True)
    order = np.random.default_rng(seed).permutation(len(ordered))
    n_val = min(max(1, math.floor(val_split * len(ordered) + 0.5)), len(ordered) - 1)
    val = ordered.iloc[np.sort(order[:n_val])].reset_index(drop=True)
    train = ordered.iloc[np.sort(order[n_val:])].reset_index(drop=True)
    return train, val


def make_splits(
    subjects_csv: str | Path, out_dir: str | Path, val_split: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write train.csv and val.csv next to each other; return (train, val)."""
    subjects = read_subject_table(subjects_csv)
    check_subject_ids(subjects, subjects_csv)
    train, val = split_subjects(subjects, val_split, seed)
    out_dir = Path(out_dir)
    write_csv(train, out_dir / "train.csv")
    write_csv(val, out_dir / "val.csv")
    return train, val
