"""Data-parallel training on CPU (gloo, 2 processes): the global-batch MWS estimator and a real DDP run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import exp2_module, train_script_args

from vae_dynamics.losses import compute_tcvae_loss
from vae_dynamics.training.lit_modules import TCVAELitModule

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
WORLD, PER_RANK, N_TRAIN = 2, 2, 100
TERMS = ("loss", "recon", "mi", "tc", "dwkl")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_module() -> TCVAELitModule:
    torch.manual_seed(0)
    return exp2_module(N_TRAIN, **{"loss.beta_tc_annealing_epochs": 0})


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(WORLD * PER_RANK, 4, 128, 128, 128, generator=g)
    eps = torch.randn(WORLD * PER_RANK, 128, generator=g)  # the reparameterisation noise of every sample
    return x, eps


def step_terms(module: TCVAELitModule, x: torch.Tensor, eps: torch.Tensor, gather: bool):
    """Forward with fixed noise, the module's loss (gathered under DDP, or local only), backward."""
    mu, logvar = module.model.encoder(x)
    z = mu + eps * torch.exp(0.5 * logvar)
    x_hat = module.model.decode(z)
    if gather:
        terms = module.compute_loss(x_hat, x, mu, logvar, z)
    else:  # the naive DDP version: each process estimates log q(z) from its own samples only
        terms = compute_tcvae_loss(x_hat, x, mu, logvar, z, dataset_size=N_TRAIN, beta_tc=6.0)
    world = dist.get_world_size() if dist.is_initialized() else 1
    (terms["loss"] * world).backward()  # what _VAEStepsMixin returns under DDP
    return terms


