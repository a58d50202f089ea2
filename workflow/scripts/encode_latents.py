"""Rule encode_latents: μ and log σ² of every train and val subject from the chosen checkpoint."""

import torch

from vae_dynamics.evaluation.encode import encode_latents
from vae_dynamics.gpus import claim_gpus
from vae_dynamics.pipeline.steps import log_to

with log_to(snakemake.log[0]), claim_gpus(1):
    torch.set_num_threads(snakemake.threads)
    table = encode_latents(
        snakemake.input.summary, snakemake.output[0], batch_size=snakemake.params.batch_size,
        workers=min(4, snakemake.threads) if torch.cuda.is_available() else 0,
    )  # fmt: skip
    print(f"{len(table)} subjects -> {snakemake.output[0]}")
