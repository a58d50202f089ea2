"""A trained run shared as a MONAI bundle: MONAI's own commands verify and run it (without this package
importable), its TorchScript and ONNX models match the eager one, `load_run` reads it back, a damaged or
foreign bundle is refused naming the file, and an export never replaces what a user put there."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import OVERRIDES, make_workdir, snakemake

from vae_dynamics.bundle import BundleError, export_bundle
from vae_dynamics.bundle.export import TOLERANCE
from vae_dynamics.config import config_path, load_config
from vae_dynamics.inference import DamagedCheckpointFileError, latent_columns, load_run
from vae_dynamics.io import OutputError

SCHEMA = Path(__file__).parent / "data" / "meta_schema_20240725.json"  # MONAI's, for offline verification
PYTHON = sys.executable
# `python -m monai.bundle ...` with vae_dynamics made unimportable: the bundle must carry what it needs.
WITHOUT_PACKAGE = (
    "import runpy, sys\n"
    "sys.modules['vae_dynamics'] = None\n"
    "sys.path = [p for p in sys.path if not p.endswith('/src')]\n"
    "sys.argv = ['monai.bundle', *sys.argv[1:]]\n"
    "runpy.run_module('monai.bundle', run_name='__main__')\n"
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_splits):
    from vae_dynamics.training.run import train

    tmp = tmp_path_factory.mktemp("bundle")
    sets = {**OVERRIDES, "train.max_epochs": 1, "data.cache_dir": str(tmp / "cache")}
    summary = train(load_config(config_path("exp2"), sets), tmp / "run", splits_dir=demo_splits)
    bundle = export_bundle(tmp / "run", tmp / "bundle")
    return {"tmp": tmp, "run": tmp / "run", "summary": summary, "bundle": bundle}


@pytest.fixture
def scans(demo_root, tmp_path) -> Path:
    folder = tmp_path / "scans"
    folder.mkdir()
    for name in sorted(p.name for p in demo_root.iterdir() if p.is_dir())[:2]:
        shutil.copytree(demo_root / name, folder / name)
    return folder


def monai_bundle(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-c", WITHOUT_PACKAGE, *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_monai_verifies_the_metadata_and_it_says_what_the_networks_take(trained):
    bundle = trained["bundle"]
    out = monai_bundle(
        "verify_metadata", "--meta_file", "configs/metadata.json", "--filepath", str(SCHEMA), cwd=bundle
    )
    assert out.returncode == 0 and "metadata is verified with no error" in out.stderr + out.stdout, out.stderr
    meta = json.loads((bundle / "configs/metadata.json").read_text())
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == 4 and image["spatial_shape"] == [128, 128, 128]
    assert image["channel_def"] == {"0": "t1c", "1": "t1n", "2": "t2f", "3": "t2w"}
    assert meta["network_data_format"]["outputs"]["mu"]["num_channels"] == 128
    assert meta["decoder_data_format"]["outputs"]["image"] == image
    assert meta["preprocessing"]["fov_mm"] == 192.0 and "not for diagnosis" in meta["intended_use"]
    assert "BraTS" in meta["data_terms"] and meta["vae_dynamics"]["experiment"] == "exp2_tcvae_sbd"
    card = (bundle / "docs/README.md").read_text()
    for heading in ("Intended use", "Data and its terms", "Known limits", "Use", "Citation"):
        assert f"## {heading}" in card, heading
    assert "exported before it was evaluated" in card  # the run has no evaluation/metrics.json
    # the shared metadata and summary carry no path of this machine (the resolved config keeps the
    # training's data.root_dir and data.cache_dir: it is the record of how the model was trained)
    for name in ("metadata.json", "train_summary.json"):
        assert str(trained["tmp"]) not in (bundle / "configs" / name).read_text(), name


def test_the_model_card_reports_the_evaluation_of_the_exported_checkpoint_only(trained, tmp_path):
    """An experiment folder (train_summary.json + evaluation/metrics.json): the card shows the evaluation
    when it evaluated the exported checkpoint, and says the decoder ignores z when z-dependence is 1;
    an evaluation of another checkpoint of the run is not this model's, and is left out."""
    folder = tmp_path / "exp2"
    (folder / "evaluation").mkdir(parents=True)
    (folder / "train_summary.json").write_text(json.dumps(trained["summary"]))
    metrics = {
        "checkpoint": trained["summary"]["best_checkpoint"],
        "mig": 0.0123,
        "n_subjects": 5,
        "reconstruction": {"z_dependence": 1.0, "val_mse_over_mean_volume": 1.2},
    }
    (folder / "evaluation/metrics.json").write_text(json.dumps(metrics))
    card = (export_bundle(folder, tmp_path / "b1") / "docs/README.md").read_text()
    assert "| MIG | 0.0123 |" in card and "decoder ignores the code" in card
    meta = json.loads((tmp_path / "b1/configs/metadata.json").read_text())
    assert meta["eval_metrics"] == {"mig": 0.0123}
    (folder / "evaluation/metrics.json").write_text(
        json.dumps({**metrics, "checkpoint": "checkpoints/other.ckpt"})
    )
    card = (export_bundle(folder, tmp_path / "b2") / "docs/README.md").read_text()
    assert "exported before it was evaluated" in card and "0.0123" not in card


