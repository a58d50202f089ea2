"""Exp1: ResNet3D-GN encoder + conventional decoder (Linear z -> C0·8³, same upsampling trunk)."""

from __future__ import annotations

import torch
from torch import nn

from vae_dynamics.config.schema import Exp1Model, default
from vae_dynamics.models.components.blocks import group_norm
from vae_dynamics.models.components.decoder import decoder_widths
from vae_dynamics.models.vae.base import VAE3d


class BaselineVAE(VAE3d):
    """forward(x [B,4,128³]) -> (x_hat [B,4,128³], mu [B,z], logvar [B,z], z [B,z]).

    The defaults are the schema's (config/schema.py, Exp1Model); gradient checkpointing is train.*."""

    def __init__(
        self,
        z_dim: int = default(Exp1Model, "z_dim"),
        input_channels: int = default(Exp1Model, "input_channels"),
        base_filters: int = default(Exp1Model, "base_filters"),
        norm: str = default(Exp1Model, "norm"),
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__(z_dim, input_channels, base_filters, norm, gradient_checkpointing)
        self.c0 = decoder_widths(base_filters)[0]
        self.project = nn.Linear(z_dim, self.c0 * 8**3)
        self.project_act = nn.Sequential(group_norm(self.c0), nn.SiLU())

    def decoder_input(self, z: torch.Tensor) -> torch.Tensor:
        """Linear(z) reshaped to [B, C0, 8, 8, 8]."""
        return self.project(z).view(z.shape[0], self.c0, 8, 8, 8)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.project_act(self.decoder_input(z)))
