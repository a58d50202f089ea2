"""The Trainer and the module of one run, assembled from its config in one place.

`Hardware` reads train.* once (CUDA, compile, channels-last, precision); `assemble` builds the
datamodule, the experiment's LightningModule and the Trainer with every callback and logger;
`fit` runs it and turns a pre-emption into `Preempted` (exit 75). training/run.py drives a run
(its directory, resume, ranks) and calls these.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException

from vae_dynamics import experiments
from vae_dynamics.config.schema import ExperimentConfig, TrainConfig
from vae_dynamics.data.datamodule import BraTSDataModule
from vae_dynamics.training.callbacks import (
    CompileTimer,
    EpochMetricsLogger,
    ReconSnapshotCallback,
    TargetBetaCheckpoint,
    resume_checkpoint,
)
from vae_dynamics.training.checkpointing import AtomicCheckpointIO, Preempted, PreemptionCheckpoint
from vae_dynamics.training.distributed import resolve_strategy, world_size
from vae_dynamics.training.lit_modules import ExperimentLitModule
from vae_dynamics.training.run_dir import RunDir
from vae_dynamics.training.tracking import TrackerRuns, build_loggers, progress_callbacks

# Sending step values to the loggers reads them back from the device (a sync): every step on CPU,
# every STEP_LOG_EVERY_CUDA steps on CUDA so that the GPU queue stays full.
STEP_LOG_EVERY_CUDA = 10


@dataclass(frozen=True)
class Hardware:
    """What train.* resolves to on this machine."""

    cuda: bool  # train.accelerator is not cpu and CUDA is available
    compile: bool  # train.compile: auto = on with CUDA (compiling costs more than it gains on CPU)
    channels_last: bool  # channels_last_3d pays off with cuDNN; on CPU it only slows 3D convolutions
    precision: str  # train.precision; without CUDA, 16-mixed becomes 32-true (with one warning)

    @staticmethod
    def problems(cfg: ExperimentConfig) -> list[str]:
        """The keys that ask for hardware this machine lacks, each named with what is missing (checked
        before a run writes anything)."""
        cuda = torch.cuda.is_available()
        found = []
        if cfg.train.accelerator in ("gpu", "cuda") and not cuda:
            found.append(f"train.accelerator: {cfg.train.accelerator} needs CUDA, and no GPU is available")
        if cfg.data.gpu_cache is True and (cfg.train.accelerator == "cpu" or not cuda):
            found.append("data.gpu_cache: true needs training on a CUDA device; use auto or false")
        if cuda and cfg.train.accelerator != "cpu" and cfg.train.devices > torch.cuda.device_count():
            found.append(
                f"train.devices: {cfg.train.devices} GPUs asked for, {torch.cuda.device_count()} available"
            )
        return found

    @classmethod
    def of(cls, train: TrainConfig) -> Hardware:
        cuda = train.accelerator != "cpu" and torch.cuda.is_available()
        precision = train.precision
        if not cuda and precision == "16-mixed":
            warnings.warn(
                "train.precision=16-mixed needs CUDA; no GPU is available, training on CPU with 32-true",
                stacklevel=2,
            )
            precision = "32-true"
        return cls(
            cuda=cuda,
            compile=cuda if train.compile == "auto" else bool(train.compile),
            channels_last=train.channels_last and cuda,
            precision=precision,
        )


def build_module(
    cfg: ExperimentConfig, n_train: int, hardware: Hardware | None = None
) -> ExperimentLitModule:
    """The experiment's LightningModule (selected by model.variant) with N = number of train subjects."""
    hardware = hardware or Hardware.of(cfg.train)
    module = ExperimentLitModule.for_config(cfg, n_train, hardware.channels_last)
    if hardware.compile:
        # nn.Module.compile() compiles in place: the state_dict keeps its keys (no `_orig_mod.`), so
        # checkpoints load into an uncompiled model; dynamic=False: the batch shape is fixed (drop_last).
        module.model.compile(dynamic=False)
    return module


def build_trainer(cfg: ExperimentConfig, run_dir: Path, hardware: Hardware | None = None) -> L.Trainer:
    """The Trainer with the run's checkpoints, snapshots, loggers and progress lines."""
    hardware = hardware or Hardware.of(cfg.train)
    if hardware.cuda:
        torch.backends.cudnn.benchmark = True  # fixed 128³ inputs: let cuDNN pick the fastest kernels
        torch.set_float32_matmul_precision("high")
    experiment, layout, logging_cfg = experiments.of(cfg), RunDir(run_dir), cfg.logging
    checkpoint = TargetBetaCheckpoint(
        first_epoch=experiment.warmup_epochs(cfg.loss),
        dirpath=layout.checkpoints,
        filename="epoch{epoch:03d}-val_loss{val/loss:.2f}",
        auto_insert_metric_name=False,  # the metric name has a '/', which would make a subfolder
        monitor="val/loss",
        mode="min",
        save_top_k=1,
    )
    recon = ReconSnapshotCallback(
        layout.recon, logging_cfg.recon_every_n_epochs, logging_cfg.num_recon_samples, cfg.data.modalities
    )
    progress = progress_callbacks(logging_cfg.progress_every_n_steps)
    plugins: list = [AtomicCheckpointIO()]  # checkpoints written beside their destination, never $TMPDIR
    if world_size(cfg) > 1 and os.environ.get("SLURM_NTASKS") == "1" and cfg.train.num_nodes == 1:
        # One SLURM task holding several devices (e.g. a Snakemake job): Lightning starts one process
        # per device itself. With one task per device (`srun --ntasks-per-node=N`) SLURM starts them.
        plugins.append(LightningEnvironment())
    callbacks = [
        checkpoint,
        resume_checkpoint(layout.checkpoints),  # after the ranking: last.ckpt holds this epoch's
        recon,
        EpochMetricsLogger(),
        *progress,
        PreemptionCheckpoint(layout.last_checkpoint),
        TrackerRuns(run_dir, logging_cfg, experiment.name),
    ]
    return L.Trainer(
        default_root_dir=run_dir,
        plugins=plugins,
        accelerator="gpu" if hardware.cuda else "cpu",
        devices=cfg.train.devices,
        num_nodes=cfg.train.num_nodes,
        strategy=resolve_strategy(cfg),
        precision=hardware.precision,  # type: ignore[arg-type]  # one of config.schema's PRECISIONS
        max_epochs=cfg.train.max_epochs,
        logger=build_loggers(logging_cfg, run_dir, experiment.name),
        callbacks=callbacks + ([CompileTimer()] if hardware.compile else []),
        enable_progress_bar=any(isinstance(c, TQDMProgressBar) for c in progress),
        log_every_n_steps=STEP_LOG_EVERY_CUDA if hardware.cuda else 1,
        num_sanity_val_steps=0,
        enable_model_summary=True,
    )


def assemble(
    cfg: ExperimentConfig, run_dir: Path, splits: Path
) -> tuple[L.Trainer, ExperimentLitModule, BraTSDataModule]:
    """Seeded: the datamodule of the run's splits, its module and its Trainer."""
    L.seed_everything(cfg.train.seed, workers=True)
    hardware = Hardware.of(cfg.train)
    datamodule = BraTSDataModule(cfg.data, splits, seed=cfg.train.seed)
    module = build_module(cfg, datamodule.n_train, hardware)
    return build_trainer(cfg, run_dir, hardware), module, datamodule


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
