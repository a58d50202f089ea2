"""Write a trained run as a MONAI bundle (layout: vae_dynamics/bundle/__init__.py) and read one back."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vae_dynamics.evaluation import PRINTED_SCALARS
from vae_dynamics.io import OUTPUT_MARKER, OutputError, atomic_path, output_dir, write_json, write_text

if TYPE_CHECKING:
    import torch

    from vae_dynamics.inference import TrainedRun

# MONAI's bundle metadata schema (verify_metadata downloads it; tests/data holds MONAI's copy for offline use)
METADATA_SCHEMA = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
)
BUNDLE_FILES = {
    "metadata": "configs/metadata.json",
    "config": "configs/vae_dynamics.yaml",
    "contract": "configs/preprocessing.json",
    "summary": "configs/train_summary.json",
    "weights": "models/model.pt",
}
# Largest |difference| from the eager fp32 model that the exported encoder and decoder may show (fp32, CPU);
# the export measures them on one scan and refuses a model that exceeds them.
TOLERANCE = {"torchscript": 1e-4, "onnx": 1e-3}
DATA_TERMS = (
    "The weights were trained on BraTS 2023 Meningioma (BraTS-MEN) data. They derive from that data, and "
    "their use is bound by the BraTS 2023 challenge's data-use terms (https://www.synapse.org/brats2023): "
    "research use, no attempt to identify subjects, and citation of the BraTS-MEN data descriptor "
    "(LaBella et al., 2023, arXiv:2305.07642). A model trained on other data carries that data's terms."
)
INTENDED_USE = (
    "Research on latent representations of brain MRI with meningioma. Not a medical device: not for "
    "diagnosis, treatment or any clinical decision."
)


class BundleError(ValueError):
    """A folder or zip that is not a readable bundle of this package (the file is named)."""


# ---- reading ------------------------------------------------------------------------------------------


def is_bundle(path: Path) -> bool:
    return (path.is_dir() and (path / BUNDLE_FILES["metadata"]).is_file()) or (
        path.is_file() and path.suffix == ".zip"
    )


def read_bundle(path: Path) -> tuple[Path, Path, Path, dict[str, Any]]:
    """(bundle folder, its vae_dynamics.yaml, its weights, its train summary) of a bundle folder or zip (a
    zip is unpacked into a temporary folder first). A file that is missing or unreadable is named."""
    if path.is_file():
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
                if bad is not None:
                    raise BundleError(f"{path}: {bad} is damaged (CRC mismatch)")
                names = archive.namelist()
                top = {n.split("/", 1)[0] for n in names}
                if len(top) != 1 or any(n.startswith("/") or ".." in n.split("/") for n in names):
                    raise BundleError(f"{path}: not a bundle zip (one top-level folder expected)")
                folder = Path(tempfile.mkdtemp(prefix="vae_dynamics-bundle-"))
                atexit.register(shutil.rmtree, folder, ignore_errors=True)  # our own folder, at exit
                archive.extractall(folder)
        except zipfile.BadZipFile as exc:
            raise BundleError(f"{path}: not a zip file ({exc})") from None
        path = folder / top.pop()
    files = {key: path / rel for key, rel in BUNDLE_FILES.items()}
    for key, file in files.items():
        if not file.is_file():
            raise BundleError(f"{path}: not a bundle of vae_dynamics, {BUNDLE_FILES[key]} is missing")
    metadata, summary = (_json(files[key]) for key in ("metadata", "summary"))
    if "vae_dynamics" not in metadata:
        raise BundleError(f"{files['metadata']}: not a bundle of vae_dynamics (no 'vae_dynamics' entry)")
    return path, files["config"], files["weights"], summary


def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise BundleError(f"{path}: expected a JSON object")
    return value


# ---- writing ------------------------------------------------------------------------------------------


def _wrappers(model: Any) -> tuple[torch.nn.Module, torch.nn.Module]:
    import copy

    import torch

    class Encoder(torch.nn.Module):
        """images [n, 4, 128³] -> (μ, log σ²) [n, d]"""

        def __init__(self) -> None:
            super().__init__()
            self.encoder = model.encoder

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            mu, logvar = self.encoder(image)
            return mu, logvar

    # decode() without the encoder: a shallow copy that shares every other submodule (and its weights)
    decoding = copy.copy(model)
    decoding._modules = {k: m for k, m in model._modules.items() if k != "encoder"}

    class Decoder(torch.nn.Module):
        """codes [n, d] -> images [n, 4, 128³]"""

        def __init__(self) -> None:
            super().__init__()
            self.model = decoding

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return self.model.decode(z)

    return Encoder().eval(), Decoder().eval()


def _sample_image(run: TrainedRun) -> tuple[torch.Tensor, str]:
    """One preprocessed validation scan of the run (where its files are at hand), else a seeded volume."""
    import torch

    from vae_dynamics.data import read_subject_table
    from vae_dynamics.training.run_dir import RunDir

    val = RunDir(run.run_dir).splits / "val.csv"
    if val.is_file():
        row = read_subject_table(val).iloc[0]
        item = {k: row[k] for k in run.modalities}
        if all(Path(p).is_file() for p in item.values()):
            image = run.preprocessing()({**item, "subject_id": row["subject_id"]})["image"]
            return torch.as_tensor(image).float()[None], f"validation subject {row['subject_id']}"
    generator = torch.Generator().manual_seed(0)
    return torch.rand(1, len(run.modalities), *run.cfg.data.roi_size, generator=generator), "a seeded volume"


def _export_models(run: TrainedRun, models_dir: Path) -> dict[str, Any]:
    """model.pt, TorchScript and ONNX encoder/decoder; their largest differences from the eager model."""
    import warnings

    import numpy as np
    import onnxruntime
    import torch

    model = run.model  # eval mode on the CPU (export_bundle loads it so)
    torch.save(model.state_dict(), models_dir / "model.pt")
    encoder, decoder = _wrappers(model)
    x, source = _sample_image(run)
    with torch.inference_mode():
        mu, logvar = encoder(x)
        x_hat = decoder(mu)
    measured: dict[str, Any] = {"sample": source, "torchscript": {}, "onnx": {}}
    # TorchScript and the TorchScript-based ONNX exporter are deprecated (warnings silenced); without
    # gradients, gradient checkpointing is off and the traced graph is the plain forward
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        for name, module, example, expected, inputs, outputs in [
            ("encoder", encoder, x, (mu, logvar), ["image"], ["mu", "logvar"]),
            ("decoder", decoder, mu, (x_hat,), ["z"], ["image"]),
        ]:
            traced = torch.jit.trace(module, example)
            traced.save(str(models_dir / f"{name}.ts"))
            with torch.inference_mode():
                got = traced(example)
            got = got if isinstance(got, tuple) else (got,)
            measured["torchscript"][name] = max(float((a - b).abs().max()) for a, b in zip(got, expected))
            onnx_path = models_dir / f"{name}.onnx"
            torch.onnx.export(
                module,
                (example,),
                str(onnx_path),
                input_names=inputs,
                output_names=outputs,
                dynamic_axes={n: {0: "batch"} for n in (*inputs, *outputs)},
                opset_version=18,
                dynamo=False,
            )
            session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
            ran = session.run(None, {inputs[0]: example.numpy()})
            measured["onnx"][name] = max(float(np.abs(a - b.numpy()).max()) for a, b in zip(ran, expected))
    for kind, limit in TOLERANCE.items():
        worst = max(measured[kind].values())
        if worst > limit:
            raise RuntimeError(f"the {kind} export differs from the model by {worst:.3g} (> {limit})")
    return measured


def _metadata(run: TrainedRun, evaluation: dict[str, Any], measured: dict[str, Any]) -> dict[str, Any]:
    import monai
    import nibabel
    import numpy
    import torch

    from vae_dynamics import __version__
    from vae_dynamics.data.cache import preprocessing_contract
    from vae_dynamics.provenance import code_version

    data, model = run.cfg.data, run.cfg.model
    roi, d = list(data.roi_size), model.z_dim
    image = {
        "type": "image",
        "format": "magnitude",
        "modality": "MR",
        "num_channels": len(data.modalities),
        "spatial_shape": roi,
        "dtype": "float32",
        "value_range": [0, 1],
        "is_patch_data": False,
        "channel_def": {str(i): m for i, m in enumerate(data.modalities)},
    }

    def code(what: str) -> dict[str, Any]:
        return {
            "type": "tensor",
            "format": what,
            "num_channels": d,
            "spatial_shape": [],
            "dtype": "float32",
            "value_range": [],
        }

    version = code_version()
    return {
        "schema": METADATA_SCHEMA,
        "version": __version__,
        "changelog": {__version__: f"exported from run {run.run_dir.name}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "required_packages_version": {"nibabel": nibabel.__version__},
        "name": f"vae_dynamics {run.experiment.title}",
        "task": "Encoding of 4-channel brain MRI (t1c, t1n, t2f, t2w) into a 128-dimensional latent code",
        "description": (
            f"{run.experiment.title}: a 3D variational autoencoder trained by vae_dynamics. The encoder maps "
            "a preprocessed 4×128³ volume to the posterior mean μ and log-variance log σ² of a "
            f"{d}-dimensional code; the decoder maps a code back to a volume. configs/inference.json "
            "encodes a folder of scans; docs/README.md is the model card."
        ),
        "authors": "vae_dynamics developers",
        "copyright": "Copyright (c) vae_dynamics developers; code Apache-2.0; weights: see data_terms",
        "data_source": "BraTS 2023 Meningioma (BraTS-MEN) training data, https://www.synapse.org/brats2023",
        "data_type": "nibabel",
        "image_classes": f"MR contrasts {', '.join(data.modalities)}, each scaled to [0, 1]",
        "intended_use": INTENDED_USE,
        "data_terms": DATA_TERMS,
        "eval_metrics": {k: evaluation[k] for k in PRINTED_SCALARS if k in evaluation},
        "references": [
            "Chen et al., Isolating Sources of Disentanglement in VAEs, NeurIPS 2018 (arXiv:1802.04942)",
            "Watters et al., Spatial Broadcast Decoder, 2019 (arXiv:1901.07017)",
            "LaBella et al., The BraTS 2023 Meningioma Challenge, 2023 (arXiv:2305.07642)",
        ],
        "network_data_format": {
            "inputs": {"image": image},
            "outputs": {"mu": code("mean"), "logvar": code("log-variance")},
        },
        "decoder_data_format": {"inputs": {"z": code("latent code")}, "outputs": {"image": image}},
        "preprocessing": preprocessing_contract(data),
        "export_tolerance": {"limits": TOLERANCE, "measured": measured},
        "vae_dynamics": {
            "version": __version__,
            "commit": version.get("git_commit"),
            "experiment": run.experiment.name,
            "run": run.run_dir.name,
            "run_identity": run.identity(),
            "onnxruntime_version": _version("onnxruntime"),  # what checked models/*.onnx
            "checkpoint": run.summary.get("best_checkpoint"),
            "checkpoint_choice": run.summary.get("checkpoint_choice"),
        },
    }


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _inference_config(run: TrainedRun) -> dict[str, Any]:
    data = run.cfg.data
    return {
        # scripts.* are named by _target_: MONAI puts the bundle on sys.path when the run starts
        "imports": ["$import torch"],
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "input_dir": "$@bundle_root + '/scans'",
        "output_dir": "$@bundle_root + '/codes'",
        "modalities": list(data.modalities),
        "preprocessing": {
            "_target_": "scripts.transforms.build_transforms",
            "modalities": "@modalities",
            "roi_size": list(data.roi_size),
            "spacing": list(data.spacing),
            "orientation": data.orientation,
            "fov_mm": data.fov_mm,
            "intensity_percentile": data.intensity_percentile,
        },
        "encoder": "$torch.jit.load(@bundle_root + '/models/encoder.ts', map_location=@device)",
        "items": {
            "_target_": "scripts.encode.subject_items",
            "input_dir": "@input_dir",
            "modalities": "@modalities",
        },
        "run": {
            "_target_": "scripts.encode.encode_scans",
            "encoder": "@encoder",
            "transform": "@preprocessing",
            "items": "@items",
            "output_dir": "@output_dir",
            "device": "@device",
        },
    }


def _model_card(run: TrainedRun, metadata: dict[str, Any], evaluation: dict[str, Any]) -> str:
    rec = evaluation.get("reconstruction", {})
    measured = metadata["export_tolerance"]["measured"]
    rows = [
        ("validation MSE / all-zero predictor", rec.get("val_mse_over_zero_predictor")),
        ("validation MSE / training-mean volume", rec.get("val_mse_over_mean_volume")),
        ("z-dependence (1: the decoder ignores z)", rec.get("z_dependence")),
        ("MIG", evaluation.get("mig")),
        ("DCI disentanglement", evaluation.get("dci_disentanglement")),
        ("SAP", evaluation.get("sap")),
        ("active units (KL > 0.1 nats)", evaluation.get("active_units")),
        ("subjects evaluated", evaluation.get("n_subjects")),
    ]
    shown = [
        f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in rows if v is not None
    ]
    from vae_dynamics.models.diagnostics import Z_IGNORED_BELOW

    warnings = evaluation.get("warnings") or []
    z_dep = rec.get("z_dependence")
    ignores = isinstance(z_dep, float) and z_dep < Z_IGNORED_BELOW
    vd = metadata["vae_dynamics"]
    return "\n".join(
        [
            f"# {metadata['name']}",
            "",
            metadata["description"],
            "",
            "## Intended use",
            "",
            INTENDED_USE,
            "",
            "## Data and its terms",
            "",
            DATA_TERMS,
            "",
            "## Input",
            "",
            f"Four co-registered NIfTI volumes per subject ({', '.join(run.modalities)}), preprocessed as "
            "`configs/preprocessing.json` records: RAS, 1 mm, the foreground cropped with a "
            f"{run.cfg.data.fov_mm:g} mm field of view, resized to "
            f"{'×'.join(map(str, run.cfg.data.roi_size))}, "
            f"each channel divided by its {run.cfg.data.intensity_percentile:g}th percentile inside the head "
            "and clipped to [0, 1]. `scripts/transforms.py` is that preprocessing.",
            "",
            "## Evaluation of this run",
            "",
            *(
                ["| measure | value |", "|---|---|", *shown]
                if shown
                else ["The run was exported before it was evaluated: no numbers."]
            ),
            "",
            "## Known limits",
            "",
            *(f"- {w}" for w in warnings),
            *(
                [
                    f"- The decoder ignores the code (z-dependence below {Z_IGNORED_BELOW}): codes do not "
                    "describe the subjects yet; train longer before using them."
                ]
                if ignores
                else []
            ),
            "- Trained on one dataset and its scanners; other cohorts may need their own check of the "
            "reconstruction and code statistics.",
            "",
            "## Use",
            "",
            "Encode a folder of BraTS-layout subject folders to `codes.csv` (subject_id, mu_*, logvar_*), "
            "with MONAI and PyTorch only:",
            "",
            "    python -m monai.bundle run --config_file configs/inference.json --bundle_root . \\",
            "        --input_dir /path/to/scans --output_dir codes",
            "",
            "In Python, `torch.jit.load('models/encoder.ts')` maps images [n, 4, 128³] to (μ, log σ²), and "
            "`models/decoder.ts` maps codes [n, 128] to images; `models/*.onnx` are the same for ONNX "
            "Runtime. With vae_dynamics installed, `load_run('<bundle>')` gives the model with encode, "
            "decode and traversals (`vae-dynamics encode --run <bundle> ...`). To traverse a dimension, "
            "decode μ with that dimension moved by a few σ.",
            "",
            "Exported models agree with the eager fp32 model within "
            f"{TOLERANCE['torchscript']:g} (TorchScript) and {TOLERANCE['onnx']:g} (ONNX) in absolute value; "
            f"measured on {measured['sample']}: TorchScript {max(measured['torchscript'].values()):.2g}, "
            f"ONNX {max(measured['onnx'].values()):.2g}.",
            "",
            "## Provenance",
            "",
            f"vae_dynamics {vd['version']} (commit {vd['commit'] or 'unknown'}), "
            f"experiment {vd['experiment']}, "
            f"run {vd['run']} (identity {vd['run_identity']}), checkpoint {vd['checkpoint']} "
            f"({vd['checkpoint_choice'] or 'the last'}).",
            "",
            "## Citation",
            "",
            "Cite this software (CITATION.cff of vae_dynamics), the β-TCVAE paper (Chen et al., "
            "NeurIPS 2018) and the BraTS-MEN data descriptor (LaBella et al., 2023).",
            "",
        ]
    )


def _write_bundle(run: TrainedRun, folder: Path, evaluation: dict[str, Any]) -> None:
    from vae_dynamics.bundle import encode
    from vae_dynamics.config import save_config
    from vae_dynamics.data import transforms
    from vae_dynamics.data.cache import preprocessing_contract

    for sub in ("configs", "models", "scripts", "docs"):
        (folder / sub).mkdir()
    measured = _export_models(run, folder / "models")
    metadata = _metadata(run, evaluation, measured)
    write_json(metadata, folder / BUNDLE_FILES["metadata"])
    write_json(_inference_config(run), folder / "configs" / "inference.json")
    save_config(run.cfg, folder / BUNDLE_FILES["config"])
    write_json(preprocessing_contract(run.cfg.data), folder / BUNDLE_FILES["contract"])
    # the run's summary without its local folder (a bundle is shared: no paths of this machine)
    write_json({k: v for k, v in run.summary.items() if k != "run_dir"}, folder / BUNDLE_FILES["summary"])
    shutil.copyfile(transforms.__file__, folder / "scripts" / "transforms.py")
    shutil.copyfile(encode.__file__, folder / "scripts" / "encode.py")
    write_text("", folder / "scripts" / "__init__.py")
    write_text(_model_card(run, metadata, evaluation), folder / "docs" / "README.md")
    write_text(DATA_TERMS + "\n", folder / "docs" / "data_license.txt")


def _evaluation(path: Path, run: TrainedRun) -> dict[str, Any]:
    """metrics.json of the run's evaluation (results/<run>/evaluation/, beside train_summary.json) when it
    evaluated the checkpoint being exported; {} otherwise (the card then says it has no numbers)."""
    metrics = (path if path.is_dir() else path.parent) / "evaluation" / "metrics.json"
    if not metrics.is_file():
        return {}
    evaluation = dict(json.loads(metrics.read_text()))
    if evaluation.get("checkpoint") != run.summary.get("best_checkpoint"):
        return {}  # an evaluation of another checkpoint of this run: its numbers are not this model's
    return evaluation


def export_bundle(
    run_path: str | os.PathLike[str], out: str | os.PathLike[str], fmt: str = "bundle", force: bool = False
) -> Path:
    """Write the run at `run_path` (what `load_run` accepts) as a MONAI bundle folder at `out`, or with
    fmt="zip" as the zip `out` (one top-level folder, named like the zip). `out` replaces only an empty
    folder or an earlier export, unless `force`; never the run itself."""
    from vae_dynamics.inference import load_run

    run = load_run(run_path, "cpu")
    evaluation = _evaluation(Path(run_path), run)
    out = Path(out)
    protected = {"the run directory": [run.run_dir]}
    if fmt == "bundle":
        with output_dir(out, "export", protected, force=force) as tmp:
            _write_bundle(run, tmp, evaluation)
        return out
    if fmt != "zip":
        raise ValueError(f"format {fmt!r}: bundle or zip")
    if out.suffix != ".zip":
        raise OutputError(f"{out}: a zip export is written to a .zip file")
    if out.is_dir() or (out.exists() and not force):
        raise OutputError(
            f"{out} exists{' and is a folder' if out.is_dir() else ''}: remove it or pass --force"
        )
    with tempfile.TemporaryDirectory(prefix="vae_dynamics-export-") as work:
        folder = Path(work) / out.stem
        folder.mkdir()
        _write_bundle(run, folder, evaluation)
        with atomic_path(out) as tmp_zip, zipfile.ZipFile(tmp_zip, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(folder.rglob("*")):
                if file.is_file() and file.name != OUTPUT_MARKER:
                    archive.write(file, file.relative_to(folder.parent).as_posix())
    return out
