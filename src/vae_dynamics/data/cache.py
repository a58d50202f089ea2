"""build_persistent_cache: preprocess every split subject once (MONAI transforms) into a persistent cache.

The cache directory is named by a hash of the preprocessing contract (every parameter of
`build_transforms` + the MONAI version + a code version): MONAI keys cache files by the input dict
only, so changing preprocessing must change the directory or stale tensors would be served.

    vae-dynamics cache --config src/vae_dynamics/config/exp2_tcvae_sbd.yaml \
        --splits results/splits --cache-dir results/cache --manifest results/cache/manifest.json
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import monai
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from vae_dynamics.config.identity import CONTRACT_KEYS
from vae_dynamics.config.schema import DataConfig
from vae_dynamics.data import FILE_KEYS, read_subject_table
from vae_dynamics.data.transforms import transforms_from_config
from vae_dynamics.io import atomic_path, write_json
from vae_dynamics.parallel import map_in_processes

log = logging.getLogger(__name__)

# Bump when the meaning of the preprocessing code changes without a parameter changing.
PREPROCESSING_VERSION = 1
# Cached images are float16: intensities lie in [0, 1], where float16's rounding error is at most
# 2^-12 (half a unit in the last place below 1), and disk, RAM and host-to-GPU copies are halved.
# Consumers cast to float32 (on the device, after the copy): BraTSDataModule.on_after_batch_transfer.
CACHE_IMAGE_DTYPE = torch.float16


def preprocessing_contract(data_cfg: DataConfig) -> dict[str, Any]:
    """Everything that determines the cached tensors."""
    return {
        **data_cfg.model_dump(mode="json", include=set(CONTRACT_KEYS)),
        "preprocessing_version": PREPROCESSING_VERSION,
        "monai_version": monai.__version__,
        "dtypes": {"image": str(CACHE_IMAGE_DTYPE).removeprefix("torch."), "seg": "uint8"},
    }


def contract_hash(data_cfg: DataConfig) -> str:
    blob = json.dumps(preprocessing_contract(data_cfg), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def cache_dir_for(cache_root: str | os.PathLike[str], data_cfg: DataConfig) -> Path:
    """<cache_root>/<contract hash>/: where this preprocessing contract's items live (creates nothing)."""
    return Path(cache_root) / contract_hash(data_cfg)


def prepare_cache_dir(cache_root: str | os.PathLike[str], data_cfg: DataConfig) -> Path:
    """cache_dir_for, created, with contract.json describing what is cached there (written once)."""
    path = cache_dir_for(cache_root, data_cfg)
    path.mkdir(parents=True, exist_ok=True)
    contract_file = path / "contract.json"
    if not contract_file.exists():
        write_json(preprocessing_contract(data_cfg), contract_file)
    return path


def item_hash(item: Mapping[str, Any]) -> bytes:
    """Cache key of one subject: its id and the path, size and mtime of each of its files."""
    stamp = [item["subject_id"]]
    for key in FILE_KEYS:
        st = os.stat(item[key])
        stamp.append((str(item[key]), st.st_size, st.st_mtime_ns))
    return hashlib.md5(pickle.dumps(stamp)).hexdigest().encode()


class CachedSubjects(Dataset):
    """The subjects' preprocessed tensors, each computed once by the MONAI `transform` and kept in
    `cache_dir` as one file named by `item_hash` (what MONAI's PersistentDataset does, with two
    differences that need no private MONAI hook): a file is written beside its final name and renamed
    into place (MONAI moves it from the system temporary folder, a copy when /tmp is another file
    system), and an unreadable file is computed again. Images are stored as float16."""

    def __init__(self, records: Sequence[Mapping[str, str]], cache_dir: Path, transform: Callable) -> None:
        self.data, self.cache_dir, self.transform = list(records), cache_dir, transform

    def __len__(self) -> int:
        return len(self.data)

    def cache_file(self, item: Mapping[str, Any]) -> Path:
        """Where the preprocessed tensors of `item` are (or will be) cached."""
        return self.cache_dir / f"{item_hash(item).decode()}.pt"

    def __getitem__(self, index: int) -> Any:
        record = self.data[index]
        path = self.cache_file(record)
        if path.is_file():
            try:
                return torch.load(path, weights_only=True)
            except Exception as exc:  # noqa: BLE001 - any unreadable cache file is rebuilt
                warnings.warn(
                    f"cache file {path} of subject {record.get('subject_id')} is unreadable "
                    f"({type(exc).__name__}); recomputing it",
                    stacklevel=2,
                )
        item = self.transform(dict(record))
        item["image"] = item["image"].to(CACHE_IMAGE_DTYPE)
        with atomic_path(path) as tmp:  # a failed save leaves neither a partial nor a temporary file
            torch.save(item, tmp)
        return item


