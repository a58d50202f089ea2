"""Encode every train and val subject of a finished run to its posterior (μ, log σ²).

    vae-dynamics encode --summary results/exp2/train_summary.json \
        --out results/exp2/latents.csv [--batch-size 8] [--workers 4] [--device cuda]
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import pandas as pd
import torch
from monai.data import DataLoader
from torch.utils.data import Dataset

from vae_dynamics.inference import TrainedRun, load_run
from vae_dynamics.io import write_csv
from vae_dynamics.models import VAE3d
from vae_dynamics.training.run_dir import RunDir

log = logging.getLogger(__name__)


def split_datasets(run: TrainedRun) -> dict[str, Any]:
    """The run's train and val subjects as cached (disk) datasets, in split-CSV order."""
    from vae_dynamics.data.cache import split_dataset

    return {
        split: split_dataset(run.cfg.data, RunDir(run.run_dir).splits, split) for split in ("train", "val")
    }


@torch.inference_mode()
def encode_dataset(
    model: VAE3d, dataset: Dataset, device: torch.device, batch_size: int, workers: int
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(subject ids, μ [n, d], log σ² [n, d]) of every item of a cached split, in batches on `device`
    (new scans: vae_dynamics.inference, through the same `VAE3d.posterior`)."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    ids: list[str] = []
    mus, logvars = [], []
    for batch in loader:
        mu, logvar = model.posterior(batch["image"])
        ids.extend(batch["subject_id"])
        mus.append(mu)
        logvars.append(logvar)
    return ids, torch.cat(mus), torch.cat(logvars)


def latents_table(run: TrainedRun, batch_size: int = 8, workers: int = 0) -> pd.DataFrame:
    """subject_id, split, mu_0..mu_{d-1}, logvar_0..logvar_{d-1} for every train and val subject."""
    frames = []
    for split, dataset in split_datasets(run).items():
        start = time.perf_counter()
        ids, mu, logvar = encode_dataset(run.model, dataset, run.device, batch_size, workers)
        log.info(
            "encoded %d %s subjects on %s in %.1f s", len(ids), split, run.device, time.perf_counter() - start
        )
        d = mu.shape[1]
        frame = pd.DataFrame(mu.numpy(), columns=[f"mu_{k}" for k in range(d)])
        frame = pd.concat(
            [frame, pd.DataFrame(logvar.numpy(), columns=[f"logvar_{k}" for k in range(d)])], axis=1
        )
        frame.insert(0, "split", split)
        frame.insert(0, "subject_id", ids)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def encode_latents(
    summary_path: str | os.PathLike[str],
    out_csv: str | os.PathLike[str],
    device: str | None = None,
    batch_size: int = 8,
    workers: int = 0,
) -> pd.DataFrame:
    """Write latents.csv for the run of `summary_path` (atomically)."""
    run = load_run(summary_path, device)
    table = latents_table(run, batch_size, workers)
    write_csv(table, out_csv)
    return table
