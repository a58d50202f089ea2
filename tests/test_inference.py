"""A trained run as a tool (vae_dynamics/inference.py): new scans from a folder or a sample sheet, without
seg, in another orientation and spacing; reconstructions in the scan's own space; refusals that name the
subject, the file or the key. Real NIfTI files from the demo generator, a real 1-epoch Exp2 run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, small_exp_config

from vae_dynamics.data import MODALITIES
from vae_dynamics.data.demo import generate
from vae_dynamics.evaluation.new_scans import write_encoding
from vae_dynamics.inference import ContractMismatchError, latent_columns, load_run, native_space

# The same scan stored RAS instead of LPS: the same voxels after Orientation, so μ agrees to 1e-4. Stored
# at 1.25 mm as well, it is resampled 1 -> 1.25 -> 1 mm (trilinear twice: a smoother image), and μ moves:
# measured rms |Δμ| 0.036 (max 0.11 over 128 dimensions) on this 1-epoch run, against 0.17 between the
# two new subjects. The tolerance: rms 0.06, and less than half the distance to the other subject.
RESAMPLED_MU_RMS = 0.06


@pytest.fixture(scope="module")
def trained(demo_splits, tmp_path_factory):
    """A 1-epoch Exp2 run (4 subjects) and its experiment folder with train_summary.json, as the workflow
    writes it."""
    from vae_dynamics.training.run import train

    tmp = tmp_path_factory.mktemp("inference")
    cfg = small_exp_config("exp2_tcvae_sbd", tmp, **{"train.max_epochs": 1})
    summary = train(cfg, tmp / "runs" / "exp2", splits_dir=demo_splits)
    results = tmp / "results" / "exp2"
    results.mkdir(parents=True)
    summary["run_dir"] = "../../runs/exp2"  # relative to the summary, as workflow.train_step writes it
    (results / "train_summary.json").write_text(json.dumps(summary))
    return tmp, results


@pytest.fixture(scope="module")
def new_scans(tmp_path_factory) -> Path:
    """Two demo subjects of another seed: never indexed, split or trained on."""
    out = tmp_path_factory.mktemp("new") / "scans"
    generate(out, 2, seed=7, workers=1)
    return out


def _sheet(new_scans: Path, folder: Path, with_seg: bool = False) -> Path:
    """A sheet with non-BraTS names, paths relative to the sheet, a visit column, no seg."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, subject in enumerate(sorted(p for p in new_scans.iterdir() if p.is_dir())):
        mine = folder / f"patient{i}"
        mine.mkdir()
        row = {"subject_id": f"patient_{i}", "visit": f"baseline{i}"}
        for key in (*MODALITIES, "seg") if with_seg else MODALITIES:
            shutil.copy(subject / f"{subject.name}-{key}.nii.gz", mine / f"{key}.nii.gz")
            row[key] = f"patient{i}/{key}.nii.gz"
        rows.append(row)
    pd.DataFrame(rows).to_csv(folder / "scans.tsv", sep="\t", index=False)
    return folder / "scans.tsv"


def test_new_scans_are_encoded_from_a_folder_and_from_a_seg_free_sheet(trained, new_scans, tmp_path):
    _, results = trained
    run = load_run(results, "cpu")
    assert run.checkpoint == run.run_dir / run.summary["best_checkpoint"] and not run.model.training
    from_folder = run.encode(new_scans)
    assert list(from_folder["subject_id"]) == sorted(p.name for p in new_scans.iterdir() if p.is_dir())
    assert len(latent_columns(from_folder)) == 128 and "logvar_127" in from_folder
    assert from_folder["run_identity"].nunique() == 1 and from_folder["checkpoint"].iloc[0].endswith(".ckpt")

    sheet = _sheet(new_scans, tmp_path / "sheet")
    from_sheet = run.encode(sheet)
    assert list(from_sheet["subject_id"]) == ["patient_0", "patient_1"]
    assert list(from_sheet["visit"]) == ["baseline0", "baseline1"]  # extra columns carried through
    # The demo's tumour lies inside the head: the crop without seg is the same box, so the same μ.
    a, b = (
        from_folder[latent_columns(from_folder)].to_numpy(),
        from_sheet[latent_columns(from_sheet)].to_numpy(),
    )
    np.testing.assert_allclose(a, b, atol=1e-5)
    # ... and the two subjects have different codes (the table is not one row repeated).
    assert np.abs(a[0] - a[1]).max() > 1e-3


