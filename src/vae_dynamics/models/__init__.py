"""Models: the shared ResNet3D-GN encoder, the Exp1 baseline VAE and the Exp2 TCVAESBD."""

from vae_dynamics.models.vae.base import VAE3d
from vae_dynamics.models.vae.baseline_vae import BaselineVAE
from vae_dynamics.models.vae.tcvae_sbd import TCVAESBD

__all__ = ["VAE3d", "BaselineVAE", "TCVAESBD"]
