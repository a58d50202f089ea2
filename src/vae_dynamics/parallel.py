"""Worker processes for the CPU-bound steps (demo generation, indexing, caching, factors)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor


def single_threaded_torch() -> None:
    """Worker start-up: one intra-op thread per worker process.

    One process per core needs no more, and it keeps the worker off OpenMP: a pool forked from a
    process that has already run multi-threaded PyTorch code inherits OpenMP's thread-pool state,
    and its first parallel region can wait forever for threads that were not copied.
    """
    import torch

    torch.set_num_threads(1)


def process_pool(
    workers: int, initializer: Callable[[], None] = single_threaded_torch
) -> ProcessPoolExecutor:
    """`workers` processes for CPU-bound work, each single-threaded (see `single_threaded_torch`)."""
    return ProcessPoolExecutor(workers, initializer=initializer)
