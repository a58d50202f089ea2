"""Assemble and run one training: run directory, artifacts, data, model, Trainer, resume.

python scripts/train.py --config src/vae_dynamics/config/exp2_tcvae_sbd.yaml
python scripts/train.py --config C --run-dir D --resume --set train.max_epochs=300
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch
import yaml
from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException

from vae_dynamics.config import ConfigError, diff_keys, experiment_name, load_config, save_config
from vae_dynamics.config.identity import RESUME_FREE_KEYS, RESUME_LOCKED_KEYS, RESUME_LOCKED_SECTIONS
from vae_dynamics.data.datamodule import BraTSDataModule
from vae_dynamics.data.index import NoValidSubjectsError, index_subjects
from vae_dynamics.data.splits import make_splits
from vae_dynamics.io import atomic_path, write_json
from vae_dynamics.training.callbacks import (
    CompileTimer,
    EpochMetricsLogger,
    ReconSnapshotCallback,
    TargetBetaCheckpoint,
)
from vae_dynamics.training.checkpointing import (
    AtomicCheckpointIO,
    DamagedCheckpointError,
    Preempted,
    PreemptionCheckpoint,
    intact_resume_checkpoint,
)
from vae_dynamics.training.lit_modules import LIT_MODULES
from vae_dynamics.training.tracking import (
    LoggerUnavailableError,
    build_loggers,
    finish_provenance,
    progress_callbacks,
    provenance,
)

log = logging.getLogger("vae_dynamics.train")

STEP_LOG_EVERY_CUDA = 10
# Set by rank 0 before Lightning launches the other ranks (which re-run the same command).
RUN_DIR_ENV = "VAE_DYNAMICS_RUN_DIR"


class ResumeError(RuntimeError):
    """A resume was asked for but is impossible or would mix different experiments."""


class RankSetupTimeout(RuntimeError):
    """A DDP process of rank > 0 waited too long for rank 0 to prepare the run directory."""


# How long ranks > 0 wait for rank 0's splits and config (seconds; rank 0 may index a large dataset).
RANK_WAIT_ENV = "VAE_DYNAMICS_RANK_WAIT_S"


def model_kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    """Constructor keywords of the experiment's model from a validated config."""
    m = cfg["model"]
    kwargs = dict(
        z_dim=m["z_dim"], input_channels=m["input_channels"], base_filters=m["base_filters"], norm=m["norm"],
        gradient_checkpointing=cfg["train"]["gradient_checkpointing"],
    )  # fmt: skip
    if m["variant"] == "tcvae_sbd":
        kwargs["sbd_grid_size"] = tuple(m["sbd_grid_size"])
        kwargs.update(
            {k: m[k] for k in ("sbd_z_gain", "sbd_coord_gain", "sbd_project_norm", "logvar_init_bias")}
        )
    return kwargs


def build_module(cfg: dict[str, Any], n_train: int) -> L.LightningModule:
    """The experiment's LightningModule (selected by model.variant) with N = number of train subjects."""
    variant = cfg["model"]["variant"]
    if variant not in LIT_MODULES:
        raise ConfigError(f"model.variant: {variant!r} unknown; valid variants: {sorted(LIT_MODULES)}")
    common = dict(dataset_size=n_train, lr=cfg["train"]["lr"], channels_last=use_channels_last(cfg),
                  encoder_head_lr_scale=cfg["train"]["encoder_head_lr_scale"],
                  diagnostics_every_n_epochs=cfg["logging"]["diagnostics_every_n_epochs"])  # fmt: skip
    module = LIT_MODULES[variant](model_kwargs(cfg), **common, **cfg["loss"])
    if use_compile(cfg):
        # nn.Module.compile() compiles in place: the state_dict keeps its keys (no `_orig_mod.`), so
        # checkpoints load into an uncompiled model; dynamic=False: the batch shape is fixed (drop_last).
        module.model.compile(dynamic=False)
    return module


def use_compile(cfg: dict[str, Any]) -> bool:
    """train.compile: auto = on with CUDA (compiling costs more than it gains on CPU); true/false force it."""
    setting = cfg["train"]["compile"]
    return cuda_available(cfg) if setting == "auto" else bool(setting)


def cuda_available(cfg: dict[str, Any]) -> bool:
    return cfg["train"]["accelerator"] != "cpu" and torch.cuda.is_available()


def use_channels_last(cfg: dict[str, Any]) -> bool:
    # channels_last_3d pays off with cuDNN; on CPU it only slows the 3D convolutions down.
    return cfg["train"]["channels_last"] and cuda_available(cfg)


def resolve_precision(cfg: dict[str, Any]) -> str:
    """train.precision on CUDA; without CUDA, mixed fp16 becomes 32-true (with one warning)."""
    precision = cfg["train"]["precision"]
    if not cuda_available(cfg) and precision == "16-mixed":
        warnings.warn(
            "train.precision=16-mixed needs CUDA; no GPU is available, training on CPU with 32-true",
            stacklevel=2,
        )
        return "32-true"
    return precision


