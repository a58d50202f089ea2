"""Which config keys define what: the cached data, the run (its directory), and what a resume may change.

One place for these lists; the cache (data/cache.py), the resume check (training/run.py) and the
workflow's run directory (pipeline/plan.py) read them. Light: no torch, so that `snakemake -n` stays fast.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from vae_dynamics.config.schema import ExperimentConfig

# data.* keys that determine the cached tensors (the preprocessing contract).
CONTRACT_KEYS = ("modalities", "roi_size", "spacing", "orientation", "fov_mm", "intensity_percentile")

# Sections whose change makes a checkpoint meaningless for this config (resume is refused).
RESUME_LOCKED_SECTIONS = ("model", "loss", "data")
# Keys outside those sections that must not change on resume: the global batch (M of the MWS
# estimator) and the data shards depend on the device count; the optimizer's lr and its start
# schedule are restored from the checkpoint (a changed value would be silently ignored).
RESUME_LOCKED_KEYS = (
    "train.devices",
    "train.num_nodes",
    "train.lr",
    "train.lr_warmup_steps",
    "train.encoder_head_lr_scale",
    "train.encoder_head_lr_ramp_steps",
)
# Keys that change where data is held or how fast it flows, not what is learnt.
RESUME_FREE_KEYS = {"data.num_workers", "data.cache_rate", "data.cache_dir", "data.gpu_cache"}

# Keys left out of a run's identity: how long it trains (raising max_epochs continues the same run),
# how fast it runs and where things are kept, and what is logged. Everything else defines the run.
IDENTITY_FREE_KEYS = RESUME_FREE_KEYS | {
    "train.max_epochs",
    "train.compile",
    "train.channels_last",
    "train.gradient_checkpointing",
    "train.accelerator",
}
IDENTITY_FREE_SECTIONS = ("logging",)


def _flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def identity_keys(cfg: ExperimentConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The dotted keys and values that define what a run learns."""
    if isinstance(cfg, ExperimentConfig):
        cfg = cfg.to_dict()
    return {
        k: v
        for k, v in sorted(_flatten(cfg).items())
        if k not in IDENTITY_FREE_KEYS and k.split(".", 1)[0] not in IDENTITY_FREE_SECTIONS
    }


def run_identity(cfg: ExperimentConfig | Mapping[str, Any]) -> str:
    """A short hash of identity_keys: the workflow's run directory name."""
    return hashlib.sha256(json.dumps(identity_keys(cfg), sort_keys=True).encode()).hexdigest()[:12]
