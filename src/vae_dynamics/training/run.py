"""Assemble and run one training: the module and the Trainer from a config, then `train()`.

The run directory's layout and resume policy are training/run_dir.py; ranks are training/distributed.py;
the command line is `vae-dynamics train` (cli.py).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException

from vae_dynamics import experiments
from vae_dynamics.config import save_config
from vae_dynamics.config.schema import ExperimentConfig
from vae_dynamics.data.cache import preprocessing_contract
from vae_dynamics.data.datamodule import BraTSDataModule
from vae_dynamics.data.splits import check_split_dir
from vae_dynamics.io import write_json
from vae_dynamics.provenance import append_start, finish_start, provenance, version_change
from vae_dynamics.training.callbacks import (
    CompileTimer,
    EpochMetricsLogger,
    ReconSnapshotCallback,
    TargetBetaCheckpoint,
)
from vae_dynamics.training.checkpointing import (
    AtomicCheckpointIO,
    Preempted,
    PreemptionCheckpoint,
    intact_resume_checkpoint,
)
from vae_dynamics.training.distributed import (
    RUN_DIR_ENV,
    launched_rank,
    resolve_strategy,
    wait_for_rank0,
    world_size,
)
from vae_dynamics.training.run_dir import RunDir
from vae_dynamics.training.tracking import build_loggers, progress_callbacks

log = logging.getLogger("vae_dynamics.train")

STEP_LOG_EVERY_CUDA = 10


def build_module(cfg: ExperimentConfig, n_train: int) -> L.LightningModule:
    """The experiment's LightningModule (selected by model.variant) with N = number of train subjects."""
    experiment = experiments.of(cfg)
    common = dict(dataset_size=n_train, lr=cfg.train.lr, channels_last=use_channels_last(cfg),
                  encoder_head_lr_scale=cfg.train.encoder_head_lr_scale,
                  lr_warmup_steps=cfg.train.lr_warmup_steps,
                  encoder_head_lr_ramp_steps=cfg.train.encoder_head_lr_ramp_steps,
                  diagnostics_every_n_epochs=cfg.logging.diagnostics_every_n_epochs)  # fmt: skip
    module = experiment.lit_cls()(experiment.model_kwargs(cfg), **common, **cfg.loss.model_dump())
    if use_compile(cfg):
        # nn.Module.compile() compiles in place: the state_dict keeps its keys (no `_orig_mod.`), so
        # checkpoints load into an uncompiled model; dynamic=False: the batch shape is fixed (drop_last).
        module.model.compile(dynamic=False)
    return module


def use_compile(cfg: ExperimentConfig) -> bool:
    """train.compile: auto = on with CUDA (compiling costs more than it gains on CPU); true/false force it."""
    setting = cfg.train.compile
    return cuda_available(cfg) if setting == "auto" else bool(setting)


def cuda_available(cfg: ExperimentConfig) -> bool:
    return cfg.train.accelerator != "cpu" and torch.cuda.is_available()


def use_channels_last(cfg: ExperimentConfig) -> bool:
    # channels_last_3d pays off with cuDNN; on CPU it only slows the 3D convolutions down.
    return cfg.train.channels_last and cuda_available(cfg)


def resolve_precision(cfg: ExperimentConfig) -> str:
    """train.precision on CUDA; without CUDA, mixed fp16 becomes 32-true (with one warning)."""
    precision = cfg.train.precision
    if not cuda_available(cfg) and precision == "16-mixed":
        warnings.warn(
            "train.precision=16-mixed needs CUDA; no GPU is available, training on CPU with 32-true",
            stacklevel=2,
        )
        return "32-true"
    return precision


