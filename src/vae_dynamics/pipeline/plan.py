"""The workflow's plan, torch-free (`snakemake -n` runs it on a login node): the workflow config
(config/config.yaml + --config) merged and checked, and turned into what each rule needs: every run
(the main runs of the registry and the sweep's), its validated experiment config and identity, the
shared data section, the scans to encode.

The rules read it as `wf` (rules/common.smk); the steps the jobs run are pipeline/steps.py.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from vae_dynamics import experiments
from vae_dynamics.config import ConfigError, load_config
from vae_dynamics.config.identity import CONTRACT_KEYS, IDENTITY_FREE_KEYS, run_identity
from vae_dynamics.config.schema import DataConfig, ExperimentConfig
from vae_dynamics.data import SUBJECT_ID_PATTERN
from vae_dynamics.evaluation import N_TRAVERSED

# Keys that define the data every run sees (SPEC §3: no differences in the data pipeline): one index,
# split and cache serve all experiments and every run of a sweep.
SHARED_DATA_KEYS = {f"data.{k}" for k in (*CONTRACT_KEYS, "root_dir", "cache_dir", "val_split")}
CACHE_DIR = "results/cache/tensors"
DEMO_DATA = "results/demo/data"


def config_block(config: Mapping[str, Any], key: str) -> dict[str, Any]:
    """A mapping block of the workflow config (overrides, sweep, encode); `--config 'key={...}'` passes it
    as text, read as YAML."""
    value = config.get(key) if isinstance(config, Mapping) else None
    if isinstance(value, str):
        value = yaml.safe_load(value)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a mapping, got {value!r}")
    return dict(value)


def experiment_keys() -> list[str]:
    """The registered experiments (exp1, exp2, ...): the per-experiment blocks of `overrides` and `sweep`."""
    return list(experiments.EXPERIMENTS)


def compared_experiments() -> list[str]:
    """The experiments compare_experiments puts side by side: the baseline first, then the others."""
    return sorted(experiments.EXPERIMENTS, key=lambda k: not experiments.EXPERIMENTS[k].baseline)


def experiment_overrides(overrides: Mapping[str, Any] | str | None, experiment: str | None) -> dict[str, Any]:
    """Shared dotted overrides plus those under `overrides[experiment]` (which win); `--config
    'overrides={...}'` arrives as text (config_block reads it)."""
    overrides = config_block({"overrides": overrides}, "overrides")
    keys = experiment_keys()
    shared = {k: v for k, v in overrides.items() if k not in keys}
    specific = overrides.get(experiment) or {} if experiment else {}
    if not isinstance(specific, Mapping):
        raise ConfigError(f"overrides.{experiment}: expected a mapping of dotted keys, got {specific!r}")
    for key in specific:
        if key in SHARED_DATA_KEYS:
            raise ConfigError(
                f"overrides.{experiment}.{key}: the data and its preprocessing are shared by every "
                "experiment; set this key in the shared overrides"
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
    sets = {}
    for name, spec in config_block(config, "encode").items():
        # `--config` passes nested scalars as text: read them as YAML ("true" -> True, "2" -> 2)
        spec = {
            k: yaml.safe_load(v) if isinstance(v, str) and k not in ("sheet", "images") else v
            for k, v in dict(spec or {}).items()
        }
        if not re.fullmatch(SUBJECT_ID_PATTERN, str(name)):
            raise ConfigError(f"encode.{name}: a name of letters, digits, '.', '_', '-' (it names a folder)")
        if ("sheet" in spec) == ("images" in spec):
            raise ConfigError(f"encode.{name}: give exactly one of sheet (a .csv/.tsv) or images (a folder)")
        reconstruct, traverse = spec.get("reconstruct", False), spec.get("traverse", 0)
        if not isinstance(reconstruct, bool):
            raise ConfigError(f"encode.{name}.reconstruct: true or false, got {reconstruct!r}")
        if not isinstance(traverse, int) or isinstance(traverse, bool) or traverse < 0:
            raise ConfigError(f"encode.{name}.traverse: an integer >= 0, got {traverse!r}")
        sets[str(name)] = {
            "source": spec.get("sheet") or spec.get("images"),
            "reconstruct": reconstruct,
            "traverse": traverse,
        }
    return sets


def data_root_problem(root: str | os.PathLike[str], modalities: Sequence[str]) -> str | None:
    """Why a BraTS-layout data folder cannot be indexed, found from file names alone (fast enough for a
    dry run): it does not exist, holds no subject folder, or no subject folder holds every modality."""
    from vae_dynamics.data.index import find_subject_dirs, subject_files

    fix = (
        "Point the workflow at your BraTS-MEN folder with `--config data_root=/path/to/BraTS_Men_Train` "
        "(or data_root: in config/config.yaml), list your scans in a sample sheet (data_sheet:), or try the "
        "demo: `snakemake --cores 2 --configfile config/demo.yaml -- results/exp2/done`"
    )
    folder = Path(root)
    if not folder.is_dir():
        return f"the data folder {folder} does not exist. {fix}"
    dirs = find_subject_dirs(folder)
    if not dirs:
        return f"the data folder {folder} holds no subject folder (named like BraTS-MEN-00000-000). {fix}"
    if not any(all(subject_files(d, modalities).values()) for d in dirs):
        names = ", ".join(f"<subject>-{m}.nii.gz" for m in modalities)
        return (
            f"none of the {len(dirs)} subject folders of {folder} holds all of {names} "
            f"(e.g. {dirs[0]}: {sorted(p.name for p in dirs[0].iterdir())[:6]}). {fix}"
        )
    return None


DEFAULT_TARGET = "results/exp2/done"  # the Snakefile's `rule all`


def report_problem(argv: Sequence[str]) -> str | None:
    """Why `snakemake --report` cannot build its report yet: it collects the figures of finished runs,
    and a target it was asked for does not exist. None for any other command, or when all exist."""
    if not any(a == "--report" or a.startswith("--report=") for a in argv):
        return None
    if "--" in argv:
        targets = list(argv[argv.index("--") + 1 :])
    else:  # targets without `--` (snakemake --report r.zip results/exp2/done)
        targets = [a for a in argv if a.startswith("results/")]
    missing = [t for t in targets or [DEFAULT_TARGET] if not Path(t).exists()]
    if not missing:
        return None
    return (
        f"--report collects the figures of finished runs, and {', '.join(missing)} does not exist yet: run "
        "the same command without --report first (it trains and evaluates), then build the report"
    )


def update_config(config: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Merge `overlay` into `config` in place, mappings key by key, as Snakemake merges config files."""
    for key, value in overlay.items():
        if isinstance(value, Mapping):
            base = config.get(key)
            config[key] = update_config(dict(base) if isinstance(base, Mapping) else {}, value)
        else:
            config[key] = value
    return config


