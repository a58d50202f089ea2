"""A third experiment added in Python, by registering real classes: its record (torch-free), its model
and its loss, each in the map of the floor that owns it. The real training validates and trains it, and
the workflow planner knows it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pandas as pd
import pytest
import torch
import yaml
from conftest import OVERRIDES
from pydantic import Field
from torch import nn

from vae_dynamics import experiments, losses, models
from vae_dynamics.config import ConfigError, config_path, load_config
from vae_dynamics.config.schema import CONFIG_MODELS, ExperimentConfig, ModelConfig, Section
from vae_dynamics.models import VAE3d
from vae_dynamics.models.components.decoder import decoder_widths


class Exp3Model(ModelConfig):
    variant: Literal["broadcast_vae"]
    code_gain: float = Field(1.0, gt=0)


class Exp3Loss(Section):
    beta_kl_target: float = Field(ge=0)
    beta_kl_annealing_epochs: int = Field(ge=0)


class Exp3Config(ExperimentConfig):
    model: Exp3Model
    loss: Exp3Loss


class BroadcastVAE(VAE3d):
    """The shared encoder; a decoder that starts from one code vector broadcast over the 8³ grid."""

    def __init__(self, z_dim, input_channels, base_filters, norm, code_gain, gradient_checkpointing=False):
        super().__init__(z_dim, input_channels, base_filters, norm, gradient_checkpointing)
        self.c0, self.code_gain = decoder_widths(base_filters)[0], code_gain
        self.project = nn.Linear(z_dim, self.c0)

    def decoder_input(self, z: torch.Tensor) -> torch.Tensor:
        return (self.code_gain * self.project(z))[:, :, None, None, None].expand(-1, -1, 8, 8, 8)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.decoder_input(z))


@pytest.fixture
def exp3(tmp_path, demo_root):
    """Exp3 registered (and removed again), with its YAML: Exp1's, with the new variant."""
    raw = yaml.safe_load(config_path("exp1").read_text())
    raw["model"] = {**raw["model"], "variant": "broadcast_vae", "code_gain": 0.5}
    raw["data"]["root_dir"] = str(demo_root)
    yaml_path = tmp_path / "exp3_broadcast_vae.yaml"
    yaml_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    record = experiments.Experiment(
        "exp3", "exp3_broadcast_vae", "Exp3 broadcast VAE", Exp3Config, beta="beta_kl", config_yaml=yaml_path
    )
    experiments.register(record)
    models.MODELS["broadcast_vae"] = BroadcastVAE
    losses.OBJECTIVES["broadcast_vae"] = losses.VAEObjective  # Exp1's recon + β·KL
    yield record
    del experiments.EXPERIMENTS["exp3"], models.MODELS["broadcast_vae"], losses.OBJECTIVES["broadcast_vae"]
    CONFIG_MODELS.pop("broadcast_vae")
    from vae_dynamics.config.schema import config_adapter

    config_adapter.cache_clear()


def test_a_registered_third_experiment_validates_and_trains(exp3, demo_splits, tmp_path):
    from vae_dynamics.training.run import train

    assert load_config(exp3.yaml_path).model.code_gain == 0.5
    with pytest.raises(ConfigError, match=r"model\.code_gain"):  # its own keys are checked like any other
        load_config(exp3.yaml_path, {"model.code_gain": 0})
    sets = {**OVERRIDES, "train.max_epochs": 1, "data.cache_dir": str(tmp_path / "cache")}
    run_dir = tmp_path / "run"
    summary = train(load_config(exp3.yaml_path, sets), run_dir, splits_dir=demo_splits)
    assert summary["experiment"] == "exp3_broadcast_vae"
    metrics = pd.read_csv(run_dir / "logs" / "version_0" / "metrics.csv")
    steps = metrics["train_step/loss"].dropna()
    assert len(steps) == 2 and steps.map(float).gt(0).all()  # 4 train subjects, batch 2
    assert {"train/kl", "train/beta_kl", "val/loss", "val/kl"} <= set(metrics.columns)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["config"]["model"]["variant"] == "broadcast_vae"
    assert any(k.startswith("model.project.") for k in ckpt["state_dict"])
    saved = yaml.safe_load((run_dir / "config_resolved.yaml").read_text())
    assert saved["model"]["variant"] == "broadcast_vae" and saved["model"]["code_gain"] == 0.5


def test_the_planner_knows_the_third_experiment_and_names_one_nobody_registered(exp3):
    from vae_dynamics.pipeline import plan

    assert "exp3" in plan.experiment_keys()
    assert plan.experiment_yaml({}, "exp3") == str(exp3.yaml_path)
    plan.check_experiment_keys({"overrides": {"exp3": {"model.code_gain": 2.0}}})
    with pytest.raises(ConfigError, match="overrides.exp4: not a registered experiment"):
        plan.check_experiment_keys({"overrides": {"exp4": {"train.lr": 1.0}}})
    assert Path(exp3.yaml_path).is_file()
