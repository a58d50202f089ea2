"""The steps the workflow's jobs run (workflow/scripts/*.py): log redirection, training, export, encoding.

Heavy imports (torch, Lightning, MONAI) are inside the steps: importing this module costs nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vae_dynamics.config.schema import ExperimentConfig
from vae_dynamics.io import LOG_FORMAT, output_dir, write_json, write_text


@contextlib.contextmanager
def log_to(path: str | os.PathLike[str]) -> Iterator[None]:
    """Send stdout, stderr and log records of a workflow step to its Snakemake log file.

    Every process appends (O_APPEND: writes never overwrite each other), rank 0 after a header line.
    DDP processes of rank > 0 (Lightning re-runs the step's script for them, or srun starts them with
    rank 0) append to the same log; nothing truncates it, so no process erases another's lines.
    """
    from vae_dynamics.training.distributed import launched_rank

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", buffering=1) as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        rank = launched_rank()
        fh.write(
            f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} {'start' if rank == 0 else f'rank {rank}'} "
            f"(pid {os.getpid()}) ====\n"
        )
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            yield
        except BaseException as exc:
            traceback.print_exc()
            from vae_dynamics.cli import expected_errors

            if isinstance(exc, expected_errors()):  # the reason, on the console too, in one line
                print(f"{Path(path).stem}: {exc}", file=sys.__stderr__, flush=True)
            raise
        finally:
            root.removeHandler(handler)


def encode_step(
    summary_path: str, source: str, latents_csv: str, reconstruct: bool, traverse: int, workers: int = 0
) -> int:
    """Encode the scans of a sheet or folder with a finished run into the folder of `latents_csv`."""
    from vae_dynamics.evaluation.new_scans import write_encoding
    from vae_dynamics.inference import load_run

    run = load_run(summary_path)
    table = write_encoding(
        run,
        source,
        Path(latents_csv).parent,
        reconstruct=reconstruct,
        traverse=traverse,
        workers=workers,
        progress=True,
    )
    for row in table.attrs["rejected"].itertuples():
        print(f"rejected {row.subject_id}: {row.file}: {row.reason}")
    return len(table)


def train_step(
    cfg: ExperimentConfig,
    run_dir: str | os.PathLike[str],
    splits_dir: str,
    summary_path: str,
    metrics_path: str,
) -> dict[str, Any]:
    """Train (resuming if the run directory has a checkpoint), then write the small final outputs."""
    from vae_dynamics.training.run import train
    from vae_dynamics.training.run_dir import RunDir
    from vae_dynamics.viz.curves import read_metrics

    run_dir = Path(run_dir)
    resume = RunDir(run_dir).has_checkpoint()
    # On resume the splits are compared with the run's own (re-indexed data is refused, as on the CLI).
    summary = train(cfg, run_dir, resume=resume, splits_dir=splits_dir)
    if "best_checkpoint" not in summary:  # a DDP process of rank > 0: rank 0 writes the outputs
        return summary
    summary["resumed"] = resume
    # The run directory relative to the summary: results/ can be moved or mounted elsewhere.
    summary["run_dir"] = Path(
        os.path.relpath(run_dir.resolve(), Path(summary_path).parent.resolve())
    ).as_posix()
    metrics = read_metrics(RunDir(run_dir).logs)
    write_text(metrics.to_csv(index=False), metrics_path)
    write_json(summary, summary_path)  # last: its existence means training finished
    return summary


def export_step(
    summary_path: str,
    panels_dir: str,
    curves_png: str | None,
    device: str | None = None,
    force: bool = False,
) -> list[Path]:
    """Recon panels of every validation subject from the chosen checkpoint, and the loss curves."""
    import torch

    from vae_dynamics.evaluation.encode import split_datasets
    from vae_dynamics.inference import load_run
    from vae_dynamics.training.run_dir import RunDir
    from vae_dynamics.viz.curves import plot_loss_curves
    from vae_dynamics.viz.recon import save_recon_panel

    run = load_run(summary_path, device)
    val = split_datasets(run)["val"]
    inputs = {"the run directory": [run.run_dir]}
    with output_dir(panels_dir, "export-panels", inputs, force=force) as tmp, torch.no_grad():
        for i in range(len(val)):
            item = val[i]
            mu, _ = run.model.encoder(item["image"][None].to(run.device).float())
            with run.autocast():
                x_hat = run.model.decode(mu)[0].float()
            save_recon_panel(
                item["image"],
                x_hat,
                tmp / f"{item['subject_id']}.png",
                run.cfg.data.modalities,
                title=f"{item['subject_id']} — chosen checkpoint ({run.summary['experiment']})",
            )
    if curves_png:
        plot_loss_curves(RunDir(run.run_dir).logs, curves_png)
    return sorted(Path(panels_dir).glob("*.png"))
