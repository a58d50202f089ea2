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
import math
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
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
from vae_dynamics.losses import compute_tcvae_loss  # noqa: E402
from vae_dynamics.training.trainer import build_module, build_trainer  # noqa: E402

DTYPES = {"32-true": None, "16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}
REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "PERFORMANCE.md"
EPOCHS, EPOCH_SUBJECTS = 200, 900


@dataclass(frozen=True)
class Row:
    """One model-only setting. The defaults are the shipped Exp2 step as the real loop runs it on a GPU:
    B=8, 16-mixed, gradient checkpointing, channels_last_3d, torch.compile, AdamW (foreach), batches
    drawn from a GPU-resident float16 set."""

    batch: int = 8
    precision: str = "16-mixed"
    gradient_checkpointing: bool = True
    channels_last_3d: bool = True
    compile: bool = True
    compile_mode: str = "default"
    fused_adamw: bool = False
    feed: str = "resident"  # or "pinned": a host-pinned set, copied ahead on a side stream

    def label(self) -> str:
        shipped = Row(batch=self.batch)
        changes = [f"{k}={v}" for k, v in asdict(self).items() if v != getattr(shipped, k)]
        return ", ".join(changes) or "shipped step"


SHIPPED = Row()
# The precision/checkpointing/layout/compile table, then the candidates for the shipped step, each
# against SHIPPED in the same run: fused AdamW, a host-pinned set with asynchronous prefetch instead of
# the GPU-resident one, and Inductor's autotuning (slowest to compile: last).
MODEL_ONLY = [
    Row(precision="32-true", gradient_checkpointing=False, channels_last_3d=False, compile=False),
    Row(channels_last_3d=False, compile=False),
    Row(precision="bf16-mixed", gradient_checkpointing=False, channels_last_3d=False, compile=False),
    Row(channels_last_3d=False),
    Row(precision="bf16-mixed", gradient_checkpointing=False),
]
CANDIDATES = [
    SHIPPED,
    Row(fused_adamw=True),
    Row(feed="pinned"),
    Row(compile_mode="max-autotune-no-cudagraphs"),
]
POOL = 64  # subjects in the set a step draws its batch from (1 GB in float16)


class PinnedFeed:
    """Batches from a host-pinned float16 set: a background thread gathers the next batch into one of
    two pinned buffers and copies it to the GPU on a side stream while the current step runs."""

    def __init__(self, pool: torch.Tensor, batch: int, device: str) -> None:
        self.pool, self.batch, self.device = pool.pin_memory(), batch, device
        self.buffers = [
            torch.empty((batch, *pool.shape[1:]), dtype=pool.dtype).pin_memory() for _ in range(2)
        ]
        self.copied: list[torch.cuda.Event | None] = [None, None]
        self.stream = torch.cuda.Stream(device)
        self.generator = torch.Generator().manual_seed(0)
        self.thread = ThreadPoolExecutor(1)
        self.k = 0
        self.pending = self.thread.submit(self._load, 0)

    def _load(self, k: int) -> tuple[torch.Tensor, torch.cuda.Event]:
        if self.copied[k] is not None:  # the copy out of this buffer, two batches ago, has finished
            self.copied[k].synchronize()
        idx = torch.randint(len(self.pool), (self.batch,), generator=self.generator)
        torch.index_select(self.pool, 0, idx, out=self.buffers[k])
        with torch.cuda.stream(self.stream):
            x = self.buffers[k].to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        self.copied[k] = event
        return x, event

    def __call__(self) -> torch.Tensor:
        x, event = self.pending.result()
        torch.cuda.current_stream().wait_event(event)
        x.record_stream(torch.cuda.current_stream())
        self.k ^= 1
        self.pending = self.thread.submit(self._load, self.k)
        return x


def batches(row: Row, device: str):
    """A callable giving the next float16 batch [B, 4, 128³] on `device`, as `row.feed` says."""
    pool = torch.rand(POOL if device == "cuda" else row.batch, 4, 128, 128, 128).half()
    if row.feed == "pinned":
        return PinnedFeed(pool, row.batch, device)
    pool = pool.to(device)
    generator = torch.Generator(device).manual_seed(0)
    return lambda: pool[torch.randint(len(pool), (row.batch,), device=device, generator=generator)]


def build(row: Row, base_filters: int, device: str):
    """The Exp2 model, its AdamW and GradScaler for `row`."""
    torch.manual_seed(0)
    model = MODELS["exp2"](base_filters=base_filters, gradient_checkpointing=row.gradient_checkpointing)
    fmt = torch.channels_last_3d if row.channels_last_3d else torch.contiguous_format
    model = model.to(device).to(memory_format=fmt)
    if row.compile:
        model.compile(dynamic=False, mode=None if row.compile_mode == "default" else row.compile_mode)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=row.fused_adamw or None)
    scaler = torch.amp.GradScaler(device, enabled=row.precision == "16-mixed")
    return model, opt, scaler, fmt


