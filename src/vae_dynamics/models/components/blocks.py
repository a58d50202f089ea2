"""GroupNorm residual and upsampling blocks, and optional per-block gradient checkpointing."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.utils.checkpoint
from torch import nn
from torch.utils.checkpoint import checkpoint


def group_norm(channels: int, max_groups: int = 8) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups (the largest count that divides `channels`)."""
    return nn.GroupNorm(math.gcd(max_groups, channels), channels)


class ResBlock3d(nn.Module):
    """Pre-activation residual block: (GN, SiLU, Conv3d 3³) x2, strided when downsampling."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm2 = group_norm(out_channels)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False)
        self.act = nn.SiLU()
        self.shortcut = (
            nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False)
            if stride != 1 or in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        h = self.conv2(self.act(self.norm2(h)))
        return h + self.shortcut(x)


class NormAct(nn.Module):
    """GroupNorm then SiLU; with `recompute`, the GroupNorm output is not kept for backward."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.act = nn.SiLU()
        self.recompute = False

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.recompute and torch.is_grad_enabled():
            # Nested in the block's checkpoint: during the block's backward pass, the 128³ GN
            # outputs are recomputed too instead of being held (two fewer full-size tensors).
            return torch.utils.checkpoint.checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


class UpBlock3d(nn.Module):
    """One stride-2 upsampling stage: ConvTranspose3d(k=2, s=2), GN, SiLU, Conv3d 3³, GN, SiLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ConvTranspose3d(in_channels, out_channels, kernel_size=2, stride=2, bias=False),
            NormAct(out_channels),
            nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False),
            NormAct(out_channels),
        )

    def set_recompute_norm_act(self, enabled: bool) -> None:
        for module in self.block:
            if isinstance(module, NormAct):
                module.recompute = enabled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def run_blocks(
    blocks: Sequence[Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor, use_checkpointing: bool
) -> torch.Tensor:
    """Apply blocks in order; with checkpointing, each block's activations are recomputed in backward."""
    active = use_checkpointing and torch.is_grad_enabled()
    for block in blocks:
        x = checkpoint(block, x, use_reentrant=False) if active else block(x)
    return x


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z = mu + eps * exp(0.5 * logvar), eps ~ N(0, I), drawn in float32 even under autocast.

    Under bf16/fp16 autocast the encoder's head returns half-precision mu and logvar; sampling in that
    precision would round z (bf16 keeps 8 bits), and the fp32 MWS terms would see the rounded draw.
    """
    mu, logvar = mu.float(), logvar.float()
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
