"""Spatial Broadcast: tile z over a fixed 8³ grid and append [depth, height, width] coordinates."""

from __future__ import annotations

import torch
from torch import nn


class SpatialBroadcast(nn.Module):
    """z [B, z_dim] -> decoder input [B, z_dim + 3, g, g, g] (channels: z, then grid_d, grid_h, grid_w)."""

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