def test_the_same_scan_stored_ras_at_1_25_mm_gives_the_same_code(trained, new_scans, tmp_path):
    from scipy.ndimage import zoom

    _, results = trained
    run = load_run(results, "cpu")
    subject = sorted(p for p in new_scans.iterdir() if p.is_dir())[0]
    ras, coarse = tmp_path / "ras", tmp_path / "coarse"
    rows = []
    for folder, spacing in ((ras, 1.0), (coarse, 1.25)):
        folder.mkdir()
        row = {"subject_id": folder.name}
        for key in MODALITIES:
            img = nib.load(subject / f"{subject.name}-{key}.nii.gz")
            assert nib.aff2axcodes(img.affine) == ("L", "P", "S")  # BraTS: LPS-stored
            canonical = nib.as_closest_canonical(img)  # the same voxels, stored RAS
            data, affine = np.asarray(canonical.dataobj, dtype=np.float32), canonical.affine.copy()
            if spacing != 1.0:
                data = zoom(data, 1.0 / spacing, order=1)
                affine[:3, :3] *= spacing
            assert nib.aff2axcodes(affine) == ("R", "A", "S")
            nib.save(nib.Nifti1Image(data, affine), folder / f"{key}.nii.gz")
            row[key] = str(folder / f"{key}.nii.gz")
        rows.append(row)
    codes = run.encode(pd.DataFrame(rows))
    reference = run.encode(new_scans)  # as stored (LPS, 1 mm): this subject and the other new one
    mu = {
        sid: codes.loc[codes.subject_id == sid, latent_columns(codes)].to_numpy()[0]
        for sid in ("ras", "coarse")
    }
    mu_ref, mu_other = reference[latent_columns(reference)].to_numpy()
    np.testing.assert_allclose(mu["ras"], mu_ref, atol=1e-4)
    rms = lambda v: float(np.sqrt(np.mean(np.square(v))))  # noqa: E731
    assert rms(mu["coarse"] - mu_ref) <= RESAMPLED_MU_RMS
    assert rms(mu["coarse"] - mu_ref) < 0.5 * rms(mu_other - mu_ref)  # still nearer itself than the other


def test_a_reconstruction_lies_in_the_input_scans_space(trained, new_scans, tmp_path):
    _, results = trained
    run = load_run(results, "cpu")
    out = tmp_path / "encoded"
    table = write_encoding(run, _sheet(new_scans, tmp_path / "sheet"), out, reconstruct=True, traverse=2)
    assert len(table) == 2 and (out / "latents.csv").is_file() and (out / "rejected.csv").is_file()
    meta = json.loads((out / "encoding.json").read_text())
    assert meta["n_encoded"] == 2 and meta["run_identity"] == run.identity()
    assert meta["preprocessing_contract"]["fov_mm"] == run.cfg.data.fov_mm
    for sid, folder in (("patient_0", "patient0"), ("patient_1", "patient1")):
        for key in MODALITIES:
            recon = nib.load(out / "reconstructions" / sid / f"{sid}-{key}.nii.gz")
            source = nib.load(tmp_path / "sheet" / folder / f"{key}.nii.gz")
            assert recon.shape == source.shape
            np.testing.assert_allclose(recon.affine, source.affine)
            assert np.isfinite(np.asarray(recon.dataobj)).all()
        assert (out / "panels" / f"{sid}.png").is_file() and (out / "traversals" / f"{sid}.png").is_file()


def test_the_inverse_preprocessing_puts_a_bright_cube_back_where_it_was(trained, tmp_path):
    """A synthetic LPS scan (240×240×155, 1 mm) with a bright cube off-centre: through the preprocessing to
    128³ and back with native_space, the cube's centre of mass is within 2 voxels of the input's."""
    _, results = trained
    run = load_run(results, "cpu")
    shape, affine = (240, 240, 155), np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[:3, 3] = [119.5, 102.5, -72.0]
    head = np.zeros(shape, np.float32)
    head[40:200, 30:210, 10:140] = 100.0  # a box "head": the foreground crop
    # The bright cube, off-centre, 1.6 % of the head: above the 99.5th percentile, so not clipped to the head.
    head[130:170, 60:100, 90:130] = 1000.0
    row = {"subject_id": "cube"}
    for key in MODALITIES:
        nib.save(nib.Nifti1Image(head, affine), tmp_path / f"{key}.nii.gz")
        row[key] = str(tmp_path / f"{key}.nii.gz")
    valid, _ = run.scans(pd.DataFrame([row]))
    (batch,) = list(run.preprocessed(valid))
    item = batch[0]
    back = native_space(run, item, item["image"].as_tensor())[0]
    assert back.shape == shape

    def bright_centre(volume: np.ndarray) -> np.ndarray:
        mask = volume > 0.5 * volume.max()
        return np.argwhere(mask).mean(axis=0)

    assert np.abs(bright_centre(back) - bright_centre(head)).max() <= 2.0


