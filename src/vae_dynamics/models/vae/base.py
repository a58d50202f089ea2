"""What both experiment models share: the ResNet3D-GN encoder, the reparameterised forward, decode()."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch
from torch import nn

from vae_dynamics.config.schema import ModelConfig
from vae_dynamics.models.components.blocks import reparameterize
from vae_dynamics.models.components.decoder import UpsamplingDecoder
from vae_dynamics.models.components.resnet3d import ResNet3dEncoder


class VAE3d(nn.Module):
    """forward(x [B,4,128³]) -> (x_hat [B,4,128³], mu [B,z], logvar [B,z], z [B,z]).

    A subclass builds the decoder's 8³ input from z (`decode`); the encoder and the upsampling trunk
    are the same for every experiment.
    """

    encoder: ResNet3dEncoder
    decoder: UpsamplingDecoder

    def __init__(
        self, z_dim: int, input_channels: int, base_filters: int, norm: str, gradient_checkpointing: bool
    ) -> None:
        super().__init__()
        if norm.upper() != "GROUP":
            raise ValueError(f"norm must be 'GROUP' (GroupNorm everywhere), got {norm!r}")
        self.z_dim = z_dim
        self.encoder = ResNet3dEncoder(
            input_channels, base_filters, z_dim, gradient_checkpointing=gradient_checkpointing
        )
        self.decoder = UpsamplingDecoder(base_filters, input_channels, gradient_checkpointing)

    @classmethod
    def from_config(cls, model: ModelConfig, gradient_checkpointing: bool = False) -> Any:
        """The model its config's `model` section describes (its fields are the constructor's arguments)."""
        return cls(**model.model_dump(exclude={"variant"}), gradient_checkpointing=gradient_checkpointing)

    @abstractmethod
    def decoder_input(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's 8³ input before its first normalisation, [B, C0, 8, 8, 8]."""

    @abstractmethod
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, z_dim] -> x_hat [B, C, 128³]."""

    @torch.inference_mode()
    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, log σ²) [n, d], float32 on the CPU, of images [n, 4, 128³] (cached float16 or float32) on
        any device: the encoding of evaluation/encode.py and of new scans (inference.py)."""
        device = next(self.parameters()).device
        mu, logvar = self.encoder(torch.as_tensor(images).to(device, non_blocking=True).float())
        return mu.float().cpu(), logvar.float().cpu()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x)
        z = reparameterize(mu, logvar)
        return self.decode(z), mu, logvar, z
