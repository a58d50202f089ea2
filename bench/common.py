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

from vae_dynamics import experiments, models
from vae_dynamics.config import ExperimentConfig
from vae_dynamics.io import write_text
from vae_dynamics.models import VAE3d

# experiment key -> its nn.Module class (from the registry)
MODELS = {key: models.MODELS[e.variant] for key, e in experiments.EXPERIMENTS.items()}


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


# ---- the learning studies (learning.py, code_use.py, ladder.py) -------------------------------------

# Known demo factors (data/demo.py): head scale and affine deformation, tumour centre and radius.
FACTORS = (
    "scale",
    "rot_x_deg",
    "rot_y_deg",
    "rot_z_deg",
    "shift_x_mm",
    "shift_y_mm",
    "shift_z_mm",
    "tumour_x_mm",
    "tumour_y_mm",
    "tumour_z_mm",
    "tumour_radius_mm",
)


def demo_volumes(work: Path, n_subjects: int, n_val: int, workers: int):
    """Demo subjects through the package's preprocessing: train [n-n_val,4,128³], val [n_val,4,128³], and
    the subject ids in that order (train first)."""
    from vae_dynamics.config import config_path, load_config
    from vae_dynamics.data.demo import generate
    from vae_dynamics.data.index import index_subjects
    from vae_dynamics.data.transforms import transforms_from_config

    generate(work / "data", n_subjects, seed=0, workers=workers)
    subjects, _ = index_subjects(work / "data", work / "index", workers=workers, progress=False)
    data_cfg = load_config(config_path("exp2")).data
    transform = transforms_from_config(data_cfg)
    rows = subjects.to_dict("records")
    keys = [*data_cfg.modalities, "seg"]
    images = torch.stack([transform({k: r[k] for k in keys})["image"] for r in rows])
    ids = [r["subject_id"] for r in rows]
    return images[n_val:].contiguous(), images[:n_val].contiguous(), ids[n_val:] + ids[:n_val]


def study_optimizer(model: VAE3d, lr: float, cfg: ExperimentConfig):
    """AdamW and the start schedule of a config, as training builds them (lit_modules.build_optimizer)."""
    from vae_dynamics.training.lit_modules import build_optimizer

    return build_optimizer(model, cfg.train.model_copy(update={"lr": lr}))


def add_study_arguments(parser, *, steps: int, eval_every: int, lr: float, lr_help: str) -> None:
    """The options both studies share (training length and size, lr, β warm-up, workers, docs)."""
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--eval-every", type=int, default=eval_every)
    parser.add_argument("--base-filters", type=int, default=16)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lr", type=float, default=lr, help=lr_help)
    parser.add_argument("--warmup-epochs", type=int, default=8, help="β warm-up (epochs)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/LEARNING.md")


def loss_terms(exp: str, model, x, cfg, beta: float, n_train: int) -> tuple[dict, torch.Tensor]:
    """The weighted loss terms (each as it enters the total, the registry's objective) and μ, for one
    batch."""
    from vae_dynamics.losses import OBJECTIVES

    objective = OBJECTIVES[cfg.model.variant](cfg.loss, n_train)
    x_hat, mu, logvar, z = model(x)
    out = objective(x, (x_hat, mu, logvar, z), beta=beta)
    return {"loss": out["loss"], **{k: w * out[k] for k, w in objective.weights(beta).items()}}, mu


def training_step(exp: str, model, x, cfg, beta: float, n_train: int, opt, schedule, where: str) -> bool:
    """One optimizer step under bf16 autocast, as the demo trains on CPU; False (said) if the loss is not
    finite."""
    import math

    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms, _ = loss_terms(exp, model, x, cfg, beta, n_train)
    opt.zero_grad(set_to_none=True)
    terms["loss"].backward()
    opt.step()
    schedule.step()
    if not math.isfinite(float(terms["loss"].detach())):
        print(f"{where}: loss not finite", flush=True)
        return False
    return True
