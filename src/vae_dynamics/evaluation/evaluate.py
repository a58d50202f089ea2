"""evaluate_latents: disentanglement metrics, reconstruction quality, correlations and traversals of a run.

    vae-dynamics evaluate --summary results/exp2/train_summary.json \
        --latents results/exp2/latents.csv --factors results/factors/factors.csv --out results/exp2/evaluation

Writes metrics.json, recon_metrics.csv, factor_correlations.png, traversals.png and traversals/z<j>.png
into the output folder, which is assembled beside it and renamed into place when complete.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from monai.metrics import MSEMetric, PSNRMetric
from monai.metrics.regression import compute_ssim_and_cs
from scipy.stats import rankdata

from vae_dynamics.data import read_subject_table
from vae_dynamics.data.cache import SubjectDataset
from vae_dynamics.evaluation import N_TRAVERSED
from vae_dynamics.evaluation.encode import split_datasets
from vae_dynamics.evaluation.metrics import compute_metrics, is_categorical
from vae_dynamics.evaluation.traversals import (
    TRAVERSAL_MODALITIES,
    TRAVERSAL_VALUES,
    TRAVERSAL_VIEWS,
    traversal_overview,
    tumour_centre,
)
from vae_dynamics.inference import TrainedRun, latent_columns, load_run
from vae_dynamics.io import Protected, output_dir, write_csv, write_json
from vae_dynamics.models.diagnostics import ACTIVE_UNIT_THRESHOLD
from vae_dynamics.provenance import finish_provenance, provenance
from vae_dynamics.training.run_dir import RunDir
from vae_dynamics.viz.latents import (
    plot_factor_correlations,
    plot_kl_per_dim,
    plot_latent_map,
    plot_traversal_dimension,
)

log = logging.getLogger(__name__)
MAP_FACTORS = 6  # panels of latent_map.png: the first continuous factors
SSIM_WINDOW = 7


def masked_quality(x_hat: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """MSE, PSNR (peak 1.0: intensities are scaled into [0, 1]) and SSIM of one channel inside `mask`.

    x_hat, x: [X, Y, Z]; mask: bool [X, Y, Z]. MSE and PSNR use MONAI's metrics on the masked voxels;
    SSIM is MONAI's local SSIM map (7³ Gaussian window) averaged over the mask.
    """
    inside_hat, inside = x_hat[mask].view(1, 1, -1), x[mask].view(1, 1, -1)
    mse = float(torch.as_tensor(MSEMetric()(inside_hat, inside)).mean())
    psnr = float(torch.as_tensor(PSNRMetric(max_val=1.0)(inside_hat, inside)).mean())
    r = SSIM_WINDOW // 2  # the map covers the voxels whose window lies inside the volume
    # only the mask's bounding box (+ r) enters the windows of its voxels: the same values, less work
    if mask.any():
        nz = mask.nonzero()
        box = tuple(slice(max(int(lo) - r, 0), int(hi) + r + 1) for lo, hi in zip(nz.min(0)[0], nz.max(0)[0]))
        if all(b.stop - b.start >= SSIM_WINDOW for b in box):
            x_hat, x, mask = x_hat[box], x[box], mask[box]
    ssim_map, _ = compute_ssim_and_cs(
        x_hat[None, None],
        x[None, None],
        spatial_dims=3,
        kernel_size=[SSIM_WINDOW] * 3,
        kernel_sigma=[1.5] * 3,
        data_range=1.0,
    )
    inner = mask[r:-r, r:-r, r:-r]
    ssim = float(ssim_map[0, 0][inner].mean()) if inner.any() else float("nan")
    return {"mse": mse, "psnr": psnr, "ssim": ssim}


@torch.inference_mode()
def mean_volume(dataset: SubjectDataset) -> torch.Tensor:
    """The voxelwise mean of a dataset's images [4, D, H, W]: the best predictor that ignores the code."""
    if len(dataset) == 0:
        raise ValueError("the mean volume of an empty dataset")
    total = dataset[0]["image"].float().clone()
    for i in range(1, len(dataset)):
        total.add_(dataset[i]["image"].float())
    return total / len(dataset)


