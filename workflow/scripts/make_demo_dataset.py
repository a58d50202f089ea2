"""Rule make_demo_dataset: BraTS-MEN-format demo subjects from the MNI152 anatomy."""

from vae_dynamics.data.demo import generate
from vae_dynamics.pipeline.steps import log_to

with log_to(snakemake.log[0]):
    p = snakemake.params
    factors = generate(p.out_dir, p.n_subjects, seed=p.seed, workers=snakemake.threads)
    print(f"wrote {len(factors)} demo subjects to {p.out_dir}")
