"""Run one training: `train()` checks the run directory, takes its lock, resumes, and writes the summary.

The module and the Trainer are assembled in training/trainer.py; the run directory's layout and resume
policy are training/run_dir.py; ranks are training/distributed.py; the command line is
`vae-dynamics train` (cli.py).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml

from vae_dynamics import experiments
from vae_dynamics.config import ConfigError, save_config
from vae_dynamics.config.schema import ExperimentConfig
from vae_dynamics.data.cache import preprocessing_contract
from vae_dynamics.data.splits import check_split_dir
from vae_dynamics.io import write_json
from vae_dynamics.provenance import append_start, finish_start, provenance, version_change
from vae_dynamics.training.callbacks import TargetBetaCheckpoint
from vae_dynamics.training.checkpointing import epochs_held, intact_resume_checkpoint
from vae_dynamics.training.distributed import RUN_DIR_ENV, launched_rank, wait_for_rank0
from vae_dynamics.training.run_dir import ResumeError, RunDir
from vae_dynamics.training.tracking import file_logging
from vae_dynamics.training.trainer import Hardware, assemble, fit

log = logging.getLogger("vae_dynamics.train")


def train(
    cfg: ExperimentConfig,
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    splits_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Train one experiment; return a summary (run dir, best checkpoint, best val loss, epochs, steps).

    Under DDP every rank runs this function (Lightning re-runs the command for ranks > 0, or srun starts
    them all); only rank 0 writes the run directory's files, the other ranks read what it wrote.
    Rank 0 holds the run directory's lock (RunDir.lock) for the whole training.
    """
    problems = Hardware.problems(cfg)
    if problems:  # before anything is written: a refused start leaves no run folder
        raise ConfigError("; ".join(problems))
    rank = launched_rank(cfg.train.devices)
    run = RunDir.for_launch(cfg, run_dir, rank)
    splits_dir = Path(splits_dir) if splits_dir else None
    if not resume and rank == 0:
        run.check_fresh_start()
        if splits_dir is not None:  # before anything is written: a refused start leaves no run folder
            check_split_dir(splits_dir)
    ckpt_path = run.check_resume(cfg, splits_dir) if resume else None
    damage_note = None
    if ckpt_path is not None:  # last.ckpt, or the newest intact one when it is damaged
        ckpt_path, damage_note = intact_resume_checkpoint(ckpt_path.parent)
        _check_epochs(run, ckpt_path, cfg.train.max_epochs)
    if rank > 0:  # a DDP rank: train on what rank 0 prepared (splits, config); write nothing
        wait_for_rank0([run.splits / "val.csv", run.config])
        fit(*assemble(cfg, run.path, run.splits), ckpt_path)
        return {"run_dir": str(run.path.resolve())}
    with run.lock() as removed:
        if not resume:  # again under the lock: a start that raced this one may have written checkpoints
            run.check_fresh_start()
        return _train_rank0(cfg, run, resume, splits_dir, ckpt_path, [damage_note, *removed])


def _train_rank0(
    cfg: ExperimentConfig,
    run: RunDir,
    resume: bool,
    splits_dir: Path | None,
    ckpt_path: Path | None,
    notes: list[str | None],
) -> dict[str, Any]:
    """Rank 0's training, under the run directory's lock: it writes every file of the run. `notes` are
    warnings for train.log and the console (a damaged checkpoint skipped, leftovers removed)."""
    experiment = experiments.of(cfg)
    run.create()
    record = append_start(run.provenance, provenance())  # one entry per start, the latest on top
    write_json(record, run.provenance)
    with file_logging(run.train_log):
        log.info("%s run %s in %s", "resuming" if resume else "starting", experiment.name, run.path)
        for note in (*notes, _version_note(ckpt_path)):
            if note is not None:
                log.warning(note)
                print(f"train: WARNING: {note}", file=sys.stderr)
        log.info("config: %s", yaml.safe_dump(cfg.to_dict(), sort_keys=False).replace("\n", " | "))
        # a relative cache folder is the one of this start's working directory, wherever it is read later
        cache_dir = str(Path(cfg.data.cache_dir).resolve())
        data = cfg.data.model_copy(update={"cache_dir": cache_dir})
        save_config(cfg.model_copy(update={"data": data}), run.config)
        if not resume:  # a failed earlier start's splits and contract are derived anew from this config
            run.clear_start_files(keep=splits_dir)
        if not run.preprocessing.exists():  # what new scans must go through (inference.py checks it)
            write_json(preprocessing_contract(cfg.data), run.preprocessing)
        splits = run.prepare_splits(cfg, None if resume else splits_dir)
        os.environ[RUN_DIR_ENV] = str(run.path)  # for the ranks Lightning launches from this process
        try:
            trainer, module, datamodule = assemble(cfg, run.path, splits)
            log.info("subjects: %d train, %d val", datamodule.n_train, len(datamodule.val_records))
            log.info("device: %s, precision: %s", trainer.strategy.root_device, trainer.precision)
            fit(trainer, module, datamodule, ckpt_path)
        finally:
            os.environ.pop(RUN_DIR_ENV, None)
        summary = _summary(experiment.name, run, trainer, datamodule.n_train, len(datamodule.val_records))
        write_json(finish_start(record), run.provenance)
        log.info("finished: %s", summary)
        return summary


def _check_epochs(run: RunDir, ckpt_path: Path, max_epochs: int) -> None:
    """Refuse a resume whose train.max_epochs is below the epochs the run holds (Lightning would fail
    with a traceback); say so when they are equal (nothing to train: the outputs are written again)."""
    held = epochs_held(ckpt_path)
    if max_epochs < held:
        raise ResumeError(
            f"{run.path} already holds {held} epochs, and train.max_epochs is {max_epochs}: a run cannot be "
            f"shortened. Keep train.max_epochs >= {held} to continue it, or start a new run (another seed "
            "or run directory) for a shorter training"
        )
    if max_epochs == held:
        message = (
            f"{run.path} already holds its {held} epochs (train.max_epochs {max_epochs}): nothing to train; "
            "the summary is written again from its checkpoints"
        )
        log.info(message)
        print(f"train: {message}", file=sys.stderr)


def _version_note(ckpt_path: Path | None) -> str | None:
    """A warning when the checkpoint resumed from was written by another version of the code."""
    if ckpt_path is None:
        return None
    log.info("resuming from %s", ckpt_path)
    saved = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True).get("vae_dynamics")
    change = version_change(saved)
    return f"this resume crosses a code change ({change}): the run mixes two versions" if change else None


def _summary(name: str, run: RunDir, trainer: L.Trainer, n_train: int, n_val: int) -> dict[str, Any]:
    """train_summary.json's content; checkpoints relative to the run directory (it may move)."""
    checkpoint = trainer.checkpoint_callback
    if not isinstance(checkpoint, TargetBetaCheckpoint):
        raise RuntimeError(f"the trainer's checkpoint callback is {type(checkpoint).__name__}, not ours")
    best, choice = checkpoint.chosen(run.last_checkpoint)
    score = checkpoint.best_model_score
    return {
        "experiment": name,
        "run_dir": str(run.path.resolve()),
        "best_checkpoint": run.relative(best),
        "checkpoint_choice": choice,
        "last_checkpoint": run.relative(run.last_checkpoint),
        "best_val_loss": float(score) if score is not None else None,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "n_train": n_train,
        "n_val": n_val,
    }
