"""Rule export_recon_panels: panels of the validation subjects from the best checkpoint + loss curves."""

import torch

from vae_dynamics.workflow import export_step, log_to

with log_to(snakemake.log[0]):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    panels = export_step(snakemake.input.summary, snakemake.output.panels, snakemake.output.curves, device)
    print(f"{len(panels)} panels -> {snakemake.output.panels}")
