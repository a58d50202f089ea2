"""The typed schema of an experiment config: one pydantic model per section, one per experiment.

The request's YAML keys are the fields; keys it leaves open carry defaults. A config is validated
as a whole and every problem is reported at once, each with its dotted key and value:

    data.batch_size: 0 must be > 0
    loss.beta_tc_targt: unknown key; valid keys in loss: [...]

Light (pydantic and the standard library only): the workflow's dry run reads it without torch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    Tag,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticUndefined

# 64-true is not offered: the data pipeline, caches and snapshots are float32/float16 throughout.
PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed")
LOGGERS = ("csv", "tensorboard", "wandb", "mlflow")
MODALITIES = ("t1c", "t1n", "t2f", "t2w")


class ConfigError(ValueError):
    """A config key is unknown, missing, of the wrong type or has an impossible value."""


def _number_from_string(v: Any) -> Any:
    # PyYAML reads '1e-4' (no dot) as a string: numeric strings are numbers for float keys.
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def check(ok: Callable[[Any], bool], problem: str) -> AfterValidator:
    """A value check: `ok(value)` or the error '<value> <problem>'."""

    def validate(v: Any) -> Any:
        if not ok(v):
            raise ValueError(f"{v!r} {problem}")
        return v

    return AfterValidator(validate)


Number = Annotated[float, Field(allow_inf_nan=False), BeforeValidator(_number_from_string)]
Positive = Annotated[Number, check(lambda v: v > 0, "must be > 0")]
NonNegative = Annotated[Number, check(lambda v: v >= 0, "must be >= 0")]
PositiveInt = Annotated[StrictInt, check(lambda v: v > 0, "must be > 0")]
NonNegativeInt = Annotated[StrictInt, check(lambda v: v >= 0, "must be >= 0")]
AutoOrBool = Literal["auto"] | StrictBool


class Section(BaseModel):
    """A config section: unknown keys are errors, values are checked strictly, and a validated config is
    frozen (code reads `cfg.train.lr`; a changed config is a new one: `cfg.model_copy(update=...)`)."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=False, frozen=True)


class DataConfig(Section):
    """data: where the subjects are, how they are preprocessed (the cache contract) and loaded."""

    root_dir: StrictStr = Field(description="BraTS-MEN training folder (one sub-folder per subject)")
    modalities: Annotated[
        list[StrictStr],
        check(
            lambda v: sorted(v) == sorted(MODALITIES) and len(set(v)) == 4,
            "must list the four BraTS modalities t1c, t1n, t2f, t2w once each",
        ),
    ] = Field(description="input channels, in this order")
    roi_size: Annotated[
        list[StrictInt],
        check(lambda v: v == [128, 128, 128], "must be [128, 128, 128] (the model input size)"),
    ] = Field(description="model input size in voxels (fixed)")
    spacing: Annotated[
        list[Annotated[Number, check(lambda v: 0.25 <= v <= 8, "must lie in [0.25, 8] mm")]],
        Field(min_length=3, max_length=3),
    ] = Field(description="voxel size, mm")
    orientation: Annotated[StrictStr, check(lambda v: v == "RAS", "must be 'RAS'")]
    batch_size: PositiveInt = Field(
        description="batch of ONE device (the global batch is devices·nodes·this)"
    )
    num_workers: NonNegativeInt = Field(description="DataLoader / preprocessing worker processes")
    cache_rate: Annotated[Number, check(lambda v: 0 <= v <= 1, "must lie in [0, 1]")] = Field(
        description="share of the training subjects held in memory"
    )
    val_split: Annotated[Number, check(lambda v: 0 < v < 1, "must lie strictly between 0 and 1")] = Field(
        description="share of the subjects held out for validation"
    )
    cache_dir: StrictStr = Field("experiments/cache", description="persistent cache of preprocessed tensors")
    fov_mm: Annotated[Number, check(lambda v: 64 <= v <= 512, "must lie in [64, 512] mm")] = Field(
        192.0, description="field of view cropped around the head before resizing, mm"
    )
    gpu_cache: AutoOrBool = Field(
        "auto",
        description="hold the training split on the GPU (float16); auto = when CUDA is used and it fits",
    )
    intensity_percentile: Annotated[Number, check(lambda v: 50 < v <= 100, "must lie in (50, 100]")] = Field(
        99.5, description="per-channel intensity scaling percentile"
    )


