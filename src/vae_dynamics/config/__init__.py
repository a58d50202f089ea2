"""Experiment configs: the two YAMLs shipped with the package and their validating loader."""

from vae_dynamics.config.loader import (
    EXPERIMENT_NAMES,
    ConfigError,
    config_path,
    diff_keys,
    experiment_name,
    load_config,
    save_config,
    validate_config,
)

__all__ = [
    "EXPERIMENT_NAMES",
    "ConfigError",
    "config_path",
    "diff_keys",
    "experiment_name",
    "load_config",
    "save_config",
    "validate_config",
]
