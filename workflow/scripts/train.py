"""Rules train_exp2 / train_exp1: train (or resume) the experiment, then write the summary."""

from pathlib import Path

import torch

from vae_dynamics.gpus import claim_gpus
from vae_dynamics.workflow import log_to, train_step

with log_to(snakemake.log[0]), claim_gpus(snakemake.params.config["train"]["devices"]):
    torch.set_num_threads(snakemake.threads)
    summary = train_step(
        snakemake.params.config, snakemake.params.run_dir, str(Path(snakemake.input.train).parent),
        snakemake.output.summary, snakemake.output.metrics,
    )  # fmt: skip
    print(summary)
