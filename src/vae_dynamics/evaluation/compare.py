"""Evaluated runs side by side (metrics, final loss terms, epochs, parameters): the workflow's
compare_experiments (Exp1 and Exp2), and `vae-dynamics compare RUN...` (any runs)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from vae_dynamics.evaluation import LATENT_SCALARS, RECON_SCALARS, format_value
from vae_dynamics.io import output_dir, write_csv, write_text

SCALARS = (*LATENT_SCALARS, "n_subjects", "parameters", "epochs")


def flatten_metrics(
    metrics: Mapping[str, Any], summary: Mapping[str, Any], epochs: pd.DataFrame
) -> dict[str, Any]:
    """One flat row of every number of metrics.json, the final epoch's loss terms and the run's facts."""
    row: dict[str, Any] = {key: metrics.get(key) for key in SCALARS}
    for factor, value in metrics.get("mig_per_factor", {}).items():
        row[f"mig[{factor}]"] = value
    for factor, value in metrics.get("sap_per_factor", {}).items():
        row[f"sap[{factor}]"] = value
    for factor, value in (metrics.get("dci_informativeness_per_factor") or {}).items():
        row[f"dci_informativeness[{factor}]"] = value
    recon = metrics.get("reconstruction", {})
    for key in RECON_SCALARS:
        row[key] = recon.get(key)
    for modality, values in recon.get("per_modality", {}).items():
        for key, value in values.items():
            row[f"{key}[{modality}]"] = value
    for j, value in enumerate(metrics.get("kl_per_dim", [])):
        row[f"kl[z{j}]"] = value
    last = epochs.iloc[-1]
    for column in epochs.columns:
        if column.startswith(("train/", "val/")):
            row[f"final {column}"] = float(last[column])
    row["checkpoint"] = Path(summary["best_checkpoint"]).name
    row["checkpoint_choice"] = summary.get("checkpoint_choice")
    return row


def _provenance_line(prov: Mapping[str, Any]) -> str:
    """One line: commit (dirty?), versions, GPUs, host and dates of the training run."""
    run = prov.get("training")
    if not run:
        return "no provenance.json (a run from before it was recorded)"
    commit = (run.get("git_commit") or "no git checkout")[:12] + (
        " (uncommitted changes)" if run.get("git_dirty") else ""
    )
    packages = ", ".join(f"{k} {v}" for k, v in run.get("packages", {}).items() if v and k != "vae_dynamics")
    gpus = ", ".join(run.get("gpus") or []) or "no GPU"
    when = f"{run.get('started')} – {run.get('finished')}"
    return f"commit {commit}; {packages}; CUDA {run.get('cuda')}; {gpus}; {run.get('host')}, {when}"


def compare_experiments(
    runs: Mapping[str, Mapping[str, str | os.PathLike[str]]],
    out_md: str | os.PathLike[str],
    out_csv: str | os.PathLike[str],
) -> pd.DataFrame:
    """runs: name -> {"metrics": metrics.json, "summary": train_summary.json, "epochs": metrics.csv,
    "traversals": traversals.png}. Writes summary.csv (one column per experiment) and summary.md."""
    columns, notes, factor_files, traversed, provenance_lines = {}, [], set(), set(), []
    for name, files in runs.items():
        metrics = json.loads(Path(files["metrics"]).read_text())
        factor_files.add(metrics.get("factors_csv", "the subject factors"))
        traversed.add(len(metrics.get("traversals", {}).get("dims", [])))
        summary = json.loads(Path(files["summary"]).read_text())
        columns[name] = flatten_metrics(metrics, summary, pd.read_csv(files["epochs"]))
        notes.append(
            f"- **{name}** ({summary['experiment']}): checkpoint `{Path(summary['best_checkpoint']).name}` — "
            f"{summary.get('checkpoint_choice', 'best val/loss')}"
        )
        provenance_lines.append(f"- **{name}**: {_provenance_line(metrics.get('provenance') or {})}")
    table = pd.DataFrame(columns)
    table.index.name = "quantity"
    write_csv(table.reset_index(), out_csv)

    text = _comparison_markdown(
        table, runs, notes, provenance_lines, factor_files, traversed, out_md, out_csv
    )
    write_text(text, out_md)
    return table


# What an evaluated run's folder (results/<run>/) holds for the comparison.
RUN_FILES = {
    "metrics": "evaluation/metrics.json",
    "summary": "train_summary.json",
    "epochs": "metrics.csv",
    "traversals": "evaluation/traversals.png",
}


def compare_runs(
    folders: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], force: bool = False
) -> pd.DataFrame:
    """Any evaluated runs (folders like results/exp2, each named by its folder) side by side in
    `out`/summary.md and summary.csv; a missing file is named before anything is written."""
    runs: dict[str, dict[str, Path]] = {}
    for folder in map(Path, folders):
        files = {key: folder / rel for key, rel in RUN_FILES.items()}
        missing = [str(p) for p in files.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{folder}: not an evaluated run, missing {', '.join(missing)}")
        name = folder.resolve().name if folder.resolve().name not in runs else str(folder)
        runs[name] = files
    with output_dir(out, "compare", {"a compared run": list(folders)}, force=force) as tmp:
        return compare_experiments(runs, tmp / "summary.md", tmp / "summary.csv")


def _comparison_markdown(
    table: pd.DataFrame,
    runs: Mapping[str, Mapping[str, str | os.PathLike[str]]],
    notes: list[str],
    provenance_lines: list[str],
    factor_files: set[str],
    traversed: set[int],
    out_md: str | os.PathLike[str],
    out_csv: str | os.PathLike[str],
) -> str:
    """summary.md: checkpoints, provenance, the latent-space, reconstruction and loss tables, traversals."""
    headline = [k for k in (*SCALARS, *RECON_SCALARS) if k in table.index]
    recon_rows = [k for k in table.index if k.startswith(("mse[", "psnr[", "ssim["))]
    loss_rows = [k for k in table.index if k.startswith("final ")]
    names = list(table.columns)

    def md_table(rows: list[str]) -> list[str]:
        lines = ["| quantity | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        lines += [f"| {k} | " + " | ".join(format_value(table.at[k, n]) for n in names) + " |" for k in rows]
        return lines

    lines = [
        f"# {' vs '.join(names)}",
        "",
        "Disentanglement is measured on the posterior means μ against the subject factors "
        f"({', '.join(sorted(factor_files))}); higher MIG, DCI and SAP are better. Reconstruction quality is "
        "measured on the validation subjects inside the brain mask. `val_mse_over_zero_predictor` and "
        "`val_mse_over_mean_volume` < 1 mean better than an all-zero image and than the training-mean "
        "volume; "
        "`z_dependence` is the error with another subject's code over the error with its own "
        "(1 = the decoder ignores z).",
        "",
        "## Checkpoints",
        *notes,
        "",
        "## Provenance (training run)",
        *provenance_lines,
        "",
        "## Latent space",
        *md_table(headline),
        "",
        "## Reconstruction (validation, inside the brain)",
        *md_table(recon_rows),
        "",
        "## Final epoch loss terms",
        *md_table(loss_rows),
        "",
        f"## Traversals (the {'/'.join(str(n) for n in sorted(traversed))} dimensions with the largest KL)",
    ]
    for name, files in runs.items():
        rel = os.path.relpath(files["traversals"], Path(out_md).parent)
        lines += [f"### {name}", f"![{name} traversals]({rel})", ""]
    lines.append(f"Every number, per factor and per dimension: `{Path(out_csv).name}`.")
    return "\n".join(lines) + "\n"
