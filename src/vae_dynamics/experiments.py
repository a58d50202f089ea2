"""The registry of experiments: the one place that lists them and what each is made of.

Every other place (config validation, training, export, evaluation, the workflow, the benchmarks)
reads this table. Adding an experiment (say Exp3): its config model in config/schema.py (the common
sections are there; its model.* fields are its nn.Module's arguments), the nn.Module under models/,
its LightningModule, its YAML next to the others (config/exp3_<name>.yaml), and one `Experiment`
record below.

Light on purpose (no torch): the model and module classes are named by import path and loaded when
a step needs them, so that `snakemake -n` can read the registry on a login node.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vae_dynamics.config.schema import ConfigError, Exp1Config, Exp2Config, ExperimentConfig, variant_of

CONFIG_DIR = Path(__file__).resolve().parent / "config"


# ---- the registry ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Experiment:
    """One experiment: how it is named, configured, built and trained."""

    key: str  # short name: results/<key>/, overrides.<key>, bench tables (exp1, exp2)
    name: str  # run directories (<timestamp>_<name>), the YAML file (config/<name>.yaml), logger name
    title: str  # for figures and reports
    config_model: type[ExperimentConfig]
    model_class: str  # "module:Class" of the nn.Module
    lit_module: str  # "module:Class" of the LightningModule
    beta: str  # the warmed-up weight: loss.<beta>_target, reached after loss.<beta>_annealing_epochs
    workflow_key: str  # key of the workflow config (config/config.yaml) naming its YAML
    baseline: bool = False  # the reference the others are compared with (sweep figures)

    @property
    def variant(self) -> str:
        """model.variant in its YAML (the Literal of its config model)."""
        return variant_of(self.config_model)

    @property
    def yaml_path(self) -> Path:
        return CONFIG_DIR / f"{self.name}.yaml"

    def model_cls(self) -> type:
        return _load(self.model_class)

    def lit_cls(self) -> type:
        return _load(self.lit_module)

    def warmup_epochs(self, cfg: ExperimentConfig) -> int:
        return int(getattr(cfg.loss, f"{self.beta}_annealing_epochs"))

    def beta_target(self, cfg: ExperimentConfig) -> float:
        """The warmed-up β's value after the warm-up (loss.<β>_target)."""
        return float(getattr(cfg.loss, f"{self.beta}_target"))

    def model_kwargs(self, cfg: ExperimentConfig) -> dict[str, Any]:
        """Constructor keywords of the model: every model.* key but the variant (the config model's fields
        are the model's arguments), and train.gradient_checkpointing."""
        kwargs = cfg.model.model_dump(exclude={"variant"})
        return {**kwargs, "gradient_checkpointing": cfg.train.gradient_checkpointing}


def _load(path: str) -> type:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


EXPERIMENTS: dict[str, Experiment] = {
    e.key: e
    for e in (
        Experiment(
            key="exp2",
            name="exp2_tcvae_sbd",
            title="Exp2 β-TCVAE + SBD",
            config_model=Exp2Config,
            model_class="vae_dynamics.models.vae.tcvae_sbd:TCVAESBD",
            lit_module="vae_dynamics.training.lit_modules:TCVAELitModule",
            beta="beta_tc",
            workflow_key="experiment",
        ),
        Experiment(
            key="exp1",
            name="exp1_baseline_vae",
            title="Exp1 baseline VAE",
            config_model=Exp1Config,
            model_class="vae_dynamics.models.vae.baseline_vae:BaselineVAE",
            lit_module="vae_dynamics.training.lit_modules:VAELitModule",
            beta="beta_kl",
            workflow_key="baseline_experiment",
            baseline=True,
        ),
    )
}
BY_VARIANT: dict[str, Experiment] = {e.variant: e for e in EXPERIMENTS.values()}


def get(key: str) -> Experiment:
    """The experiment named `key` (exp1, exp2, or its full name such as exp2_tcvae_sbd)."""
    for e in EXPERIMENTS.values():
        if key in (e.key, e.name):
            return e
    raise ConfigError(f"unknown experiment {key!r}; known: {sorted(EXPERIMENTS)}")


def for_variant(variant: Any) -> Experiment:
    """The experiment a config's model.variant selects."""
    if variant not in BY_VARIANT:
        raise ConfigError(
            f"model.variant: {variant!r} is not a known experiment variant; valid variants: {sorted(BY_VARIANT)}"
        )
    return BY_VARIANT[variant]


def of(cfg: ExperimentConfig | Mapping[str, Any]) -> Experiment:
    """The experiment of a config (validated, or a plain mapping with model.variant)."""
    if isinstance(cfg, ExperimentConfig):
        return for_variant(cfg.model.variant)
    return for_variant(cfg["model"]["variant"])  # plain data: a YAML file or Snakemake's config
