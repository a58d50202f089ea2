"""Latent-space figures: |Spearman ρ| of latent dimensions against factors, and latent traversals."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from vae_dynamics.viz import figure_file


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
    kls: Sequence[float],
    values: Sequence[float],
    modalities: Sequence[str],
    path: str | os.PathLike[str],
    title: str = "",
) -> None:
    """Per traversed dimension: a row per modality (axial slice through the tumour) and a row with the
    change from the reference decoding (|x̂(z_j) - x̂(μ_j)|, summed over modalities); columns: z_j values.

    slices: [n_dims, n_values, n_modalities, H, W], already oriented for display; the reference
    (offset 0) is the middle value.
    """
    n_dims, n_values, n_mod = slices.shape[:3]
    vmax = max(float(np.percentile(slices, 99.5)), 1e-6)
    change = np.abs(slices - slices[:, n_values // 2 : n_values // 2 + 1]).sum(axis=2)  # [dims, values, H, W]
    cmax = max(float(np.percentile(change, 99.9)), 1e-6)
    rows = n_dims * (n_mod + 1)
    height = 1.2 * rows + 0.8
    grid = dict(nrows=rows, ncols=n_values, figsize=(1.2 * n_values + 1.3, height))
    with figure_file(path, dpi=70, squeeze=False, **grid) as (fig, axes):
        for i, (dim, kl) in enumerate(zip(dims, kls)):
            top = i * (n_mod + 1)
            for v, value in enumerate(values):
                for m in range(n_mod):
                    axes[top + m, v].imshow(
                        slices[i, v, m], cmap="gray", vmin=0.0, vmax=vmax, interpolation="nearest"
                    )
                axes[top + n_mod, v].imshow(
                    change[i, v], cmap="magma", vmin=0.0, vmax=cmax, interpolation="nearest"
                )
                if i == 0:
                    axes[0, v].set_title(f"{value:+.0f}σ", fontsize=8)
            for m, name in enumerate(modalities):
                axes[top + m, 0].set_ylabel(f"z{dim} {name}", fontsize=7)
            axes[top + n_mod, 0].set_ylabel(f"z{dim} |change|\nKL {kl:.1f}", fontsize=7)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
        if title:
            fig.suptitle(title, fontsize=9)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / height))


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
    """One dimension: a row per (view, modality) and a last row with |x̂(z_j) - x̂(μ_j)| summed over rows.

    slices: [n_values, n_views, n_modalities, H, W]; the reference (μ_j itself) is the middle value.
    """
    n_values, n_views, n_mod = slices.shape[:3]
    ref = slices[n_values // 2]
    vmax = max(float(np.percentile(slices, 99.5)), 1e-6)
    change = np.abs(slices - ref[None]).sum(axis=2)[:, 0]  # first view, summed over modalities
    cmax = max(float(change.max()), 1e-6)
    rows = n_views * n_mod + 1
    grid = dict(nrows=rows, ncols=n_values, figsize=(1.5 * n_values + 1.2, 1.5 * rows + 0.6))
    with figure_file(path, dpi=70, squeeze=False, **grid) as (fig, axes):
        for v, value in enumerate(values):
            for w, view in enumerate(views):
                for m, name in enumerate(modalities):
                    ax = axes[w * n_mod + m, v]
                    ax.imshow(slices[v, w, m], cmap="gray", vmin=0.0, vmax=vmax, interpolation="nearest")
                    if v == 0:
                        ax.set_ylabel(f"{name} {view}", fontsize=8)
            axes[-1, v].imshow(change[v], cmap="magma", vmin=0.0, vmax=cmax, interpolation="nearest")
            axes[0, v].set_title(f"{value:+.1f}σ", fontsize=8)
        axes[-1, 0].set_ylabel(f"|change|\n{views[0]}", fontsize=8)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(title or f"z{dim} (KL {kl:.2f} nats)", fontsize=9)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (1.5 * rows + 0.6)))


def plot_kl_per_dim(
    kl: np.ndarray, mu_variance: np.ndarray, threshold: float, path: str | os.PathLike[str], title: str = ""
) -> None:
    """Where the information is: KL per dimension, largest first; active units (Var μ > threshold) coloured."""
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
        ax.text(max(n_active - 0.5, 0), ax.get_ylim()[1] * 0.95, f" {n_active} active", color="tab:red",
                va="top", fontsize=8)  # fmt: skip
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
