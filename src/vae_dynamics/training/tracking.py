"""What a researcher watches around a run: experiment loggers, progress lines, provenance.

- build_loggers: `logging.loggers` -> Lightning loggers, all writing into the run directory
  (csv: logs/version_*/metrics.csv, as the request requires; tensorboard: tensorboard/; wandb and
  mlflow when their packages are installed: `pip install -e ".[wandb]"` / `".[mlflow]"`).
- progress_callbacks: a TQDM bar on a terminal; in a log file (Snakemake, SLURM) one line every
  `logging.progress_every_n_steps` steps and one per epoch, with samples/s, ETA and the loss terms.
- provenance (vae_dynamics.provenance, free of Lightning: evaluation records it too) -> provenance.json
  in the run directory.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.util
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger

from vae_dynamics.io import LOG_FORMAT

log = logging.getLogger("vae_dynamics.train")
# The loggers whose records a run's train.log holds.
RUN_LOGGERS = ("vae_dynamics", "lightning.pytorch", "py.warnings")


@contextlib.contextmanager
def file_logging(path: Path) -> Iterator[None]:
    """The package's and Lightning's log records (and warnings) appended to `path` (train.log)."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        for name in RUN_LOGGERS:
            logging.getLogger(name).removeHandler(handler)
        logging.captureWarnings(False)
        handler.close()


# The Python module each optional logger needs, and the extra that installs it.
LOGGER_PACKAGES = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),
}


class LoggerUnavailableError(RuntimeError):
    """A logger named in logging.loggers needs a package that is not installed."""


def build_loggers(names: list[str], run_dir: Path, experiment: str) -> list[Logger]:
    """Lightning loggers for `logging.loggers`, in that order (CSV first: the request's metrics.csv)."""
    loggers: list[Logger] = []
    for name in names:
        if name in LOGGER_PACKAGES:
            module, extra = LOGGER_PACKAGES[name]
            if importlib.util.find_spec(module) is None:
                raise LoggerUnavailableError(
                    f'logging.loggers: {name!r} needs the {module} package: pip install -e ".[{extra}]" '
                    f"(or remove {name!r} from logging.loggers)"
                )
        if name == "csv":
            loggers.append(CSVLogger(save_dir=run_dir, name="logs"))
        elif name == "tensorboard":
            from lightning.pytorch.loggers import TensorBoardLogger

            # one version for the whole run: a resume adds an event file beside the earlier ones, and
            # TensorBoard shows the run as one continued curve
            tb = TensorBoardLogger(save_dir=run_dir, name="tensorboard", version=0, default_hp_metric=False)
            loggers.append(tb)
        elif name == "wandb":
            from lightning.pytorch.loggers import WandbLogger

            loggers.append(WandbLogger(save_dir=str(run_dir), name=run_dir.name, project=experiment))
        elif name == "mlflow":
            from lightning.pytorch.loggers import MLFlowLogger

            loggers.append(
                MLFlowLogger(
                    experiment_name=experiment,
                    run_name=run_dir.name,
                    tracking_uri=f"file:{run_dir / 'mlruns'}",
                )
            )
    return loggers


def log_image(trainer: L.Trainer, tag: str, png: Path, step: int) -> None:
    """Send a saved PNG to every logger that shows images (TensorBoard, W&B)."""
    loggers = [
        lg
        for lg in getattr(trainer, "loggers", []) or []
        if type(lg).__name__ in ("TensorBoardLogger", "WandbLogger")
    ]
    if not loggers:
        return
    import matplotlib.image

    image = matplotlib.image.imread(png)[..., :3]  # H, W, RGB floats in [0, 1]
    for lg in loggers:
        if type(lg).__name__ == "TensorBoardLogger":
            lg.experiment.add_image(tag, image, global_step=step, dataformats="HWC")
        else:
            lg.log_image(key=tag, images=[image], step=step)


class LogProgress(Callback):
    """One log line every `every_n_steps` training steps and one per epoch: rate, ETA, loss terms."""

    def __init__(self, every_n_steps: int) -> None:
        self.every_n_steps = every_n_steps
        self.start: float | None = None
        self.samples = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start, self.samples, self.first_step = time.perf_counter(), 0, trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.samples += batch["image"].shape[0] * trainer.world_size
        if trainer.global_step % self.every_n_steps == 0:
            log.info("%s", self._line(trainer, outputs))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log.info("epoch %d done: %s", trainer.current_epoch, self._line(trainer, None))

    def _line(self, trainer: L.Trainer, outputs: Any) -> str:
        elapsed = max(time.perf_counter() - (self.start or time.perf_counter()), 1e-9)
        done = trainer.global_step - self.first_step
        per_epoch = trainer.num_training_batches if trainer.num_training_batches != float("inf") else 0
        total = trainer.max_epochs * per_epoch if trainer.max_epochs and per_epoch else None
        eta = (total - trainer.global_step) * elapsed / done if total and done else None
        loss = (
            float(outputs["loss"] if isinstance(outputs, dict) else outputs) if outputs is not None else None
        )
        parts = [
            f"epoch {trainer.current_epoch}",
            f"step {trainer.global_step}" + (f"/{total}" if total else ""),
            f"{self.samples / elapsed:.1f} samples/s",
        ]
        if eta is not None:
            parts.append(f"ETA {dt.timedelta(seconds=round(eta))}")
        if loss is not None:
            parts.append(f"loss {loss:.6g}")
        terms = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        parts += [f"{k} {v:.4g}" for k, v in sorted(terms.items())]
        return ", ".join(parts)


def progress_callbacks(every_n_steps: int, interactive: bool | None = None) -> list[Callback]:
    """A TQDM bar on a terminal; progress lines in train.log (and the step's log) otherwise."""
    if interactive is None:
        interactive = sys.stderr.isatty()
    return [TQDMProgressBar(refresh_rate=1)] if interactive else [LogProgress(every_n_steps)]
