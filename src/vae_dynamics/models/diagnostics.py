"""Is the code used? Latent statistics and decoder diagnostics shared by training, evaluation and bench.

- spatial_share: how much of the decoder's 8³ input (`VAE3d.decoder_input`) varies over space (the
  template) rather than per channel (the code); near 0 means the per-sample constants drown the
  coordinates.
- latent_summary: active units, μ common part vs between-subject spread, mean σ, KL per dimension.
- z_dependence: MSE(x_i, decode(μ_j)) / MSE(x_i, decode(μ_i)), j ≠ i; 1 = the decoder ignores z.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from vae_dynamics.models.vae.base import VAE3d

# Active unit: between-subject variance of μ_k above this (Burda et al. 2016's criterion).
ACTIVE_UNIT_THRESHOLD = 0.01
# A decoder whose output changes by less than this when handed another subject's code (z_dependence)
# ignores z: the training log warns after the β warm-up, and an exported model card says so.
Z_IGNORED_BELOW = 1.05


def spatial_share(h: torch.Tensor) -> float:
    """Within-channel spatial variance / total variance around each sample's mean, mean over samples."""
    h = h.detach().float().flatten(2)  # [B, C, P]
    spatial = h.var(dim=2, unbiased=False).mean(dim=1)
    total = h.flatten(1).var(dim=1, unbiased=False)
    return float((spatial / total.clamp_min(1e-12)).mean())


def kl_per_dimension(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Mean over subjects of KL(q(z_k|x) || N(0,1)) per dimension k, [d] (nats); float32 or wider."""
    dtype = torch.promote_types(mu.dtype, torch.float32)
    mu, logvar = mu.to(dtype), logvar.to(dtype)
    return (0.5 * (mu.square() + logvar.exp() - 1.0 - logvar)).mean(dim=0)


def latent_summary(mu: torch.Tensor, logvar: torch.Tensor) -> dict[str, float]:
    """Statistics of the posterior means and variances of a set of subjects (rows)."""
    mu, logvar = mu.detach().float(), logvar.detach().float()
    variance = mu.var(dim=0, unbiased=False)
    kl = kl_per_dimension(mu, logvar)
    top = torch.sort(kl, descending=True).values
    return {
        "active_units": float((variance > ACTIVE_UNIT_THRESHOLD).sum()),
        "mu_common_rms": float(mu.mean(dim=0).square().mean().sqrt()),
        "mu_spread_rms": float(variance.mean().sqrt()),
        "mean_sigma": float(torch.exp(0.5 * logvar).mean()),
        "kl_total": float(kl.sum()),
        "kl_top1": float(top[0]),
        "kl_top5": float(top[:5].sum()),
    }


@torch.no_grad()
def z_dependence(model: VAE3d, x: torch.Tensor, mu: torch.Tensor) -> float:
    """Mean over the batch of MSE(x_i, decode(μ_{i+1})) / MSE(x_i, decode(μ_i)) (codes shifted cyclically).

    1 means that another subject's code reconstructs x_i as well as its own: the decoder ignores z.
    Needs at least two subjects.
    """
    if x.shape[0] < 2:
        raise ValueError("z_dependence needs at least two subjects")
    own = (model.decode(mu).float() - x.float()).square().flatten(1).sum(1)
    other = (model.decode(mu.roll(1, dims=0)).float() - x.float()).square().flatten(1).sum(1)
    return float((other / own.clamp_min(1e-12)).mean())
