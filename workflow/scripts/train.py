"""Rules train_exp2 / train_exp1 / train_sweep_run: train (or resume) the run, then write the summary."""

from pathlib import Path

import torch

from vae_dynamics.gpus import claim_gpus
from vae_dynamics.pipeline.plan import experiment_config
from vae_dynamics.pipeline.steps import log_to, train_step

# The run's experiment and dotted keys come from the rule (the sweep is not planned again per job).
cfg = experiment_config(snakemake.config, snakemake.params.experiment, snakemake.params.point)
with log_to(snakemake.log[0]), claim_gpus(cfg.train.devices):
    torch.set_num_threads(snakemake.threads)
    summary = train_step(
        cfg,
        snakemake.params.run_dir,
        str(Path(snakemake.input.train).parent),
        snakemake.output.summary,
        snakemake.output.metrics,
    )
    print(summary)
