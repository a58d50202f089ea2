"""Callbacks: reconstruction snapshots and per-epoch metrics in train.log."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch

from vae_dynamics.viz.recon import save_recon_panel

log = logging.getLogger("vae_dynamics.train")


class ReconSnapshotCallback(L.Callback):
    """Every n epochs: input | recon | |diff| panels of fixed validation subjects -> recon/epoch_<E>/."""

    def __init__(self, out_dir: str | Path, every_n_epochs: int, num_samples: int, modalities) -> None:
        self.out_dir = Path(out_dir)
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples
        self.modalities = list(modalities)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if trainer.sanity_checking or self.num_samples == 0 or (epoch + 1) % self.every_n_epochs:
            return
        dataset = trainer.datamodule.val_dataset
        out = self.out_dir / f"epoch_{epoch}"
        with torch.no_grad():
            for i in range(min(self.num_samples, len(dataset))):
                item = dataset[i]
                x = item["image"][None].to(pl_module.device)
                with torch.autocast(device_type=pl_module.device.type, enabled=False):
                    mu, _ = pl_module.model.encoder(x)
                    x_hat = pl_module.model.decode(mu)  # posterior mean: stable snapshots
                save_recon_panel(
                    item["image"], x_hat[0], out / f"{item['subject_id']}.png", self.modalities,
                    title=f"{item['subject_id']} — epoch {epoch}",
                )  # fmt: skip
        log.info("epoch %d: recon snapshots -> %s", epoch, out)


class EpochMetricsLogger(L.Callback):
    """Writes each epoch's train/ and val/ metrics to train.log."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if "/" in k}
        text = ", ".join(f"{k}={v:.6g}" for k, v in sorted(metrics.items()))
        log.info("epoch %d (global step %d): %s", trainer.current_epoch, trainer.global_step, text)
