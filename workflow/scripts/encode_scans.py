"""Rule encode_scans: latents (and reconstructions) of the scans of one `encode:` entry."""

import torch

from vae_dynamics.gpus import claim_gpus
from vae_dynamics.pipeline.steps import encode_step, log_to

with log_to(snakemake.log[0]), claim_gpus(1):  # on CUDA when present
    torch.set_num_threads(snakemake.threads)
    n = encode_step(
        snakemake.input.summary, snakemake.input.source, snakemake.output.latents,
        snakemake.params.reconstruct, snakemake.params.traverse,
        workers=min(4, snakemake.threads) if torch.cuda.is_available() else 0,
    )  # fmt: skip
    print(f"{n} scans -> {snakemake.output.latents}")
