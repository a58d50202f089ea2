"""Rule subject_factors: tumour volumes and centroid per subject (+ the demo's ground truth)."""

from vae_dynamics.evaluation.factors import subject_factors
from vae_dynamics.pipeline.steps import log_to

with log_to(snakemake.log[0]):
    demo = snakemake.input.demo[0] if snakemake.input.demo else None
    table = subject_factors(snakemake.input.subjects, snakemake.output[0], demo, workers=snakemake.threads)
    print(f"{len(table)} subjects, {table['wt_mm3'].eq(0).sum()} without tumour -> {snakemake.output[0]}")
