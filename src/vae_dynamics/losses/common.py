"""Pieces shared by the losses: the summed reconstruction error, the closing of the terms (finiteness
check) and `Objective`, the interface through which training and bench/ call an experiment's loss."""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

# Under DDP, (the gathered posteriors of the whole minibatch, this process's first index in it).
BatchPosteriors = tuple[torch.Tensor, torch.Tensor, int]
# What a models.VAE3d returns: (x_hat, mu, logvar, z).
ModelOutput = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class Objective(Protocol):
    """An experiment's loss as the training step calls it (the registry record names its class).

    Built as `cls(loss_section, dataset_size)`; called on a batch x and the model's output with the
    epoch's β it returns the
    terms ("loss" is backpropagated, every term is logged); `weights(β)` gives the weight each term
    enters "loss" with. `couples_batch`: each sample's terms depend on the other samples' posteriors
    (the MWS estimator), so under DDP the step gathers the global minibatch's posteriors first.
    """

    couples_batch: bool

    def __call__(
        self,
        x: torch.Tensor,
        out: ModelOutput,
        *,
        beta: float,
        batch_posteriors: BatchPosteriors | None = None,
    ) -> dict[str, torch.Tensor]: ...

    def weights(self, beta: float) -> dict[str, float]: ...


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


def close_terms(
    total: torch.Tensor, terms: dict[str, torch.Tensor], beta_name: str, beta: float
) -> dict[str, torch.Tensor]:
    """{"loss": total, **terms, <beta_name>: β}, checked finite: the dict every loss returns."""
    out = {"loss": total, **terms, beta_name: torch.tensor(float(beta), device=total.device)}
    check_finite(out)
    return out
