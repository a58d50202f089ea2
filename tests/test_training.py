"""Real Lightning runs on demo subjects (CPU, base_filters 16, batch 2): artifacts, keys, β, resume."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import exp2_module, small_exp_config, train_script_args

from vae_dynamics.losses import NonFiniteLossError
from vae_dynamics.training.lit_modules import TCVAELitModule
from vae_dynamics.training.run import train
from vae_dynamics.training.run_dir import ResumeError, RunDir
from vae_dynamics.viz.curves import read_metrics

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
EXP2_KEYS = ["loss", "recon", "mi", "tc", "dwkl", "beta_tc"]


@pytest.fixture(scope="module")
def exp2_run(demo_splits, tmp_path_factory):
    """A 2-epoch Exp2 run (4 train subjects, 2 steps per epoch), then a resume to a 3rd epoch.

    β warms up over 2 epochs to a large target (0, 5000, 10000), so β·TC makes val/loss rise during
    the warm-up whatever the model learns: only epoch 2 is at the target β.
    """
    tmp = tmp_path_factory.mktemp("exp2")
    loss = {"loss.beta_tc_annealing_epochs": 2, "loss.beta_tc_target": 1e4}
    # every logger, MLflow in a real SQLite store and W&B in its offline mode
    trackers = {
        "logging.loggers": ["csv", "tensorboard", "mlflow", "wandb"],
        "logging.mlflow.tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
        "logging.wandb.project": "vae-dynamics-tests",
    }
    cfg = small_exp_config("exp2_tcvae_sbd", tmp, **loss, **trackers)
    run_dir = tmp / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        first = train(cfg, run_dir, splits_dir=demo_splits)
        metrics_after_two = pd.read_csv(run_dir / "logs" / "version_0" / "metrics.csv")
        cfg3 = small_exp_config("exp2_tcvae_sbd", tmp, **loss, **trackers, **{"train.max_epochs": 3})
        resumed = train(cfg3, run_dir, resume=True, splits_dir=demo_splits)  # same splits: accepted
    return dict(cfg=cfg, run_dir=run_dir, first=first, resumed=resumed, metrics_after_two=metrics_after_two)


def test_exp2_run_produces_every_artifact(exp2_run):
    run_dir = exp2_run["run_dir"]
    for name in (
        "checkpoints/last.ckpt",
        "config_resolved.yaml",
        "splits/train.csv",
        "splits/val.csv",
        "train.log",
    ):
        assert (run_dir / name).is_file(), name
    best = run_dir / exp2_run["resumed"]["best_checkpoint"]  # relative to the run directory
    assert best.parent == run_dir / "checkpoints" and best.is_file()
    saved = yaml.safe_load((run_dir / "config_resolved.yaml").read_text())
    assert saved["model"]["variant"] == "tcvae_sbd" and saved["train"]["max_epochs"] == 3
    for epoch in (0, 1, 2):
        pngs = list((run_dir / "recon" / f"epoch_{epoch}").glob("*.png"))
        assert len(pngs) == 1 and pngs[0].stat().st_size > 10_000
    log = (run_dir / "train.log").read_text()
    assert "epoch 0" in log and "resuming from" in log and "4 train, 1 val" in log
    # TensorBoard continues the run's one version on resume: an event file per start, in version_0
    assert [p.name for p in (run_dir / "tensorboard").iterdir()] == ["version_0"]
    assert len(list((run_dir / "tensorboard" / "version_0").glob("events.out.tfevents.*"))) == 2


def test_a_resume_continues_the_runs_csv_file(exp2_run):
    run_dir, before = exp2_run["run_dir"], exp2_run["metrics_after_two"]
    assert [p.name for p in (run_dir / "logs").iterdir()] == ["version_0"]
    metrics = pd.read_csv(run_dir / "logs" / "version_0" / "metrics.csv")
    # the first start's rows as they were, then the resume's: each step once, in order
    pd.testing.assert_frame_equal(metrics.iloc[: len(before)][before.columns], before, check_dtype=False)
    assert metrics["step"].is_monotonic_increasing
    assert metrics.dropna(subset=["val/loss"])["epoch"].tolist() == [0, 1, 2]
    assert metrics.dropna(subset=["train_step/loss"])["step"].tolist() == list(range(6))


def test_a_resume_continues_the_mlflow_and_wandb_runs(exp2_run):
    import mlflow

    run_dir = exp2_run["run_dir"]
    kept = json.loads((run_dir / "trackers.json").read_text())
    client = mlflow.MlflowClient(tracking_uri=kept["mlflow"]["place"]["tracking_uri"])
    experiment = client.get_experiment_by_name(kept["mlflow"]["place"]["experiment"])
    (run,) = client.search_runs([experiment.experiment_id])  # one MLflow run for both starts
    assert run.info.run_id == kept["mlflow"]["id"] and run.info.run_name == "run"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")] == [1, 3, 5]
    # W&B offline: one folder per start, both of the same W&B run (`wandb sync` joins them)
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and {p.name.rsplit("-", 1)[1] for p in offline} == {kept["wandb"]["id"]}
    assert kept["wandb"]["place"] == {"project": "vae-dynamics-tests", "entity": None}


def test_every_key_is_logged_for_both_prefixes(exp2_run):
    metrics = exp2_run["metrics_after_two"]
    for prefix in ("train", "val"):
        for key in EXP2_KEYS:
            column = f"{prefix}/{key}"
            assert column in metrics.columns, column
            values = metrics[column].dropna()
            assert len(values) == 2 and np.isfinite(values.to_numpy(dtype=float)).all()


def test_beta_is_zero_at_epoch_zero_and_follows_the_warmup(exp2_run):
    per_epoch = read_metrics(exp2_run["run_dir"] / "logs")
    assert per_epoch["train/beta_tc"].tolist() == pytest.approx([0.0, 5e3, 1e4])  # 1e4 · epoch / 2
    assert per_epoch["val/beta_tc"].tolist() == pytest.approx([0.0, 5e3, 1e4])
    # at β = 0 the total is recon + mi + dwkl exactly
    row = per_epoch.iloc[0]
    assert row["train/loss"] == pytest.approx(
        row["train/recon"] + row["train/mi"] + row["train/dwkl"], rel=1e-5
    )


def test_during_the_warm_up_last_ckpt_is_the_chosen_checkpoint(exp2_run):
    first = exp2_run["first"]
    assert first["best_checkpoint"] == first["last_checkpoint"]
    assert "has not reached the target beta" in first["checkpoint_choice"]
    assert first["best_val_loss"] is None


def test_best_checkpoint_is_chosen_among_epochs_at_the_target_beta(exp2_run):
    per_epoch = read_metrics(exp2_run["run_dir"] / "logs")
    assert per_epoch["val/loss"].iloc[2] > per_epoch["val/loss"].iloc[0]  # β·TC made val/loss rise
    resumed = exp2_run["resumed"]
    assert Path(resumed["best_checkpoint"]).name.startswith("epoch002-")
    assert "target beta" in resumed["checkpoint_choice"]
    assert resumed["best_val_loss"] == pytest.approx(per_epoch["val/loss"].iloc[2], rel=1e-5)
    # warm-up epochs were never ranked: one ranked file beside last.ckpt
    names = sorted(p.name for p in (exp2_run["run_dir"] / "checkpoints").iterdir())
    assert names == [Path(resumed["best_checkpoint"]).name, "last.ckpt"], names
    # last.ckpt was written after every epoch, warm-up epochs included
    assert (
        torch.load(exp2_run["run_dir"] / resumed["last_checkpoint"], map_location="cpu", weights_only=False)[
            "epoch"
        ]
        == 2
    )


def test_resume_with_other_splits_is_refused_and_changes_nothing(exp2_run, tmp_path):
    run_dir = exp2_run["run_dir"]
    other = tmp_path / "other_splits"
    other.mkdir()
    train_csv = pd.read_csv(run_dir / "splits" / "train.csv")
    val_csv = pd.read_csv(run_dir / "splits" / "val.csv")
    train_csv.iloc[1:].to_csv(other / "train.csv", index=False)  # one subject fewer
    val_csv.to_csv(other / "val.csv", index=False)
    removed = train_csv["subject_id"].iloc[0]
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    cfg = small_exp_config(
        "exp2_tcvae_sbd",
        run_dir.parent,
        **{"loss.beta_tc_annealing_epochs": 2, "loss.beta_tc_target": 1e4, "train.max_epochs": 4},
    )
    with pytest.raises(ResumeError, match=rf"train\.csv: 1 subject\(s\) removed \({removed}\)"):
        train(cfg, run_dir, resume=True, splits_dir=other)
    after = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    assert after == before


def test_resume_continues_the_step_count_and_keeps_history(exp2_run):
    assert exp2_run["first"]["global_step"] == 4  # 2 epochs · 2 steps
    assert exp2_run["resumed"]["global_step"] == 6
    assert exp2_run["resumed"]["epochs"] == 3
    per_epoch = read_metrics(exp2_run["run_dir"] / "logs")
    assert per_epoch["epoch"].tolist() == [0, 1, 2]
    assert (exp2_run["run_dir"] / "logs" / "version_0" / "metrics.csv").is_file()


def test_resume_with_another_base_filters_is_refused(exp2_run):
    cfg = small_exp_config("exp2_tcvae_sbd", exp2_run["run_dir"].parent, **{"model.base_filters": 32})
    with pytest.raises(ResumeError, match=r"model\.base_filters: 16 -> 32"):
        train(cfg, exp2_run["run_dir"], resume=True)


def test_resume_with_another_lr_is_refused(exp2_run):
    """The optimizer's lr comes back from the checkpoint: a changed train.lr would be silently ignored."""
    loss = {"loss.beta_tc_annealing_epochs": 2, "loss.beta_tc_target": 1e4}  # as the run was trained
    cfg = small_exp_config("exp2_tcvae_sbd", exp2_run["run_dir"].parent, **loss, **{"train.lr": 5e-4})
    with pytest.raises(ResumeError, match=r"different config \(train\.lr: 0\.0001 -> 0\.0005\)"):
        train(cfg, exp2_run["run_dir"], resume=True)


