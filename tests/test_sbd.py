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
