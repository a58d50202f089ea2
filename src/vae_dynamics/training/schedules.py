"""β warm-up: 0 at epoch 0, linear to the target over `annealing_epochs`, constant afterwards."""

from __future__ import annotations


def linear_warmup(epoch: int, target: float, annealing_epochs: int) -> float:
    """β at `epoch` (0-based); no cyclic mode."""
    if annealing_epochs <= 0:
        return float(target)
    return float(target) * min(1.0, max(epoch, 0) / annealing_epochs)
