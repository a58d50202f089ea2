"""Checkpoints that survive a shared cluster: atomic writes beside the destination, damage checks,
and a save at the next step boundary when SLURM (or anyone) asks the job to stop.

- AtomicCheckpointIO: Lightning's TorchCheckpointIO stages each file through fsspec in $TMPDIR and
  moves it across file systems (a copy that a kill or a full disk can cut short). Here the file is
  written beside its destination, fsync'ed and renamed with os.replace; a failed save removes its
  staging file, leaves every existing checkpoint as it was, and says which file, how much was written
  and whether the disk is full.
- intact_resume_checkpoint: last.ckpt if it loads, else the newest intact checkpoint of the run (and
  why), else an error naming the damaged file.
- PreemptionCheckpoint: on SIGTERM or SIGUSR1 (`sbatch --signal=USR1@120`) to any rank, all ranks
  save last.ckpt at the same step boundary and exit with PREEMPTED_EXIT_CODE, so that a retry or a
  requeue resumes there.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import threading
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from vae_dynamics.io import fsync_dir, unique_sibling

log = logging.getLogger("vae_dynamics.train")

# EX_TEMPFAIL (sysexits.h): "temporary failure, the user is invited to retry".
PREEMPTED_EXIT_CODE = 75


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; existing checkpoints are untouched."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a staging file beside the destination, fsync, os.replace; never $TMPDIR."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # A name of its own; mode 0o666 filtered by the umask like every other artifact (mkstemp's 0600
        # would keep a group-shared project's colleagues from resuming or evaluating the run).
        staging = str(unique_sibling(path, "partial"))
        fd = os.open(staging, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(staging, path)
        except BaseException as exc:
            written = os.path.getsize(staging) if os.path.exists(staging) else 0
            with contextlib.suppress(OSError):
                os.unlink(staging)
            if not isinstance(exc, Exception):
                raise  # KeyboardInterrupt, SystemExit: the staging file is gone, the old checkpoint stays
            free = shutil.disk_usage(path.parent).free
            full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
            reason = "the disk is full (or the quota is reached)" if full else f"{type(exc).__name__}: {exc}"
            raise CheckpointWriteError(
                f"could not write checkpoint {path}: {reason}; {written / 1e6:.1f} MB were written before "
                f"the "
                f"failure, {free / 1e6:.1f} MB are free in {path.parent}. Existing checkpoints are unchanged."
            ) from exc
        fsync_dir(path.parent)

    def remove_checkpoint(self, path: Any) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def checkpoint_problem(path: Path) -> str | None:
    """Why `path` cannot be resumed from (None when it is intact): unreadable, truncated, bad CRC, no
    state."""
    try:
        with zipfile.ZipFile(path) as archive:  # torch.save's format: a zip archive with CRCs
            bad = archive.testzip()
            if bad is not None:
                return f"member {bad} fails its CRC check"
        # weights_only: tensors and plain containers only; a planted file cannot run code when it is read
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    missing = [k for k in ("state_dict", "epoch", "global_step", "optimizer_states") if k not in ckpt]
    return f"no {', '.join(missing)} in it" if missing else None


def epochs_held(path: Path) -> int:
    """The epochs a checkpoint's run has reached: Lightning's current_epoch after restoring it (the epochs
    started; a checkpoint from an epoch's end counts that epoch)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    progress = ckpt.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    return int(progress.get("started", ckpt.get("epoch", -1) + 1))


class DamagedCheckpointError(RuntimeError):
    """No intact checkpoint to resume from."""


def intact_resume_checkpoint(checkpoints_dir: Path) -> tuple[Path, str | None]:
    """last.ckpt if it loads; else the newest intact *.ckpt beside it and a note of what happened.

    Raises DamagedCheckpointError naming the damaged file when no checkpoint of the run is intact:
    restarting from epoch 0 in the same run directory would silently mix two trainings.
    """
    last = checkpoints_dir / "last.ckpt"
    problem = checkpoint_problem(last)
    if problem is None:
        return last, None
    others = sorted(
        (p for p in checkpoints_dir.glob("*.ckpt") if p.name != "last.ckpt"),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for candidate in others:
        if checkpoint_problem(candidate) is None:
            return candidate, (
                f"{last} is damaged ({problem}); resuming from the newest intact checkpoint {candidate.name} "
                "instead (the epochs after it are trained again)"
            )
    raise DamagedCheckpointError(
        f"{last} is damaged ({problem}) and no other intact checkpoint is in {checkpoints_dir}; "
        "refusing to restart from epoch 0 in the same run directory. Delete the run directory to start "
        "over, or restore the file from a backup."
    )


class Preempted(SystemExit):
    """The run was asked to stop (SIGTERM/SIGUSR1); last.ckpt holds the step it reached."""

    def __init__(self, message: str) -> None:
        super().__init__(PREEMPTED_EXIT_CODE)
        self.message = message

    def __str__(self) -> str:
        return self.message


class PreemptionCheckpoint(L.Callback):
    """On SIGUSR1 or SIGTERM, save last.ckpt at the next step boundary and stop, every rank together.

    Both signals are taken over while training runs, and the previous handlers come back when it ends:
    Lightning's SLURM auto-requeue handler (SIGUSR1) would requeue the job behind Snakemake's back, and
    its SIGTERM handler lets each rank decide alone. Under DDP a signal often reaches one process only
    (`scancel --signal=USR1 --batch`, `kill` of one rank) or lands between two ranks' checks; a rank that
    stopped alone would wait in the save's barrier while the others run the next step's collectives,
    and the job would hang until SIGKILL with no last.ckpt. So after every training batch the ranks
    reduce their flags into one decision (any rank signalled: all stop), then all save once (rank 0
    writes) and leave with PREEMPTED_EXIT_CODE. The cost is one all-reduce of one number per step.
    """

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

    def __init__(self, last_path: str | os.PathLike[str]) -> None:
        self.last_path = Path(last_path)
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.requested = signal.Signals(signum).name

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After Lightning's own handlers (registered when fit starts), so ours are the ones called.
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._on_signal)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Every rank reaches this point once per batch: the decision is taken together (any -> all).
        stop = trainer.strategy.reduce_boolean_decision(self.requested is not None, all=False)
        if stop:
            what = self.requested or "a stop signal to another rank"
            raise Preempted(f"{what} received (rank {trainer.global_rank})")

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore()
        if not isinstance(exception, (Preempted, SIGTERMException)):
            return
        trainer.save_checkpoint(self.last_path)
        log.warning(
            "pre-empted (%s) at epoch %d, global step %d: saved %s; run the same command again (or let "
            "Snakemake's retry / a SLURM requeue do it) to resume from there",
            exception if isinstance(exception, Preempted) else "SIGTERM received",
            trainer.current_epoch,
            trainer.global_step,
            self.last_path,
        )