class ModelConfig(Section):
    """model: the architecture (the variant selects the experiment)."""

    variant: StrictStr = Field(description="the experiment: baseline_vae (Exp1) or tcvae_sbd (Exp2)")
    z_dim: Annotated[StrictInt, check(lambda v: v == 128, "is fixed to 128")] = 128
    input_channels: Annotated[StrictInt, check(lambda v: v == 4, "must be 4 (t1c, t1n, t2f, t2w)")] = 4
    base_filters: Annotated[
        StrictInt,
        check(
            lambda v: v // 2 >= 8,
            "is too small: base_filters // 2 must be >= 8 (the last decoder stage), i.e. base_filters >= 16",
        ),
    ] = Field(32, description="channels of the first encoder stage")
    norm: Literal["GROUP"] = "GROUP"


class TrainConfig(Section):
    """train: optimisation, precision and devices."""

    seed: StrictInt
    max_epochs: PositiveInt = Field(description="epochs to reach; raising it continues a finished run")
    lr: Positive = Field(description="AdamW learning rate")
    precision: Literal[PRECISIONS]  # type: ignore[valid-type]
    gradient_checkpointing: StrictBool
    accelerator: Literal["auto", "cpu", "gpu", "cuda"] = "auto"
    channels_last: StrictBool = Field(
        True, description="channels_last_3d on CUDA (+7-10 % in the compiled loop on an H200; ignored on CPU)"
    )
    devices: PositiveInt = Field(1, description="devices per node; DDP when devices·num_nodes > 1")
    num_nodes: PositiveInt = 1
    strategy: Literal["auto", "ddp"] = "auto"
    compile: AutoOrBool = Field("auto", description="torch.compile the model; auto = on with CUDA")
    encoder_head_lr_scale: Positive = Field(
        1.0, description="lr multiplier of the encoder's last Linear at step 0 (docs/LEARNING.md)"
    )
    encoder_head_lr_ramp_steps: NonNegativeInt = Field(
        0, description="steps over which that multiplier rises geometrically to 1; 0 = it stays"
    )
    lr_warmup_steps: NonNegativeInt = Field(
        0, description="optimizer steps of a linear lr warm-up from lr/steps to lr; 0 = none"
    )


class MLflowConfig(Section):
    """logging.mlflow: where the mlflow logger sends a run (one store for many runs, to compare them)."""

    tracking_uri: StrictStr | None = Field(
        None,
        description="MLflow store or server; null: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the "
        "working directory",
    )
    experiment: StrictStr | None = Field(None, description="MLflow experiment; null: the experiment's name")


class WandbConfig(Section):
    """logging.wandb: where the wandb logger sends a run."""

    project: StrictStr | None = Field(None, description="W&B project; null: the experiment's name")
    entity: StrictStr | None = Field(None, description="W&B team or user; null: your default entity")


class LoggingConfig(Section):
    """logging: where runs go and what is recorded."""

    save_dir: StrictStr = Field(description="parent of the CLI's run directories")
    recon_every_n_epochs: PositiveInt
    num_recon_samples: NonNegativeInt
    loggers: Annotated[
        list[StrictStr],
        check(lambda v: not set(v) - set(LOGGERS), f"names an unknown logger; known: {list(LOGGERS)}"),
        check(
            lambda v: "csv" in v and len(set(v)) == len(v), "must list csv (metrics.csv) and each logger once"
        ),
    ] = Field(["csv", "tensorboard"], description="csv writes metrics.csv and is always kept")
    progress_every_n_steps: PositiveInt = Field(
        50, description="progress lines in train.log without a terminal"
    )
    diagnostics_every_n_epochs: PositiveInt = Field(
        1, description="val/z_dependence and val/spatial_share (two extra decodes) every n epochs"
    )
    mlflow: MLflowConfig = Field(
        default_factory=MLflowConfig, description="used when logging.loggers lists mlflow"
    )
    wandb: WandbConfig = Field(
        default_factory=WandbConfig, description="used when logging.loggers lists wandb"
    )


