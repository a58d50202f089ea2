"""Exp2: ResNet3D-GN encoder + Spatial Broadcast Decoder (the β-TCVAE model)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vae_dynamics.models.components.blocks import group_norm, reparameterize
from vae_dynamics.models.components.decoder import UpsamplingDecoder, decoder_widths
from vae_dynamics.models.components.resnet3d import ResNet3dEncoder
from vae_dynamics.models.components.sbd import SpatialBroadcast


class TCVAESBD(nn.Module):
    """forward(x [B,4,128³]) -> (x_hat [B,4,128³], mu [B,z], logvar [B,z], z [B,z])."""

    def __init__(
        self,
        z_dim: int = 128,
        input_channels: int = 4,
        base_filters: int = 32,
        norm: str = "GROUP",
        sbd_grid_size: Sequence[int] = (8, 8, 8),
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if norm.upper() != "GROUP":
            raise ValueError(f"norm must be 'GROUP' (GroupNorm everywhere), got {norm!r}")
        if tuple(sbd_grid_size) != (8, 8, 8):
            raise ValueError(f"sbd_grid_size is fixed to (8, 8, 8), got {tuple(sbd_grid_size)}")
        c0 = decoder_widths(base_filters)[0]
        self.encoder = ResNet3dEncoder(
            input_channels, base_filters, z_dim, gradient_checkpointing=gradient_checkpointing
        )
        self.broadcast = SpatialBroadcast(z_dim, grid_size=sbd_grid_size[0])
        self.project = nn.Sequential(nn.Conv3d(z_dim + 3, c0, kernel_size=1), group_norm(c0), nn.SiLU())
        self.decoder = UpsamplingDecoder(base_filters, input_channels, gradient_checkpointing)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.project(self.broadcast(z)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x)
        z = reparameterize(mu, logvar)
        return self.decode(z), mu, logvar, z
