"""Figures are written atomically and closed even when saving fails."""

from __future__ import annotations

import matplotlib.pyplot as plt
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
