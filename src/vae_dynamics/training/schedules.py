"""β warm-up: 0 at epoch 0, linear to the target over `annealing_epochs`, constant afterwards."""

from __future__ import annotations


def linear_warmup(epoch: int, target: float, annealing_epochs: int) -> float:
    """β at `epoch` (0-based); no cyclic mode."""
    if annealing_epochs <= 0:
        return float(target)
    return float(target) * min(1.0, max(epoch, 0) / annealing_epochs)


def lr_factors(
    step: int, lr_warmup_steps: int = 0, head_lr_scale: float = 1.0, head_lr_ramp_steps: int = 0
) -> tuple[float, float]:
    """Multipliers of the base lr at optimizer step `step` (0-based): (every group, the encoder head).

    - lr warm-up: (step + 1) / lr_warmup_steps for the first lr_warmup_steps steps, then 1;
    - the encoder head: head_lr_scale at step 0, rising geometrically to 1 over head_lr_ramp_steps
      (head_lr_scale ** (1 - step / ramp)); with head_lr_ramp_steps 0 it stays at head_lr_scale.
    The head's multiplier includes the warm-up's.
    """
    warm = 1.0 if lr_warmup_steps <= 0 else min(1.0, (step + 1) / lr_warmup_steps)
    if head_lr_ramp_steps <= 0:
        head = head_lr_scale
    else:
        head = head_lr_scale ** (1.0 - min(1.0, max(step, 0) / head_lr_ramp_steps))
    return warm, warm * head
