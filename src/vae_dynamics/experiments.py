"""The registry of experiments: the one place that lists them and what each is made of.

Every other place (config validation, training, export, evaluation, the workflow, the benchmarks)
reads this table. Adding an experiment (say Exp3): its config model here (the common sections come
from config/schema.py), its nn.Module under models/, its LightningModule, its YAML next to the others
(config/exp3_<name>.yaml), and one `Experiment` record below; nothing else changes.

Light on purpose (no torch): the model and module classes are named by import path and loaded when
a step needs them, so that `snakemake -n` can read the registry on a login node.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, StrictBool, StrictInt, model_validator

from vae_dynamics.config.schema import (
    ConfigError,
    ExperimentConfig,
    ModelConfig,
    NonNegative,
    NonNegativeInt,
    Number,
    Positive,
    Section,
    TrainConfig,
    check,
)

CONFIG_DIR = Path(__file__).resolve().parent / "config"


# ---- the config model of each experiment (the sections the request's YAML defines per variant) ----

# Exp1: the baseline VAE -------------------------------------------------------------------------


class Exp1Model(ModelConfig):
    variant: Literal["baseline_vae"]


class Exp1Loss(Section):
    beta_kl_target: NonNegative = Field(description="β of the KL term after the warm-up")
    beta_kl_annealing_epochs: NonNegativeInt = Field(description="epochs of the linear β warm-up from 0")


class Exp1Config(ExperimentConfig):
    model: Exp1Model
    loss: Exp1Loss


# Exp2: β-TCVAE with a Spatial Broadcast Decoder ------------------------------------------------


class Exp2Model(ModelConfig):
    variant: Literal["tcvae_sbd"]
    sbd_grid_size: Annotated[
        list[StrictInt], check(lambda v: v == [8, 8, 8], "is fixed to [8, 8, 8] (do not change)")
    ]
    # Not in the request's YAML: how the SBD starts (docs/LEARNING.md).
    sbd_z_gain: NonNegative = Field(
        0.1, description="initial gain of the z columns of the SBD's 1×1×1 projection"
    )
    sbd_coord_gain: Positive = Field(1.0, description="initial gain of its coordinate columns")
    sbd_project_norm: StrictBool = Field(True, description="GroupNorm after the projection")
    logvar_init_bias: Annotated[
        Number, check(lambda v: -20 <= v <= 5, "must lie in [-20, 5] (sigma from 4.5e-5 to 12)")
    ] = Field(-7.0, description="initial bias of the encoder's log σ² output (σ = 0.03; docs/LEARNING.md)")


class Exp2Loss(Section):
    alpha: NonNegative = Field(description="weight of the index-code mutual information")
    gamma: NonNegative = Field(description="weight of the dimension-wise KL")
    beta_tc_target: NonNegative = Field(description="weight of the total correlation after the warm-up")
    beta_tc_annealing_epochs: NonNegativeInt = Field(description="epochs of the linear β_tc warm-up from 0")
    compute_in_fp32: StrictBool = Field(description="the log-density terms of the MWS estimator in float32")


class Exp2Train(TrainConfig):
    # The request also calls loss.compute_in_fp32 "train.compute_tcvae_terms_in_fp32" (an alias).
    compute_tcvae_terms_in_fp32: StrictBool | None = Field(None, exclude=True)
    encoder_head_lr_scale: Positive = Field(
        0.01, description="Exp2: the encoder head starts at lr/100 (docs/LEARNING.md)"
    )
    encoder_head_lr_ramp_steps: NonNegativeInt = Field(
        0, description="Exp2: ... and reaches lr after this many steps (geometric ramp; 0: it stays)"
    )


class Exp2Config(ExperimentConfig):
    model: Exp2Model
    loss: Exp2Loss
    train: Exp2Train

    @model_validator(mode="after")
    def _alias_agrees(self) -> Exp2Config:
        alias = self.train.compute_tcvae_terms_in_fp32
        if alias is not None and alias != self.loss.compute_in_fp32:
            raise ValueError(
                "train.compute_tcvae_terms_in_fp32 contradicts loss.compute_in_fp32 "
                "(they are the same switch; set only loss.compute_in_fp32)"
            )
        return self


# ---- the registry ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Experiment:
    """One experiment: how it is named, configured, built and trained."""

    key: str  # short name: results/<key>/, overrides.<key>, bench tables (exp1, exp2)
    variant: str  # model.variant in its YAML
    name: str  # run directories (<timestamp>_<name>), the YAML file (config/<name>.yaml), logger name
    title: str  # for figures and reports
    config_model: type[ExperimentConfig]
    model_class: str  # "module:Class" of the nn.Module
    lit_module: str  # "module:Class" of the LightningModule
    warmup_key: str  # loss key: epochs of the β warm-up (the first epoch at the target β)
    workflow_key: str  # key of the workflow config (config/config.yaml) naming its YAML
    model_keys: tuple[str, ...] = ()  # model.* keys passed to the model beyond the common ones
    baseline: bool = False  # the reference the others are compared with (sweep figures)

    @property
    def yaml_path(self) -> Path:
        return CONFIG_DIR / f"{self.name}.yaml"

    def model_cls(self) -> type:
        return _load(self.model_class)

    def lit_cls(self) -> type:
        return _load(self.lit_module)

    def warmup_epochs(self, cfg: Mapping[str, Any]) -> int:
        return int(cfg["loss"][self.warmup_key])

    def model_kwargs(self, cfg: Mapping[str, Any]) -> dict[str, Any]:
        """Constructor keywords of the model from a validated config."""
        m = cfg["model"]
        kwargs = {k: m[k] for k in ("z_dim", "input_channels", "base_filters", "norm")}
        kwargs["gradient_checkpointing"] = cfg["train"]["gradient_checkpointing"]
        for key in self.model_keys:
            kwargs[key] = tuple(m[key]) if isinstance(m[key], list) else m[key]
        return kwargs


def _load(path: str) -> type:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


EXPERIMENTS: dict[str, Experiment] = {
    e.key: e
    for e in (
        Experiment(
            key="exp2",
            variant="tcvae_sbd",
            name="exp2_tcvae_sbd",
            title="Exp2 β-TCVAE + SBD",
            config_model=Exp2Config,
            model_class="vae_dynamics.models.vae.tcvae_sbd:TCVAESBD",
            lit_module="vae_dynamics.training.lit_modules:TCVAELitModule",
            warmup_key="beta_tc_annealing_epochs",
            workflow_key="experiment",
            model_keys=(
                "sbd_grid_size",
                "sbd_z_gain",
                "sbd_coord_gain",
                "sbd_project_norm",
                "logvar_init_bias",
            ),
        ),
        Experiment(
            key="exp1",
            variant="baseline_vae",
            name="exp1_baseline_vae",
            title="Exp1 baseline VAE",
            config_model=Exp1Config,
            model_class="vae_dynamics.models.vae.baseline_vae:BaselineVAE",
            lit_module="vae_dynamics.training.lit_modules:VAELitModule",
            warmup_key="beta_kl_annealing_epochs",
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


def of(cfg: Mapping[str, Any]) -> Experiment:
    """The experiment of a (validated) config."""
    return for_variant(cfg["model"]["variant"])
