"""3D ResNet encoder with GroupNorm: 128³ -> 8³ in four stride-2 stages, then a spatial head."""

from __future__ import annotations

import torch
from torch import nn

from vae_dynamics.models.components.blocks import ResBlock3d, group_norm, run_blocks


class ResNet3dEncoder(nn.Module):
    """x [B,C,128,128,128] -> (mu, logvar), each [B, z_dim].

    Four stride-2 downsamplings 128→64→32→16→8 with channels base·{1,2,4,8}: a strided stem
    (conv, GN, SiLU; as in MONAI's ResNet, no full-resolution feature maps) and four stages of two
    residual blocks, the first block of stages 2-4 strided. The head keeps the 8³ layout: a 1x1x1
    conv reduces channels, then a linear layer reads all positions (no global-pool-only head).
    """

    def __init__(
        self,
        in_channels: int = 4,
        base_filters: int = 32,
        z_dim: int = 128,
        input_size: int = 128,
        head_channels: int = 32,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.gradient_checkpointing = gradient_checkpointing
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, base_filters, 3, stride=2, padding=1, bias=False),
            group_norm(base_filters),
            nn.SiLU(),
        )
        widths = [base_filters * m for m in (1, 2, 4, 8)]
        blocks, c_in = [], base_filters
        for i, c_out in enumerate(widths):
            blocks += [ResBlock3d(c_in, c_out, stride=1 if i == 0 else 2), ResBlock3d(c_out, c_out)]
            c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.head_conv = nn.Sequential(group_norm(c_in), nn.SiLU(), nn.Conv3d(c_in, head_channels, 1))
        bottleneck = input_size // 16
        self.head = nn.Linear(head_channels * bottleneck**3, 2 * z_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The stem runs inside the first block's checkpoint: its 128³ output is then not kept.
        first, *rest = self.blocks
        h = run_blocks([lambda t: first(self.stem(t)), *rest], x, self.gradient_checkpointing)
        h = self.head_conv(h).flatten(1)
        mu, logvar = self.head(h).chunk(2, dim=1)
        return mu, logvar
