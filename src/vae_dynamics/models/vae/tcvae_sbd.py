"""Exp2: ResNet3D-GN encoder + Spatial Broadcast Decoder (the β-TCVAE model)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vae_dynamics.config.schema import Exp2Model, default
from vae_dynamics.models.components.blocks import group_norm
from vae_dynamics.models.components.decoder import decoder_widths
from vae_dynamics.models.components.sbd import BroadcastProjection, SpatialBroadcast
from vae_dynamics.models.vae.base import VAE3d


class TCVAESBD(VAE3d):
    """forward(x [B,4,128³]) -> (x_hat [B,4,128³], mu [B,z], logvar [B,z], z [B,z]).

    The defaults are the schema's (config/schema.py, Exp2Model); gradient checkpointing is train.*."""

    def __init__(
        self,
        z_dim: int = default(Exp2Model, "z_dim"),
        input_channels: int = default(Exp2Model, "input_channels"),
        base_filters: int = default(Exp2Model, "base_filters"),
        norm: str = default(Exp2Model, "norm"),
        sbd_grid_size: Sequence[int] = default(Exp2Model, "sbd_grid_size"),
        gradient_checkpointing: bool = False,
        sbd_z_gain: float = default(Exp2Model, "sbd_z_gain"),
        sbd_coord_gain: float = default(Exp2Model, "sbd_coord_gain"),
        sbd_project_norm: bool = default(Exp2Model, "sbd_project_norm"),
        logvar_init_bias: float = default(Exp2Model, "logvar_init_bias"),
    ) -> None:
        if tuple(sbd_grid_size) != (8, 8, 8):
            raise ValueError(f"sbd_grid_size is fixed to (8, 8, 8), got {tuple(sbd_grid_size)}")
        super().__init__(z_dim, input_channels, base_filters, norm, gradient_checkpointing)
        c0 = decoder_widths(base_filters)[0]
        self.broadcast = SpatialBroadcast(z_dim, grid_size=sbd_grid_size[0])
        # 131 -> C0 by a 1×1×1 Conv3d (the request); the gains and the GroupNorm after it are this
        # codebase's choices (model.sbd_z_gain, model.sbd_coord_gain, model.sbd_project_norm).
        self.project = nn.Sequential(
            BroadcastProjection(z_dim, c0, z_gain=sbd_z_gain, coord_gain=sbd_coord_gain),
            group_norm(c0) if sbd_project_norm else nn.Identity(),
            nn.SiLU(),
        )
        # The posterior's initial log-variance (model.logvar_init_bias; 0 would give sigma = 1 at init).
        nn.init.constant_(self.encoder.head.bias[z_dim:], logvar_init_bias)

    def decoder_input(self, z: torch.Tensor) -> torch.Tensor:
        """The 1×1×1 projection of the broadcast grid, [B, C0, 8, 8, 8]."""
        return self.project[0](self.broadcast(z))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.project(self.broadcast(z)))
