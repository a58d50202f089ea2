"""Exp1 loss: recon_sum + beta_kl · Σ_i KL(N(mu_i, σ_i²) ‖ N(0, I))."""

from __future__ import annotations

import torch

from vae_dynamics.losses.common import check_finite, reconstruction_sum


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
    terms = {
        "loss": total,
        "recon": recon,
        "kl": kl,
        "beta_kl": torch.tensor(float(beta_kl), device=total.device),
    }
    check_finite(terms)
    return terms
