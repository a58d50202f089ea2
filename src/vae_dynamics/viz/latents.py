"""Latent-space figures: |Spearman ρ| of latent dimensions against factors, and latent traversals."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from vae_dynamics.viz import figure_file
from vae_dynamics.viz.grid import coloured, save_image_grid


def plot_factor_correlations(
    rho: np.ndarray,
    dim_labels: Sequence[str],
    factor_names: Sequence[str],
    path: str | os.PathLike[str],
    title: str = "",
) -> None:
    """Heatmap of |ρ| [dimensions (rows, sorted by KL) x factors (columns)] on a fixed 0..1 scale."""
    n_dims, n_factors = rho.shape
    size = (2.5 + 0.42 * n_factors, 1.5 + 0.16 * n_dims)
    with figure_file(path, dpi=90, figsize=size) as (fig, ax):
        image = ax.imshow(
            np.abs(rho), aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest"
        )
        ax.set_xticks(range(n_factors))
        ax.set_xticklabels(factor_names, rotation=70, ha="right", fontsize=7)
        ax.set_yticks(range(n_dims))
        ax.set_yticklabels(dim_labels, fontsize=6)
        ax.set_ylabel("latent dimension (largest KL first)")
        fig.colorbar(image, ax=ax, fraction=0.04, label="|Spearman ρ|")
        if title:
            ax.set_title(title, fontsize=9)
        fig.tight_layout()


def plot_traversal_overview(
    slices: np.ndarray,
    dims: Sequence[int],
    kls: Sequence[float] | np.ndarray,
    values: Sequence[float],
    modalities: Sequence[str],
    path: str | os.PathLike[str],
    title: str = "",
) -> None:
    """Per traversed dimension: a row per modality (axial slice through the tumour) and a row with the
    change from the reference decoding (|x̂(z_j) - x̂(μ_j)|, summed over modalities); columns: z_j values.

    slices: [n_dims, n_values, n_modalities, H, W], already oriented for display; the reference
    (offset 0) is the middle value. Grey rows share one scale (the 99.5th percentile of all slices), the
    change rows another.
    """
    n_dims, n_values, n_mod = slices.shape[:3]
    vmax = max(float(np.percentile(slices, 99.5)), 1e-6)
    change = np.abs(slices - slices[:, n_values // 2 : n_values // 2 + 1]).sum(axis=2)  # [dims, values, H, W]
    cmax = max(float(np.percentile(change, 99.9)), 1e-6)
    tiles, labels = [], []
    for i, (dim, kl) in enumerate(zip(dims, kls)):
        for m, name in enumerate(modalities):
            tiles.append([coloured(slices[i, v, m], "gray", 0.0, vmax) for v in range(n_values)])
            labels.append(f"z{dim} {name}")
        tiles.append([coloured(change[i, v], "magma", 0.0, cmax) for v in range(n_values)])
        labels.append(f"z{dim} |change|\nKL {kl:.1f}")
    save_image_grid(tiles, path, labels, [f"{v:+.0f}σ" for v in values], title=title)


def plot_traversal_dimension(
    slices: np.ndarray,
    dim: int,
    kl: float,
    values: Sequence[float],
    modalities: Sequence[str],
    views: Sequence[str],
    path: str | os.PathLike[str],
    title: str = "",
) -> None:
    """One dimension: a row per (view, modality) and a last row with |x̂(z_j) - x̂(μ_j)| summed over
    modalities in the first view; columns: z_j values.

    slices: [n_values, n_views, n_modalities, H, W]; the reference (μ_j itself) is the middle value.
    """
    n_values, n_views, n_mod = slices.shape[:3]
    ref = slices[n_values // 2]
    vmax = max(float(np.percentile(slices, 99.5)), 1e-6)
    change = np.abs(slices - ref[None]).sum(axis=2)[:, 0]  # first view, summed over modalities
    cmax = max(float(change.max()), 1e-6)
    tiles, labels = [], []
    for w, view in enumerate(views):
        for m, name in enumerate(modalities):
            tiles.append([coloured(slices[v, w, m], "gray", 0.0, vmax) for v in range(n_values)])
            labels.append(f"{name} {view}")
    tiles.append([coloured(change[v], "magma", 0.0, cmax) for v in range(n_values)])
    labels.append(f"|change|\n{views[0]}")
    save_image_grid(
        tiles,
        path,
        labels,
        [f"{v:+.1f}σ" for v in values],
        title=title or f"z{dim} (KL {kl:.2f} nats)",
        tile_inches=1.5,
    )


def plot_kl_per_dim(
    kl: np.ndarray, mu_variance: np.ndarray, threshold: float, path: str | os.PathLike[str], title: str = ""
) -> None:
    """Where the information is: KL per dimension, largest first; active units (Var μ > threshold)
    coloured."""
    order = np.argsort(-kl, kind="stable")
    active = mu_variance[order] > threshold
    with figure_file(path, dpi=90, figsize=(10, 3.4)) as (fig, ax):
        x = np.arange(len(kl))
        ax.bar(
            x[active], kl[order][active], width=0.9, color="tab:blue", label=f"active (Var μ > {threshold:g})"
        )
        ax.bar(x[~active], kl[order][~active], width=0.9, color="lightgrey", label="inactive")
        n_active = int(active.sum())
        ax.axvline(n_active - 0.5 if n_active else -0.5, color="tab:red", ls="--", lw=1)
        ax.text(
            max(n_active - 0.5, 0),
            ax.get_ylim()[1] * 0.95,
            f" {n_active} active",
            color="tab:red",
            va="top",
            fontsize=8,
        )
        ax.set(
            xlabel="latent dimension, sorted by KL", ylabel="KL(q(z_j|x) ‖ N(0,1)) [nats]", xlim=(-1, len(kl))
        )
        ticks = x[:: max(1, len(kl) // 16)]
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"z{order[t]}" for t in ticks], fontsize=6, rotation=90)
        ax.legend(fontsize=7, loc="upper right")
        if title:
            ax.set_title(title, fontsize=9)
        fig.tight_layout()


def plot_latent_map(
    mu: np.ndarray, factors: dict[str, np.ndarray], path: str | os.PathLike[str], title: str = ""
) -> None:
    """The posterior means projected on their two principal axes, one panel per factor (colour)."""
    centred = mu - mu.mean(axis=0, keepdims=True)
    if len(mu) >= 2 and np.abs(centred).max() > 0:
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        xy = centred @ vt[:2].T if vt.shape[0] >= 2 else np.c_[centred @ vt[:1].T, np.zeros(len(mu))]
        explained = (s[:2] ** 2) / max((s**2).sum(), 1e-12)
    else:
        xy, explained = np.zeros((len(mu), 2)), np.zeros(2)
    names = list(factors) or ["(no factor)"]
    ncols = min(3, len(names))
    nrows = -(-len(names) // ncols)
    with figure_file(
        path, dpi=90, nrows=nrows, ncols=ncols, figsize=(4 * ncols, 3.4 * nrows), squeeze=False
    ) as (
        fig,
        axes,
    ):
        for ax, name in zip(axes.flat, names):
            values = factors.get(name)
            if values is None:
                ax.scatter(xy[:, 0], xy[:, 1], s=14)
            else:
                points = ax.scatter(xy[:, 0], xy[:, 1], c=values, s=14, cmap="viridis")
                fig.colorbar(points, ax=ax, fraction=0.05)
            ax.set_title(name, fontsize=8)
            ax.set_xlabel(f"PC1 ({100 * explained[0]:.0f} % of Var μ)", fontsize=7)
            ax.set_ylabel(f"PC2 ({100 * explained[1]:.0f} %)", fontsize=7)
        for ax in list(axes.flat)[len(names) :]:
            ax.axis("off")
        if title:
            fig.suptitle(title, fontsize=9)
        fig.tight_layout()
