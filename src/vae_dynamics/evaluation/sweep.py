"""Aggregate a sweep: every run's metrics, mean ± sd over seeds per grid point, and the two figures.

    results/sweep/summary.csv    one row per run (grid values, seed, every headline number), `missing` runs
    results/sweep/summary.md     per grid point: mean ± sd over seeds, n; the runs that are missing
    results/sweep/tradeoff.png   disentanglement (MIG, DCI) against reconstruction, one point per run,
                                 the mean per grid point, the baseline (Exp1, its own seeds) as the reference
    results/sweep/seeds.png      the spread over seeds per grid point (MIG, DCI, SAP, reconstruction)

Locatello et al. (ICML 2019): disentanglement scores vary with the seed as much as with the method;
read a grid point's mean with its sd and n, never one run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vae_dynamics import experiments
from vae_dynamics.evaluation import LATENT_SCALARS, RECON_SCALARS, format_value
from vae_dynamics.io import atomic_path, write_csv, write_text

HEADLINE = (*LATENT_SCALARS, *RECON_SCALARS)  # per run, in table order
RECON = ("mse", "psnr", "ssim")


def run_row(run: str, spec: Mapping[str, Any], metrics_path: str | os.PathLike[str]) -> dict[str, Any]:
    """One row: the run, its experiment, grid values and seed, and the numbers of its metrics.json."""
    metrics = json.loads(Path(metrics_path).read_text())
    row: dict[str, Any] = {"run": run, "experiment": spec["exp"], "name": spec["name"]}
    for key, value in spec["point"].items():
        row[key] = value
    recon = metrics.get("reconstruction", {})
    for key in HEADLINE:
        row[key] = metrics.get(key, recon.get(key))
    for modality, values in recon.get("per_modality", {}).items():
        for key in RECON:
            row[f"{key}[{modality}]"] = values.get(key)
    row["epochs"] = metrics.get("epochs")
    return row


def grid_keys(runs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The swept dotted keys (seed excluded), in the order of the sweep config."""
    keys: list[str] = []
    for spec in runs.values():
        keys += [k for k in spec["point"] if k != "train.seed" and k not in keys]
    return keys


def _mean_sd(values: pd.Series) -> str:
    values = values.dropna().astype(float)
    if values.empty:
        return "–"
    if len(values) == 1:
        return f"{values.iloc[0]:.3g} (n=1)"
    return f"{values.mean():.3g} ± {values.std(ddof=1):.2g} (n={len(values)})"


