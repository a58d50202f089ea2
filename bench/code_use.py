"""Code-use study: does Exp2's decoder use its code, and which force shrinks μ's spread?   make bench-code-use

Several hundred training steps per arm on demo subjects (128³, base_filters 16, batch 2, bf16 autocast
on CPU, AdamW through the package's own optimizer and start schedule, β warm-up in epochs), every
arm from the same initial weights (seed 0), batch order and posterior noise, Exp1 as the yardstick.
Every `--eval-every` steps it records, per arm (names as in bench/results/code_use.json):

- val_mse_over_mean_volume / train_mse_over_mean_volume: Σ(x̂ − x)² / Σ(x̄ − x)², x̂ the decoding of
  μ, x̄ the voxelwise mean of the training volumes (< 1: the code carries something subject-specific);
  the training figure is over the first `--train-probe` training subjects;
- z_dependence / train_z_dependence: MSE(x_i, decode(μ_j)) / MSE(x_i, decode(μ_i)), j ≠ i, on the
  validation / those training subjects (1 = the decoder ignores the code);
- mu_spread_rms, mu_common_rms, mean_sigma, active_units, spatial_share (models/diagnostics.py), on
  all subjects; kl_per_dim: the analytic KL(q(z_k|x) || N(0,1)) per dimension, mean over subjects;
- factor_r2: leave-one-out R² of a ridge regression (standardised μ, ridge strength by inner
  cross-validation) of each known demo factor on μ, all subjects;
- grad: the gradient of each loss term on μ, on a fixed training batch with fixed noise, split into
  the common part (rms of its batch mean) and the between-subject part (rms around it), and its
  spread force: −⟨g_i − ḡ, (μ_i − μ̄)/|μ_i − μ̄|⟩ averaged over the batch, i.e. how fast a gradient
  step along −g widens (> 0) or shrinks (< 0) the spread. Exp2: recon, mi (α·MI), tc (β·TC),
  dwkl (γ·DWKL); Exp1: recon, kl (β·KL).

    .venv/bin/python bench/code_use.py                                  # the default arms (~80 min)
    .venv/bin/python bench/code_use.py --arms exp2_shipped --steps 60   # a subset
    .venv/bin/python bench/code_use.py --doc-only                       # redraw docs from the JSON
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
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    FACTORS,
    add_study_arguments,
    demo_volumes,
    loss_terms,
    replace_between_markers,
    study_optimizer,
    training_step,
    versions,
)

from vae_dynamics import experiments, models  # noqa: E402
from vae_dynamics.config import ExperimentConfig, config_path, load_config  # noqa: E402
from vae_dynamics.io import write_text  # noqa: E402
from vae_dynamics.models.diagnostics import (  # noqa: E402
    kl_per_dimension,
    latent_summary,
    spatial_share,
    z_dependence,
)
from vae_dynamics.training.schedules import linear_warmup  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DOC, FIGURE = REPO / "docs" / "LEARNING.md", REPO / "docs" / "code_use.png"
OUT = REPO / "bench" / "results" / "code_use.json"

# The keys that decide how Exp2 starts (docs/LEARNING.md); every Exp2 arm but the shipped one sets
# all of them, so an arm's meaning does not change when the shipped defaults do.
START_KEYS = (
    "model.sbd_z_gain",
    "model.logvar_init_bias",
    "train.encoder_head_lr_scale",
    "train.encoder_head_lr_ramp_steps",
    "train.lr_warmup_steps",
)
PLAIN = dict(zip(START_KEYS, (1.0, 0.0, 1.0, 0, 0)))  # the request as written
ISSUE26 = dict(zip(START_KEYS, (0.1, -4.0, 0.01, 0, 0)))  # the start shipped before the code-use study
ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "exp1": ("exp1", {}),
    "exp2_shipped": ("exp2", {}),
    "exp2_issue26_start": ("exp2", ISSUE26),
    "exp2_plain": ("exp2", PLAIN),
    "exp2_plain_warmup": ("exp2", {**PLAIN, "train.lr_warmup_steps": 30}),
    "exp2_head_ramp": (
        "exp2",
        {**ISSUE26, "train.encoder_head_lr_ramp_steps": 150, "train.lr_warmup_steps": 30},
    ),
    "exp2_head_ramp_z_gain_1": (
        "exp2",
        {
            **ISSUE26,
            "model.sbd_z_gain": 1.0,
            "train.encoder_head_lr_ramp_steps": 150,
            "train.lr_warmup_steps": 30,
        },
    ),
    "exp2_head_ramp_no_warmup": ("exp2", {**ISSUE26, "train.encoder_head_lr_ramp_steps": 150}),
    "exp2_head_ramp_600": ("exp2", {**ISSUE26, "train.encoder_head_lr_ramp_steps": 600}),
    "exp2_head_ramp_600_z_gain_1": (
        "exp2",
        {**ISSUE26, "train.encoder_head_lr_ramp_steps": 600, "model.sbd_z_gain": 1.0},
    ),
    "exp2_small_sigma_no_ramp": ("exp2", {**ISSUE26, "model.logvar_init_bias": -10.0}),
    "exp2_sigma_0_03": ("exp2", {**ISSUE26, "model.logvar_init_bias": -7.0}),
    # The gradient split of exp2_sigma_0_03 says reconstruction pushes μ apart ~4x harder than TC pulls it
    # together, yet the spread stays below its start: does the head's permanent lr/100 hold it back?
    "exp2_sigma_0_03_head_0_03": (
        "exp2",
        {**ISSUE26, "model.logvar_init_bias": -7.0, "train.encoder_head_lr_scale": 0.03},
    ),
    "exp2_sigma_0_03_head_0_1": (
        "exp2",
        {**ISSUE26, "model.logvar_init_bias": -7.0, "train.encoder_head_lr_scale": 0.1},
    ),
    "exp2_small_sigma": (
        "exp2",
        {**ISSUE26, "model.logvar_init_bias": -10.0, "train.encoder_head_lr_ramp_steps": 150},
    ),
}
DEFAULT_ARMS = ["exp2_shipped", "exp1", "exp2_issue26_start"]


def load_study_data(work: Path, n_subjects: int, n_val: int, workers: int):
    """Demo subjects through the package's preprocessing: train, val [n,4,128³] and their known factors
    (rows in the order of `torch.cat([train, val])`)."""
    train, val, ids = demo_volumes(work, n_subjects, n_val, workers)
    factors = pd.read_csv(work / "data" / "factors.csv").set_index("subject_id")
    return train, val, factors.loc[ids, list(FACTORS)].astype(float)


def build(arm: str, base_filters: int, lr: float) -> tuple[str, torch.nn.Module, ExperimentConfig]:
    """The arm's model (seed 0) and its validated config."""
    exp, overrides = ARMS[arm]
    cfg = load_config(config_path(exp), {"model.base_filters": base_filters, "train.lr": lr, **overrides})
    torch.manual_seed(0)
    return exp, models.build(cfg), cfg


