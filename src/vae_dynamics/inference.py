"""A trained run as a tool: load it, encode any scan, decode codes, reconstruct scans in their own space.

    from vae_dynamics import load_run
    run = load_run("results/exp2")          # the experiment folder, a run directory, a train_summary.json
                                            # or a checkpoint; eval mode, on CUDA when present
    codes = run.encode("new_scans.csv")     # a sample sheet (path or DataFrame), a folder of BraTS-layout
                                            # subject folders, or a list of subject folders
    images = run.decode(codes)              # [n, 4, 128, 128, 128] float32, the model's normalised space
    table = run.reconstruct("new_scans.csv", "out/")   # NIfTI in each scan's own grid and affine

    vae-dynamics encode --run results/exp2 --sheet new_scans.csv --out encoded/ [--reconstruct] [--traverse 4]

New scans go through the training's preprocessing (data/transforms.py) with the run's config; their seg
is optional (without it the crop is to the non-zero image). Nothing is read from or written to the
training cache. A run whose recorded preprocessing contract differs from the one this code would apply
is refused, naming the keys.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from vae_dynamics import experiments
from vae_dynamics.config import load_config
from vae_dynamics.config.schema import ExperimentConfig
from vae_dynamics.data import SEG_KEY

if TYPE_CHECKING:  # torch, MONAI and the models are imported where they are used
    import torch
    from monai.transforms import Compose

    from vae_dynamics.models import VAE3d

log = logging.getLogger(__name__)

SUMMARY_FILE = "train_summary.json"
Scans = str | os.PathLike | pd.DataFrame | Sequence[str | os.PathLike]  # a sheet, a folder, folders


class DamagedCheckpointFileError(RuntimeError):
    """The checkpoint chosen for inference cannot be read."""


class ContractMismatchError(RuntimeError):
    """The run was trained on a preprocessing other than the one this code would apply to new scans."""


@dataclass
class TrainedRun:
    """A finished training run: its resolved config, the chosen checkpoint's model, where it lives."""

    cfg: ExperimentConfig
    model: VAE3d  # the experiment's model (TCVAESBD, BaselineVAE), in eval mode on `device`
    run_dir: Path
    summary: dict[str, Any]
    device: torch.device
    checkpoint: Path | None = None
    _transform: Compose | None = field(default=None, init=False, repr=False)

    @property
    def experiment(self) -> experiments.Experiment:
        return experiments.of(self.cfg)

    @property
    def modalities(self) -> list[str]:
        return list(self.cfg.data.modalities)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The training's mixed precision for decoding figures (traversals, panels): bf16-mixed on any
        device, 16-mixed on CUDA; full precision otherwise. Metrics are computed in float32."""
        import torch

        precision = self.cfg.train.precision
        if precision == "bf16-mixed":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        if precision == "16-mixed" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    # ---- provenance of what this run produces ---------------------------------------------------------

    def identity(self) -> str:
        from vae_dynamics.config.identity import run_identity

        return run_identity(self.cfg)

    def contract_differences(self) -> dict[str, tuple[Any, Any]]:
        """Preprocessing keys whose value in the run's record differs from what this code applies:
        key -> (the run's, this code's). Runs from before the record: their config's contract keys."""
        from vae_dynamics.data.cache import preprocessing_contract

        current = json.loads(json.dumps(preprocessing_contract(self.cfg.data)))
        from vae_dynamics.bundle.export import BUNDLE_FILES
        from vae_dynamics.training.run_dir import RunDir

        record = RunDir(self.run_dir).preprocessing
        if not record.is_file():  # an exported bundle keeps it among its configs
            record = self.run_dir / BUNDLE_FILES["contract"]
        if record.is_file():
            saved = json.loads(record.read_text())
        else:
            log.warning(
                "%s: no preprocessing.json (a run from before 0.5); its config's keys are used", self.run_dir
            )
            saved = {k: v for k, v in current.items() if k in self.cfg.data}
        keys = sorted(set(saved) | set(current))
        return {k: (saved.get(k), current.get(k)) for k in keys if saved.get(k) != current.get(k)}

    def check_contract(self) -> None:
        differences = self.contract_differences()
        if differences:
            listed = "; ".join(f"{k}: run {a!r}, here {b!r}" for k, (a, b) in differences.items())
            raise ContractMismatchError(
                f"{self.run_dir}: trained on another preprocessing than this code applies ({listed}); "
                "encode with the package version and config the run was trained with"
            )

    # ---- scans ---------------------------------------------------------------------------------------

    def preprocessing(self) -> Compose:
        """The run's preprocessing (data/transforms.py), invertible: one instance, since MONAI inverts an
        item only with the transform objects that recorded its steps."""
        if self._transform is None:
            from vae_dynamics.data.transforms import transforms_from_config

            self._transform = transforms_from_config(self.cfg.data, invertible=True)
        return self._transform

    def scans(self, source: Scans, workers: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(valid, rejected) scans of a sheet, a folder or a list of folders (data/index.find_scans):
        every subject is checked as indexing checks it; the rejected ones are named with their reason."""
        from vae_dynamics.data.index import find_scans

        valid, rejected = find_scans(
            source, self.modalities, require_seg=False, workers=workers, spacing=self.cfg.data.spacing
        )
        for row in rejected.itertuples():
            log.warning("rejected %s: %s: %s", row.subject_id, row.file, row.reason)
        return valid, rejected

    def preprocessed(
        self, scans: pd.DataFrame, batch_size: int = 4, workers: int = 0
    ) -> Iterator[list[dict]]:
        """Batches (lists) of preprocessed items: subject_id, image (an invertible MetaTensor [4, 128³]),
        intensity_scale, seg when the scan has one; loaded by `workers` processes."""
        from monai.data import DataLoader

        keys = [*self.modalities, SEG_KEY]
        records = [
            {"subject_id": r["subject_id"], **{k: r[k] for k in keys if isinstance(r.get(k), str) and r[k]}}
            for r in scans.to_dict("records")
        ]
        loader = DataLoader(
            _RejectingDataset(records, self.preprocessing()),  # type: ignore[arg-type]  # a map-style dataset
            batch_size=batch_size,
            shuffle=False,
            num_workers=workers,
            collate_fn=list,
        )
        yield from loader

    def encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, log σ²) [n, d] float32 on the CPU of preprocessed images [n, 4, 128³]."""
        return self.model.posterior(images)

    def encode(
        self, source: Scans, batch_size: int = 4, workers: int = 0, progress: bool = False
    ) -> pd.DataFrame:
        """subject_id, the sheet's extra columns, mu_0.., logvar_0.. of every valid scan of `source`
        (rejected scans are logged and listed in `table.attrs["rejected"]`)."""
        self.check_contract()
        valid, rejected = self.scans(source, workers=max(1, workers))
        rows: list[dict[str, Any]] = []
        late: list[dict[str, str]] = []
        for batch in self._batches(valid, batch_size, workers, progress, late):
            rows.extend(code_rows(batch))
        return self._table(valid, rows, with_rejections(rejected, late))

    def decode(self, codes: pd.DataFrame | torch.Tensor | np.ndarray, batch_size: int = 4) -> torch.Tensor:
        """Volumes [n, 4, 128³] (float32, CPU) decoded from codes: a latents table (its mu_* columns),
        or a tensor/array [n, d] or [d]."""
        import torch

        if isinstance(codes, pd.DataFrame):
            codes = codes[latent_columns(codes)].to_numpy(dtype=np.float32)
        if isinstance(codes, torch.Tensor):
            z = codes.detach().float().cpu()
        else:  # a copy: the caller's array stays as it is
            z = torch.from_numpy(np.array(codes, dtype=np.float32))
        z = z[None] if z.ndim == 1 else z
        out = []
        with torch.inference_mode(), self.autocast():
            for chunk in z.split(batch_size):
                out.append(self.model.decode(chunk.to(self.device)).float().cpu())
        return torch.cat(out)

    # ---- internals -----------------------------------------------------------------------------------

    def _batches(
        self,
        valid: pd.DataFrame,
        batch_size: int,
        workers: int,
        progress: bool,
        rejected: list[dict[str, str]],
    ) -> Iterator[list[dict[str, Any]]]:
        """Preprocessed batches with μ, log σ² (and the images) of each item, with progress lines. A scan
        whose preprocessing fails or whose code is not finite is left out and appended to `rejected`."""
        import torch

        first_file = {
            str(r["subject_id"]): Path(str(r[self.modalities[0]])).name for _, r in valid.iterrows()
        }

        def reject(item: dict[str, Any], reason: str) -> None:
            sid = str(item["subject_id"])
            log.warning("rejected %s: %s", sid, reason)
            rejected.append({"subject_id": sid, "file": first_file.get(sid, ""), "reason": reason})

        done, start = 0, time.perf_counter()
        for loaded in self.preprocessed(valid, batch_size, workers):
            batch = []
            for item in loaded:
                if "error" in item:
                    reject(item, item["error"])
                elif not torch.isfinite(item["image"].as_tensor()).all():
                    reject(item, "non-finite values after preprocessing (beyond float32's range?)")
                else:
                    batch.append(item)
            done += len(loaded)
            if not batch:
                continue
            images = torch.stack([item["image"].as_tensor() for item in batch])
            mu, logvar = self.encode_images(images)
            finite = torch.isfinite(mu).all(1) & torch.isfinite(logvar).all(1)
            for item, m, lv, ok in zip(batch, mu, logvar, finite):
                item["mu"], item["logvar"] = m, lv
                if not ok:
                    reject(item, "the model's code (μ or log σ²) is not finite for this scan")
            batch = [item for item, ok in zip(batch, finite) if ok]
            if not batch:
                continue
            message = (
                f"encoded {done}/{len(valid)} scans on {self.device} ({time.perf_counter() - start:.1f} s)"
            )
            log.info(message)
            if progress:
                print(message, flush=True)
            yield batch

    def _table(self, valid: pd.DataFrame, rows: list[dict], rejected: pd.DataFrame) -> pd.DataFrame:
        codes = pd.DataFrame(rows) if rows else pd.DataFrame(columns=["subject_id"])
        extra = [c for c in valid.columns if c not in ("subject_id", *self.modalities, SEG_KEY)]
        table = valid[["subject_id", *extra]].merge(codes, on="subject_id", how="inner", validate="1:1")
        table["checkpoint"] = str(self.checkpoint) if self.checkpoint else ""
        table["run_identity"] = self.identity()
        table.attrs["rejected"] = rejected
        return table


class _RejectingDataset:
    """MONAI's preprocessing of one scan per item; a scan whose preprocessing fails becomes
    {subject_id, error} instead of stopping every other scan's encoding."""

    def __init__(self, records: list[dict[str, Any]], transform: Compose) -> None:
        self.records, self.transform = records, transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        try:
            return self.transform(dict(record))
        except Exception as exc:  # noqa: BLE001 - any failure is this scan's rejection reason
            cause = exc.__cause__ or exc  # MONAI wraps a transform's error in "applying transform ..."
            return {
                "subject_id": record["subject_id"],
                "error": f"preprocessing failed: {type(cause).__name__}: {cause}",
            }


def with_rejections(rejected: pd.DataFrame, late: list[dict[str, str]]) -> pd.DataFrame:
    """The checks' rejections followed by those found while encoding (preprocessing, non-finite codes)."""
    if not late:
        return rejected
    return pd.concat([rejected, pd.DataFrame(late, columns=rejected.columns)], ignore_index=True)


def latent_columns(table: pd.DataFrame, prefix: str = "mu_") -> list[str]:
    """mu_0, mu_1, ... (or logvar_0, ...) of a codes table (`code_rows`), in dimension order."""
    cols = [c for c in table.columns if c.startswith(prefix) and c[len(prefix) :].isdigit()]
    if not cols:
        raise ValueError(f"no {prefix}* columns (expected {prefix}0, {prefix}1, ...)")
    return sorted(cols, key=lambda c: int(c[len(prefix) :]))


def code_rows(batch: list[dict]) -> list[dict]:
    rows = []
    for item in batch:
        d = item["mu"].numel()
        rows.append(
            {
                "subject_id": item["subject_id"],
                **{f"mu_{k}": float(item["mu"][k]) for k in range(d)},
                **{f"logvar_{k}": float(item["logvar"][k]) for k in range(d)},
            }
        )
    return rows


def native_space(run: TrainedRun, item: dict[str, Any], volume: torch.Tensor | np.ndarray) -> np.ndarray:
    """A [4, 128³] volume in the model's space (e.g. x̂ of `item`) mapped back to the scan's own grid:
    MONAI's inverse of the geometric preprocessing recorded on item["image"] (by `run.preprocessing()`),
    and the intensity divisors undone. [4, X, Y, Z] float32 in the scan's intensity units."""
    import torch
    from monai.data import MetaTensor

    image = item["image"]
    mapped = MetaTensor(
        torch.as_tensor(volume).float().cpu(),
        meta=dict(image.meta),
        applied_operations=list(image.applied_operations),
    )
    out = run.preprocessing().inverse({"image": mapped})["image"]
    scale = torch.as_tensor(item["intensity_scale"]).float().reshape(-1, 1, 1, 1)
    return (out.as_tensor().float() * scale).numpy()


def save_native(
    run: TrainedRun, item: dict[str, Any], files: dict[str, Any], volume: np.ndarray, folder: Path
) -> None:
    """One NIfTI per modality in the input file's grid, affine and header (float32)."""
    import nibabel as nib

    from vae_dynamics.data.index import load_image

    folder.mkdir(parents=True, exist_ok=True)
    for c, modality in enumerate(run.modalities):
        source = load_image(files[modality])
        data = volume[c].astype(np.float32)
        if data.shape != tuple(source.shape):
            raise RuntimeError(
                f"{item['subject_id']}: reconstruction {data.shape} is not the grid "
                f"{tuple(source.shape)} of {files[modality]}"
            )
        header = source.header.copy()
        header.set_data_dtype(np.float32)
        header["scl_slope"], header["scl_inter"] = 1.0, 0.0
        nib.save(
            nib.Nifti1Image(data, source.affine, header), folder / f"{item['subject_id']}-{modality}.nii.gz"
        )


# ---- loading ---------------------------------------------------------------------------------------------


def default_device() -> torch.device:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _locate(path: Path) -> tuple[Path, Path, dict[str, Any]]:
    """(run directory, checkpoint, summary or {}) of what `load_run` got."""
    from vae_dynamics.training.run_dir import RunDir, summary_run_dir

    if path.is_dir() and (path / SUMMARY_FILE).is_file():
        path = path / SUMMARY_FILE
    if path.is_file() and path.suffix == ".json":
        summary = json.loads(path.read_text())
        run = summary_run_dir(path, summary)
        return run.path, run.path / summary["best_checkpoint"], summary
    if path.is_file() and path.suffix == ".ckpt":
        run_dir = path.parent.parent if path.parent == RunDir(path.parent.parent).checkpoints else path.parent
        return run_dir, path, {}
    if path.is_dir() and RunDir(path).config.is_file():
        last = RunDir(path).last_checkpoint
        if not last.is_file():
            raise FileNotFoundError(f"{path}: a run directory without checkpoints/last.ckpt")
        log.warning("%s: no %s (training did not finish); using %s", path, SUMMARY_FILE, last)
        return path, last, {}
    raise FileNotFoundError(
        f"{path}: not a trained run (expected an experiment folder or run directory with {SUMMARY_FILE}, "
        "a train_summary.json, a run directory with config_resolved.yaml, or a .ckpt file)"
    )


def load_run(path: str | os.PathLike[str], device: str | torch.device | None = None) -> TrainedRun:
    """A finished run, ready to use: the experiment folder (results/exp2), the run directory, its
    train_summary.json, a checkpoint, or an exported MONAI bundle (folder or zip). The model is in eval
    mode on `device` (CUDA when present). The summary's checkpoint is the one training chose
    (`checkpoint_choice`); a run directory without a summary gives its last.ckpt."""
    import torch

    from vae_dynamics.bundle import is_bundle, read_bundle

    device = torch.device(device) if device is not None else default_device()
    if is_bundle(Path(path)):
        run_dir, config, checkpoint, summary = read_bundle(Path(path))
        prefix = ""  # a bundle's models/model.pt is the model's own state dict
    else:
        from vae_dynamics.training.run_dir import RunDir

        run_dir, checkpoint, summary = _locate(Path(path))
        config, prefix = RunDir(run_dir).config, "model."
    if not config.is_file():
        raise FileNotFoundError(f"{run_dir}: no config_resolved.yaml beside the checkpoint {checkpoint}")
    cfg = load_config(config)
    experiment = experiments.of(cfg)
    summary = summary or {
        "experiment": experiment.name,
        "run_dir": str(run_dir),
        "best_checkpoint": os.path.relpath(checkpoint, run_dir),
    }
    # The model alone, without its LightningModule: export, encoding and evaluation need no Lightning.
    try:
        loaded = torch.load(checkpoint, map_location=device, weights_only=True)
        state_dict = loaded["state_dict"] if prefix else loaded
    except (RuntimeError, EOFError, OSError, KeyError, pickle.UnpicklingError) as exc:
        raise DamagedCheckpointFileError(
            f"{checkpoint}: cannot be read as a checkpoint ({type(exc).__name__}: {exc}); it may be "
            "truncated or not a checkpoint of this package"
        ) from None
    state = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    from vae_dynamics import models

    model = models.build(cfg)
    try:
        model.load_state_dict(state)  # strict: a checkpoint of another architecture fails here, by key
    except RuntimeError as exc:
        raise DamagedCheckpointFileError(
            f"{checkpoint}: does not fit the {experiment.name} model of {config}: {exc}"
        ) from None
    return TrainedRun(cfg, model.to(device).eval(), run_dir, summary, device, checkpoint)
