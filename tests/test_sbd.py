"""Spatial Broadcast: decoder input shape, the coords buffer, its range and (D, H, W) ordering."""

import torch

from vae_dynamics.models.components.sbd import SpatialBroadcast


def test_decoder_input_shape_and_content():
    sbd = SpatialBroadcast(z_dim=128, grid_size=8)
    z = torch.randn(2, 128)
    out = sbd(z)
    assert out.shape == (2, 131, 8, 8, 8)
    # the first 128 channels are z tiled over the grid, the last 3 the coordinates
    assert torch.equal(out[:, :128], z[:, :, None, None, None].expand(-1, -1, 8, 8, 8))
    assert torch.equal(out[:, 128:], sbd.coords.expand(2, -1, -1, -1, -1))


def test_coords_is_a_registered_buffer_of_shape_1_3_8_8_8():
    sbd = SpatialBroadcast(z_dim=128, grid_size=8)
    buffers = dict(sbd.named_buffers())
    assert "coords" in buffers
    assert buffers["coords"].shape == (1, 3, 8, 8, 8)
    assert "coords" in sbd.state_dict()
    assert not any(name == "coords" for name, _ in sbd.named_parameters())


def test_coords_values_within_minus_one_one_with_both_ends():
    coords = SpatialBroadcast(z_dim=128, grid_size=8).coords
    assert coords.min().item() == -1.0 and coords.max().item() == 1.0
    assert torch.allclose(coords[0, 0, :, 0, 0], torch.linspace(-1, 1, 8))


def test_coords_ordering_is_depth_height_width():
    coords = SpatialBroadcast(z_dim=128, grid_size=8).coords[0]
    ramp = torch.linspace(-1, 1, 8)
    # channel 0 varies only along depth (dim 1 of the grid), 1 only along height, 2 only along width
    assert torch.equal(coords[0], ramp.view(8, 1, 1).expand(8, 8, 8))
    assert torch.equal(coords[1], ramp.view(1, 8, 1).expand(8, 8, 8))
    assert torch.equal(coords[2], ramp.view(1, 1, 8).expand(8, 8, 8))
    for channel, axis in ((0, 0), (1, 1), (2, 2)):
        for other in {0, 1, 2} - {axis}:
            assert torch.all(coords[channel].diff(dim=other) == 0)
        assert torch.all(coords[channel].diff(dim=axis) > 0)


def test_coords_follow_the_module_to_another_dtype():
    sbd = SpatialBroadcast(z_dim=128, grid_size=8).to(torch.float64)
    assert sbd(torch.randn(3, 128, dtype=torch.float64)).dtype == torch.float64


def test_projection_with_unit_gains_is_the_plain_1x1x1_conv3d():
    from vae_dynamics.models.components.sbd import BroadcastProjection

    torch.manual_seed(0)
    proj = BroadcastProjection(128, 32)
    assert isinstance(proj, torch.nn.Conv3d) and proj.weight.shape == (32, 131, 1, 1, 1)
    plain = torch.nn.Conv3d(131, 32, kernel_size=1)
    plain.load_state_dict(proj.state_dict())  # the gain is a non-persistent buffer: same state_dict keys
    x = SpatialBroadcast(128, 8)(torch.randn(2, 128))
    assert torch.allclose(proj(x), plain(x), atol=1e-6)


def test_projection_gains_scale_the_z_and_the_coordinate_columns_separately():
    from vae_dynamics.models.components.sbd import BroadcastProjection

    torch.manual_seed(0)
    proj = BroadcastProjection(128, 16, z_gain=0.1, coord_gain=4.0)
    plain = torch.nn.Conv3d(131, 16, kernel_size=1)
    plain.load_state_dict(proj.state_dict())
    x = SpatialBroadcast(128, 8)(torch.randn(2, 128))
    bias = plain.bias.view(1, -1, 1, 1, 1)
    z_only, coords_only = x.clone(), x.clone()
    z_only[:, 128:] = 0
    coords_only[:, :128] = 0
    assert torch.allclose(proj(z_only) - bias, 0.1 * (plain(z_only) - bias), atol=1e-5)
    assert torch.allclose(proj(coords_only) - bias, 4.0 * (plain(coords_only) - bias), atol=1e-5)
    # z_gain 0: the decoder sees the coordinates only, whatever z is
    zero = BroadcastProjection(128, 16, z_gain=0.0)
    assert torch.equal(zero(x), zero(coords_only))