def step_fn(row: Row, base_filters: int, device: str = "cuda"):
    """One optimizer step of the bare model (no Lightning): draw a batch, forward, loss, backward, AdamW."""
    model, opt, scaler, fmt = build(row, base_filters, device)
    feed = batches(row, device)
    dtype = DTYPES[row.precision]

    def step():
        x = feed().float().contiguous(memory_format=fmt)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            x_hat, mu, logvar, z = model(x)
            out = compute_tcvae_loss(x_hat, x, mu, logvar, z, dataset_size=900, beta_tc=6.0)
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


def model_only(
    base_filters: int,
    rows: list[Row],
    device: str,
    sink=None,
    profile: bool = False,
    deadline: float = math.inf,
) -> list[dict]:
    flops = train_flops_per_sample("exp2", base_filters)
    records = []
    for row in rows:
        if time.time() > deadline:
            print(f"model-only: out of time before {row.label()}", flush=True)
            break
        config = dict(model="exp2", base_filters=base_filters, label=row.label(), **asdict(row))
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            t0 = time.perf_counter()
            fn = step_fn(row, base_filters, device)
            fn()  # compiles
            first = time.perf_counter() - t0
            seconds = timed(fn, repeats=5 if device == "cuda" else 1, warmup=2, sync=device == "cuda")
        except torch.OutOfMemoryError:
            records.append(record("model_step_oom", 1, "bool", **config))
            continue
        rate = row.batch / seconds
        records += [
            record("model_step_samples_per_s", rate, "samples/s", **config),
            record("model_step_first_seconds", first, "s", **config),
            record("achieved_tflops", rate * flops / 1e12, "TFLOP/s", **config),
        ]
        if device == "cuda":
            records.append(
                record("model_step_peak_memory_gb", torch.cuda.max_memory_allocated() / 1e9, "GB", **config)
            )
        print(f"model-only {row.label()}: {rate:.1f} samples/s (first step {first:.0f} s)", flush=True)
        if profile and device == "cuda" and row == SHIPPED:
            try:
                records += profile_step(fn, config)
            except Exception as err:  # the profiler is diagnostics: the timings above stand without it
                print(f"profile skipped: {type(err).__name__}: {err}", flush=True)
        del fn
        if sink:
            sink(records)
    return records


def layer_times(base_filters: int, device: str, row: Row = SHIPPED, repeats: int = 5) -> list[dict]:
    """Where the shipped step's time goes, layer by layer: each block of the model (encoder stem and
    stages, head, broadcast and projection, decoder stages, final conv) and the loss, compiled on its own
    as `row` says, timed forward + backward on the input it gets in a real step. The rest of the whole
    step (recomputation under gradient checkpointing, AdamW, the batch) is reported as unattributed."""
    model, _, _, fmt = build(replace(row, compile=False), base_filters, device)
    dtype = DTYPES[row.precision]
    blocks = [
        ("encoder.stem", model.encoder.stem),
        *[(f"encoder.blocks.{i}", b) for i, b in enumerate(model.encoder.blocks)],
        ("encoder.head_conv", model.encoder.head_conv),
        ("encoder.head", model.encoder.head),
        ("broadcast", model.broadcast),
        ("project", model.project),
        *[(f"decoder.stages.{i}", b) for i, b in enumerate(model.decoder.stages)],
        ("decoder.final", model.decoder.final),
    ]
    inputs: dict[str, torch.Tensor] = {}
    hooks = [
        block.register_forward_pre_hook(lambda _m, args, name=name: inputs.setdefault(name, args[0].detach()))
        for name, block in blocks
    ]
    x = torch.rand(row.batch, 4, 128, 128, 128, device=device).contiguous(memory_format=fmt)
    with torch.no_grad(), torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
        x_hat, mu, logvar, z = model(x)
    for h in hooks:
        h.remove()
    sync = device == "cuda"

    timings = {}
    for name, block in blocks:
        fn = torch.compile(block, dynamic=False) if row.compile else block

        a = inputs[name]
        a.requires_grad_(name != "encoder.stem")  # the image needs no gradient; every later input does

        def once(fn=fn, a=a):
            with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
                out = fn(a)
            out.backward(torch.ones_like(out))

        timings[name] = timed(once, repeats=repeats, warmup=2, sync=sync)

    def loss_once():
        xh = x_hat.float().requires_grad_()
        m, lv, zz = (t.float().requires_grad_() for t in (mu, logvar, z))
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = compute_tcvae_loss(xh, x, m, lv, zz, dataset_size=900, beta_tc=6.0)
        out["loss"].backward()

    timings["loss"] = timed(loss_once, repeats=repeats, warmup=2, sync=sync)
    whole = timed(step_fn(row, base_filters, device), repeats=repeats, warmup=2, sync=sync)
    config = dict(model="exp2", base_filters=base_filters, label=row.label(), **asdict(row))
    records = [record("layer_step_ms", 1e3 * whole, "ms", **config)]
    for name, seconds in timings.items():
        records.append(record("layer_ms", 1e3 * seconds, "ms", layer=name, **config))
    records.append(record("layer_unattributed_ms", 1e3 * (whole - sum(timings.values())), "ms", **config))
    for r in records:
        print(f"{r['config'].get('layer', r['name']):<22} {r['value']:8.1f} ms", flush=True)
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


