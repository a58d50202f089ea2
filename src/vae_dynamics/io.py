"""Atomic file writes: a partial artifact is never taken for a finished one."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pandas is only a type here: the workflow's dry run does not import it
    import pandas as pd

# Every log file the package writes (a run's train.log, a workflow step's log).
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def unique_sibling(path: Path, kind: str) -> Path:
    """A fresh hidden name beside `path` (unique per call: concurrent writers never share one)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.{kind}")


# What a writer killed mid-way leaves: atomic_path/atomic_dir's .<name>.<12 hex>.tmp and .old, and the
# checkpoint writer's .<name>.<12 hex>.partial (training/checkpointing.py).
LEFTOVER = re.compile(r"\..+\.[0-9a-f]{12}\.(tmp|old|partial)")


def remove_leftovers(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the leftovers of killed writers anywhere below `folder`; return what was removed.

    Only safe while no writer is active there (training holds the run directory's lock when it calls it).
    """
    removed = []
    for item in sorted(Path(folder).rglob(".*")):
        if LEFTOVER.fullmatch(item.name) and item.exists():
            shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()
            removed.append(item)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = unique_sibling(path, "tmp")
    # O_EXCL: ours alone; mode 0o666 filtered by the process umask, read without changing it
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield tmp
        fsync_file(tmp)  # the data is on disk before the name says it is finished (a node crash)
        os.replace(tmp, path)
        fsync_dir(path.parent)  # ... and so is the rename
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fsync_file(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Best effort: persist a rename in `path` (not every file system supports fsync on a folder)."""
    with contextlib.suppress(OSError):
        fsync_file(path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty folder beside `path`; it replaces `path` only if the block succeeds.

    The folder has a name of its own (two writers never share one). An existing `path` is first renamed
    aside, so that `path` is missing only between two renames, never while a folder is deleted.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = unique_sibling(path, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        old = unique_sibling(path, "old")
        had_old = path.exists()
        if had_old:
            os.replace(path, old)
        for file in tmp.rglob("*"):
            if file.is_file():
                fsync_file(file)
        try:
            os.replace(tmp, path)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            # Another writer put its folder at `path` between our two renames: it wins (its content is
            # as new as ours); ours is discarded with the folder we moved aside, so no .old is left.
        fsync_dir(path.parent)
        if had_old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_csv(df: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write a DataFrame as CSV atomically (no index column)."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


# Written into a JSON object whose values held NaN or ±Infinity (which strict JSON readers refuse).
NON_FINITE_KEY = "_non_finite_written_as_null"


def _finite_or_null(obj: Any, where: str, found: list[str]) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        found.append(where or "(top level)")
        return None
    if isinstance(obj, dict):
        return {k: _finite_or_null(v, f"{where}.{k}" if where else str(k), found) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_null(v, f"{where}[{i}]", found) for i, v in enumerate(obj)]
    return obj


def write_json(obj: Any, path: str | os.PathLike[str]) -> None:
    """Write strict JSON atomically: NaN and ±Infinity become null, and an object says which keys.

    (An SSIM over an empty brain mask is NaN; Python's json would write `NaN`, which is not JSON.)
    """
    found: list[str] = []
    clean = _finite_or_null(obj, "", found)
    if found and isinstance(clean, dict):
        clean[NON_FINITE_KEY] = found
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(clean, indent=2, sort_keys=False, allow_nan=False) + "\n")


def write_text(text: str, path: str | os.PathLike[str]) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