@torch.inference_mode()
def reconstruction_quality(
    run: TrainedRun,
    val_dataset: SubjectDataset,
    train_mean: torch.Tensor | None = None,
    other_dataset: SubjectDataset | None = None,
) -> tuple[pd.DataFrame, dict[str, Any], list[dict]]:
    """Per validation subject and modality: quality of x̂ = decode(μ) inside the brain; and the items seen.

    The summary holds the validation MSE over the all-zero predictor's, over the training-mean
    volume's (`train_mean`; < 1 means the code adds something to the average head), and z_dependence:
    mean over subjects of MSE(x_i, decode(μ_{i+1})) / MSE(x_i, decode(μ_i)), the next validation
    subject's code in place of its own (1 = the decoder ignores z); with a single validation subject,
    the code of the first subject of `other_dataset` (the training split).
    """
    modalities = run.cfg.data.modalities
    rows, items, ratios, errors, mean_errors = [], [], [], [], []
    for i in range(len(val_dataset)):
        item = val_dataset[i]
        x = item["image"].float()
        mu, _ = run.model.encoder(x[None].to(run.device))
        x_hat = run.model.decode(mu)[0].float().cpu()
        brain = x.abs().amax(dim=0) > 0  # background is exactly 0 after preprocessing
        for c, name in enumerate(modalities):
            rows.append(
                {"subject_id": item["subject_id"], "modality": name, **masked_quality(x_hat[c], x[c], brain)}
            )
        errors.append(float(torch.sum((x_hat - x) ** 2)))
        ratios.append(float(torch.mean((x_hat - x) ** 2) / torch.clamp(torch.mean(x**2), min=1e-12)))
        if train_mean is not None:
            mean_errors.append(float(torch.sum((train_mean - x) ** 2)))
        items.append({"subject_id": item["subject_id"], "mu": mu[0].cpu(), "seg": item["seg"]})
    dependence = []
    others = [it["mu"] for it in items]
    if len(items) == 1 and other_dataset is not None and len(other_dataset):  # one val subject: a train code
        others.append(run.model.encoder(other_dataset[0]["image"].float()[None].to(run.device))[0][0].cpu())
    if len(others) >= 2:
        for i in range(len(items)):
            x = val_dataset[i]["image"].float()
            other = others[(i + 1) % len(others)][None].to(run.device)
            swapped = float(torch.sum((run.model.decode(other)[0].float().cpu() - x) ** 2))
            dependence.append(swapped / max(errors[i], 1e-12))
    table = pd.DataFrame(rows, columns=["subject_id", "modality", "mse", "psnr", "ssim"])
    per_modality = {
        name: {k: float(group[k].mean()) for k in ("mse", "psnr", "ssim")}
        for name, group in table.groupby("modality", sort=False)
    }
    summary = {
        "per_modality": per_modality,
        "val_mse_over_zero_predictor": float(np.mean(ratios)),
        "val_mse_over_mean_volume": float(sum(errors) / sum(mean_errors)) if mean_errors else None,
        "z_dependence": float(np.mean(dependence)) if dependence else None,
    }
    return table, summary, items


def factor_correlations(
    latents: pd.DataFrame, factors: pd.DataFrame, dims: list[int]
) -> tuple[np.ndarray, list[str]]:
    """|Spearman ρ| [len(dims), n_factors] of μ_j against every factor with at least two values."""
    table = latents.merge(factors, on="subject_id", how="inner")
    names, columns = [], []
    for name in factors.columns:
        if name in ("subject_id", "split"):
            continue
        values = table[name]
        if values.dropna().nunique() < 2:
            continue
        coded = (
            pd.Series(pd.factorize(values)[0], index=values.index).where(values.notna())
            if is_categorical(values)
            else values.astype(float)
        )
        names.append(name)
        columns.append(coded.to_numpy(dtype=float))
    mu = table[[f"mu_{dim}" for dim in dims]].to_numpy(dtype=float)  # [subjects, dims]
    rho = np.zeros((len(dims), len(names)))
    for k, v in enumerate(columns):
        present = ~np.isnan(v)
        rho[:, k] = np.abs(spearman(mu[present], v[present]))
    return rho, names


def spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's ρ of every column of x [n, d] with y [n] (average ranks for ties, as scipy's
    spearmanr), in one pass; 0 for a constant column or a constant y."""
    rx, ry = rankdata(x, axis=0), rankdata(y)
    rx, ry = rx - rx.mean(axis=0), ry - ry.mean()
    norm = np.sqrt((rx**2).sum(axis=0) * (ry**2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (rx * ry[:, None]).sum(axis=0) / norm
    return np.where(norm > 0, np.clip(rho, -1.0, 1.0), 0.0)


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def evaluate_run(
    summary_path: str | os.PathLike[str],
    latents_csv: str | os.PathLike[str],
    factors_csv: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    device: str | None = None,
    n_traversed: int = N_TRAVERSED,
    force: bool = False,
) -> dict[str, Any]:
    """Write the evaluation folder of one run (see the module docstring); return metrics.json's content.

    `out_dir` may not hold the inputs or lie inside the run directory; an existing one is replaced only
    when it is empty or a previous evaluation (io.output_dir), or with `force`.

    n_traversed: how many dimensions (largest KL first) are drawn as traversals.
    """
    if n_traversed < 1:
        raise ValueError(
            f"n_traversed (--traversed-dims, evaluation.traversed_dims) must be >= 1, got {n_traversed}"
        )
    start = time.perf_counter()
    from vae_dynamics.training.run_dir import summary_run_dir

    inputs: Protected = {
        "an input": [summary_path, latents_csv, factors_csv],
        "the run directory": [summary_run_dir(summary_path).path],
    }
    with output_dir(out_dir, "evaluate", inputs, force) as tmp:
        metrics = _evaluate_into(tmp, summary_path, latents_csv, factors_csv, device, n_traversed)
        metrics["seconds"] = round(time.perf_counter() - start, 1)
        write_json(metrics, tmp / "metrics.json")
    log.info("evaluation of %s -> %s (%.1f s)", metrics["experiment"], out_dir, metrics["seconds"])
    return metrics


def _evaluate_into(
    tmp: Path,
    summary_path: str | os.PathLike[str],
    latents_csv: str | os.PathLike[str],
    factors_csv: str | os.PathLike[str],
    device: str | None,
    n_traversed: int,
) -> dict[str, Any]:
    """Every file of the evaluation folder but metrics.json into `tmp`; return the metrics."""
    (tmp / "traversals").mkdir()
    run = load_run(summary_path, device)
    experiment = run.summary["experiment"]
    latents, factors = read_subject_table(latents_csv), read_subject_table(factors_csv)

    metrics: dict[str, Any] = {
        "experiment": experiment,
        "checkpoint": run.summary["best_checkpoint"],
        "checkpoint_choice": run.summary.get("checkpoint_choice"),
        "epochs": run.summary.get("epochs"),
        "parameters": int(sum(p.numel() for p in run.model.parameters())),
        "factors_csv": str(factors_csv),
        "provenance": {
            "training": _read_json(RunDir(run.run_dir).provenance),  # runs from before it: None
            "evaluation": finish_provenance(provenance()),
        },
    }
    metrics.update(compute_metrics(latents, factors))

    datasets = split_datasets(run)
    recon_table, recon_summary, val_items = reconstruction_quality(
        run, datasets["val"], mean_volume(datasets["train"]), other_dataset=datasets["train"]
    )
    write_csv(recon_table, tmp / "recon_metrics.csv")
    metrics["reconstruction"] = recon_summary  # val_mse_over_{zero_predictor,mean_volume}, z_dependence

    kl, order, ranked_by = _latent_figures(tmp, experiment, latents, factors, metrics)
    metrics["traversals"] = _traversal_figures(tmp, run, val_items, kl, order, ranked_by, n_traversed)
    return metrics


def _latent_figures(
    tmp: Path, experiment: str, latents: pd.DataFrame, factors: pd.DataFrame, metrics: dict[str, Any]
) -> tuple[np.ndarray, list[int], str]:
    """factor_correlations.png, kl_per_dim.png, latent_map.png (and metrics["factor_correlations"]);
    the dimensions' KL, their order (largest first) and what ranked them."""
    if "kl_per_dim" in metrics:  # latents with logvar_* columns: rank dimensions by their KL
        kl, ranked_by = np.asarray(metrics["kl_per_dim"]), "kl"
    else:  # μ only (e.g. latents from another encoder): rank by the between-subject variance of μ
        kl, ranked_by = latents[latent_columns(latents, "mu_")].var().to_numpy(), "var(mu)"
    order = [int(j) for j in np.argsort(-kl, kind="stable")]
    rho, names = factor_correlations(latents, factors, order)
    metrics["factor_correlations"] = {
        "dims_ranked_by": ranked_by,
        "dims_by_kl": order,
        "factors": names,
        "max_abs_spearman_per_factor": {n: float(rho[:, k].max()) for k, n in enumerate(names)},
    }
    plot_factor_correlations(
        rho,
        [f"z{j} ({kl[j]:.2f})" for j in order],
        names,
        tmp / "factor_correlations.png",
        title=f"{experiment}: |Spearman ρ| of μ_j and subject factors ({len(latents)} subjects)",
    )

    mu_all = latents[latent_columns(latents, "mu_")].to_numpy(dtype=float)
    plot_kl_per_dim(
        kl,
        mu_all.var(axis=0),
        ACTIVE_UNIT_THRESHOLD,
        tmp / "kl_per_dim.png",
        title=f"{experiment}: {ranked_by} per latent dimension ({metrics['active_units']} active units)",
    )
    table = latents[["subject_id"]].merge(factors, on="subject_id", how="left")
    main = [n for n in names if not is_categorical(table[n])][:MAP_FACTORS] if names else []
    plot_latent_map(
        mu_all,
        {n: table[n].to_numpy(dtype=float) for n in main},
        tmp / "latent_map.png",
        title=f"{experiment}: μ of {len(latents)} subjects on its two principal axes",
    )

    return kl, order, ranked_by


