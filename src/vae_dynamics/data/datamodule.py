"""LightningDataModule over the cached train/val splits (the persistent cache + MONAI DataLoader)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from monai.data import DataLoader

from vae_dynamics.config.schema import DataConfig
from vae_dynamics.data.cache import (
    CACHE_IMAGE_DTYPE,
    CachedSubjects,
    RamCachedDataset,
    SubjectDataset,
    ram_share,
    split_dataset,
    subject_records,
)

# float16 image [4,128,128,128] + uint8 seg [1,128,128,128], as cached
BYTES_PER_SUBJECT = 4 * 128**3 * CACHE_IMAGE_DTYPE.itemsize + 128**3
# Share of the free GPU memory the resident training set may take; the rest is for the model's
# activations, cuDNN workspaces and torch.compile (the shipped Exp2 step peaks at ~8 GB).
GPU_CACHE_SHARE = 0.5

log = logging.getLogger(__name__)


def gpu_cache_plan(
    setting: Any, device: torch.device, n_bytes: int, free_bytes: int | None
) -> tuple[bool, str]:
    """Whether to hold the training split on `device` (data.gpu_cache = auto/true/false), and why."""
    if setting is False:
        return False, "data.gpu_cache is false"
    if device.type != "cuda":
        if setting is True:
            raise ValueError(f"data.gpu_cache: true needs a CUDA device, training runs on {device}")
        return False, f"training runs on {device}, not CUDA"
    need, allowed = n_bytes / 1e9, GPU_CACHE_SHARE * (free_bytes or 0) / 1e9
    if n_bytes > GPU_CACHE_SHARE * (free_bytes or 0):
        reason = (
            f"the training split needs {need:.1f} GB but only {allowed:.1f} GB "
            f"({GPU_CACHE_SHARE:.0%} of the free GPU memory) may be used"
        )
        if setting is True:
            raise ValueError(f"data.gpu_cache: true, but {reason}")
        return False, reason
    return True, f"the training split ({need:.1f} GB) fits in {allowed:.1f} GB of GPU memory"


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's subject order: distinct for every (run seed, epoch) pair in practice."""
    return seed * 100_003 + epoch


class ResumableEpoch:
    """Lightning's resumable-loader interface (`state_dict` / `load_state_dict`, saved in every checkpoint
    under the fit loop's "combined_loader"): where the current epoch stands, so that a run resumed from a
    mid-epoch save (a pre-emption) trains the rest of that epoch's order, each subject once, instead of
    starting the epoch's order again.

    `epoch()` is the trainer's current epoch and `batches_done()` the batches of it trained so far
    (Lightning's batch progress, `processed`: a save from on_train_batch_end counts that batch).
    """

    epoch: Callable[[], int]
    batches_done: Callable[[], int]
    _resume: tuple[int, int] | None = None

    if TYPE_CHECKING:  # batches per epoch: each subclass has its own (the DataLoader's, for the loader)

        def __len__(self) -> int: ...

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.epoch()), "batches_done": int(self.batches_done())}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self._resume = (int(state["epoch"]), int(state["batches_done"]))

    def _skip(self) -> int:
        """Batches of this epoch to leave out: those trained before the save, once, in the saved epoch."""
        resume, self._resume = self._resume, None
        # Only a save inside an epoch: one at its end (every batch done) is resumed at the next epoch,
        # which Lightning may iterate while its current_epoch still reads the saved one.
        if resume is None or resume[0] != self.epoch() or resume[1] >= len(self):
            return 0
        if resume[1]:
            log.info("resuming epoch %d after its first %d batches (the rest of its order)", *resume)
        return resume[1]


