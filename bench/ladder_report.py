"""The ladder study's summary: bench/results/ladder.json, docs/ladder.png and its section of docs/LEARNING.md.

.venv/bin/python bench/ladder.py report
"""

from __future__ import annotations

import json
import time
from typing import Any

from common import replace_between_markers
from ladder import DOC, FIGURE, JOBS, REPO, SUMMARY, decision, first_use, read_result, thresholds_held_from

from vae_dynamics.io import write_text

CODE_USE = REPO / "bench" / "results" / "code_use.json"
TRANSFER_FIGURE = REPO / "docs" / "ladder_transfer.png"


def _runs() -> list[dict[str, Any]]:
    return [r for r in (read_result(j) for j in JOBS) if r and r["rows"]]


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One line per run (its last evaluation and decision) and the decision per arm and size."""
    lines = []
    for r in runs:
        last = r["rows"][-1]
        lines.append(
            {
                "job": r["job"],
                "kind": r["kind"],
                "arm": r["arm"],
                "start": r["start"],
                "size": r["size"],
                "seed": r["seed"],
                "steps_done": last["step"],
                "steps": r["steps"],
                "done": r["done"],
                "decision": decision(r["rows"]) if r["done"] else "running",
                "first_use_step": first_use(r["rows"]),
                "thresholds_held_from": thresholds_held_from(r["rows"]),
                "seconds": r["seconds"],
                **{
                    k: last.get(k)
                    for k in (
                        "train_mse_over_mean_volume",
                        "val_mse_over_mean_volume",
                        "z_dependence",
                        "active_units_kl",
                        "snr_above_1",
                        "mean_sigma",
                        "spread_over_sigma",
                        "head_between_share",
                        "mig",
                        "sap",
                        "dci_disentanglement",
                    )
                },
            }
        )
    arms: dict[str, dict[str, Any]] = {}
    for line in lines:
        if line["kind"] != "arm":
            continue
        key = f"{line['arm']}@{line['size']}"
        entry = arms.setdefault(key, {"arm": line["arm"], "size": line["size"], "seeds": {}})
        entry["seeds"][line["seed"]] = line["decision"]
    for entry in arms.values():
        verdicts = set(entry["seeds"].values())
        entry["decision"] = (
            "uses" if verdicts == {"uses"} else "collapsed" if "collapsed" in verdicts else "undecided"
        )
        if "running" in verdicts:
            entry["decision"] = "running"
    return {"date": time.strftime("%Y-%m-%d"), "runs": lines, "arms": list(arms.values())}


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "–" if v is None else format(v, spec)


def markdown(s: dict[str, Any]) -> str:
    out = [
        "| arm | start | size | seed | steps | decision | first use (rule) | thresholds held from | "
        "train MSE / mean vol. | val MSE / mean vol. | val z-dep. | active units (KL > 0.1) | SNR > 1 | "
        "mean σ | spread / σ | head between-share | MIG |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in s["runs"]:
        if r["kind"] != "arm":
            continue
        out.append(
            f"| {r['arm']} | {r['start']} | {r['size']}³ | {r['seed']} | {r['steps_done']}/{r['steps']} | "
            f"**{r['decision']}** | {_fmt(r['first_use_step'], 'd')} | "
            f"{_fmt(r['thresholds_held_from'], 'd')} | {_fmt(r['train_mse_over_mean_volume'])} | "
            f"{_fmt(r['val_mse_over_mean_volume'])} | {_fmt(r['z_dependence'])} | {r['active_units_kl']} | "
            f"{r['snr_above_1']} | {_fmt(r['mean_sigma'], '.3g')} | {_fmt(r['spread_over_sigma'], '.3g')} | "
            f"{_fmt(r['head_between_share'], '.3g')} | {_fmt(r['mig'])} |"
        )
    out += [
        "",
        "*First use (rule)*: the step from which the rule holds at every later evaluation. *Thresholds "
        "held from*: the same without the rule's trend clause (not the rule; it shows how much the first "
        "step owes to one evaluation's dip).",
        "",
        "Per arm (every seed must use its code):",
        "",
    ]
    out += [f"- {a['arm']} at {a['size']}³: **{a['decision']}** ({a['seeds']})" for a in s["arms"]]
    out += ["", "![ladder curves](ladder.png)"]
    return "\n".join(out)


def reference_rows() -> list[dict[str, Any]]:
    """code_use.json's 128³ rows of Exp1 and of the Exp2 arm whose start is today's default, named as the
    ladder names them (exp1, exp2_shipped)."""
    if not CODE_USE.exists():
        return []
    from code_use import _shipped

    result = json.loads(CODE_USE.read_text())
    names = {"exp1": "exp1", _shipped(result): "exp2_shipped"}
    return [{**r, "arm": names[r["arm"]]} for r in result["rows"] if r["arm"] in names]


def transfer_markdown(runs: list[dict[str, Any]]) -> str:
    """The committed 128³ setting rerun at 32³/64³, beside code_use.json's 128³ rows at the same steps."""
    ref = reference_rows()
    out = [
        "| arm | size | seed | step | val MSE / mean vol. | val z-dep. | μ spread | mean σ |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm in ("exp2_shipped", "exp1"):
        for r in ref:
            if r["arm"] == arm and r["step"] in (0, 30, 150, 300):
                out.append(
                    f"| {arm} | 128³ (code_use.json) | 0 | {r['step']} | "
                    f"{r['val_mse_over_mean_volume']:.3f} | "
                    f"{r['z_dependence']:.3f} | {r['mu_spread_rms']:.3g} | {r['mean_sigma']:.3g} |"
                )
        for run in runs:
            if run["kind"] == "transfer" and run["arm"] == arm:
                for r in run["rows"]:
                    if r["step"] in (0, 30, 150, 300):
                        out.append(
                            f"| {arm} | {run['size']}³ | {run['seed']} | {r['step']} | "
                            f"{r['val_mse_over_mean_volume']:.3f} | {r['z_dependence']:.3f} | "
                            f"{r['mu_spread_rms']:.3g} | {r['mean_sigma']:.3g} |"
                        )
    out += ["", "![transfer check](ladder_transfer.png)"]
    return "\n".join(out)


PANELS = [
    ("train_mse_over_mean_volume", "train MSE / mean volume", "log"),
    ("val_mse_over_mean_volume", "val MSE / mean volume", "log"),
    ("z_dependence", "val z-dependence (1 = z ignored)", None),
    ("active_units_kl", "active units (KL_k > 0.1 nats)", None),
    ("spread_over_sigma", "μ spread / σ", "log"),
    ("mig", "MIG", None),
]


def figures(runs: list[dict[str, Any]]) -> None:
    from vae_dynamics.viz import figure_file

    arms = [r for r in runs if r["kind"] == "arm"]
    with figure_file(FIGURE, nrows=2, ncols=3, figsize=(16, 9)) as (fig, axes):
        colours: dict[str, Any] = {}
        for run in arms:
            colour = colours.setdefault(run["arm"], f"C{len(colours) % 10}")
            style = {32: "-", 64: "--", 128: ":"}[run["size"]]
            for ax, (key, _, _) in zip(axes.flat, PANELS):
                pts = [(r["step"], r[key]) for r in run["rows"] if r.get(key) is not None]
                label = f"{run['arm']} {run['size']}³" if run["seed"] == 0 else None
                ax.plot(*zip(*pts), style, color=colour, lw=1, label=label) if pts else None
        for ax, (_, title, scale) in zip(axes.flat, PANELS):
            ax.set(title=title, xlabel="step")
            if scale:
                ax.set_yscale(scale)
        for ax, level in ((axes.flat[0], 0.9), (axes.flat[2], 1.2)):
            ax.axhline(level, ls="--", lw=0.8, color="grey")
        axes.flat[0].legend(fontsize=7)
        fig.tight_layout()
    ref = reference_rows()
    with figure_file(TRANSFER_FIGURE, nrows=1, ncols=3, figsize=(15, 4)) as (fig, axes):
        for i, arm in enumerate(("exp2_shipped", "exp1")):
            rows = [r for r in ref if r["arm"] == arm]
            for ax, key in zip(axes, ("val_mse_over_mean_volume", "z_dependence", "mu_spread_rms")):
                ax.plot([r["step"] for r in rows], [r[key] for r in rows], "-", color=f"C{i}", lw=2.5,
                        label=f"{arm} 128³")  # fmt: skip
                for run in runs:
                    if run["kind"] == "transfer" and run["arm"] == arm:
                        style = {32: ":", 64: "--"}[run["size"]]
                        label = f"{arm} {run['size']}³ s{run['seed']}"
                        steps = [r["step"] for r in run["rows"]]
                        ax.plot(steps, [r[key] for r in run["rows"]], style, color=f"C{i}", lw=1, label=label)
                ax.set(title=key, xlabel="step")
        axes[0].legend(fontsize=6)
        fig.tight_layout()


def report() -> None:
    runs = _runs()
    s = summary(runs)
    write_text(json.dumps(s, indent=1) + "\n", SUMMARY)
    figures(runs)
    replace_between_markers(DOC, "ladder-results", markdown(s))
    replace_between_markers(DOC, "ladder-transfer", transfer_markdown(runs))
    print(f"{SUMMARY.relative_to(REPO)}: {len(runs)} runs; {DOC.relative_to(REPO)} updated")