def _traversal_figures(
    tmp: Path,
    run: TrainedRun,
    val_items: list[dict[str, Any]],
    kl: np.ndarray,
    order: list[int],
    ranked_by: str,
    n_traversed: int,
) -> dict[str, Any]:
    """traversals.png and traversals/z<j>.png of the n_traversed first dimensions of `order`, around the
    validation subject with the largest tumour; what metrics.json records of them."""
    experiment = run.summary["experiment"]
    # Reference: the validation subject with the largest tumour; slices through its tumour centre.
    ref = max(val_items, key=lambda it: int((torch.as_tensor(it["seg"]) > 0).sum()))
    centre = tumour_centre(ref["seg"])
    top = order[:n_traversed]
    title = f"{experiment}: the {len(top)} dimensions with the largest KL, around {ref['subject_id']}"
    slices = traversal_overview(run, ref["mu"], top, kl, centre, tmp / "traversals.png", title)
    for i, dim in enumerate(top):
        plot_traversal_dimension(
            slices[i],
            dim,
            float(kl[dim]),
            TRAVERSAL_VALUES,
            TRAVERSAL_MODALITIES,
            TRAVERSAL_VIEWS,
            tmp / "traversals" / f"z{dim:03d}.png",
            title=f"{experiment}: z{dim} ({ranked_by} {kl[dim]:.2f}) around {ref['subject_id']}",
        )
    return {
        "reference_subject": ref["subject_id"],
        "centre_voxel": list(centre),
        "dims": top,
        "values_prior_sigma": [float(v) for v in TRAVERSAL_VALUES],
    }
