"""Shared fixtures: a small demo dataset generated once per test session (real NIfTI files).

`make test` runs the suite in parallel (pytest-xdist, one process per core, `--dist loadfile`: a
file's tests share one process, so module fixtures are built once). The longest files start first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from filelock import FileLock

from vae_dynamics.config import config_path, load_config
from vae_dynamics.data.demo import generate
from vae_dynamics.data.index import index_subjects
from vae_dynamics.data.splits import make_splits

# Longest first, so that they do not end the run alone (pytest --durations: the SLURM cluster and
# the workflow module are the two largest, then the trainings); `make test` keeps this order.
FIRST = ("test_slurm.py", "test_workflow.py", "test_learning.py", "test_training.py", "test_ddp.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))


# The cores of one test process: all of them, or under pytest-xdist (`make test`) an equal share per
# worker, at least one. Two processes with two OpenMP threads each on two cores take twice as long per
# training step as with one thread each (10.7 s vs 5.0 s here), so the share also holds for every
# subprocess the tests start (scripts, Snakemake and its jobs, DDP ranks): OMP_NUM_THREADS, `--cores`.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)  # macOS
THREADS = max(1, CORES // WORKERS)


def pytest_configure(config):
    if WORKERS > 1:  # share the cores between the worker processes instead of oversubscribing them
        import torch

        torch.set_num_threads(THREADS)
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(THREADS)


N_DEMO_SUBJECTS = 5


def built_once(tmp_path_factory, name: str, build) -> Path:
    """A folder built by `build(folder)` once per test session, shared by the xdist worker processes
    (pytest's base temp of the session, under a file lock); a build that failed is redone."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # .../pytest-N/popen-gw0 -> .../pytest-N
        base = base.parent
    folder = base / f"shared-{name}"
    with FileLock(str(base / f"shared-{name}.lock")):
        if not (folder / ".complete").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder / ".complete").touch()
    return folder


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """Five BraTS-MEN demo subjects (seed 0), generated once per session; treat as read-only, copy
    before breaking files."""
    build = lambda out: generate(out / "BraTS_Men_Train", N_DEMO_SUBJECTS, seed=0, workers=2)  # noqa: E731
    return built_once(tmp_path_factory, "demo", build) / "BraTS_Men_Train"


@pytest.fixture
def demo_copy(demo_root, tmp_path) -> Path:
    """A private, writable copy of the demo dataset."""
    dst = tmp_path / "BraTS_Men_Train"
    shutil.copytree(demo_root, dst)
    return dst


@pytest.fixture(scope="session")
def demo_splits(demo_root, tmp_path_factory) -> Path:
    """train.csv (4 subjects) / val.csv (1 subject) of the demo dataset."""

    def build(out: Path) -> None:
        index_subjects(demo_root, out / "index", progress=False)
        make_splits(out / "index" / "subjects.csv", out, val_split=0.2, seed=0)

    return built_once(tmp_path_factory, "splits", build)


def small_exp_config(name: str, tmp_path: Path, **extra: object) -> dict:
    """The shipped experiment config made CPU-sized: base_filters 16, batch 2, no workers, bfloat16 autocast
    (as the demo trains on CPU: 2.4 times faster than float32 per step here)."""
    overrides = {
        "model.base_filters": 16,
        "data.batch_size": 2,
        "data.num_workers": 0,
        "data.cache_dir": str(tmp_path / "cache"),
        "train.max_epochs": 2,
        "train.precision": "bf16-mixed",
        "logging.save_dir": str(tmp_path / "runs"),
        "logging.recon_every_n_epochs": 1,
        "logging.num_recon_samples": 1,
        **extra,
    }
    return load_config(config_path(name), {k: v for k, v in overrides.items()})


def exp2_module(dataset_size: int = 10, **sets: object):
    """Exp2's LightningModule built as training builds it, from the shipped config at base_filters 16
    (no gradient checkpointing) with the dotted `sets` applied."""
    from vae_dynamics.training.lit_modules import TCVAELitModule

    cfg = load_config(
        config_path("exp2"), {"model.base_filters": 16, "train.gradient_checkpointing": False, **sets}
    )
    return TCVAELitModule(cfg, dataset_size)


def train_script_args(config: str, run_dir: Path, cache_dir: Path, *sets: str) -> list[str]:
    """`python scripts/train.py` for a shipped config made CPU-sized (as small_exp_config), one epoch."""
    repo = Path(__file__).resolve().parents[1]
    small = [
        "model.base_filters=16",
        "data.batch_size=2",
        "data.num_workers=0",
        "train.max_epochs=1",
        "train.precision=bf16-mixed",
        f"data.cache_dir={cache_dir}",
        "logging.recon_every_n_epochs=1",
        "logging.num_recon_samples=1",
        *sets,
    ]
    args = [
        sys.executable,
        str(repo / "scripts" / "train.py"),
        "--config",
        str(config_path(config)),
        "--run-dir",
        str(run_dir),
    ]
    for item in small:
        args += ["--set", item]
    return args


# The Snakemake workflow, for real (test_workflow*.py, test_slurm.py) --------------------------------
REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
OVERRIDES = {
    "model.base_filters": 16,
    "data.batch_size": 2,
    "data.num_workers": 0,
    "train.max_epochs": 2,
    "train.precision": "bf16-mixed",  # as the demo: about twice as fast as float32 on CPU
    "logging.recon_every_n_epochs": 1,
    "logging.num_recon_samples": 1,
}


def copy_workflow(work: Path) -> Path:
    """The workflow's files (Snakefile, rules, scripts, profiles, configs) copied into `work`."""
    work.mkdir(parents=True)
    for name in ("Snakefile", "rules", "workflow", "profiles", "config"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copyfile)(src, work / name)
    return work


def make_workdir(tmp: Path, data_root: Path) -> Path:
    """A copy of the workflow files with a config pointing at the demo subjects."""
    work = copy_workflow(tmp / "wf")
    config = {
        "experiments": {
            "exp2": str(REPO / "src/vae_dynamics/config/exp2_tcvae_sbd.yaml"),
            "exp1": str(REPO / "src/vae_dynamics/config/exp1_baseline_vae.yaml"),
        },
        "data_root": str(data_root),
        "overrides": {**OVERRIDES, "exp1": {"train.max_epochs": 1}},  # Exp1 is the baseline of the comparison
        "demo": None,
    }
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return work


def snakemake(work: Path, *args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = [SNAKEMAKE, "--cores", str(THREADS), *args]
    result = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=env, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result