def test_a_missing_or_truncated_modality_is_named_and_the_other_scans_are_encoded(
    trained, new_scans, tmp_path
):
    _, results = trained
    run = load_run(results, "cpu")
    sheet = _sheet(new_scans, tmp_path / "sheet")
    table = pd.read_csv(sheet, sep="\t")
    truncated = tmp_path / "sheet" / "patient1" / "t2f.nii.gz"
    truncated.write_bytes(truncated.read_bytes()[:5000])
    table.loc[2] = {
        "subject_id": "patient_2",
        "visit": "x",
        **{k: f"patient0/{k}.nii.gz" for k in MODALITIES},
    }
    table.loc[2, "t1n"] = "patient9/t1n.nii.gz"  # no such file
    table.to_csv(sheet, sep="\t", index=False)
    out = tmp_path / "encoded"
    codes = write_encoding(run, sheet, out)
    assert list(codes["subject_id"]) == ["patient_0"]
    rejected = pd.read_csv(out / "rejected.csv").set_index("subject_id")
    assert (
        rejected.loc["patient_1", "file"] == "t2f.nii.gz"
        and "unreadable" in rejected.loc["patient_1", "reason"]
    )
    assert "patient9/t1n.nii.gz" in rejected.loc["patient_2", "reason"]
    assert rejected.loc["patient_2", "reason"].startswith("missing file")


def test_a_run_of_another_preprocessing_contract_is_refused_naming_the_keys(trained, new_scans, tmp_path):
    tmp, results = trained
    copy = tmp_path / "run"
    shutil.copytree(tmp / "runs" / "exp2", copy)
    record = json.loads((copy / "preprocessing.json").read_text())
    record["fov_mm"], record["preprocessing_version"] = 200.0, 0
    (copy / "preprocessing.json").write_text(json.dumps(record))
    run = load_run(copy / "checkpoints" / "last.ckpt", "cpu")  # a checkpoint is a way in, too
    with pytest.raises(
        ContractMismatchError, match=r"fov_mm: run 200\.0, here 192\.0.*preprocessing_version"
    ):
        run.encode(new_scans)


def test_the_encode_command_writes_the_output_folder(trained, new_scans, tmp_path):
    tmp, results = trained
    out = tmp_path / "out"
    sheet = _sheet(new_scans, tmp_path / "sheet")
    cli = [
        sys.executable,
        "-m",
        "vae_dynamics.cli",
        "encode",
        "--run",
        str(tmp / "runs" / "exp2"),
        "--sheet",
        str(sheet),
        "--out",
        str(out),
        "--reconstruct",
        "--device",
        "cpu",
        "--batch-size",
        "2",
    ]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "2 scans encoded, 0 rejected" in done.stdout and "encoded 2/2 scans" in done.stdout
    assert sorted(p.name for p in (out / "reconstructions").iterdir()) == ["patient_0", "patient_1"]
    both = subprocess.run([*cli[:6], "--images", str(new_scans), *cli[6:]], capture_output=True, text=True)
    assert both.returncode == 1 and "one of --images DIR" in both.stderr


@pytest.mark.parametrize("page", ["docs/using-a-model.md", "README.md"])
def test_the_documented_python_examples_run_as_written(page, trained, new_scans, tmp_path, monkeypatch):
    """The Python example of the README and of the site's 'Using a trained model' (the README's scan
    folder is this test's sample sheet)."""
    tmp, results = trained
    block = re.search(
        r"```python\n(from vae_dynamics import load_run\n.*?)```", (REPO / page).read_text(), re.S
    )
    assert block, f"{page}: the 'Using a trained model' Python example"
    (tmp_path / "results").mkdir()
    shutil.copytree(tmp / "runs", tmp_path / "runs")
    shutil.copytree(results, tmp_path / "results" / "exp2")
    shutil.copy(_sheet(new_scans, tmp_path / "sheet"), tmp_path / "new_scans.tsv")
    text = (tmp_path / "new_scans.tsv").read_text().replace("patient0/", "sheet/patient0/")
    (tmp_path / "new_scans.tsv").write_text(text.replace("patient1/", "sheet/patient1/"))
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    code = block.group(1).replace('"/path/to/new_scans"', '"new_scans.tsv"')
    exec(compile(code, page, "exec"), scope)  # noqa: S102 - the documented example
    assert len(scope["codes"]) == 2 and {"mu_0", "logvar_127"} <= set(scope["codes"].columns)
    if "images" in scope:
        assert tuple(scope["images"].shape) == (2, 4, 128, 128, 128) and torch.isfinite(scope["images"]).all()


