"""vae_dynamics: 3D VAEs for BraTS-MEN MRI (Exp1 baseline VAE, Exp2 beta-TCVAE + SBD).

from vae_dynamics import load_run        # a trained run as a tool (vae_dynamics/inference.py)
from vae_dynamics import write_encoding  # new scans into a folder (vae_dynamics/evaluation/new_scans.py)
"""

from typing import Any

__version__ = "0.7.0"  # the one source of the version (pyproject.toml reads it); see CHANGELOG.md
__all__ = ["__version__", "load_run", "write_encoding"]


def __getattr__(name: str) -> Any:
    # They import torch and MONAI; `import vae_dynamics` (and `vae-dynamics --version`) does not.
    if name == "load_run":
        from vae_dynamics.inference import load_run

        return load_run
    if name == "write_encoding":
        from vae_dynamics.evaluation.new_scans import write_encoding

        return write_encoding
    raise AttributeError(f"module 'vae_dynamics' has no attribute {name!r}")
