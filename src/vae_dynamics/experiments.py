"""The experiments: one torch-free record each, for the planner, the CLI and the run directories.

A record says what an experiment is called, its config model (config/schema.py), the name of its
warmed-up β and its YAML. What it is built from is wired by reference, on the floor that owns it:
`models.MODELS` and `losses.OBJECTIVES` map its model.variant to its nn.Module and its loss, and
`training.lit_modules.LIT_MODULES` to its LightningModule (the shared step unless it names one).

Adding an experiment (say Exp3) in Python:

    experiments.register(Experiment(key="exp3", name="exp3_broadcast_vae", title="Exp3 …",
                                    config_model=Exp3Config, beta="beta_kl", config_yaml=path))
    models.MODELS["broadcast_vae"] = BroadcastVAE
    losses.OBJECTIVES["broadcast_vae"] = VAEObjective

Shipped, it is a record below, its config model in config/schema.py, its classes in models/ and losses/
with a line in their maps, and its YAML in config/ (the README's "Where things go").
"""

from __future__ import annotations

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
    variant_of,
)

CONFIG_DIR = Path(__file__).resolve().parent / "config"


@dataclass(frozen=True)
class Experiment:
    """One experiment: how it is named and configured, and which β warms up."""

    key: str  # short name: results/<key>/, overrides.<key>, sweep.<key>, bench tables (exp1, exp2)
    name: str  # run directories (<timestamp>_<name>), the YAML file (config/<name>.yaml), logger name
    title: str  # for figures and reports
    config_model: type[ExperimentConfig]
    beta: str  # the warmed-up weight: loss.<beta>_target, reached after loss.<beta>_annealing_epochs
    config_yaml: Path | None = None  # its YAML; None: config/<name>.yaml of the package
    baseline: bool = False  # the reference the others are compared with (sweep figures, compare)

    @property
    def variant(self) -> str:
        """model.variant in its YAML (the Literal of its config model)."""
        return variant_of(self.config_model)

    @property
    def yaml_path(self) -> Path:
        return self.config_yaml or CONFIG_DIR / f"{self.name}.yaml"

    def warmup_epochs(self, loss: Section) -> int:
        """Epochs of the warmed-up β's linear warm-up (loss.<β>_annealing_epochs)."""
        return int(getattr(loss, f"{self.beta}_annealing_epochs"))

    def beta_target(self, loss: Section) -> float:
        """The warmed-up β's value after the warm-up (loss.<β>_target)."""
        return float(getattr(loss, f"{self.beta}_target"))


EXPERIMENTS: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    """Add an experiment (and its config model to the configs a YAML may select)."""
    for e in EXPERIMENTS.values():
        clash = [f for f in ("key", "name", "variant") if getattr(e, f) == getattr(experiment, f)]
        if clash and e != experiment:
            raise ConfigError(f"experiment {experiment.key!r}: its {clash[0]} is that of {e.key!r}")
    register_config_model(experiment.config_model)
    EXPERIMENTS[experiment.key] = experiment
    return experiment


# exp2 first: the workflow's data section comes from the first experiment.
register(Experiment("exp2", "exp2_tcvae_sbd", "Exp2 β-TCVAE + SBD", Exp2Config, beta="beta_tc"))
register(
    Experiment("exp1", "exp1_baseline_vae", "Exp1 baseline VAE", Exp1Config, beta="beta_kl", baseline=True)
)


def get(key: str) -> Experiment:
    """The experiment named `key` (exp1, exp2, or its full name such as exp2_tcvae_sbd)."""
    for e in EXPERIMENTS.values():
        if key in (e.key, e.name):
            return e
    raise ConfigError(f"unknown experiment {key!r}; known: {sorted(EXPERIMENTS)}")


def of(cfg: ExperimentConfig | Mapping[str, Any]) -> Experiment:
    """The experiment of a config (validated, or a plain mapping with model.variant)."""
    variant = cfg.model.variant if isinstance(cfg, ExperimentConfig) else cfg["model"]["variant"]
    for e in EXPERIMENTS.values():
        if e.variant == variant:
            return e
    raise ConfigError(
        f"model.variant: {variant!r} is not a known experiment variant; valid variants: "
        f"{sorted(e.variant for e in EXPERIMENTS.values())}"
    )
