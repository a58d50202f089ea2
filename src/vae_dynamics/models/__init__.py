"""Models: the shared ResNet3D-GN encoder, the Exp1 baseline VAE and the Exp2 TCVAESBD.

`MODELS` maps each experiment's model.variant to its nn.Module; `build` makes the one a config names."""

from vae_dynamics.config.schema import Exp1Config, Exp2Config, ExperimentConfig, variant_of
from vae_dynamics.models.vae.base import VAE3d
from vae_dynamics.models.vae.baseline_vae import BaselineVAE
from vae_dynamics.models.vae.tcvae_sbd import TCVAESBD

MODELS: dict[str, type[VAE3d]] = {variant_of(Exp2Config): TCVAESBD, variant_of(Exp1Config): BaselineVAE}


def build(cfg: ExperimentConfig) -> VAE3d:
    """The nn.Module of the experiment `cfg` selects, as its `model` section (and train.*) describe it."""
    return MODELS[cfg.model.variant].from_config(cfg.model, cfg.train.gradient_checkpointing)


__all__ = ["MODELS", "VAE3d", "BaselineVAE", "TCVAESBD", "build"]
