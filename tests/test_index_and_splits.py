"""index_subjects rejects each kind of broken subject with one clear reason; splits are reproducible."""

import gzip
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from vae_dynamics.data.index import NoValidSubjectsError, index_subjects
from vae_dynamics.data.splits import make_splits, split_subjects


def _path(root, sid, key):
    return root / sid / f"{sid}-{key}.nii.gz"


def _rewrite(path, fn):
    img = nib.load(path)
    data, affine = fn(np.asarray(img.dataobj).copy(), img.affine.copy())
    nib.save(nib.Nifti1Image(data, affine), path)


def test_index_accepts_good_and_rejects_each_broken_subject(demo_copy, tmp_path):
    root = demo_copy
    ids = [f"BraTS-MEN-{i:05d}-000" for i in range(5)]
    _path(root, ids[0], "t2w").unlink()  # missing file
    raw = _path(root, ids[1], "t1n").read_bytes()  # truncated gzip
    _path(root, ids[1], "t1n").write_bytes(raw[: len(raw) // 2])
    _rewrite(
        _path(root, ids[2], "seg"), lambda d, a: (np.where(d == 3, 7, d).astype(np.uint8), a)
    )  # bad label
    _rewrite(_path(root, ids[3], "t2f"), lambda d, a: (d.astype(np.float32) * np.float32(np.nan), a))  # NaN
    (root / "notes.txt").write_text("stray file")
    nested = root / "batch2"
    nested.mkdir()
    shutil.move(str(root / ids[4]), nested / ids[4])  # nested one level: still found

    subjects, rejected = index_subjects(root, tmp_path / "index", workers=2, progress=False)
    assert list(subjects["subject_id"]) == [ids[4]]
    assert subjects.loc[0, "t1c"].endswith(f"batch2/{ids[4]}/{ids[4]}-t1c.nii.gz")
    reasons = dict(zip(rejected["subject_id"], rejected["reason"]))
    files = dict(zip(rejected["subject_id"], rejected["file"]))
    assert "missing file" in reasons[ids[0]] and files[ids[0]].endswith("-t2w.nii.gz")
    assert "unreadable" in reasons[ids[1]] and files[ids[1]].endswith("-t1n.nii.gz")
    assert "seg labels [7]" in reasons[ids[2]]
    assert "non-finite" in reasons[ids[3]] and files[ids[3]].endswith("-t2f.nii.gz")
    on_disk = pd.read_csv(tmp_path / "index" / "rejected.csv")
    assert list(on_disk.columns) == ["subject_id", "file", "reason"] and len(on_disk) == 4
    assert list(pd.read_csv(tmp_path / "index" / "subjects.csv").columns) == [
        "subject_id",
        "t1c",
        "t1n",
        "t2f",
        "t2w",
        "seg",
    ]


def test_index_rejects_shape_and_affine_mismatch(demo_copy, tmp_path):
    sid0, sid1 = "BraTS-MEN-00000-000", "BraTS-MEN-00001-000"
    _rewrite(_path(demo_copy, sid0, "t1c"), lambda d, a: (d[:-1], a))
    shifted = lambda d, a: (d, a + np.array([[0, 0, 0, 5.0]] * 3 + [[0, 0, 0, 0]]))  # noqa: E731
    _rewrite(_path(demo_copy, sid1, "seg"), shifted)
    _, rejected = index_subjects(demo_copy, tmp_path, progress=False)
    reasons = dict(zip(rejected["subject_id"], rejected["reason"]))
    assert "shape" in reasons[sid0] and "affine" in reasons[sid1]


def test_index_fails_clearly_without_valid_subjects(tmp_path):
    with pytest.raises(NoValidSubjectsError, match="does not exist"):
        index_subjects(tmp_path / "nope", tmp_path / "out", progress=False)
    (tmp_path / "root" / "BraTS-MEN-00009-000").mkdir(parents=True)
    with pytest.raises(NoValidSubjectsError, match="BraTS-MEN-00009-000.*missing file"):
        index_subjects(tmp_path / "root", tmp_path / "out", progress=False)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vae_dynamics.cli",
            "index",
            "--root",
            str(tmp_path / "nope"),
            "--out-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "does not exist" in result.stderr
    assert result.stderr.startswith("index: ") and "Traceback" not in result.stderr


def test_index_judges_shape_size_and_affine_from_the_header_and_subject_names_exactly(demo_copy, tmp_path):
    """A header claiming 2^29 voxels is rejected before its data is read (reading it killed a pool
    worker and the whole index); a singular affine is rejected (it aborted the cache build later); a
    folder whose name only matches up to a trailing newline is not a subject."""
    sid0, sid1, sid2 = "BraTS-MEN-00000-000", "BraTS-MEN-00001-000", "BraTS-MEN-00002-000"
    huge = nib.Nifti1Header()
    huge.set_data_shape((2048, 2048, 128))
    huge.set_data_dtype(np.float32)
    _path(demo_copy, sid0, "t2w").unlink()
    with open(demo_copy / sid0 / f"{sid0}-t2w.nii", "wb") as f:  # the header and 1 kB of data
        f.write(huge.binaryblock + b"\0" * (352 - len(huge.binaryblock)) + b"\0" * 1024)
    for key in ("t1c", "t1n", "t2f", "t2w", "seg"):  # zero voxel extent along k, in the sform alone
        img = nib.load(_path(demo_copy, sid1, key))
        flat = nib.Nifti1Image(np.asarray(img.dataobj), None)
        flat.header.set_sform(img.affine @ np.diag([1.0, 1.0, 0.0, 1.0]), code=1)
        flat.header.set_qform(None, code=0)
        nib.save(flat, _path(demo_copy, sid1, key))
    newline = demo_copy / f"{sid2}\n"
    shutil.copytree(demo_copy / sid2, newline)
    subjects, rejected = index_subjects(demo_copy, tmp_path, workers=2, progress=False)
    reasons = dict(zip(rejected["subject_id"], rejected["reason"]))
    assert "more than 268435456 voxels" in reasons[sid0], reasons
    assert "singular affine" in reasons[sid1], reasons
    assert set(reasons) == {sid0, sid1} and sid2 in set(subjects["subject_id"])


def test_gzip_check_catches_corrupt_data_not_only_headers(demo_copy, tmp_path):
    path = _path(demo_copy, "BraTS-MEN-00000-000", "t1c")
    data = bytearray(gzip.decompress(path.read_bytes()))
    path.write_bytes(gzip.compress(bytes(data[: len(data) - 1000])))  # valid gzip, short image data
    _, rejected = index_subjects(demo_copy, tmp_path, progress=False)
    assert "BraTS-MEN-00000-000" in set(rejected["subject_id"])


def test_splits_are_reproducible_and_independent_of_listing_order(tmp_path):
    subjects = pd.DataFrame({"subject_id": [f"S{i:03d}" for i in range(20)], "t1c": "x"})
    train_a, val_a = split_subjects(subjects, 0.1, seed=42)
    train_b, val_b = split_subjects(subjects.sample(frac=1.0, random_state=3), 0.1, seed=42)
    assert list(val_a["subject_id"]) == list(val_b["subject_id"]) and len(val_a) == 2
    assert set(train_a["subject_id"]) | set(val_a["subject_id"]) == set(subjects["subject_id"])
    assert not set(train_a["subject_id"]) & set(val_a["subject_id"])
    _, val_c = split_subjects(subjects, 0.1, seed=43)
    assert list(val_c["subject_id"]) != list(val_a["subject_id"])
    _, val_small = split_subjects(subjects.head(3), 0.1, seed=0)
    assert len(val_small) == 1  # at least one validation subject


def test_make_splits_writes_csvs(tmp_path):
    pd.DataFrame({"subject_id": [f"S{i}" for i in range(10)], "t1c": "x"}).to_csv(
        tmp_path / "s.csv", index=False
    )
    train, val = make_splits(tmp_path / "s.csv", tmp_path / "out", 0.2, seed=1)
    assert pd.read_csv(tmp_path / "out" / "train.csv")["subject_id"].tolist() == train["subject_id"].tolist()
    assert len(pd.read_csv(tmp_path / "out" / "val.csv")) == 2


@pytest.mark.parametrize("bad", ["../../x", "a/b", ".hidden", "sub ject", "BraTS-MEN-00000-000"])
def test_user_splits_with_ids_that_cannot_be_file_names_are_refused_before_a_run_folder_exists(tmp_path, bad):
    """A subject id from a user-supplied splits CSV becomes a file name (panels, snapshots): `../../x`
    wrote outside the run directory."""
    from vae_dynamics.config import config_path, load_config
    from vae_dynamics.training.run import train

    splits = tmp_path / "splits"
    splits.mkdir()
    pd.DataFrame({"subject_id": ["BraTS-MEN-00000-000", bad], "t1c": ["a", "b"]}).to_csv(
        splits / "train.csv", index=False
    )
    pd.DataFrame({"subject_id": ["BraTS-MEN-00001-000"], "t1c": ["c"]}).to_csv(
        splits / "val.csv", index=False
    )
    cfg = load_config(config_path("exp2"), {"logging.save_dir": str(tmp_path / "runs")})
    message = "duplicate subject id" if bad.startswith("BraTS") else "cannot be file names"
    with pytest.raises(ValueError, match=rf"train\.csv: .*{message}"):
        train(cfg, tmp_path / "run", splits_dir=splits)
    assert not (tmp_path / "run").exists()


def test_a_sample_sheet_indexes_subjects_not_named_like_brats(demo_copy, tmp_path):
    """data_sheet / `vae-dynamics index --sheet`: any names, paths relative to the sheet, extra columns
    allowed; the same checks as folders, each failure named by subject and file; seg required to train."""
    from vae_dynamics.data import FILE_KEYS
    from vae_dynamics.data.index import SheetError

    rows = []
    for i, subject in enumerate(sorted(p for p in demo_copy.iterdir() if p.is_dir())):
        rows.append(
            {
                "subject_id": f"site_a.{i}",
                "scanner": "x",
                **{k: f"{demo_copy.name}/{subject.name}/{subject.name}-{k}.nii.gz" for k in FILE_KEYS},
            }
        )
    rows[1]["seg"] = ""  # training needs seg
    rows[2]["t2w"] = "nowhere/t2w.nii.gz"
    rows[3]["subject_id"] = "../escape"
    pd.DataFrame(rows).to_csv(tmp_path / "subjects.tsv", sep="\t", index=False)
    subjects, rejected = index_subjects(
        None, tmp_path / "out", progress=False, sheet=tmp_path / "subjects.tsv"
    )
    assert list(subjects["subject_id"]) == ["site_a.0", "site_a.4"]
    assert list(subjects.columns) == ["subject_id", *FILE_KEYS]
    assert subjects["t1c"].map(lambda p: p.startswith("/") and p.endswith("-t1c.nii.gz")).all()
    why = rejected.set_index("subject_id")["reason"]
    assert why["site_a.1"].startswith("missing file (expected a path in the seg column")
    assert "nowhere/t2w.nii.gz" in why["site_a.2"]
    assert "must be letters, digits" in why["../escape"]
    assert (tmp_path / "out" / "rejected.csv").is_file()
    pd.DataFrame(rows).drop(columns="t1n").to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(SheetError, match="no column t1n"):
        index_subjects(None, tmp_path / "out2", progress=False, sheet=tmp_path / "bad.csv")


def test_a_gzip_stream_damaged_mid_file_is_rejected_by_its_crc(demo_copy, tmp_path):
    """64 zeroed bytes inside the compressed stream: nibabel reads the voxels without reaching the gzip
    trailer (704,657 wrong voxels were accepted); the CRC check at the end of the stream catches it."""
    sid = "BraTS-MEN-00000-000"
    path = _path(demo_copy, sid, "t1c")
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = bytes(64)
    path.write_bytes(bytes(raw))
    _, rejected = index_subjects(demo_copy, tmp_path, progress=False)
    reasons = dict(zip(rejected["subject_id"], rejected["reason"]))
    assert "corrupt gzip stream" in reasons[sid] and set(rejected["file"]) == {path.name}


def _subject(root, sid, volume, zooms=(1.0, 1.0, 1.0), dtype=np.float32):
    """A subject folder whose four modalities are `volume` (seg all background)."""
    folder = root / sid
    folder.mkdir(parents=True)
    affine = np.diag([*zooms, 1.0])
    for key in ("t1c", "t1n", "t2f", "t2w"):
        nib.save(nib.Nifti1Image(np.asarray(volume, dtype=dtype), affine), _path(root, sid, key))
    nib.save(nib.Nifti1Image(np.zeros(np.shape(volume), np.uint8), affine), _path(root, sid, "seg"))


def test_scans_that_are_empty_tiny_huge_once_resampled_or_beyond_float32_are_rejected_by_name(
    demo_copy, tmp_path, caplog
):
    shape = (64, 64, 64)
    cases = {
        "BraTS-MEN-00100-000": (np.zeros(shape), {}, "no positive voxel"),
        "BraTS-MEN-00101-000": (-np.ones(shape), {}, "no positive voxel"),
        "BraTS-MEN-00102-000": (np.ones((2, 2, 2)), {}, "smaller than 32 mm"),
        "BraTS-MEN-00103-000": (np.ones((100, 100, 100)), {"zooms": (10.0, 10.0, 10.0)}, "resampled"),
        "BraTS-MEN-00104-000": (np.full(shape, 1e300), {"dtype": np.float64}, "non-finite image values as"),
    }
    for sid, (volume, kwargs, _) in cases.items():
        _subject(demo_copy, sid, volume, **kwargs)
    _subject(demo_copy, "BraTS-MEN-00105-000", np.full(shape, 5.0))  # constant: kept, with a warning
    with caplog.at_level("WARNING"):
        subjects, rejected = index_subjects(demo_copy, tmp_path, progress=False)
    reasons = dict(zip(rejected["subject_id"], rejected["reason"]))
    for sid, (_, _, why) in cases.items():
        assert why in reasons[sid], (sid, reasons.get(sid))
    assert "BraTS-MEN-00105-000" in set(subjects["subject_id"])
    assert "BraTS-MEN-00105-000-t1c.nii.gz is constant" in caplog.text


def test_subject_ids_stay_as_written_through_index_and_splits(demo_copy, tmp_path):
    """Hospital ids such as 007 or 000123, and 1e3 or NA, must not become 7.0, 1000.0 or empty."""
    from vae_dynamics.data import FILE_KEYS

    ids = ["007", "1e3", "NA", "000123"]
    subjects = sorted(p for p in demo_copy.iterdir() if p.is_dir())[: len(ids)]
    rows = [
        {"subject_id": sid, **{k: str(_path(demo_copy, s.name, k)) for k in FILE_KEYS}}
        for sid, s in zip(ids, subjects)
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "sheet.csv", index=False)
    index_subjects(None, tmp_path / "index", progress=False, sheet=tmp_path / "sheet.csv")
    train, val = make_splits(tmp_path / "index" / "subjects.csv", tmp_path / "splits", 0.25, seed=0)
    written = [
        line.split(",")[0]
        for name in ("train.csv", "val.csv")
        for line in (tmp_path / "splits" / name).read_text().splitlines()[1:]
    ]
    assert sorted(written) == sorted(ids) and sorted([*train["subject_id"], *val["subject_id"]]) == sorted(
        ids
    )


@pytest.mark.parametrize("bad", ["", "ok..", "../x"])
def test_one_subject_id_rule_for_sheets_and_splits(bad):
    from vae_dynamics.data import subject_id_problem
    from vae_dynamics.data.splits import check_subject_ids

    assert subject_id_problem(bad) is not None
    with pytest.raises(ValueError, match="cannot be file names"):
        check_subject_ids(pd.DataFrame({"subject_id": ["A1", bad]}), "train.csv")


@pytest.mark.parametrize("column", ["mu_0", "logvar_12", "checkpoint", "run_identity"])
def test_a_sheet_column_that_collides_with_the_encodings_columns_is_refused(tmp_path, column):
    from vae_dynamics.data.index import SheetError, find_scans

    pd.DataFrame(
        {"subject_id": ["a"], "t1c": ["x"], "t1n": ["x"], "t2f": ["x"], "t2w": ["x"], column: [1]}
    ).to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(SheetError, match=f"column\\(s\\) {column} would collide"):
        find_scans(tmp_path / "s.csv")
