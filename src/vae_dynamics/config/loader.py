"""Read an experiment YAML, apply dotted overrides, validate against the experiment's schema.

The schema is config/schema.py: the union of the experiments' config models, discriminated on
`model.variant`. A loaded config is that frozen, typed object; plain dicts only where YAML is read or
written (`read_yaml`, `save_config`) and where overrides are applied (before validation).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from vae_dynamics.config.schema import (
    CONFIG_MODELS,
    ConfigError,
    ExperimentConfig,
    config_adapter,
    validate_sections,
)
from vae_dynamics.io import write_text

CONFIG_DIR = Path(__file__).resolve().parent


def config_path(name: str) -> Path:
    """Path of a config shipped with the package, by experiment name or key ('exp2_tcvae_sbd', 'exp2'):
    config/<name>.yaml, or the one config/<key>_*.yaml."""
    name = name.removesuffix(".yaml")
    exact = CONFIG_DIR / f"{name}.yaml"
    matches = [exact] if exact.is_file() else sorted(CONFIG_DIR.glob(f"{name}_*.yaml"))
    if len(matches) != 1:
        known = sorted(p.stem for p in CONFIG_DIR.glob("exp*.yaml"))
        raise ConfigError(f"unknown experiment {name!r}; shipped configs: {known}")
    return matches[0]


def validate_config(cfg: Mapping[str, Any]) -> ExperimentConfig:
    """Check every key against the schema of the experiment its model.variant names; the frozen,
    typed config with defaults filled in.

    All problems are reported in one ConfigError, one line each, naming the dotted key and value.
    """
    return validate_sections(cfg)


def json_schema() -> dict[str, Any]:
    """JSON schema of an experiment config: pydantic's schema of the union of the experiments' configs,
    discriminated on model.variant."""
    schema = config_adapter().json_schema(ref_template="#/$defs/{model}")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "vae_dynamics experiment config",
        "description": "One experiment YAML (config/exp*.yaml); model.variant selects the experiment.",
        **{k: v for k, v in schema.items() if k != "$defs"},
        "$defs": dict(sorted(schema.get("$defs", {}).items())),
    }


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


def _json_type(prop: Mapping[str, Any]) -> str:
    """A JSON-schema property's type in a few characters: int, list[float], "auto" | bool, ..."""
    if "const" in prop:
        return json.dumps(prop["const"])
    if "enum" in prop:
        return " | ".join(json.dumps(v) for v in prop["enum"])
    if "anyOf" in prop:
        return " | ".join(_json_type(p) for p in prop["anyOf"])
    kind = {"integer": "int", "number": "float", "string": "str", "boolean": "bool"}.get(prop.get("type", ""))
    if prop.get("type") == "array":
        return f"list[{_json_type(prop.get('items', {}))}]"
    return kind or str(prop.get("type", "any"))


def schema_markdown() -> str:
    """Every key of every experiment's config as Markdown tables (the documentation's configuration
    reference), section by section: type, default (blank: the YAML must set it) and description."""
    lines = [
        "# Configuration keys",
        "",
        "Generated from the config schema (`vae-dynamics config schema --format markdown`). A key without a",
        "default must be set in the experiment's YAML; `model.variant` selects the experiment.",
    ]
    for variant, model in CONFIG_MODELS.items():
        lines += ["", f"## model.variant: {variant} ({model.__name__})"]
        for section, field in model.model_fields.items():
            lines += ["", f"### {section}", "", "| key | type | default | description |", "|---|---|---|---|"]
            lines += _key_rows(section, field.annotation)  # type: ignore[arg-type]
    return "\n".join(lines) + "\n"


def _key_rows(prefix: str, section_model: type[BaseModel]) -> list[str]:
    """The table rows of one section's keys; a nested section (logging.mlflow) as dotted keys."""
    rows = []
    props = section_model.model_json_schema()["properties"]
    for key, f in section_model.model_fields.items():
        if f.exclude:
            continue
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
            rows += _key_rows(f"{prefix}.{key}", f.annotation)
            continue
        default = f.get_default(call_default_factory=True)
        shown = "" if default is PydanticUndefined else f"`{json.dumps(default)}`"
        kind = _json_type(props[key]).replace("|", "\\|")
        text = (f.description or "").replace("|", "\\|")
        rows.append(f"| `{prefix}.{key}` | `{kind}` | {shown} | {text} |")
    return rows


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


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return raw


def load_config(
    path: str | os.PathLike[str], overrides: Iterable[str] | Mapping[str, Any] = ()
) -> ExperimentConfig:
    """Read an experiment YAML (or a run's config_resolved.yaml), apply overrides, validate.

    Raises ConfigError naming the file and every bad key.
    """
    raw = read_yaml(path)
    try:
        return validate_config(apply_overrides(raw, overrides))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def save_config(cfg: ExperimentConfig | Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write a config as YAML, atomically."""
    data = cfg.to_dict() if isinstance(cfg, ExperimentConfig) else dict(cfg)
    write_text(yaml.safe_dump(data, sort_keys=False), path)


def diff_keys(
    a: ExperimentConfig | Mapping[str, Any], b: ExperimentConfig | Mapping[str, Any], sections: Iterable[str]
) -> list[str]:
    """Dotted keys whose values differ between two configs within the given sections."""
    a, b = (c.to_dict() if isinstance(c, ExperimentConfig) else c for c in (a, b))
    diffs = []
    for section in sections:
        sa, sb = a.get(section, {}), b.get(section, {})
        for key in sorted(set(sa) | set(sb)):
            if sa.get(key) != sb.get(key):
                diffs.append(f"{section}.{key}: {sa.get(key)!r} -> {sb.get(key)!r}")
    return diffs
