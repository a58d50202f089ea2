"""Atomic file writes: a partial artifact is never taken for a finished one."""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import math
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
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
        fsync_tree(tmp)
        old = unique_sibling(path, "old")
        had_old = path.exists()
        if had_old:
            os.replace(path, old)
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


def fsync_tree(folder: Path) -> None:
    """Persist every file and folder below `folder`, and the folder itself (before it is renamed)."""
    for item in sorted(folder.rglob("*"), reverse=True):  # deepest first
        if item.is_file():
            fsync_file(item)
        elif item.is_dir():
            fsync_dir(item)
    fsync_dir(folder)


class LockUnsupportedError(OSError):
    """The file system refuses flock (e.g. Lustre mounted without `flock`)."""


# errno values of a file system that has no flock: Linux's ENOSYS/ENOLCK, and EOPNOTSUPP on some FUSEs.
NO_FLOCK = {errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP}


@contextlib.contextmanager
def exclusive_lock(lock_file: Path, busy: str) -> Iterator[int]:
    """Hold an exclusive flock on `lock_file` (created if missing); yield its descriptor.

    Raise BusyError(`busy` + who holds it) at once if another process holds it, and LockUnsupportedError
    if the file system has no flock. The kernel releases the lock when the process dies.
    """
    import fcntl

    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown holder"
        os.close(fd)
        raise BusyError(f"{busy} ({holder})") from None
    except OSError as exc:
        os.close(fd)
        if exc.errno in NO_FLOCK:
            raise LockUnsupportedError(
                exc.errno,
                f"{lock_file.parent}: this file system does not support flock ({os.strerror(exc.errno)}); "
                "put it on a file system that does (a local disk, NFSv4, or Lustre mounted with -o flock)",
            ) from None
        raise
    try:
        import socket

        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"host {socket.gethostname()}, pid {os.getpid()}, started {stamp}\n".encode(), 0)
        yield fd
    finally:
        os.close(fd)  # releases the flock


class BusyError(RuntimeError):
    """Another process holds the lock."""


class OutputError(ValueError):
    """An output folder that may not be written: it is an input, or it holds files of the user's."""


# Written into every output folder of a command (encode, evaluate, export): which command wrote it and
# which entries are its own. Only such a folder, or an empty one, is replaced without --force.
OUTPUT_MARKER = ".vae_dynamics-output.json"
# What an output folder must stay clear of: a label ("the input", "the run directory") -> its paths.
Protected = Mapping[str, Sequence[str | os.PathLike[str]]]


def _relation(out: Path, other: Path) -> str | None:
    if out == other:
        return "is"
    if out.is_relative_to(other):
        return "lies inside"
    if other.is_relative_to(out):
        return "contains"
    return None


def check_output_dir(
    path: str | os.PathLike[str],
    command: str,
    protected: Protected | None = None,
    force: bool = False,
) -> None:
    """Refuse an output folder that equals, contains or lies inside a protected path (an input folder, a
    scan's folder, the run directory; even with `force`), and, unless `force`, an existing folder that
    holds entries a previous `command` did not write."""
    out = Path(path).resolve()
    for label, paths in (protected or {}).items():
        for other in paths:
            relation = _relation(out, Path(other).resolve())
            if relation:
                raise OutputError(
                    f"output folder {path} {relation} {label} {other}: writing it would replace or mix with "
                    "the inputs; choose another folder"
                )
    if not os.path.lexists(out):
        return
    if not out.is_dir():
        raise OutputError(f"output folder {path} exists and is not a folder; choose another path")
    entries = sorted(p.name for p in out.iterdir())
    if not entries or force:
        return
    own: set[str] = set()
    with contextlib.suppress(OSError, ValueError, AttributeError):
        marker = json.loads((out / OUTPUT_MARKER).read_text())
        if marker.get("command") == command:
            own = {OUTPUT_MARKER, *marker.get("entries", [])}
    foreign = [e for e in entries if e not in own]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputError(
            f"output folder {path} holds entries that `{command}` did not write ({shown}); it would replace "
            "them. Choose an empty or new folder, or pass --force to replace the folder whole"
        )


@contextlib.contextmanager
def output_dir(
    path: str | os.PathLike[str],
    command: str,
    protected: Protected | None = None,
    force: bool = False,
) -> Iterator[Path]:
    """atomic_dir for a folder the user names: checked first (check_output_dir), written under a lock
    (a second writer of the same folder fails at once), leftovers of a killed writer removed, and marked
    with OUTPUT_MARKER so that the next run of `command` may replace it."""
    path = Path(path)
    check_output_dir(path, command, protected, force)
    lock = path.with_name(f".{path.name}.lock")
    with exclusive_lock(lock, f"{path} is being written by another command"):
        for item in sorted(path.parent.glob(f".{glob.escape(path.name)}.*")):
            if LEFTOVER.fullmatch(item.name):
                shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()
        check_output_dir(path, command, protected, force)  # again, now that no other writer can start
        with atomic_dir(path) as tmp:
            yield tmp
            entries = sorted(p.name for p in tmp.iterdir())
            (tmp / OUTPUT_MARKER).write_text(json.dumps({"command": command, "entries": entries}) + "\n")


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