def load_workflow_config(*configfiles: str | os.PathLike[str], root: str | os.PathLike[str] = ".") -> dict:
    """config/config.yaml with each --configfile merged over it, as Snakemake does (its update_config)."""
    config: dict[str, Any] = {}
    for path in (Path(root) / "config" / "config.yaml", *map(Path, configfiles)):
        if not path.is_file():
            raise FileNotFoundError(f"workflow config not found: {path}")
        update_config(config, yaml.safe_load(path.read_text()) or {})
    return config


def check_experiment_keys(config: Mapping[str, Any]) -> None:
    """Every experiment the workflow config names (experiments:, overrides.<exp>, sweep.<exp>) is
    registered."""
    keys = experiment_keys()
    overrides, sweep = config_block(config, "overrides"), config_block(config, "sweep")
    named = {
        "experiments": list(config.get("experiments") or {}),
        "overrides": [k for k in overrides if "." not in k],
        "sweep": [k for k in sweep if k not in ("seeds", "overrides")],
    }
    for block, names in named.items():
        for name in names:
            if name not in keys:
                raise ConfigError(f"{block}.{name}: not a registered experiment; registered: {keys}")


def experiment_yaml(config: Mapping[str, Any], exp: str) -> str:
    """The experiment YAML the workflow config names for `exp` under `experiments:` (its registered YAML
    otherwise)."""
    return str((config.get("experiments") or {}).get(exp) or experiments.get(exp).yaml_path)