def _worker(rank: int, port: int, out: str) -> None:
    """One DDP step of each estimator (gathered over the processes, then each process's own), fresh
    modules."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        results = {}
        for gather in (True, False):
            module = make_module()
            x, eps = global_batch()
            rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
            terms = step_terms(module, x[rows], eps[rows], gather)
            values = torch.stack([terms[k].detach() for k in TERMS])
            dist.all_reduce(values)  # the global batch's terms, as logged
            grads = torch.cat([p.grad.flatten() for p in module.parameters()])
            dist.all_reduce(grads)
            grads /= WORLD  # DDP averages gradients over processes
            results[gather] = {"terms": values, "grads": grads}
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def single_process():
    module = make_module()
    x, eps = global_batch()
    terms = step_terms(module, x, eps, gather=False)
    return {
        "terms": torch.stack([terms[k].detach() for k in TERMS]),
        "grads": torch.cat([p.grad.flatten() for p in module.parameters()]),
    }


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> dict:
    """{gather: rank 0's terms and averaged gradients} of one 2-process run (spawned once for both)."""
    out = tmp_path_factory.mktemp("ddp") / "rank0.pt"
    mp.start_processes(_worker, args=(free_port(), str(out)), nprocs=WORLD, start_method="spawn")
    return torch.load(out)


def test_two_processes_equal_one_process_on_the_global_batch(single_process, two_processes):
    ddp = two_processes[True]
    assert torch.allclose(ddp["terms"], single_process["terms"], rtol=1e-5), (
        ddp["terms"],
        single_process["terms"],
    )
    ref = single_process["grads"]
    assert float((ddp["grads"] - ref).norm() / ref.norm()) < 1e-5


def test_without_gathering_the_equivalence_fails(single_process, two_processes):
    """The naive DDP version (each process's MWS over its own 2 samples) fails the test above."""
    naive = two_processes[False]
    assert torch.allclose(naive["terms"][1], single_process["terms"][1], rtol=1e-5)  # recon: no estimator
    for k in (2, 3, 4):  # mi, tc, dwkl: estimated from other samples and log(N·M) with M = 2 instead of 4
        assert not torch.allclose(naive["terms"][k], single_process["terms"][k], rtol=1e-5), TERMS[k]
    ref = single_process["grads"]
    assert float((naive["grads"] - ref).norm() / ref.norm()) > 1e-5


def test_two_process_training_through_the_script_and_resume(demo_splits, tmp_path):
    run_dir = tmp_path / "ddp"
    common = [
        sys.executable,
        str(REPO / "scripts" / "train.py"),
        "--config",
        str(REPO / "src/vae_dynamics/config/exp2_tcvae_sbd.yaml"),
        "--run-dir",
        str(run_dir),
        "--set",
        "train.devices=2",
        "--set",
        "train.accelerator=cpu",
        "--set",
        "model.base_filters=16",
        "--set",
        "data.batch_size=1",
        "--set",
        "data.num_workers=0",
        "--set",
        "train.precision=bf16-mixed",
        "--set",
        f"data.cache_dir={tmp_path / 'cache'}",
        "--set",
        "logging.recon_every_n_epochs=1",
        "--set",
        "logging.num_recon_samples=1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(
        [*common, "--splits", str(demo_splits), "--set", "train.max_epochs=1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=900,
    )
    assert first.returncode == 0, first.stderr[-4000:]
    assert first.stdout.count("best checkpoint:") == 1  # only rank 0 reports
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt"]  # warm-up: no best
    assert [p.relative_to(run_dir).as_posix() for p in run_dir.glob("logs/*/metrics.csv")] == [
        "logs/version_0/metrics.csv"
    ]
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 2  # 4 train subjects, 2 per step (1 per device), DistributedSampler shards
    assert len(list((run_dir / "recon" / "epoch_0").glob("*.png"))) == 1
    log = (run_dir / "train.log").read_text()
    assert log.count("starting run") == 1

    again = subprocess.run(
        [*common, "--resume", "--set", "train.max_epochs=2"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=900,
    )
    assert again.returncode == 0, again.stderr[-4000:]
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 4 and state["epoch"] == 1
    metrics = pd.read_csv(run_dir / "logs" / "version_0" / "metrics.csv")  # the run's one file, continued
    assert metrics["val/tc"].notna().sum() == 2 and metrics["train/loss"].notna().sum() == 2
    assert metrics["step"].is_monotonic_increasing

    refused = subprocess.run(
        [*common, "--resume", "--set", "train.max_epochs=3", "--set", "train.devices=1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert refused.returncode != 0 and "train.devices: 2 -> 1" in refused.stderr


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(c) for c in fh.read().split()]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads child processes from /proc (Linux)")
@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM], ids=["SIGUSR1", "SIGTERM"])
def test_a_stop_signal_to_one_ddp_rank_stops_both_together_with_one_last_checkpoint(
    demo_splits, tmp_path, signum
):
    """SIGUSR1 or SIGTERM to rank 1 only (`scancel --signal=USR1 --batch` reaches one process): every rank
    leaves at the same step with exit 75, last.ckpt holds that mid-epoch step, nothing hangs. Before the
    ranks agreed, rank 1 stopped alone and waited in the save's barrier while rank 0 ran the next step."""
    run_dir = tmp_path / "ddp"
    # The shared CPU-sized script command (conftest), as 2 CPU ranks of 1 subject each, for long enough.
    sets = (
        "train.devices=2",
        "train.accelerator=cpu",
        "data.batch_size=1",
        "logging.recon_every_n_epochs=100",
        "train.max_epochs=20",
    )
    cmd = [
        *train_script_args("exp2_tcvae_sbd", run_dir, tmp_path / "cache", *sets),
        "--splits",
        str(demo_splits),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 600
        while not (run_dir / "checkpoints" / "last.ckpt").exists():  # epoch 0 done: both ranks train
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.time() < deadline, "no checkpoint after 10 minutes"
            time.sleep(0.5)
        (rank1,) = _children(proc.pid)  # Lightning's launcher starts rank 1 as a child of rank 0
        time.sleep(3)  # inside epoch 1
        os.kill(rank1, signum)
        _, stderr = proc.communicate(timeout=300)  # a hang would end here
    finally:
        if proc.poll() is None:  # a hang: both ranks go (rank 1 is in rank 0's process group)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 75, stderr[-3000:]
    assert f"{signal.Signals(signum).name} received (rank 1)" in stderr
    assert "a stop signal to another rank received (rank 0)" in (run_dir / "train.log").read_text() + stderr
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("last")) == [
        "last.ckpt"
    ]
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] >= 2  # past epoch 0's 2 steps (4 subjects, 1 per rank per step)


@pytest.mark.parametrize(
    "env,devices,rank",
    [
        ({"LOCAL_RANK": "1", "NODE_RANK": "1", "WORLD_SIZE": "8"}, 4, 5),  # node 1 of 2, 4 GPUs each
        ({"LOCAL_RANK": "0", "NODE_RANK": "2", "LOCAL_WORLD_SIZE": "2"}, 4, 4),  # torchrun's own count wins
        ({"LOCAL_RANK": "3"}, 4, 3),
        ({"RANK": "7", "LOCAL_RANK": "1"}, 4, 7),
        ({"SLURM_NTASKS": "4", "SLURM_PROCID": "2"}, 1, 2),
        ({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, 2, 0),
    ],
)
def test_launched_rank_counts_processes_per_node_not_the_world(monkeypatch, env, devices, rank):
    from vae_dynamics.training.distributed import launched_rank

    for key in (
        "RANK",
        "LOCAL_RANK",
        "NODE_RANK",
        "WORLD_SIZE",
        "LOCAL_WORLD_SIZE",
        "SLURM_NTASKS",
        "SLURM_PROCID",
    ):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert launched_rank(devices) == rank


def test_a_rank_waiting_for_rank_0_times_out_with_its_own_error(monkeypatch, tmp_path):
    from vae_dynamics.config import config_path, load_config
    from vae_dynamics.training.distributed import RANK_WAIT_ENV, RankSetupTimeout
    from vae_dynamics.training.run import train

    monkeypatch.setenv(RANK_WAIT_ENV, "0.5")
    monkeypatch.setenv("LOCAL_RANK", "1")  # the second process of a DDP run: rank 0 never writes its files
    cfg = load_config(config_path("exp2_tcvae_sbd"))
    with pytest.raises(RankSetupTimeout, match=rf"waited 0 s for rank 0 .*{RANK_WAIT_ENV}"):
        train(cfg, tmp_path)
