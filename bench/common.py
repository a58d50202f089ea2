"""Shared helpers for the benchmarks: records, versions, timing, model FLOPs."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning
import monai
import torch

from vae_dynamics import experiments
from vae_dynamics.io import write_text

# experiment key -> its nn.Module class (from the registry)
MODELS = {key: e.model_cls() for key, e in experiments.EXPERIMENTS.items()}


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "lightning": lightning.__version__,
        "cuda": torch.version.cuda or "none",
    }


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def record(name: str, value: float, unit: str, **config: Any) -> dict[str, Any]:
    return {
        "name": name,
        "value": float(value),
        "unit": unit,
        "config": config,
        "device": device_name(),
        "versions": versions(),
    }


def timed(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1, sync: bool = False) -> float:
    """Median seconds per call of fn."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def train_flops_per_sample(exp: str, base_filters: int) -> int:
    """Forward + backward FLOPs of one sample at 128³ (torch.utils.flop_counter, on the meta device)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = MODELS[exp](base_filters=base_filters)
        x = torch.empty(1, 4, 128, 128, 128)
    with FlopCounterMode(display=False) as counter:
        x_hat, mu, logvar, z = model(x)
        (x_hat.sum() + mu.sum() + logvar.sum()).backward()
    return counter.get_total_flops()


def save_records(records: list[dict[str, Any]], out: str | Path, echo: bool = True) -> None:
    write_text(json.dumps(records, indent=2) + "\n", out)
    for r in records if echo else ():
        print(f"{r['name']:<45} {r['value']:>14.4g} {r['unit']:<12} {json.dumps(r['config'])}")


def replace_between_markers(doc: Path, name: str, text: str) -> None:
    """Rewrite what lies between `<!-- {name}:start -->` and `<!-- {name}:end -->` in `doc` (atomically)."""
    import re

    content = doc.read_text()
    pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(\n<!-- {name}:end -->)", re.S)
    if not pattern.search(content):
        raise SystemExit(f"{doc}: no <!-- {name}:start/end --> markers")
    write_text(pattern.sub(lambda m: m.group(1) + text + m.group(2), content), doc)
