"""make_splits: a seeded, reproducible train/val split of the indexed subjects.

    vae-dynamics splits --subjects results/index/subjects.csv --out-dir results/splits \
        --val-split 0.1 --seed 42
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from vae_dynamics.io import write_csv


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


def make_splits(subjects_csv: str | Path, out_dir: str | Path, val_split: float, seed: int):
    """Write train.csv and val.csv next to each other; return (train, val)."""
    train, val = split_subjects(pd.read_csv(subjects_csv), val_split, seed)
    out_dir = Path(out_dir)
    write_csv(train, out_dir / "train.csv")
    write_csv(val, out_dir / "val.csv")
    return train, val
