"""Demo dataset: BraTS-MEN geometry, file names, labels, contrasts, factors, determinism."""

import subprocess
import sys

import nibabel as nib
import numpy as np
import pandas as pd

from vae_dynamics.cli import main as cli_main
from vae_dynamics.data import FILE_KEYS
from vae_dynamics.data.demo import make_subject


def test_demo_subjects_are_in_brats_men_format(demo_root):
    subjects = sorted(p for p in demo_root.iterdir() if p.is_dir())
    assert [p.name for p in subjects] == [f"BraTS-MEN-{i:05d}-000" for i in range(5)]
    for subject in subjects:
        files = sorted(f.name for f in subject.iterdir())
        assert files == sorted(f"{subject.name}-{k}.nii.gz" for k in FILE_KEYS)
        seg_img = nib.load(subject / f"{subject.name}-seg.nii.gz")
        assert seg_img.shape == (240, 240, 155)
        assert nib.aff2axcodes(seg_img.affine) == ("L", "P", "S")
        assert np.allclose(np.abs(np.diag(seg_img.affine)[:3]), 1.0)
        seg = np.asarray(seg_img.dataobj)
        assert set(np.unique(seg)) <= {0, 1, 2, 3} and (seg == 3).sum() > 100  # every subject has ET
        brain = {}
        for mod in ("t1c", "t1n", "t2f", "t2w"):
            img = nib.load(subject / f"{subject.name}-{mod}.nii.gz")
            assert img.shape == (240, 240, 155) and np.allclose(img.affine, seg_img.affine)
            brain[mod] = np.asarray(img.dataobj).astype(np.float32)
            assert brain[mod].min() >= 0 and (brain[mod] > 0).mean() > 0.1
        # plausible contrasts: enhancing tumour brighter than brain on t1c, relative to t1n
        et = seg == 3
        tissue = (brain["t1c"] > 0) & (seg == 0)
        ratio_t1c = brain["t1c"][et].mean() / brain["t1c"][tissue].mean()
        ratio_t1n = brain["t1n"][et].mean() / brain["t1n"][tissue].mean()
        assert ratio_t1c > 1.3 * ratio_t1n


def test_factors_csv_describes_every_subject(demo_root):
    factors = pd.read_csv(demo_root / "factors.csv")
    assert list(factors["subject_id"]) == [f"BraTS-MEN-{i:05d}-000" for i in range(5)]
    for column in (
        "tumour_x_mm",
        "tumour_y_mm",
        "tumour_z_mm",
        "tumour_radius_mm",
        "enhancement",
        "has_edema",
    ):
        assert column in factors and factors[column].notna().all()
    assert factors["tumour_radius_mm"].between(8, 20).all()
    # the ET voxel count written matches the seg on disk
    seg = np.asarray(nib.load(demo_root / "BraTS-MEN-00001-000" / "BraTS-MEN-00001-000-seg.nii.gz").dataobj)
    assert factors.loc[1, "et_voxels"] == int((seg == 3).sum())
    # has_edema agrees with the presence of label 2
    assert bool(factors.loc[1, "has_edema"]) == bool((seg == 2).any())


def test_demo_is_deterministic_for_a_seed_and_differs_across_seeds():
    a, _, fa = make_subject(2, seed=7)
    b, _, fb = make_subject(2, seed=7)
    c, _, _ = make_subject(2, seed=8)
    assert fa == fb and all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["t1c"], c["t1c"])


def test_demo_cli_writes_subjects(tmp_path):
    cli_main(["demo", "--out", str(tmp_path / "d"), "--n-subjects", "1", "--seed", "3"])
    assert (tmp_path / "d" / "BraTS-MEN-00000-000" / "BraTS-MEN-00000-000-t2f.nii.gz").is_file()
    assert len(pd.read_csv(tmp_path / "d" / "factors.csv")) == 1
    assert not list((tmp_path / "d").glob(".*tmp"))


def test_worker_pool_after_multithreaded_torch_does_not_hang(tmp_path):
    """A pool forked after PyTorch ran OpenMP code (as in a test session or a notebook) must not deadlock."""
    code = (
        "import torch; x = torch.rand(1500, 1500); (x @ x).sum(); "
        "torch.nn.functional.avg_pool3d(torch.rand(1, 4, 64, 64, 64), 2)\n"
        "from vae_dynamics.data.demo import generate\n"
        f"generate({str(tmp_path / 'demo')!r}, 2, seed=0, workers=2)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list((tmp_path / "demo").glob("BraTS-MEN-*"))) == 2


def test_the_demo_never_writes_into_a_folder_of_someone_elses_subjects(tmp_path):
    import pytest

    from vae_dynamics.data.demo import generate

    real = tmp_path / "BraTS_Men_Train" / "BraTS-MEN-00000-000"
    real.mkdir(parents=True)
    (real / "BraTS-MEN-00000-000-t1c.nii.gz").write_text("a patient")
    with pytest.raises(FileExistsError, match=r"BraTS_Men_Train holds files .*BraTS-MEN-00000-000"):
        generate(tmp_path / "BraTS_Men_Train", 1)
    assert (real / "BraTS-MEN-00000-000-t1c.nii.gz").read_text() == "a patient"


def test_an_interrupted_demo_generation_is_written_again(tmp_path):
    from vae_dynamics.data.demo import generate

    out = tmp_path / "demo"
    generate(out, 1)
    (out / "factors.csv").unlink()  # as Snakemake leaves a failed or changed generation
    generate(out, 2)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        "BraTS-MEN-00000-000",
        "BraTS-MEN-00001-000",
    ]
