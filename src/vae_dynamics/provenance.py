"""Where and with what a run ran: versions, CUDA/cuDNN, GPUs, git commit (and whether the tree was
dirty), host, command line, start and end time. Written to provenance.json by the training and into
metrics.json by the evaluation; imports neither Lightning nor MONAI (the evaluation does not need them).
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import platform
import socket
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def provenance(started: float | None = None) -> dict[str, Any]:
    """Where and with what a run ran: enough to trace metrics.json back to the code that made it."""
    import torch  # here: `vae-dynamics --version` and the config commands stay torch-free

    repo = Path(__file__).resolve().parents[2]
    commit = _git(["rev-parse", "HEAD"], repo)
    status = _git(["status", "--porcelain", "--untracked-files=no"], repo) if commit else None
    cuda = torch.cuda.is_available()
    return {
        "started": dt.datetime.fromtimestamp(started or time.time(), dt.UTC).isoformat(timespec="seconds"),
        "finished": None,
        "host": socket.gethostname(),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "cwd": os.getcwd(),
        "git_commit": commit,
        "git_dirty": bool(status) if commit else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {
            name: _package_version(name)
            for name in ("vae_dynamics", "torch", "lightning", "monai", "numpy", "nibabel", "snakemake")
        },
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }


def finish_provenance(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """The package version and git commit of the running code (stored in every checkpoint)."""
    repo = Path(__file__).resolve().parents[2]
    commit = _git(["rev-parse", "HEAD"], repo)
    status = _git(["status", "--porcelain", "--untracked-files=no"], repo) if commit else None
    from vae_dynamics import __version__  # the source's version (an editable install's metadata can lag)

    return {"version": __version__, "git_commit": commit, "git_dirty": bool(status) if commit else None}


def version_change(saved: dict[str, Any] | None) -> str | None:
    """How the code that wrote a checkpoint (its `code_version`) differs from the running code, or None."""
    now = code_version()
    if not saved:
        return f"the checkpoint records no code version (written before 0.4); now {_describe(now)}"
    if (saved.get("version"), saved.get("git_commit")) != (now["version"], now["git_commit"]):
        return f"{_describe(saved)} -> {_describe(now)}"
    return None


def _describe(v: dict[str, Any]) -> str:
    commit = (v.get("git_commit") or "no git checkout")[:12] + (
        " (uncommitted changes)" if v.get("git_dirty") else ""
    )
    return f"vae_dynamics {v.get('version')} at {commit}"


def append_start(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    """provenance.json of a run: the latest start's record at the top level, every start in `starts`."""
    import json

    starts: list[dict[str, Any]] = []
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            starts = old.get("starts") or [{k: v for k, v in old.items() if k != "starts"}]
        except (OSError, ValueError):
            starts = []  # unreadable: the new record starts the list again
    return {**record, "starts": [*starts, record]}


def finish_start(doc: dict[str, Any]) -> dict[str, Any]:
    """Mark the latest start of a provenance document as finished (top level and its `starts` entry)."""
    finished = finish_provenance({k: v for k, v in doc.items() if k != "starts"})
    return {**finished, "starts": [*doc["starts"][:-1], finished]}