def setup_file_logging(run_dir: Path) -> logging.Handler:
    """Send the package's and Lightning's log records to <run_dir>/train.log (appending on resume)."""
    handler = logging.FileHandler(run_dir / "train.log")
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


def new_run_dir(cfg: dict[str, Any]) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(cfg["logging"]["save_dir"]) / f"{stamp}_{experiment_name(cfg)}"


def warmup_epochs(cfg: dict[str, Any]) -> int:
    """First epoch at the target β (Exp2: beta_tc, Exp1: beta_kl)."""
    loss = cfg["loss"]
    return loss.get("beta_tc_annealing_epochs", loss.get("beta_kl_annealing_epochs", 0))


def splits_difference(own: Path, given: Path) -> list[str]:
    """How the split CSVs in `given` differ from a run's own (empty when they hold the same subjects)."""
    diffs = []
    for name in ("train.csv", "val.csv"):
        if not (given / name).is_file():
            raise FileNotFoundError(f"--splits: {given / name} not found")
        a = pd.read_csv(own / name, dtype=str).set_index("subject_id")
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


def check_resume(run_dir: Path, cfg: dict[str, Any], splits_dir: Path | None = None) -> Path:
    """The checkpoint to resume from; refuse a missing checkpoint, a changed experiment or other splits."""
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise ResumeError(f"--resume: no checkpoint to resume from at {ckpt}")
    if splits_dir is not None and (run_dir / "splits" / "train.csv").is_file():
        diffs = splits_difference(run_dir / "splits", splits_dir)
        if diffs:
            raise ResumeError(
                f"refusing to resume {run_dir}: --splits {splits_dir} differs from the run's own splits "
                f"({'; '.join(diffs)}); N and the data would change mid-run. Resume without --splits, "
                "or start a new run directory."
            )
    saved_path = run_dir / "config_resolved.yaml"
    if saved_path.is_file():
        saved = yaml.safe_load(saved_path.read_text())
        diffs = [
            d
            for d in diff_keys(saved, cfg, RESUME_LOCKED_SECTIONS)
            if d.split(":")[0] not in RESUME_FREE_KEYS
        ]
        saved_train = {"devices": 1, "num_nodes": 1, **saved.get("train", {})}  # runs from before these keys
        diffs += [
            d
            for d in diff_keys({"train": saved_train}, cfg, ["train"])
            if d.split(":")[0] in RESUME_LOCKED_KEYS
        ]
        if diffs:
            raise ResumeError(
                f"refusing to resume {run_dir}: its checkpoint was trained with a different config "
                f"({'; '.join(diffs)}). Start a new run directory instead."
            )
    return ckpt


def prepare_splits(cfg: dict[str, Any], run_dir: Path, splits_dir: Path | None) -> Path:
    """<run_dir>/splits/{train,val}.csv: copied from `splits_dir`, kept on resume, or made from root_dir."""
    out = run_dir / "splits"
    if splits_dir is not None:
        out.mkdir(parents=True, exist_ok=True)
        for name in ("train.csv", "val.csv"):
            src = Path(splits_dir) / name
            if not src.is_file():
                raise FileNotFoundError(f"--splits: {src} not found")
            with atomic_path(out / name) as tmp:
                shutil.copyfile(src, tmp)
        return out
    if (out / "train.csv").is_file() and (out / "val.csv").is_file():
        return out
    data = cfg["data"]
    log.info("indexing %s", data["root_dir"])
    subjects, rejected = index_subjects(
        data["root_dir"], run_dir / "index", workers=max(1, data["num_workers"])
    )
    for row in rejected.itertuples():
        log.warning("rejected subject %s: %s: %s", row.subject_id, row.file, row.reason)
    make_splits(run_dir / "index" / "subjects.csv", out, data["val_split"], cfg["train"]["seed"])
    return out


def world_size(cfg: dict[str, Any]) -> int:
    return cfg["train"]["devices"] * cfg["train"]["num_nodes"]


def resolve_strategy(cfg: dict[str, Any]) -> str:
    """train.strategy: auto = DDP (one process per device) when more than one device is used."""
    strategy = cfg["train"]["strategy"]
    return "ddp" if strategy == "auto" and world_size(cfg) > 1 else strategy


