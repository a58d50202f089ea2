"""Checkpoint I/O on a shared cluster: atomic saves beside the destination, damage checks, pre-emption."""

from __future__ import annotations

import errno
import os
import signal
import tempfile

import lightning as L
import pytest
import torch

from vae_dynamics.training.checkpointing import (
    PREEMPTED_EXIT_CODE,
    AtomicCheckpointIO,
    CheckpointWriteError,
    DamagedCheckpointError,
    Preempted,
    PreemptionCheckpoint,
    checkpoint_problem,
    intact_resume_checkpoint,
)
from vae_dynamics.training.trainer import fit


def _ckpt(step: int) -> dict:
    return {
        "state_dict": {"w": torch.full((1000,), float(step))},
        "epoch": 0,
        "global_step": step,
        "optimizer_states": [],
    }


def test_save_never_touches_tmpdir_and_leaves_no_staging_file(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmpdir"))  # what $TMPDIR would give
    io = AtomicCheckpointIO()
    io.save_checkpoint(_ckpt(3), tmp_path / "run" / "last.ckpt")
    assert os.listdir(tmp_path / "run") == ["last.ckpt"]
    assert io.load_checkpoint(tmp_path / "run" / "last.ckpt")["global_step"] == 3


def test_a_failed_save_keeps_the_old_checkpoint_and_says_the_disk_is_full(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint(_ckpt(1), target)
    before = target.read_bytes()

    def full_disk(obj, f):
        f.write(b"x" * 3_000_000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointWriteError) as info:
        io.save_checkpoint(_ckpt(2), target)
    message = str(info.value)
    assert str(target) in message and "disk is full" in message and "3.0 MB were written" in message
    assert target.read_bytes() == before  # untouched
    assert os.listdir(tmp_path) == ["last.ckpt"]  # the staging file is gone


def test_damage_checks_find_truncated_and_corrupted_files(tmp_path):
    io = AtomicCheckpointIO()
    good = tmp_path / "good.ckpt"
    io.save_checkpoint(_ckpt(1), good)
    assert checkpoint_problem(good) is None
    data = good.read_bytes()
    truncated, flipped = tmp_path / "truncated.ckpt", tmp_path / "flipped.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    corrupt = bytearray(data)
    corrupt[len(data) // 2] ^= 0xFF  # inside the tensor data: only the CRC check sees it
    flipped.write_bytes(bytes(corrupt))
    assert checkpoint_problem(truncated) is not None
    assert "CRC" in checkpoint_problem(flipped)
    io.save_checkpoint({"state_dict": {}}, tmp_path / "partial.ckpt")
    assert "no epoch, global_step, optimizer_states" in checkpoint_problem(tmp_path / "partial.ckpt")


def test_resume_falls_back_to_the_newest_intact_checkpoint_or_refuses(tmp_path):
    io = AtomicCheckpointIO()
    io.save_checkpoint(_ckpt(5), tmp_path / "last.ckpt")
    assert intact_resume_checkpoint(tmp_path) == (tmp_path / "last.ckpt", None)
    io.save_checkpoint(_ckpt(2), tmp_path / "epoch002.ckpt")
    (tmp_path / "last.ckpt").write_bytes((tmp_path / "last.ckpt").read_bytes()[:100])
    path, note = intact_resume_checkpoint(tmp_path)
    assert path == tmp_path / "epoch002.ckpt" and "last.ckpt is damaged" in note
    (tmp_path / "epoch002.ckpt").write_bytes(b"")
    with pytest.raises(DamagedCheckpointError, match=r"last\.ckpt is damaged .* refusing to restart"):
        intact_resume_checkpoint(tmp_path)


class _Tiny(L.LightningModule):
    def __init__(self, signal_at: int, signum: int) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.signal_at, self.signum = signal_at, signum

    def training_step(self, batch, batch_idx):
        if self.global_step == self.signal_at:
            os.kill(os.getpid(), self.signum)  # what SLURM sends before the time limit
        return self.layer(batch[0]).square().mean()

    def train_dataloader(self):
        data = torch.utils.data.TensorDataset(torch.randn(64, 4))
        return torch.utils.data.DataLoader(data, batch_size=4)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM])
def test_a_stop_signal_saves_last_ckpt_at_the_step_boundary_and_exits_75(tmp_path, signum):
    last = tmp_path / "checkpoints" / "last.ckpt"
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        plugins=[AtomicCheckpointIO()],
        callbacks=[PreemptionCheckpoint(last)],
    )
    previous = signal.getsignal(signal.SIGUSR1)
    with pytest.raises(Preempted) as info:
        fit(trainer, _Tiny(signal_at=5, signum=signum), None, None)
    assert info.value.code == PREEMPTED_EXIT_CODE
    saved = torch.load(last, weights_only=False)
    assert saved["global_step"] == 6  # the step that received the signal completed, and no other
    assert signal.getsignal(signal.SIGUSR1) == previous  # our SIGUSR1 handler is gone again


def test_checkpoints_follow_the_umask_like_every_other_artifact(tmp_path):
    """A group-shared project (umask 002): colleagues can resume or evaluate a run (mkstemp gave 0600)."""
    old = os.umask(0o002)
    try:
        AtomicCheckpointIO().save_checkpoint(_ckpt(1), tmp_path / "last.ckpt")
    finally:
        os.umask(old)
    assert (tmp_path / "last.ckpt").stat().st_mode & 0o777 == 0o664


class _Planted:
    """What a stranger could leave in a shared checkpoints/ folder: unpickling it runs a command."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_checkpoint_is_never_unpickled_by_the_resume_checks(tmp_path):
    marker = tmp_path / "ran"
    planted = tmp_path / "checkpoints" / "epoch000-step000001.ckpt"
    planted.parent.mkdir()
    torch.save({**_ckpt(1), "callbacks": _Planted(str(marker))}, planted)
    problem = checkpoint_problem(planted)
    assert problem is not None and "UnpicklingError" in problem
    with pytest.raises(DamagedCheckpointError, match="no other intact checkpoint"):
        intact_resume_checkpoint(planted.parent)  # no last.ckpt: the planted file is the only candidate
    assert not marker.exists()


def test_no_code_of_the_package_unpickles_with_weights_only_false():
    from pathlib import Path

    import vae_dynamics

    root = Path(vae_dynamics.__file__).parent
    found = [str(p.relative_to(root)) for p in root.rglob("*.py") if "weights_only=False" in p.read_text()]
    assert found == []
