"""Figures are written atomically and closed even when saving fails."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from vae_dynamics.viz.recon import save_recon_panel

MODALITIES = ["t1c", "t1n", "t2f", "t2w"]


def test_a_failed_save_leaves_no_file_and_no_open_figure(tmp_path, monkeypatch):
    def full_disk(self, fname, *args, **kwargs):
        with open(fname, "wb") as fh:
            fh.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full_disk)
    image = torch.rand(4, 16, 16, 16)
    open_before = set(plt.get_fignums())
    with pytest.raises(OSError, match="No space left"):
        save_recon_panel(image, image, tmp_path / "panel.png", MODALITIES)
    assert set(plt.get_fignums()) == open_before  # the figure was closed
    assert list(tmp_path.iterdir()) == []  # neither the PNG nor its temporary file


def test_a_saved_panel_is_a_png_and_closes_its_figure(tmp_path):
    image = torch.rand(4, 16, 16, 16)
    open_before = set(plt.get_fignums())
    save_recon_panel(image, image * 0.5, tmp_path / "panel.png", MODALITIES, title="S0")
    assert (tmp_path / "panel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(plt.get_fignums()) == open_before


def test_atomic_dir_replaces_a_folder_only_when_complete(tmp_path):
    from vae_dynamics.io import atomic_dir

    target = tmp_path / "panels"
    target.mkdir()
    (target / "old.png").write_bytes(b"old")
    with pytest.raises(RuntimeError, match="interrupted"), atomic_dir(target) as tmp:
        (tmp / "new.png").write_bytes(b"new")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["panels"]  # no leftover temporary folder
    assert [p.name for p in target.iterdir()] == ["old.png"]  # the previous result is intact
    with atomic_dir(target) as tmp:
        (tmp / "new.png").write_bytes(b"new")
    assert [p.name for p in target.iterdir()] == ["new.png"]


def test_two_writers_of_one_folder_get_their_own_staging_folders(tmp_path):
    from vae_dynamics.io import atomic_dir

    target = tmp_path / "evaluation"
    with atomic_dir(target) as first, atomic_dir(target) as second:  # e.g. two Snakemake jobs
        assert first != second
        (first / "a.txt").write_text("first")
        (second / "b.txt").write_text("second")
    assert [p.name for p in target.iterdir()] == ["a.txt"]  # the last to finish wins, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evaluation"]


def test_atomic_path_honours_the_umask_without_changing_it(tmp_path):
    import os
    import threading

    from vae_dynamics.io import write_text

    old = os.umask(0o027)
    try:
        seen = []
        threads = [
            threading.Thread(target=lambda i=i: write_text(str(i), tmp_path / f"f{i}.txt")) for i in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
            seen.append(os.umask(0o027))  # read back: nobody toggled it
        assert set(seen) == {0o027}
        assert {oct((tmp_path / f"f{i}.txt").stat().st_mode & 0o777) for i in range(8)} == {oct(0o640)}
    finally:
        os.umask(old)


def test_loss_curves_show_training_terms_per_step_beside_the_epoch_means(tmp_path, monkeypatch):
    import pandas as pd

    from vae_dynamics.viz import curves

    logs = tmp_path / "logs" / "version_0"
    logs.mkdir(parents=True)
    rows = [
        {"epoch": e, "step": 3 * e + k, "train_step/loss": 10.0 - (3 * e + k)}
        for e in range(2)
        for k in range(3)
    ]
    rows += [
        {"epoch": e, "step": 3 * e + 2, "train/loss": 9.0 - 3 * e, "val/loss": 9.5 - 3 * e} for e in range(2)
    ]
    pd.DataFrame(rows).to_csv(logs / "metrics.csv", index=False)
    per_epoch = curves.read_metrics(tmp_path / "logs")
    assert per_epoch["train/loss"].tolist() == [9.0, 6.0]
    assert not [c for c in per_epoch.columns if c.startswith("train_step/")]
    steps = curves.read_step_metrics(tmp_path / "logs")
    assert steps["step"].tolist() == list(range(6)) and steps["train_step/loss"].tolist() == [
        10,
        9,
        8,
        7,
        6,
        5,
    ]
    drawn = {}
    real_plot = plt.Axes.plot

    def spy(ax, x, y, *args, **kwargs):
        drawn[kwargs.get("label")] = (list(x), list(y))
        return real_plot(ax, x, y, *args, **kwargs)

    monkeypatch.setattr(plt.Axes, "plot", spy)
    curves.plot_loss_curves(tmp_path / "logs", tmp_path / "curves.png")
    x, y = drawn["train (per step)"]
    assert y == [10, 9, 8, 7, 6, 5] and x == pytest.approx([0, 1 / 3, 2 / 3, 1, 4 / 3, 5 / 3])
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_an_image_grid_is_one_mosaic_with_every_tile_in_its_place(tmp_path):
    import matplotlib.pyplot as plt

    from vae_dynamics.viz.grid import coloured, mosaic, save_image_grid

    ramp = np.linspace(0.0, 2.0, 12).reshape(3, 4)
    grey = coloured(ramp, "gray", 0.0, 1.0)  # values above vmax saturate
    assert grey.shape == (3, 4, 3) and np.allclose(grey[0, 0], 0) and np.allclose(grey[-1, -1], 1)
    assert np.allclose(grey[..., 0], np.clip(ramp, 0, 1), atol=1 / 255)  # grey levels = scaled values
    tiles = [[np.full((3, 4, 3), r * 0.1 + c * 0.01) for c in range(5)] for r in range(2)]
    image = mosaic(tiles, gap=2)
    assert image.shape == (2 * 3 + 2, 5 * 4 + 4 * 2, 3)
    assert np.allclose(image[3 + 2 : 3 + 2 + 3, 2 * 6 : 2 * 6 + 4], 0.12)  # row 1, column 2
    assert np.allclose(image[3:5], 1.0)  # white gap between the rows
    with pytest.raises(ValueError, match=r"tile \(1, 4\) is \(2, 4\)"):
        mosaic([row[:] for row in tiles[:1]] + [[*tiles[1][:4], np.zeros((2, 4, 3))]])
    with pytest.raises(ValueError, match="need 2 row and 5 column labels"):
        save_image_grid(tiles, tmp_path / "bad.png", ["a"], list("abcde"))
    save_image_grid(tiles, tmp_path / "grid.png", ["r0", "r1"], list("abcde"), title="t")
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not plt.get_fignums()
