"""Sweeps through the real Snakemake workflow: a 2-run sweep to its summary, a 4-run plan, a repair.

In a file of its own (its own work folder and demo index) so that it runs beside test_workflow.py.
"""

import json
import re
import shutil

import pandas as pd
import pytest
import yaml
from conftest import make_workdir, snakemake

pytestmark = pytest.mark.slow
SWEEP_2 = {"seeds": [7, 8], "overrides": {"train.max_epochs": 1}, "exp2": {}}
SWEEP_4 = {"seeds": [1, 2], "overrides": {"train.max_epochs": 1}, "exp2": {"loss.beta_tc_target": [2.0, 4.0]}}
RUNS = ["sweep/exp2/seed=7", "sweep/exp2/seed=8"]


@pytest.fixture(scope="module")
def swept(demo_root, tmp_path_factory):
    """A 2-run sweep (Exp2 × seeds 7, 8, one epoch each) run to its summary on a fresh work folder."""
    work = make_workdir(tmp_path_factory.mktemp("sweep"), demo_root)
    for name, sweep in (("sweep2", SWEEP_2), ("sweep4", SWEEP_4)):
        (work / "config" / f"{name}.yaml").write_text(yaml.safe_dump({"sweep": sweep}))
    snakemake(work, "--configfile", "config/sweep2.yaml", "--", "results/sweep/done")
    return work


def test_a_two_run_sweep_runs_through_to_its_summary(swept):
    work = swept
    for run in RUNS:
        summary = json.loads((work / "results" / run / "train_summary.json").read_text())
        assert summary["epochs"] == 1 and f"results/{run}/runs/" in summary["run_dir"]
        assert (work / "results" / run / "evaluation" / "metrics.json").is_file()
    md = (work / "results/sweep/summary.md").read_text()
    assert "2 of 2 runs evaluated" in md and "seeds: [7, 8]" in md and "(n=2)" in md
    table = pd.read_csv(work / "results/sweep/summary.csv")
    assert sorted(table["run"]) == RUNS and sorted(table["train.seed"]) == [7, 8]
    assert (table["val_mse_over_zero_predictor"] > 0).all()
    for png in ("tradeoff.png", "seeds.png"):
        assert (work / "results/sweep" / png).stat().st_size > 10_000


def test_a_sweep_dispatches_one_job_per_run_with_its_resources(swept):
    out = snakemake(swept, "-n", "--configfile", "config/sweep4.yaml", "--", "results/sweep/done").stdout
    jobs = re.findall(r"rule train_sweep_run:.*?wildcards: run=(\S+).*?resources: ([^\n]+)", out, re.S)
    assert sorted(run for run, _ in jobs) == [
        f"sweep/exp2/beta_tc_target={b},seed={s}" for b in (2, 4) for s in (1, 2)
    ], out[-3000:]
    assert all("gpu=1" in resources for _, resources in jobs)
    assert "index_subjects" not in out and "build_persistent_cache" not in out  # shared, already done
    for rule, count in (("train_sweep_run", 4), ("evaluate_latents", 4), ("sweep_summary", 1)):
        assert re.search(rf"^{rule}\s+{count}$", out, re.M), (rule, out[-2000:])


def test_a_finished_sweep_is_a_noop_and_a_lost_evaluation_is_redone_alone(swept):
    work = swept
    again = snakemake(work, "--configfile", "config/sweep2.yaml", "--", "results/sweep/done")
    assert "Nothing to be done" in again.stdout + again.stderr
    shutil.rmtree(work / "results/sweep/exp2/seed=8/evaluation")
    dry = snakemake(work, "-n", "--configfile", "config/sweep2.yaml", "--", "results/sweep/done").stdout
    assert set(re.findall(r"wildcards: run=(\S+)", dry)) == {"sweep/exp2/seed=8"}, dry[-3000:]
    assert "train_sweep_run" not in dry and "encode_latents" not in dry
    assert re.search(r"^evaluate_latents\s+1$", dry, re.M) and re.search(r"^sweep_summary\s+1$", dry, re.M)
