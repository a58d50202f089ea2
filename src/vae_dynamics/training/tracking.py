"""What a researcher watches around a run: experiment loggers, progress lines, provenance.

- build_loggers: `logging.loggers` -> Lightning loggers (csv: logs/version_0/metrics.csv; tensorboard:
  tensorboard/; wandb: logging.wandb's project; mlflow: logging.mlflow's store). A resume continues the
  same CSV file, TensorBoard version and MLflow/W&B runs (TrackerRuns keeps their ids).
- progress_callbacks: a TQDM bar on a terminal; in a log file (Snakemake, SLURM) one line every
  `logging.progress_every_n_steps` steps and one per epoch, with samples/s, ETA and the loss terms.
- provenance (vae_dynamics.provenance, free of Lightning: evaluation records it too) -> provenance.json
  in the run directory.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import importlib.util
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from vae_dynamics.config.schema import LoggingConfig
from vae_dynamics.io import LOG_FORMAT, write_json
from vae_dynamics.training.run_dir import RunDir
from vae_dynamics.viz.curves import METRICS_ASIDE

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


class RunCSVLogger(CSVLogger):
    """The CSV logger of a run: one logs/version_0/metrics.csv for the whole run, resumes included.

    Lightning's CSV writer deletes the metrics.csv of a folder it reopens. So before it opens one, the
    earlier rows are moved aside (METRICS_ASIDE), and when the resumed run logs its first step they are
    written back, without the steps it logs again (those after its checkpoint). A fresh start in the
    folder logs from step 0, so it keeps none.
    """

    def __init__(self, run_dir: Path) -> None:
        super().__init__(save_dir=run_dir, name="logs", version=0)
        self._earlier = self._set_aside() if getattr(rank_zero_only, "rank", 0) == 0 else None

    def _set_aside(self) -> list[dict[str, str]] | None:
        folder = Path(self.log_dir)
        metrics, aside = folder / "metrics.csv", folder / METRICS_ASIDE
        if metrics.is_file():
            if aside.is_file():  # a resume stopped after writing metrics.csv back: it is complete
                aside.unlink()
            metrics.rename(aside)
        if not aside.is_file():
            return None
        with open(aside, newline="") as fh:
            return list(csv.DictReader(fh))

    @property
    def experiment(self) -> Any:
        with warnings.catch_warnings():  # "Previous log files ... will be deleted": they were set aside
            warnings.filterwarnings("ignore", message="Experiment logs directory")
            return super().experiment

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self._earlier is not None and step is not None:
            for row in self._earlier:
                if row.get("step") and int(row["step"]) < step:
                    values = {k: _number(v) for k, v in row.items() if v != "" and k != "step"}
                    self.experiment.log_metrics(values, int(row["step"]))
            super().log_metrics(metrics, step)
            self.save()
            (Path(self.log_dir) / METRICS_ASIDE).unlink(missing_ok=True)
            self._earlier = None
            return
        super().log_metrics(metrics, step)


class RunMLFlowLogger(MLFlowLogger):
    """The MLflow logger of a run. A resume continues the MLflow run and keeps the params of its first
    start: MLflow never changes a logged param (config_resolved.yaml holds the current config, e.g. a
    raised train.max_epochs)."""

    def __init__(self, *, run_id: str | None, **kwargs: Any) -> None:
        super().__init__(run_id=run_id, **kwargs)
        self.continued = run_id is not None

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        if not self.continued:
            super().log_hyperparams(params)


def _number(text: str) -> int | float:
    """A metrics.csv cell as it was logged (epoch 3, not 3.0)."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def _saved_runs(run_dir: Path) -> dict[str, Any]:
    path = RunDir(run_dir).trackers
    return json.loads(path.read_text()) if path.is_file() else {}


def build_loggers(cfg: LoggingConfig, run_dir: Path, experiment: str) -> list[Logger]:
    """Lightning loggers for `logging.loggers`, in that order (CSV first: metrics.csv).

    A resumed run continues its TensorBoard version and its MLflow and W&B runs (their ids are kept in
    trackers.json by TrackerRuns) when it logs to the same store and project.
    """
    loggers: list[Logger] = []
    saved, places = _saved_runs(run_dir), tracker_places(cfg, experiment)
    for name in cfg.loggers:
        if name in LOGGER_PACKAGES:
            module, extra = LOGGER_PACKAGES[name]
            if importlib.util.find_spec(module) is None:
                raise LoggerUnavailableError(
                    f'logging.loggers: {name!r} needs the {module} package: pip install -e ".[{extra}]" '
                    f"(or remove {name!r} from logging.loggers)"
                )
        if name == "csv":
            loggers.append(RunCSVLogger(run_dir))
        elif name == "tensorboard":
            from lightning.pytorch.loggers import TensorBoardLogger

            # one version for the whole run: a resume adds an event file beside the earlier ones, and
            # TensorBoard shows the run as one continued curve
            tb = TensorBoardLogger(save_dir=run_dir, name="tensorboard", version=0, default_hp_metric=False)
            loggers.append(tb)
        elif name == "wandb":
            place = places["wandb"]
            loggers.append(
                WandbLogger(
                    save_dir=str(run_dir),
                    name=run_dir.name,
                    project=place["project"],
                    entity=place["entity"],
                    id=_kept_id(saved, "wandb", place),
                    resume="allow",
                )
            )
        elif name == "mlflow":
            place = places["mlflow"]
            loggers.append(
                RunMLFlowLogger(
                    experiment_name=str(place["experiment"]),
                    run_name=run_dir.name,
                    tracking_uri=place["tracking_uri"],
                    run_id=_kept_id(saved, "mlflow", place),
                )
            )
    return loggers


def tracker_places(cfg: LoggingConfig, experiment: str) -> dict[str, dict[str, str | None]]:
    """Where the MLflow and W&B loggers send a run; a kept run id is reused only for the same place.

    MLflow: logging.mlflow.tracking_uri, else $MLFLOW_TRACKING_URI, else sqlite:///<working dir>/mlflow.db
    (the store `mlflow ui` opens there; recent MLflow refuses its old ./mlruns file store by default).
    """
    uri = cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    return {
        "mlflow": {
            "tracking_uri": uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}",
            "experiment": cfg.mlflow.experiment or experiment,
        },
        "wandb": {"project": cfg.wandb.project or experiment, "entity": cfg.wandb.entity},
    }


def _kept_id(saved: dict[str, Any], tracker: str, place: dict[str, str | None]) -> str | None:
    """The run id trackers.json keeps for `tracker`, when it was logged to the same place."""
    kept = saved.get(tracker, {})
    return kept.get("id") if kept.get("place") == place else None


class TrackerRuns(Callback):
    """Keeps the MLflow and W&B run ids of a run in trackers.json, with the store and project they live
    in, so that a resume continues those runs (build_loggers) instead of starting new ones."""

    def __init__(self, run_dir: Path, cfg: LoggingConfig, experiment: str) -> None:
        self.path = RunDir(run_dir).trackers
        self.places = tracker_places(cfg, experiment)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        runs = _saved_runs(self.path.parent)
        for lg in trainer.loggers:
            name = (
                "mlflow" if isinstance(lg, MLFlowLogger) else "wandb" if isinstance(lg, WandbLogger) else None
            )
            if name:
                runs[name] = {"id": str(lg.version), "place": self.places[name]}
        if runs:
            write_json(runs, self.path)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """End the W&B run with the fit, so that a next training in the same process starts its own."""
        if trainer.is_global_zero:
            for lg in trainer.loggers:
                if isinstance(lg, WandbLogger):
                    lg.experiment.finish()


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