def test_monai_runs_the_bundle_without_this_package_and_the_codes_are_encodes(trained, scans, tmp_path):
    bundle = trained["bundle"]
    out = monai_bundle(
        "run", "--config_file", "configs/inference.json", "--bundle_root", str(bundle),
        "--input_dir", str(scans), "--output_dir", str(tmp_path / "codes"),
        cwd=bundle,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    codes = pd.read_csv(tmp_path / "codes/codes.csv")
    reference = load_run(trained["run"], "cpu").encode(scans)
    assert list(codes["subject_id"]) == list(reference["subject_id"])
    cols = latent_columns(codes) + latent_columns(codes, "logvar_")
    assert np.abs(codes[cols].to_numpy() - reference[cols].to_numpy()).max() <= 1e-5


def test_the_torchscript_and_onnx_models_match_the_eager_model(trained, scans):
    import onnxruntime

    run = load_run(trained["run"], "cpu")
    valid, _ = run.scans(scans)
    x = torch.as_tensor(next(run.preprocessed(valid))[0]["image"]).float()[None]
    with torch.inference_mode():
        mu, logvar = run.model.encoder(x)
        x_hat = run.model.decode(mu)
    models = trained["bundle"] / "models"
    encoder = torch.jit.load(str(models / "encoder.ts"))
    got = encoder(x)
    assert max(float((a - b).abs().max()) for a, b in zip(got, (mu, logvar))) <= TOLERANCE["torchscript"]
    session = onnxruntime.InferenceSession(str(models / "decoder.onnx"), providers=["CPUExecutionProvider"])
    (decoded,) = session.run(None, {"z": mu.numpy()})
    assert decoded.shape == (1, 4, 128, 128, 128)
    assert float(np.abs(decoded - x_hat.numpy()).max()) <= TOLERANCE["onnx"]
    # the decoder's files hold the decoder only (the encoder's 32·8³ -> 2·128 head is most of the weights)
    for ext in ("ts", "onnx"):
        assert (models / f"decoder.{ext}").stat().st_size < (models / f"encoder.{ext}").stat().st_size / 4
    measured = json.loads((trained["bundle"] / "configs/metadata.json").read_text())["export_tolerance"]
    assert measured["measured"]["sample"].startswith("validation subject")


def test_load_run_reads_a_bundle_folder_and_zip_and_encodes_as_the_run(trained, scans, tmp_path):
    zipped = export_bundle(trained["run"], tmp_path / "exp2_bundle.zip", fmt="zip")
    reference = load_run(trained["run"], "cpu").encode(scans)
    for source in (trained["bundle"], zipped):
        run = load_run(source, "cpu")
        codes = run.encode(scans)
        cols = latent_columns(codes)
        assert np.abs(codes[cols].to_numpy() - reference[cols].to_numpy()).max() == 0.0, source
    assert load_run(zipped, "cpu").summary["best_checkpoint"] == trained["summary"]["best_checkpoint"]


def test_a_damaged_or_foreign_bundle_is_refused_naming_the_file(trained, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(trained["bundle"], damaged)
    weights = damaged / "models/model.pt"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(DamagedCheckpointFileError, match=r"models/model\.pt: cannot be read"):
        load_run(damaged, "cpu")
    foreign = tmp_path / "foreign"
    shutil.copytree(trained["bundle"], foreign)
    meta = json.loads((foreign / "configs/metadata.json").read_text())
    (foreign / "configs/metadata.json").write_text(
        json.dumps({k: v for k, v in meta.items() if k != "vae_dynamics"})
    )
    with pytest.raises(BundleError, match=r"configs/metadata\.json: not a bundle of vae_dynamics"):
        load_run(foreign, "cpu")
    (foreign / "configs/vae_dynamics.yaml").unlink()
    with pytest.raises(BundleError, match=r"configs/vae_dynamics\.yaml is missing"):
        load_run(foreign, "cpu")
    not_zip = tmp_path / "model.zip"
    not_zip.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(BundleError, match="model.zip: not a zip file"):
        load_run(not_zip, "cpu")


def test_an_export_never_replaces_a_foreign_folder_or_the_run(trained, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(OutputError, match="notes.txt"):
        export_bundle(trained["run"], mine)
    assert (mine / "notes.txt").read_text() == "keep"
    with pytest.raises(OutputError, match="the run directory"):
        export_bundle(trained["run"], trained["run"])
    assert (trained["run"] / "checkpoints").is_dir()
    export_bundle(trained["run"], trained["bundle"])  # its own earlier export is replaced


def test_the_workflow_has_a_bundle_target_outside_done(demo_root, tmp_path):
    work = make_workdir(tmp_path, demo_root)
    out = snakemake(work, "-n", "--", "results/exp2/export/bundle.zip").stdout
    assert "export_bundle" in out
    assert "export_bundle" not in snakemake(work, "-n", "--", "results/exp2/done").stdout
