"""Does the real 128³ Exp2 use its code? The shipped start and the ladder study's best start, trained at
the shipped settings on one GPU for as long as the time budget allows -> bench/results/gpu_learning.json.

The CPU ladder study (bench/ladder.py) answers the question at 32³ and 64³ proxies; this run checks it
on the model itself: 128³, base_filters 32, batch 8, lr 1e-4, float16 autocast with a GradScaler,
torch.compile, β_tc warmed up from 0 over the first 20 % of the planned steps. The data are the
ladder's: 224 demo subjects (seed 0), the first 32 validate, the other 192 train, generated and
preprocessed here with every core. Each arm runs in its own process on the one GPU, both at once, with
the same seed, batch order and posterior noise. Every `--eval-every` steps it records the ladder's
measures (ladder.evaluate: training and validation MSE over the mean volume, validation z-dependence,
the KL_k spectrum and active units by KL_k > 0.1 nats, spread/σ, MIG/DCI/SAP against the known
factors) and the GradScaler's scale and skipped steps, and rewrites the JSON, so that a run stopped by
its time limit still leaves every evaluation it made. The ladder's decision rule is applied per arm.

    .venv/bin/python bench/gpu_learning.py --minutes 8 --out bench/results/gpu_learning.json   # CUDA
    .venv/bin/python bench/gpu_learning.py --smoke --out /tmp/gpu_learning.json   # the same path on CPU

On a machine with torch but not this package's other dependencies (a lent GPU machine without network),
carry their wheels in the git-ignored .wheels/ and put them on the path:

    pip download --no-deps --only-binary=:all: --python-version 3.12 -d .wheels \
        $(.venv/bin/python bench/gpu_learning.py --list-wheels)
    # there:
    pip install --no-index --no-deps --target /tmp/site .wheels/*.whl
    PYTHONPATH=/tmp/site:src python bench/gpu_learning.py --minutes 8 --out $OUT/gpu_learning.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ladder  # noqa: E402
from common import versions  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# What a machine with only torch, Lightning, numpy, pandas, scipy, scikit-learn and matplotlib lacks for
# this script (checked in such a venv), at the versions of requirements/runtime.txt.
WHEELS = ("monai", "nibabel", "nilearn", "pydantic", "pydantic_core", "annotated-types", "typing-inspection",
          "requests", "urllib3", "certifi", "idna", "charset_normalizer")  # fmt: skip


def wheel_pins() -> list[str]:
    """WHEELS as the runtime lock pins them (name==version, spelt as there)."""
    pins = {}
    for line in (REPO / "requirements" / "runtime.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            pin = line.split(";")[0].strip()
            pins[pin.split("==")[0].lower().replace("_", "-")] = pin
    return [pins[w.lower().replace("_", "-")] for w in WHEELS]


def arm_job(arm: str, steps: int, smoke: bool) -> ladder.Job:
    if smoke:  # 128³ at base 16 on 2 validation and 4 training subjects, batch 2
        return ladder.Job(arm, 128, 0, steps, batch=2, n_train=4, n_val=2, eval_every=2, base=16)
    return ladder.Job(arm, 128, 0, steps, batch=8, lr=1e-4, eval_every=500, base=32)


def train_arm(arm_name: str, args: argparse.Namespace) -> None:
    """One arm: train until `steps` or the deadline, evaluating every `eval_every` steps (and at the end)."""
    from vae_dynamics import experiments
    from vae_dynamics.losses import OBJECTIVES

    job = arm_job(arm_name, args.steps, args.smoke)
    arm = ladder.ARMS[arm_name]
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    deadline = args.deadline
    data = ladder.load_data(128, work=args.work)
    data["images"] = data["images"].to(device)  # float32: 7.5 GB for 224 subjects
    slots = data["val_slots"]
    train = data["images"][slots : slots + job.n_train]
    _, model, cfg, opt, schedule = ladder.build(job, arm, train.cpu())
    model.to(device)
    if cuda:  # AdamW's state is created lazily, on the parameters' device
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    step_model = torch.compile(model) if cuda and not args.no_compile else model
    objective = OBJECTIVES[cfg.model.variant](cfg.loss, job.n_train)
    target = experiments.get(arm.experiment).beta_target(cfg.loss)
    scaler = torch.amp.GradScaler(device.type, enabled=cuda)
    mean_volume = train.mean(0, keepdim=True)
    warm_steps = 0.2 * job.steps
    torch.manual_seed(10_000 + job.seed)  # the posterior noise of the ladder's seed 0
    rng = np.random.default_rng(job.seed)
    out_path = Path(args.out).with_name(f"{Path(args.out).stem}-{arm_name}.json")
    result: dict[str, Any] = {
        "arm": arm_name,
        "start": arm.describe(),
        **{k: getattr(job, k) for k in ("size", "base", "seed", "steps", "batch", "lr", "n_train", "n_val")},
        "precision": "16-mixed" if cuda else "32-true",
        "compiled": step_model is not model,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "rows": [],
        "skipped_steps": 0,
    }
    t0, order, skipped = time.perf_counter(), [], 0
    running: dict[str, float] = {}

    def log(step: int) -> None:
        row = {
            "step": step,
            "beta": target * min(1.0, step / warm_steps),
            "seconds": round(time.perf_counter() - t0, 1),
            "grad_scale": float(scaler.get_scale()) if cuda else None,
            "skipped_steps": skipped,
            **ladder.evaluate(model, job, data, mean_volume, full=True),
        }
        row.update({f"train_{k}": v / max(1, running.get("n", 0)) for k, v in running.items() if k != "n"})
        running.clear()
        result["rows"].append(row)
        result["skipped_steps"] = skipped
        result["decision"] = ladder.decision(result["rows"])
        result["first_use"] = ladder.first_use(result["rows"])
        if cuda:
            result["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        out_path.write_text(json.dumps(result, indent=1) + "\n")
        print(
            f"{arm_name:<20} step {step:>5}: train/mean {row['train_mse_over_mean_volume']:.3f} "
            f"val/mean {row['val_mse_over_mean_volume']:.3f} zdep {row['z_dependence']:.3f} "
            f"AU(KL) {row['active_units_kl']} MIG {row.get('mig') or 0:.3f} scale {row['grad_scale']} "
            f"skipped {skipped} [{row['seconds']:.0f} s]",
            flush=True,
        )

    log(0)
    step = 0
    for step in range(1, job.steps + 1):
        if not order:
            order = [int(i) for i in rng.permutation(job.n_train)]
        idx, order = order[: job.batch], order[job.batch :]
        x = train[idx]
        with torch.autocast(device.type, dtype=torch.float16 if cuda else torch.bfloat16):
            out = objective(x, step_model(x), beta=target * min(1.0, (step - 1) / warm_steps))
        opt.zero_grad(set_to_none=True)
        scaler.scale(out["loss"]).backward()
        before = scaler.get_scale() if cuda else None
        scaler.step(opt)
        scaler.update()
        if cuda and scaler.get_scale() < before:  # an inf/nan gradient: the step was skipped
            skipped += 1
        schedule.step()
        for k in ("recon", "kl", "mi", "tc", "dwkl"):
            if k in out:
                running[k] = running.get(k, 0.0) + float(out[k].detach())
        running["n"] = running.get("n", 0) + 1
        if not math.isfinite(float(out["loss"].detach())) and not cuda:
            result["diverged_at"] = step
            break
        if step % job.eval_every == 0 or step == job.steps:
            log(step)
        elif time.time() > deadline:
            log(step)
            break
    result["stopped_at"] = step
    result["done"] = True
    out_path.write_text(json.dumps(result, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "gpu_learning.json"))
    parser.add_argument("--minutes", type=float, default=8.0, help="time budget, data preparation included")
    parser.add_argument("--steps", type=int, default=3000, help="planned steps (β warms up over 20 %%)")
    parser.add_argument("--arms", nargs="+", help="default: exp2_shipped and the ladder's best start")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu_learning"), help="data and logs")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="6 subjects, base 16, 4 steps, on CPU")
    parser.add_argument("--list-wheels", action="store_true", help="the wheels the GPU machine needs")
    parser.add_argument("--arm", help=argparse.SUPPRESS)  # one arm's process
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.list_wheels:
        print(" ".join(wheel_pins()))
        return
    if args.arm:
        train_arm(args.arm, args)
        return
    t0 = time.time()
    deadline = t0 + 60 * args.minutes
    if args.smoke:
        args.steps = 4
        ladder.prepare_data(args.workers, sizes=(128,), work=args.work, n_subjects=6, val_slots=2)
    else:
        ladder.prepare_data(args.workers, sizes=(128,), work=args.work)
    prepared = time.time() - t0
    arms = args.arms or ["exp2_shipped", ladder.resolve_best() or "exp2_decoder_mean"]
    arms = list(dict.fromkeys(arms))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    flags = [*(["--smoke"] if args.smoke else []), *(["--no-compile"] if args.no_compile else [])]
    common = [sys.executable, __file__, "--out", args.out, "--work", str(args.work),
              "--steps", str(args.steps), "--deadline", str(deadline - 60), *flags]  # fmt: skip
    procs = [subprocess.Popen([*common, "--arm", arm], env=env) for arm in arms]
    codes = [p.wait() for p in procs]
    arm_files = [Path(args.out).with_name(f"{Path(args.out).stem}-{arm}.json") for arm in arms]
    results = [json.loads(f.read_text()) for f in arm_files if f.exists()]
    summary = {
        "what": "the real 128³ Exp2 at the shipped settings on one GPU, two starts at once",
        "versions": versions(),
        "commit": ladder._commit(),
        "data_seconds": round(prepared, 1),
        "exit_codes": codes,
        "arms": results,
    }
    Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    for f in arm_files:
        f.unlink(missing_ok=True)
    for r in results:
        print(f"{r['arm']}: {r.get('decision')} (first use at step {r.get('first_use')}), "
              f"{r['skipped_steps']} skipped steps, stopped at {r.get('stopped_at')}")  # fmt: skip


if __name__ == "__main__":
    main()
