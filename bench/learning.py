"""Learning study: does Exp2's decoder learn, and does it use z?   make bench-learning

Short trainings of Exp1 and Exp2 variants on demo subjects (128³, base_filters 16, batch 2,
bf16 autocast on CPU, AdamW at the demo's lr, β warm-up over the demo's epochs), every variant from
the same initial weights (seed 0; the SBD gains are fixed buffers, so the learnt weights start equal)
and the same batch order. Every `--eval-every` steps it records, on the validation subjects:

- val_mse_over_zero: Σ(x̂ − x)² / Σx², x̂ the decoding of μ (1 = the all-zero predictor)
- val_mse_over_mean_volume: Σ(x̂ − x)² / Σ(x̄ − x)², x̄ the voxelwise mean of the training volumes
- spatial_share: within-channel spatial variance / total variance of the decoder's 8³ input (the
  output of the 1×1 projection, or of Exp1's Linear, before its GroupNorm), on the validation μ
- mu_common_rms / mu_spread_rms: rms of the mean μ over subjects / rms of its between-subject sd
- mean_sigma, active_units (between-subject variance of μ_k > 0.01, train + val subjects)
- z_dependence: mean over validation pairs of MSE(x_i, decode(μ_j)) / MSE(x_i, decode(μ_i)), j ≠ i
  (1 = the decoder ignores the code)

and the two z-independent references: one constant per channel, and the training-mean volume.
Writes bench/results/learning.json and docs/LEARNING.md (table + figure docs/learning.png).

    .venv/bin/python bench/learning.py                       # the default set, ≈ 20 min on 2 cores
    .venv/bin/python bench/learning.py --variants exp2 exp2_before --steps 30 --no-doc
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    add_study_arguments,
    demo_volumes,
    replace_between_markers,
    study_optimizer,
    training_step,
    versions,
)

from vae_dynamics import experiments, models  # noqa: E402
from vae_dynamics.config import config_path, load_config  # noqa: E402
from vae_dynamics.io import write_text  # noqa: E402
from vae_dynamics.models.diagnostics import latent_summary, spatial_share  # noqa: E402
from vae_dynamics.models.diagnostics import z_dependence as code_dependence  # noqa: E402
from vae_dynamics.training.schedules import linear_warmup  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DOC, FIGURE = REPO / "docs" / "LEARNING.md", REPO / "docs" / "learning.png"

# Variant -> (experiment, config overrides on top of the experiment's shipped config). "exp2" is Exp2
# as shipped; "exp2_before" as it was before the SBD-start fix; the "exp2_without_*" rows take one
# part of the fix away; "exp2_z_zero" multiplies z by 0 in the projection (the decoder without a code).
BEFORE = {
    "model.sbd_z_gain": 1.0,
    "model.sbd_coord_gain": 1.0,
    "model.sbd_project_norm": True,
    "model.logvar_init_bias": 0.0,
    "train.encoder_head_lr_scale": 1.0,
}
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "exp1": ("exp1", {}),
    "exp2": ("exp2", {}),
    "exp2_before": ("exp2", BEFORE),
    "exp2_z_zero": ("exp2", {"model.sbd_z_gain": 0.0}),
    "exp2_without_z_gain": ("exp2", {"model.sbd_z_gain": 1.0}),
    "exp2_without_head_lr": ("exp2", {"train.encoder_head_lr_scale": 1.0}),
    "exp2_without_logvar_bias": ("exp2", {"model.logvar_init_bias": 0.0}),
    "exp2_no_project_norm": ("exp2", {"model.sbd_project_norm": False}),
    "exp2_coord_gain_4": ("exp2", {"model.sbd_coord_gain": 4.0}),
    "exp2_before_no_project_norm": ("exp2", {**BEFORE, "model.sbd_project_norm": False}),
}
DEFAULT_SET = [
    "exp1",
    "exp2_before",
    "exp2",
    "exp2_without_z_gain",
    "exp2_without_head_lr",
    "exp2_without_logvar_bias",
    "exp2_z_zero",
]


def build(variant: str, base_filters: int) -> tuple[str, torch.nn.Module, dict[str, Any]]:
    """The variant's model (seed 0) and its validated config."""
    exp, overrides = VARIANTS[variant]
    cfg = load_config(config_path(exp), {"model.base_filters": base_filters, **overrides})
    torch.manual_seed(0)
    model = models.build(cfg)
    return exp, model, cfg


@torch.no_grad()
def evaluate(model, train: torch.Tensor, val: torch.Tensor, mean_volume: torch.Tensor) -> dict[str, float]:
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        posteriors = [model.encoder(x) for x in torch.cat([val, train]).split(2)]
        mu_all = torch.cat([m.float() for m, _ in posteriors])
        logvar_all = torch.cat([lv.float() for _, lv in posteriors])
        mu_val = mu_all[: len(val)]
        x_hat = torch.cat([model.decode(m).float() for m in mu_val.split(2)])
        share = spatial_share(model.decoder_input(mu_val))
        dependence = code_dependence(model, val, mu_val)
    model.train()
    err = (x_hat - val).square().sum()
    stats = latent_summary(mu_all, logvar_all)
    return {
        "val_mse_over_zero": float(err / val.square().sum()),
        "val_mse_over_mean_volume": float(err / (val - mean_volume).square().sum()),
        "spatial_share": share,
        "z_dependence": dependence,
        **{k: stats[k] for k in ("mu_common_rms", "mu_spread_rms", "mean_sigma", "active_units", "kl_total")},
    }


def references(train: torch.Tensor, val: torch.Tensor) -> dict[str, float]:
    """z-independent predictors, as fractions of the all-zero predictor's validation error."""
    zero = val.square().sum()
    per_channel = train.mean(dim=(0, 2, 3, 4), keepdim=True)
    mean_volume = train.mean(dim=0, keepdim=True)
    return {
        "one_constant_per_channel": float((val - per_channel).square().sum() / zero),
        "train_mean_volume": float((val - mean_volume).square().sum() / zero),
    }


