"""GPU benchmarks -> bench/results/gpu.json and the GPU section of docs/PERFORMANCE.md.   make bench-gpu

One prepared script, about 6-8 minutes on one H100/H200:
1. The real training loop (`build_module` + `build_trainer` of the shipped Exp2 config: B=8, base 32,
   16-mixed, gradient checkpointing) on demo subjects whose train rows are repeated to a ~900-subject
   epoch: steady-state samples/s and peak GPU memory for eager vs compiled x loader vs GPU-resident,
   and the projected time of 200 epochs x 900 subjects.
2. The model-only step (forward, loss, backward, AdamW) across precision, checkpointing,
   channels_last_3d and torch.compile.

    .venv/bin/python bench/run_gpu.py                    # on a CUDA machine
    .venv/bin/python bench/run_gpu.py --smoke            # the same code path on CPU, tiny (checks the script)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MODELS, record, replace_between_markers, save_records, timed, train_flops_per_sample  # noqa: E402

from vae_dynamics.config import config_path, load_config  # noqa: E402
from vae_dynamics.data.cache import build_cache  # noqa: E402
from vae_dynamics.data.datamodule import BraTSDataModule  # noqa: E402
from vae_dynamics.data.demo import generate  # noqa: E402
from vae_dynamics.data.index import index_subjects  # noqa: E402
from vae_dynamics.data.splits import make_splits  # noqa: E402
from vae_dynamics.losses import compute_tcvae_loss, compute_vae_loss  # noqa: E402
from vae_dynamics.training.trainer import build_module, build_trainer  # noqa: E402

DTYPES = {"32-true": None, "16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}
REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "PERFORMANCE.md"
EPOCHS, EPOCH_SUBJECTS = 200, 900

# (batch, precision, checkpointing, channels_last_3d, compile): the rows of the performance issue's table
MODEL_ONLY = [
    (8, "32-true", False, False, False),
    (8, "16-mixed", True, False, False),
    (8, "bf16-mixed", False, False, False),
    (8, "16-mixed", True, False, True),
    (8, "bf16-mixed", False, True, True),
]
# The row whose compiled step is profiled (torch.profiler, top kernels by CUDA time): the shipped config.
PROFILED = (8, "16-mixed", True, False, True)


def step_fn(
    exp: str,
    batch: int,
    base_filters: int,
    precision: str,
    checkpointing: bool,
    channels_last: bool,
    compile_model: bool,
    device: str = "cuda",
):
    """One optimizer step of the bare model (no Lightning, no data loading)."""
    torch.manual_seed(0)
    model = MODELS[exp](base_filters=base_filters, gradient_checkpointing=checkpointing).to(device)
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    if compile_model:
        model.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    scaler = torch.amp.GradScaler(device, enabled=precision == "16-mixed")
    x = torch.rand(batch, 4, 128, 128, 128, device=device).contiguous(memory_format=fmt)
    dtype = DTYPES[precision]

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            x_hat, mu, logvar, z = model(x)
            if exp == "exp2":
                out = compute_tcvae_loss(x_hat, x, mu, logvar, z, dataset_size=900, beta_tc=6.0)
            else:
                out = compute_vae_loss(x_hat, x, mu, logvar, beta_kl=1.0)
        scaler.scale(out["loss"]).backward()
        scaler.step(opt)
        scaler.update()

    return step


def profile_step(step, config: dict, top: int = 12) -> list[dict]:
    """Top CUDA kernels of three steps of `step` (torch.profiler), as share of the profiled CUDA time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    kernels = [
        e for e in prof.key_averages() if e.device_type.name == "CUDA" and e.self_device_time_total > 0
    ]
    total = sum(e.self_device_time_total for e in kernels)
    kernels.sort(key=lambda e: e.self_device_time_total, reverse=True)
    records = [record("profile_cuda_ms_per_step", total / 3 / 1e3, "ms", **config)]
    for e in kernels[:top]:
        records.append(
            record(
                "profile_kernel_share",
                e.self_device_time_total / total,
                "fraction",
                kernel=e.key[:120],
                calls_per_step=e.count / 3,
                **config,
            )
        )
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=top), flush=True)
    return records


def model_only(base_filters: int, rows, device: str, sink=None, profile: bool = False) -> list[dict]:
    flops = train_flops_per_sample("exp2", base_filters)
    records = []
    for batch, precision, ckpt, cl, comp in rows:
        config = dict(
            model="exp2",
            batch=batch,
            base_filters=base_filters,
            precision=precision,
            gradient_checkpointing=ckpt,
            channels_last_3d=cl,
            compile=comp,
        )
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            fn = step_fn("exp2", batch, base_filters, precision, ckpt, cl, comp, device)
            seconds = timed(
                fn, repeats=5 if device == "cuda" else 1, warmup=3 if comp else 2, sync=device == "cuda"
            )
        except torch.OutOfMemoryError:
            records.append(record("model_step_oom", 1, "bool", **config))
            continue
        rate = batch / seconds
        records += [
            record("model_step_samples_per_s", rate, "samples/s", **config),
            record("achieved_tflops", rate * flops / 1e12, "TFLOP/s", **config),
        ]
        if device == "cuda":
            records.append(
                record("model_step_peak_memory_gb", torch.cuda.max_memory_allocated() / 1e9, "GB", **config)
            )
        print(f"model-only {config}: {rate:.1f} samples/s", flush=True)
        if profile and device == "cuda" and (batch, precision, ckpt, cl, comp) == PROFILED:
            try:
                records += profile_step(fn, config)
            except Exception as err:  # the profiler is diagnostics: the timings above stand without it
                print(f"profile skipped: {type(err).__name__}: {err}", flush=True)
        del fn
        if sink:
            sink(records)
    return records


