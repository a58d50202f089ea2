"""The GPU fast path, checked on CPU: device-resident training batches, the placement plan, torch.compile."""

from __future__ import annotations

import os
import signal

import lightning as L
import pytest
import torch
from conftest import small_exp_config

from vae_dynamics.data.datamodule import (
    BYTES_PER_SUBJECT,
    BraTSDataModule,
    DeviceResidentBatches,
    gpu_cache_plan,
)

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


def make_batches(n: int = 10, batch_size: int = 3, seed: int = 7, epoch=lambda: 0) -> DeviceResidentBatches:
    images = torch.arange(n, dtype=torch.float16).view(n, 1, 1, 1, 1).expand(n, 4, 2, 2, 2).contiguous()
    segs = torch.zeros(n, 1, 2, 2, 2, dtype=torch.uint8)
    return DeviceResidentBatches(images, segs, [f"S{i}" for i in range(n)], batch_size, seed, epoch)


def test_every_epoch_is_a_seeded_permutation_with_constant_batches():
    epoch = {"now": 0}
    batches = make_batches(epoch=lambda: epoch["now"])
    assert len(batches) == 3  # 10 // 3: the ragged last batch is dropped (constant M)
    seen = []
    for e in range(3):
        epoch["now"] = e
        got = list(batches)
        assert [b["image"].shape[0] for b in got] == [3, 3, 3]
        ids = [s for b in got for s in b["subject_id"]]
        assert len(set(ids)) == 9  # no subject twice in an epoch
        for b in got:  # image rows belong to the named subjects
            assert [int(v) for v in b["image"][:, 0, 0, 0, 0]] == [int(s[1:]) for s in b["subject_id"]]
            assert b["image"].dtype == torch.float16 and b["seg"].dtype == torch.uint8
        seen.append(ids)
    assert seen[0] != seen[1] != seen[2]
    epoch["now"] = 1
    assert [s for b in batches for s in b["subject_id"]] == seen[1]  # a resumed epoch replays its order
    other_seed = make_batches(seed=8, epoch=lambda: 1)
    assert [s for b in other_seed for s in b["subject_id"]] != seen[1]


def test_a_split_smaller_than_a_batch_is_one_batch():
    batches = make_batches(n=2, batch_size=4)
    assert len(batches) == 1 and list(batches)[0]["image"].shape[0] == 2


def test_under_ddp_the_ranks_hold_equal_shards_that_cover_every_subject(caplog):
    """7 subjects on 2 ranks: the list is padded to 8 with its first subject (as DistributedSampler pads),
    so no subject is left out of the whole run (7 // 2 = 3 each dropped S6 for ever) and train.log says so."""
    dataset = [
        {"image": torch.full((4, 2, 2, 2), float(i)), "seg": torch.zeros(1, 2, 2, 2), "subject_id": f"S{i}"}
        for i in range(7)
    ]
    with caplog.at_level("INFO", logger="vae_dynamics.data.datamodule"):
        shards = [
            DeviceResidentBatches.from_dataset(dataset, CPU, 1, 0, lambda: 0, rank=r, world=2) for r in (0, 1)
        ]
    assert [s.subject_ids for s in shards] == [["S0", "S2", "S4", "S6"], ["S1", "S3", "S5", "S0"]]
    assert [len(s) for s in shards] == [4, 4]  # the same number of steps on every rank
    assert [int(v) for v in shards[1].images[:, 0, 0, 0, 0]] == [1, 3, 5, 0]
    assert shards[0].images.dtype == torch.float16
    assert "7 subjects over 2 processes; 1 of them appear twice per epoch" in caplog.text


def test_placement_plan():
    need = 100 * BYTES_PER_SUBJECT
    assert gpu_cache_plan("auto", CPU, need, None)[0] is False
    assert gpu_cache_plan(False, CUDA, need, 10**12)[0] is False
    use, why = gpu_cache_plan("auto", CUDA, need, 10**12)
    assert use and "fits" in why
    use, why = gpu_cache_plan("auto", CUDA, need, need)  # only half the free memory may be used
    assert not use and "may be used" in why
    with pytest.raises(ValueError, match="data.gpu_cache: true needs a CUDA device"):
        gpu_cache_plan(True, CPU, need, None)
    with pytest.raises(ValueError, match="data.gpu_cache: true, but the training split needs"):
        gpu_cache_plan(True, CUDA, need, need)