def setup_file_logging(run_dir: Path) -> logging.Handler:
    """Send the package's and Lightning's log records to <run_dir>/train.log (appending on resume)."""
    handler = logging.FileHandler(RunDir(run_dir).train_log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("vae_dynamics", "lightning.pytorch", "py.warnings"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    logging.captureWarnings(True)
    return handler


def teardown_file_logging(handler: logging.Handler) -> None:
    for name in ("vae_dynamics", "lightning.pytorch", "py.warnings"):
        logging.getLogger(name).removeHandler(handler)
    logging.captureWarnings(False)
    handler.close()


def build_trainer(cfg: ExperimentConfig, run_dir: Path) -> L.Trainer:
    """The Trainer, assembled in one place from the config."""
    on_cuda = cuda_available(cfg)
    if on_cuda:
        torch.backends.cudnn.benchmark = True  # fixed 128³ inputs: let cuDNN pick the fastest kernels
        torch.set_float32_matmul_precision("high")
    checkpoint = TargetBetaCheckpoint(
        first_epoch=experiments.of(cfg).warmup_epochs(cfg),
        dirpath=RunDir(run_dir).checkpoints,
        filename="epoch{epoch:03d}-val_loss{val/loss:.2f}",
        auto_insert_metric_name=False,  # the metric name has a '/', which would make a subfolder
        monitor="val/loss",
        mode="min",
        save_top_k=1,
        save_last=True,
    )
    recon = ReconSnapshotCallback(
        RunDir(run_dir).recon, cfg.logging.recon_every_n_epochs, cfg.logging.num_recon_samples,
        cfg.data.modalities,
    )  # fmt: skip
    progress = progress_callbacks(cfg.logging.progress_every_n_steps)
    plugins: list = [AtomicCheckpointIO()]  # checkpoints written beside their destination, never $TMPDIR
    if world_size(cfg) > 1 and os.environ.get("SLURM_NTASKS") == "1" and cfg.train.num_nodes == 1:
        # One SLURM task holding several devices (e.g. a Snakemake job): Lightning starts one process
        # per device itself. With one task per device (`srun --ntasks-per-node=N`) SLURM starts them.
        plugins.append(LightningEnvironment())
    return L.Trainer(
        default_root_dir=run_dir,
        plugins=plugins,
        accelerator="gpu" if on_cuda else "cpu",
        devices=cfg.train.devices,
        num_nodes=cfg.train.num_nodes,
        strategy=resolve_strategy(cfg),
        precision=resolve_precision(cfg),  # type: ignore[arg-type]  # one of config.schema's PRECISIONS
        max_epochs=cfg.train.max_epochs,
        logger=build_loggers(cfg.logging.loggers, run_dir, experiments.of(cfg).name),
        callbacks=[
            checkpoint,
            recon,
            EpochMetricsLogger(),
            *progress,
            PreemptionCheckpoint(RunDir(run_dir).last_checkpoint),
        ]
        + ([CompileTimer()] if use_compile(cfg) else []),
        enable_progress_bar=any(isinstance(c, TQDMProgressBar) for c in progress),
        # Sending step values to the loggers reads them back from the device (a sync): every step on
        # CPU, every STEP_LOG_EVERY_CUDA steps on CUDA so that the GPU queue stays full.
        log_every_n_steps=STEP_LOG_EVERY_CUDA if on_cuda else 1,
        num_sanity_val_steps=0,
        enable_model_summary=True,
    )


def choose_checkpoint(checkpoint: TargetBetaCheckpoint, run_dir: Path, first_epoch: int) -> tuple[Path, str]:
    """The checkpoint to export and evaluate, and why it was chosen."""
    if checkpoint.best_model_path:
        return Path(checkpoint.best_model_path), (
            f"lowest val/loss among the epochs at the target beta (epoch >= {first_epoch})"
        )
    return RunDir(run_dir).last_checkpoint, (
        f"last.ckpt: training has not reached the target beta yet (the warm-up ends at epoch {first_epoch}), "
        "and val/loss of warm-up epochs with different beta are not comparable"
    )


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
    if rank > 0:
        return _train_other_rank(cfg, run, ckpt_path)
    with run.lock():
        if not resume:  # again under the lock: a start that raced this one may have written checkpoints
            run.check_fresh_start()
        return _train_rank0(cfg, run, resume, splits_dir, ckpt_path, damage_note)


def _train_rank0(
    cfg: ExperimentConfig,
    run: RunDir,
    resume: bool,
    splits_dir: Path | None,
    ckpt_path: Path | None,
    damage_note: str | None,
) -> dict[str, Any]:
    """Rank 0's training, under the run directory's lock: it writes every file of the run."""
    experiment = experiments.of(cfg)
    run.create()
    handler = setup_file_logging(run.path)
    record = append_start(run.provenance, provenance())  # one entry per start, the latest on top
    write_json(record, run.provenance)
    try:
        log.info("%s run %s in %s", "resuming" if resume else "starting", experiment.name, run.path)
        if damage_note is not None:
            log.warning(damage_note)
            print(f"train: WARNING: {damage_note}", file=sys.stderr)
        if ckpt_path is not None:
            log.info("resuming from %s", ckpt_path)
            saved = torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True).get(
                "vae_dynamics"
            )
            change = version_change(saved)
            if change:
                note = f"this resume crosses a code change ({change}): the run mixes two versions"
                log.warning(note)
                print(f"train: WARNING: {note}", file=sys.stderr)
        log.info("config: %s", yaml.safe_dump(cfg.to_dict(), sort_keys=False).replace("\n", " | "))
        save_config(cfg, run.config)
        if not run.preprocessing.exists():  # what new scans must go through (inference.py checks it)
            write_json(preprocessing_contract(cfg.data), run.preprocessing)
        L.seed_everything(cfg.train.seed, workers=True)
        splits = run.prepare_splits(cfg, None if resume else splits_dir)
        os.environ[RUN_DIR_ENV] = str(run.path)  # for the ranks Lightning launches from this process
        datamodule = BraTSDataModule(cfg.data, splits, seed=cfg.train.seed)
        log.info("subjects: %d train, %d val", datamodule.n_train, len(datamodule.val_records))
        module = build_module(cfg, datamodule.n_train)
        trainer = build_trainer(cfg, run.path)
        log.info("device: %s, precision: %s", trainer.strategy.root_device, trainer.precision)
        fit(trainer, module, datamodule, ckpt_path)
        checkpoint = trainer.checkpoint_callback
        if not isinstance(checkpoint, TargetBetaCheckpoint):
            raise RuntimeError(f"the trainer's checkpoint callback is {type(checkpoint).__name__}, not ours")
        best, choice = choose_checkpoint(checkpoint, run.path, experiment.warmup_epochs(cfg))
        # Checkpoints relative to the run directory: the record stays valid when the folder moves.
        summary = {
            "experiment": experiment.name,
            "run_dir": str(run.path.resolve()),
            "best_checkpoint": run.relative(best),
            "checkpoint_choice": choice,
            "last_checkpoint": run.relative(run.last_checkpoint),
            "best_val_loss": float(checkpoint.best_model_score)
            if checkpoint.best_model_score is not None
            else None,
            "epochs": trainer.current_epoch,
            "global_step": trainer.global_step,
            "n_train": datamodule.n_train,
            "n_val": len(datamodule.val_records),
        }
        write_json(finish_start(record), run.provenance)
        log.info("finished: %s", summary)
        return summary
    finally:
        os.environ.pop(RUN_DIR_ENV, None)
        teardown_file_logging(handler)


def _train_other_rank(cfg: ExperimentConfig, run: RunDir, ckpt_path: Path | None) -> dict[str, Any]:
    """A rank > 0 of a DDP run: train on what rank 0 prepared (splits, config); write nothing."""
    wait_for_rank0([run.splits / "val.csv", run.config])
    L.seed_everything(cfg.train.seed, workers=True)
    datamodule = BraTSDataModule(cfg.data, run.splits, seed=cfg.train.seed)
    module = build_module(cfg, datamodule.n_train)
    trainer = build_trainer(cfg, run.path)
    fit(trainer, module, datamodule, ckpt_path)
    return {"run_dir": str(run.path.resolve())}


def fit(
    trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule, ckpt_path: Path | None
) -> None:
    """trainer.fit; a pre-emption (SIGTERM/SIGUSR1, last.ckpt saved) leaves as Preempted (exit 75)."""
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException as exc:
        raise Preempted("SIGTERM received; last.ckpt holds the last completed step") from exc
    except Preempted as exc:
        raise Preempted(f"{exc}; last.ckpt holds the last completed step") from exc