class DeviceResidentBatches(ResumableEpoch):
    """Training batches sliced from a split held on one device as a single float16 tensor.

    Each epoch draws a permutation seeded by (seed, epoch), so a run resumed at an epoch boundary sees
    the same batches as an uninterrupted one, and a run resumed mid-epoch the rest of them
    (ResumableEpoch); batches are gathered on the device (no workers, no host copies). The ragged last
    batch is dropped (constant M for the MWS estimator) unless the split is a single batch.
    """

    def __init__(
        self,
        images: torch.Tensor,
        segs: torch.Tensor,
        subject_ids: list[str],
        batch_size: int,
        seed: int,
        epoch: Callable[[], int],
        batches_done: Callable[[], int] = lambda: 0,
    ) -> None:
        self.images, self.segs, self.subject_ids = images, segs, list(subject_ids)
        self.batch_size, self.seed, self.epoch, self.batches_done = batch_size, seed, epoch, batches_done
        self.drop_last = len(self.subject_ids) > batch_size

    @classmethod
    def from_dataset(
        cls,
        dataset: SubjectDataset,
        device: torch.device,
        batch_size: int,
        seed: int,
        epoch: Callable[[], int],
        rank: int = 0,
        world: int = 1,
        batches_done: Callable[[], int] = lambda: 0,
    ) -> DeviceResidentBatches:
        """Copy this rank's shard of a (cached) dataset into one tensor on `device`, item by item.

        Under DDP each rank holds the subjects rank, rank + W, ... of the list padded to a multiple of W
        by repeating its first subjects (as DistributedSampler pads): every subject is trained on, and
        n mod W of them twice per epoch (the same count on every rank: equal steps per epoch). Each rank
        then permutes its own shard every epoch.
        """
        per_rank = -(-len(dataset) // world)
        padded = [i % len(dataset) for i in range(per_rank * world)]
        indices = padded[rank::world]
        if rank == 0 and len(padded) > len(dataset):
            log.info(
                "GPU-resident training set: %d subjects over %d processes; %d of them appear twice per "
                "epoch (padding to %d per process)",
                len(dataset),
                world,
                len(padded) - len(dataset),
                per_rank,
            )
        first = dataset[indices[0]]
        n = len(indices)
        images = torch.empty((n, *first["image"].shape), dtype=CACHE_IMAGE_DTYPE, device=device)
        segs = torch.empty((n, *first["seg"].shape), dtype=torch.uint8, device=device)
        ids = []
        for row, i in enumerate(indices):
            item = first if row == 0 else dataset[i]
            images[row].copy_(torch.as_tensor(item["image"]).to(CACHE_IMAGE_DTYPE))
            segs[row].copy_(torch.as_tensor(item["seg"]).to(torch.uint8))
            ids.append(item["subject_id"])
        return cls(images, segs, ids, batch_size, seed + 7919 * rank, epoch, batches_done)

    def __len__(self) -> int:
        n, b = len(self.subject_ids), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        return torch.randperm(len(self.subject_ids), generator=generator)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        order = self.permutation(self.epoch())
        device_order = order.to(self.images.device)
        for k in range(self._skip(), len(self)):
            rows = slice(k * self.batch_size, (k + 1) * self.batch_size)
            index = device_order[rows]
            yield {
                "image": self.images.index_select(0, index),
                "seg": self.segs.index_select(0, index),
                "subject_id": [self.subject_ids[i] for i in order[rows].tolist()],
            }


class EpochSeededSampler(torch.utils.data.Sampler[int]):
    """A permutation per epoch seeded by (seed, epoch): a run resumed at an epoch boundary replays the
    batch order of an uninterrupted one (a generator seeded once would restart at epoch 0's order).
    `skip_next` leaves out the first items of the next iteration only (ResumableDataLoader's mid-epoch
    resume: those trained before the save)."""

    def __init__(self, n: int, seed: int, epoch: Callable[[], int]) -> None:
        self.n, self.seed, self.epoch = n, seed, epoch
        self.skip_next = 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch()))
        skip, self.skip_next = self.skip_next, 0
        return iter(torch.randperm(self.n, generator=generator).tolist()[skip:])


class ResumableDataLoader(ResumableEpoch, DataLoader):
    """The training DataLoader with ResumableEpoch: on a mid-epoch resume its EpochSeededSampler skips the
    items already trained (nothing is loaded for them); under DDP, where Lightning wraps the sampler in
    its DistributedSampler, the trained batches are loaded and dropped instead.

    Lightning re-creates DataLoaders to insert its distributed sampler, passing the attributes named like
    the constructor's arguments: `epoch` and `batches_done` are kept as such."""

    def __init__(
        self, *args: Any, epoch: Callable[[], int], batches_done: Callable[[], int], **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.epoch, self.batches_done = epoch, batches_done

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]  # the base loader's iterator
        skip = self._skip()
        if skip and isinstance(self.sampler, EpochSeededSampler) and self.batch_size is not None:
            self.sampler.skip_next = skip * self.batch_size
            skip = 0
        iterator = super().__iter__()
        for _ in range(skip):  # a wrapped sampler: load the trained batches and drop them
            next(iterator, None)
        return iterator


