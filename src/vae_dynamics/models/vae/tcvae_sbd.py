"""Exp2: ResNet3D-GN encoder + Spatial Broadcast Decoder (the β-TCVAE model)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vae_dynamics.models.components.blocks import group_norm, reparameterize
from vae_dynamics.models.components.decoder import UpsamplingDecoder, decoder_widths
from vae_dynamics.models.components.resnet3d import ResNet3dEncoder
from vae_dynamics.models.components.sbd import BroadcastProjection, SpatialBroadcast


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
        sbd_z_gain: float = 1.0,
        sbd_coord_gain: float = 1.0,
        sbd_project_norm: bool = True,
        logvar_init_bias: float = 0.0,
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
        # 131 -> C0 by a 1×1×1 Conv3d (the request); the gains and the GroupNorm after it are this
        # codebase's choices (model.sbd_z_gain, model.sbd_coord_gain, model.sbd_project_norm).
        self.project = nn.Sequential(
            BroadcastProjection(z_dim, c0, z_gain=sbd_z_gain, coord_gain=sbd_coord_gain),
            group_norm(c0) if sbd_project_norm else nn.Identity(),
            nn.SiLU(),
        )
        # The posterior's initial log-variance (model.logvar_init_bias): 0 gives sigma = 1 at init.
        nn.init.constant_(self.encoder.head.bias[z_dim:], logvar_init_bias)
        self.decoder = UpsamplingDecoder(base_filters, input_channels, gradient_checkpointing)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.project(self.broadcast(z)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x)
        z = reparameterize(mu, logvar)
        return self.decode(z), mu, logvar, z
