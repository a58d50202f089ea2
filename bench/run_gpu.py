"""GPU benchmarks -> bench/results/gpu.json.   make bench-gpu   (needs CUDA)

Exp1/Exp2 training-step throughput (samples/s), peak memory and achieved TFLOP/s at 128³ across
batch size, precision (32-true, 16-mixed, bf16-mixed), gradient checkpointing, channels_last_3d
and torch.compile; DataLoader throughput from the cache against what the GPU consumes.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MODELS, record, save_records, timed, train_flops_per_sample  # noqa: E402

from vae_dynamics.losses import compute_tcvae_loss, compute_vae_loss  # noqa: E402

DTYPES = {"32-true": None, "16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}


def step_fn(exp: str, batch: int, base_filters: int, precision: str, checkpointing: bool, channels_last: bool,
            compile_model: bool):  # fmt: skip
    torch.manual_seed(0)
    model = MODELS[exp](base_filters=base_filters, gradient_checkpointing=checkpointing).cuda()
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    forward = torch.compile(model) if compile_model else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "16-mixed")
    x = torch.rand(batch, 4, 128, 128, 128, device="cuda").contiguous(memory_format=fmt)
    dtype = DTYPES[precision]

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            x_hat, mu, logvar, z = forward(x)
            if exp == "exp2":
                out = compute_tcvae_loss(x_hat, x, mu, logvar, z, dataset_size=900, beta_tc=6.0)
            else:
                out = compute_vae_loss(x_hat, x, mu, logvar, beta_kl=1.0)
        scaler.scale(out["loss"]).backward()
        scaler.step(opt)
        scaler.update()

    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench/results/gpu.json")
    parser.add_argument("--base-filters", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="only the settings the targets need")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench-gpu: no CUDA device; run `make bench` for the CPU set")
    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("high")
    bf = args.base_filters
    flops = {exp: train_flops_per_sample(exp, bf) for exp in MODELS}
    grid = list(
        itertools.product(("exp2", "exp1"), (2, 4, 8), DTYPES, (True, False), (True, False), (False, True))
    )
    if args.quick:
        grid = [g for g in grid if g[0] == "exp2" and g[1] == 8 and not g[5]] + [
            ("exp2", 8, "bf16-mixed", True, True, True), ("exp2", 8, "16-mixed", True, True, True)]  # fmt: skip
    records = []
    for exp, batch, precision, ckpt, cl, comp in grid:
        if comp and (batch != 8 or not cl):
            continue  # compile only at the production setting
        config = dict(model=exp, batch=batch, base_filters=bf, precision=precision, gradient_checkpointing=ckpt,
                      channels_last_3d=cl, compile=comp)  # fmt: skip
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        try:
            seconds = timed(
                step_fn(exp, batch, bf, precision, ckpt, cl, comp), repeats=5, warmup=3, sync=True
            )
        except torch.OutOfMemoryError:
            records.append(record("train_step_oom", 1, "bool", **config))
            continue
        rate = batch / seconds
        records += [
            record("train_step_samples_per_s", rate, "samples/s", **config),
            record("train_step_peak_memory_gb", torch.cuda.max_memory_allocated() / 1e9, "GB", **config),
            record("achieved_tflops", rate * flops[exp] / 1e12, "TFLOP/s", **config),
        ]
    with tempfile.TemporaryDirectory() as tmp:
        from run_cpu import data_benchmarks

        records += data_benchmarks(Path(tmp))
    save_records(records, args.out)


if __name__ == "__main__":
    main()