def test_datamodule_holds_the_cached_training_split_on_a_device(demo_splits, tmp_path):
    cfg = small_exp_config("exp2_tcvae_sbd", tmp_path)
    dm = BraTSDataModule(cfg.data, demo_splits, seed=0, resident_device="cpu")
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader, DeviceResidentBatches) and len(loader) == 2  # 4 subjects, batch 2
    assert loader.images.shape == (4, 4, 128, 128, 128) and loader.images.dtype == torch.float16
    disk = dm.disk_dataset("train")
    by_id = {disk[i]["subject_id"]: disk[i] for i in range(len(disk))}
    batch = dm.on_after_batch_transfer(next(iter(loader)), 0)
    assert batch["image"].dtype == torch.float32 and batch["seg"].shape == (2, 1, 128, 128, 128)
    for row, subject in enumerate(batch["subject_id"]):
        assert torch.equal(batch["image"][row], by_id[subject]["image"].float())
        assert torch.equal(batch["seg"][row], by_id[subject]["seg"])


@pytest.mark.slow
def test_training_from_the_device_resident_set_runs_in_the_real_loop(demo_splits, tmp_path):
    import lightning as L

    from vae_dynamics.training.trainer import build_module

    cfg = small_exp_config("exp2_tcvae_sbd", tmp_path, **{"train.max_epochs": 1})
    dm = BraTSDataModule(cfg.data, demo_splits, seed=0, resident_device="cpu")
    module = build_module(cfg, dm.n_train)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        precision="bf16-mixed",
    )
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["train/loss"])


@pytest.mark.slow
def test_compiled_model_matches_eager_and_saves_plain_keys(tmp_path, monkeypatch):
    """train.compile=true on CPU: same loss and gradients as eager, state_dict without `_orig_mod.`."""
    import torch._inductor.config as inductor_config

    from vae_dynamics.training.trainer import build_module

    monkeypatch.setattr(
        inductor_config, "fallback_random", True
    )  # eager's RNG: the same reparameterisation noise

    cfg = small_exp_config("exp2_tcvae_sbd", tmp_path, **{"train.compile": True})
    torch.manual_seed(0)
    compiled = build_module(cfg, n_train=10)
    eager = build_module(small_exp_config("exp2_tcvae_sbd", tmp_path, **{"train.compile": False}), n_train=10)
    eager.load_state_dict(compiled.state_dict())
    assert not any("_orig_mod" in k for k in compiled.state_dict())
    x = torch.rand(2, 4, 128, 128, 128)
    losses = []
    for module in (compiled, eager):
        torch.manual_seed(1)  # same reparameterisation noise
        loss = module.training_step({"image": x}, 0)
        loss.backward()
        losses.append((float(loss), module.model.encoder.stem[0].weight.grad.clone()))
    assert losses[0][0] == pytest.approx(losses[1][0], rel=1e-4)
    compiled_grad, eager_grad = losses[0][1], losses[1][1]
    assert (
        float((compiled_grad - eager_grad).norm() / eager_grad.norm()) < 1e-3
    )  # fused kernels round differently


def test_the_loader_replays_an_epochs_batch_order_after_a_resume():
    from vae_dynamics.data.datamodule import EpochSeededSampler

    epoch = {"now": 0}
    sampler = EpochSeededSampler(12, seed=42, epoch=lambda: epoch["now"])
    orders = []
    for e in range(3):
        epoch["now"] = e
        orders.append(list(sampler))
    assert all(sorted(o) == list(range(12)) for o in orders) and orders[0] != orders[1] != orders[2]
    resumed = EpochSeededSampler(12, seed=42, epoch=lambda: 2)  # a new process, resuming at epoch 2
    assert list(resumed) == orders[2]


def test_fewer_training_subjects_than_processes_is_a_clear_error(demo_splits, tmp_path):
    from types import SimpleNamespace

    from vae_dynamics.config import config_path, load_config
    from vae_dynamics.data.datamodule import BraTSDataModule

    cfg = load_config(config_path("exp2_tcvae_sbd"), {"data.cache_dir": str(tmp_path / "cache")})
    dm = BraTSDataModule(cfg.data, demo_splits)
    dm.trainer = SimpleNamespace(global_rank=0, world_size=8)
    with pytest.raises(ValueError, match=r"train\.csv\) has 4 subject\(s\), fewer than the 8 processes"):
        dm.setup("fit")


