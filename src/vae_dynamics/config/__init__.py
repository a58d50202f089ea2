"""Experiment configs: the shipped YAMLs, their typed schema (schema.py) and the loader."""

from vae_dynamics.config.loader import (
    config_path,
    diff_keys,
    json_schema,
    load_config,
    save_config,
    validate_config,
)
from vae_dynamics.config.schema import ConfigError, ExperimentConfig

__all__ = [
    "ConfigError",
    "ExperimentConfig",
    "config_path",
    "diff_keys",
    "json_schema",
    "load_config",
    "save_config",
    "validate_config",
]
