"""Rule done: a marker that names what the experiment produced."""

import json
from pathlib import Path

from vae_dynamics.io import write_text
from vae_dynamics.pipeline.steps import log_to

with log_to(snakemake.log[0]):
    summary = json.loads(Path(snakemake.input.summary).read_text())
    lines = [f"{k}: {v}" for k, v in summary.items()]
    lines += [f"recon_panels: {snakemake.input.panels}", f"loss_curves: {snakemake.input.curves}"]
    lines += [f"evaluation: {snakemake.input.evaluation}"]
    write_text("\n".join(lines) + "\n", snakemake.output[0])
