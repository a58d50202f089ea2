"""Rule build_persistent_cache: preprocess every split subject into the PersistentDataset cache."""

from vae_dynamics.data.cache import build_cache
from vae_dynamics.pipeline.plan import data_config
from vae_dynamics.pipeline.steps import log_to

with log_to(snakemake.log[0]):
    data = data_config(snakemake.config)  # params.data: the part of it that decides a rerun
    manifest = build_cache(
        data, [snakemake.input.train, snakemake.input.val], data.cache_dir, snakemake.output.manifest,
        workers=snakemake.threads, progress=False,
    )  # fmt: skip
    print(f"cached {manifest['n_subjects']} subjects in {manifest['cache_dir']} ({manifest['seconds']} s)")
