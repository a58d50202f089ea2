"""The steps the Snakemake rules call: config resolution, run identity, training and export."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from vae_dynamics.config import ConfigError, load_config
from vae_dynamics.config.identity import CONTRACT_KEYS, run_identity
from vae_dynamics.config.schema import DataConfig, ExperimentConfig
from vae_dynamics.io import atomic_dir, write_json, write_text


@contextlib.contextmanager
def log_to(path: str | os.PathLike[str]) -> Iterator[None]:
    """Send stdout, stderr and log records of a workflow step to its Snakemake log file.

    Every process appends (O_APPEND: writes never overwrite each other), rank 0 after a header line.
    DDP processes of rank > 0 (Lightning re-runs the step's script for them, or srun starts them with
    rank 0) append to the same log; nothing truncates it, so no process erases another's lines.
    """
    from vae_dynamics.training.distributed import launched_rank

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", buffering=1) as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        rank = launched_rank()
        fh.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} {'start' if rank == 0 else f'rank {rank}'} "
                 f"(pid {os.getpid()}) ====\n")  # fmt: skip
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            yield
        except BaseException:
            traceback.print_exc()
            raise
        finally:
            root.removeHandler(handler)


# Keys that define the data every run sees (SPEC §3: no differences in the data pipeline): one index,
# split and cache serve all experiments and every run of a sweep.
SHARED_DATA_KEYS = {f"data.{k}" for k in (*CONTRACT_KEYS, "root_dir", "cache_dir", "val_split")}
CACHE_DIR = "results/cache/tensors"
DEMO_DATA = "results/demo/data"


def experiment_keys() -> list[str]:
    """The registered experiments (exp1, exp2, ...): the per-experiment blocks of `overrides` and `sweep`."""
    from vae_dynamics import experiments

    return list(experiments.EXPERIMENTS)


def experiment_overrides(overrides: Mapping[str, Any] | str | None, experiment: str | None) -> dict[str, Any]:
    """Shared dotted overrides plus those under `overrides[experiment]` (which win)."""
    if isinstance(overrides, str):  # `--config 'overrides={...}'` arrives as a string
        overrides = yaml.safe_load(overrides) or {}
    overrides = dict(overrides or {})
    keys = experiment_keys()
    shared = {k: v for k, v in overrides.items() if k not in keys}
    specific = overrides.get(experiment) or {} if experiment else {}
    if not isinstance(specific, Mapping):
        raise ConfigError(f"overrides.{experiment}: expected a mapping of dotted keys, got {specific!r}")
    for key in specific:
        if key in SHARED_DATA_KEYS:
            raise ConfigError(
                f"overrides.{experiment}.{key}: the data and its preprocessing are shared by both "
                "experiments; set this key in the shared overrides"
            )
    return {**shared, **specific}


def resolve_experiment(
    experiment_yaml: str | os.PathLike[str],
    data_root: str | None = None,
    overrides: Mapping[str, Any] | str | None = None,
    cache_dir: str | None = None,
    experiment: str | None = None,
    point: Mapping[str, Any] | None = None,
) -> ExperimentConfig:
    """The experiment config with the workflow's data root, cache dir and overrides applied.

    `overrides` holds shared dotted keys and, under `exp1:` / `exp2:`, keys for one experiment only;
    `point` (a sweep's grid point and seed) wins over both.
    """
    merged = {**experiment_overrides(overrides, experiment), **(point or {})}
    if data_root:
        merged["data.root_dir"] = str(data_root)
    if cache_dir:
        merged["data.cache_dir"] = str(cache_dir)
    try:
        return load_config(experiment_yaml, merged)
    except ConfigError as exc:
        if experiment is None:
            raise
        raise ConfigError(f"experiment {experiment}: {exc}") from None


# ---- the workflow config (config/config.yaml + --config) -> what each rule needs ------------------------


def data_root(config: Mapping[str, Any]) -> str | None:
    """The BraTS-MEN folder: the generated demo data, or `data_root` (None: the YAML's data.root_dir)."""
    return DEMO_DATA if config.get("demo") else config.get("data_root")


def data_sheet(config: Mapping[str, Any]) -> str | None:
    """The sample sheet the workflow trains on instead of a BraTS folder (`data_sheet`), or None."""
    sheet = config.get("data_sheet")
    if sheet and config.get("demo"):
        raise ConfigError("data_sheet and demo are exclusive: the demo generates its own BraTS folder")
    if sheet and config.get("data_root"):
        raise ConfigError("data_sheet and data_root are exclusive: give the subjects one way")
    return sheet or None


def encode_sets(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The workflow config's `encode` block: name -> {sheet or images, reconstruct, traverse}, checked
    (each target is results/<run>/encoded/<name>/latents.csv)."""
    from vae_dynamics.data import SUBJECT_ID_PATTERN

    block = config.get("encode") or {}
    if isinstance(block, str):  # `--config 'encode={...}'` may arrive as text
        block = yaml.safe_load(block) or {}
    sets = {}
    for name, spec in block.items():
        # `--config` passes nested scalars as text: read them as YAML ("true" -> True, "2" -> 2)
        spec = {k: yaml.safe_load(v) if isinstance(v, str) and k not in ("sheet", "images") else v
                for k, v in dict(spec or {}).items()}  # fmt: skip
        if not re.fullmatch(SUBJECT_ID_PATTERN, str(name)):
            raise ConfigError(f"encode.{name}: a name of letters, digits, '.', '_', '-' (it names a folder)")
        if ("sheet" in spec) == ("images" in spec):
            raise ConfigError(f"encode.{name}: give exactly one of sheet (a .csv/.tsv) or images (a folder)")
        reconstruct, traverse = spec.get("reconstruct", False), spec.get("traverse", 0)
        if not isinstance(reconstruct, bool):
            raise ConfigError(f"encode.{name}.reconstruct: true or false, got {reconstruct!r}")
        if not isinstance(traverse, int) or isinstance(traverse, bool) or traverse < 0:
            raise ConfigError(f"encode.{name}.traverse: an integer >= 0, got {traverse!r}")
        sets[str(name)] = {"source": spec.get("sheet") or spec.get("images"), "reconstruct": reconstruct,
                           "traverse": traverse}  # fmt: skip
    return sets


def encode_step(summary_path: str, source: str, latents_csv: str, reconstruct: bool, traverse: int,
                workers: int = 0) -> int:  # fmt: skip
    """Encode the scans of a sheet or folder with a finished run into the folder of `latents_csv`."""
    from vae_dynamics.inference import load_run, write_encoding

    run = load_run(summary_path)
    table = write_encoding(run, source, Path(latents_csv).parent, reconstruct=reconstruct,
                           traverse=traverse, workers=workers, progress=True)  # fmt: skip
    for row in table.attrs["rejected"].itertuples():
        print(f"rejected {row.subject_id}: {row.file}: {row.reason}")
    return len(table)


def load_workflow_config(*configfiles: str | os.PathLike[str], root: str | os.PathLike[str] = ".") -> dict:
    """config/config.yaml with each --configfile merged over it, as Snakemake does (its update_config)."""
    from snakemake.utils import update_config

    config: dict[str, Any] = {}
    for path in (Path(root) / "config" / "config.yaml", *map(Path, configfiles)):
        if not path.is_file():
            raise FileNotFoundError(f"workflow config not found: {path}")
        update_config(config, yaml.safe_load(path.read_text()) or {})
    return config


def experiment_yaml(config: Mapping[str, Any], exp: str) -> str:
    """The experiment YAML the workflow config names for `exp` (its registered default otherwise)."""
    from vae_dynamics import experiments

    e = experiments.get(exp)
    return str(config.get(e.workflow_key) or e.yaml_path)


def experiment_config(
    config: Mapping[str, Any], exp: str, point: Mapping[str, Any] | None = None
) -> ExperimentConfig:
    """The validated config of one workflow run: `exp` (+ a sweep point)."""
    return resolve_experiment(
        experiment_yaml(config, exp), data_root=data_root(config), overrides=config.get("overrides"),
        cache_dir=CACHE_DIR, experiment=exp, point=point,
    )  # fmt: skip


def data_config(config: Mapping[str, Any]) -> DataConfig:
    """The data section shared by every run of the workflow (one index, split and cache)."""
    return run_config(config, experiment_keys()[0]).data


def cache_settings(data_cfg: DataConfig) -> dict[str, Any]:
    """build_persistent_cache's params: the preprocessing contract and the cache root (plain data, so
    that Snakemake reruns the cache when they change, and only then)."""
    values = data_cfg.model_dump(mode="json")
    return {k: values[k] for k in (*CONTRACT_KEYS, "cache_dir")}


def config_hash(cfg: ExperimentConfig) -> str:
    """Identity of a training run (config/identity.py): what it learns, not how long, fast or where.

    Raising train.max_epochs or changing data.num_workers keeps the run directory (the run continues);
    a change of the model, loss, data contract, splits seed, optimiser or precision starts a new one.
    """
    return run_identity(cfg)


# ---- sweeps ---------------------------------------------------------------------------------------------


def _fmt_value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v).replace("/", "_").replace(",", "_").replace(" ", "")


def sweep_runs(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every run of the workflow config's `sweep`: results path -> {exp, name, point}, validated.

    sweep: {seeds: [42, 43], exp2: {loss.beta_tc_target: [1, 6]}, exp1: {}} gives, per experiment
    named, the product of its grid and the seeds: results/sweep/exp2/beta_tc_target=1,seed=42, ...
    `sweep.overrides` (dotted keys) apply to every sweep run, e.g. a shorter train.max_epochs.
    Every run's config is validated here, before any work; errors name the run and the key.
    """
    import itertools

    from vae_dynamics.config.identity import IDENTITY_FREE_KEYS

    sweep = config.get("sweep") or {}
    if isinstance(sweep, str):
        sweep = yaml.safe_load(sweep) or {}
    seeds = sweep.get("seeds") or []
    settings = dict(sweep.get("overrides") or {})
    for key in settings:
        if key in SHARED_DATA_KEYS:
            raise ConfigError(f"sweep.overrides.{key}: the data, split and cache are shared by all runs")
    runs: dict[str, dict[str, Any]] = {}
    for exp in experiment_keys():
        if exp not in sweep:
            continue
        grid = dict(sweep[exp] or {})
        for key, values in grid.items():
            where = f"sweep.{exp}.{key}"
            if key in SHARED_DATA_KEYS or key == "train.seed":
                raise ConfigError(
                    f"{where}: cannot be swept (the data, split and cache are shared by all runs; "
                    "seeds go in sweep.seeds)"
                )
            if key in IDENTITY_FREE_KEYS or key.startswith("logging."):
                raise ConfigError(f"{where}: does not change what a run learns; sweeping it repeats runs")
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{where}: expected a non-empty list of values, got {values!r}")
        short = [k.rsplit(".", 1)[-1] for k in grid]
        labels = [s if short.count(s) == 1 else k for s, k in zip(short, grid)]
        axes = [[(k, v) for v in grid[k]] for k in grid] + (
            [[("train.seed", s) for s in seeds]] if seeds else []
        )
        for combo in itertools.product(*axes):
            point = dict(combo)
            parts = [f"{lab}={_fmt_value(point[k])}" for lab, k in zip(labels, grid)]
            if seeds:
                parts.append(f"seed={point['train.seed']}")
            name = ",".join(parts) or "default"
            path = f"sweep/{exp}/{name}"
            if path in runs:  # e.g. 0.1 and 0.1000001 both read 0.1: one run would overwrite the other
                raise ConfigError(
                    f"sweep.{exp}: the grid points {runs[path]['point']} and {point} give the same run "
                    f"name {name!r}; make the values distinct at 6 significant digits or drop one"
                )
            try:
                cfg = experiment_config(config, exp, {**settings, **point})
            except ConfigError as exc:
                raise ConfigError(f"sweep run {path}: {exc}") from None
            runs[path] = {"exp": exp, "name": name, "point": point, "settings": settings,
                          "identity": config_hash(cfg)}  # fmt: skip
    return runs


def run_config(
    config: Mapping[str, Any], run: str, runs: Mapping[str, dict[str, Any]] | None = None
) -> ExperimentConfig:
    """The config of a workflow run: `exp2` (the main run) or `sweep/exp2/<name>` (a sweep run).

    `runs`: the sweep's runs when already resolved (`sweep_runs(config)` validates every run's config).
    """
    if run.startswith("sweep/"):
        runs = sweep_runs(config) if runs is None else runs
        if run not in runs:
            raise ConfigError(f"{run}: not a run of this workflow config's sweep; its runs: {sorted(runs)}")
        return experiment_config(config, runs[run]["exp"], {**runs[run]["settings"], **runs[run]["point"]})
    return experiment_config(config, run)


def traversed_dims(config: Mapping[str, Any]) -> int:
    """evaluation.traversed_dims of the workflow config, or the evaluation's default."""
    from vae_dynamics.evaluation import N_TRAVERSED

    return (config.get("evaluation") or {}).get("traversed_dims", N_TRAVERSED)


def run_experiment(run: str) -> str:
    """exp2 for `exp2` and `sweep/exp2/<name>`."""
    return run.split("/")[1] if run.startswith("sweep/") else run


def train_step(
    cfg: ExperimentConfig,
    run_dir: str | os.PathLike[str],
    splits_dir: str,
    summary_path: str,
    metrics_path: str,
) -> dict[str, Any]:
    """Train (resuming if the run directory has a checkpoint), then write the small final outputs."""
    from vae_dynamics.training.run import train
    from vae_dynamics.training.run_dir import RunDir
    from vae_dynamics.viz.curves import read_metrics

    run_dir = Path(run_dir)
    resume = RunDir(run_dir).has_checkpoint()
    # On resume the splits are compared with the run's own (re-indexed data is refused, as on the CLI).
    summary = train(cfg, run_dir, resume=resume, splits_dir=splits_dir)
    if "best_checkpoint" not in summary:  # a DDP process of rank > 0: rank 0 writes the outputs
        return summary
    summary["resumed"] = resume
    # The run directory relative to the summary: results/ can be moved or mounted elsewhere.
    summary["run_dir"] = Path(
        os.path.relpath(run_dir.resolve(), Path(summary_path).parent.resolve())
    ).as_posix()
    metrics = read_metrics(RunDir(run_dir).logs)
    write_text(metrics.to_csv(index=False), metrics_path)
    write_json(summary, summary_path)  # last: its existence means training finished
    return summary


def export_step(summary_path: str, panels_dir: str, curves_png: str, device: str | None = None) -> list[Path]:
    """Recon panels of every validation subject from the chosen checkpoint, and the loss curves."""
    import torch

    from vae_dynamics.evaluation.encode import split_datasets
    from vae_dynamics.inference import load_run
    from vae_dynamics.training.run_dir import RunDir
    from vae_dynamics.viz.curves import plot_loss_curves
    from vae_dynamics.viz.recon import save_recon_panel

    run = load_run(summary_path, device)
    val = split_datasets(run)["val"]
    with atomic_dir(panels_dir) as tmp, torch.no_grad():
        for i in range(len(val)):
            item = val[i]
            mu, _ = run.model.encoder(item["image"][None].to(run.device).float())
            with run.autocast():
                x_hat = run.model.decode(mu)[0].float()
            save_recon_panel(item["image"], x_hat, tmp / f"{item['subject_id']}.png", run.cfg.data.modalities,
                             title=f"{item['subject_id']} — chosen checkpoint ({run.summary['experiment']})")  # fmt: skip
    plot_loss_curves(RunDir(run.run_dir).logs, curves_png)
    return sorted(Path(panels_dir).glob("*.png"))
