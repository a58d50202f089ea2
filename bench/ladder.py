"""Resolution ladder: does Exp2 use its code?   make bench-ladder

The real model is 128³ and one step of it takes ~29 s on one CPU core, so this study trains proxies of
it at 32³ and 64³ for thousands of steps, and says what transfers (docs/LEARNING.md).

The proxies are the package's own models, cut down in bench code only (`ladder_model`):
- the encoder gets a stride-1 stem and keeps only its last 2 (32³) or 3 (64³) stride-2 stages, so that
  it still ends at 8³ with base·8 channels and reads 32·8³ = 16,384 head features into Linear(·, 2·z);
- the decoder keeps its first 2 or 3 upsampling stages after the 8³ broadcast (projection, gains and
  GroupNorm unchanged) and ends in a new 3³ Conv3d to the 4 channels;
- the summed MSE is multiplied by (128/s)³, so that reconstruction, KL and TC weigh what they weigh at
  128³; the images are the package's preprocessing of the demo subjects, average-pooled to s³.

Every arm of one seed starts from the same weights (where its start allows), sees the same batch order
and the same posterior noise. β (β_tc, or Exp1's β) warms up from 0 over the first 20 % of the steps.

Decision rule (fixed before the runs; `decision`):
- *uses its code*: training MSE / mean volume < 0.9 and validation z-dependence >= 1.2 at the last two
  evaluations, and z-dependence not falling between them (by more than 0.02);
- *collapsed*: training MSE / mean volume < 1 and validation z-dependence < 1.05 at the last evaluation;
- anything else is *undecided*. An arm uses its code when every seed does.

The study is a queue of jobs (`JOBS`, most important first). Each job checkpoints under bench/.ladder/
(git-ignored) at every evaluation and writes its rows to bench/results/ladder/<job>.json (tracked) as it
goes, so an interrupted study continues where it stopped; a job whose checkpoint is gone restarts.
Stopping `run` (Ctrl-C, or `kill` of its pid) stops its workers with it.

    .venv/bin/python bench/ladder.py run                 # one single-threaded worker per core
    .venv/bin/python bench/ladder.py run --only 'transfer-*' --procs 1
    .venv/bin/python bench/ladder.py status              # what is done, running, left
    .venv/bin/python bench/ladder.py report              # bench/results/ladder.json, docs/LEARNING.md
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FACTORS, versions  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / ".ladder"  # data cache, checkpoints, locks (git-ignored)
RESULTS = REPO / "bench" / "results" / "ladder"  # one JSON per job (tracked)
SUMMARY = REPO / "bench" / "results" / "ladder.json"
DOC, FIGURE = REPO / "docs" / "LEARNING.md", REPO / "docs" / "ladder.png"

N_SUBJECTS, N_VAL = 224, 32  # demo subjects 0..31 validate, 32..223 train

# ---- arms: how a run starts ----------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """An arm: its experiment, package config keys, and the start knobs the study tries."""

    experiment: str
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted package config keys
    head_bias_lr_scale: float | None = None  # the encoder head's bias in its own group at lr · this
    z_init_scale: float = 1.0  # the SBD projection's z columns initialised × this
    decoder_mean_bias: bool = False  # the decoder's final conv bias at each channel's training mean
    lr_warmup_frac: float = 0.0  # linear lr warm-up over this share of the steps
    clip_to_first: float | None = None  # clip the gradient norm to this × the first step's norm

    def describe(self) -> str:
        parts = [f"{k.split('.')[-1]}={v}" for k, v in self.overrides.items()]
        if self.head_bias_lr_scale is not None:
            parts.append(f"head bias lr×{self.head_bias_lr_scale:g}")
        if self.z_init_scale != 1.0:
            parts.append(f"z init ×{self.z_init_scale:g}")
        if self.decoder_mean_bias:
            parts.append("decoder bias = mean")
        if self.lr_warmup_frac:
            parts.append(f"lr warm-up {self.lr_warmup_frac:.0%}")
        if self.clip_to_first is not None:
            parts.append(f"clip {self.clip_to_first:g}× first norm")
        return ", ".join(parts) or "shipped"


Z_FULL_RATE = {"model.sbd_z_gain": 1.0}
ARMS: dict[str, Start] = {
    "exp1": Start("exp1"),
    "exp2_shipped": Start("exp2"),
    # σ and the shared shift can move: the head's biases at the full lr (100× the head weights')
    "exp2_head_bias": Start("exp2", head_bias_lr_scale=1.0),
    # z columns small at the start (× 0.1) but learning at the full rate (gain 1)
    "exp2_z_full_rate": Start("exp2", Z_FULL_RATE, z_init_scale=0.1),
    # the decoder starts at the average head's per-channel intensity
    "exp2_decoder_mean": Start("exp2", decoder_mean_bias=True),
    # lr warm-up over 5 % of the steps with the gradient norm clipped
    "exp2_warmup_clip": Start("exp2", lr_warmup_frac=0.05, clip_to_first=1.0),
    # all of the above that stay inside the contract, together
    "exp2_combined": Start(
        "exp2", Z_FULL_RATE, head_bias_lr_scale=1.0, z_init_scale=0.1, decoder_mean_bias=True
    ),
}
NEW_STARTS = ("exp2_head_bias", "exp2_z_full_rate", "exp2_decoder_mean", "exp2_warmup_clip", "exp2_combined")

# ---- jobs ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    arm: str  # a key of ARMS, or "best": the new start that met the rule soonest at 32³, seed 0
    size: int
    seed: int
    steps: int
    batch: int = 8
    lr: float = 1e-4
    n_train: int = N_SUBJECTS - N_VAL
    n_val: int = N_VAL
    eval_every: int = 250
    warmup: str = "steps"  # "steps": β over 20 % of the steps; "epochs8": over 8 epochs (the old study)
    kind: str = "arm"
    base: int = 16  # model.base_filters (the GPU run, bench/gpu_learning.py: the shipped 32)

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.arm}-{self.size}-s{self.seed}"


def _transfer(arm: str, size: int, seed: int) -> Job:
    """The committed 128³ code-use setting (16 train / 4 val, batch 2, lr 1e-3, 300 steps)."""
    return Job(arm, size, seed, 300, batch=2, lr=1e-3, n_train=16, n_val=4, eval_every=30, warmup="epochs8",
               kind="transfer")  # fmt: skip


JOBS: list[Job] = [
    *[_transfer(arm, 32, seed) for seed in (0, 1) for arm in ("exp2_shipped", "exp1")],
    *[Job(arm, 32, 0, 3000) for arm in ("exp2_shipped", "exp1", *NEW_STARTS)],
    # the transfer check completed before the long seed repeats (four jobs of about 10 minutes)
    *[_transfer(arm, 64, seed) for seed in (0, 1) for arm in ("exp2_shipped", "exp1")],
    # the shipping decision first (the shipped and the best start), then Exp1 beside them
    *[Job(arm, 32, seed, 3000) for seed in (1, 2) for arm in ("exp2_shipped", "best", "exp1")],
    # 64³: the shipped start, then Exp1 (the rung whose 300-step Exp1 is nearest the real model's, so the
    # one for the two models side by side), then the best start
    *[Job(arm, 64, 0, 1000) for arm in ("exp2_shipped", "exp1", "best")],
]


# ---- data ----------------------------------------------------------------------------------------


def _preprocess(row: dict[str, str], sizes: tuple[int, ...] = (32, 64)) -> dict[str, np.ndarray]:
    from vae_dynamics.config import config_path, load_config
    from vae_dynamics.data.transforms import transforms_from_config

    data_cfg = load_config(config_path("exp2")).data
    image = transforms_from_config(data_cfg)({k: row[k] for k in (*data_cfg.modalities, "seg")})["image"]
    x = torch.as_tensor(image).float()[None]
    return {str(s): nn.functional.avg_pool3d(x, 128 // s)[0].half().numpy() for s in sizes}


def prepare_data(
    workers: int,
    sizes: tuple[int, ...] = (32, 64),
    work: Path = WORK,
    n_subjects: int = N_SUBJECTS,
    val_slots: int = N_VAL,
) -> None:
    """Generate, index and preprocess the demo subjects once; keep them average-pooled to each s³ in
    `sizes` (128: as preprocessed), in work/data_<s>.pt. The first `val_slots` subjects validate."""
    if all((work / f"data_{s}.pt").exists() for s in sizes):
        return
    import functools
    import tempfile

    from vae_dynamics.data.demo import generate
    from vae_dynamics.data.index import index_subjects
    from vae_dynamics.parallel import map_in_processes

    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        factors = generate(Path(tmp) / "data", n_subjects, seed=0, workers=workers)
        subjects, _ = index_subjects(Path(tmp) / "data", Path(tmp) / "index", workers=workers, progress=False)
        rows = subjects.sort_values("subject_id").to_dict("records")
        pool = functools.partial(_preprocess, sizes=sizes)
        pooled = map_in_processes(pool, rows, workers=workers, progress=True, desc="preprocess")
    ids = [r["subject_id"] for r in rows]
    table = factors.set_index("subject_id").loc[ids, list(FACTORS)].astype(float)
    for s in sizes:
        images = torch.stack([torch.from_numpy(p[str(s)]) for p in pooled])
        tmp_path = work / f"data_{s}.pt.tmp"
        blob = {"images": images, "ids": ids, "factors": table.to_dict("list"), "val_slots": val_slots}
        torch.save(blob, tmp_path)
        os.replace(tmp_path, work / f"data_{s}.pt")
    print(f"data: {len(ids)} subjects in {time.perf_counter() - t0:.0f} s", flush=True)


def load_data(size: int, work: Path = WORK) -> dict[str, Any]:
    blob = torch.load(work / f"data_{size}.pt", weights_only=True)
    return {
        "images": blob["images"].float(),
        "ids": blob["ids"],
        "factors": blob["factors"],
        "val_slots": blob.get("val_slots", N_VAL),
    }


# ---- model ---------------------------------------------------------------------------------------


def ladder_model(experiment: str, cfg, size: int) -> nn.Module:
    """The package's model of `experiment` for s³ inputs (module docstring); 128 is the model itself."""
    from vae_dynamics import models
    from vae_dynamics.models.components.blocks import group_norm
    from vae_dynamics.models.components.decoder import decoder_widths

    model = models.build(cfg)
    if size == 128:
        return model
    drop = {64: 1, 32: 2}[size]  # stride-2 stages removed each way
    base = cfg.model.base_filters
    stem_width = base * (1, 2)[drop - 1]  # the input width of the first stage kept
    enc, dec = model.encoder, model.decoder
    enc.stem = nn.Sequential(
        nn.Conv3d(cfg.model.input_channels, stem_width, 3, padding=1, bias=False),
        group_norm(stem_width),
        nn.SiLU(),
    )
    enc.blocks = nn.ModuleList(list(enc.blocks)[2 * drop :])
    dec.stages = nn.ModuleList(list(dec.stages)[: 4 - drop])
    dec.final = nn.Conv3d(decoder_widths(base)[4 - drop], cfg.model.input_channels, 3, padding=1)
    return model


