"""A grid of image tiles drawn as one figure: one RGB mosaic and a single imshow.

The traversal figures hold 28 to 112 slices. As a grid of matplotlib Axes, creating and laying out
the Axes took most of the figure's time (about 20 ms per Axes, 22 s of a 76 s evaluation); as one
mosaic with row and column labels on a single Axes the same tiles, colour maps and labels take a
fraction of it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib
import numpy as np

from vae_dynamics.viz import figure_file

GAP = 2  # white pixels between tiles


def coloured(image: np.ndarray, cmap: str, vmin: float, vmax: float) -> np.ndarray:
    """An [H, W] array as RGB [H, W, 3] in [0, 1] through a colour map on the fixed range [vmin, vmax]."""
    scaled = (np.asarray(image, dtype=np.float64) - vmin) / max(vmax - vmin, 1e-12)
    return matplotlib.colormaps[cmap](np.clip(scaled, 0.0, 1.0))[..., :3]


def mosaic(tiles: Sequence[Sequence[np.ndarray]], gap: int = GAP) -> np.ndarray:
    """Rows of equally shaped RGB tiles [H, W, 3] as one image, `gap` white pixels between tiles."""
    h, w = tiles[0][0].shape[:2]
    rows, cols = len(tiles), len(tiles[0])
    out = np.ones((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap, 3))
    for r, row in enumerate(tiles):
        if len(row) != cols:
            raise ValueError(f"row {r} has {len(row)} tiles, row 0 has {cols}")
        for c, tile in enumerate(row):
            if tile.shape[:2] != (h, w):
                raise ValueError(f"tile ({r}, {c}) is {tile.shape[:2]}, tile (0, 0) is {(h, w)}")
            out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = tile[..., :3]
    return out


def save_image_grid(
    tiles: Sequence[Sequence[np.ndarray]],
    path: str | os.PathLike[str],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str = "",
    tile_inches: float = 1.2,
    dpi: int = 70,
    label_inches: float = 1.1,
    fontsize: float = 7,
) -> None:
    """The tiles (rows of RGB arrays, see `coloured`) as one PNG: row labels on the left, column
    labels above, the title on top; written atomically by `figure_file`."""
    rows, cols = len(tiles), len(tiles[0])
    if len(row_labels) != rows or len(col_labels) != cols:
        raise ValueError(f"{rows} x {cols} tiles need {rows} row and {cols} column labels")
    image = mosaic(tiles)
    top = 0.35 + (0.25 * (title.count("\n") + 1) if title else 0.0)
    width, height = label_inches + cols * tile_inches + 0.1, top + rows * tile_inches + 0.1
    with figure_file(path, dpi=dpi, figsize=(width, height)) as (fig, ax):
        ax.set_position(
            (label_inches / width, 0.1 / height, cols * tile_inches / width, rows * tile_inches / height)
        )
        ax.imshow(image, interpolation="nearest", aspect="auto")
        h, w = tiles[0][0].shape[:2]
        ax.set_yticks([r * (h + GAP) + h / 2 for r in range(rows)], list(row_labels), fontsize=fontsize)
        ax.set_xticks([c * (w + GAP) + w / 2 for c in range(cols)], list(col_labels), fontsize=fontsize + 1)
        ax.xaxis.tick_top()
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        if title:
            fig.suptitle(title, fontsize=9, y=1 - 0.08 / height, va="top")
