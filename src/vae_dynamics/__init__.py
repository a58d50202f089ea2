"""vae_dynamics: 3D VAEs for BraTS-MEN MRI (Exp1 baseline VAE, Exp2 beta-TCVAE + SBD)."""

__version__ = "0.4.0"  # the one source of the version (pyproject.toml reads it); see CHANGELOG.md