def experiment_config(
    config: Mapping[str, Any], exp: str, point: Mapping[str, Any] | None = None
) -> ExperimentConfig:
    """The validated config of one workflow run: `exp` (+ a sweep point)."""
    return resolve_experiment(
        experiment_yaml(config, exp),
        data_root=data_root(config),
        overrides=config.get("overrides"),
        cache_dir=CACHE_DIR,
        experiment=exp,
        point=point,
    )


def data_config(config: Mapping[str, Any]) -> DataConfig:
    """The data section shared by every run of the workflow (one index, split and cache)."""
    return run_config(config, experiment_keys()[0]).data


def cache_settings(data_cfg: DataConfig) -> dict[str, Any]:
    """build_persistent_cache's params: the preprocessing contract and the cache root (plain data, so
    that Snakemake reruns the cache when they change, and only then)."""
    values = data_cfg.model_dump(mode="json")
    return {k: values[k] for k in (*CONTRACT_KEYS, "cache_dir")}


# ---- sweeps ---------------------------------------------------------------------------------------------


def _fmt_value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v).replace("/", "_").replace(",", "_").replace(" ", "")


def sweep_runs(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every run of the workflow config's `sweep`: results path -> {exp, name, point, settings, identity}.

    sweep: {seeds: [42, 43], exp2: {loss.beta_tc_target: [1, 6]}, exp1: {}} gives, per experiment
    named, the product of its grid and the seeds: results/sweep/exp2/beta_tc_target=1,seed=42, ...
    `sweep.overrides` (dotted keys) apply to every sweep run, e.g. a shorter train.max_epochs.
    Every run's config is validated here, before any work; errors name the run and the key.
    """
    sweep = config_block(config, "sweep")
    settings = dict(sweep.get("overrides") or {})
    for key in settings:
        if key in SHARED_DATA_KEYS:
            raise ConfigError(f"sweep.overrides.{key}: the data, split and cache are shared by all runs")
    runs: dict[str, dict[str, Any]] = {}
    for exp in (e for e in experiment_keys() if e in sweep):
        for name, point in _grid_points(exp, dict(sweep[exp] or {}), sweep.get("seeds") or []):
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
            runs[path] = {
                "exp": exp,
                "name": name,
                "point": point,
                "settings": settings,
                "identity": run_identity(cfg),
            }
    return runs


def _grid_points(exp: str, grid: dict[str, Any], seeds: list[int]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(run name, dotted key -> value) of every point of one experiment's grid × the seeds, checked."""
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
    axes = [[(k, v) for v in grid[k]] for k in grid] + ([[("train.seed", s) for s in seeds]] if seeds else [])
    for combo in itertools.product(*axes):
        point = dict(combo)
        parts = [f"{lab}={_fmt_value(point[k])}" for lab, k in zip(labels, grid)]
        if seeds:
            parts.append(f"seed={point['train.seed']}")
        yield ",".join(parts) or "default", point


def run_point(run: str, runs: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The dotted keys a run sets over its experiment's config: a sweep run's settings and grid point
    (`runs`: sweep_runs' result), nothing for a main run."""
    if not run.startswith("sweep/"):
        return {}
    if run not in runs:
        raise ConfigError(f"{run}: not a run of this workflow config's sweep; its runs: {sorted(runs)}")
    return {**runs[run]["settings"], **runs[run]["point"]}


def run_config(
    config: Mapping[str, Any], run: str, runs: Mapping[str, dict[str, Any]] | None = None
) -> ExperimentConfig:
    """The config of a workflow run: `exp2` (the main run) or `sweep/exp2/<name>` (a sweep run).

    `runs`: the sweep's runs when already resolved (`sweep_runs(config)` validates every run's config).
    """
    if runs is None and run.startswith("sweep/"):
        runs = sweep_runs(config)
    return experiment_config(config, run_experiment(run), run_point(run, runs or {}))


def traversed_dims(config: Mapping[str, Any]) -> int:
    """evaluation.traversed_dims of the workflow config, or the evaluation's default."""
    return (config.get("evaluation") or {}).get("traversed_dims", N_TRAVERSED)


def run_experiment(run: str) -> str:
    """exp2 for `exp2` and `sweep/exp2/<name>`."""
    return run.split("/")[1] if run.startswith("sweep/") else run
