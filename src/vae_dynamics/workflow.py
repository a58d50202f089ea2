"""The steps the Snakemake rules call: config resolution, run identity, training and export."""

from __future__ import annotations

import contextlib
import logging
import os
import time
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from vae_dynamics.config import ConfigError, load_config
from vae_dynamics.config.identity import CONTRACT_KEYS, run_identity
from vae_dynamics.io import atomic_dir, write_json, write_text


@contextlib.contextmanager
def log_to(path: str | os.PathLike[str]) -> Iterator[None]:
    """Send stdout, stderr and log records of a workflow step to its Snakemake log file.

    Every process appends (O_APPEND: writes never overwrite each other), rank 0 after a header line.
    DDP processes of rank > 0 (Lightning re-runs the step's script for them, or srun starts them with
    rank 0) append to the same log; nothing truncates it, so no process erases another's lines.
    """
    from vae_dynamics.training.run import launched_rank

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", buffering=1) as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        rank = launched_rank()
        fh.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} {'start' if rank == 0 else f'rank {rank}'} "
                 f"(pid {os.getpid()}) ====\n")  # fmt: skip
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            yield
        except BaseException:
            traceback.print_exc()
            raise
        finally:
            root.removeHandler(handler)


EXPERIMENT_KEYS = ("exp1", "exp2")  # per-experiment override blocks inside the workflow's `overrides`
# Keys that define the data both experiments see (SPEC §3: no differences in the data pipeline).
SHARED_DATA_KEYS = {f"data.{k}" for k in (*CONTRACT_KEYS, "root_dir", "cache_dir", "val_split")}


def experiment_overrides(overrides: Mapping[str, Any] | str | None, experiment: str | None) -> dict[str, Any]:
    """Shared dotted overrides plus those under `overrides[experiment]` (which win)."""
    if isinstance(overrides, str):  # `--config 'overrides={...}'` arrives as a string
        overrides = yaml.safe_load(overrides) or {}
    overrides = dict(overrides or {})
    shared = {k: v for k, v in overrides.items() if k not in EXPERIMENT_KEYS}
    specific = overrides.get(experiment) or {} if experiment else {}
    if not isinstance(specific, Mapping):
        raise ConfigError(f"overrides.{experiment}: expected a mapping of dotted keys, got {specific!r}")
    for key in specific:
        if key in SHARED_DATA_KEYS:
            raise ConfigError(
                f"overrides.{experiment}.{key}: the data and its preprocessing are shared by both "
                "experiments; set this key in the shared overrides"
            )
    return {**shared, **specific}


def resolve_experiment(
    experiment_yaml: str | os.PathLike[str],
    data_root: str | None = None,
    overrides: Mapping[str, Any] | str | None = None,
    cache_dir: str | None = None,
    experiment: str | None = None,
) -> dict[str, Any]:
    """The experiment config with the workflow's data root, cache dir and overrides applied.

    `overrides` holds shared dotted keys and, under `exp1:` / `exp2:`, keys for one experiment only.
    """
    merged = experiment_overrides(overrides, experiment)
    if data_root:
        merged["data.root_dir"] = str(data_root)
    if cache_dir:
        merged["data.cache_dir"] = str(cache_dir)
    try:
        return load_config(experiment_yaml, merged)
    except ConfigError as exc:
        if experiment is None:
            raise
        raise ConfigError(f"experiment {experiment}: {exc}") from None


def config_hash(cfg: Mapping[str, Any]) -> str:
    """Identity of a training run (config/identity.py): what it learns, not how long, fast or where.

    Raising train.max_epochs or changing data.num_workers keeps the run directory (the run continues);
    a change of the model, loss, data contract, splits seed, optimiser or precision starts a new one.
    """
    return run_identity(cfg)


def train_step(
    cfg: dict[str, Any],
    run_dir: str | os.PathLike[str],
    splits_dir: str,
    summary_path: str,
    metrics_path: str,
) -> dict[str, Any]:
    """Train (resuming if the run directory has a checkpoint), then write the small final outputs."""
    from vae_dynamics.training.run import train
    from vae_dynamics.viz.curves import read_metrics

    run_dir = Path(run_dir)
    resume = (run_dir / "checkpoints" / "last.ckpt").is_file()
    # On resume the splits are compared with the run's own (re-indexed data is refused, as on the CLI).
    summary = train(cfg, run_dir, resume=resume, splits_dir=splits_dir)
    if "best_checkpoint" not in summary:  # a DDP process of rank > 0: rank 0 writes the outputs
        return summary
    summary["resumed"] = resume
    metrics = read_metrics(run_dir / "logs")
    write_text(metrics.to_csv(index=False), metrics_path)
    write_json(summary, summary_path)  # last: its existence means training finished
    return summary


def export_step(summary_path: str, panels_dir: str, curves_png: str, device: str | None = None) -> list[Path]:
    """Recon panels of every validation subject from the chosen checkpoint, and the loss curves."""
    import torch

    from vae_dynamics.evaluation.encode import load_run, split_datasets
    from vae_dynamics.viz.curves import plot_loss_curves
    from vae_dynamics.viz.recon import save_recon_panel

    run = load_run(summary_path, device)
    val = split_datasets(run)["val"]
    with atomic_dir(panels_dir) as tmp, torch.no_grad():
        for i in range(len(val)):
            item = val[i]
            mu, _ = run.model.encoder(item["image"][None].to(run.device).float())
            x_hat = run.model.decode(mu)[0]
            save_recon_panel(item["image"], x_hat, tmp / f"{item['subject_id']}.png", run.cfg["data"]["modalities"],
                             title=f"{item['subject_id']} — chosen checkpoint ({run.summary['experiment']})")  # fmt: skip
    plot_loss_curves(run.run_dir / "logs", curves_png)
    return sorted(Path(panels_dir).glob("*.png"))
