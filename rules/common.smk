# Config loading and validation, and the input functions shared by the rules.
from pathlib import Path

import yaml
from snakemake.utils import min_version, validate

from vae_dynamics.workflow import config_hash, resolve_experiment

min_version("8.0")

validate(config, "../workflow/schemas/config.schema.yaml")

EXPERIMENTS = {"exp2": config["experiment"], "exp1": config["baseline_experiment"]}
DEMO = config.get("demo") or None
DATA_ROOT = "results/demo/data" if DEMO else config.get("data_root")
CACHE_DIR = "results/cache/tensors"

def experiment_config(exp):
    """The resolved experiment config (YAML + data_root + overrides), validated."""
    return resolve_experiment(
        EXPERIMENTS[exp],
        data_root=DATA_ROOT,
        overrides=config.get("overrides"),
        cache_dir=CACHE_DIR,
        experiment=exp,
    )

def data_config():
    """Data section shared by both experiments (the data pipeline is identical)."""
    return experiment_config("exp2")["data"]

def run_dir(exp):
    """Stable run directory per resolved config: a rerun resumes, a changed config starts afresh."""
    return f"results/{exp}/runs/{config_hash(experiment_config(exp))}"

def index_inputs(wildcards):
    return ["results/demo/data/factors.csv"] if DEMO else []
