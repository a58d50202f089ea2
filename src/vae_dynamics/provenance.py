"""Where and with what a run ran: versions, CUDA/cuDNN, GPUs, git commit (and whether the tree was
dirty), host, command line, start and end time. Written to provenance.json by the training and into
metrics.json by the evaluation; imports neither Lightning nor MONAI (the evaluation does not need them).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import socket
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch


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
    repo = Path(__file__).resolve().parents[2]
    commit = _git(["rev-parse", "HEAD"], repo)
    status = _git(["status", "--porcelain", "--untracked-files=no"], repo) if commit else None
    cuda = torch.cuda.is_available()
    return {
        "started": dt.datetime.fromtimestamp(started or time.time(), dt.timezone.utc).isoformat(
            timespec="seconds"
        ),
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
        },  # fmt: skip
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }


def finish_provenance(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
