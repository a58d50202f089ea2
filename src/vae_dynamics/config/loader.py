"""Load, override and validate experiment configs before any work starts."""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vae_dynamics.io import write_text

CONFIG_DIR = Path(__file__).resolve().parent

# model.variant -> experiment name (run directories are <timestamp>_<experiment name>).
EXPERIMENT_NAMES = {"baseline_vae": "exp1_baseline_vae", "tcvae_sbd": "exp2_tcvae_sbd"}
# 64-true is not offered: the data pipeline, caches and snapshots are float32/float16 throughout.
PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed")


class ConfigError(ValueError):
    """A config key is unknown, missing, of the wrong type or has an impossible value."""


@dataclass(frozen=True)
class Field:
    """One config key: its type, an optional default (None = required) and a value check."""

    kind: str  # "str" | "int" | "float" | "bool" | "auto|bool" | "list[int]" | "list[float]" | "list[str]"
    default: Any = None
    check: Callable[[Any], str | None] | None = None  # returns an error text or None
    optional: bool = False  # may be absent from the YAML (then `default` is used)
    length: int | None = None


def _positive(v: Any) -> str | None:
    return None if v > 0 else "must be > 0"


def _non_negative(v: Any) -> str | None:
    return None if v >= 0 else "must be >= 0"


def _unit_open(v: float) -> str | None:
    return None if 0.0 < v < 1.0 else "must lie strictly between 0 and 1"


def _unit_half_open(v: float) -> str | None:
    return None if 0.0 <= v <= 1.0 else "must lie in [0, 1]"


def _choice(*options: str) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if v in options else f"must be one of {list(options)}"

    return check


def _base_filters(v: int) -> str | None:
    if v // 2 < 8:
        return "base_filters // 2 must be >= 8 (the last decoder stage), i.e. base_filters >= 16"
    return None


def _roi(v: list[int]) -> str | None:
    return None if list(v) == [128, 128, 128] else "must be [128, 128, 128] (the model input size)"


def _grid(v: list[int]) -> str | None:
    return None if list(v) == [8, 8, 8] else "is fixed to [8, 8, 8] (do not change)"


def _logvar_bias(v: float) -> str | None:
    return None if -20 <= v <= 5 else "must lie in [-20, 5] (sigma from 4.5e-5 to 12)"


def _loggers(v: list[str]) -> str | None:
    known = ("csv", "tensorboard", "wandb", "mlflow")
    unknown = [x for x in v if x not in known]
    if unknown:
        return f"unknown logger(s) {unknown}; known: {list(known)}"
    if "csv" not in v or len(set(v)) != len(v):
        return "must list csv (the request's metrics.csv) and each logger once"
    return None


def _z_dim(v: int) -> str | None:
    return None if v == 128 else "is fixed to 128"


def _modalities(v: list[str]) -> str | None:
    if sorted(v) != ["t1c", "t1n", "t2f", "t2w"] or len(set(v)) != 4:
        return "must list the four BraTS modalities t1c, t1n, t2f, t2w once each"
    return None