def start_settings(cfg: ExperimentConfig) -> dict[str, Any]:
    out = {}
    for key in START_KEYS:
        section, name = key.split(".")
        values = getattr(cfg, section)
        if name in type(values).model_fields:
            out[key] = getattr(values, name)
    return out


def factor_r2(mu: np.ndarray, factors: pd.DataFrame) -> dict[str, float]:
    """Leave-one-out R² of ridge(standardised μ) for each factor (ridge strength by inner CV)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import LeaveOneOut, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    out = {}
    for name in factors.columns:
        y = factors[name].to_numpy()
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-1, 5, 13)))
        pred = cross_val_predict(model, mu, y, cv=LeaveOneOut())
        out[name] = float(1.0 - np.sum((pred - y) ** 2) / np.sum((y - y.mean()) ** 2))
    return out


def gradient_split(exp: str, model, x, cfg, beta: float, n_train: int) -> dict[str, dict[str, float]]:
    """Per loss term: common / between-subject rms of ∂term/∂μ and the spread force (module docstring)."""
    state = torch.random.get_rng_state()
    torch.manual_seed(12345)  # the same posterior noise at every evaluation
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms, mu = loss_terms(exp, model, x, cfg, beta, n_train)
    torch.random.set_rng_state(state)
    names = [k for k in terms if k != "loss"]  # the objective's weighted terms
    out = {}
    centred = (mu - mu.mean(0)).detach().float()
    direction = centred / centred.norm(dim=1, keepdim=True).clamp_min(1e-12)
    for i, name in enumerate(names):
        (g,) = torch.autograd.grad(terms[name], mu, retain_graph=i < len(names) - 1)
        g = g.float()
        between = g - g.mean(0)
        out[name] = {
            "common_rms": float(g.mean(0).square().mean().sqrt()),
            "between_rms": float(between.square().mean().sqrt()),
            "spread_force": float(-(between * direction).sum(1).mean()),
        }
    model.zero_grad(set_to_none=True)
    return out


@torch.no_grad()
def _mse_and_dependence(model, x: torch.Tensor, mu: torch.Tensor, mean_volume: torch.Tensor):
    x_hat = torch.cat([model.decode(m).float() for m in mu.split(2)])
    err = (x_hat - x).square().sum()
    return float(err / (x - mean_volume).square().sum()), z_dependence(model, x, mu)


def evaluate(model, exp, cfg, data, beta: float, args) -> dict[str, Any]:
    train, val, factors, mean_volume = data
    probe = train[: args.train_probe]
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        posteriors = [model.encoder(x) for x in torch.cat([train, val]).split(2)]
        mu_all = torch.cat([m.float() for m, _ in posteriors])
        logvar_all = torch.cat([lv.float() for _, lv in posteriors])
        mu_val, mu_probe = mu_all[len(train) :], mu_all[: args.train_probe]
        val_mse, val_dep = _mse_and_dependence(model, val, mu_val, mean_volume)
        train_mse, train_dep = _mse_and_dependence(model, probe, mu_probe, mean_volume)
        share = spatial_share(model.decoder_input(mu_val))
    stats = latent_summary(mu_all, logvar_all)
    grads = gradient_split(exp, model, train[:2], cfg, beta, len(train))  # no dropout or BatchNorm
    model.train()
    return {
        "val_mse_over_mean_volume": val_mse,
        "train_mse_over_mean_volume": train_mse,
        "z_dependence": val_dep,
        "train_z_dependence": train_dep,
        "spatial_share": share,
        **{k: stats[k] for k in ("mu_spread_rms", "mu_common_rms", "mean_sigma", "active_units", "kl_total")},
        "kl_per_dim": [round(float(v), 5) for v in kl_per_dimension(mu_all, logvar_all)],
        "factor_r2": factor_r2(mu_all.numpy(), factors),
        "grad": grads,
    }


def run_arm(arm: str, data, args, sink) -> None:
    train = data[0]
    exp, model, cfg = build(arm, args.base_filters, args.lr)
    opt, schedule = study_optimizer(model, args.lr, cfg)
    target = experiments.get(exp).beta_target(cfg.loss)
    steps_per_epoch = max(1, len(train) // args.batch)
    rng = np.random.default_rng(0)  # the same batch order for every arm
    order: list[int] = []
    t0 = time.perf_counter()

    def log(step: int, beta: float) -> None:
        row = {
            "arm": arm,
            "experiment": exp,
            "step": step,
            "beta": beta,
            "settings": start_settings(cfg),
            **evaluate(model, exp, cfg, data, beta, args),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        sink(row)
        g = row["grad"]
        print(
            f"{arm:<26} step {step:>4}: val/mean {row['val_mse_over_mean_volume']:.3f} "
            f"train/mean {row['train_mse_over_mean_volume']:.3f} zdep {row['z_dependence']:.3f}/"
            f"{row['train_z_dependence']:.3f} spread {row['mu_spread_rms']:.3g} common "
            f"{row['mu_common_rms']:.3g} σ {row['mean_sigma']:.3g} AU {row['active_units']:.0f} "
            f"share {row['spatial_share']:.3g} R²(scale) {row['factor_r2']['scale']:.2f} force "
            + " ".join(f"{k} {v['spread_force']:.3g}" for k, v in g.items())
            + f" [{row['seconds']:.0f} s]",
            flush=True,
        )

    log(0, 0.0)
    torch.manual_seed(1)  # the same posterior noise for every arm
    for step in range(1, args.steps + 1):
        if not order:
            order = list(rng.permutation(len(train)))
        idx, order = order[: args.batch], order[args.batch :]
        beta = linear_warmup((step - 1) // steps_per_epoch, target, args.warmup_epochs)
        if not training_step(
            exp, model, train[idx], cfg, beta, len(train), opt, schedule, f"{arm} step {step}"
        ):
            break
        if step % args.eval_every == 0 or step == args.steps:
            log(step, beta)


# ---- report ---------------------------------------------------------------------------------------

PANELS = [
    ("val_mse_over_mean_volume", "val MSE / training-mean volume (< 1: the code helps)", "log"),
    ("z_dependence", "val z-dependence (1 = z ignored)", None),
    ("train_z_dependence", "train z-dependence", None),
    ("mu_spread_rms", "μ between-subject spread (rms)", "log"),
    ("mean_sigma", "mean posterior σ", "log"),
    ("spatial_share", "spatial share of the decoder input", "log"),
]


def figure(rows: list[dict], path: Path) -> None:
    from vae_dynamics.viz import figure_file

    with figure_file(path, nrows=2, ncols=3, figsize=(15, 8)) as (fig, axes):
        for arm in dict.fromkeys(r["arm"] for r in rows):
            rs = [r for r in rows if r["arm"] == arm]
            for ax, (key, _, _) in zip(axes.flat, PANELS):
                ax.plot([r["step"] for r in rs], [r[key] for r in rs], marker="o", ms=3, label=arm)
        for ax, (key, title, scale) in zip(axes.flat, PANELS):
            ax.set(title=title, xlabel="step")
            if scale:
                ax.set_yscale(scale)
            if key in ("val_mse_over_mean_volume", "z_dependence", "train_z_dependence"):
                ax.axhline(1.0, ls="--", lw=0.8, color="grey")
        axes.flat[0].legend(fontsize=7)
        fig.tight_layout()


def _shipped(result: dict[str, Any]) -> str | None:
    """The Exp2 arm whose start settings are today's defaults (what `exp2_shipped` would run)."""
    defaults = start_settings(load_config(config_path("exp2")))
    for r in result["rows"]:
        if r["experiment"] == "exp2" and r["settings"] == defaults:
            return r["arm"]
    return None