def build(job: Job, arm: Start, train_images: torch.Tensor):
    """(experiment record, model, config, optimizer, lr schedule) of a job, seeded."""
    from vae_dynamics import experiments
    from vae_dynamics.config import config_path, load_config
    from vae_dynamics.training.lit_modules import param_groups
    from vae_dynamics.training.schedules import lr_factors

    cfg = load_config(
        config_path(arm.experiment),
        {
            "model.base_filters": job.base,
            "train.lr": job.lr,
            "train.gradient_checkpointing": False,
            **arm.overrides,
        },
    )
    torch.manual_seed(job.seed)
    model = ladder_model(arm.experiment, cfg, job.size)
    if arm.z_init_scale != 1.0:
        with torch.no_grad():
            model.project[0].weight[:, : cfg.model.z_dim] *= arm.z_init_scale
    if arm.decoder_mean_bias:
        with torch.no_grad():
            model.decoder.final.bias.copy_(train_images.mean(dim=(0, 2, 3, 4)))
    warm = max(cfg.train.lr_warmup_steps, round(arm.lr_warmup_frac * job.steps))
    train = cfg.train.model_copy(update={"lr_warmup_steps": warm})
    groups = param_groups(model, job.lr)
    if arm.head_bias_lr_scale is not None:
        bias = model.encoder.head.bias
        groups[1]["params"] = [p for p in groups[1]["params"] if p is not bias]
        groups.append({"params": [bias], "lr": job.lr * arm.head_bias_lr_scale})
    opt = torch.optim.AdamW(groups)

    def factor(group: int):
        def f(step: int) -> float:
            w, head = lr_factors(step, train)
            return (w, head, w)[group]  # the head bias (a third group) has its own base lr

        return f

    schedule = torch.optim.lr_scheduler.LambdaLR(opt, [factor(i) for i in range(len(groups))])
    return experiments.get(arm.experiment), model, cfg, opt, schedule


