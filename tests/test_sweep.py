"""Sweeps: the runs a sweep config names, their validation, and the aggregation over seeds."""

import json
from pathlib import Path

import pandas as pd
import pytest

from vae_dynamics.config import ConfigError
from vae_dynamics.config.identity import run_identity
from vae_dynamics.evaluation.sweep import summarize_sweep
from vae_dynamics.pipeline.plan import load_workflow_config, run_config, sweep_runs

REPO = Path(__file__).resolve().parents[1]


def workflow_config(sweep):
    config = load_workflow_config(REPO / "config" / "demo.yaml", root=REPO)
    config["sweep"] = sweep
    return config


def test_a_sweep_is_the_product_of_its_grid_and_seeds_with_readable_stable_names():
    config = workflow_config(
        {
            "seeds": [42, 43],
            "overrides": {"train.max_epochs": 3},
            "exp2": {"loss.beta_tc_target": [1, 6.5]},
            "exp1": {},
        }
    )
    runs = sweep_runs(config)
    assert list(runs) == [
        "sweep/exp2/beta_tc_target=1,seed=42",
        "sweep/exp2/beta_tc_target=1,seed=43",
        "sweep/exp2/beta_tc_target=6.5,seed=42",
        "sweep/exp2/beta_tc_target=6.5,seed=43",
        "sweep/exp1/seed=42",
        "sweep/exp1/seed=43",
    ]
    cfg = run_config(config, "sweep/exp2/beta_tc_target=6.5,seed=43")
    assert cfg.loss.beta_tc_target == 6.5 and cfg.train.seed == 43
    assert cfg.train.max_epochs == 3  # sweep.overrides
    assert cfg.train.lr == 3e-3 and cfg.loss.beta_tc_annealing_epochs == 8  # the demo's overrides
    assert run_config(config, "sweep/exp1/seed=42").model.variant == "baseline_vae"
    identities = {spec["identity"] for spec in runs.values()}
    assert len(identities) == 6  # every run its own run directory
    assert runs["sweep/exp1/seed=42"]["identity"] == run_identity(run_config(config, "sweep/exp1/seed=42"))
    assert sweep_runs(workflow_config(None)) == {}  # no sweep: nothing changes


@pytest.mark.parametrize(
    "sweep,message",
    [
        (
            {"exp2": {"loss.beta_tc_target": [1, -2]}},
            r"sweep run sweep/exp2/beta_tc_target=-2: .*loss\.beta_tc_target: -2\.0 must be >= 0",
        ),
        (
            {"exp2": {"loss.beta_tc_targt": [1]}},
            r"sweep run sweep/exp2/beta_tc_targt=1: .*loss\.beta_tc_targt: unknown key",
        ),
        ({"exp2": {"data.val_split": [0.2, 0.3]}}, r"sweep\.exp2\.data\.val_split: cannot be swept"),
        ({"exp2": {"train.seed": [1, 2]}}, r"sweep\.exp2\.train\.seed: cannot be swept .*sweep\.seeds"),
        (
            {"exp2": {"data.num_workers": [0, 2]}},
            r"sweep\.exp2\.data\.num_workers: does not change what a run learns",
        ),
        (
            {"exp1": {"loss.beta_tc_target": [1]}},
            r"sweep run sweep/exp1/beta_tc_target=1: .*loss\.beta_tc_target: unknown key",
        ),
        ({"exp2": {"loss.alpha": []}}, r"sweep\.exp2\.loss\.alpha: expected a non-empty list"),
        (
            {"exp2": {"loss.beta_tc_target": [0.1, 0.1000001]}},
            r"sweep\.exp2: the grid points .* give the same run name 'beta_tc_target=0\.1'",
        ),
    ],
)
def test_an_invalid_sweep_is_refused_before_any_work_naming_run_and_key(sweep, message):
    with pytest.raises(ConfigError, match=message):
        sweep_runs(workflow_config(sweep))


def fake_metrics(path: Path, mig: float, mse: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    recon = {
        "per_modality": {
            m: {"mse": mse / 5, "psnr": 20.0, "ssim": 0.5} for m in ("t1c", "t1n", "t2f", "t2w")
        },
        "val_mse_over_zero_predictor": mse,
        "val_mse_over_mean_volume": 1.0,
        "z_dependence": 1.1,
    }
    metrics = {
        "mig": mig,
        "dci_disentanglement": mig / 2,
        "dci_completeness": 0.3,
        "dci_informativeness": 0.2,
        "sap": 0.05,
        "active_units": 3,
        "kl_total": 40.0,
        "epochs": 2,
        "reconstruction": recon,
    }
    path.write_text(json.dumps(metrics))


def test_the_summary_gives_mean_and_sd_over_seeds_and_lists_missing_runs(tmp_path):
    config = workflow_config({"seeds": [0, 1], "exp2": {"loss.beta_tc_target": [1, 6]}, "exp1": {}})
    runs = sweep_runs(config)
    values = {
        "sweep/exp2/beta_tc_target=1,seed=0": (0.10, 0.20),
        "sweep/exp2/beta_tc_target=1,seed=1": (0.20, 0.30),
        "sweep/exp2/beta_tc_target=6,seed=0": (0.40, 0.50),
        "sweep/exp1/seed=0": (0.05, 0.15),
        "sweep/exp1/seed=1": (0.07, 0.17),
    }
    for run, (mig, mse) in values.items():
        fake_metrics(tmp_path / "results" / run / "evaluation" / "metrics.json", mig, mse)
    table = summarize_sweep(runs, tmp_path / "results", tmp_path / "results" / "sweep")
    out = tmp_path / "results" / "sweep"
    assert len(table) == 5 and set(table["run"]) == set(values)
    md = (out / "summary.md").read_text()
    assert "5 of 6 runs evaluated" in md
    assert "## Missing runs" in md and "`sweep/exp2/beta_tc_target=6,seed=1`" in md
    assert "0.15 ± 0.071 (n=2)" in md  # MIG of beta 1: mean of 0.1, 0.2, sd 0.0707
    assert "0.4 (n=1)" in md
    by_point = pd.read_csv(out / "summary_by_point.csv")
    row = by_point[(by_point["experiment"] == "exp2") & (by_point["loss.beta_tc_target"] == 1)].iloc[0]
    assert row["mig mean"] == pytest.approx(0.15) and row["mig sd"] == pytest.approx(0.0707, abs=1e-4)
    assert row["n"] == 2
    for png in ("tradeoff.png", "seeds.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv = pd.read_csv(out / "summary.csv")
    assert {"mse[t1c]", "psnr[t2w]", "ssim[t2f]", "val_mse_over_zero_predictor", "train.seed"} <= set(
        csv.columns
    )


def test_the_baselines_grid_cell_reads_as_a_dash_not_nan(tmp_path):
    config = workflow_config({"seeds": [0], "exp2": {"loss.beta_tc_target": [6]}, "exp1": {}})
    runs = sweep_runs(config)
    for run in runs:
        fake_metrics(tmp_path / run / "evaluation" / "metrics.json", 0.1, 0.2)
    summarize_sweep(runs, tmp_path, tmp_path / "sweep")
    md = (tmp_path / "sweep" / "summary.md").read_text()
    assert "| exp1 | – | 1 |" in md and "| exp2 | 6 | 1 |" in md and "nan" not in md
