"""Worker processes for the CPU-bound steps (demo generation, indexing, caching, factors)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")


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


def map_in_processes(
    fn: Callable[..., T],
    *iterables: Iterable[Any],
    workers: int,
    progress: bool = False,
    desc: str = "",
) -> list[T]:
    """[fn(*args) for args in zip(*iterables)], in `workers` processes when more than one, in order;
    with a progress bar (one step per subject) when `progress`."""
    args = list(zip(*iterables))

    def bar(results: Iterable[T]) -> list[T]:
        return list(tqdm(results, total=len(args), desc=desc, unit="subject", disable=not progress))

    if workers > 1 and len(args) > 1:
        with process_pool(workers) as pool:
            return bar(pool.map(fn, *zip(*args)))
    return bar(fn(*a) for a in args)
