"""index_subjects: find subjects (BraTS-MEN folders or a sample sheet), validate every file, write
subjects.csv/rejected.csv; `find_scans` does the same for inference, where seg is optional.

vae-dynamics index --root /data/BraTS_Men_Train --out-dir results/index --workers 8
vae-dynamics index --sheet subjects.tsv --out-dir results/index
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np
import pandas as pd

from vae_dynamics.data import FILE_KEYS, MODALITIES, SEG_KEY, SEG_LABELS, subject_id_problem
from vae_dynamics.io import write_csv
from vae_dynamics.parallel import map_in_processes

log = logging.getLogger(__name__)

SUBJECT_DIR = re.compile(r"BraTS-[A-Za-z]+-\d+-\d+")  # used with fullmatch ($ accepts a trailing newline)
# A volume above this many voxels is rejected from its header, before it is read (BraTS: 240·240·155 =
# 8.9 M); reading a huge file would exhaust a pool worker's memory and fail the whole index.
MAX_VOXELS = 2**28
# A scan smaller than this along any axis (mm) is no head: a 2×2×2 test volume, a single slice.
MIN_EXTENT_MM = 32.0
SUBJECT_COLUMNS = ["subject_id", *FILE_KEYS]
REJECTED_COLUMNS = ["subject_id", "file", "reason"]
SHEET_SUFFIXES = (".csv", ".tsv", ".tab")
# Columns an encoding adds to latents.csv beside mu_<k>/logvar_<k>: a sheet may not bring its own.
OUTPUT_COLUMNS = ("checkpoint", "run_identity")


class NoValidSubjectsError(RuntimeError):
    """No valid subject could be indexed (or the root does not exist); `rejected` says why, per subject."""

    def __init__(self, message: str, rejected: pd.DataFrame | None = None) -> None:
        super().__init__(message)
        self.rejected = rejected if rejected is not None else pd.DataFrame(columns=REJECTED_COLUMNS)


def find_subject_dirs(root: Path) -> list[Path]:
    """Subject folders directly below `root` or nested one level deeper, sorted by name."""
    found = [p for p in root.glob("*") if p.is_dir() and SUBJECT_DIR.fullmatch(p.name)]
    found += [p for p in root.glob("*/*") if p.is_dir() and SUBJECT_DIR.fullmatch(p.name)]
    return sorted(found, key=lambda p: (p.name, str(p)))


def subject_files(subject_dir: Path, keys: Sequence[str] = FILE_KEYS) -> dict[str, Path | None]:
    """The expected file of each key (.nii.gz preferred, .nii accepted), None if absent."""
    files: dict[str, Path | None] = {}
    for key in keys:
        candidates = [subject_dir / f"{subject_dir.name}-{key}{ext}" for ext in (".nii.gz", ".nii")]
        files[key] = next((c for c in candidates if c.is_file()), None)
    return files


def header_problem(
    shape: tuple[int, ...], affine: np.ndarray | None, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> str | None:
    """Why a NIfTI header cannot be a subject's volume (None if it can), checked before reading data:
    its shape, affine, physical extent, and the size of its resampling to `spacing` (mm)."""
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
    zooms = np.sqrt((np.asarray(affine, dtype=float)[:3, :3] ** 2).sum(axis=0))
    extent = np.asarray(shape, dtype=float) * zooms
    if extent.min() < MIN_EXTENT_MM:
        return (
            f"field of view {' × '.join(f'{e:.0f}' for e in extent)} mm is smaller than "
            f"{MIN_EXTENT_MM:.0f} mm along an axis: not a head scan"
        )
    resampled = np.ceil(extent / np.asarray(spacing, dtype=float))
    if float(np.prod(resampled)) > MAX_VOXELS:
        return (
            f"resampled to {tuple(float(v) for v in spacing)} mm it would have "
            f"{' × '.join(str(int(v)) for v in resampled)} voxels (more than {MAX_VOXELS}): voxel size "
            f"{' × '.join(f'{z:.3g}' for z in zooms)} mm in the header"
        )
    return None


def gzip_problem(path: Path) -> str | None:
    """Why a .nii.gz file's gzip stream is damaged (None if it is intact or not gzipped): decompressed to
    its end, so that the CRC and length in its trailer are checked (nibabel stops before the trailer)."""
    import gzip
    import zlib

    if not path.name.endswith(".gz"):
        return None
    try:
        with gzip.open(path, "rb") as stream:
            while stream.read(1 << 22):
                pass
    except (gzip.BadGzipFile, EOFError, zlib.error, OSError) as exc:
        name = type(exc).__name__
        return f"unreadable: corrupt gzip stream ({name}: {exc}): the file is damaged or truncated"
    return None


def image_problem(data: np.ndarray) -> str | None:
    """Why image values cannot be preprocessed (None if they can): non-finite once cast to float32, as
    preprocessing reads them, or no positive voxel (the foreground is the positive part)."""
    with np.errstate(over="ignore", invalid="ignore"):  # what overflows float32 is reported below
        values = data.astype(np.float32, copy=False)
    finite = np.isfinite(values)
    if not finite.all():
        return f"{int((~finite).sum())} non-finite image values as float32 (NaN/inf, or beyond its range)"
    if not (values > 0).any():
        return "no positive voxel (an empty or all-negative image)"
    return None


def load_image(path: str | os.PathLike[str]) -> nib.Nifti1Image:
    """A NIfTI image, header read, data left on disk (`nibabel.load` typed as the NIfTI it returns)."""
    return cast(nib.Nifti1Image, nib.load(path))


def validate_files(
    sid: str,
    files: Mapping[str, Path | None],
    where: str,
    expected: Mapping[str, str] | None = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> tuple[dict | None, dict | None]:
    """The checks of SPEC §3 on one subject's files: (row, None) if valid, else (None, rejection).

    `files`: key -> path (None: missing) for every modality and, when given, seg; every file must be
    present, readable to its end (its gzip stream intact), 3D with a usable affine, at least MIN_EXTENT_MM
    across and not above MAX_VOXELS once resampled to `spacing`, of the first file's shape and affine, with
    image values finite in float32 and some positive, and seg labels in SEG_LABELS. A constant image
    channel is logged as a warning. `where` and `expected` (key -> the name that was
    expected) make the "missing file" reason say where the file was looked for.
    """

    def reject(key: str, reason: str) -> tuple[None, dict]:
        path = files.get(key)
        name = path.name if path else (expected or {}).get(key, f"{sid}-{key}.nii.gz")
        return None, {"subject_id": sid, "file": name, "reason": reason}

    id_problem = subject_id_problem(sid)
    if id_problem:
        return None, {"subject_id": sid, "file": "", "reason": id_problem}
    present: dict[str, Path] = {}
    for key, path in files.items():
        if path is None:
            wanted = (expected or {}).get(key, f"{sid}-{key}.nii.gz or .nii")
            return reject(key, f"missing file (expected {wanted} in {where})")
        present[key] = path
    reference = None
    for key, path in present.items():
        try:
            img = load_image(path)  # the header only
        except Exception as exc:  # noqa: BLE001 - any read failure is a rejection reason
            return reject(key, f"unreadable: {type(exc).__name__}: {exc}")
        problem = header_problem(img.shape, img.affine, spacing) or gzip_problem(path)
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
        else:
            problem = image_problem(np.asarray(data))
            if problem:
                return reject(key, problem)
            if float(np.min(data)) == float(np.max(data)):
                log.warning("%s: %s is constant (%g everywhere)", sid, path.name, float(np.min(data)))
    return {"subject_id": sid, **{k: str(p.resolve()) for k, p in present.items()}}, None


def validate_subject(
    subject_dir: Path, require_seg: bool = True, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> tuple[dict | None, dict | None]:
    """validate_files on a BraTS subject folder (seg may be absent when not `require_seg`)."""
    files = subject_files(subject_dir)
    if not require_seg and files[SEG_KEY] is None:
        del files[SEG_KEY]
    return validate_files(subject_dir.name, files, str(subject_dir), spacing=spacing)


# ---- sample sheets ---------------------------------------------------------------------------------------


class SheetError(ValueError):
    """A sample sheet that cannot be read at all (its file, or a column every row needs)."""


def read_sheet(sheet: str | os.PathLike[str] | pd.DataFrame, base_dir: Path | None = None) -> pd.DataFrame:
    """A sample sheet as a table of strings: a CSV or TSV file (separator from the extension: .tsv/.tab
    tab, otherwise comma), or a DataFrame. Paths in it are resolved later against `base_dir`."""
    if isinstance(sheet, pd.DataFrame):
        table = sheet.copy()
    else:
        path = Path(sheet)
        if not path.is_file():
            raise SheetError(f"sample sheet {path} does not exist")
        sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
        try:
            table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, comment=None)
        except Exception as exc:  # noqa: BLE001 - pandas raises several kinds
            raise SheetError(f"sample sheet {path}: unreadable: {type(exc).__name__}: {exc}") from None
    table.columns = [str(c).strip() for c in table.columns]
    if "subject_id" not in table.columns:
        raise SheetError(f"sample sheet: no subject_id column (columns: {list(table.columns)})")
    return table.fillna("").astype(str)


# (subject id, key -> path or None if missing, where it was looked for, key -> what was expected, extras)
SheetRecord = tuple[str, dict[str, Path | None], str, dict[str, str], dict[str, Any]]


def sheet_records(
    sheet: str | os.PathLike[str] | pd.DataFrame, modalities: Sequence[str], require_seg: bool
) -> tuple[list[SheetRecord], list[str]]:
    """(per row: subject id, key -> file, where, key -> expected path, extra columns), the extra columns.

    Columns: subject_id, one per modality, optional seg (required when `require_seg`), any others
    (e.g. visit, timepoint), carried through. Relative paths are relative to the sheet's folder
    (the working directory for a DataFrame)."""
    table = read_sheet(sheet)
    base = Path.cwd() if isinstance(sheet, pd.DataFrame) else Path(sheet).resolve().parent
    where = "the sample sheet" if isinstance(sheet, pd.DataFrame) else f"sample sheet {sheet}"
    keys = [*modalities, SEG_KEY] if require_seg or SEG_KEY in table.columns else list(modalities)
    missing = [k for k in keys if k not in table.columns]
    if missing:
        raise SheetError(
            f"{where}: no column {', '.join(missing)} (needs subject_id, {', '.join(modalities)}"
            f"{', seg' if require_seg else ' and optionally seg'}; columns: {list(table.columns)})"
        )
    extra = [c for c in table.columns if c != "subject_id" and c not in (*FILE_KEYS,)]
    clashes = [c for c in extra if c in OUTPUT_COLUMNS or re.fullmatch(r"(mu|logvar)_\d+", c)]
    if clashes:
        raise SheetError(
            f"{where}: column(s) {', '.join(clashes)} would collide with the encoding's own columns "
            "(mu_<k>, logvar_<k>, checkpoint, run_identity); rename them"
        )
    records: list[SheetRecord] = []
    for row in table.to_dict("records"):
        files: dict[str, Path | None] = {}
        for key in keys:
            value = row[key].strip()
            if not value and key == SEG_KEY and not require_seg:
                continue  # no seg for this subject: the foreground is the non-zero image
            path = base / value if value else None
            files[key] = path if path is not None and path.is_file() else None
        expected = {k: (row[k].strip() or f"a path in the {k} column") for k in keys}
        records.append((row["subject_id"].strip(), files, where, expected, {c: row[c] for c in extra}))
    return records, extra


def _validate_record(
    record: SheetRecord, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> tuple[dict | None, dict | None]:
    sid, files, where, expected, extra = record
    row, rejected = validate_files(sid, files, where, expected, spacing)
    return (None if row is None else {**row, **extra}), rejected


Result = tuple[dict | None, dict | None]


def _unique(results: list[Result]) -> tuple[list[dict], list[dict]]:
    """Valid rows (the first of each subject id) and rejections (including later duplicates)."""
    valid = [r for r, _ in results if r is not None]
    rejected = [x for _, x in results if x is not None]
    seen: set[str] = set()
    unique = []
    for row in valid:  # the same subject id twice: keep the first, reject the copy
        if row["subject_id"] in seen:
            rejected.append(
                {
                    "subject_id": row["subject_id"],
                    "file": Path(row[MODALITIES[0]]).name,
                    "reason": "duplicate subject id",
                }
            )
        else:
            seen.add(row["subject_id"])
            unique.append(row)
    return unique, rejected


def _subject_dirs(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> tuple[list[Path], str]:
    """The subject folders of a list of folders or of a BraTS-layout root, and how to name them."""
    if not isinstance(source, (str, os.PathLike)):
        return [Path(p) for p in source], f"{len(source)} subject folders"
    root = Path(source)
    if not root.is_dir():
        raise NoValidSubjectsError(f"{root} is neither a folder nor a .csv/.tsv sample sheet")
    dirs = find_subject_dirs(root)
    if not dirs:
        raise NoValidSubjectsError(
            f"no subject folders (named like BraTS-MEN-00000-000) found in {root} or one level "
            "below; for other names, list the files in a sample sheet (--sheet)"
        )
    return dirs, str(root)


def find_scans(
    source: str | os.PathLike[str] | pd.DataFrame | Sequence[str | os.PathLike[str]],
    modalities: Sequence[str] = MODALITIES,
    require_seg: bool = False,
    workers: int = 1,
    progress: bool = False,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validated scans of a sample sheet (CSV/TSV path or DataFrame), a folder of BraTS-layout subject
    folders, or a list of subject folders: (valid: subject_id, one column per file, the sheet's extra
    columns; rejected: subject_id, file, reason). Raises NoValidSubjectsError when none is valid."""
    keys = [*modalities, SEG_KEY]
    if isinstance(source, pd.DataFrame) or (
        isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() in SHEET_SUFFIXES
    ):
        records, extra = sheet_records(source, modalities, require_seg)
        check_record = functools.partial(_validate_record, spacing=tuple(spacing))
        results = map_in_processes(
            check_record, records, workers=workers, progress=progress, desc="validate sheet"
        )
        what = "the sample sheet" if isinstance(source, pd.DataFrame) else f"sample sheet {source}"
    else:
        dirs, what = _subject_dirs(source)
        extra = []
        check = functools.partial(validate_subject, require_seg=require_seg, spacing=tuple(spacing))
        results = map_in_processes(check, dirs, workers=workers, progress=progress, desc="validate scans")
    unique, rejected = _unique(results)
    rejected_df = pd.DataFrame(rejected, columns=REJECTED_COLUMNS)
    if not unique:
        reasons = "; ".join(f"{r['subject_id']}: {r['file']}: {r['reason']}" for r in rejected[:5])
        raise NoValidSubjectsError(f"no valid subject in {what}; first problems: {reasons}", rejected_df)
    columns = ["subject_id", *keys, *extra]
    valid = pd.DataFrame(unique).reindex(columns=columns)
    return valid, rejected_df


