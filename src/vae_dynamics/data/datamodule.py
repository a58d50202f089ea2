"""LightningDataModule over the cached train/val splits (MONAI PersistentDataset + DataLoader)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from monai.data import DataLoader

from vae_dynamics.data.cache import RamCachedDataset, cache_dir_for, make_dataset, ram_share, subject_records
from vae_dynamics.data.transforms import transforms_from_config

# float32 image [4,128,128,128] + uint8 seg [1,128,128,128]
BYTES_PER_SUBJECT = 4 * 128**3 * 4 + 128**3


class BraTSDataModule(L.LightningDataModule):
    """Yields batch["image"] float32 [B,4,128,128,128] and batch["seg"] uint8 [B,1,128,128,128]."""

    def __init__(
        self,
        data_cfg: Mapping[str, Any],
        splits_dir: str | os.PathLike[str],
        seed: int = 0,
        cache_root: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        self.data_cfg = dict(data_cfg)
        self.splits_dir = Path(splits_dir)
        self.seed = seed
        self.cache_root = Path(cache_root or data_cfg["cache_dir"])
        self.train_records = subject_records(self.splits_dir / "train.csv")
        self.val_records = subject_records(self.splits_dir / "val.csv")
        self.train_dataset = self.val_dataset = None

    @property
    def n_train(self) -> int:
        """N of the MWS estimator: the number of training subjects."""
        return len(self.train_records)

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        cache_dir = cache_dir_for(self.cache_root, self.data_cfg)
        transform = transforms_from_config(self.data_cfg)
        train = make_dataset(self.train_records, cache_dir, transform)
        n_ram = ram_share(len(train), self.data_cfg["cache_rate"], BYTES_PER_SUBJECT)
        self.train_dataset = RamCachedDataset(train, n_ram, progress=True) if n_ram else train
        self.val_dataset = make_dataset(self.val_records, cache_dir, transform)

    def _loader(self, dataset, shuffle: bool, drop_last: bool) -> DataLoader:
        workers = self.data_cfg["num_workers"]
        return DataLoader(  # MONAI's DataLoader seeds each worker's random state
            dataset,
            batch_size=self.data_cfg["batch_size"],
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
            prefetch_factor=2 if workers > 0 else None,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        # A constant minibatch size M keeps the MWS estimator's scale; drop the ragged last batch.
        return self._loader(
            self.train_dataset, shuffle=True, drop_last=self.n_train > self.data_cfg["batch_size"]
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, shuffle=False, drop_last=False)
