"""Concurrent GPU jobs on one machine get different GPUs (fake device list: runs on CPU)."""

from __future__ import annotations

import stat
import subprocess
import sys
import tempfile
import time

import pytest

from vae_dynamics.gpus import GPUS_ENV, claim_gpus, lock_dir

HOLD = """
import os, sys, time
from vae_dynamics.gpus import claim_gpus
with claim_gpus(int(sys.argv[1]), wait_s=float(sys.argv[2])) as gpus:
    print(os.environ.get("CUDA_VISIBLE_DEVICES"), flush=True)
    time.sleep(float(sys.argv[3]))
"""


def _job(tmp_path, n: int, wait: float = 30, hold: float = 3.0) -> subprocess.Popen:
    env = {**__import__("os").environ, GPUS_ENV: "0,1", "TMPDIR": str(tmp_path)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return subprocess.Popen(
        [sys.executable, "-c", HOLD, str(n), str(wait), str(hold)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_jobs_on_a_two_gpu_machine_get_different_gpus_and_a_third_waits(tmp_path):
    first, second = _job(tmp_path, 1), _job(tmp_path, 1)
    a, b = first.stdout.readline().strip(), second.stdout.readline().strip()
    assert {a, b} == {"0", "1"}
    third = _job(tmp_path, 1, hold=0)  # both GPUs busy: it waits until one is released, and says so
    first.wait(), second.wait()
    assert third.stdout.readline().strip() in {"0", "1"}
    assert third.wait() == 0
    assert "waiting for 1 free GPU(s): all of 0, 1 are held by other jobs" in third.stderr.read()


def test_a_job_that_cannot_get_its_gpus_in_time_fails_clearly(tmp_path):
    holder = _job(tmp_path, 2, hold=5)
    assert holder.stdout.readline().strip() == "0,1"
    late = _job(tmp_path, 1, wait=0.5)
    assert late.wait() != 0 and "waited 0 s for 1 free GPU(s)" in late.stderr.read()
    holder.wait()


def test_a_scheduler_choice_or_no_gpu_is_left_alone(monkeypatch):
    monkeypatch.setenv(GPUS_ENV, "0,1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")  # SLURM chose
    with claim_gpus(1) as gpus:
        assert gpus == [] and __import__("os").environ["CUDA_VISIBLE_DEVICES"] == "3"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv(GPUS_ENV, "")
    with claim_gpus(1) as gpus:
        assert gpus == []
    monkeypatch.setenv(GPUS_ENV, "0")
    with pytest.raises(RuntimeError, match="2 GPU"), claim_gpus(2):
        pass


def test_a_claimant_of_two_gpus_never_holds_one_while_it_waits(tmp_path):
    """On a 2-GPU machine with GPU 0 busy, a 2-GPU claimant that kept GPU 1 while waiting would block a
    1-GPU job (and two such claimants could deadlock for 24 h): it takes all or none on each try."""
    single = _job(tmp_path, 1, hold=4)
    assert single.stdout.readline().strip() == "0"
    double = _job(tmp_path, 2, wait=20, hold=0)  # waits for both
    time.sleep(1.0)
    other = _job(tmp_path, 1, wait=0.5, hold=0)  # GPU 1 is free: it must get it at once
    assert other.stdout.readline().strip() == "1" and other.wait() == 0
    single.wait()
    assert double.stdout.readline().strip() == "0,1" and double.wait() == 0


def test_the_lock_folder_must_be_private_and_lock_files_are_not_followed(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    folder = lock_dir()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    folder.chmod(0o777)  # someone else could plant or remove locks
    with pytest.raises(PermissionError, match="mode 0700"):
        lock_dir()
    folder.chmod(0o700)
    (folder / "gpu0.lock").symlink_to(tmp_path / "victim")  # a planted link is not followed
    monkeypatch.setenv(GPUS_ENV, "0")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(OSError), claim_gpus(1, wait_s=0):
        pass
    assert not (tmp_path / "victim").exists()