def index_subjects(
    root: str | Path | None,
    out_dir: str | Path,
    workers: int = 1,
    progress: bool = True,
    sheet: str | os.PathLike[str] | None = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate all subjects below `root` (BraTS folders) or of a sample `sheet` (CSV/TSV: subject_id,
    t1c, t1n, t2f, t2w, seg, any other columns); write subjects.csv and rejected.csv; return both.
    `spacing`: the voxel size (mm) the scans will be resampled to (their resampled size is bounded)."""
    if sheet is not None:
        source = Path(sheet)
        if source.suffix.lower() not in SHEET_SUFFIXES:
            raise SheetError(f"sample sheet {sheet}: expected a .csv or .tsv file")
    else:
        if root is None or not Path(root).is_dir():
            raise NoValidSubjectsError(f"data root {root} does not exist or is not a directory")
        source = Path(root)
    out_dir = Path(out_dir)
    try:
        subjects, rejected = find_scans(
            source, MODALITIES, require_seg=True, workers=workers, progress=progress, spacing=spacing
        )
    except NoValidSubjectsError as exc:
        write_csv(exc.rejected, out_dir / "rejected.csv")
        raise
    write_csv(rejected, out_dir / "rejected.csv")
    write_csv(subjects[SUBJECT_COLUMNS], out_dir / "subjects.csv")
    return subjects[SUBJECT_COLUMNS], rejected