class ExperimentConfig(Section):
    """An experiment config: the five sections of the request's YAML."""

    data: DataConfig
    model: ModelConfig
    loss: Section
    train: TrainConfig
    logging: LoggingConfig

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data (YAML files, run identities, Snakemake params): defaults filled in."""
        return self.model_dump(mode="json")


# ---- the config model of each experiment (the sections the request's YAML defines per variant) ----
# The registry (vae_dynamics/experiments.py) names each one; CONFIG_MODELS below selects it by model.variant.

# Exp1: the baseline VAE -------------------------------------------------------------------------


class Exp1Model(ModelConfig):
    variant: Literal["baseline_vae"]


class Exp1Loss(Section):
    beta_kl_target: NonNegative = Field(description="β of the KL term after the warm-up")
    beta_kl_annealing_epochs: NonNegativeInt = Field(description="epochs of the linear β warm-up from 0")


class Exp1Config(ExperimentConfig):
    model: Exp1Model
    loss: Exp1Loss


# Exp2: β-TCVAE with a Spatial Broadcast Decoder ------------------------------------------------


class Exp2Model(ModelConfig):
    variant: Literal["tcvae_sbd"]
    sbd_grid_size: Annotated[
        list[StrictInt], check(lambda v: v == [8, 8, 8], "is fixed to [8, 8, 8] (do not change)")
    ] = Field(default_factory=lambda: [8, 8, 8])
    # Not in the request's YAML: how the SBD starts (docs/LEARNING.md).
    sbd_z_gain: NonNegative = Field(
        0.1, description="initial gain of the z columns of the SBD's 1×1×1 projection"
    )
    sbd_coord_gain: Positive = Field(1.0, description="initial gain of its coordinate columns")
    sbd_project_norm: StrictBool = Field(True, description="GroupNorm after the projection")
    logvar_init_bias: Annotated[
        Number, check(lambda v: -20 <= v <= 5, "must lie in [-20, 5] (sigma from 4.5e-5 to 12)")
    ] = Field(-7.0, description="initial bias of the encoder's log σ² output (σ = 0.03; docs/LEARNING.md)")


class Exp2Loss(Section):
    alpha: NonNegative = Field(description="weight of the index-code mutual information")
    gamma: NonNegative = Field(description="weight of the dimension-wise KL")
    beta_tc_target: NonNegative = Field(description="weight of the total correlation after the warm-up")
    beta_tc_annealing_epochs: NonNegativeInt = Field(description="epochs of the linear β_tc warm-up from 0")
    compute_in_fp32: StrictBool = Field(description="the log-density terms of the MWS estimator in float32")


class Exp2Train(TrainConfig):
    # The request also calls loss.compute_in_fp32 "train.compute_tcvae_terms_in_fp32" (an alias).
    compute_tcvae_terms_in_fp32: StrictBool | None = Field(None, exclude=True)
    encoder_head_lr_scale: Positive = Field(
        0.01, description="Exp2: the encoder head starts at lr/100 (docs/LEARNING.md)"
    )
    encoder_head_lr_ramp_steps: NonNegativeInt = Field(
        0, description="Exp2: ... and reaches lr after this many steps (geometric ramp; 0: it stays)"
    )


class Exp2Config(ExperimentConfig):
    model: Exp2Model
    loss: Exp2Loss
    train: Exp2Train

    @model_validator(mode="after")
    def _alias_agrees(self) -> Exp2Config:
        alias = self.train.compute_tcvae_terms_in_fp32
        if alias is not None and alias != self.loss.compute_in_fp32:
            raise ValueError(
                "train.compute_tcvae_terms_in_fp32 contradicts loss.compute_in_fp32 "
                "(they are the same switch; set only loss.compute_in_fp32)"
            )
        return self


def default(section: type[Section], key: str) -> Any:
    """The schema's default of `key` in a section: the one home of a default that a class also needs
    (a model constructed directly gets the start a config would give it)."""
    field = section.model_fields[key]
    value = field.get_default(call_default_factory=True)
    if value is PydanticUndefined:
        raise KeyError(f"{section.__name__}.{key} has no default in the schema")
    return value


def section_model(model: type[ExperimentConfig], section: str) -> type[Section]:
    """The model of one section of an experiment's config model (its `model`, `loss`, ...)."""
    annotation = model.model_fields[section].annotation
    if not (isinstance(annotation, type) and issubclass(annotation, Section)):
        raise TypeError(f"{model.__name__}.{section} is not a config section")
    return annotation


def variant_of(model: type[ExperimentConfig]) -> str:
    """The model.variant that selects an experiment's config model (its `Literal`)."""
    (variant,) = get_args(section_model(model, "model").model_fields["variant"].annotation)
    return str(variant)


