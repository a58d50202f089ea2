"""Data: subject indexing, splits, MONAI preprocessing, the persistent cache, the data module, demo data."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vae_dynamics.config.schema import MODALITIES  # the one spelling (config/ is the bottom layer)

if TYPE_CHECKING:  # pandas is imported where a table is read
    import pandas as pd

SEG_KEY = "seg"
FILE_KEYS = (*MODALITIES, SEG_KEY)
TUMOUR_LABELS = {"netc": 1, "snfh": 2, "et": 3}  # BraTS 2023: 1 NETC, 2 SNFH (edema), 3 ET
SEG_LABELS = (0, *TUMOUR_LABELS.values())  # with 0, the background

# A subject id becomes a file name (recon panels, snapshots, latents): letters, digits, '.', '_', '-',
# starting with a letter or digit (no path separators, no '..', no hidden files).
SUBJECT_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"


def subject_id_problem(sid: str) -> str | None:
    """Why `sid` cannot be a subject id (None if it can): the one rule of indexing, sheets and splits."""
    import re

    if not sid:
        return "empty subject id"
    if not re.fullmatch(SUBJECT_ID_PATTERN, sid) or ".." in sid:
        return (
            f"subject id {sid!r} must be letters, digits, '.', '_' or '-', start with a letter or digit and "
            "hold no '..' (it names output files)"
        )
    return None


def read_subject_table(path: Any, **kwargs: Any) -> pd.DataFrame:
    """A CSV/TSV of subjects with `subject_id` read as text exactly as written (`007`, `1e3` and `NA`
    stay what they are); the other columns are parsed as usual (empty cells are missing values)."""
    import pandas as pd

    header = pd.read_csv(path, nrows=0, **kwargs).columns
    na = ["", "NA", "N/A", "NaN", "nan", "null", "None", "#N/A", "<NA>"]
    return pd.read_csv(
        path,
        dtype={"subject_id": str},
        keep_default_na=False,
        na_values={c: na for c in header if c != "subject_id"},
        **kwargs,
    )