def test_a_fresh_start_into_a_run_directory_with_checkpoints_is_refused_and_changes_nothing(exp2_run):
    run_dir = exp2_run["run_dir"]
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    cfg = small_exp_config("exp2_tcvae_sbd", run_dir.parent, **{"train.seed": 7})
    with pytest.raises(
        ResumeError, match=r"refusing to start a new run in .*last\.ckpt.*--resume.*--run-dir"
    ):
        train(cfg, run_dir)
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == before


def test_a_moved_run_directory_resumes_with_one_last_ckpt_its_best_score_and_its_step_count(
    exp2_run, tmp_path
):
    """Lightning compares checkpoint folders by real path; a moved (here: copied) run directory lost the
    best score and top-k bookkeeping and wrote last-v1.ckpt, which no resume reads."""
    import shutil

    from vae_dynamics.inference import load_run

    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(exp2_run["run_dir"], moved)
    before = torch.load(moved / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    (key,) = [k for k in before["callbacks"] if k.startswith("TargetBetaCheckpoint")]
    best_before = float(before["callbacks"][key]["best_model_score"])
    cfg = small_exp_config(
        "exp2_tcvae_sbd",
        tmp_path,
        **{"loss.beta_tc_annealing_epochs": 2, "loss.beta_tc_target": 1e4, "train.max_epochs": 4},
    )
    summary = train(cfg, moved, resume=True)
    names = sorted(p.name for p in (moved / "checkpoints").iterdir())
    assert "last.ckpt" in names and not [n for n in names if re.search(r"-v\d+\.ckpt$", n)], names
    after = torch.load(moved / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    state = after["callbacks"][key]
    val3 = read_metrics(moved / "logs").set_index("epoch").loc[3, "val/loss"]
    assert float(state["best_model_score"]) == pytest.approx(min(best_before, val3), rel=1e-6)
    assert after["global_step"] == summary["global_step"] == 8  # 6 before, 2 more: not restarted
    for path in [state["best_model_path"], *state["best_k_models"]]:
        assert Path(path).parent == (moved / "checkpoints").resolve(), path
    assert summary["best_checkpoint"].startswith("checkpoints/")  # relative: valid after the next move
    (moved.parent / "train_summary.json").write_text(json.dumps({**summary, "run_dir": "run"}))
    shutil.move(str(moved.parent), str(tmp_path / "again"))
    assert load_run(tmp_path / "again" / "train_summary.json", device="cpu").run_dir.name == "run"


def test_a_second_training_in_a_held_run_directory_fails_at_once_naming_the_holder(demo_splits, tmp_path):
    """A requeued job whose old process lives, a --resume beside a running Snakemake job, --nolock: two
    trainings would overwrite each other's last.ckpt. The first holds the lock; the second stops at once.
    The lock is taken where the training takes it, by a process that then waits (the holder)."""
    import time

    from vae_dynamics.training.run_dir import RunDirBusyError

    run_dir = tmp_path / "run"
    code = (
        "import sys, time; from pathlib import Path; from vae_dynamics.training.run_dir import RunDir\n"
        f"with RunDir(Path({str(run_dir)!r})).lock():\n    print('held', flush=True); time.sleep(120)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        (run_dir / "checkpoints").mkdir()
        stale = run_dir / "checkpoints" / ".last.ckpt.0123456789ab.partial"
        stale.write_bytes(b"x")  # the holder's own write in progress: never removed by the loser
        cfg = small_exp_config("exp2_tcvae_sbd", tmp_path, **{"train.max_epochs": 1})
        start = time.monotonic()
        with pytest.raises(
            RunDirBusyError, match=rf"in use by another training \(host .*, pid {holder.pid}, started "
        ):
            train(cfg, run_dir, splits_dir=demo_splits)
        assert time.monotonic() - start < 30 and stale.exists()
        assert not (run_dir / "config_resolved.yaml").exists()  # the loser wrote nothing
    finally:
        holder.kill()
        holder.wait()
    with RunDir(run_dir).lock():  # the kernel released the dead holder's lock; its leftovers go
        assert not stale.exists()


def test_every_start_is_recorded_and_a_resume_across_a_code_change_warns(exp2_run, tmp_path, capsys):
    """provenance.json was rewritten at every restart (the first start's record was lost) and a resume
    after a code change was silent. Now: one entry per start; every checkpoint names the code that
    wrote it."""
    import shutil

    from vae_dynamics import __version__

    prov = json.loads((exp2_run["run_dir"] / "provenance.json").read_text())
    assert len(prov["starts"]) == 2 and all(s["finished"] >= s["started"] for s in prov["starts"])
    assert prov["started"] == prov["starts"][-1]["started"]  # the latest start on top, as readers expect
    ckpt = torch.load(
        exp2_run["run_dir"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    assert ckpt["vae_dynamics"]["version"] == __version__
    moved = tmp_path / "run"
    shutil.copytree(exp2_run["run_dir"], moved)
    ckpt["vae_dynamics"] = {"version": "0.0.1", "git_commit": "0" * 40, "git_dirty": False}
    torch.save(ckpt, moved / "checkpoints" / "last.ckpt")
    cfg = small_exp_config(
        "exp2_tcvae_sbd",
        tmp_path,
        **{"loss.beta_tc_annealing_epochs": 2, "loss.beta_tc_target": 1e4, "train.max_epochs": 4},
    )
    train(cfg, moved, resume=True)
    warning = f"crosses a code change (vae_dynamics 0.0.1 at 000000000000 -> vae_dynamics {__version__} at"
    assert warning in capsys.readouterr().err and warning in (moved / "train.log").read_text()
    assert len(json.loads((moved / "provenance.json").read_text())["starts"]) == 3


def test_every_rank_of_an_srun_launch_without_run_dir_derives_the_same_folder(tmp_path, monkeypatch):
    """`srun` starts all ranks at once; without --run-dir each made its own timestamped folder and
    ranks > 0 waited 6 hours for rank 0's files there."""
    from vae_dynamics.training.distributed import launched_rank

    cfg = small_exp_config("exp2_tcvae_sbd", tmp_path)
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    folders = set()
    for procid in ("0", "1"):
        monkeypatch.setenv("SLURM_PROCID", procid)
        folders.add(RunDir.for_launch(cfg, None, launched_rank(1)).path)
    assert folders == {tmp_path / "runs" / "slurm-4242_exp2_tcvae_sbd"}
    monkeypatch.delenv("SLURM_JOB_ID")  # torchrun-like: several processes, no job id to share
    with pytest.raises(ResumeError, match=r"several started at once .*--run-dir"):
        RunDir.for_launch(cfg, None, 1)
    assert RunDir.for_launch(cfg, tmp_path / "given", 1).path == tmp_path / "given"


def test_resume_without_checkpoint_says_so(tmp_path):
    cfg = small_exp_config("exp2_tcvae_sbd", tmp_path)
    with pytest.raises(ResumeError, match="no checkpoint"):
        train(cfg, tmp_path / "empty_run", resume=True)


def test_checkpoint_reloads_to_the_same_validation_loss(exp2_run, demo_splits):
    import lightning as L

    from vae_dynamics.data.datamodule import BraTSDataModule

    cfg = exp2_run["cfg"]
    ckpt = exp2_run["run_dir"] / exp2_run["resumed"]["last_checkpoint"]
    dm = BraTSDataModule(cfg.data, exp2_run["run_dir"] / "splits", seed=0)
    losses = []
    for _ in range(2):
        module = TCVAELitModule.load_from_checkpoint(ckpt, map_location="cpu")
        assert module.dataset_size == 4 and module.cfg.loss.beta_tc_target == 1e4
        torch.manual_seed(123)  # same reparameterisation noise
        trainer = L.Trainer(
            accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
        )
        losses.append(trainer.validate(module, datamodule=dm, verbose=False)[0]["val/loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["global_step"] == 6 and state["epoch"] == 2


def test_non_finite_loss_stops_with_term_epoch_and_step():
    module = exp2_module()
    x = torch.rand(2, 4, 128, 128, 128)
    x[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"recon=nan.*epoch 0, global step 0") as info:
        module.training_step({"image": x}, 0)
    cause = info.value.__cause__  # the loss function's own error and traceback are kept
    assert isinstance(cause, NonFiniteLossError) and "epoch" not in str(cause)
    assert cause.__traceback__ is not None


def test_exp1_trains_through_the_script(demo_splits, tmp_path):
    run_dir = tmp_path / "exp1"
    args = [
        *train_script_args("exp1_baseline_vae", run_dir, tmp_path / "cache"),
        "--splits",
        str(demo_splits),
    ]
    result = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = pd.read_csv(run_dir / "logs" / "version_0" / "metrics.csv")
    for key in ("train/loss", "train/recon", "train/kl", "train/beta_kl", "val/loss", "val/kl"):
        assert key in metrics.columns
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert len(list((run_dir / "recon" / "epoch_0").glob("*.png"))) == 1


def test_script_rejects_bad_config_before_any_work(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "train.py"),
            "--config",
            str(REPO / "src/vae_dynamics/config/exp2_tcvae_sbd.yaml"),
            "--set",
            "model.variant=ode",
            "--run-dir",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "model.variant" in result.stderr and "baseline_vae" in result.stderr
    assert not (tmp_path / "r").exists()


def test_default_run_directory_is_timestamped_with_the_experiment_name(tmp_path):
    from vae_dynamics.training.run_dir import RunDir

    cfg = small_exp_config("exp2_tcvae_sbd", tmp_path)
    path = RunDir.new(cfg).path
    assert path.parent == tmp_path / "runs" and path.name.endswith("_exp2_tcvae_sbd")


def test_a_damaged_last_ckpt_resumes_from_the_newest_intact_checkpoint_or_stops(exp2_run, tmp_path, capsys):
    import shutil

    from vae_dynamics.training.checkpointing import DamagedCheckpointError

    run_dir = tmp_path / "run"
    shutil.copytree(exp2_run["run_dir"], run_dir)
    (best,) = [p for p in (run_dir / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt"]
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:4096])  # a copy cut short by a kill
    loss = {"loss.beta_tc_annealing_epochs": 2, "loss.beta_tc_target": 1e4}
    cfg = small_exp_config("exp2_tcvae_sbd", run_dir.parent, **loss, **{"train.max_epochs": 4})
    summary = train(cfg, run_dir, resume=True)
    assert summary["global_step"] == 8  # from the best checkpoint's step 6, one more epoch of 2 steps
    note = "last.ckpt is damaged"
    assert note in capsys.readouterr().err and best.name in (run_dir / "train.log").read_text()
    # nothing intact: refuse, naming the file, and change nothing
    for ckpt in (run_dir / "checkpoints").glob("*.ckpt"):
        ckpt.write_bytes(b"PK\x03\x04 truncated")
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(
        DamagedCheckpointError, match=rf"{last}.* is damaged .* refusing to restart from epoch 0"
    ):
        train(cfg, run_dir, resume=True)
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == before


def test_a_trained_run_loads_its_chosen_checkpoint_as_the_bare_model(exp2_run, tmp_path):
    """Export, encoding and evaluation load the model without Lightning: the weights Lightning restores."""
    import json

    from vae_dynamics.inference import load_run
    from vae_dynamics.models import TCVAESBD

    summary = tmp_path / "train_summary.json"
    summary.write_text(json.dumps({**exp2_run["resumed"], "run_dir": str(exp2_run["run_dir"])}))
    run = load_run(summary, "cpu")
    assert type(run.model) is TCVAESBD and not run.model.training and run.cfg.model.base_filters == 16
    reference = TCVAELitModule.load_from_checkpoint(
        exp2_run["run_dir"] / exp2_run["resumed"]["best_checkpoint"], map_location="cpu"
    )
    expected = reference.model.state_dict()
    got = run.model.state_dict()
    assert list(got) == list(expected) and all(torch.equal(got[k], expected[k]) for k in expected)
    # a checkpoint that does not fit the config's model is named, with the config it was checked against
    foreign = tmp_path / "foreign.ckpt"
    state = torch.load(
        exp2_run["run_dir"] / exp2_run["resumed"]["best_checkpoint"], map_location="cpu", weights_only=True
    )
    state["state_dict"] = {k: v for k, v in state["state_dict"].items() if "decoder.final" not in k}
    torch.save(state, foreign)
    summary.write_text(json.dumps({**exp2_run["resumed"], "best_checkpoint": str(foreign)}))
    with pytest.raises(
        RuntimeError, match=rf"(?s){foreign}: does not fit the exp2_tcvae_sbd model of .*decoder\.final"
    ):
        load_run(summary, "cpu")


def test_evaluation_and_encoding_import_no_lightning():
    code = (
        "import sys, vae_dynamics.evaluation.evaluate, vae_dynamics.evaluation.encode\n"
        "import vae_dynamics.pipeline.plan, vae_dynamics.pipeline.steps\n"
        "print(sorted(m for m in ('lightning', 'pytorch_lightning') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr[-2000:]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("key", [{"data.gpu_cache": True}, {"train.accelerator": "gpu"}])
def test_a_start_asking_for_hardware_this_machine_lacks_writes_nothing(tmp_path, key):
    from vae_dynamics.config import ConfigError

    cfg = small_exp_config("exp2_tcvae_sbd", tmp_path, **key)
    with pytest.raises(ConfigError, match=f"{next(iter(key))}: .*needs"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_fresh_start_after_a_failed_start_derives_splits_and_contract_anew(
    demo_root, tmp_path, monkeypatch
):
    """A start that failed after writing splits/ and preprocessing.json must not hand them to the next
    fresh start (another data root and spacing trained on the old subjects, and inference then refused
    the run). The relative cache folder is written absolute, and the leftover removal reaches train.log."""
    run_dir = tmp_path / "run"
    (run_dir / "splits").mkdir(parents=True)
    for name in ("train.csv", "val.csv"):
        (run_dir / "splits" / name).write_text("subject_id,t1c,t1n,t2f,t2w,seg\nOLD-1,a,b,c,d,e\n")
    (run_dir / "preprocessing.json").write_text(json.dumps({"fov_mm": 200.0}))
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / ".last.ckpt.0123456789ab.partial").write_bytes(b"x")
    cfg = small_exp_config(
        "exp2_tcvae_sbd",
        tmp_path,
        **{"train.max_epochs": 1, "data.root_dir": str(demo_root), "data.cache_dir": "cache"},
    )
    monkeypatch.chdir(tmp_path)  # the relative cache folder lies here
    train(cfg, run_dir)
    ids = {*pd.read_csv(run_dir / "splits" / "train.csv")["subject_id"]}
    ids |= {*pd.read_csv(run_dir / "splits" / "val.csv")["subject_id"]}
    assert "OLD-1" not in ids and ids == {p.name for p in demo_root.iterdir() if p.is_dir()}
    assert json.loads((run_dir / "preprocessing.json").read_text())["fov_mm"] == 192.0
    saved = yaml.safe_load((run_dir / "config_resolved.yaml").read_text())
    assert saved["data"]["cache_dir"] == str(tmp_path / "cache")
    assert "removed the leftover of an interrupted write" in (run_dir / "train.log").read_text()


def test_lowering_max_epochs_on_resume_is_refused_and_equal_trains_nothing(exp2_run, capsys):
    """The run holds 3 epochs (2, then a resume to 3). Lower: one line naming the run directory, what it
    holds and what to do, before the Trainer starts, checkpoints untouched. Equal: nothing to train."""
    run_dir, cfg = exp2_run["run_dir"], exp2_run["cfg"]
    before = {p.name: p.stat().st_mtime_ns for p in (run_dir / "checkpoints").iterdir()}
    shorter = cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_epochs": 2})})
    with pytest.raises(ResumeError, match=rf"{run_dir} already holds 3 epochs, and train.max_epochs is 2"):
        train(shorter, run_dir, resume=True)
    assert {p.name: p.stat().st_mtime_ns for p in (run_dir / "checkpoints").iterdir()} == before
    same = cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_epochs": 3})})
    summary = train(same, run_dir, resume=True)
    assert summary["epochs"] == 3 and summary["global_step"] == exp2_run["resumed"]["global_step"]
    assert "already holds its 3 epochs (train.max_epochs 3): nothing to train" in capsys.readouterr().err


def test_lowering_max_epochs_through_the_script_is_one_line(exp2_run, tmp_path):
    run_dir = exp2_run["run_dir"]
    loss = ["--set", "loss.beta_tc_annealing_epochs=2", "--set", "loss.beta_tc_target=1e4"]  # the run's own
    args = [*train_script_args("exp2_tcvae_sbd", run_dir, tmp_path / "cache"), *loss, "--resume"]
    done = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "already holds 3 epochs, and train.max_epochs is 1" in done.stderr
