"""Rule make_splits: seeded train/val split."""

from pathlib import Path

from vae_dynamics.data.splits import make_splits
from vae_dynamics.pipeline.steps import log_to

with log_to(snakemake.log[0]):
    out_dir = Path(snakemake.output.train).parent
    train, val = make_splits(
        snakemake.input.subjects, out_dir, snakemake.params.val_split, snakemake.params.seed
    )
    print(f"{len(train)} train / {len(val)} val subjects")
