"""Exp1: ResNet3D-GN encoder + conventional decoder (Linear z -> C0·8³, same upsampling trunk)."""

from __future__ import annotations

import torch
from torch import nn

from vae_dynamics.models.components.blocks import group_norm, reparameterize
from vae_dynamics.models.components.decoder import UpsamplingDecoder, decoder_widths
from vae_dynamics.models.components.resnet3d import ResNet3dEncoder


class BaselineVAE(nn.Module):
    """forward(x [B,4,128³]) -> (x_hat [B,4,128³], mu [B,z], logvar [B,z], z [B,z])."""

    def __init__(
        self,
        z_dim: int = 128,
        input_channels: int = 4,
        base_filters: int = 32,
        norm: str = "GROUP",
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if norm.upper() != "GROUP":
            raise ValueError(f"norm must be 'GROUP' (GroupNorm everywhere), got {norm!r}")
        self.c0 = decoder_widths(base_filters)[0]
        self.encoder = ResNet3dEncoder(
            input_channels, base_filters, z_dim, gradient_checkpointing=gradient_checkpointing
        )
        self.project = nn.Linear(z_dim, self.c0 * 8**3)
        self.project_act = nn.Sequential(group_norm(self.c0), nn.SiLU())
        self.decoder = UpsamplingDecoder(base_filters, input_channels, gradient_checkpointing)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z).view(z.shape[0], self.c0, 8, 8, 8)
        return self.decoder(self.project_act(h))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x)
        z = reparameterize(mu, logvar)
        return self.decode(z), mu, logvar, z
