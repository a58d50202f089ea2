"""GPU placement for concurrent jobs on one machine: each job claims its own GPUs.

Snakemake counts GPUs (`resources: gpu=N`) but does not say which: without this, two GPU jobs on a
4-GPU workstation both run on cuda:0. `claim_gpus(n)` takes n free GPUs under per-GPU lock files
(fcntl locks: released by the kernel when the process ends, even if it is killed) and sets
CUDA_VISIBLE_DEVICES to them before CUDA is initialised. It does nothing when a scheduler already
chose (CUDA_VISIBLE_DEVICES set, as SLURM does), when the machine has no GPU, or when n is 0.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("vae_dynamics.gpus")

# Comma-separated GPU indices to choose from (default: every GPU nvidia-smi lists).
GPUS_ENV = "VAE_DYNAMICS_GPUS"


def machine_gpus() -> list[str]:
    """GPU indices of this machine, without initialising CUDA (nvidia-smi, or VAE_DYNAMICS_GPUS)."""
    if os.environ.get(GPUS_ENV) is not None:
        return [g.strip() for g in os.environ[GPUS_ENV].split(",") if g.strip()]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU ")]


def lock_dir() -> Path:
    """The per-user lock folder in the temporary directory, created 0700; refused when it is not ours.

    /tmp is shared: a folder someone else made (or a symlink planted there) could let them hold or
    release our GPUs' locks.
    """
    folder = Path(tempfile.gettempdir()) / f"vae_dynamics-gpu-locks-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        os.mkdir(folder, 0o700)
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(
            f"GPU lock folder {folder} is not a folder of this user with mode 0700 (owner uid {info.st_uid}, "
            f"mode {stat.filemode(info.st_mode)}); remove it or set TMPDIR to a private folder"
        )
    return folder


def _try_all(folder: Path, gpus: list[str], n: int) -> list[tuple[str, int]]:
    """n of `gpus` locked at once, or none: a claimant never keeps some locks while it waits for others
    (two such claimants could each hold half and wait for ever)."""
    held: list[tuple[str, int]] = []
    for gpu in gpus:
        if len(held) == n:
            break
        fd = os.open(folder / f"gpu{gpu}.lock", os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        held.append((gpu, fd))
    if len(held) < n:
        for _, fd in held:
            os.close(fd)
        return []
    return held


WAIT_NOTICE_S = 300.0  # how often a wait for a GPU is reported


@contextlib.contextmanager
def claim_gpus(n: int, wait_s: float = 24 * 3600, poll_s: float = 2.0) -> Iterator[list[str]]:
    """Hold n GPUs of this machine for the block (CUDA_VISIBLE_DEVICES); yield their indices."""
    gpus = machine_gpus()
    if n <= 0 or not gpus or os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        yield []
        return
    if n > len(gpus):
        raise RuntimeError(f"{n} GPU(s) asked for, this machine has {len(gpus)} ({', '.join(gpus)})")
    folder = lock_dir()
    start = time.monotonic()
    said = -math.inf
    while not (held := _try_all(folder, gpus, n)):
        waited = time.monotonic() - start
        if waited > wait_s:
            raise TimeoutError(f"waited {wait_s:.0f} s for {n} free GPU(s) of {gpus}; locks in {folder}")
        if waited - said >= WAIT_NOTICE_S:  # at once, then every few minutes: a wait is never silent
            said = waited
            message = (
                f"waiting for {n} free GPU(s): all of {', '.join(gpus)} are held by other jobs of this user "
                f"(locks in {folder}); waited {waited:.0f} s of at most {wait_s:.0f} s"
            )
            log.warning(message)
            print(message, file=sys.stderr, flush=True)
        time.sleep(poll_s)
    try:
        chosen = [g for g, _ in held]
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(chosen)
        log.info("GPU(s) %s claimed (CUDA_VISIBLE_DEVICES=%s)", chosen, os.environ["CUDA_VISIBLE_DEVICES"])
        yield chosen
    finally:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        for _, fd in held:
            os.close(fd)  # closing the descriptor releases the lock
