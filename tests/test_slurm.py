"""The demo workflow and a sweep through profiles/slurm on a real one-node SLURM cluster started here.

Installs Debian's slurm-wlm and munge if missing, starts munged, slurmctld and slurmd (one node,
two GPU generic resources backed by /dev/null and /dev/zero), runs the workflow with the SLURM executor
(Exp2 with DDP over both GPUs and, in the same invocation, a 2-run sweep to its summary), checks what
each job asked for, and stops the daemons it started, by PID. The suite's only real sweep run is here;
without SLURM (no root, no apt-get) these tests are skipped and test_workflow.py still plans a sweep.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import THREADS, copy_workflow

from vae_dynamics.training.run_dir import summary_run_dir

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

SLURM_CONF = """\
ClusterName=vaedynamics
SlurmctldHost={host}
SlurmctldPort=16817
SlurmdPort=16818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=3600
StateSaveLocation={tmp}/state
SlurmdSpoolDir={tmp}/spool
SlurmctldPidFile={tmp}/slurmctld.pid
SlurmdPidFile={tmp}/slurmd.pid
SlurmctldLogFile={tmp}/slurmctld.log
SlurmdLogFile={tmp}/slurmd.log
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=8000 Gres=gpu:2 State=UNKNOWN
PartitionName=cpu Nodes={host} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={host} MaxTime=INFINITE State=UP
"""


def ensure_packages() -> None:
    if shutil.which("slurmctld") and shutil.which("slurmd") and shutil.which("munged"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("slurm-wlm/munge missing and cannot be installed (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"], check=True, env=env, capture_output=True
    )


def munge_works() -> bool:
    enc = subprocess.run(["munge", "-n"], capture_output=True)
    return (
        enc.returncode == 0
        and subprocess.run(["unmunge"], input=enc.stdout, capture_output=True).returncode == 0
    )


def wait_for(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.5)


def stop_all(pids: list[int], grace: float = 10.0) -> None:
    """SIGTERM to every daemon at once, then wait for them together; SIGKILL what is left after `grace`."""
    alive = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
            alive.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.time() + grace
    while alive and time.time() < deadline:
        time.sleep(0.1)
        for pid in list(alive):
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our child (slurmctld, slurmd): reaped
                    alive.remove(pid)
            except ChildProcessError:  # not our child (munged daemonises): is it still there?
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    alive.remove(pid)
    for pid in alive:
        os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    ensure_packages()
    tmp = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool"):
        (tmp / sub).mkdir()
    host = socket.gethostname().split(".")[0]
    # srun inside a job step reads the default location, so the config goes to /etc/slurm
    # (any existing files are moved aside and restored afterwards).
    etc = Path("/etc/slurm")
    etc.mkdir(parents=True, exist_ok=True)
    conf = etc / "slurm.conf"
    backups = {}
    for name in ("slurm.conf", "gres.conf"):
        if (etc / name).exists():
            backups[name] = tmp / f"{name}.orig"
            shutil.move(etc / name, backups[name])
    conf.write_text(SLURM_CONF.format(host=host, tmp=tmp, cpus=os.cpu_count()))
    # two GPU generic resources backed by character devices that are not GPUs
    (etc / "gres.conf").write_text(
        f"NodeName={host} Name=gpu File=/dev/null\nNodeName={host} Name=gpu File=/dev/zero\n"
    )
    env = {**os.environ, "SLURM_CONF": str(conf), "PATH": f"{BIN}:{os.environ['PATH']}"}
    started = []  # (name, pid) of the daemons this fixture started
    try:
        if not munge_works():
            Path("/run/munge").mkdir(parents=True, exist_ok=True)
            if not Path("/etc/munge/munge.key").exists():
                subprocess.run(["mungekey", "--create"], check=True)
            pidfile = tmp / "munged.pid"
            subprocess.run(["munged", "--force", f"--pid-file={pidfile}"], check=True)
            wait_for(munge_works, "munged")
            started.append(("munged", int(pidfile.read_text().strip())))
        for daemon in ("slurmctld", "slurmd"):
            proc = subprocess.Popen(
                [daemon, "-D", "-f", str(conf)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )  # logs: <tmp>/<daemon>.log
            started.append((daemon, proc.pid))

        def node_idle() -> bool:
            out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True)
            return out.returncode == 0 and "idle" in out.stdout

        wait_for(node_idle, "the SLURM node to become idle", timeout=90)
        yield {"env": env, "tmp": tmp}
    finally:
        for name in ("slurm.conf", "gres.conf"):
            (etc / name).unlink(missing_ok=True)
            if name in backups:
                shutil.move(backups[name], etc / name)
        stop_all([pid for _daemon, pid in reversed(started)])


@pytest.fixture(scope="module")
def slurm_runs(slurm_cluster, demo_root, tmp_path_factory):
    """Through profiles/slurm, in one Snakemake invocation: the demo workflow (Exp2 with DDP over the
    node's 2 GPUs) to results/exp2/done and a 2-run sweep (seeds 5, 6) on the same index and cache to
    its summary, their jobs sharing the node. This is the suite's real sweep run (test_workflow.py plans
    a larger one without running it)."""
    env = slurm_cluster["env"]
    work = copy_workflow(tmp_path_factory.mktemp("slurm_wf") / "wf")
    demo = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    demo["experiments"] = {
        "exp2": str(REPO / "src/vae_dynamics/config/exp2_tcvae_sbd.yaml"),
        "exp1": str(REPO / "src/vae_dynamics/config/exp1_baseline_vae.yaml"),
    }
    demo["data_root"], demo["demo"] = str(demo_root), None  # the session's 5 demo subjects: 3 train, 2 val
    demo["overrides"]["train.max_epochs"] = 2  # the plumbing, not the learning
    demo["overrides"]["train.devices"] = 2  # DDP over the node's two GPU resources (CPU processes, gloo)
    demo.pop("sweep", None)  # the demo's sweep; the sweep run here is config/sweep.yaml
    demo["evaluation"] = {"traversed_dims": 1}  # each run's evaluation draws one traversal (8 by default)
    (work / "config" / "demo.yaml").write_text(yaml.safe_dump(demo))
    (work / "config" / "sweep.yaml").write_text(
        yaml.safe_dump(
            {"sweep": {"seeds": [5, 6], "overrides": {"train.max_epochs": 1, "train.devices": 1}, "exp2": {}}}
        )
    )
    cores = str(THREADS)  # all the node's CPUs, or this test process's share of them under xdist
    gpu_steps = ("train_exp2", "train_sweep_run", "encode_latents", "evaluate_latents")
    args = [
        str(BIN / "snakemake"),
        "--profile",
        "profiles/slurm",
        "--configfile",
        "config/demo.yaml",
        "config/sweep.yaml",
        "--slurm-no-account",
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "1",
        "--seconds-between-status-checks",
        "1",
        "--slurm-keep-successful-logs",
        "--jobs",
        "2",
        "--latency-wait",
        "5",
        "--default-resources",
        "slurm_partition=cpu",
        "runtime=60",
        "mem_mb=1500",
        "cpus_per_task=1",
        "--set-resources",
        "train_exp2:mem_mb=6000",
        "train_sweep_run:mem_mb=6000",
        "encode_latents:mem_mb=3000",
        "evaluate_latents:mem_mb=4000",
        *(f"{rule}:slurm_partition=gpu" for rule in gpu_steps),
        *(f"{rule}:cpus_per_task={cores}" for rule in gpu_steps),
        "--set-threads",
        "make_demo_dataset=1",
        "index_subjects=1",
        "build_persistent_cache=1",
        "subject_factors=1",
        *(f"{rule}={cores}" for rule in gpu_steps),
        "--resources",
        "gpu=2",  # profiles/default (always loaded) caps at 1; the DDP training needs 2
        "--",
        "results/exp2/done",
        "results/sweep/done",
    ]
    result = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-6000:]
    jobs = scontrol_jobs(env).splitlines()
    runs = ["sweep/exp2/seed=5", "sweep/exp2/seed=6"]
    # a job's comment names its rule and wildcards: the sweep's jobs name their run, sweep/exp2/seed=<s>
    main_jobs = "\n".join(line for line in jobs if not re.search(r"Comment=\S*sweep", line))
    return {"work": work, "main_jobs": main_jobs, "jobs": "\n".join(jobs), "runs": runs}


def scontrol_jobs(env: dict) -> str:
    """Every job the controller remembers (MinJobAge=3600), one line each."""
    return subprocess.run(
        ["scontrol", "show", "job", "--oneliner"], env=env, capture_output=True, text=True
    ).stdout


def local_dry_run(work: Path, target: str) -> str:
    """What the local executor would (re)do in the SLURM work folder, with the sweep's config."""
    out = subprocess.run(
        [
            str(BIN / "snakemake"),
            "-n",
            "--cores",
            "1",
            "--configfile",
            "config/demo.yaml",
            "config/sweep.yaml",
            "--",
            target,
        ],
        cwd=work,
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"},
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


def test_demo_workflow_runs_through_the_slurm_profile(slurm_runs):
    work, jobs = slurm_runs["work"], slurm_runs["main_jobs"]
    assert (work / "results/exp2/done").is_file()
    assert len(list((work / "results/exp2/recon_panels").glob("*.png"))) == 2  # one per validation subject
    summary = json.loads((work / "results/exp2/train_summary.json").read_text())
    # 3 train subjects over 2 processes (2 each, padded), batch 2 per process: 1 step per epoch, 2 epochs
    assert summary["global_step"] == 2
    job_logs = "".join(p.read_text() for p in (work / ".snakemake/slurm_logs/rule_train_exp2").glob("*.log"))
    assert "localrule train_exp2" in job_logs and "gpu=2" in job_logs  # the one SLURM job of the training
    train_log = (work / "logs/train_exp2.log").read_text()
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in train_log  # Lightning started the second process in that job
    assert "\x00" not in train_log and "finished:" in train_log  # both ranks append; rank 0's log is whole
    assert summary["checkpoint_choice"] and summary["n_train"] == 3  # written by rank 0 only
    run_dir = summary_run_dir(work / "results/exp2/train_summary.json")
    assert run_dir.train_log.read_text().count("starting run") == 1

    train_jobs = [line for line in jobs.splitlines() if "train_exp2" in line]
    assert train_jobs, jobs[-3000:]
    # --gpus=2 (train.devices) shows as TresPerJob=gres:gpu:2 (22.05) or gres/gpu=2 (newer releases)
    assert all(re.search(r"TresPerJob=gres[:/]gpu[:=]2\b", line) for line in train_jobs), train_jobs
    assert all("Partition=gpu" in line for line in train_jobs)
    metrics = json.loads((work / "results/exp2/evaluation/metrics.json").read_text())
    assert len(metrics["traversals"]["dims"]) == 1  # evaluation.traversed_dims of the workflow config
    assert len(list((work / "results/exp2/evaluation/traversals").glob("z*.png"))) == 1
    gpu_steps = [line for line in jobs.splitlines() if "encode_latents" in line or "evaluate_latents" in line]
    assert len(gpu_steps) == 2, jobs[-3000:]
    assert all(
        "Partition=gpu" in line and re.search(r"TresPerJob=gres[:/]gpu[:=]1\b", line) for line in gpu_steps
    )
    other = [line for line in jobs.splitlines() if "index_subjects" in line]
    assert other and "gres/gpu" not in other[0] and "JobState=COMPLETED" in other[0]


def test_each_sweep_run_is_trained_in_its_own_slurm_job_with_its_gpu(slurm_runs):
    work, jobs = slurm_runs["work"], slurm_runs["jobs"]
    for run in slurm_runs["runs"]:
        assert json.loads((work / "results" / run / "train_summary.json").read_text())["epochs"] == 1
    sweep_jobs = [line for line in jobs.splitlines() if "train_sweep_run" in line]
    assert len(sweep_jobs) == 2, jobs[-3000:]
    assert all(
        "Partition=gpu" in line and re.search(r"TresPerJob=gres[:/]gpu[:=]1\b", line) for line in sweep_jobs
    )
    assert all("JobState=COMPLETED" in line for line in sweep_jobs)
    evaluations = [line for line in jobs.splitlines() if "evaluate_latents" in line]
    assert len(evaluations) == 3 and all(
        "JobState=COMPLETED" in line for line in evaluations
    )  # Exp2 + 2 runs


def test_the_sweep_runs_through_to_its_summary(slurm_runs):
    work, runs = slurm_runs["work"], slurm_runs["runs"]
    for run in runs:
        summary = json.loads((work / "results" / run / "train_summary.json").read_text())
        run_dir = summary_run_dir(work / "results" / run / "train_summary.json").path.resolve()
        assert summary["epochs"] == 1 and run_dir.parent == (work / "results" / run / "runs").resolve()
        assert (work / "results" / run / "evaluation" / "metrics.json").is_file()
    md = (work / "results/sweep/summary.md").read_text()
    assert "2 of 2 runs evaluated" in md and "seeds: [5, 6]" in md and "(n=2)" in md
    table = pd.read_csv(work / "results/sweep/summary.csv")
    assert sorted(table["run"]) == runs and sorted(table["train.seed"]) == [5, 6]
    assert (table["val_mse_over_zero_predictor"] > 0).all()
    for png in ("tradeoff.png", "seeds.png"):
        assert (work / "results/sweep" / png).stat().st_size > 10_000


def test_a_finished_sweep_is_a_noop_and_a_lost_evaluation_is_redone_alone(slurm_runs):
    work = slurm_runs["work"]
    assert "Nothing to be done" in local_dry_run(work, "results/sweep/done")
    shutil.rmtree(work / "results/sweep/exp2/seed=6/evaluation")
    dry = local_dry_run(work, "results/sweep/done")
    assert set(re.findall(r"wildcards: run=(\S+)", dry)) == {"sweep/exp2/seed=6"}, dry[-3000:]
    assert "train_sweep_run" not in dry and "encode_latents" not in dry
    assert re.search(r"^evaluate_latents\s+1$", dry, re.M) and re.search(r"^sweep_summary\s+1$", dry, re.M)