# ---- measures ------------------------------------------------------------------------------------


def factor_r2(mu: np.ndarray, factors: dict[str, list[float]]) -> dict[str, float]:
    """Leave-one-out R² of ridge(standardised μ) per factor (ridge strength by inner CV)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import LeaveOneOut, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    out = {}
    for name, values in factors.items():
        y = np.asarray(values)
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-1, 5, 13)))
        pred = cross_val_predict(model, mu, y, cv=LeaveOneOut())
        out[name] = round(float(1.0 - np.sum((pred - y) ** 2) / np.sum((y - y.mean()) ** 2)), 4)
    return out


@torch.no_grad()
def evaluate(model, job: Job, data: dict[str, Any], mean_volume: torch.Tensor, full: bool) -> dict[str, Any]:
    """The study's measures (README of the study in docs/LEARNING.md); `full` adds MIG/DCI/SAP and R²."""
    import pandas as pd

    from vae_dynamics.evaluation.metrics import compute_metrics
    from vae_dynamics.models.diagnostics import kl_per_dimension, z_dependence

    images, n_val, n_train, slots = data["images"], job.n_val, job.n_train, data["val_slots"]
    subjects = torch.cat([images[:n_val], images[slots : slots + n_train]])  # val first, then train
    feats: list[torch.Tensor] = []
    hook = model.encoder.head.register_forward_hook(lambda m, i, o: feats.append(i[0].float()))
    model.eval()
    device = subjects.device.type  # CPU: bfloat16 autocast, as the study trains; CUDA: float16
    with torch.autocast(device, dtype=torch.bfloat16 if device == "cpu" else torch.float16):
        post = [model.encoder(x) for x in subjects.split(16)]
        hook.remove()
        mu = torch.cat([m.float() for m, _ in post])
        logvar = torch.cat([v.float() for _, v in post])
        probe = min(32, n_train)
        val_x, train_x = subjects[:n_val], subjects[n_val : n_val + probe]
        val_mu, train_mu = mu[:n_val], mu[n_val : n_val + probe]

        def mse_ratio(x: torch.Tensor, m: torch.Tensor) -> float:
            x_hat = torch.cat([model.decode(c).float() for c in m.split(16)])
            return float((x_hat - x).square().sum() / (x - mean_volume).square().sum())

        row: dict[str, Any] = {
            "val_mse_over_mean_volume": mse_ratio(val_x, val_mu),
            "train_mse_over_mean_volume": mse_ratio(train_x, train_mu),
            "z_dependence": z_dependence(model, val_x, val_mu),
            "train_z_dependence": z_dependence(model, train_x, train_mu),
        }
    model.train()
    h, mu, logvar = torch.cat(feats).cpu(), mu.cpu(), logvar.cpu()
    sigma2 = logvar.exp()
    kl = kl_per_dimension(mu, logvar)
    snr = mu.var(0, unbiased=False) / sigma2.mean(0)
    spread = float(mu.var(0, unbiased=False).mean().sqrt())
    row.update(
        mu_spread_rms=spread,
        mu_common_rms=float(mu.mean(0).square().mean().sqrt()),
        mean_sigma=float(sigma2.sqrt().mean()),
        spread_over_sigma=spread / float(sigma2.sqrt().mean()),
        active_units_kl=int((kl > 0.1).sum()),
        active_units_var=int((mu.var(0, unbiased=False) > 0.01).sum()),
        kl_total=float(kl.sum()),
        kl_per_dim=[round(float(v), 4) for v in torch.sort(kl, descending=True).values],
        snr_per_dim=[round(float(v), 4) for v in torch.sort(snr, descending=True).values],
        snr_above_1=int((snr > 1).sum()),
        head_between_share=float(h.var(0, unbiased=False).sum() / h.square().mean(0).sum().clamp_min(1e-12)),
    )
    if full:
        ids = data["ids"][:n_val] + data["ids"][slots : slots + n_train]
        rows = list(range(n_val)) + list(range(slots, slots + n_train))
        factors = {k: [v[i] for i in rows] for k, v in data["factors"].items()}
        latents = pd.DataFrame(mu.numpy(), columns=[f"mu_{k}" for k in range(mu.shape[1])])
        latents.insert(0, "subject_id", ids)
        latents["split"] = ["val"] * n_val + ["train"] * n_train
        table = pd.DataFrame({"subject_id": ids, **factors})
        m = compute_metrics(latents, table, list(FACTORS))
        row.update(
            mig=m["mig"],
            sap=m["sap"],
            dci_disentanglement=m["dci_disentanglement"],
            dci_informativeness=m["dci_informativeness"],
            factor_r2=factor_r2(mu.numpy(), factors),
        )
    return row


