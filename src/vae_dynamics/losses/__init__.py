"""Losses: Exp1 VAE (recon + β·KL) and Exp2 β-TCVAE with the minibatch-weighted sampling estimator."""

from vae_dynamics.losses.common import NonFiniteLossError
from vae_dynamics.losses.tcvae import compute_tcvae_loss
from vae_dynamics.losses.vae import compute_vae_loss

__all__ = ["NonFiniteLossError", "compute_tcvae_loss", "compute_vae_loss"]
