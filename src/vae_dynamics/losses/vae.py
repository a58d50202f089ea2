"""Exp1 loss: recon_sum + beta_kl · Σ_i KL(N(mu_i, σ_i²) ‖ N(0, I))."""

from __future__ import annotations

import torch

from vae_dynamics.config.schema import Exp1Loss
from vae_dynamics.losses.common import BatchPosteriors, ModelOutput, close_terms, reconstruction_sum


def kl_sum(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Analytic Σ_i Σ_k KL(N(mu, exp(logvar)) ‖ N(0, 1)), in float32."""
    mu, logvar = mu.float(), logvar.float()
    return -0.5 * torch.sum(1.0 + logvar - mu**2 - torch.exp(logvar))


def compute_vae_loss(
    x_hat: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, *, beta_kl: float
) -> dict[str, torch.Tensor]:
    """Returns {"loss", "recon", "kl", "beta_kl"} (sums over the batch, like Exp2)."""
    recon = reconstruction_sum(x_hat, x)
    with torch.autocast(device_type=x.device.type, enabled=False):
        kl = kl_sum(mu, logvar)
        total = recon + beta_kl * kl
    return close_terms(total, {"recon": recon, "kl": kl}, "beta_kl", beta_kl)


class VAEObjective:
    """Exp1's objective (losses.common.Objective): recon + β_kl·KL, β_kl warmed up by the training step."""

    couples_batch = False  # each sample's terms are its own

    def __init__(self, loss: Exp1Loss, dataset_size: int) -> None:
        self.loss = loss

    def __call__(
        self,
        x: torch.Tensor,
        out: ModelOutput,
        *,
        beta: float,
        batch_posteriors: BatchPosteriors | None = None,
    ) -> dict[str, torch.Tensor]:
        x_hat, mu, logvar, _ = out
        return compute_vae_loss(x_hat, x, mu, logvar, beta_kl=beta)

    def weights(self, beta: float) -> dict[str, float]:
        return {"recon": 1.0, "kl": beta}