class _Recorder(L.LightningModule):
    """Records the subject ids of every training batch; SIGUSR1 to itself at one step (a pre-emption)."""

    def __init__(self, loader_factory, signal_at: int | None = None) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.loader_factory, self.signal_at = loader_factory, signal_at
        self.seen: list[tuple[int, list[str]]] = []

    def training_step(self, batch, batch_idx):
        if self.signal_at is not None and self.global_step == self.signal_at:
            os.kill(os.getpid(), signal.SIGUSR1)
        self.seen.append((self.current_epoch, list(batch["subject_id"])))
        x = batch["image"].float().mean(dim=(1, 2, 3, 4), keepdim=False)[:, None]
        return self.layer(x).square().mean()

    def train_dataloader(self):
        return self.loader_factory(self.trainer)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _resident(trainer):
    n = 10
    images = torch.arange(n, dtype=torch.float16).view(n, 1, 1, 1, 1).expand(n, 4, 2, 2, 2).contiguous()
    return DeviceResidentBatches(
        images,
        torch.zeros(n, 1, 2, 2, 2, dtype=torch.uint8),
        [f"S{i}" for i in range(n)],
        2,
        7,
        lambda: trainer.current_epoch,
        lambda: trainer.fit_loop.epoch_loop.batch_progress.current.processed,
    )


def _disk_like(trainer):
    from vae_dynamics.data.datamodule import EpochSeededSampler, ResumableDataLoader

    items = [{"image": torch.full((4, 2, 2, 2), float(i)), "subject_id": f"S{i}"} for i in range(10)]
    epoch = lambda: trainer.current_epoch  # noqa: E731
    done = lambda: trainer.fit_loop.epoch_loop.batch_progress.current.processed  # noqa: E731
    return ResumableDataLoader(
        items,
        batch_size=2,
        sampler=EpochSeededSampler(10, 7, epoch),
        drop_last=True,
        epoch=epoch,
        batches_done=done,
    )


@pytest.mark.parametrize("factory", [_resident, _disk_like], ids=["gpu-resident", "dataloader"])
def test_a_mid_epoch_resume_trains_the_rest_of_the_epochs_order_each_subject_once(tmp_path, factory):
    """5 batches per epoch; pre-empted after the 2nd batch of epoch 1 (global step 6), resumed from
    last.ckpt: the two parts of epoch 1 are the uninterrupted epoch 1, in order, each subject once."""
    from vae_dynamics.training.checkpointing import Preempted, PreemptionCheckpoint
    from vae_dynamics.training.trainer import fit

    def trainer(root, callbacks=()):
        return L.Trainer(
            default_root_dir=root,
            max_epochs=2,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=list(callbacks),
        )

    whole = _Recorder(factory)
    trainer(tmp_path / "whole").fit(whole)
    epoch1 = [ids for e, ids in whole.seen if e == 1]
    assert len(epoch1) == 5

    last = tmp_path / "cut" / "last.ckpt"
    cut = _Recorder(factory, signal_at=6)
    with pytest.raises(Preempted):
        fit(trainer(tmp_path / "cut", [PreemptionCheckpoint(last)]), cut, None, None)
    before = [ids for e, ids in cut.seen if e == 1]
    assert len(before) == 2
    resumed = _Recorder(factory)
    trainer(tmp_path / "cut").fit(resumed, ckpt_path=last)
    after = [ids for e, ids in resumed.seen if e == 1]
    assert before + after == epoch1
    flat = [s for ids in before + after for s in ids]
    assert sorted(flat) == sorted(set(flat)) and len(flat) == 10


def test_the_gpu_benchmark_times_the_shipped_step_and_changes_one_thing_per_candidate():
    """bench/run_gpu.py: the step every candidate is compared with is the one the shipped Exp2 config
    trains (batch, precision, checkpointing, channels_last_3d, compiled on CUDA), and each candidate
    differs from it in one setting only, so its ratio says what that setting is worth."""
    import sys
    from pathlib import Path

    from vae_dynamics.config import config_path, load_config

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import run_gpu

    cfg = load_config(config_path("exp2"))
    shipped = run_gpu.SHIPPED
    assert (shipped.batch, shipped.precision, shipped.gradient_checkpointing, shipped.channels_last_3d) == (
        cfg.data.batch_size,
        cfg.train.precision,
        cfg.train.gradient_checkpointing,
        cfg.train.channels_last,
    )
    assert shipped.compile and cfg.train.compile in ("auto", True)
    assert run_gpu.CANDIDATES[0] == shipped and shipped.label() == "shipped step"
    changed = [c.label() for c in run_gpu.CANDIDATES[1:]]
    assert changed == ["fused_adamw=True", "feed=pinned", "compile_mode=max-autotune-no-cudagraphs"]
