"""A run directory: its layout and the resume policy (a finished run is loaded by vae_dynamics.inference).

<run_dir>/
  config_resolved.yaml   the validated config the run was trained with
  preprocessing.json     the preprocessing contract of its data (new scans must match it)
  provenance.json        versions, host, git commit, start/end
  train.log              log records of every (re)start
  splits/{train,val}.csv the subjects of this run (kept on resume)
  index/                 subjects.csv / rejected.csv when the run indexed root_dir itself
  checkpoints/           last.ckpt (resume) and the chosen epoch*.ckpt
  logs/version_0/        metrics.csv (csv logger; one file for the whole run, resumes included)
  tensorboard/version_0/ TensorBoard events (one version for the whole run)
  trackers.json          the MLflow / W&B run ids, so that a resume continues the same tracker run
  recon/                 reconstruction snapshots every logging.recon_every_n_epochs
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from vae_dynamics import experiments
from vae_dynamics.config import ConfigError, diff_keys, load_config
from vae_dynamics.config.identity import RESUME_FREE_KEYS, RESUME_LOCKED_KEYS, RESUME_LOCKED_SECTIONS
from vae_dynamics.config.schema import ExperimentConfig
from vae_dynamics.io import BusyError, atomic_path, exclusive_lock, remove_leftovers

log = logging.getLogger("vae_dynamics.train")

SPLIT_FILES = ("train.csv", "val.csv")


class ResumeError(RuntimeError):
    """A resume was asked for but is impossible or would mix different experiments."""


class RunDirBusyError(BusyError):
    """Another training holds the run directory's lock."""