class BraTSDataModule(L.LightningDataModule):
    """Yields batch["image"] float32 [B,4,128,128,128] and batch["seg"] uint8 [B,1,128,128,128].

    Images travel as cached (float16) and become float32 on the device, after the copy.
    """

    def __init__(
        self,
        data_cfg: DataConfig,
        splits_dir: str | os.PathLike[str],
        seed: int = 0,
        cache_root: str | os.PathLike[str] | None = None,
        resident_device: str | torch.device | None = None,
    ) -> None:
        """resident_device: hold the training split on this device regardless of data.gpu_cache."""
        super().__init__()
        self.resident_device = torch.device(resident_device) if resident_device is not None else None
        self.train_batches: DeviceResidentBatches | None = None
        self.data_cfg = data_cfg
        self.splits_dir = Path(splits_dir)
        self.seed = seed
        self.cache_root = Path(cache_root or data_cfg.cache_dir)
        self.train_records = subject_records(self.splits_dir / "train.csv")
        self.val_records = subject_records(self.splits_dir / "val.csv")
        self.train_dataset: SubjectDataset | None = None
        self.val_dataset: SubjectDataset | None = None

    @property
    def n_train(self) -> int:
        """N of the MWS estimator: the number of training subjects."""
        return len(self.train_records)

    def disk_dataset(self, split: str) -> CachedSubjects:
        """The `split` ("train" or "val") subjects served from the persistent disk cache only."""
        return split_dataset(self.data_cfg, self.splits_dir, split, self.cache_root)

    def _training_device(self) -> torch.device:
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        train = self.disk_dataset("train")
        self.val_dataset = self.disk_dataset("val")
        self.train_dataset = train
        if stage not in (None, "fit"):
            return
        rank, world = (
            (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        )
        if len(train) < world:
            raise ValueError(
                f"the training split ({self.splits_dir / 'train.csv'}) has {len(train)} subject(s), fewer "
                f"than "
                f"the {world} processes of this run (train.devices × train.num_nodes): every process needs "
                "at least one subject"
            )
        device = self.resident_device
        if device is None:
            device = self._training_device()
            free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
            shard_bytes = -(-len(train) // world) * BYTES_PER_SUBJECT
            use, why = gpu_cache_plan(self.data_cfg.gpu_cache, device, shard_bytes, free)
            log.info("GPU-resident training set %s: %s", "on" if use else "off", why)
            if not use:
                device = None
        if device is not None:
            self.train_batches = DeviceResidentBatches.from_dataset(
                train,
                device,
                self.data_cfg.batch_size,
                self.seed,
                self._current_epoch,
                rank,
                world,
                self._batches_done,
            )
            return
        # Every process of this node holds its own RAM copy: share the memory budget between them.
        local = self.trainer.num_devices if self.trainer is not None else 1
        n_ram = ram_share(
            len(train), self.data_cfg.cache_rate, BYTES_PER_SUBJECT, budget_fraction=0.5 / local
        )
        if n_ram:
            self.train_dataset = RamCachedDataset(train, n_ram, progress=True)

    def _current_epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def _batches_done(self) -> int:
        """Training batches of the current epoch done so far (Lightning's batch progress)."""
        if self.trainer is None:
            return 0
        return int(self.trainer.fit_loop.epoch_loop.batch_progress.current.processed)  # type: ignore[attr-defined]

    def _loader(self, dataset: SubjectDataset | None, shuffle: bool, drop_last: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("BraTSDataModule.setup() has not run")
        workers = self.data_cfg.num_workers
        sampler = EpochSeededSampler(len(dataset), self.seed, self._current_epoch) if shuffle else None
        # MONAI's DataLoader seeds each worker's random state; the training loader is resumable mid-epoch.
        cls: type[DataLoader] = DataLoader
        resumable: dict[str, Any] = {}
        if shuffle:
            cls, resumable = (
                ResumableDataLoader,
                {"epoch": self._current_epoch, "batches_done": self._batches_done},
            )
        return cls(
            dataset,
            **resumable,
            batch_size=self.data_cfg.batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
            prefetch_factor=2 if workers > 0 else None,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader | DeviceResidentBatches:
        if self.train_batches is not None:
            return self.train_batches
        # A constant minibatch size M keeps the MWS estimator's scale; drop the ragged last batch.
        return self._loader(
            self.train_dataset, shuffle=True, drop_last=self.n_train > self.data_cfg.batch_size
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, shuffle=False, drop_last=False)

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        batch["image"] = batch["image"].float()
        return batch
