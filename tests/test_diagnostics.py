"""The 'is the code used?' diagnostics: spatial share, latent summary, z-dependence, and their logging."""

from __future__ import annotations

import math

import pytest
import torch

from vae_dynamics.models import TCVAESBD
from vae_dynamics.models.diagnostics import kl_per_dimension, latent_summary, spatial_share, z_dependence


def test_spatial_share_separates_per_channel_constants_from_spatial_variation():
    torch.manual_seed(0)
    spatial = torch.randn(2, 8, 8, 8, 8)
    constants = torch.randn(2, 8, 1, 1, 1).expand(-1, -1, 8, 8, 8) * 10
    assert spatial_share(constants) == pytest.approx(0.0, abs=1e-6)
    assert spatial_share(spatial) == pytest.approx(1.0, abs=0.05)
    mixed = spatial_share(spatial + constants)  # constants with 100× the variance drown the space
    assert 0.002 < mixed < 0.03


def test_latent_summary_counts_active_units_and_splits_common_part_from_spread():
    mu = torch.zeros(6, 10)
    mu[:, :3] = torch.tensor([-1.0, 0.0, 1.0, -1.0, 0.0, 1.0]).view(6, 1)  # three dims vary across subjects
    mu[:, 5] = 4.0  # one dim is the same large value for everyone: common part, not an active unit
    logvar = torch.full((6, 10), math.log(0.25))
    s = latent_summary(mu, logvar)
    assert s["active_units"] == 3
    assert s["mean_sigma"] == pytest.approx(0.5)
    assert s["mu_common_rms"] == pytest.approx(math.sqrt(16 / 10))
    assert s["mu_spread_rms"] == pytest.approx(math.sqrt(3 * (2 / 3) / 10))
    kl = kl_per_dimension(mu, logvar)
    # KL(N(4, 0.25) || N(0,1)) = 0.5·(16 + 0.25 - 1 - ln 0.25)
    assert float(kl[5]) == pytest.approx(0.5 * (16 + 0.25 - 1 - math.log(0.25)), rel=1e-5)
    assert s["kl_top1"] == pytest.approx(float(kl[5]))


def test_z_dependence_is_one_when_the_decoder_ignores_z_and_larger_when_it_uses_it():
    torch.manual_seed(0)
    model = TCVAESBD(base_filters=16).eval()
    x = torch.rand(2, 4, 128, 128, 128)
    mu = torch.randn(2, 128) * 3
    blind = TCVAESBD(base_filters=16, sbd_z_gain=0.0).eval()  # z columns multiplied by 0
    assert z_dependence(blind, x, mu) == pytest.approx(1.0, abs=1e-6)

    class Copy(torch.nn.Module):  # a decoder that returns x_i exactly for code i: swapping codes costs
        def decode(self, m):
            return x[[0, 1] if torch.equal(m, mu) else [1, 0]]

    assert z_dependence(Copy(), x, mu) > 1e6
    with pytest.raises(ValueError, match="at least two"):
        z_dependence(model, x[:1], mu[:1])