def launched_rank(devices_per_node: int | None = None) -> int:
    """0 for the process that writes the run's files; > 0 for the other processes of a DDP run.

    Lightning re-runs the command for ranks > 0 with LOCAL_RANK / NODE_RANK set (torchrun sets RANK);
    `srun` with several tasks sets SLURM_PROCID. A single-task SLURM job is rank 0 whatever SLURM says.
    The global rank is NODE_RANK · (processes per node) + LOCAL_RANK; processes per node come from
    LOCAL_WORLD_SIZE (torchrun) or `devices_per_node` (train.devices).
    """
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if "LOCAL_RANK" in os.environ:
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", devices_per_node or 1))
        return int(os.environ["LOCAL_RANK"]) + int(os.environ.get("NODE_RANK", 0)) * per_node
    if int(os.environ.get("SLURM_NTASKS", 1)) > 1:
        return int(os.environ.get("SLURM_PROCID", 0))
    return 0


def build_trainer(cfg: dict[str, Any], run_dir: Path) -> L.Trainer:
    """The Trainer, assembled in one place from the config."""
    on_cuda = cuda_available(cfg)
    if on_cuda:
        torch.backends.cudnn.benchmark = True  # fixed 128³ inputs: let cuDNN pick the fastest kernels
        torch.set_float32_matmul_precision("high")
    checkpoint = TargetBetaCheckpoint(
        first_epoch=warmup_epochs(cfg),
        dirpath=run_dir / "checkpoints",
        filename="epoch{epoch:03d}-val_loss{val/loss:.2f}",
        auto_insert_metric_name=False,  # the metric name has a '/', which would make a subfolder
        monitor="val/loss",
        mode="min",
        save_top_k=1,
        save_last=True,
    )
    recon = ReconSnapshotCallback(
        run_dir / "recon", cfg["logging"]["recon_every_n_epochs"], cfg["logging"]["num_recon_samples"],
        cfg["data"]["modalities"],
    )  # fmt: skip
    progress = progress_callbacks(cfg["logging"]["progress_every_n_steps"])
    plugins: list = [AtomicCheckpointIO()]  # checkpoints written beside their destination, never $TMPDIR
    if world_size(cfg) > 1 and os.environ.get("SLURM_NTASKS") == "1" and cfg["train"]["num_nodes"] == 1:
        # One SLURM task holding several devices (e.g. a Snakemake job): Lightning starts one process
        # per device itself. With one task per device (`srun --ntasks-per-node=N`) SLURM starts them.
        plugins.append(LightningEnvironment())
    return L.Trainer(
        default_root_dir=run_dir,
        plugins=plugins,
        accelerator="gpu" if on_cuda else "cpu",
        devices=cfg["train"]["devices"],
        num_nodes=cfg["train"]["num_nodes"],
        strategy=resolve_strategy(cfg),
        precision=resolve_precision(cfg),
        max_epochs=cfg["train"]["max_epochs"],
        logger=build_loggers(cfg["logging"]["loggers"], run_dir, experiment_name(cfg)),
        callbacks=[
            checkpoint,
            recon,
            EpochMetricsLogger(),
            *progress,
            PreemptionCheckpoint(run_dir / "checkpoints" / "last.ckpt"),
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
    return run_dir / "checkpoints" / "last.ckpt", (
        f"last.ckpt: training has not reached the target beta yet (the warm-up ends at epoch {first_epoch}), "
        "and val/loss of warm-up epochs with different beta are not comparable"
    )


def train(
    cfg: dict[str, Any],
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    splits_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Train one experiment; return a summary (run dir, best checkpoint, best val loss, epochs, steps).

    Under DDP every rank runs this function (Lightning re-runs the command for ranks > 0, or srun starts
    them all); only rank 0 writes the run directory's files, the other ranks read what it wrote.
    """
    rank = launched_rank(cfg["train"]["devices"])
    if run_dir is None:
        run_dir = os.environ.get(RUN_DIR_ENV) if rank > 0 else None
    run_dir = Path(run_dir) if run_dir is not None else new_run_dir(cfg)
    splits_dir = Path(splits_dir) if splits_dir else None
    ckpt_path = check_resume(run_dir, cfg, splits_dir) if resume else None
    damage_note = None
    if ckpt_path is not None:  # last.ckpt, or the newest intact one when it is damaged
        ckpt_path, damage_note = intact_resume_checkpoint(ckpt_path.parent)
    if rank > 0:
        return _train_other_rank(cfg, run_dir, ckpt_path)
    run_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("checkpoints", "logs", "recon", "splits"):
        (run_dir / sub).mkdir(exist_ok=True)
    handler = setup_file_logging(run_dir)
    record = provenance()
    write_json(record, run_dir / "provenance.json")
    try:
        log.info("%s run %s in %s", "resuming" if resume else "starting", experiment_name(cfg), run_dir)
        if damage_note is not None:
            log.warning(damage_note)
            print(f"train: WARNING: {damage_note}", file=sys.stderr)
        if ckpt_path is not None:
            log.info("resuming from %s", ckpt_path)
        log.info("config: %s", yaml.safe_dump(cfg, sort_keys=False).replace("\n", " | "))
        save_config(cfg, run_dir / "config_resolved.yaml")
        L.seed_everything(cfg["train"]["seed"], workers=True)
        splits = prepare_splits(cfg, run_dir, None if resume else splits_dir)
        os.environ[RUN_DIR_ENV] = str(run_dir)  # for the ranks Lightning launches from this process
        datamodule = BraTSDataModule(cfg["data"], splits, seed=cfg["train"]["seed"])
        log.info("subjects: %d train, %d val", datamodule.n_train, len(datamodule.val_records))
        module = build_module(cfg, datamodule.n_train)
        trainer = build_trainer(cfg, run_dir)
        log.info("device: %s, precision: %s", trainer.strategy.root_device, trainer.precision)
        fit(trainer, module, datamodule, ckpt_path)
        checkpoint = trainer.checkpoint_callback
        best, choice = choose_checkpoint(checkpoint, run_dir, warmup_epochs(cfg))
        summary = {
            "experiment": experiment_name(cfg),
            "run_dir": str(run_dir.resolve()),
            "best_checkpoint": str(best.resolve()),
            "checkpoint_choice": choice,
            "last_checkpoint": str((run_dir / "checkpoints" / "last.ckpt").resolve()),
            "best_val_loss": float(checkpoint.best_model_score)
            if checkpoint.best_model_score is not None
            else None,
            "epochs": trainer.current_epoch,
            "global_step": trainer.global_step,
            "n_train": datamodule.n_train,
            "n_val": len(datamodule.val_records),
        }
        write_json(finish_provenance(record), run_dir / "provenance.json")
        log.info("finished: %s", summary)
        return summary
    finally:
        os.environ.pop(RUN_DIR_ENV, None)
        teardown_file_logging(handler)


def _train_other_rank(cfg: dict[str, Any], run_dir: Path, ckpt_path: Path | None) -> dict[str, Any]:
    """A rank > 0 of a DDP run: train on what rank 0 prepared (splits, config); write nothing."""
    splits = run_dir / "splits"
    wait_s = float(os.environ.get(RANK_WAIT_ENV, 6 * 3600))
    deadline = time.time() + wait_s
    while not ((splits / "val.csv").is_file() and (run_dir / "config_resolved.yaml").is_file()):
        if time.time() > deadline:  # srun starts all ranks at once: wait for rank 0's files
            raise RankSetupTimeout(
                f"a DDP process waited {wait_s:.0f} s for rank 0 to write {splits}/val.csv and "
                f"{run_dir}/config_resolved.yaml (rank 0 indexes and splits the data first); none came. "
                f"Look at rank 0's log; raise the wait with {RANK_WAIT_ENV}=<seconds>."
            )
        time.sleep(1)
    L.seed_everything(cfg["train"]["seed"], workers=True)
    datamodule = BraTSDataModule(cfg["data"], splits, seed=cfg["train"]["seed"])
    module = build_module(cfg, datamodule.n_train)
    trainer = build_trainer(cfg, run_dir)
    fit(trainer, module, datamodule, ckpt_path)
    return {"run_dir": str(run_dir.resolve())}


def fit(trainer: L.Trainer, module: L.LightningModule, datamodule, ckpt_path: Path | None) -> None:
    """trainer.fit; a pre-emption (SIGTERM/SIGUSR1, last.ckpt saved) leaves as Preempted (exit 75)."""
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException as exc:
        raise Preempted("SIGTERM received; last.ckpt holds the last completed step") from exc
    except Preempted as exc:
        raise Preempted(f"{exc}; last.ckpt holds the last completed step") from exc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="experiment YAML (model.variant selects Exp1/Exp2)")
    parser.add_argument("--run-dir", help="run directory (default: <save_dir>/<timestamp>_<experiment>)")
    parser.add_argument("--resume", action="store_true", help="continue from <run-dir>/checkpoints/last.ckpt")
    parser.add_argument("--splits", help="folder with train.csv/val.csv (default: index data.root_dir)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.max_epochs=3 (value read as YAML)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.resume and not args.run_dir:
        parser.error("--resume needs --run-dir")
    try:
        cfg = load_config(args.config, args.overrides)
        summary = train(cfg, args.run_dir, args.resume, args.splits)
    except (ConfigError, ResumeError, NoValidSubjectsError, FileNotFoundError, DamagedCheckpointError,
            LoggerUnavailableError) as exc:  # fmt: skip
        sys.exit(f"train: {exc}")
    except Preempted as exc:
        print(f"train: pre-empted: {exc}; run the same command with --resume to continue", file=sys.stderr)
        raise SystemExit(exc.code) from None
    if "best_checkpoint" in summary:  # rank 0
        print(f"run directory: {summary['run_dir']}\nbest checkpoint: {summary['best_checkpoint']}")


if __name__ == "__main__":
    main()
