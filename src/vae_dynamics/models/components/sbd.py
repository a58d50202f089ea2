"""Spatial Broadcast: tile z over a fixed 8³ grid and append [depth, height, width] coordinates;
the 1×1×1 projection of the 131 broadcast channels to the decoder's first width."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SpatialBroadcast(nn.Module):
    """z [B, z_dim] -> decoder input [B, z_dim + 3, g, g, g] (channels: z, then grid_d, grid_h, grid_w)."""

    coords: torch.Tensor  # buffer (1, 3, g, g, g)

    def __init__(self, z_dim: int = 128, grid_size: int = 8) -> None:
        super().__init__()
        self.z_dim, self.grid_size = z_dim, grid_size
        x = torch.linspace(-1, 1, grid_size)
        y = torch.linspace(-1, 1, grid_size)
        d = torch.linspace(-1, 1, grid_size)
        grid_d, grid_h, grid_w = torch.meshgrid(d, y, x, indexing="ij")
        coords = torch.stack([grid_d, grid_h, grid_w], dim=0)  # (3, g, g, g)
        self.register_buffer("coords", coords.unsqueeze(0))  # (1, 3, g, g, g)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b, g = z.shape[0], self.grid_size
        z_tiled = z.view(b, self.z_dim, 1, 1, 1).expand(-1, -1, g, g, g)
        coords = self.coords.to(z.dtype).expand(b, -1, -1, -1, -1)
        return torch.cat([z_tiled, coords], dim=1)


class BroadcastProjection(nn.Conv3d):
    """The 1×1×1 Conv3d (z_dim + 3 -> C0) that reads the broadcast grid, with per-column gains.

    The effective weight is `weight · gain`, gain = z_gain for the z columns and coord_gain for the
    three coordinate columns, fixed (a buffer, not learnt). It is a reparameterisation of the same
    convolution (the equalised learning rate of Karras et al. 2018): under Adam, whose step is about
    lr per parameter whatever the gradient's size, a column with gain g starts g times as large and
    moves g times as fast as with the default initialisation. With z_gain < 1 the decoder first
    learns the coordinate template, and z's per-sample constants (posterior noise, a shared drift of
    mu) cannot drown it inside the GroupNorms that follow (docs/LEARNING.md). gains 1, 1 are the
    plain Conv3d.
    """

    column_gain: torch.Tensor  # buffer (1, z_dim + 3, 1, 1, 1), not saved

    def __init__(self, z_dim: int, out_channels: int, z_gain: float = 1.0, coord_gain: float = 1.0) -> None:
        super().__init__(z_dim + 3, out_channels, kernel_size=1)
        gain = torch.cat([torch.full((z_dim,), float(z_gain)), torch.full((3,), float(coord_gain))])
        self.register_buffer("column_gain", gain.view(1, -1, 1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv3d(x, self.weight * self.column_gain.to(self.weight.dtype), self.bias)
