"""Callbacks: checkpoint choice under the β warm-up, reconstruction snapshots, per-epoch metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from vae_dynamics.models import VAE3d
from vae_dynamics.training.tracking import log_image
from vae_dynamics.viz.recon import save_recon_panel

log = logging.getLogger("vae_dynamics.train")


class ReconSnapshotCallback(L.Callback):
    """Every n epochs: input | recon | |diff| panels of fixed validation subjects -> recon/epoch_<E>/."""

    def __init__(
        self, out_dir: str | Path, every_n_epochs: int, num_samples: int, modalities: Sequence[str]
    ) -> None:
        self.out_dir = Path(out_dir)
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples
        self.modalities = list(modalities)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if trainer.sanity_checking or self.num_samples == 0 or (epoch + 1) % self.every_n_epochs:
            return
        if not getattr(trainer, "is_global_zero", True):  # under DDP, rank 0 writes the snapshots
            return
        dataset = trainer.datamodule.val_dataset  # type: ignore[attr-defined]  # set by Trainer.fit
        model: VAE3d = pl_module.model  # type: ignore[assignment]  # the LitModules' (lit_modules.py)
        out = self.out_dir / f"epoch_{epoch}"
        with torch.no_grad():
            for i in range(min(self.num_samples, len(dataset))):
                item = dataset[i]
                x = item["image"][None].to(pl_module.device).float()
                with torch.autocast(device_type=pl_module.device.type, enabled=False):
                    mu, _ = model.encoder(x)
                    x_hat = model.decode(mu)  # posterior mean: stable snapshots
                png = out / f"{item['subject_id']}.png"
                save_recon_panel(
                    item["image"],
                    x_hat[0],
                    png,
                    self.modalities,
                    title=f"{item['subject_id']} — epoch {epoch}",
                )
                log_image(trainer, f"recon/{item['subject_id']}", png, epoch)
        log.info("epoch %d: recon snapshots -> %s", epoch, out)


class EpochMetricsLogger(L.Callback):
    """Writes each epoch's train/ and val/ metrics to train.log."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if "/" in k}
        text = ", ".join(f"{k}={v:.6g}" for k, v in sorted(metrics.items()))
        log.info("epoch %d (global step %d): %s", trainer.current_epoch, trainer.global_step, text)


class TargetBetaCheckpoint(ModelCheckpoint):
    """ModelCheckpoint on val/loss that ranks only epochs at the target β.

    val/loss contains β·TC (Exp2) or β·KL (Exp1) with the epoch's β. Under the MWS estimator TC carries
    an offset of about (d-1)·ln(N·M) per sample that no parameter can reduce, so during the warm-up
    val/loss grows with β whatever the model learns: epochs with different β are not comparable, and
    "best" would favour the first, β ≈ 0 epochs. Lightning ranks in its public `on_validation_end`
    hook, which this callback passes on only from `first_epoch`; until then `resume_checkpoint()`'s
    last.ckpt is the checkpoint to use.
    """

    def __init__(self, *, first_epoch: int, **kwargs: Any) -> None:
        # Rank and save when validation ends (val/loss is known then), not at the train epoch's end.
        super().__init__(save_on_train_epoch_end=False, enable_version_counter=False, **kwargs)
        self.first_epoch = first_epoch

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch >= self.first_epoch:
            super().on_validation_end(trainer, pl_module)

    def chosen(self, last_checkpoint: Path) -> tuple[Path, str]:
        """The checkpoint to export and evaluate, and why it was chosen."""
        if self.best_model_path:
            return Path(self.best_model_path), (
                f"lowest val/loss among the epochs at the target beta (epoch >= {self.first_epoch})"
            )
        return last_checkpoint, (
            "last.ckpt: training has not reached the target beta yet (the warm-up ends at epoch "
            f"{self.first_epoch}), and val/loss of warm-up epochs with different beta are not comparable"
        )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Lightning's, with the saved paths mapped into this run's checkpoint folder.

        Lightning compares the saved folder with the current one by real path and, when they differ
        (the run directory was moved, copied, mounted elsewhere or reached through a symlink), drops
        the best score, the top-k bookkeeping and last_model_path: the next epoch then becomes "best"
        whatever its loss. The checkpoints live in the run directory, so the same file names in the
        current folder are the same files.
        """
        old, new = state_dict.get("dirpath"), self.dirpath
        if old and new and old != new:
            log.info("checkpoint folder moved: %s -> %s (best/top-k bookkeeping kept)", old, self.dirpath)

            def here(path: str | None) -> str | None:
                if not path or Path(path).parent != Path(old):
                    return path
                return str(Path(new) / Path(path).name)

            state_dict = {
                **state_dict,
                "dirpath": self.dirpath,
                "best_model_path": here(state_dict.get("best_model_path")),
                "kth_best_model_path": here(state_dict.get("kth_best_model_path")),
                "last_model_path": here(state_dict.get("last_model_path")),
                "best_k_models": {here(k): v for k, v in (state_dict.get("best_k_models") or {}).items()},
            }
        super().load_state_dict(state_dict)


def resume_checkpoint(dirpath: Path) -> ModelCheckpoint:
    """last.ckpt after every validation, warm-up epochs and epochs that did not improve included: the
    point a resume starts from. Overwritten in place (no last-v1.ckpt that no resume would read)."""
    return ModelCheckpoint(
        dirpath=dirpath,
        filename=ModelCheckpoint.CHECKPOINT_NAME_LAST,
        save_top_k=1,  # without a monitor: the latest, under one name
        save_on_train_epoch_end=False,
        enable_version_counter=False,
    )


class CompileTimer(L.Callback):
    """Logs once how long the first training step took: with torch.compile, that is the compile time."""

    def __init__(self) -> None:
        self.start: float | None = None
        self.done = False

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self.done and self.start is None:
            self.start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.done and self.start is not None:
            self.done = True
            log.info(
                "torch.compile: the first training step took %.1f s (compilation included)",
                time.perf_counter() - self.start,
            )
