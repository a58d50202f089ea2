"""β warm-up: 0 at epoch 0, linear to the target over `annealing_epochs`, constant afterwards."""

from __future__ import annotations

from vae_dynamics.config.schema import TrainConfig


def linear_warmup(epoch: int, target: float, annealing_epochs: int) -> float:
    """β at `epoch` (0-based); no cyclic mode."""
    if annealing_epochs <= 0:
        return float(target)
    return float(target) * min(1.0, max(epoch, 0) / annealing_epochs)


def lr_factors(step: int, train: TrainConfig) -> tuple[float, float]:
    """Multipliers of train.lr at optimizer step `step` (0-based): (every group, the encoder head).

    - lr warm-up: (step + 1) / train.lr_warmup_steps for the first lr_warmup_steps steps, then 1;
    - the encoder head: train.encoder_head_lr_scale at step 0, rising geometrically to 1 over
      train.encoder_head_lr_ramp_steps (scale ** (1 - step / ramp)); with a ramp of 0 it stays at scale.
    The head's multiplier includes the warm-up's.
    """
    warmup, scale, ramp = train.lr_warmup_steps, train.encoder_head_lr_scale, train.encoder_head_lr_ramp_steps
    warm = 1.0 if warmup <= 0 else min(1.0, (step + 1) / warmup)
    head = scale if ramp <= 0 else scale ** (1.0 - min(1.0, max(step, 0) / ramp))
    return warm, warm * head