def table_head(caption: str, columns: list[str]) -> list[str]:
    """A caption and a Markdown table's header lines, after a blank line."""
    return ["", caption, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


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
        "Model-only step (draw a batch, forward, loss, backward, AdamW), Exp2; each setting named by how it "
        "differs from the shipped step (B=8, 16-mixed, checkpointing, channels_last_3d, compiled, AdamW "
        "foreach, GPU-resident set):",
        "",
        "| setting | samples/s | × shipped step | peak GB | first step s |",
        "|---|---|---|---|---|",
    ]
    mem = {r["config"]["label"]: r["value"] for r in by.get("model_step_peak_memory_gb", [])}
    first = {r["config"]["label"]: r["value"] for r in by.get("model_step_first_seconds", [])}
    rates = {r["config"]["label"]: r["value"] for r in by.get("model_step_samples_per_s", [])}
    shipped = rates.get(SHIPPED.label(), float("nan"))
    for label, rate in rates.items():
        lines.append(
            f"| {label} | {rate:.1f} | {rate / shipped:.2f} | {mem.get(label, float('nan')):.1f} | "
            f"{first.get(label, float('nan')):.0f} |"
        )
    if by.get("layer_ms"):
        step = by["layer_step_ms"][0]["value"]
        lines += table_head(
            f"Where the shipped step's {step:.0f} ms go: each layer compiled on its own, forward + backward "
            "on the input it gets in a real step:",
            ["layer", "ms", "share of the step"],
        )
        for r in [*by["layer_ms"], *by.get("layer_unattributed_ms", [])]:
            name = r["config"].get("layer", "unattributed (recomputation, AdamW, the batch)")
            lines.append(f"| {name} | {r['value']:.1f} | {100 * r['value'] / step:.1f} % |")
    if by.get("profile_kernel_share"):
        total = by["profile_cuda_ms_per_step"][0]["value"]
        lines += table_head(
            f"Profile of the compiled shipped step (torch.profiler, 3 steps; {total:.0f} ms of CUDA "
            "kernel time per step), top kernels by self CUDA time:",
            ["kernel", "share", "calls/step"],
        )
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
        "--session",
        action="store_true",
        help="what a short lent GPU session measures: the shipped loop, the shipped step against each "
        "candidate (fused AdamW, a host-pinned set, max-autotune) and the per-layer times",
    )
    parser.add_argument(
        "--minutes", type=float, default=math.inf, help="start no new measurement after this many minutes"
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
    deadline = time.time() + 60 * args.minutes
    plain = dict(precision="32-true", gradient_checkpointing=False, channels_last_3d=False, compile=False)
    if args.smoke:
        device, bf, repeats = "cpu", 16, 1
        rows = [Row(batch=2, **plain), Row(batch=2, **{**plain, "precision": "bf16-mixed"})]
        attribution = Row(batch=2, **{**plain, "precision": "bf16-mixed"})
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
        device, bf, repeats = "cuda", 32, 5
        rows = (
            CANDIDATES if args.session else list(dict.fromkeys([*CANDIDATES[:1], *MODEL_ONLY, *CANDIDATES]))
        )
        attribution = SHIPPED
        loop_common = {}
        subjects, epoch_subjects, steps, warmup = args.subjects, EPOCH_SUBJECTS, args.steps, args.warmup
        # Most informative first: records are saved after each setting, so a run cut short keeps them.
        settings = {
            "shipped: compiled, GPU-resident, channels_last_3d": dict(train_compile=True, gpu=True, cl=True),
            "eager, loader (4 workers, RAM cache)": dict(train_compile=False, gpu=False, cl=False),
            "compiled, loader (4 workers, RAM cache), channels_last_3d": dict(
                train_compile=True, gpu=False, cl=True
            ),
            "compiled, GPU-resident": dict(train_compile=True, gpu=True, cl=False),
            "eager, GPU-resident": dict(train_compile=False, gpu=True, cl=False),
        }
        settings = {
            k: {
                "train.compile": v["train_compile"],
                "data.gpu_cache": v["gpu"],
                "train.channels_last": v["cl"],
            }
            for k, v in settings.items()
        }
        if args.session:
            settings = dict(list(settings.items())[:1])
        if args.only:
            settings = {k: v for k, v in settings.items() if any(o in k for o in args.only)}
    records = []

    def sink(new: list[dict]) -> None:
        save_records(records + new, args.out, echo=False)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        splits = prepare_data(work, subjects, epoch_subjects, args.workers)
        for label, overrides in settings.items():
            if time.time() > deadline:
                break
            records += training_loop(work, splits, {**loop_common, **overrides}, steps, warmup, label)
            sink([])
    if not args.no_model_only:
        records += model_only(bf, rows, device, sink, profile=not args.no_profile, deadline=deadline)
        if time.time() < deadline:
            records += layer_times(bf, device, attribution, repeats=repeats)
    save_records(records, args.out)
    if not args.smoke and not args.no_doc:
        update_doc(markdown(records))


if __name__ == "__main__":
    main()
