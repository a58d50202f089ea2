"""A third experiment added the documented way, with nothing of the project edited: one module that holds
its config model, its nn.Module and its registry record, one YAML, and the module named in
VAE_DYNAMICS_EXPERIMENTS. The real CLI validates and trains it; the real workflow plans its runs."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import OVERRIDES, make_workdir, snakemake

BIN = Path(sys.executable).parent

PLUGIN = '''
"""Exp3: the shared encoder, a decoder that starts from one code vector broadcast over the 8³ grid."""

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from vae_dynamics import experiments
from vae_dynamics.config.schema import ExperimentConfig, ModelConfig, Section
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
    def __init__(self, z_dim, input_channels, base_filters, norm, code_gain=1.0,
                 gradient_checkpointing=False):
        super().__init__(z_dim, input_channels, base_filters, norm, gradient_checkpointing)
        self.c0, self.code_gain = decoder_widths(base_filters)[0], code_gain
        self.project = nn.Linear(z_dim, self.c0)

    def decoder_input(self, z: torch.Tensor) -> torch.Tensor:
        return (self.code_gain * self.project(z))[:, :, None, None, None].expand(-1, -1, 8, 8, 8)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.decoder_input(z))


experiments.register(
    experiments.Experiment(
        key="exp3",
        name="exp3_broadcast_vae",
        title="Exp3 broadcast VAE",
        config_model=Exp3Config,
        model_class=f"{__name__}:BroadcastVAE",
        objective="vae_dynamics.losses.vae:VAEObjective",  # Exp1's recon + β·KL
        beta="beta_kl",
        config_yaml=Path(__file__).with_name("exp3_broadcast_vae.yaml"),
    )
)
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch, demo_root) -> Path:
    """The plugin module and its YAML (Exp1's, with the new variant) in a folder on PYTHONPATH."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "exp3_plugin.py").write_text(textwrap.dedent(PLUGIN))
    cfg = yaml.safe_load(
        (Path(__file__).parents[1] / "src/vae_dynamics/config/exp1_baseline_vae.yaml").read_text()
    )
    cfg["model"] = {**cfg["model"], "variant": "broadcast_vae", "code_gain": 0.5}
    cfg["data"]["root_dir"] = str(demo_root)
    (folder / "exp3_broadcast_vae.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    monkeypatch.setenv("VAE_DYNAMICS_EXPERIMENTS", "exp3_plugin")
    monkeypatch.setenv("PYTHONPATH", str(folder))
    return folder


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([str(BIN / "vae-dynamics"), *args], capture_output=True, text=True, cwd=cwd)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def test_a_registered_third_experiment_validates_and_trains_through_the_real_cli(
    plugin, demo_splits, tmp_path
):
    listed = cli("experiments", cwd=tmp_path).stdout
    assert "exp3" in listed and "broadcast_vae" in listed, listed
    yaml_path = plugin / "exp3_broadcast_vae.yaml"
    assert (
        "valid (broadcast_vae)" in cli("config", "validate", "--config", str(yaml_path), cwd=tmp_path).stdout
    )
    # a key of its own model is checked like any other
    bad = subprocess.run(
        [
            str(BIN / "vae-dynamics"),
            "config",
            "validate",
            "--config",
            str(yaml_path),
            "--set",
            "model.code_gain=0",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert bad.returncode != 0 and "model.code_gain" in bad.stderr, bad.stderr[-2000:]

    run_dir = tmp_path / "run"
    sets = [
        *(f"{k}={v}" for k, v in OVERRIDES.items()),
        "train.max_epochs=1",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]
    args = ["train", "--config", str(yaml_path), "--run-dir", str(run_dir), "--splits", str(demo_splits)]
    cli(*args, *(a for s in sets for a in ("--set", s)), cwd=tmp_path)
    metrics = pd.read_csv(run_dir / "logs" / "version_0" / "metrics.csv")
    steps = metrics["train_step/loss"].dropna()
    assert len(steps) == 2 and steps.map(float).gt(0).all()  # 4 train subjects, batch 2
    assert {"train/kl", "train/beta_kl", "val/loss", "val/kl"} <= set(metrics.columns)
    import torch

    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["experiment"] == "exp3"
    assert any(k.startswith("model.project.") for k in ckpt["state_dict"])
    saved = yaml.safe_load((run_dir / "config_resolved.yaml").read_text())
    assert saved["model"]["variant"] == "broadcast_vae" and saved["model"]["code_gain"] == 0.5


def test_the_workflow_plans_the_third_experiment_from_the_registry(plugin, demo_root, tmp_path):
    work = make_workdir(tmp_path, demo_root)
    out = snakemake(work, "-n", "--", "results/exp3/done").stdout
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", out, flags=re.M))  # the dry run's job table
    for rule in ("train_exp3", "export_recon_panels", "encode_latents", "evaluate_latents", "done"):
        assert jobs.get(rule) == "1", (rule, out[-3000:])
    assert "train_exp2" not in jobs and "train_exp1" not in jobs  # only what results/exp3/done needs
    assert "results/exp3/train_summary.json" in out
    # its own overrides are validated against its own schema, before any work
    config = yaml.safe_load((work / "config" / "config.yaml").read_text())
    config["overrides"]["exp3"] = {"model.code_gain": -1}
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    refused = snakemake(work, "-n", "--", "results/exp3/done", check=False)
    assert refused.returncode != 0 and "model.code_gain" in refused.stderr + refused.stdout
    # an experiment nobody registered is named
    config["overrides"] = {"exp4": {"train.lr": 1.0}}
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    unknown = snakemake(work, "-n", check=False)
    assert "overrides.exp4: not a registered experiment" in unknown.stderr + unknown.stdout


def test_a_plugin_that_fails_with_any_error_is_tried_again_and_named(tmp_path, monkeypatch):
    import sys

    from vae_dynamics import plugins

    (tmp_path / "broken_plugin.py").write_text("raise ValueError('bad registry entry')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(plugins.ENV, "broken_plugin")
    for _ in range(2):  # the second load fails the same way: it was not marked as imported
        with pytest.raises(plugins.PluginError, match="'broken_plugin'.*ValueError: bad registry entry"):
            plugins.load_plugins()
        sys.modules.pop("broken_plugin", None)
    assert "broken_plugin" not in plugins._imported