# ---- what an encoding may write over, and what it rejects while encoding ------------------------------


def test_encode_never_replaces_its_inputs_the_run_or_a_users_folder(trained, new_scans, tmp_path):
    from vae_dynamics.io import OutputError

    tmp, results = trained
    run = load_run(results, "cpu")
    before = sorted(p.name for p in new_scans.rglob("*"))
    for out, why in (
        (new_scans, "is the input"),
        (new_scans / "codes", "lies inside the input"),
        (new_scans.parent, "contains the input"),
        (run.run_dir, "is the run directory"),
    ):
        with pytest.raises(OutputError, match=why):
            write_encoding(run, new_scans, out, force=True)
    assert sorted(p.name for p in new_scans.rglob("*")) == before
    assert (run.run_dir / "checkpoints").is_dir()
    subject = sorted(p for p in new_scans.iterdir() if p.is_dir())[0]
    sheet = tmp_path / "sheets" / "scans.csv"  # a sheet whose scans live elsewhere
    sheet.parent.mkdir()
    row = {"subject_id": "p0", **{k: str(subject / f"{subject.name}-{k}.nii.gz") for k in MODALITIES}}
    pd.DataFrame([row]).to_csv(sheet, index=False)
    with pytest.raises(OutputError, match="lies inside the folder of a scan"):
        write_encoding(run, sheet, subject / "codes")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.docx").write_text("years of work")
    with pytest.raises(OutputError, match=r"thesis\.docx.*--force"):
        write_encoding(run, new_scans, mine)
    assert (mine / "thesis.docx").read_text() == "years of work"
    write_encoding(run, new_scans, tmp_path / "codes")
    write_encoding(run, new_scans, tmp_path / "codes")  # its own earlier output is replaced
    assert (tmp_path / "codes" / "latents.csv").is_file()


def test_a_scan_whose_preprocessing_fails_or_whose_code_is_not_finite_is_rejected_and_the_rest_written(
    trained, new_scans, tmp_path, monkeypatch
):
    _, results = trained
    run = load_run(results, "cpu")
    real_preprocessing, real_encode = run.preprocessing, run.encode_images
    first, second = sorted(p.name for p in new_scans.iterdir() if p.is_dir())

    class Failing:  # a transform that fails for one subject, as Spacingd did on a 31 GB resampling
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, item):
            if item["subject_id"] == first:
                raise MemoryError("cannot allocate 31 GB")
            return self.inner(item)

    monkeypatch.setattr(run, "preprocessing", lambda: Failing(real_preprocessing()))
    table = write_encoding(run, new_scans, tmp_path / "a", panels=False)
    rejected = pd.read_csv(tmp_path / "a" / "rejected.csv").set_index("subject_id")
    assert list(table["subject_id"]) == [second]
    assert "preprocessing failed: MemoryError: cannot allocate 31 GB" in rejected.loc[first, "reason"]
    assert json.loads((tmp_path / "a" / "encoding.json").read_text())["n_rejected"] == 1

    def nan_for_second(images):
        mu, logvar = real_encode(images)
        mu = mu.clone()
        mu[-1] = float("nan")
        return mu, logvar

    monkeypatch.setattr(run, "preprocessing", real_preprocessing)
    monkeypatch.setattr(run, "encode_images", nan_for_second)
    table = write_encoding(run, new_scans, tmp_path / "b", panels=False, batch_size=2)
    rejected = pd.read_csv(tmp_path / "b" / "rejected.csv").set_index("subject_id")
    assert list(table["subject_id"]) == [first]
    assert "code (μ or log σ²) is not finite" in rejected.loc[second, "reason"]


@pytest.mark.parametrize("args", [["--traverse", "-2"], ["--batch-size", "0"], ["--workers", "-1"]])
def test_bad_numbers_on_the_command_line_are_one_line_usage_errors(trained, new_scans, tmp_path, args):
    tmp, _ = trained
    cli = [sys.executable, "-m", "vae_dynamics.cli", "encode", "--run", str(tmp / "runs" / "exp2")]
    done = subprocess.run(
        [*cli, "--images", str(new_scans), "--out", str(tmp_path / "o"), *args],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert re.search(rf"argument {args[0]}: must be >= \d, got -?\d", done.stderr), done.stderr


def test_a_truncated_checkpoint_at_inference_is_named_in_one_line(trained, tmp_path):
    tmp, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(tmp / "runs" / "exp2", copy)
    last = copy / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:4000])
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "vae_dynamics.cli",
            "encode",
            "--run",
            str(last),
            "--images",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
            "--device",
            "cpu",
        ],  # fmt: skip
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"{last}: cannot be read as a checkpoint" in done.stderr