def aggregate(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean, sd and n over seeds per (experiment, grid point) for every numeric column."""
    numeric = [c for c in table.columns if c not in ("run", "experiment", "name", "train.seed", *keys)]
    numeric = [c for c in numeric if pd.api.types.is_numeric_dtype(table[c])]
    group = ["experiment", *[k for k in keys if k in table.columns]]
    grouped = table.groupby(group, dropna=False, sort=True)[numeric]
    out = grouped.mean().add_suffix(" mean").join(grouped.std(ddof=1).add_suffix(" sd"))
    out["n"] = grouped.size()
    return out.reset_index()


def _point_label(row: Mapping[str, Any] | pd.Series, keys: list[str]) -> str:
    parts = [
        f"{k.rsplit('.', 1)[-1]}={row[k]:g}"
        if isinstance(row[k], float)
        else f"{k.rsplit('.', 1)[-1]}={row[k]}"
        for k in keys
        if k in row and not pd.isna(row[k])
    ]
    return f"{row['experiment']} " + ", ".join(parts) if parts else str(row["experiment"])


def plot_tradeoff(table: pd.DataFrame, keys: list[str], out_png: str | os.PathLike[str]) -> None:
    """MIG and DCI disentanglement against val MSE over the zero predictor: runs and grid-point means."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    x = "val_mse_over_zero_predictor"
    groups = list(
        table.groupby(["experiment", *[k for k in keys if k in table.columns]], dropna=False, sort=True)
    )
    colours = plt.get_cmap("viridis")(np.linspace(0.1, 0.9, max(1, len(groups))))
    for ax, y, title in zip(axes, ("mig", "dci_disentanglement"), ("MIG", "DCI disentanglement")):
        for (_, frame), colour in zip(groups, colours):
            reference = experiments.get(frame["experiment"].iloc[0]).baseline
            label = _point_label(frame.iloc[0], keys)
            style = dict(color="black", marker="s") if reference else dict(color=colour, marker="o")
            ax.scatter(frame[x], frame[y], s=22, alpha=0.45, **style)
            ax.errorbar(
                frame[x].mean(),
                frame[y].mean(),
                xerr=frame[x].std(ddof=1) if len(frame) > 1 else None,
                yerr=frame[y].std(ddof=1) if len(frame) > 1 else None,
                ms=9,
                mfc="white" if reference else style["color"],
                mec=style["color"],
                ecolor=style["color"],
                fmt=style["marker"],
                capsize=3,
                label=f"{label} (n={len(frame)})",
            )
        ax.set_xlabel("val MSE / MSE of the zero predictor (lower = better reconstruction)")
        ax.set_ylabel(f"{title} (higher = more disentangled)")
        ax.set_title(f"{title} against reconstruction")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle("Sweep: small dots are runs (one per seed), large markers the mean ± sd per grid point")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def plot_seeds(table: pd.DataFrame, keys: list[str], out_png: str | os.PathLike[str]) -> None:
    """Per grid point, every seed's MIG, DCI, SAP and reconstruction: the spread that seeds alone cause."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quantities = (
        ("mig", "MIG"),
        ("dci_disentanglement", "DCI disentanglement"),
        ("sap", "SAP"),
        ("val_mse_over_zero_predictor", "val MSE / zero predictor"),
    )
    groups = list(
        table.groupby(["experiment", *[k for k in keys if k in table.columns]], dropna=False, sort=True)
    )
    labels = [_point_label(frame.iloc[0], keys) for _, frame in groups]
    fig, axes = plt.subplots(1, len(quantities), figsize=(3.6 * len(quantities), 0.5 * len(groups) + 2.8))
    for ax, (column, title) in zip(axes, quantities):
        for i, (_, frame) in enumerate(groups):
            values = frame[column].astype(float)
            ax.scatter(values, np.full(len(values), i), s=26, alpha=0.7)
            if len(values) > 1:
                ax.errorbar(
                    values.mean(), i, xerr=values.std(ddof=1), fmt="|", color="black", capsize=4, ms=14
                )
        ax.set_yticks(range(len(groups)))
        ax.set_yticklabels(labels if ax is axes[0] else [], fontsize=8)
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle("Spread over seeds per grid point (dots: seeds; bar: mean ± sd)")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def summarize_sweep(
    runs: Mapping[str, Mapping[str, Any]],
    results_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
) -> pd.DataFrame:
    """Read results/<run>/evaluation/metrics.json of every run asked for, write the sweep summary.

    Runs without metrics.json (failed, or not run yet) are listed as missing, and the summary is made
    of the others; the table is returned.
    """
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    rows, missing = [], []
    for run, spec in runs.items():
        path = results_dir / run / "evaluation" / "metrics.json"
        if path.is_file():
            rows.append(run_row(run, spec, path))
        else:
            missing.append(run)
    if not rows:
        raise FileNotFoundError(
            f"no run of the sweep has an evaluation yet (looked for {results_dir}/<run>/evaluation/"
            f"metrics.json for {len(runs)} runs)"
        )
    keys = grid_keys(runs)
    table = pd.DataFrame(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(table, out_dir / "summary.csv")
    stats = aggregate(table, keys)
    write_csv(stats, out_dir / "summary_by_point.csv")
    plot_tradeoff(table, keys, out_dir / "tradeoff.png")
    plot_seeds(table, keys, out_dir / "seeds.png")

    write_text(_summary_markdown(table, keys, len(runs), missing), out_dir / "summary.md")
    return table


def _summary_markdown(table: pd.DataFrame, keys: list[str], n_runs: int, missing: list[str]) -> str:
    """summary.md: per grid point mean ± sd over seeds, every run, the two figures."""
    shown = [c for c in (*HEADLINE,) if c in table.columns]
    lines = [
        "# Sweep summary",
        "",
        f"{len(table)} of {n_runs} runs evaluated; swept: {', '.join(keys) or 'seeds only'}; "
        f"seeds: {sorted({int(s) for s in table['train.seed'].dropna()}) if 'train.seed' in table else '–'}.",
        "Per grid point: mean ± sd over seeds (n = runs). Higher MIG, DCI and SAP are more disentangled; "
        "`val_mse_over_zero_predictor` < 1 reconstructs better than an all-zero image; `z_dependence` near 1 "
        "means the decoder ignores z.",
        "",
    ]
    if missing:
        lines += ["## Missing runs (no evaluation/metrics.json)", *[f"- `{run}`" for run in missing], ""]
    group = ["experiment", *[k for k in keys if k in table.columns]]
    lines += [
        "## Per grid point",
        "",
        "| " + " | ".join([*group, "n", *shown]) + " |",
        "|---" * (len(group) + 1 + len(shown)) + "|",
    ]
    for values, frame in table.groupby(group, dropna=False, sort=True):
        values = values if isinstance(values, tuple) else (values,)
        cells = [format_value(v, 3) for v in values] + [str(len(frame))] + [_mean_sd(frame[c]) for c in shown]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Every run", "", "| run | " + " | ".join(shown) + " |", "|---" * (len(shown) + 1) + "|"]
    for row in table.to_dict("records"):
        lines.append(f"| `{row['run']}` | " + " | ".join(format_value(row.get(c), 3) for c in shown) + " |")
    lines += [
        "",
        "![trade-off](tradeoff.png)",
        "",
        "![seeds](seeds.png)",
        "",
        "Per modality (MSE/PSNR/SSIM) and per run: `summary.csv`; mean/sd/n of every number: "
        "`summary_by_point.csv`.",
    ]
    return "\n".join(lines) + "\n"
