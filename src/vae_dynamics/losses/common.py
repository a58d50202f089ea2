"""Pieces shared by both losses: the summed reconstruction error and the finiteness check."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class NonFiniteLossError(FloatingPointError):
    """A loss term is NaN or inf."""


def reconstruction_sum(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Σ_{b,c,d,h,w} (x_hat - x)², accumulated in float32 (an fp16 sum over 8·4·128³ voxels overflows)."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        return F.mse_loss(x_hat.float(), x.float(), reduction="sum")


def check_finite(terms: dict[str, torch.Tensor]) -> None:
    """Raise NonFiniteLossError naming every non-finite term (one host sync for all terms)."""
    values = torch.stack(
        [torch.as_tensor(v, dtype=torch.float32).detach().reshape(()) for v in terms.values()]
    )
    finite = torch.isfinite(values).tolist()
    if not all(finite):
        bad = [f"{name}={values[i].item()}" for i, (name, ok) in enumerate(zip(terms, finite)) if not ok]
        raise NonFiniteLossError(f"non-finite loss term(s): {', '.join(bad)}")