class Throughput(L.Callback):
    """Samples/s between training step `warmup` and the last step (synchronised at both ends)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = self.end = None
        self.samples = 0

    def _sync(self, module: L.LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx + 1 == self.warmup:
            self._sync(pl_module)
            self.start = time.perf_counter()
        elif batch_idx + 1 > self.warmup:
            self.samples += batch["image"].shape[0]
            self._sync(pl_module)
            self.end = time.perf_counter()

    @property
    def rate(self) -> float:
        return self.samples / (self.end - self.start)


def prepare_data(work: Path, n_subjects: int, epoch_subjects: int, workers: int) -> Path:
    """Demo subjects, cached; train.csv repeated to about `epoch_subjects` rows."""
    t0 = time.perf_counter()
    generate(work / "data", n_subjects, seed=0, workers=workers)
    index_subjects(work / "data", work / "index", workers=workers, progress=False)
    make_splits(work / "index" / "subjects.csv", work / "splits", val_split=0.1, seed=0)
    cfg = load_config(config_path("exp2"), {"data.cache_dir": str(work / "cache")})
    build_cache(
        cfg.data,
        [work / "splits" / "train.csv", work / "splits" / "val.csv"],
        work / "cache",
        workers=workers,
        progress=False,
    )
    train = pd.read_csv(work / "splits" / "train.csv")
    repeats = max(1, round(epoch_subjects / len(train)))
    pd.concat([train] * repeats, ignore_index=True).to_csv(work / "splits" / "train.csv", index=False)
    print(
        f"data: {n_subjects} subjects, {len(train) * repeats} train rows, {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    return work / "splits"


def training_loop(
    work: Path, splits: Path, overrides: dict, steps: int, warmup: int, label: str
) -> list[dict]:
    """The real loop (the package's module, data module and Trainer) for `steps` training steps."""
    cfg = load_config(
        config_path("exp2"),
        {"data.cache_dir": str(work / "cache"), "data.cache_rate": 1.0, "train.max_epochs": 1, **overrides},
    )
    run_dir = work / "runs" / label
    dm = BraTSDataModule(cfg.data, splits, seed=cfg.train.seed)
    module = build_module(cfg, dm.n_train)
    trainer = build_trainer(cfg, run_dir)
    meter = Throughput(warmup)
    trainer.callbacks.append(meter)
    trainer.limit_train_batches = steps
    trainer.limit_val_batches = 1
    cuda = torch.cuda.is_available() and cfg.train.accelerator != "cpu"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    config = dict(
        label=label,
        batch=cfg.data.batch_size,
        base_filters=cfg.model.base_filters,
        precision=str(trainer.precision),
        gradient_checkpointing=cfg.train.gradient_checkpointing,
        compile=cfg.train.compile,
        gpu_cache=dm.train_batches is not None,
        num_workers=cfg.data.num_workers,
        n_train=dm.n_train,
        steps=steps,
        warmup=warmup,
    )
    rate = meter.rate
    records = [
        record("loop_samples_per_s", rate, "samples/s", **config),
        record("loop_projected_minutes_200x900", EPOCHS * EPOCH_SUBJECTS / rate / 60, "min", **config),
        record("loop_wall_seconds", time.perf_counter() - t0, "s", **config),
    ]
    if cuda:
        records.append(record("loop_peak_memory_gb", torch.cuda.max_memory_allocated() / 1e9, "GB", **config))
    print(f"loop {label}: {rate:.1f} samples/s", flush=True)
    del trainer, module, dm
    return records


def markdown(records: list[dict]) -> str:
    """The GPU section of docs/PERFORMANCE.md from the records of one run."""
    by = {}
    for r in records:
        by.setdefault(r["name"], []).append(r)
    versions = ", ".join(f"{k} {v}" for k, v in records[0]["versions"].items())
    lines = [
        f"Device: **{records[0]['device']}**; {versions}; `make bench-gpu`, {time.strftime('%Y-%m-%d')}.",
        "",
        "Real training loop (shipped Exp2 config: B=8, base 32, 16-mixed, checkpointing; ~900-subject "
        "epoch):",
        "",
        "| setting | samples/s | peak GB | 200 epochs × 900 |",
        "|---|---|---|---|",
    ]
    peaks = {r["config"]["label"]: r["value"] for r in by.get("loop_peak_memory_gb", [])}
    minutes = {r["config"]["label"]: r["value"] for r in by.get("loop_projected_minutes_200x900", [])}
    for r in by.get("loop_samples_per_s", []):
        label = r["config"]["label"]
        lines.append(
            f"| {label} | {r['value']:.1f} | {peaks.get(label, float('nan')):.1f} | {minutes[label]:.0f} min "
            f"|"
        )
    lines += [
        "",
        "Model-only step (forward, loss, backward, AdamW), Exp2:",
        "",
        "| batch | precision | checkpointing | channels_last_3d | compile | samples/s | peak GB |",
        "|---|---|---|---|---|---|---|",
    ]
    mem = {str(r["config"]): r["value"] for r in by.get("model_step_peak_memory_gb", [])}
    for r in by.get("model_step_samples_per_s", []):
        c = r["config"]
        lines.append(
            f"| {c['batch']} | {c['precision']} | {c['gradient_checkpointing']} | {c['channels_last_3d']} | "
            f"{c['compile']} | {r['value']:.1f} | {mem.get(str(c), float('nan')):.1f} |"
        )
    if by.get("profile_kernel_share"):
        total = by["profile_cuda_ms_per_step"][0]["value"]
        lines += [
            "",
            f"Profile of the compiled shipped step (torch.profiler, 3 steps; {total:.0f} ms of CUDA "
            "kernel time per step), top kernels by self CUDA time:",
            "",
            "| kernel | share | calls/step |",
            "|---|---|---|",
        ]
        for r in by["profile_kernel_share"]:
            kernel = r["config"]["kernel"].replace("|", "/")
            lines.append(f"| `{kernel}` | {100 * r['value']:.1f} % | {r['config']['calls_per_step']:.0f} |")
    return "\n".join(lines)


def update_doc(text: str, doc: Path = DOC) -> None:
    replace_between_markers(doc, "gpu-results", text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="bench/results/gpu.json")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny CPU run of the same code (checks the script)"
    )
    parser.add_argument("--subjects", type=int, default=16, help="demo subjects to generate")
    parser.add_argument("--steps", type=int, default=70, help="training steps per loop setting")
    parser.add_argument(
        "--warmup", type=int, default=20, help="steps excluded from the rate (compile, cuDNN tuning)"
    )
    parser.add_argument("--workers", type=int, default=8, help="processes for data generation and caching")
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/PERFORMANCE.md")
    parser.add_argument("--no-profile", action="store_true", help="skip the torch.profiler table")
    parser.add_argument("--no-model-only", action="store_true", help="only the real-loop settings")
    parser.add_argument(
        "--only", action="append", metavar="TEXT", help="loop settings whose label contains TEXT (repeatable)"
    )
    parser.add_argument(
        "--render",
        metavar="JSON",
        help="only rewrite the GPU section of docs/PERFORMANCE.md from a results file",
    )
    args = parser.parse_args(argv)
    if args.render:
        update_doc(markdown(json.loads(Path(args.render).read_text())))
        return
    if args.smoke:
        device, bf, rows = (
            "cpu",
            16,
            [(2, "32-true", False, False, False), (2, "bf16-mixed", False, False, False)],
        )
        loop_common = {
            "model.base_filters": 16,
            "data.batch_size": 2,
            "data.num_workers": 0,
            "train.accelerator": "cpu",
            "train.precision": "bf16-mixed",
        }
        subjects, epoch_subjects, steps, warmup = 4, 12, 3, 1
        settings = {"eager, loader": {"train.compile": False}}
    else:
        if not torch.cuda.is_available():
            sys.exit(
                "bench-gpu: no CUDA device (use --smoke to check the script on CPU; `make bench` for CPU "
                "figures)"
            )
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
        device, bf, rows = "cuda", 32, MODEL_ONLY
        loop_common = {}
        subjects, epoch_subjects, steps, warmup = args.subjects, EPOCH_SUBJECTS, args.steps, args.warmup
        # Most informative first: records are saved after each setting, so a run cut short keeps them.
        settings = {
            "eager, loader (4 workers, RAM cache)": {"train.compile": False, "data.gpu_cache": False},
            "compiled, GPU-resident": {"train.compile": True, "data.gpu_cache": True},
            "compiled, loader (4 workers, RAM cache)": {"train.compile": True, "data.gpu_cache": False},
            "eager, GPU-resident": {"train.compile": False, "data.gpu_cache": True},
            "compiled, GPU-resident, channels_last_3d": {
                "train.compile": True,
                "data.gpu_cache": True,
                "train.channels_last": True,
            },
        }
        if args.only:
            settings = {k: v for k, v in settings.items() if any(o in k for o in args.only)}
    records = []

    def sink(new: list[dict]) -> None:
        save_records(records + new, args.out, echo=False)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        splits = prepare_data(work, subjects, epoch_subjects, args.workers)
        for label, overrides in settings.items():
            records += training_loop(work, splits, {**loop_common, **overrides}, steps, warmup, label)
            sink([])
    if not args.no_model_only:
        records += model_only(bf, rows, device, sink, profile=not args.no_profile)
    save_records(records, args.out)
    if not args.smoke and not args.no_doc:
        update_doc(markdown(records))


if __name__ == "__main__":
    main()
