"""Figures: reconstruction panels, loss curves, factor correlations and latent traversals."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from vae_dynamics.io import atomic_path  # noqa: E402


@contextlib.contextmanager
def figure_file(path: str | os.PathLike[str], *, dpi: int = 90, **subplots: Any) -> Iterator[tuple[Any, Any]]:
    """`plt.subplots(**subplots)` saved atomically as PNG at `path`; the figure is closed even on failure."""
    fig, axes = plt.subplots(**subplots)
    try:
        yield fig, axes
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