def run_variant(variant: str, train, val, args) -> list[dict[str, Any]]:
    exp, model, cfg = build(variant, args.base_filters)
    opt, schedule = study_optimizer(model, args.lr, cfg)  # as in training
    mean_volume = train.mean(dim=0, keepdim=True)
    steps_per_epoch = max(1, len(train) // args.batch)
    rng = np.random.default_rng(0)  # the same batch order for every variant
    order: list[int] = []
    rows, t0 = [], time.perf_counter()

    def log(step: int) -> None:
        row = {"variant": variant, "step": step, **evaluate(model, train, val, mean_volume)}
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        print(
            f"{variant:<32} step {step:>3}: "
            + ", ".join(f"{k} {v:.3g}" for k, v in row.items() if k not in ("variant", "step")),
            flush=True,
        )

    log(0)
    torch.manual_seed(1)  # the same posterior noise for every variant
    for step in range(1, args.steps + 1):
        if not order:
            order = list(rng.permutation(len(train)))
        idx, order = order[: args.batch], order[args.batch :]
        epoch = (step - 1) // steps_per_epoch
        beta = linear_warmup(epoch, experiments.get(exp).beta_target(cfg.loss), args.warmup_epochs)
        if not training_step(
            exp, model, train[idx], cfg, beta, len(train), opt, schedule, f"{variant} step {step}"
        ):
            break
        if step % args.eval_every == 0 or step == args.steps:
            log(step)
    return rows


def figure(rows: list[dict], refs: dict[str, float], path: Path) -> None:
    from vae_dynamics.viz import figure_file

    with figure_file(path, nrows=1, ncols=3, figsize=(15, 4.5)) as (fig, axes):
        _draw(axes, rows, refs)
        fig.tight_layout()


def _draw(axes, rows: list[dict], refs: dict[str, float]) -> None:
    for variant in dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == variant]
        steps = [r["step"] for r in rs]
        for ax, key in zip(axes, ["val_mse_over_zero", "spatial_share", "z_dependence"]):
            ax.plot(steps, [r[key] for r in rs], marker="o", label=variant)
    for name, value in refs.items():
        axes[0].axhline(value, ls="--", lw=0.8, color="grey")
        axes[0].text(0, value, name.replace("_", " "), fontsize=7, va="bottom", color="grey")
    axes[0].set(title="validation MSE / all-zero predictor", xlabel="step", ylim=(0, 1.2))
    axes[1].set(title="spatial share of the decoder's 8³ input", xlabel="step", yscale="log")
    axes[2].set(title="z-dependence (1 = z ignored)", xlabel="step")
    axes[0].legend(fontsize=7)


def markdown(result: dict[str, Any]) -> str:
    rows, refs, setup = result["rows"], result["references"], result["setup"]
    last = {}
    for r in rows:
        last[r["variant"]] = r
    lines = [
        f"Setup: {setup}; {result['date']}; {result['versions']}.",
        "",
        f"z-independent references: one constant per channel **{refs['one_constant_per_channel']:.3f}**, "
        f"training-mean volume **{refs['train_mean_volume']:.3f}** (validation MSE / all-zero predictor).",
        "",
        "| variant | model overrides | step | val MSE / zero | / mean volume | spatial share | z-dependence "
        "| active units | μ common rms | μ spread rms | mean σ | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, r in last.items():
        overrides = ", ".join(f"{k}={v}" for k, v in VARIANTS[variant][1].items()) or "shipped"
        lines.append(
            f"| {variant} | {overrides} | {r['step']} | {r['val_mse_over_zero']:.3f} | "
            f"{r['val_mse_over_mean_volume']:.3f} | {r['spatial_share']:.4f} | {r['z_dependence']:.3f} | "
            f"{r['active_units']:.0f} | {r['mu_common_rms']:.3g} | {r['mu_spread_rms']:.3g} | "
            f"{r['mean_sigma']:.3g} | {r['seconds']:.0f} |"
        )
    lines += ["", "![learning curves](learning.png)"]
    return "\n".join(lines)


def update_doc(text: str, doc: Path = DOC) -> None:
    replace_between_markers(doc, "learning-results", text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", nargs="+", default=DEFAULT_SET, choices=sorted(VARIANTS))
    add_study_arguments(parser, steps=45, eval_every=15, lr=3e-3, lr_help="the demo's lr (config/demo.yaml)")
    parser.add_argument("--subjects", type=int, default=8, help="demo subjects (2 of them validation)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "learning.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        train, val, _ = demo_volumes(Path(tmp), args.subjects, 2, args.workers)
    refs = references(train, val)
    print(f"references: {refs}", flush=True)
    rows = []
    for variant in args.variants:
        rows += run_variant(variant, train, val, args)
        result = {
            "setup": f"{len(train)} train / {len(val)} val demo subjects, 128³, base_filters "
            "{args.base_filters}, "
            f"batch {args.batch}, bf16 autocast (CPU), AdamW lr {args.lr}, β warm-up {args.warmup_epochs} "
            f"epochs of {len(train) // args.batch} steps, {args.steps} steps, seed 0",
            "date": time.strftime("%Y-%m-%d"),
            "versions": ", ".join(f"{k} {v}" for k, v in versions().items()),
            "references": refs,
            "rows": rows,
        }
        write_text(
            json.dumps(result, indent=2) + "\n", args.out
        )  # after every variant: partial runs keep data
    if not args.no_doc:
        figure(rows, refs, FIGURE)
        update_doc(markdown(result))


if __name__ == "__main__":
    main()
