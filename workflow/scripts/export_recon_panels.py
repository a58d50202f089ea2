"""Rule export_recon_panels: panels of the validation subjects from the best checkpoint + loss curves."""

from vae_dynamics.gpus import claim_gpus
from vae_dynamics.pipeline.steps import export_step, log_to

with log_to(snakemake.log[0]), claim_gpus(1):  # on CUDA when present
    panels = export_step(snakemake.input.summary, snakemake.output.panels, snakemake.output.curves)
    print(f"{len(panels)} panels -> {snakemake.output.panels}")
