"""Rule sweep_summary: every sweep run's metrics -> results/sweep/{summary.md,csv,tradeoff.png,seeds.png}."""

from pathlib import Path

from vae_dynamics.evaluation.sweep import summarize_sweep
from vae_dynamics.io import write_text
from vae_dynamics.pipeline.steps import log_to

with log_to(snakemake.log[0]):
    out_dir = Path(snakemake.output.md).parent
    table = summarize_sweep(snakemake.params.runs, "results", out_dir)
    print(f"{len(table)} of {len(snakemake.params.runs)} runs summarised -> {out_dir}")
    write_text("\n".join(sorted(snakemake.params.runs)) + "\n", snakemake.output.done)