# ---- decision ------------------------------------------------------------------------------------


def decision(rows: list[dict[str, Any]]) -> str:
    """uses / collapsed / undecided for one run's evaluations (module docstring)."""
    if len(rows) < 2:
        return "undecided"
    a, b = rows[-2], rows[-1]
    uses = all(r["train_mse_over_mean_volume"] < 0.9 and r["z_dependence"] >= 1.2 for r in (a, b))
    if uses and b["z_dependence"] >= a["z_dependence"] - 0.02:
        return "uses"
    if b["train_mse_over_mean_volume"] < 1.0 and b["z_dependence"] < 1.05:
        return "collapsed"
    return "undecided"


def first_use(rows: list[dict[str, Any]]) -> int | None:
    """The first step from which the rule holds at every later evaluation (None: never)."""
    for i in range(len(rows) - 1):
        if decision(rows[: i + 2]) == "uses" and all(
            decision(rows[: j + 2]) == "uses" for j in range(i, len(rows) - 1)
        ):
            return int(rows[i]["step"])
    return None


def thresholds_held_from(rows: list[dict[str, Any]]) -> int | None:
    """The first step from which both thresholds of the rule (training MSE / mean volume < 0.9,
    z-dependence ≥ 1.2) hold at every later evaluation, the trend clause left out: not the rule, a
    reading of how much its first step owes to one evaluation's dip (None: they do not hold at the end)."""
    held = None
    for r in rows:
        ok = r["train_mse_over_mean_volume"] < 0.9 and r["z_dependence"] >= 1.2
        held = (held if held is not None else int(r["step"])) if ok else None
    return held


