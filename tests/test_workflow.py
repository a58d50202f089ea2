"""The Snakemake workflow for real: dry run, full run, kill + resume, no-op rerun, rerun triggers, lint."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import OVERRIDES, REPO, SNAKEMAKE, THREADS, make_workdir, snakemake

from vae_dynamics.evaluation import LATENT_SCALARS
from vae_dynamics.training.run_dir import summary_run_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def interrupted_then_finished(demo_root, tmp_path_factory):
    """Start the workflow, SIGKILL its process group after the first epoch checkpoint, then rerun."""
    work = make_workdir(tmp_path_factory.mktemp("workflow"), demo_root)
    dry = snakemake(work, "-n", "--", "results/exp2/done")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.Popen(
        [SNAKEMAKE, "--cores", str(THREADS), "--", "results/exp2/done"],
        cwd=work,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 600
    while not list(work.glob("results/exp2/runs/*/checkpoints/last.ckpt")):
        assert proc.poll() is None, "workflow ended before the first checkpoint"
        assert time.time() < deadline, "no checkpoint after 10 minutes"
        time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    interrupted_outputs = (work / "results/exp2/train_summary.json").exists()
    snakemake(work, "--unlock")
    rerun = snakemake(work, "--rerun-incomplete", "--", "results/exp2/done")
    again = snakemake(work, "--", "results/exp2/done")
    return dict(work=work, dry=dry, rerun=rerun, again=again, interrupted_outputs=interrupted_outputs)


def test_dry_run_lists_every_step(interrupted_then_finished):
    out = interrupted_then_finished["dry"].stdout
    for rule in (
        "index_subjects",
        "make_splits",
        "build_persistent_cache",
        "train_exp2",
        "export_recon_panels",
        "subject_factors",
        "encode_latents",
        "evaluate_latents",
    ):
        assert rule in out, rule
    assert "gpu=1" in out  # the training rule declares the GPU resource (profiles/default provides it)


def test_killed_training_resumes_from_its_checkpoint(interrupted_then_finished):
    work = interrupted_then_finished["work"]
    assert not interrupted_then_finished["interrupted_outputs"]
    summary = json.loads((work / "results/exp2/train_summary.json").read_text())
    assert summary["resumed"] is True
    assert summary["global_step"] == 4 and summary["epochs"] == 2  # 2 epochs · 2 steps, not restarted
    train_log = summary_run_dir(work / "results/exp2/train_summary.json").train_log.read_text()
    assert "resuming from" in train_log
    metrics = pd.read_csv(work / "results/exp2/metrics.csv")
    assert metrics["epoch"].tolist() == [0, 1]
    assert {"train/loss", "val/tc", "val/beta_tc"} <= set(metrics.columns)


def test_final_artifacts(interrupted_then_finished):
    work = interrupted_then_finished["work"]
    panels = sorted((work / "results/exp2/recon_panels").glob("*.png"))
    val = pd.read_csv(work / "results/splits/val.csv")
    assert [p.stem for p in panels] == sorted(val["subject_id"])
    assert (work / "results/exp2/loss_curves.png").stat().st_size > 10_000
    assert "best_checkpoint" in (work / "results/exp2/done").read_text()
    for rule in ("index_subjects", "build_persistent_cache", "train_exp2", "export_recon_panels_exp2"):
        assert (work / f"logs/{rule}.log").is_file(), rule
        assert (work / f"benchmarks/{rule}.tsv").is_file(), rule
    manifest = json.loads((work / "results/cache/manifest.json").read_text())
    assert manifest["n_subjects"] == 5


def test_evaluation_artifacts(interrupted_then_finished):
    work = interrupted_then_finished["work"]
    subjects = pd.read_csv(work / "results/index/subjects.csv")
    latents = pd.read_csv(work / "results/exp2/latents.csv")
    assert list(latents.columns[:2]) == ["subject_id", "split"]
    assert list(latents.columns[2:]) == [f"mu_{k}" for k in range(128)] + [f"logvar_{k}" for k in range(128)]
    assert sorted(latents["subject_id"]) == sorted(subjects["subject_id"])
    assert latents["split"].value_counts().to_dict() == {"train": 4, "val": 1}
    factors = pd.read_csv(work / "results/factors/factors.csv")
    assert sorted(factors["subject_id"]) == sorted(subjects["subject_id"]) and (factors["wt_mm3"] > 0).all()
    evaluation = work / "results/exp2/evaluation"
    metrics = json.loads((evaluation / "metrics.json").read_text())
    for key in (
        *LATENT_SCALARS[:-1],  # the headline numbers (kl_total needs log σ², absent from some tables)
        "kl_per_dim",
        "reconstruction",
        "checkpoint_choice",
        "parameters",
    ):
        assert key in metrics, key
    assert len(metrics["kl_per_dim"]) == 128 and 0 <= metrics["active_units"] <= 128
    assert set(metrics["reconstruction"]["per_modality"]) == {"t1c", "t1n", "t2f", "t2w"}
    recon = pd.read_csv(evaluation / "recon_metrics.csv")
    assert len(recon) == 4 and set(recon.columns) == {"subject_id", "modality", "mse", "psnr", "ssim"}
    assert (recon["mse"] > 0).all() and (recon["ssim"] <= 1).all()
    for png in ("factor_correlations.png", "traversals.png"):
        assert (evaluation / png).stat().st_size > 10_000, png
    assert len(list((evaluation / "traversals").glob("z*.png"))) == 8
    assert "evaluation" in (work / "results/exp2/done").read_text()


def test_per_experiment_overrides_are_validated_per_experiment(interrupted_then_finished):
    work = interrupted_then_finished["work"]
    good = {**OVERRIDES, "exp1": {"loss.beta_kl_target": 0.5}, "exp2": {"loss.beta_tc_target": 4.0}}
    out = snakemake(work, "-n", "--config", f"overrides={json.dumps(good)}", "--", "results/compare/done")
    assert "train_exp1" in out.stdout and "compare_experiments" in out.stdout
    bad = {**OVERRIDES, "exp1": {"loss.beta_tc_target": 4.0}}
    out = snakemake(
        work, "-n", "--config", f"overrides={json.dumps(bad)}", "--", "results/compare/done", check=False
    )
    assert out.returncode != 0
    message = out.stdout + out.stderr
    assert "experiment exp1" in message and "loss.beta_tc_target: unknown key" in message


def test_completed_run_rerun_is_a_noop(interrupted_then_finished):
    assert (
        "Nothing to be done"
        in interrupted_then_finished["again"].stdout + interrupted_then_finished["again"].stderr
    )


def test_changed_parameter_retrains_in_a_new_run_directory(interrupted_then_finished, demo_root):
    work = interrupted_then_finished["work"]
    old_summary = json.loads((work / "results/exp2/train_summary.json").read_text())
    out = snakemake(
        work,
        "-n",
        "--config",
        'overrides={"train.lr": 3e-4, "model.base_filters": 16, '
        '"data.batch_size": 2, "data.num_workers": 0, "train.precision": "bf16-mixed"}',
        "--",
        "results/exp2/done",
    ).stdout
    assert "train_exp2" in out and "index_subjects" not in out
    from vae_dynamics.config.identity import run_identity as config_hash
    from vae_dynamics.pipeline.plan import resolve_experiment

    def resolved(**extra):
        return resolve_experiment(
            REPO / "src/vae_dynamics/config/exp2_tcvae_sbd.yaml",
            data_root=str(demo_root),
            overrides={**OVERRIDES, **extra},
            cache_dir="results/cache/tensors",
        )

    old_cfg = resolved()
    assert old_summary["run_dir"].endswith(config_hash(old_cfg))  # the identity the workflow uses
    assert config_hash(resolved(**{"train.lr": 3e-4})) != config_hash(old_cfg)  # a new run, never resumed
    assert config_hash(resolved(**{"model.sbd_z_gain": 0.5})) != config_hash(old_cfg)
    # how long, how fast, where: the same run (a longer max_epochs continues it)
    for same in ({"train.max_epochs": 30}, {"data.num_workers": 3}, {"logging.recon_every_n_epochs": 7}):
        assert config_hash(resolved(**same)) == config_hash(old_cfg), same


def test_changed_data_root_reindexes(interrupted_then_finished, tmp_path):
    work = interrupted_then_finished["work"]
    out = snakemake(work, "-n", "--config", f"data_root={tmp_path}", "--", "results/exp2/done").stdout
    assert "index_subjects" in out


def test_a_run_stopped_after_training_restarts_at_encoding_without_retraining(interrupted_then_finished):
    """Exp1 trained, then the workflow stopped: its export, encoding and evaluation are missing."""
    work = interrupted_then_finished["work"]
    snakemake(work, "--", "results/exp1/train_summary.json")
    dry = snakemake(work, "-n", "--", "results/compare/done").stdout
    for rule in ("encode_latents", "evaluate_latents", "compare_experiments"):
        assert rule in dry, rule
    assert "train_exp1" not in dry and "train_exp2" not in dry and "make_splits" not in dry


def test_compare_target_trains_exp1_and_summarises_both_with_a_report(interrupted_then_finished):
    work = interrupted_then_finished["work"]
    stamps = {
        exp: (work / f"results/{exp}/train_summary.json").stat().st_mtime_ns for exp in ("exp1", "exp2")
    }
    snakemake(work, "--", "results/compare/done")
    for exp, stamp in stamps.items():  # neither training redone; Exp1 went on from its finished training
        assert (work / f"results/{exp}/train_summary.json").stat().st_mtime_ns == stamp, exp
    assert (work / "results/exp1/evaluation/metrics.json").is_file()
    md = (work / "results/compare/summary.md").read_text()
    assert "exp1 vs exp2" in md and "exp1_baseline_vae" in md and "exp2_tcvae_sbd" in md
    assert "../exp1/evaluation/traversals.png" in md and "../exp2/evaluation/traversals.png" in md
    table = pd.read_csv(work / "results/compare/summary.csv").set_index("quantity")
    assert list(table.columns) == ["exp1", "exp2"]
    assert float(table.at["parameters", "exp1"]) > float(table.at["parameters", "exp2"])  # Linear z -> C0·8³
    assert "final val/kl" in table.index and "final val/tc" in table.index
    assert (work / "results/compare/done").is_file()
    report = snakemake(work, "--report", "report.zip", "--", "results/compare/done", check=False)
    assert report.returncode == 0, report.stderr[-3000:]
    import zipfile

    names = zipfile.ZipFile(work / "report.zip").namelist()
    (page,) = [n for n in names if n.endswith("report.html")]
    html = zipfile.ZipFile(work / "report.zip").read(page).decode()
    assert "This report collects the figures of the finished runs" in html  # the front page
    for figure in ("factor_correlations.png", "traversals.png", "summary.md"):
        assert any(n.endswith(figure) for n in names), figure
    assert any(re.search(r"z\d{3}\.png$", n) for n in names)  # the per-dimension traversals


def test_any_evaluated_runs_compare_and_export_panels_through_the_cli(interrupted_then_finished, tmp_path):
    """`vae-dynamics compare RUN...` puts any evaluated runs side by side (here in the reverse order of the
    workflow's comparison, with the same numbers); `export-panels` draws a run's validation panels."""
    work = interrupted_then_finished["work"]
    vae = str(Path(sys.executable).with_name("vae-dynamics"))
    if not (work / "results/exp1/evaluation/metrics.json").is_file():
        snakemake(work, "--", "results/compare/done")
    runs = [str(work / "results/exp2"), str(work / "results/exp1")]
    out = subprocess.run(
        [vae, "compare", *runs, "--out", str(tmp_path / "cmp")], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    mine = pd.read_csv(tmp_path / "cmp/summary.csv").set_index("quantity")
    theirs = pd.read_csv(work / "results/compare/summary.csv").set_index("quantity")
    assert list(mine.columns) == ["exp2", "exp1"]
    assert mine.at["mig", "exp2"] == theirs.at["mig", "exp2"]
    assert "exp2 vs exp1" in (tmp_path / "cmp/summary.md").read_text()
    missing = subprocess.run(
        [vae, "compare", str(work / "results/index"), "--out", str(tmp_path / "cmp2")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode != 0 and "not an evaluated run, missing" in missing.stderr
    assert not (tmp_path / "cmp2").exists()
    panels = tmp_path / "panels"
    args = [vae, "export-panels", "--run", str(work / "results/exp2"), "--out", str(panels)]
    out = subprocess.run([*args, "--curves", str(tmp_path / "curves.png")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert len(list(panels.glob("*.png"))) == 1 and (tmp_path / "curves.png").stat().st_size > 10_000


SWEEP_4 = {"seeds": [1, 2], "overrides": {"train.max_epochs": 1}, "exp2": {"loss.beta_tc_target": [2.0, 4.0]}}


def test_a_sweep_dispatches_one_job_per_run_with_its_resources(interrupted_then_finished):
    """The plan of a 2 × 2 sweep (run for real, to its summary, in test_slurm.py)."""
    work = interrupted_then_finished["work"]
    (work / "config" / "sweep4.yaml").write_text(yaml.safe_dump({"sweep": SWEEP_4}))
    out = snakemake(work, "-n", "--configfile", "config/sweep4.yaml", "--", "results/sweep/done").stdout
    jobs = re.findall(r"rule train_sweep_run:.*?wildcards: run=(\S+).*?resources: ([^\n]+)", out, re.S)
    assert sorted(run for run, _ in jobs) == [
        f"sweep/exp2/beta_tc_target={b},seed={s}" for b in (2, 4) for s in (1, 2)
    ], out[-3000:]
    assert all("gpu=1" in resources for _, resources in jobs)
    assert "index_subjects" not in out and "build_persistent_cache" not in out  # shared, already done
    for rule, count in (("train_sweep_run", 4), ("evaluate_latents", 4), ("sweep_summary", 1)):
        assert re.search(rf"^{rule}\s+{count}$", out, re.M), (rule, out[-2000:])


def test_changing_only_data_num_workers_reruns_nothing(interrupted_then_finished):
    work = interrupted_then_finished["work"]
    out = snakemake(
        work,
        "-n",
        "--config",
        f"overrides={json.dumps({**OVERRIDES, 'data.num_workers': 1})}",
        "--",
        "results/exp2/done",
    )
    assert "Nothing to be done" in out.stdout + out.stderr, out.stdout[-3000:]


def test_resuming_on_other_splits_is_refused_on_the_workflow_path_too(interrupted_then_finished):
    work = interrupted_then_finished["work"]
    train_csv = work / "results/splits/train.csv"
    # Snakemake deletes a failed job's outputs; keep them (and the splits' bytes and times) so that the
    # module's later tests find the finished workflow this test found.
    kept = {p: (p.read_bytes(), p.stat()) for p in (train_csv, *(work / "results/exp2").glob("*.*"))}
    train = pd.read_csv(train_csv)
    removed = train["subject_id"].iloc[0]
    train.iloc[1:].to_csv(train_csv, index=False)  # as if the data had been re-indexed and re-split
    longer = json.dumps({**OVERRIDES, "train.max_epochs": 4})
    try:
        out = snakemake(
            work, "--config", f"overrides={longer}", "--", "results/exp2/train_summary.json", check=False
        )
        assert out.returncode != 0
        log = (work / "logs/train_exp2.log").read_text()
        assert f"train.csv: 1 subject(s) removed ({removed})" in log and "refusing to resume" in log
    finally:
        for path, (data, stat) in kept.items():
            path.write_bytes(data)
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_snakemake_lint_is_clean():
    result = snakemake(REPO, "--lint", check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_dry_run_imports_neither_torch_nor_monai():
    """`snakemake -n` on a login node: the rules' imports stay light (no torch, MONAI or Lightning)."""
    code = (
        "import sys, runpy; sys.argv = ['snakemake', '-n', '--cores', '1', '--configfile', "
        "'config/demo.yaml', "
        "'--snakefile', 'Snakefile', '--', 'results/exp2/done']\n"
        "try:\n    runpy.run_module('snakemake', run_name='__main__')\nexcept SystemExit as e:\n    code = "
        "e.code\n"
        "heavy = sorted(m for m in ('torch', 'monai', 'lightning') if m in sys.modules)\n"
        "print('HEAVY', heavy, 'EXIT', code)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert "HEAVY [] EXIT 0" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]


def test_new_scans_of_a_sheet_are_encoded_by_a_snakemake_target(interrupted_then_finished, tmp_path):
    """`encode: {name: {sheet: S, reconstruct: true}}` -> results/exp2/encoded/<name>/latents.csv, from the
    finished run, without retraining; never-indexed demo scans with other names and no seg."""
    from vae_dynamics.data import MODALITIES
    from vae_dynamics.data.demo import generate

    work = interrupted_then_finished["work"]
    scans = tmp_path / "scans"
    generate(scans, 1, seed=11, workers=1)
    (subject,) = [p for p in scans.iterdir() if p.is_dir()]
    row = {
        "subject_id": "followup_1",
        "timepoint": "6",
        **{k: f"scans/{subject.name}/{subject.name}-{k}.nii.gz" for k in MODALITIES},
    }
    pd.DataFrame([row]).to_csv(tmp_path / "followup.csv", index=False)
    target = "results/exp2/encoded/followup/latents.csv"
    setting = f'encode={{"followup": {{"sheet": "{tmp_path / "followup.csv"}", "reconstruct": true}}}}'
    dry = snakemake(work, "-n", "--config", setting, "--", target).stdout
    assert re.search(r"rule encode_scans:\n(?:    .*\n)*?    resources: .*\bgpu=1", dry), dry
    assert "build_persistent_cache" not in dry  # nothing of the training cache (earlier tests may retrain)
    snakemake(work, "--config", setting, "--", target)
    latents = pd.read_csv(work / target)
    assert list(latents["subject_id"]) == ["followup_1"] and list(latents["timepoint"]) == [6]
    assert (work / "results/exp2/encoded/followup/reconstructions/followup_1/followup_1-t1c.nii.gz").is_file()


def test_every_job_that_asks_for_a_gpu_goes_to_the_gpu_partition_on_slurm(tmp_path):
    """Read from the dry run of every target (main runs, comparison, sweep) and from profiles/slurm: a
    rule with gpu > 0 placed on the CPU partition fails on a cluster whose CPU nodes have no GPU (the
    export step once did; the one-node test cluster cannot show it)."""
    encode = f'encode={{"new": {{"images": "{tmp_path}"}}}}'  # the encode_scans job of a new folder
    dry = snakemake(
        REPO,
        "-n",
        "--configfile",
        "config/demo.yaml",
        "--config",
        encode,
        "--",
        "results/compare/done",
        "results/sweep/done",
        "results/exp2/encoded/new/latents.csv",
    ).stdout
    jobs = re.findall(r"^(?:local)?rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", dry, flags=re.M)
    gpu_rules = {rule for rule, res in jobs if int(re.search(r"\bgpu=(\d+)", res + " gpu=0").group(1)) > 0}
    assert {
        "train_exp2",
        "train_exp1",
        "train_sweep_run",
        "export_recon_panels",
        "encode_latents",
        "evaluate_latents",
        "encode_scans",
    } <= gpu_rules, gpu_rules
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    cpu_partition = profile["default-resources"]["slurm_partition"]
    placed = {
        rule: profile["set-resources"].get(rule, {}).get("slurm_partition", cpu_partition)
        for rule in gpu_rules
    }
    gpu_partition = placed["train_exp2"]
    assert gpu_partition != cpu_partition
    assert {rule: p for rule, p in placed.items() if p != gpu_partition} == {}


def test_raising_max_epochs_continues_the_same_run(interrupted_then_finished):
    """Near the end of the module: the run then holds more epochs than the module's config asks for, which
    a later run of that config refuses (test_lowering_max_epochs_...)."""
    work = interrupted_then_finished["work"]
    before = json.loads((work / "results/exp2/train_summary.json").read_text())
    longer = json.dumps({**OVERRIDES, "train.max_epochs": 3})
    snakemake(work, "--config", f"overrides={longer}", "--", "results/exp2/train_summary.json")
    after = json.loads((work / "results/exp2/train_summary.json").read_text())
    assert after["run_dir"] == before["run_dir"] and after["resumed"] is True
    assert before["global_step"] == 4 and after["global_step"] == 6 and after["epochs"] == 3
    assert len(list((work / "results/exp2/runs").iterdir())) == 1  # no second run directory
    assert pd.read_csv(work / "results/exp2/metrics.csv")["epoch"].tolist() == [0, 1, 2]  # history kept


def test_lowering_max_epochs_is_refused_in_one_console_line_and_the_run_is_unchanged(
    interrupted_then_finished,
):
    """The run identity leaves train.max_epochs out, so a lower value lands in the same run directory:
    Lightning failed there with a traceback in logs/ only. Last in the module: the refused job leaves
    Snakemake's record of train_exp2 changed for the tests after it."""
    work = interrupted_then_finished["work"]
    summary = json.loads((work / "results/exp2/train_summary.json").read_text())
    epochs = summary["epochs"]
    run = Path(os.path.normpath(Path("results/exp2") / summary["run_dir"]))  # as the job names it
    run_abs = work / run
    checkpoints = {p.name: p.stat().st_mtime_ns for p in (run_abs / "checkpoints").iterdir()}
    kept = {p: (p.read_bytes(), p.stat()) for p in (work / "results/exp2").glob("*.*")}
    shorter = json.dumps({**OVERRIDES, "train.max_epochs": epochs - 1})
    try:
        out = snakemake(
            work, "--config", f"overrides={shorter}", "--", "results/exp2/train_summary.json", check=False
        )
        assert out.returncode != 0
        line = f"train_exp2: {run} already holds {epochs} epochs, and train.max_epochs is {epochs - 1}"
        assert line in out.stderr, out.stderr[-3000:]
        assert "Keep train.max_epochs >=" in out.stderr
        assert {p.name: p.stat().st_mtime_ns for p in (run_abs / "checkpoints").iterdir()} == checkpoints
    finally:
        for path, (data, stat) in kept.items():
            path.write_bytes(data)
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