def subject_records(csv_path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """Rows of a subjects/split CSV as MONAI data dicts (subject_id + one path per file key)."""
    df = read_subject_table(csv_path)
    missing = [c for c in ("subject_id", *FILE_KEYS) if c not in df.columns]
    if missing:
        raise ValueError(f"{csv_path}: missing columns {missing}")
    return [{str(k): v for k, v in row.items()} for row in df[["subject_id", *FILE_KEYS]].to_dict("records")]


def make_dataset(
    records: Sequence[Mapping[str, str]],
    cache_dir: str | os.PathLike[str],
    transform: Callable,
) -> CachedSubjects:
    """The subjects of `records`, `transform`'s output cached in `cache_dir`."""
    return CachedSubjects(records, Path(cache_dir), transform)


def split_dataset(
    data_cfg: DataConfig,
    splits_dir: str | os.PathLike[str],
    split: str,
    cache_root: str | os.PathLike[str] | None = None,
) -> CachedSubjects:
    """The subjects of `<splits_dir>/<split>.csv` served from the persistent cache of `data_cfg`'s
    preprocessing under `cache_root` (default: data.cache_dir); computed and cached where missing."""
    cache_dir = prepare_cache_dir(cache_root or data_cfg.cache_dir, data_cfg)
    records = subject_records(Path(splits_dir) / f"{split}.csv")
    return make_dataset(records, cache_dir, transforms_from_config(data_cfg))


class RamCachedDataset(Dataset):
    """Serves the first `n_in_ram` items from memory (loaded from the disk cache once, at setup)."""

    def __init__(self, base: CachedSubjects, n_in_ram: int, progress: bool = False) -> None:
        self.base = base
        self.held = [base[i] for i in tqdm(range(n_in_ram), desc="cache -> RAM", disable=not progress)]

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> Any:
        return self.held[index] if index < len(self.held) else self.base[index]


SubjectDataset = CachedSubjects | RamCachedDataset  # one item per subject, sized


def available_memory_bytes() -> int:
    """Memory available to new allocations (Linux MemAvailable; total physical memory elsewhere)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def ram_share(n_items: int, cache_rate: float, item_bytes: int, budget_fraction: float = 0.5) -> int:
    """How many items `cache_rate` asks to hold in RAM, capped to a share of the available memory."""
    wanted = int(round(cache_rate * n_items))
    budget = int(available_memory_bytes() * budget_fraction)
    allowed = min(wanted, budget // max(item_bytes, 1))
    if allowed < wanted:
        log.warning(
            "cache_rate=%.2f asks for %d subjects in RAM (%.1f GB) but only %.1f GB may be used: "
            "holding %d subjects (%.1f GB) in RAM, the rest is read from the disk cache",
            cache_rate,
            wanted,
            wanted * item_bytes / 1e9,
            budget / 1e9,
            allowed,
            allowed * item_bytes / 1e9,
        )
    return allowed


def _cache_one(record: Mapping[str, str], cache_dir: Path, data_cfg: DataConfig) -> dict[str, Any]:
    """Preprocess (or load) one subject through the cache and describe it for the manifest."""
    t0 = time.perf_counter()
    dataset = make_dataset([record], cache_dir, transforms_from_config(data_cfg))
    try:
        item = dataset[0]
    except Exception as exc:
        raise RuntimeError(f"preprocessing failed for subject {record['subject_id']}: {exc}") from exc
    image, seg = item["image"], item["seg"]
    cache_file = dataset.cache_file(record)
    return {
        "subject_id": record["subject_id"],
        "cache_file": str(cache_file),
        "image_shape": list(image.shape),
        "seg_shape": list(seg.shape),
        "seg_labels": sorted(int(v) for v in torch.unique(seg)),
        "image_dtype": str(image.dtype).removeprefix("torch."),
        "channel_mean": [float(v) for v in image.float().mean(dim=(1, 2, 3))],
        "channel_max": [float(v) for v in image.float().amax(dim=(1, 2, 3))],
        "foreground_fraction": float((image != 0).any(0).float().mean()),
        "megabytes": round(cache_file.stat().st_size / 1e6, 2),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def build_cache(
    data_cfg: DataConfig,
    split_csvs: Sequence[str | os.PathLike[str]],
    cache_root: str | os.PathLike[str],
    manifest_path: str | os.PathLike[str] | None = None,
    workers: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Fill the cache for every subject of the split CSVs (in `workers` processes); write a manifest."""
    cache_dir = prepare_cache_dir(cache_root, data_cfg)
    records = [r for csv in split_csvs for r in subject_records(csv)]
    start = time.perf_counter()
    n = len(records)
    subjects = map_in_processes(
        _cache_one,
        records,
        [cache_dir] * n,
        [data_cfg] * n,
        workers=workers,
        progress=progress,
        desc="build_persistent_cache",
    )
    manifest = {
        "cache_dir": str(cache_dir),
        "contract": preprocessing_contract(data_cfg),
        "n_subjects": len(subjects),
        "seconds": round(time.perf_counter() - start, 2),
        "subjects": subjects,
    }
    if manifest_path is not None:
        write_json(manifest, manifest_path)
    return manifest
