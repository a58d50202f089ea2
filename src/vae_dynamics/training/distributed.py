"""Ranks and collectives: which process writes the run's files, and gathering across processes.

Under DDP every process runs the same command: Lightning re-runs it for ranks > 0 (or srun starts all
of them). Rank 0 prepares the run directory; the others wait for what it wrote.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from vae_dynamics.config.schema import ExperimentConfig

if TYPE_CHECKING:
    import torch

# Set by rank 0 before Lightning launches the other ranks (which re-run the same command).
RUN_DIR_ENV = "VAE_DYNAMICS_RUN_DIR"
# How long ranks > 0 wait for rank 0's splits and config (seconds; rank 0 may index a large dataset).
RANK_WAIT_ENV = "VAE_DYNAMICS_RANK_WAIT_S"


class RankSetupTimeout(RuntimeError):
    """A DDP process of rank > 0 waited too long for rank 0 to prepare the run directory."""


def world_size(cfg: ExperimentConfig) -> int:
    return cfg.train.devices * cfg.train.num_nodes


def resolve_strategy(cfg: ExperimentConfig) -> str:
    """train.strategy: auto = DDP (one process per device) when more than one device is used."""
    strategy = cfg.train.strategy
    return "ddp" if strategy == "auto" and world_size(cfg) > 1 else strategy


def launched_rank(devices_per_node: int | None = None) -> int:
    """0 for the process that writes the run's files; > 0 for the other processes of a DDP run.

    Lightning re-runs the command for ranks > 0 with LOCAL_RANK / NODE_RANK set (torchrun sets RANK);
    `srun` with several tasks sets SLURM_PROCID. A single-task SLURM job is rank 0 whatever SLURM says.
    The global rank is NODE_RANK · (processes per node) + LOCAL_RANK; processes per node come from
    LOCAL_WORLD_SIZE (torchrun) or `devices_per_node` (train.devices).
    """
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if "LOCAL_RANK" in os.environ:
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", devices_per_node or 1))
        return int(os.environ["LOCAL_RANK"]) + int(os.environ.get("NODE_RANK", 0)) * per_node
    if int(os.environ.get("SLURM_NTASKS", 1)) > 1:
        return int(os.environ.get("SLURM_PROCID", 0))
    return 0


def wait_for_rank0(files: list[Path]) -> None:
    """Block until rank 0 has written `files`; RankSetupTimeout after $VAE_DYNAMICS_RANK_WAIT_S."""
    wait_s = float(os.environ.get(RANK_WAIT_ENV, 6 * 3600))
    deadline = time.time() + wait_s
    while not all(f.is_file() for f in files):
        if time.time() > deadline:  # srun starts all ranks at once: wait for rank 0's files
            raise RankSetupTimeout(
                f"a DDP process waited {wait_s:.0f} s for rank 0 to write {' and '.join(map(str, files))} "
                "(rank 0 indexes and splits the data first); none came. "
                f"Look at rank 0's log; raise the wait with {RANK_WAIT_ENV}=<seconds>."
            )
        time.sleep(1)


def distributed_world() -> tuple[int, int]:
    """(world size, rank) of the process group, (1, 0) outside DDP."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def gather_batch(t: torch.Tensor) -> torch.Tensor:
    """Concatenate a per-process tensor over all processes, in rank order, keeping its gradient."""
    import torch
    from torch.distributed.nn.functional import all_gather

    sizes = [torch.zeros(1, dtype=torch.long, device=t.device) for _ in range(distributed_world()[0])]
    torch.distributed.all_gather(sizes, torch.tensor([t.shape[0]], device=t.device))
    if len({int(n) for n in sizes}) != 1:
        raise RuntimeError(
            f"per-device minibatches differ in size ({[int(n) for n in sizes]}): the MWS estimator needs the "
            "same M on every device (training drops the ragged last batch)"
        )
    return torch.cat(all_gather(t), dim=0)
