"""Loss curves from the CSV logger's files of a run (logs/version_0/metrics.csv; runs trained with
earlier versions of this package hold one version per start, joined in order)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from vae_dynamics.viz import figure_file

STEP_PREFIX = "train_step/"  # per-step training terms (logged beside the per-epoch train/ means)
# A resume moves the run's metrics.csv aside until it writes it back with its first step
# (training.tracking.RunCSVLogger): a resume stopped before that leaves only this file.
METRICS_ASIDE = "metrics-before-resume.csv"


def metrics_files(logs_dir: str | os.PathLike[str]) -> list[Path]:
    """The metrics files under a run's logs/, oldest version first."""
    folders = sorted(
        {p.parent for p in Path(logs_dir).glob("**/metrics*.csv")}, key=lambda p: (len(str(p)), str(p))
    )
    files = [f / "metrics.csv" if (f / "metrics.csv").is_file() else f / METRICS_ASIDE for f in folders]
    return [f for f in files if f.is_file()]


def read_metrics(logs_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per epoch with every logged epoch metric; later versions (resumes) override earlier."""
    files = metrics_files(logs_dir)
    if not files:
        raise FileNotFoundError(f"no metrics.csv under {logs_dir}")
    frames = [pd.read_csv(f) for f in files]
    df = pd.concat(frames, ignore_index=True)
    df = df.drop(columns=[c for c in df.columns if c.startswith(STEP_PREFIX)])
    df = df.dropna(subset=["epoch"]).groupby("epoch", as_index=False).last()
    return df.sort_values("epoch").reset_index(drop=True)


def read_step_metrics(logs_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per training step with its train_step/* terms (later versions override earlier)."""
    files = metrics_files(logs_dir)
    frames = [pd.read_csv(f) for f in files]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    columns = [c for c in df.columns if c.startswith(STEP_PREFIX)]
    if not columns:
        return pd.DataFrame(columns=["step", "epoch"])
    df = df.dropna(subset=[f"{STEP_PREFIX}loss"])[["step", "epoch", *columns]]
    return df.groupby("step", as_index=False).last().sort_values("step").reset_index(drop=True)


def plot_loss_curves(logs_dir: str | os.PathLike[str], out_png: str | os.PathLike[str]) -> pd.DataFrame:
    """Plot every train/ and val/ term per epoch (one panel per term), the training terms also per step
    (grey, at fractional epochs); return the epoch table."""
    df = read_metrics(logs_dir)
    steps = read_step_metrics(logs_dir)
    if len(steps) and "step" in df:  # each logged step at its fractional epoch (steps may be sparse)
        steps_per_epoch = (df["step"].max() + 1) / len(df)  # epoch rows carry their last step
        steps["x"] = steps["step"] / steps_per_epoch
    terms = sorted({c.split("/", 1)[1] for c in df.columns if c.startswith(("train/", "val/"))})
    ncols = min(3, len(terms))
    nrows = -(-len(terms) // ncols)
    size = (4.2 * ncols, 3.0 * nrows)
    with figure_file(out_png, nrows=nrows, ncols=ncols, figsize=size, squeeze=False) as (fig, axes):
        for ax, term in zip(axes.flat, terms):
            if f"{STEP_PREFIX}{term}" in steps and "x" in steps:
                ax.plot(
                    steps["x"],
                    steps[f"{STEP_PREFIX}{term}"],
                    "-",
                    lw=0.7,
                    alpha=0.4,
                    color="grey",
                    label="train (per step)",
                )
            for stage, style in (("train", "-o"), ("val", "--s")):
                col = f"{stage}/{term}"
                if col in df:
                    ax.plot(df["epoch"], df[col], style, ms=3, label=stage)
            ax.set_title(term)
            ax.set_xlabel("epoch")
            ax.legend(fontsize=8)
        for ax in list(axes.flat)[len(terms) :]:
            ax.axis("off")
        fig.tight_layout()
    return df
