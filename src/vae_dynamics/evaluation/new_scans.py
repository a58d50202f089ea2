"""New scans encoded with a trained run into one folder (`vae-dynamics encode-scans`, the workflow's
encode_scans rule): latents, optional reconstructions in the scans' own space, panels and traversals."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from vae_dynamics.data import SEG_KEY
from vae_dynamics.data.cache import preprocessing_contract
from vae_dynamics.evaluation.metrics import kl_per_dimension
from vae_dynamics.evaluation.traversals import traversal_overview, tumour_centre
from vae_dynamics.inference import (
    Scans,
    TrainedRun,
    code_rows,
    latent_columns,
    native_space,
    save_native,
    with_rejections,
)
from vae_dynamics.io import Protected, output_dir, write_csv, write_json
from vae_dynamics.viz.recon import save_recon_panel


def write_encoding(
    run: TrainedRun,
    source: Scans,
    out_dir: str | os.PathLike[str],
    reconstruct: bool = False,
    panels: bool = True,
    traverse: int = 0,
    batch_size: int = 4,
    workers: int = 0,
    progress: bool = True,
    force: bool = False,
) -> pd.DataFrame:
    """Encode every valid scan of `source` into `out_dir` (written whole, atomically):

    latents.csv        subject_id, the sheet's extra columns, mu_*, logvar_*, checkpoint, run_identity
    rejected.csv       subject_id, file, reason of every scan that failed the checks
    encoding.json      the run, checkpoint, run identity, preprocessing contract, counts
    reconstructions/<id>/<id>-<modality>.nii.gz   (reconstruct) x̂ in the scan's own grid and affine
    panels/<id>.png    (reconstruct, panels) input / recon / |diff| in the model's 128³ space
    traversals/<id>.png (traverse K) the K dimensions of largest mean KL over these scans, around μ

    `out_dir` may not be, contain or lie inside the scans' folders, the sheet's or the run directory. An
    existing `out_dir` is replaced only when it is empty or a previous encoding (io.output_dir), or with
    `force`.
    """
    if traverse < 0:
        raise ValueError(f"traverse must be >= 0, got {traverse}")
    run.check_contract()
    valid, rejected = run.scans(source, workers=max(1, workers))
    files_of = {str(r["subject_id"]): {str(k): v for k, v in r.items()} for r in valid.to_dict("records")}
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    kept: list[dict[str, Any]] = []
    late: list[dict[str, str]] = []  # rejected while encoding
    with output_dir(out_dir, "encode", _inputs(run, source, valid), force) as tmp:
        for batch in run._batches(valid, batch_size, workers, progress, late):
            rows.extend(code_rows(batch))
            if reconstruct:
                _reconstruct(run, batch, files_of, tmp, panels, batch_size)
            if traverse:  # kept small: μ and a seg-based centre per scan
                kept.extend(
                    {
                        "subject_id": it["subject_id"],
                        "mu": it["mu"],
                        "centre": tumour_centre(it[SEG_KEY]) if SEG_KEY in it else None,
                    }
                    for it in batch
                )
        rejected = with_rejections(rejected, late)
        table = run._table(valid, rows, rejected)
        if traverse:
            _traversals(run, table, kept, traverse, tmp / "traversals")
        write_csv(table, tmp / "latents.csv")
        write_csv(rejected, tmp / "rejected.csv")
        counts = {"n_encoded": len(table), "n_rejected": len(rejected)}
        settings = {"reconstructions": reconstruct, "traversed_dims": traverse}
        write_json(_record(run, source, counts, settings, time.perf_counter() - start), tmp / "encoding.json")
    return table


def _inputs(run: TrainedRun, source: Scans, valid: pd.DataFrame) -> Protected:
    """What an encoding's output folder must stay clear of: the run, the sheet's or images folder, and the
    folder of every valid scan's files (find_scans gives them resolved)."""
    if isinstance(source, pd.DataFrame):
        given: list[Path] = []
    elif isinstance(source, str | os.PathLike):
        given = [Path(source)]
    else:
        given = [Path(p) for p in source]
    given = [p.parent if p.is_file() else p for p in given]  # a sheet: its folder
    columns = [c for c in (*run.modalities, SEG_KEY) if c in valid.columns]
    scans = {Path(f).parent for c in columns for f in valid[c] if isinstance(f, str) and f}  # absolute
    return {"the run directory": [run.run_dir], "the input": given, "the folder of a scan": sorted(scans)}


def _record(
    run: TrainedRun, source: Scans, counts: dict[str, int], settings: dict[str, Any], seconds: float
) -> dict[str, Any]:
    """encoding.json: which run, checkpoint and preprocessing encoded what, how, where and how fast."""
    named = str(source) if isinstance(source, (str, os.PathLike)) else "a DataFrame or a list of folders"
    return {
        "run_dir": str(run.run_dir.resolve()),
        "checkpoint": str(run.checkpoint) if run.checkpoint else None,
        "experiment": run.summary.get("experiment"),
        "run_identity": run.identity(),
        "preprocessing_contract": preprocessing_contract(run.cfg.data),
        "source": named,
        **counts,
        **settings,
        "device": str(run.device),
        "seconds": round(seconds, 1),
    }


def _reconstruct(
    run: TrainedRun,
    batch: list[dict],
    files_of: dict[str, dict[str, Any]],
    tmp: Path,
    panels: bool,
    batch_size: int,
) -> None:
    """x̂ of a batch in each scan's own grid (reconstructions/<id>/) and, with `panels`, its 128³ panel."""
    x_hat = run.decode(torch.stack([item["mu"] for item in batch]), batch_size)
    for item, recon in zip(batch, x_hat):
        sid = item["subject_id"]
        save_native(run, item, files_of[sid], native_space(run, item, recon), tmp / "reconstructions" / sid)
        if panels:
            title = f"{sid} — {run.summary.get('experiment', '')}"
            save_recon_panel(
                item["image"].as_tensor(), recon, tmp / "panels" / f"{sid}.png", run.modalities, title=title
            )


def _traversals(run: TrainedRun, table: pd.DataFrame, kept: list[dict[str, Any]], k: int, out: Path) -> None:
    """One figure per scan: the k dimensions of largest mean KL over these scans, traversed around its μ."""
    logvar = table[latent_columns(table, "logvar_")].to_numpy(dtype=float)
    kl = kl_per_dimension(table[latent_columns(table)].to_numpy(dtype=float), logvar)
    top = [int(j) for j in np.argsort(-kl, kind="stable")[:k]]
    size = tuple(run.cfg.data.roi_size)
    for it in kept:
        centre = it["centre"] or tuple(s // 2 for s in size)
        title = f"{it['subject_id']}: the {len(top)} dimensions of largest mean KL over these scans"
        traversal_overview(run, it["mu"], top, kl, centre, out / f"{it['subject_id']}.png", title)
