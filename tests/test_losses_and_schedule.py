"""Exp1 loss (analytic KL) and the β warm-up schedule."""

import pytest
import torch

from vae_dynamics.losses import NonFiniteLossError, compute_vae_loss
from vae_dynamics.training.schedules import linear_warmup


def test_analytic_kl_matches_a_direct_computation():
    g = torch.Generator().manual_seed(3)
    mu, logvar = torch.randn(3, 128, generator=g), 0.5 * torch.randn(3, 128, generator=g)
    x = torch.rand(3, 4, 4, 4, 4, generator=g)
    x_hat = torch.rand(3, 4, 4, 4, 4, generator=g)
    out = compute_vae_loss(x_hat, x, mu, logvar, beta_kl=0.5)
    sigma2 = torch.exp(logvar.double())
    # KL(N(mu, σ²) ‖ N(0, 1)) = ½(σ² + mu² − 1 − ln σ²), summed over batch and latent dims
    kl = 0.5 * (sigma2 + mu.double() ** 2 - 1.0 - torch.log(sigma2)).sum()
    assert set(out) == {"loss", "recon", "kl", "beta_kl"}
    assert out["kl"].item() == pytest.approx(kl.item(), rel=1e-5)
    assert out["recon"].item() == pytest.approx(((x_hat - x) ** 2).sum().item(), rel=1e-6)
    assert out["loss"].item() == pytest.approx(out["recon"].item() + 0.5 * kl.item(), rel=1e-5)


def test_vae_loss_nan_raises():
    x = torch.zeros(2, 4, 2, 2, 2)
    mu = torch.zeros(2, 8)
    mu[1, 3] = float("nan")
    with pytest.raises(NonFiniteLossError, match="kl=nan"):
        compute_vae_loss(x, x, mu, torch.zeros(2, 8), beta_kl=1.0)


@pytest.mark.parametrize(
    "epoch,expected",
    [(0, 0.0), (1, 6.0 / 40), (20, 3.0), (39, 6.0 * 39 / 40), (40, 6.0), (41, 6.0), (200, 6.0)],
)
def test_linear_warmup_values(epoch, expected):
    assert linear_warmup(epoch, target=6.0, annealing_epochs=40) == pytest.approx(expected)


def test_warmup_is_monotonic_and_zero_annealing_means_constant():
    values = [linear_warmup(e, 6.0, 40) for e in range(100)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert linear_warmup(0, 6.0, 0) == 6.0
