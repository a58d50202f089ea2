"""The registry of experiments: the one place that lists them and what each is made of.

Every other place (config validation, training, export, evaluation, the workflow, the benchmarks)
reads this table. An experiment is one `Experiment` record: its config model (config/schema.py holds
the shipped ones; the common sections are there, its model.* fields are its nn.Module's arguments), its
nn.Module, its loss (an `Objective`: the terms of a batch and the weight each enters the total with),
the name of its warmed-up β, and its YAML. The training step, the β warm-up, the logging and the
diagnostics are shared (training/lit_modules.py); the workflow's rules, the sweep and the comparison
are keyed by this table.

Adding an experiment (say Exp3) is that record, its config model, its nn.Module, its objective and its
YAML, in your own module: `register(Experiment(...))` there, and name the module in the environment
variable VAE_DYNAMICS_EXPERIMENTS or an entry point (vae_dynamics/plugins.py). Nothing else is edited.

Light on purpose (no torch): classes are named by import path and loaded when a step needs them, so
that `snakemake -n` can read the registry on a login node.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vae_dynamics.config.schema import (
    ConfigError,
    Exp1Config,
    Exp2Config,
    ExperimentConfig,
    Section,
    register_config_model,
    section_model,
    variant_of,
)
from vae_dynamics.plugins import load_plugins

CONFIG_DIR = Path(__file__).resolve().parent / "config"
# The LightningModule of an experiment that names none: the shared step with the record's wiring.
GENERIC_LIT_MODULE = "vae_dynamics.training.lit_modules:ExperimentLitModule"


# ---- the registry ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Experiment:
    """One experiment: how it is named, configured, built and trained."""

    key: str  # short name: results/<key>/, overrides.<key>, sweep.<key>, bench tables (exp1, exp2)
    name: str  # run directories (<timestamp>_<name>), the YAML file (config/<name>.yaml), logger name
    title: str  # for figures and reports
    config_model: type[ExperimentConfig]
    model_class: str  # "module:Class" of the nn.Module (a models.VAE3d), built from model.* (model_kwargs)
    objective: str  # "module:Class" of its loss, a losses.Objective built from loss.* and N
    beta: str  # the warmed-up weight: loss.<beta>_target, reached after loss.<beta>_annealing_epochs
    lit_module: str = GENERIC_LIT_MODULE  # "module:Class" of the LightningModule
    config_yaml: Path | None = None  # its YAML; None: config/<name>.yaml of the package
    baseline: bool = False  # the reference the others are compared with (sweep figures, compare)

    @property
    def variant(self) -> str:
        """model.variant in its YAML (the Literal of its config model)."""
        return variant_of(self.config_model)

    @property
    def yaml_path(self) -> Path:
        return self.config_yaml or CONFIG_DIR / f"{self.name}.yaml"

    def model_cls(self) -> type:
        return _load(self.model_class)

    def lit_cls(self) -> type:
        return _load(self.lit_module)

    def objective_cls(self) -> type:
        return _load(self.objective)

    def build_model(self, cfg: ExperimentConfig) -> Any:
        """The experiment's nn.Module as the config describes it."""
        return self.model_cls()(**self.model_kwargs(cfg))

    def loss_config(self, values: Mapping[str, Any]) -> Section:
        """The loss section of this experiment from plain values (a checkpoint's hyperparameters)."""
        return section_model(self.config_model, "loss").model_validate(dict(values))

    def warmup_epochs(self, loss: Section) -> int:
        """Epochs of the warmed-up β's linear warm-up (loss.<β>_annealing_epochs)."""
        return int(getattr(loss, f"{self.beta}_annealing_epochs"))

    def beta_target(self, loss: Section) -> float:
        """The warmed-up β's value after the warm-up (loss.<β>_target)."""
        return float(getattr(loss, f"{self.beta}_target"))

    def model_kwargs(self, cfg: ExperimentConfig) -> dict[str, Any]:
        """Constructor keywords of the model: every model.* key but the variant (the config model's fields
        are the model's arguments), and train.gradient_checkpointing."""
        kwargs = cfg.model.model_dump(exclude={"variant"})
        return {**kwargs, "gradient_checkpointing": cfg.train.gradient_checkpointing}


def _load(path: str) -> type:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


EXPERIMENTS: dict[str, Experiment] = {}
BY_VARIANT: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    """Add an experiment to the registry (and its config model to the validated union)."""
    for e in EXPERIMENTS.values():
        clash = [f for f in ("key", "name", "variant") if getattr(e, f) == getattr(experiment, f)]
        if clash and e != experiment:
            raise ConfigError(f"experiment {experiment.key!r}: its {clash[0]} is that of {e.key!r}")
    register_config_model(experiment.config_model)
    EXPERIMENTS[experiment.key] = experiment
    BY_VARIANT[experiment.variant] = experiment
    return experiment


register(
    Experiment(
        key="exp2",
        name="exp2_tcvae_sbd",
        title="Exp2 β-TCVAE + SBD",
        config_model=Exp2Config,
        model_class="vae_dynamics.models.vae.tcvae_sbd:TCVAESBD",
        objective="vae_dynamics.losses.tcvae:TCVAEObjective",
        beta="beta_tc",
        lit_module="vae_dynamics.training.lit_modules:TCVAELitModule",
    )
)
register(
    Experiment(
        key="exp1",
        name="exp1_baseline_vae",
        title="Exp1 baseline VAE",
        config_model=Exp1Config,
        model_class="vae_dynamics.models.vae.baseline_vae:BaselineVAE",
        objective="vae_dynamics.losses.vae:VAEObjective",
        beta="beta_kl",
        lit_module="vae_dynamics.training.lit_modules:VAELitModule",
        baseline=True,
    )
)
load_plugins()  # after the shipped ones: exp2 stays the first (the workflow's data section comes from it)


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
            f"model.variant: {variant!r} is not a known experiment variant; valid variants: "
            f"{sorted(BY_VARIANT)}"
        )
    return BY_VARIANT[variant]


def of(cfg: ExperimentConfig | Mapping[str, Any]) -> Experiment:
    """The experiment of a config (validated, or a plain mapping with model.variant)."""
    if isinstance(cfg, ExperimentConfig):
        return for_variant(cfg.model.variant)
    return for_variant(cfg["model"]["variant"])  # plain data: a YAML file or Snakemake's config
