"""LightningModules: step logic and logging only (models know nothing of training)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from vae_dynamics.losses import NonFiniteLossError, compute_tcvae_loss, compute_vae_loss
from vae_dynamics.models import TCVAESBD, BaselineVAE
from vae_dynamics.training.schedules import linear_warmup


class _VAEStepsMixin:
    """Shared step plumbing: forward, loss with the epoch's β, logging of every returned term."""

    def forward(self, x: torch.Tensor):
        return self.model(x)

    def _step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        x = batch["image"]
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        x_hat, mu, logvar, z = self.model(x)
        try:
            terms = self.compute_loss(x_hat, x, mu, logvar, z)
        except NonFiniteLossError as exc:
            raise NonFiniteLossError(
                f"{exc} ({stage}, epoch {self.current_epoch}, global step {self.global_step}); "
                "training stopped, the last good checkpoint is kept"
            ) from exc
        self.log_dict(
            {f"{stage}/{k}": v.detach() for k, v in terms.items()},
            on_step=False, on_epoch=True, batch_size=x.shape[0], prog_bar=False,
        )  # fmt: skip
        self.log(f"{stage}_loss", terms["loss"].detach(), on_epoch=True, batch_size=x.shape[0],
                 prog_bar=True, logger=False)  # fmt: skip
        return terms["loss"]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=self.hparams.lr)


class VAELitModule(_VAEStepsMixin, L.LightningModule):
    """Exp1: BaselineVAE with recon + β_kl·KL; logs {train,val}/{loss,recon,kl,beta_kl}."""

    def __init__(
        self,
        model_kwargs: dict[str, Any],
        *,
        dataset_size: int,
        lr: float,
        beta_kl_target: float,
        beta_kl_annealing_epochs: int,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = BaselineVAE(**model_kwargs)
        if channels_last:
            self.model.to(memory_format=torch.channels_last_3d)

    @property
    def beta_kl(self) -> float:
        return linear_warmup(
            self.current_epoch, self.hparams.beta_kl_target, self.hparams.beta_kl_annealing_epochs
        )

    def compute_loss(self, x_hat, x, mu, logvar, z) -> dict[str, torch.Tensor]:
        return compute_vae_loss(x_hat, x, mu, logvar, beta_kl=self.beta_kl)


class TCVAELitModule(_VAEStepsMixin, L.LightningModule):
    """Exp2: TCVAESBD with the β-TCVAE (MWS) loss; logs {train,val}/{loss,recon,mi,tc,dwkl,beta_tc}."""

    def __init__(
        self,
        model_kwargs: dict[str, Any],
        *,
        dataset_size: int,
        lr: float,
        beta_tc_target: float,
        beta_tc_annealing_epochs: int,
        alpha: float = 1.0,
        gamma: float = 1.0,
        compute_in_fp32: bool = True,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = TCVAESBD(**model_kwargs)
        if channels_last:
            self.model.to(memory_format=torch.channels_last_3d)
        self.dataset_size = dataset_size  # N of the MWS estimator: number of TRAIN subjects

    @property
    def beta_tc(self) -> float:
        return linear_warmup(
            self.current_epoch, self.hparams.beta_tc_target, self.hparams.beta_tc_annealing_epochs
        )

    def compute_loss(self, x_hat, x, mu, logvar, z) -> dict[str, torch.Tensor]:
        return compute_tcvae_loss(
            x_hat, x, mu, logvar, z,
            dataset_size=self.dataset_size, beta_tc=self.beta_tc,
            alpha=self.hparams.alpha, gamma=self.hparams.gamma, compute_in_fp32=self.hparams.compute_in_fp32,
        )  # fmt: skip


# model.variant -> the experiment's LightningModule.
LIT_MODULES = {"baseline_vae": VAELitModule, "tcvae_sbd": TCVAELitModule}