# ---- one job -------------------------------------------------------------------------------------


def result_path(job: Job) -> Path:
    return RESULTS / f"{job.name}.json"


def read_result(job: Job) -> dict[str, Any] | None:
    path = result_path(job)
    return json.loads(path.read_text()) if path.exists() else None


def is_done(job: Job) -> bool:
    r = read_result(job)
    return bool(r and r.get("done"))


def resolve_best() -> str | None:
    """The new start whose seed-0 32³ run met the rule soonest (then: the highest last z-dependence);
    None while any of them is unfinished."""
    results = [read_result(Job(arm, 32, 0, 3000)) for arm in NEW_STARTS]
    if not all(r and r.get("done") for r in results):
        return None

    def key(r: dict[str, Any]) -> tuple[float, float]:
        step = first_use(r["rows"])
        return (step if step is not None else math.inf, -r["rows"][-1]["z_dependence"])

    return min(results, key=key)["arm"]  # type: ignore[arg-type]


def run_job(job: Job) -> None:
    from vae_dynamics.io import write_text
    from vae_dynamics.losses import OBJECTIVES
    from vae_dynamics.training.schedules import linear_warmup

    arm_name = resolve_best() if job.arm == "best" else job.arm
    assert arm_name is not None
    arm = ARMS[arm_name]
    torch.set_num_threads(1)
    data = load_data(job.size)
    images = data["images"]
    train = images[data["val_slots"] : data["val_slots"] + job.n_train]
    experiment, model, cfg, opt, schedule = build(job, arm, train)
    objective = OBJECTIVES[cfg.model.variant](cfg.loss, job.n_train)
    target = experiment.beta_target(cfg.loss)
    weight = (128 / job.size) ** 3
    mean_volume = train.mean(0, keepdim=True)
    ckpt = WORK / "ckpt" / f"{job.name}.pt"
    result = read_result(job)
    state: dict[str, Any] = {
        "step": 0,
        "rng": np.random.default_rng(job.seed).bit_generator.state,
        "order": [],
    }
    state["torch_rng"] = torch.random.get_rng_state()
    if result and ckpt.exists():
        saved = torch.load(ckpt, weights_only=True)
        base = [g["initial_lr"] for g in opt.param_groups]  # each group's base lr, as this code builds it
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        schedule.load_state_dict(saved["schedule"])
        # Checkpoints written before the head's lr scale moved into lr_factors hold a scaled base lr for
        # the head: the saved current lrs are right, the base lrs of the next steps are this code's.
        for group, lr in zip(opt.param_groups, base):
            group["initial_lr"] = lr
        schedule.base_lrs = base
        state = saved["state"]
        result["rows"] = [r for r in result["rows"] if r["step"] <= state["step"]]
        print(f"{job.name}: resumed at step {state['step']}", flush=True)
    else:
        torch.manual_seed(10_000 + job.seed)  # the same posterior noise for every arm of a seed
        state["torch_rng"] = torch.random.get_rng_state()
        result = {
            "job": job.name,
            "arm": arm_name,
            "start": arm.describe(),
            "experiment": arm.experiment,
            **{
                k: getattr(job, k)
                for k in ("size", "seed", "steps", "batch", "lr", "n_train", "n_val", "kind")
            },
            "recon_weight": weight,
            "versions": versions(),
            "commit": _commit(),
            "rows": [],
            "seconds": 0.0,
            "done": False,
        }
    rng = np.random.default_rng()
    rng.bit_generator.state = state["rng"]
    torch.random.set_rng_state(state["torch_rng"])
    order: list[int] = list(state["order"])
    steps_per_epoch = max(1, job.n_train // job.batch)
    warm_steps = 0.2 * job.steps if job.warmup == "steps" else 8 * steps_per_epoch
    t0 = time.perf_counter() - result["seconds"]
    running: dict[str, float] = {}

    def beta_at(step: int) -> float:
        if job.warmup == "steps":
            return target * min(1.0, step / warm_steps)
        return linear_warmup(step // steps_per_epoch, target, 8)

    def log(step: int) -> None:
        full = job.kind == "arm" or step == job.steps
        row = {"step": step, "beta": beta_at(step), **evaluate(model, job, data, mean_volume, full)}
        row.update({f"train_{k}": v / max(1, running.get("n", 0)) for k, v in running.items() if k != "n"})
        running.clear()
        result["rows"].append(row)
        result["seconds"] = round(time.perf_counter() - t0, 1)
        result["done"] = step >= job.steps
        state.update(
            step=step, rng=rng.bit_generator.state, order=order, torch_rng=torch.random.get_rng_state()
        )
        if not result["done"]:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            torch.save(
                {
                    "model": model.state_dict(),
                    "opt": opt.state_dict(),
                    "schedule": schedule.state_dict(),
                    "state": state,
                },
                ckpt.with_suffix(".tmp"),
            )
            os.replace(ckpt.with_suffix(".tmp"), ckpt)
        write_text(json.dumps(result, indent=1) + "\n", result_path(job))
        if result["done"]:
            ckpt.unlink(missing_ok=True)
        print(
            f"{job.name:<34} step {step:>5}: train/mean {row['train_mse_over_mean_volume']:.3f} "
            f"val/mean {row['val_mse_over_mean_volume']:.3f} zdep {row['z_dependence']:.3f} "
            f"AU(KL) {row['active_units_kl']} σ {row['mean_sigma']:.3g} "
            f"spread/σ {row['spread_over_sigma']:.3g} "
            f"MIG {row.get('mig') or 0:.3f} [{result['seconds']:.0f} s]",
            flush=True,
        )

    if not result["rows"]:  # a run resumed from its step-0 checkpoint has evaluated step 0 already
        log(0)
    first_norm = state.get("first_norm")
    for step in range(state["step"] + 1, job.steps + 1):
        if not order:
            order = [int(i) for i in rng.permutation(job.n_train)]
        idx, order = order[: job.batch], order[job.batch :]
        x = train[idx]
        beta = beta_at(step - 1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = objective(x, model(x), beta=beta)
        loss = out["loss"] + (weight - 1.0) * out["recon"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if arm.clip_to_first is not None:
            norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), first_norm or math.inf))
            if first_norm is None:
                first_norm = state["first_norm"] = norm * arm.clip_to_first
        if not math.isfinite(float(loss.detach())):
            result["diverged_at"] = step
            break
        opt.step()
        schedule.step()
        for k in ("recon", "kl", "mi", "tc", "dwkl"):
            if k in out:
                running[k] = running.get(k, 0.0) + float(out[k].detach()) * (weight if k == "recon" else 1.0)
        running["n"] = running.get("n", 0) + 1
        if step % job.eval_every == 0 or step == job.steps:
            log(step)
    if "diverged_at" in result:
        result["done"] = True
        write_text(json.dumps(result, indent=1) + "\n", result_path(job))
        ckpt.unlink(missing_ok=True)


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"


# ---- the queue -----------------------------------------------------------------------------------


def _claim(job: Job) -> bool:
    """A lock file per job (its holder's pid); a dead holder's lock is taken over."""
    lock = WORK / "locks" / f"{job.name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            os.kill(int(lock.read_text() or 0), 0)
            return False
        except (ProcessLookupError, ValueError):
            lock.unlink(missing_ok=True)
            return _claim(job)
        except PermissionError:
            return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def _release(job: Job) -> None:
    (WORK / "locks" / f"{job.name}.lock").unlink(missing_ok=True)


def selected(patterns: list[str] | None) -> list[Job]:
    return [j for j in JOBS if not patterns or any(fnmatch.fnmatch(j.name, p) for p in patterns)]


def worker(patterns: list[str] | None) -> None:
    while True:
        for job in selected(patterns):
            if is_done(job) or (job.arm == "best" and resolve_best() is None) or not _claim(job):
                continue
            try:
                run_job(job)
            finally:
                _release(job)
            break  # back to the top: the most important job left
        else:
            return


def status() -> None:
    for job in JOBS:
        r = read_result(job)
        lock = WORK / "locks" / f"{job.name}.lock"
        state = (
            "done" if r and r.get("done") else ("running" if lock.exists() else ("partial" if r else "todo"))
        )
        last = r["rows"][-1]["step"] if r and r["rows"] else 0
        verdict = decision(r["rows"]) if r and r.get("done") and job.kind == "arm" else ""
        arm = r["arm"] if r else job.arm
        print(f"{job.name:<36} {arm:<18} {state:<8} step {last:>5}/{job.steps} {verdict}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="prepare the data, then work through the queue")
    run.add_argument("--procs", type=int, default=os.cpu_count() or 1, help="single-threaded workers")
    run.add_argument("--only", nargs="+", metavar="GLOB", help="only the jobs whose names match")
    one = sub.add_parser("worker", help=argparse.SUPPRESS)
    one.add_argument("--only", nargs="+")
    sub.add_parser("status", help="what is done, running and left")
    sub.add_parser("report", help="bench/results/ladder.json and docs/LEARNING.md from the job files")
    args = parser.parse_args(argv)
    if args.command == "run":
        prepare_data(workers=args.procs)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        cmd = [sys.executable, __file__, "worker", *(["--only", *args.only] if args.only else [])]
        procs = [subprocess.Popen(cmd, env=env) for _ in range(args.procs)]
        # Stopping the study stops its workers; each continues from its last evaluation next time.
        signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
        try:
            codes = [p.wait() for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
        if any(codes):
            raise SystemExit(f"a worker failed: exit codes {codes}")
    elif args.command == "worker":
        worker(args.only)
    elif args.command == "status":
        status()
    else:
        from ladder_report import report

        report()


if __name__ == "__main__":
    main()
