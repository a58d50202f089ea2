"""Exp2 model at the real input size: [2,4,128,128,128] in, shapes out, finite loss."""

import torch

from vae_dynamics.losses import compute_tcvae_loss
from vae_dynamics.models import TCVAESBD


def test_tcvae_sbd_forward_shapes_and_finite_loss_at_128_cubed():
    torch.manual_seed(0)
    model = TCVAESBD(z_dim=128, input_channels=4, base_filters=16, sbd_grid_size=(8, 8, 8))
    x = torch.rand(2, 4, 128, 128, 128)
    with torch.no_grad():
        x_hat, mu, logvar, z = model(x)
    assert x_hat.shape == (2, 4, 128, 128, 128)
    assert mu.shape == (2, 128) and logvar.shape == (2, 128)
    assert z.shape == (2, 128)
    out = compute_tcvae_loss(x_hat, x, mu, logvar, z, dataset_size=900, beta_tc=6.0)
    assert out["loss"].ndim == 0
    assert torch.isfinite(out["loss"])