def markdown(result: dict[str, Any]) -> str:
    rows, shipped = result["rows"], _shipped(result)
    lines = [
        f"Setup: {result['setup']}; {result['date']}; {result['versions']}.",
        "",
        f"Shipped start (today's defaults) = arm **{shipped}**."
        if shipped
        else "No arm of this run has today's default start settings.",
        "",
        "| arm | start settings | step | val MSE / mean vol. | train MSE / mean vol. | z-dep. val | "
        "z-dep. train | μ spread | μ common | mean σ | active units | spatial share | R² scale "
        "| R² tumour x | spread force recon / KL terms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    for arm in arms:
        rs = [r for r in rows if r["arm"] == arm]
        settings = ", ".join(f"{k.split('.')[1]}={v}" for k, v in rs[0]["settings"].items()) or "Exp1 shipped"
        picks = [rs[0], *[r for r in rs if r["step"] in (90, 180)], *rs[-2:]]
        for r in dict.fromkeys(id(p) for p in picks):
            r = next(p for p in picks if id(p) == r)
            g = r["grad"]
            force = f"{g['recon']['spread_force']:.3g} / " + ", ".join(
                f"{k} {v['spread_force']:.3g}" for k, v in g.items() if k != "recon"
            )
            lines.append(
                f"| {arm} | {settings} | {r['step']} | {r['val_mse_over_mean_volume']:.3f} | "
                f"{r['train_mse_over_mean_volume']:.3f} | {r['z_dependence']:.3f} | "
                f"{r['train_z_dependence']:.3f} | "
                f"{r['mu_spread_rms']:.3g} | {r['mu_common_rms']:.3g} | {r['mean_sigma']:.3g} | "
                f"{r['active_units']:.0f} | {r['spatial_share']:.3g} | {r['factor_r2']['scale']:.2f} | "
                f"{r['factor_r2']['tumour_x_mm']:.2f} | {force} |"
            )
            settings = ""
    lines += ["", "![code-use curves](code_use.png)"]
    return "\n".join(lines)


def write_report(result: dict[str, Any]) -> None:
    figure(result["rows"], FIGURE)
    replace_between_markers(DOC, "code-use-results", markdown(result))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, choices=sorted(ARMS))
    add_study_arguments(
        parser, steps=300, eval_every=30, lr=1e-3, lr_help="AdamW lr of every arm (docs/LEARNING.md)"
    )
    parser.add_argument("--subjects", type=int, default=20, help="demo subjects (--val of them validation)")
    parser.add_argument("--val", type=int, default=4)
    parser.add_argument("--train-probe", type=int, default=4, help="training subjects of the train measures")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--append", action="store_true", help="keep the rows of other arms in --out")
    parser.add_argument("--doc-only", action="store_true", help="redraw the docs from --out and stop")
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="join these studies' rows into --out")
    args = parser.parse_args(argv)
    if args.merge:  # arms run in parallel processes (one thread each: 1.5x the throughput on 2 cores)
        parts = [json.loads(Path(p).read_text()) for p in args.merge]
        merged = {**parts[0], "rows": [r for part in parts for r in part["rows"]]}
        write_text(json.dumps(merged, indent=1) + "\n", args.out)
    if args.doc_only or args.merge:
        write_report(json.loads(Path(args.out).read_text()))
        return
    with tempfile.TemporaryDirectory() as tmp:
        train, val, factors = load_study_data(Path(tmp), args.subjects, args.val, args.workers)
    data = (train, val, factors, train.mean(dim=0, keepdim=True))
    kept = []
    if args.append and Path(args.out).exists():
        kept = [r for r in json.loads(Path(args.out).read_text())["rows"] if r["arm"] not in args.arms]
    result = {
        "setup": f"{len(train)} train / {len(val)} val demo subjects, 128³, base_filters "
        "{args.base_filters}, "
        f"batch {args.batch}, bf16 autocast (CPU), AdamW lr {args.lr}, β warm-up {args.warmup_epochs} epochs "
        f"of {len(train) // args.batch} steps, {args.steps} steps, seed 0, {torch.get_num_threads()} threads",
        "date": time.strftime("%Y-%m-%d"),
        "versions": ", ".join(f"{k} {v}" for k, v in versions().items()),
        "factors": list(FACTORS),
        "rows": kept,
    }

    def sink(row: dict[str, Any]) -> None:  # after every evaluation: an interrupted study keeps its rows
        result["rows"].append(row)
        write_text(json.dumps(result, indent=1) + "\n", args.out)

    for arm in args.arms:
        run_arm(arm, data, args, sink)
    if not args.no_doc:
        write_report(result)


if __name__ == "__main__":
    main()
