"""vae_dynamics: 3D VAEs for BraTS-MEN MRI (Exp1 baseline VAE, Exp2 beta-TCVAE + SBD).

from vae_dynamics import load_run       # a trained run as a tool (vae_dynamics/inference.py)
"""

from typing import Any

__version__ = "0.6.0"  # the one source of the version (pyproject.toml reads it); see CHANGELOG.md
__all__ = ["__version__", "load_run"]


def __getattr__(name: str) -> Any:
    # load_run imports torch and MONAI; `import vae_dynamics` (and `vae-dynamics --version`) does not.
    if name == "load_run":
        from vae_dynamics.inference import load_run

        return load_run
    raise AttributeError(f"module 'vae_dynamics' has no attribute {name!r}")
