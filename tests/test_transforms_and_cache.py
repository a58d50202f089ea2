"""Preprocessing contract, orientation, the persistent cache (hits, invalidation, atomicity), data module."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose, Transform

from vae_dynamics.config import config_path, load_config
from vae_dynamics.data.cache import (
    build_cache,
    cache_dir_for,
    make_dataset,
    prepare_cache_dir,
    ram_share,
    subject_records,
)
from vae_dynamics.data.datamodule import BraTSDataModule
from vae_dynamics.data.transforms import build_transforms, transforms_from_config

DATA_CFG = load_config(config_path("exp2_tcvae_sbd")).data


def test_transform_output_meets_the_contract(demo_splits):
    record = subject_records(demo_splits / "train.csv")[0]
    out = transforms_from_config(DATA_CFG)(record)
    image, seg = out["image"], out["seg"]
    assert type(image) is torch.Tensor and type(seg) is torch.Tensor  # track_meta=False: plain tensors
    assert image.shape == (4, 128, 128, 128) and image.dtype == torch.float32
    assert seg.shape == (1, 128, 128, 128) and seg.dtype == torch.uint8
    assert image.min() >= 0 and image.max() <= 1 and image.max() == 1
    assert set(torch.unique(seg).tolist()) <= {0, 1, 2, 3} and (seg == 3).any()
    corners = image[:, :4, :4, :4]
    assert torch.all(corners == 0)  # background exactly 0
    assert set(out) == {"subject_id", "image", "seg"}


def test_left_marker_lands_on_the_left_after_ras_orientation(demo_copy, tmp_path):
    sid = "BraTS-MEN-00000-000"
    path = demo_copy / sid / f"{sid}-t1c.nii.gz"
    img = nib.load(path)
    data = np.asarray(img.dataobj).copy()
    # a bright cube 40 mm to the subject's LEFT of the brain centre (world x < 0 in RAS)
    ijk_centre = np.array(data.shape) // 2
    world_centre = img.affine[:3, :3] @ ijk_centre + img.affine[:3, 3]
    left = np.linalg.solve(img.affine[:3, :3], world_centre + np.array([-40.0, 0, 0]) - img.affine[:3, 3])
    i, j, k = np.round(left).astype(int)
    data[:] = 0  # t1c holds only the marker; the other modalities still show the brain
    data[i - 3 : i + 4, j - 3 : j + 4, k - 3 : k + 4] = 1000
    nib.save(nib.Nifti1Image(data, img.affine), path)
    record = {
        "subject_id": sid,
        **{k: str(demo_copy / sid / f"{sid}-{k}.nii.gz") for k in DATA_CFG.modalities + ["seg"]},
    }
    out = build_transforms(DATA_CFG.modalities, [128] * 3, [1.0] * 3)(record)
    t1c = out["image"][DATA_CFG.modalities.index("t1c")]
    t1n = out["image"][DATA_CFG.modalities.index("t1n")]
    x_marker = torch.nonzero(t1c > 0.5)[:, 0].float().mean().item()
    brain_x = torch.nonzero(t1n > 0)[:, 0].float()
    # RAS array: axis 0 runs from Left (index 0) to Right; 40 mm at 1.5 mm/voxel ≈ 27 voxels left
    centre = (brain_x.min() + brain_x.max()).item() / 2
    assert centre - 35 < x_marker < centre - 18


def test_second_pass_is_served_from_disk_without_transforms(demo_splits, tmp_path):
    records = subject_records(demo_splits / "val.csv")
    cache_dir = prepare_cache_dir(tmp_path, DATA_CFG)
    first = make_dataset(records, cache_dir, transforms_from_config(DATA_CFG))[0]
    assert len(list(cache_dir.glob("*.pt"))) == 1

    class Boom(Transform):  # a deterministic MONAI transform: run only on a cache miss
        def __call__(self, data):
            raise AssertionError("transforms ran on a cache hit")

    second = make_dataset(records, cache_dir, Compose([Boom()]))[0]
    assert torch.equal(first["image"], second["image"]) and torch.equal(first["seg"], second["seg"])


def test_corrupt_cache_file_is_recomputed(demo_splits, tmp_path):
    records = subject_records(demo_splits / "val.csv")
    cache_dir = prepare_cache_dir(tmp_path, DATA_CFG)
    transform = transforms_from_config(DATA_CFG)
    good = make_dataset(records, cache_dir, transform)[0]
    (cache_file,) = cache_dir.glob("*.pt")
    cache_file.write_bytes(cache_file.read_bytes()[:1000])  # as if killed mid-write by an older writer
    with pytest.warns(UserWarning, match="unreadable"):
        again = make_dataset(records, cache_dir, transform)[0]
    assert torch.equal(good["image"], again["image"])
    assert not list(cache_dir.glob(".*tmp*"))


def test_cache_stores_float16_within_the_rounding_bound(demo_splits, tmp_path):
    records = subject_records(demo_splits / "val.csv")
    transform = transforms_from_config(DATA_CFG)
    exact = transform(dict(records[0]))["image"]  # float32, straight from the transforms
    cached = make_dataset(records, prepare_cache_dir(tmp_path, DATA_CFG), transform)[0]["image"]
    assert exact.dtype == torch.float32 and cached.dtype == torch.float16
    assert float(exact.min()) >= 0.0 and float(exact.max()) <= 1.0
    # round to nearest: |fp16(x) - x| <= half a unit in the last place, 2^-12 just below 1
    assert float((cached.float() - exact).abs().max()) <= 2.0**-12
    assert torch.equal(cached == 0, exact == 0)  # the background stays exactly 0
    (cache_file,) = prepare_cache_dir(tmp_path, DATA_CFG).glob("*.pt")
    assert cache_file.stat().st_size < 0.6 * (exact.numel() * 4)  # about half of float32
    assert (
        json.loads((prepare_cache_dir(tmp_path, DATA_CFG) / "contract.json").read_text())["dtypes"]["image"]
        == "float16"
    )


def test_a_failed_cache_write_leaves_no_file(demo_splits, tmp_path, monkeypatch):
    records = subject_records(demo_splits / "val.csv")
    cache_dir = prepare_cache_dir(tmp_path, DATA_CFG)

    def full_disk(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        make_dataset(records, cache_dir, transforms_from_config(DATA_CFG))[0]
    assert sorted(p.name for p in cache_dir.iterdir()) == ["contract.json"]


def test_changed_preprocessing_parameter_gives_a_new_cache_directory(tmp_path):
    base = prepare_cache_dir(tmp_path, DATA_CFG)
    assert cache_dir_for(tmp_path, DATA_CFG.model_copy()) == base
    for key, value in (("fov_mm", 200.0), ("intensity_percentile", 99.0), ("spacing", [1.0, 1.0, 1.5])):
        changed = cache_dir_for(tmp_path, DATA_CFG.model_copy(update={key: value}))
        assert changed != base, key
    assert (base / "contract.json").is_file()
    # keys that do not change the tensors do not change the directory
    assert cache_dir_for(tmp_path, DATA_CFG.model_copy(update={"batch_size": 1, "num_workers": 0})) == base


def test_build_cache_writes_a_manifest(demo_splits, tmp_path):
    manifest = build_cache(
        DATA_CFG,
        [demo_splits / "train.csv", demo_splits / "val.csv"],
        tmp_path,
        tmp_path / "manifest.json",
        workers=2,
        progress=False,
    )
    assert manifest["n_subjects"] == 5
    for row in manifest["subjects"]:
        assert row["image_shape"] == [4, 128, 128, 128] and row["seg_shape"] == [1, 128, 128, 128]
        assert 3 in row["seg_labels"] and all(0 < m < 1 for m in row["channel_mean"])
        cached = torch.load(row["cache_file"], weights_only=True)
        assert row["image_dtype"] == "float16"
        mean = cached["image"].float().mean(dim=(1, 2, 3))
        assert torch.allclose(mean, torch.tensor(row["channel_mean"]))
    assert (tmp_path / "manifest.json").is_file()


def test_ram_share_is_capped_by_available_memory(caplog):
    assert ram_share(10, 0.5, item_bytes=1) == 5
    assert ram_share(10, 0.0, item_bytes=1) == 0
    with caplog.at_level("WARNING"):
        assert ram_share(1000, 1.0, item_bytes=10**12) == 0
    assert "holding 0 subjects" in caplog.text


def test_datamodule_batches(demo_splits, tmp_path):
    cfg = DATA_CFG.model_copy(
        update={"batch_size": 2, "num_workers": 0, "cache_rate": 0.5, "cache_dir": str(tmp_path)}
    )
    dm = BraTSDataModule(cfg, demo_splits, seed=0)
    dm.setup("fit")
    assert dm.n_train == 4 and len(dm.train_dataset.held) == 2
    batch = next(iter(dm.train_dataloader()))
    assert (
        batch["image"].shape == (2, 4, 128, 128, 128) and batch["image"].dtype == torch.float16
    )  # as cached
    assert dm.on_after_batch_transfer(batch, 0)["image"].dtype == torch.float32  # what the model sees
    assert batch["seg"].shape == (2, 1, 128, 128, 128)
    assert len(batch["subject_id"]) == 2
    assert len(dm.train_dataloader()) == 2 and len(dm.val_dataloader()) == 1


def test_the_cache_path_getter_creates_nothing(tmp_path):
    path = cache_dir_for(tmp_path / "cache", DATA_CFG)
    assert not (tmp_path / "cache").exists()
    assert prepare_cache_dir(tmp_path / "cache", DATA_CFG) == path and (path / "contract.json").is_file()
