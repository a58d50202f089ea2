"""Reconstruction panels: input | reconstruction | |difference| on the three central slices."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from vae_dynamics.viz import figure_file

VIEWS = ("axial", "coronal", "sagittal")


def central_slices(volume: np.ndarray) -> dict[str, np.ndarray]:
    """Central axial/coronal/sagittal slices of a RAS volume [X, Y, Z], oriented for display."""
    return slices_through(volume, tuple(s // 2 for s in volume.shape))


def slices_through(volume: np.ndarray, centre: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """Axial/coronal/sagittal slices of a RAS volume [X, Y, Z] through voxel `centre`, oriented for
    display."""
    x, y, z = centre
    return {
        "axial": np.rot90(volume[:, :, z]),
        "coronal": np.rot90(volume[:, y, :]),
        "sagittal": np.rot90(volume[x, :, :]),
    }


def save_recon_panel(
    image: torch.Tensor | np.ndarray,
    recon: torch.Tensor | np.ndarray,
    path: str | os.PathLike[str],
    modalities: Sequence[str],
    title: str = "",
) -> None:
    """One PNG: a row per modality; per view three panels (input, recon, |diff|) on a shared scale."""
    image = np.asarray(torch.as_tensor(image).detach().float().cpu())
    recon = np.asarray(torch.as_tensor(recon).detach().float().cpu())
    n_mod = len(modalities)
    grid = dict(nrows=n_mod, ncols=3 * len(VIEWS), figsize=(6.0 * len(VIEWS), 2.1 * n_mod + 0.4))
    with figure_file(path, dpi=80, squeeze=False, **grid) as (fig, axes):
        for m, name in enumerate(modalities):
            vmax = float(max(image[m].max(), 1e-6))  # one scale per modality, set by the input
            inp, rec = central_slices(image[m]), central_slices(recon[m])
            for v, view in enumerate(VIEWS):
                panels = (
                    ("input", inp[view], "gray"),
                    ("recon", rec[view], "gray"),
                    ("|diff|", np.abs(inp[view] - rec[view]), "magma"),
                )
                for k, (label, data, cmap) in enumerate(panels):
                    ax = axes[m, 3 * v + k]
                    ax.imshow(data, cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest")
                    ax.set_xticks([])
                    ax.set_yticks([])
                    if m == 0:
                        ax.set_title(f"{view}\n{label}", fontsize=8)
                    if v == 0 and k == 0:
                        ax.set_ylabel(name, fontsize=10)
        if title:
            fig.suptitle(title, fontsize=10)
        fig.tight_layout()