COMMON_SCHEMA: dict[str, dict[str, Field]] = {
    "data": {
        "root_dir": Field("str"),
        "modalities": Field("list[str]", check=_modalities),
        "roi_size": Field("list[int]", check=_roi, length=3),
        "spacing": Field("list[float]", check=lambda v: None if min(v) > 0 else "must be > 0", length=3),
        "orientation": Field("str", check=lambda v: None if v == "RAS" else "must be 'RAS'"),
        "batch_size": Field("int", check=_positive),
        "num_workers": Field("int", check=_non_negative),
        "cache_rate": Field("float", check=_unit_half_open),
        "val_split": Field("float", check=_unit_open),
        # Not in the request's YAML; defaults used when absent.
        "cache_dir": Field("str", default="experiments/cache", optional=True),
        "fov_mm": Field("float", default=192.0, optional=True, check=_positive),
        # auto: hold the training split on the GPU (float16) when CUDA is used and it fits; see datamodule.py
        "gpu_cache": Field("auto|bool", default="auto", optional=True),
        "intensity_percentile": Field(
            "float",
            default=99.5,
            optional=True,
            check=lambda v: None if 50 < v <= 100 else "must lie in (50, 100]",
        ),
    },
    "model": {
        "variant": Field("str", check=_choice(*EXPERIMENT_NAMES)),
        "z_dim": Field("int", check=_z_dim),
        "input_channels": Field("int", check=lambda v: None if v == 4 else "must be 4 (t1c, t1n, t2f, t2w)"),
        "base_filters": Field("int", check=_base_filters),
        "norm": Field("str", check=_choice("GROUP")),
    },
    "train": {
        "seed": Field("int"),
        "max_epochs": Field("int", check=_positive),
        "lr": Field("float", check=_positive),
        "precision": Field("str", check=_choice(*PRECISIONS)),
        "gradient_checkpointing": Field("bool"),
        "accelerator": Field(
            "str", default="auto", optional=True, check=_choice("auto", "cpu", "gpu", "cuda")
        ),
        # channels_last_3d: CUDA only (+7-10 % in the compiled loop on an H200; docs/PERFORMANCE.md)
        "channels_last": Field("bool", default=True, optional=True),
        # Data-parallel training: data.batch_size is the batch of ONE device; the MWS estimator uses the
        # global batch (devices · num_nodes · batch_size). strategy auto = DDP when more than one device.
        "devices": Field("int", default=1, optional=True, check=_positive),
        "num_nodes": Field("int", default=1, optional=True, check=_positive),
        "strategy": Field("str", default="auto", optional=True, check=_choice("auto", "ddp")),
        # torch.compile of the model: auto = on with CUDA, off on CPU (compiling costs more than it gains there)
        "compile": Field("auto|bool", default="auto", optional=True),
        # lr multiplier of the encoder's last Linear (fan-in 32·8³); see docs/LEARNING.md
        "encoder_head_lr_scale": Field("float", default=1.0, optional=True, check=_positive),
    },
    "logging": {
        "save_dir": Field("str"),
        "recon_every_n_epochs": Field("int", check=_positive),
        "num_recon_samples": Field("int", check=_non_negative),
        # Not in the request's YAML. csv is the request's metrics.csv and always kept.
        "loggers": Field("list[str]", default=["csv", "tensorboard"], optional=True, check=_loggers),
        # Progress lines in train.log when stderr is not a terminal (a TQDM bar otherwise).
        "progress_every_n_steps": Field("int", default=50, optional=True, check=_positive),
        # val/z_dependence and val/spatial_share (two extra decodes of one validation batch) every n epochs;
        # the latent statistics (active units, μ spread, σ, KL) are logged every epoch.
        "diagnostics_every_n_epochs": Field("int", default=1, optional=True, check=_positive),
    },
}

VARIANT_SCHEMA: dict[str, dict[str, dict[str, Field]]] = {
    "baseline_vae": {
        "loss": {
            "beta_kl_target": Field("float", check=_non_negative),
            "beta_kl_annealing_epochs": Field("int", check=_non_negative),
        },
    },
    "tcvae_sbd": {
        "model": {
            "sbd_grid_size": Field("list[int]", check=_grid, length=3),
            # Not in the request's YAML: how the SBD starts (docs/LEARNING.md). Gains of the z and the
            # coordinate columns of the 1×1×1 projection, the GroupNorm after it, the initial log σ².
            "sbd_z_gain": Field("float", default=0.1, optional=True, check=_non_negative),
            "sbd_coord_gain": Field("float", default=1.0, optional=True, check=_positive),
            "sbd_project_norm": Field("bool", default=True, optional=True),
            "logvar_init_bias": Field("float", default=-4.0, optional=True, check=_logvar_bias),
        },
        "loss": {
            "alpha": Field("float", check=_non_negative),
            "gamma": Field("float", check=_non_negative),
            "beta_tc_target": Field("float", check=_non_negative),
            "beta_tc_annealing_epochs": Field("int", check=_non_negative),
            "compute_in_fp32": Field("bool"),
        },
        "train": {
            # The request also calls loss.compute_in_fp32 "train.compute_tcvae_terms_in_fp32".
            "compute_tcvae_terms_in_fp32": Field("bool", optional=True),
            # Exp2's default: the encoder head at lr/100 (docs/LEARNING.md); Exp1 keeps 1.0.
            "encoder_head_lr_scale": Field("float", default=0.01, optional=True, check=_positive),
        },
    },
}


def config_path(name: str) -> Path:
    """Path of a config shipped with the package (e.g. 'exp2_tcvae_sbd')."""
    return CONFIG_DIR / f"{name.removesuffix('.yaml')}.yaml"


def experiment_name(cfg: Mapping[str, Any]) -> str:
    """Experiment name of a validated config, e.g. 'exp2_tcvae_sbd'."""
    return EXPERIMENT_NAMES[cfg["model"]["variant"]]


def _schema_for(cfg: Mapping[str, Any]) -> dict[str, dict[str, Field]]:
    variant = (cfg.get("model") or {}).get("variant") if isinstance(cfg.get("model"), dict) else None
    if variant not in VARIANT_SCHEMA:
        raise ConfigError(
            f"model.variant: {variant!r} is not a known experiment variant; "
            f"valid variants: {sorted(VARIANT_SCHEMA)}"
        )
    schema = copy.deepcopy(COMMON_SCHEMA)
    for section, fields in VARIANT_SCHEMA[variant].items():
        schema.setdefault(section, {}).update(fields)
    return schema