@dataclass(frozen=True)
class RunDir:
    """The files of one training run, and what may be done with them."""

    path: Path

    @classmethod
    def new(cls, cfg: ExperimentConfig) -> RunDir:
        """<logging.save_dir>/<timestamp>_<experiment name> (the CLI's default)."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return cls(Path(cfg.logging.save_dir) / f"{stamp}_{experiments.of(cfg).name}")

    @classmethod
    def for_launch(cls, cfg: ExperimentConfig, run_dir: str | os.PathLike[str] | None, rank: int) -> RunDir:
        """The run directory of this process: the one given, the one rank 0 passed on, or a new one.

        Lightning's own launcher starts ranks > 0 from rank 0, which passes its folder on ($RUN_DIR_ENV).
        srun and torchrun start every rank at once: each would make its own timestamped folder and wait
        for rank 0's files there. Under srun every rank derives the same name from SLURM_JOB_ID; under
        torchrun without --run-dir the start is refused.
        """
        from vae_dynamics.training.distributed import RUN_DIR_ENV

        if run_dir is not None:
            return cls(Path(run_dir))
        if rank > 0 and os.environ.get(RUN_DIR_ENV):
            return cls(Path(os.environ[RUN_DIR_ENV]))
        if int(os.environ.get("SLURM_NTASKS", 1)) > 1:
            job = os.environ.get("SLURM_JOB_ID")
            if job:
                return cls(Path(cfg.logging.save_dir) / f"slurm-{job}_{experiments.of(cfg).name}")
        if rank > 0 or int(os.environ.get("WORLD_SIZE", 1)) > 1:
            raise ResumeError(
                "this process is one of several started at once (torchrun, or srun without SLURM_JOB_ID) "
                "and no run directory was given: every rank would make its own. Pass --run-dir D to all."
            )
        return cls.new(cfg)

    config = property(lambda self: self.path / "config_resolved.yaml")
    preprocessing = property(lambda self: self.path / "preprocessing.json")
    provenance = property(lambda self: self.path / "provenance.json")
    train_log = property(lambda self: self.path / "train.log")
    lock_file = property(lambda self: self.path / "train.lock")
    splits = property(lambda self: self.path / "splits")
    index = property(lambda self: self.path / "index")
    checkpoints = property(lambda self: self.path / "checkpoints")
    last_checkpoint = property(lambda self: self.path / "checkpoints" / "last.ckpt")
    logs = property(lambda self: self.path / "logs")
    trackers = property(lambda self: self.path / "trackers.json")
    recon = property(lambda self: self.path / "recon")

    def relative(self, path: Path) -> str:
        """`path` (inside the run directory) as written in summaries: relative, valid when the run moves."""
        return Path(os.path.relpath(Path(path).resolve(), self.path.resolve())).as_posix()

    def create(self) -> None:
        for sub in (self.checkpoints, self.logs, self.recon, self.splits):
            sub.mkdir(parents=True, exist_ok=True)

    def has_checkpoint(self) -> bool:
        """last.ckpt, or an epoch checkpoint to fall back on (intact_resume_checkpoint picks which)."""
        return self.last_checkpoint.is_file() or any(self.checkpoints.glob("*.ckpt"))

    def saved_config(self) -> ExperimentConfig:
        """config_resolved.yaml, validated (a run whose config no longer validates is named)."""
        try:
            return load_config(self.config)
        except ConfigError as exc:
            raise ResumeError(f"the run's saved config does not validate: {exc}") from None

    def splits_difference(self, given: Path) -> list[str]:
        """How the split CSVs in `given` differ from the run's own (empty when they hold the same
        subjects)."""
        diffs = []
        for name in SPLIT_FILES:
            if not (given / name).is_file():
                raise FileNotFoundError(f"--splits: {given / name} not found")
            a = pd.read_csv(self.splits / name, dtype=str).set_index("subject_id")
            b = pd.read_csv(given / name, dtype=str).set_index("subject_id")
            added, removed = sorted(set(b.index) - set(a.index)), sorted(set(a.index) - set(b.index))
            if added:
                diffs.append(f"{name}: {len(added)} subject(s) added ({', '.join(added[:5])})")
            if removed:
                diffs.append(f"{name}: {len(removed)} subject(s) removed ({', '.join(removed[:5])})")
            common = sorted(set(a.index) & set(b.index))
            moved = [s for s in common if not a.loc[s].equals(b.loc[s].reindex(a.columns))]
            if moved:
                diffs.append(f"{name}: files of {len(moved)} subject(s) changed ({', '.join(moved[:5])})")
        return diffs

    @contextlib.contextmanager
    def lock(self) -> Iterator[list[str]]:
        """Hold the run directory for one training (rank 0, for the whole run); a second start fails at once.

        An exclusive flock on train.lock, which records the holder (host, pid, start time). The kernel
        releases it when the process dies, so a killed run never leaves a stale lock. Under the lock,
        the leftovers of killed writers (partial checkpoints, .tmp/.old folders) are removed; it yields a
        note for each (for train.log, which is not open yet).
        """
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(
                    exclusive_lock(self.lock_file, f"{self.path} is in use by another training")
                )
            except BusyError as exc:
                raise RunDirBusyError(
                    f"{exc}; wait for it to end or stop it. Two trainings in one run directory overwrite "
                    "each other's last.ckpt and delete each other's best checkpoints"
                ) from None
            removed = remove_leftovers(self.path)
            yield [f"removed the leftover of an interrupted write: {item}" for item in removed]

    def clear_start_files(self, keep: Path | None = None) -> None:
        """Before a fresh start (no checkpoint, checked): remove the split tables, index tables and
        preprocessing contract a failed earlier start may have written, so that this start derives them
        anew (`keep`: the splits folder the user gave, never touched)."""
        own = [self.preprocessing, *(self.index / n for n in ("subjects.csv", "rejected.csv"))]
        if keep is None or Path(keep).resolve() != self.splits.resolve():
            own += [self.splits / n for n in SPLIT_FILES]
        for path in own:  # only the files a start writes: a --run-dir may be a folder that holds others
            path.unlink(missing_ok=True)

    def check_fresh_start(self) -> None:
        """Refuse to start a new run in a folder that holds another run's checkpoints."""
        found = sorted(p.name for p in self.checkpoints.glob("*.ckpt")) if self.checkpoints.is_dir() else []
        if found:
            raise ResumeError(
                f"refusing to start a new run in {self.path}: it already holds checkpoints "
                f"({', '.join(found[:5])}{', ...' if len(found) > 5 else ''}), and a new run would overwrite "
                "its config_resolved.yaml and mix the two runs' checkpoints. Continue it with --resume "
                "(a damaged or missing last.ckpt resumes from the newest intact checkpoint), or give a new "
                "--run-dir."
            )

    def check_resume(self, cfg: ExperimentConfig, splits_dir: Path | None = None) -> Path:
        """The checkpoint to resume from; refuse a missing checkpoint, a changed experiment or other splits.

        What may change on resume: config/identity.py (RESUME_FREE_KEYS, and everything outside the
        locked sections but the device count). The CLI's --resume and the workflow both come here.
        """
        if not self.has_checkpoint():
            raise ResumeError(f"--resume: no checkpoint to resume from at {self.last_checkpoint}")
        if splits_dir is not None and (self.splits / "train.csv").is_file():
            diffs = self.splits_difference(Path(splits_dir))
            if diffs:
                raise ResumeError(
                    f"refusing to resume {self.path}: --splits {splits_dir} differs from the run's own "
                    f"splits "
                    f"({'; '.join(diffs)}); N and the data would change mid-run. Resume without --splits, "
                    "or start a new run directory."
                )
        if self.config.is_file():
            saved = self.saved_config()
            diffs = [
                d
                for d in diff_keys(saved, cfg, RESUME_LOCKED_SECTIONS)
                if d.split(":")[0] not in RESUME_FREE_KEYS
            ]
            diffs += [d for d in diff_keys(saved, cfg, ["train"]) if d.split(":")[0] in RESUME_LOCKED_KEYS]
            if diffs:
                raise ResumeError(
                    f"refusing to resume {self.path}: its checkpoint was trained with a different config "
                    f"({'; '.join(diffs)}). Start a new run directory instead."
                )
        return self.last_checkpoint

    def prepare_splits(self, cfg: ExperimentConfig, splits_dir: Path | None) -> Path:
        """splits/{train,val}.csv: copied from `splits_dir`, kept on resume, or made by indexing root_dir."""
        from vae_dynamics.data.index import index_subjects
        from vae_dynamics.data.splits import make_splits

        out = self.splits
        if splits_dir is not None:
            out.mkdir(parents=True, exist_ok=True)
            for name in SPLIT_FILES:
                src = Path(splits_dir) / name
                if not src.is_file():
                    raise FileNotFoundError(f"--splits: {src} not found")
                with atomic_path(out / name) as tmp:
                    shutil.copyfile(src, tmp)
            return out
        if all((out / name).is_file() for name in SPLIT_FILES):
            return out
        data = cfg.data
        log.info("indexing %s", data.root_dir)
        subjects, rejected = index_subjects(
            data.root_dir, self.index, workers=max(1, data.num_workers), spacing=data.spacing
        )
        for row in rejected.itertuples():
            log.warning("rejected subject %s: %s: %s", row.subject_id, row.file, row.reason)
        make_splits(self.index / "subjects.csv", out, data.val_split, cfg.train.seed)
        return out


def summary_run_dir(summary_path: str | os.PathLike[str], summary: dict[str, Any] | None = None) -> RunDir:
    """The run directory a train_summary.json names: relative to the summary's folder (absolute in
    summaries written before 0.4), so that a moved or re-mounted results folder still resolves."""
    summary_path = Path(summary_path)
    summary = summary if summary is not None else json.loads(summary_path.read_text())
    return RunDir(summary_path.parent / summary["run_dir"])
