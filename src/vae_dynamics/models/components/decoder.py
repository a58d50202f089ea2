"""The upsampling trunk shared by both decoders: C0 at 8³ -> out_channels at 128³."""

from __future__ import annotations

import torch
from torch import nn

from vae_dynamics.models.components.blocks import UpBlock3d, run_blocks


def decoder_widths(base_filters: int) -> list[int]:
    """Channels at 8³, 16³, 32³, 64³, 128³: base·8, base·4, base·2, base, base//2."""
    if base_filters // 2 < 8:
        raise ValueError(f"base_filters // 2 must be >= 8 (got base_filters={base_filters})")
    return [base_filters * 8, base_filters * 4, base_filters * 2, base_filters, base_filters // 2]


class UpsamplingDecoder(nn.Module):
    """Exactly four stride-2 upsampling stages 8→16→32→64→128, then a final Conv3d to out_channels."""

    def __init__(
        self, base_filters: int, out_channels: int = 4, gradient_checkpointing: bool = False
    ) -> None:
        super().__init__()
        widths = decoder_widths(base_filters)
        self.gradient_checkpointing = gradient_checkpointing
        stages = [UpBlock3d(a, b) for a, b in zip(widths[:-1], widths[1:])]
        for stage in stages:
            stage.set_recompute_norm_act(gradient_checkpointing)
        self.stages = nn.ModuleList(stages)
        self.final = nn.Conv3d(widths[-1], out_channels, 3, padding=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        # The final conv runs inside the last stage's checkpoint: its 128³ input is then not kept.
        *rest, last = list(self.stages)
        return run_blocks([*rest, lambda t: self.final(last(t))], h, self.gradient_checkpointing)