def _coerce(key: str, kind: str, value: Any, length: int | None) -> Any:
    def fail(expected: str) -> ConfigError:
        return ConfigError(f"{key}: expected {expected}, got {value!r} ({type(value).__name__})")

    if kind.startswith("list["):
        if not isinstance(value, (list, tuple)):
            raise fail(f"a list of {kind[5:-1]}")
        if length is not None and len(value) != length:
            raise ConfigError(f"{key}: expected {length} values, got {len(value)}: {list(value)!r}")
        return [_coerce(f"{key}[{i}]", kind[5:-1], v, None) for i, v in enumerate(value)]
    if kind == "bool":
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if kind == "auto|bool":
        if not isinstance(value, bool) and value != "auto":
            raise fail("auto, true or false")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        return value
    if kind == "float":
        # PyYAML reads '1e-4' (no dot) as a string: accept numeric strings for float keys.
        if isinstance(value, bool):
            raise fail("a number")
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise fail("a number") from None
        if not isinstance(value, (int, float)):
            raise fail("a number")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: {value!r} is not a finite number (NaN and ±inf are not allowed)")
        return float(value)
    if kind == "str":
        if not isinstance(value, str):
            raise fail("a string")
        return value
    raise AssertionError(kind)


def validate_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Check every key against the schema and return a normalised copy with defaults filled in."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"config must be a mapping of sections, got {type(cfg).__name__}")
    schema = _schema_for(cfg)
    for section in cfg:
        if section not in schema:
            raise ConfigError(f"{section}: unknown section; valid sections: {sorted(schema)}")
    out: dict[str, Any] = {}
    for section, fields in schema.items():
        given = cfg.get(section)
        if given is None:
            raise ConfigError(f"{section}: missing section")
        if not isinstance(given, Mapping):
            raise ConfigError(f"{section}: expected a mapping of keys, got {given!r}")
        for key in given:
            if key not in fields:
                raise ConfigError(f"{section}.{key}: unknown key; valid keys in {section}: {sorted(fields)}")
        out[section] = {}
        for key, spec in fields.items():
            dotted = f"{section}.{key}"
            if key not in given:
                if not spec.optional:
                    raise ConfigError(f"{dotted}: missing required key")
                if spec.default is not None:
                    out[section][key] = spec.default
                continue
            value = _coerce(dotted, spec.kind, given[key], spec.length)
            if spec.check is not None and (problem := spec.check(value)) is not None:
                raise ConfigError(f"{dotted}: {value!r} {problem}")
            out[section][key] = value
    alias = out["train"].pop("compute_tcvae_terms_in_fp32", None)
    if alias is not None and alias != out["loss"]["compute_in_fp32"]:
        raise ConfigError(
            "train.compute_tcvae_terms_in_fp32 contradicts loss.compute_in_fp32 "
            "(they are the same switch; set only loss.compute_in_fp32)"
        )
    return out


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key.path=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"override {item!r}: key must be a dotted path such as train.max_epochs")
    return parts, yaml.safe_load(raw)


def apply_overrides(cfg: dict[str, Any], overrides: Iterable[str] | Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of cfg with dotted overrides applied ('a.b=value' strings, values read as YAML)."""
    out = copy.deepcopy(cfg)
    if isinstance(overrides, Mapping):
        pairs = [(k.split("."), yaml.safe_load(v) if isinstance(v, str) else v) for k, v in overrides.items()]
    else:
        pairs = [_parse_override(item) for item in overrides]
    for parts, value in pairs:
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {'.'.join(parts)}: {part} is not a section")
        node[parts[-1]] = value
    return out


def load_config(
    path: str | os.PathLike[str], overrides: Iterable[str] | Mapping[str, Any] = ()
) -> dict[str, Any]:
    """Read an experiment YAML, apply dotted overrides, validate; raise ConfigError naming the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    try:
        return validate_config(apply_overrides(raw, overrides))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def save_config(cfg: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write a config as YAML, atomically."""
    write_text(yaml.safe_dump(dict(cfg), sort_keys=False), path)


def diff_keys(a: Mapping[str, Any], b: Mapping[str, Any], sections: Iterable[str]) -> list[str]:
    """Dotted keys whose values differ between two configs within the given sections."""
    diffs = []
    for section in sections:
        sa, sb = a.get(section, {}), b.get(section, {})
        for key in sorted(set(sa) | set(sb)):
            if sa.get(key) != sb.get(key):
                diffs.append(f"{section}.{key}: {sa.get(key)!r} -> {sb.get(key)!r}")
    return diffs
