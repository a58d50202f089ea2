"""Experiment configs: the shipped YAMLs, their typed schema (schema.py) and the loader."""

from vae_dynamics.config.loader import (
    config_path,
    diff_keys,
    experiment_name,
    json_schema,
    load_config,
    save_config,
    validate_config,
)
from vae_dynamics.config.schema import ConfigError

__all__ = [
    "ConfigError",
    "config_path",
    "diff_keys",
    "experiment_name",
    "json_schema",
    "load_config",
    "save_config",
    "validate_config",
]
