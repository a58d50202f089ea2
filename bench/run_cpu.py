"""CPU benchmarks -> bench/results/cpu.json.   make bench   (about 5 minutes on 2 cores)

Records: cache_hit_speedup, checkpointing_peak_memory_ratio, train_step_samples_per_s (required),
plus parameter counts and FLOPs of both models, preprocessing/cached-load times, DataLoader
throughput at several num_workers, and the β-TCVAE loss's share of a training step.
Peak memory is measured in a fresh subprocess per setting (ru_maxrss above the pre-step RSS).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MODELS, record, save_records, timed, train_flops_per_sample  # noqa: E402

from vae_dynamics.config import config_path, load_config  # noqa: E402
from vae_dynamics.data.cache import cache_dir_for, make_dataset  # noqa: E402
from vae_dynamics.data.demo import generate  # noqa: E402
from vae_dynamics.data.transforms import transforms_from_config  # noqa: E402
from vae_dynamics.losses import compute_tcvae_loss  # noqa: E402

DATA_CFG = load_config(config_path("exp2")).data


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def step_memory(checkpointing: bool, batch: int, base_filters: int) -> dict:
    """One Exp2 training step (forward, loss, backward, AdamW) in this process; activation peak in bytes."""
    torch.manual_seed(0)
    model = MODELS["exp2"](base_filters=base_filters, gradient_checkpointing=checkpointing)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(batch, 4, 128, 128, 128)
    before = current_rss_bytes()
    x_hat, mu, logvar, z = model(x)
    out = compute_tcvae_loss(x_hat, x, mu, logvar, z, dataset_size=900, beta_tc=6.0)
    out["loss"].backward()
    opt.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_above_baseline": peak - before}


def measure_in_subprocess(checkpointing: bool, batch: int, base_filters: int) -> int:
    code = (
        "import json, sys; sys.path.insert(0, 'bench'); from run_cpu import step_memory; "
        f"print(json.dumps(step_memory({checkpointing}, {batch}, {base_filters})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_above_baseline"]


def train_step_seconds(exp: str, batch: int, base_filters: int, checkpointing: bool) -> tuple[float, float]:
    """(seconds per training step, seconds of the β-TCVAE loss inside it)."""
    torch.manual_seed(0)
    model = MODELS[exp](base_filters=base_filters, gradient_checkpointing=checkpointing)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(batch, 4, 128, 128, 128)
    loss_time = []

    def step():
        opt.zero_grad(set_to_none=True)
        x_hat, mu, logvar, z = model(x)
        t0 = time.perf_counter()
        out = compute_tcvae_loss(x_hat, x, mu, logvar, z, dataset_size=900, beta_tc=6.0)
        loss_time.append(time.perf_counter() - t0)
        out["loss"].backward()
        opt.step()

    seconds = timed(step, repeats=2, warmup=1)
    return seconds, sorted(loss_time)[len(loss_time) // 2]


def data_benchmarks(workdir: Path) -> list[dict]:
    records = []
    root = workdir / "demo"
    generate(root, 4, seed=0, workers=2)
    items = [
        {
            "subject_id": p.name,
            **{k: str(p / f"{p.name}-{k}.nii.gz") for k in ("t1c", "t1n", "t2f", "t2w", "seg")},
        }
        for p in sorted(root.glob("BraTS-MEN-*"))
    ]
    transform = transforms_from_config(DATA_CFG)
    uncached = timed(lambda: transform(dict(items[0])), repeats=3, warmup=1)
    cache_dir = cache_dir_for(workdir / "cache", DATA_CFG)
    dataset = make_dataset(items, cache_dir, transform)
    for i in range(len(items)):
        dataset[i]  # fill
    cached = timed(lambda: dataset[0], repeats=5, warmup=1)
    megabytes = sum(p.stat().st_size for p in cache_dir.glob("*.pt")) / len(items) / 1e6
    records += [
        record("preprocess_subject_seconds", uncached, "s", source="NIfTI (5 x .nii.gz)"),
        record("cached_load_ms", cached * 1e3, "ms", source="PersistentDataset .pt"),
        record("cache_hit_speedup", uncached / cached, "x", note="uncached preprocessing / cached load"),
        record("cache_megabytes_per_subject", megabytes, "MB"),
    ]
    from monai.data import DataLoader

    for workers in (0, 1, 2):
        loader = DataLoader(dataset, batch_size=2, shuffle=True, num_workers=workers)

        def epoch(loader=loader):
            for _ in loader:
                pass

        seconds = timed(epoch, repeats=2, warmup=1)
        records.append(
            record(
                "dataloader_samples_per_s",
                len(items) / seconds,
                "samples/s",
                num_workers=workers,
                batch_size=2,
            )
        )
    return records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench/results/cpu.json")
    args = parser.parse_args(argv)
    records = []
    for exp in ("exp1", "exp2"):
        for bf in (16, 32):
            with torch.device("meta"):
                params = sum(p.numel() for p in MODELS[exp](base_filters=bf).parameters())
            records.append(record("parameters", params, "count", model=exp, base_filters=bf))
            records.append(
                record(
                    "train_flops_per_sample",
                    train_flops_per_sample(exp, bf),
                    "FLOP",
                    model=exp,
                    base_filters=bf,
                    input="4x128^3",
                    note="forward+backward",
                )
            )

    with tempfile.TemporaryDirectory() as tmp:
        records += data_benchmarks(Path(tmp))

    mem = {ck: measure_in_subprocess(ck, 2, 16) for ck in (False, True)}
    records += [
        record(
            "train_step_peak_memory_mb",
            mem[ck] / 1e6,
            "MB",
            model="exp2",
            batch=2,
            base_filters=16,
            gradient_checkpointing=ck,
        )
        for ck in (False, True)
    ]
    records.append(
        record(
            "checkpointing_peak_memory_ratio",
            mem[True] / mem[False],
            "ratio",
            model="exp2",
            batch=2,
            base_filters=16,
            precision="32-true",
        )
    )

    for ck in (False, True):
        seconds, loss_seconds = train_step_seconds("exp2", 2, 16, ck)
        cfg = dict(model="exp2", batch=2, base_filters=16, precision="32-true", gradient_checkpointing=ck)
        records.append(record("train_step_seconds", seconds, "s", **cfg))
        if not ck:
            records.append(record("train_step_samples_per_s", 2 / seconds, "samples/s", **cfg))
            records.append(record("tcvae_loss_share_of_step", loss_seconds / seconds, "fraction", **cfg))
    for exp, bf in (("exp1", 16), ("exp2", 32), ("exp1", 32)):
        seconds, _ = train_step_seconds(exp, 2, bf, False)
        records.append(
            record(
                "train_step_seconds",
                seconds,
                "s",
                model=exp,
                batch=2,
                base_filters=bf,
                precision="32-true",
                gradient_checkpointing=False,
            )
        )
    # bfloat16 autocast on CPU (the demo's setting), against float32 in the same run
    from run_gpu import step_fn

    rates = {}
    for precision in ("32-true", "bf16-mixed"):
        seconds = timed(step_fn("exp2", 2, 16, precision, False, False, False, device="cpu"), repeats=3)
        rates[precision] = 2 / seconds
        records.append(
            record(
                "train_step_samples_per_s",
                rates[precision],
                "samples/s",
                model="exp2",
                batch=2,
                base_filters=16,
                precision=precision,
                gradient_checkpointing=False,
                source="bare step",
            )
        )
    records.append(
        record(
            "cpu_bf16_speedup",
            rates["bf16-mixed"] / rates["32-true"],
            "x",
            model="exp2",
            batch=2,
            base_filters=16,
            note="bf16-mixed / 32-true, same run",
        )
    )
    save_records(records, args.out)


if __name__ == "__main__":
    main()
