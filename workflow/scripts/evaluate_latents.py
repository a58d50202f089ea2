"""Rule evaluate_latents: metrics.json, recon_metrics.csv, factor correlations and traversals."""

from pathlib import Path

import torch

from vae_dynamics.evaluation import printed
from vae_dynamics.evaluation.evaluate import evaluate_run
from vae_dynamics.gpus import claim_gpus
from vae_dynamics.pipeline.steps import log_to

with log_to(snakemake.log[0]), claim_gpus(1):
    torch.set_num_threads(snakemake.threads)
    i = snakemake.input
    out = Path(snakemake.output.metrics).parent
    metrics = evaluate_run(i.summary, i.latents, i.factors, out, n_traversed=snakemake.params.traversed_dims)
    print(printed(metrics))
