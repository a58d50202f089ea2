"""Losses: Exp1 VAE (recon + β·KL) and Exp2 β-TCVAE with the minibatch-weighted sampling estimator.

`OBJECTIVES` maps each experiment's model.variant to its loss (a losses.common.Objective built from the
config's `loss` section and the number of training subjects)."""

from vae_dynamics.config.schema import Exp1Config, Exp2Config, variant_of
from vae_dynamics.losses.common import NonFiniteLossError, Objective
from vae_dynamics.losses.tcvae import TCVAEObjective, compute_tcvae_loss
from vae_dynamics.losses.vae import VAEObjective, compute_vae_loss

OBJECTIVES: dict[str, type[Objective]] = {
    variant_of(Exp2Config): TCVAEObjective,
    variant_of(Exp1Config): VAEObjective,
}

__all__ = [
    "OBJECTIVES",
    "NonFiniteLossError",
    "Objective",
    "TCVAEObjective",
    "VAEObjective",
    "compute_tcvae_loss",
    "compute_vae_loss",
]