# model.variant -> the experiment's config model; a config is validated as their union, discriminated on it.
# The shipped experiments' below; a plugin's is added by its registry record (experiments.register).
CONFIG_MODELS: dict[str, type[ExperimentConfig]] = {variant_of(m): m for m in (Exp1Config, Exp2Config)}


def register_config_model(model: type[ExperimentConfig]) -> None:
    """Add an experiment's config model to the union (selected by the `Literal` of its model.variant)."""
    variant = variant_of(model)
    known = CONFIG_MODELS.get(variant, model)
    if known is not model:
        raise ConfigError(f"model.variant {variant!r} is already the variant of {known.__name__}")
    CONFIG_MODELS[variant] = model
    config_adapter.cache_clear()


def _variant(value: Any) -> Any:
    if isinstance(value, ExperimentConfig):
        return value.model.variant
    model = value.get("model") if isinstance(value, Mapping) else None
    return model.get("variant") if isinstance(model, Mapping) else None


@functools.cache
def config_adapter() -> TypeAdapter[ExperimentConfig]:
    """The union of CONFIG_MODELS, discriminated on model.variant (a type made at run time: mypy sees only
    the declared type)."""
    tagged = tuple(Annotated[m, Tag(v)] for v, m in CONFIG_MODELS.items())
    return TypeAdapter(Annotated[Union[tagged], Discriminator(_variant)])  # type: ignore[arg-type]  # noqa: UP007


# ---- errors -----------------------------------------------------------------------------------------


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith("function-"):  # validator frames of Annotated types
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def _fields_of(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the section a location points into (for 'valid keys' hints)."""
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if (
            field is None
            or not isinstance(field.annotation, type)
            or not issubclass(field.annotation, BaseModel)
        ):
            return []
        model = field.annotation
    return sorted(model.model_fields)


_KIND = {
    "bool_type": "expected true or false",
    "int_type": "expected an integer",
    "float_type": "expected a number",
    "string_type": "expected a string",
    "list_type": "expected a list",
    "model_type": "expected a mapping of keys",
    "dict_type": "expected a mapping of keys",
}


def describe_errors(exc: ValidationError, model: type[BaseModel]) -> list[str]:
    """One line per problem: '<dotted key>: <value> <what is wrong>'."""
    lines = []
    for err in exc.errors(include_url=False):
        loc, kind, value = tuple(err["loc"]), err["type"], err.get("input")
        if loc and loc[0] in CONFIG_MODELS:  # the union's tag: the variant, not a key
            loc = loc[1:]
        key = _dotted(loc)
        if kind in ("union_tag_invalid", "union_tag_not_found"):
            variant = _variant(value)
            lines.append(
                f"model.variant: {variant!r} is not a known experiment variant; "
                f"valid variants: {sorted(CONFIG_MODELS)}"
            )
        elif kind == "missing":
            lines.append(f"{key}: missing required key" if len(loc) > 1 else f"{key}: missing section")
        elif kind == "extra_forbidden":
            valid = _fields_of(model, loc)
            where = f"valid keys in {_dotted(loc[:-1])}" if len(loc) > 1 else "valid sections"
            lines.append(f"{key}: unknown key; {where}: {valid}")
        elif kind == "finite_number":
            lines.append(f"{key}: {value!r} is not a finite number (NaN and ±inf are not allowed)")
        elif kind == "literal_error":
            lines.append(f"{key}: {value!r} must be one of {err['ctx']['expected']}")
        elif kind in ("too_short", "too_long"):
            lines.append(f"{key}: expected {err['ctx'].get('min_length')} values, got {value!r}")
        elif kind == "value_error":
            text = err["msg"].removeprefix("Value error, ")
            lines.append(f"{key}: {text}" if key else text)
        elif kind in _KIND:
            lines.append(f"{key}: {_KIND[kind]}, got {value!r} ({type(value).__name__})")
        else:
            lines.append(f"{key}: {value!r}: {err['msg']}")
    return lines


def validate_sections(raw: Any) -> ExperimentConfig:
    """Validate `raw` against the config model its model.variant selects; the frozen, typed config."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config must be a mapping of sections, got {type(raw).__name__}")
    try:
        return config_adapter().validate_python(raw)
    except ValidationError as exc:
        lines = describe_errors(exc, CONFIG_MODELS.get(_variant(raw), ExperimentConfig))
        head = f"{len(lines)} problems:\n  " if len(lines) > 1 else ""
        raise ConfigError(head + "\n  ".join(lines)) from None
