"""Latent traversals: vary one dimension of a reference μ over ±3 prior σ, decode, slice through the
tumour."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from vae_dynamics.inference import TrainedRun
from vae_dynamics.models import VAE3d
from vae_dynamics.viz.latents import plot_traversal_overview
from vae_dynamics.viz.recon import slices_through

TRAVERSAL_VALUES = tuple(np.linspace(-3.0, 3.0, 7))  # prior σ = 1: offsets in units of the prior's σ
TRAVERSAL_MODALITIES = ("t1c", "t2f")
TRAVERSAL_VIEWS = ("axial", "coronal")


def tumour_centre(seg: torch.Tensor | np.ndarray) -> tuple[int, int, int]:
    """Voxel centroid of the tumour (any label) of a [1, X, Y, Z] or [X, Y, Z] seg; the volume centre if
    none."""
    seg = np.asarray(torch.as_tensor(seg)).reshape(np.shape(seg)[-3:])
    idx = np.argwhere(seg > 0)
    if len(idx) == 0:
        x, y, z = (s // 2 for s in seg.shape)
    else:
        x, y, z = (int(round(v)) for v in idx.mean(axis=0))
    return x, y, z


@torch.inference_mode()
def traverse(
    model: VAE3d,
    mu_ref: torch.Tensor,
    dims: Sequence[int],
    centre: tuple[int, int, int],
    channels: Sequence[int],
    values: Sequence[float] = TRAVERSAL_VALUES,
    views: Sequence[str] = TRAVERSAL_VIEWS,
) -> np.ndarray:
    """Decoded slices [n_dims, n_values, n_views, n_channels, H, W] of μ_ref with z_j = μ_j + value."""
    device = next(model.parameters()).device
    mu = mu_ref.to(device, torch.float32)
    moved = [i for i, v in enumerate(values) if v != 0]  # z_j + 0 is the reference: decoded once for all j
    reference = model.decode(mu[None]).float().cpu().numpy()[0]
    offsets = torch.tensor([values[i] for i in moved], dtype=torch.float32, device=device)
    out = []
    for dim in dims:
        volumes = [reference] * len(values)
        if moved:
            z = mu.expand(len(moved), -1).clone()
            z[:, dim] += offsets
            for i, x_hat in zip(moved, model.decode(z).float().cpu().numpy()):
                volumes[i] = x_hat
        out.append(
            [
                [[slices_through(x_hat[c], centre)[view] for c in channels] for view in views]
                for x_hat in volumes
            ]
        )
    return np.asarray(out, dtype=np.float32)


def traversal_overview(
    run: TrainedRun,
    mu: torch.Tensor,
    dims: Sequence[int],
    kl: np.ndarray,
    centre: tuple[int, int, int],
    path: str | Path,
    title: str,
) -> np.ndarray:
    """Traverse `dims` of a run's model around μ (decoded in its training precision) and draw the
    overview figure (TRAVERSAL_MODALITIES, axial); the slices [n_dims, n_values, n_views, n_mod, H, W]."""
    channels = [run.modalities.index(m) for m in TRAVERSAL_MODALITIES]
    with run.autocast():
        slices = traverse(run.model, mu, dims, centre, channels)
    kls = kl[list(dims)]
    plot_traversal_overview(
        slices[:, :, 0], dims, kls, TRAVERSAL_VALUES, TRAVERSAL_MODALITIES, path, title=title
    )
    return slices
