"""Experiment configs: the shipped YAMLs, overrides, and errors that name the bad key."""

import pytest
import yaml

from vae_dynamics.config import ConfigError, config_path, load_config, save_config

EXP2_KEYS = {
    "data": {
        "root_dir",
        "modalities",
        "roi_size",
        "spacing",
        "orientation",
        "batch_size",
        "num_workers",
        "cache_rate",
        "val_split",
    },
    "model": {"variant", "z_dim", "input_channels", "base_filters", "norm", "sbd_grid_size"},
    "loss": {"alpha", "gamma", "beta_tc_target", "beta_tc_annealing_epochs", "compute_in_fp32"},
    "train": {"seed", "max_epochs", "lr", "precision", "gradient_checkpointing"},
    "logging": {"save_dir", "recon_every_n_epochs", "num_recon_samples"},
}
# What the request leaves open, with the defaults chosen by bench/learning.py and bench/code_use.py
# (docs/LEARNING.md).
SBD_START_DEFAULTS = {
    "sbd_z_gain": 0.1,
    "sbd_coord_gain": 1.0,
    "sbd_project_norm": True,
    "logvar_init_bias": -7.0,
}
TRAIN_START_DEFAULTS = {
    "encoder_head_lr_scale": 0.01,
    "encoder_head_lr_ramp_steps": 0,
    "lr_warmup_steps": 0,
}


def test_exp2_yaml_has_exactly_the_requested_keys_and_values():
    raw = yaml.safe_load(config_path("exp2_tcvae_sbd").read_text())
    assert {k: set(v) for k, v in raw.items()} == EXP2_KEYS
    cfg = load_config(config_path("exp2_tcvae_sbd"))
    assert cfg.data.root_dir == "/media/mpascual/PortableSSD/Meningiomas/BraTS/BraTS_Men_Train"
    assert cfg.data.batch_size == 8 and cfg.data.val_split == 0.1
    requested = {k: v for k, v in cfg.model.model_dump().items() if k in EXP2_KEYS["model"]}
    assert requested == {
        "variant": "tcvae_sbd",
        "z_dim": 128,
        "input_channels": 4,
        "base_filters": 32,
        "norm": "GROUP",
        "sbd_grid_size": [8, 8, 8],
    }
    # keys the request leaves open, with the defaults chosen by bench/learning.py (docs/LEARNING.md)
    assert {
        k: v for k, v in cfg.model.model_dump().items() if k not in EXP2_KEYS["model"]
    } == SBD_START_DEFAULTS
    assert {k: getattr(cfg.train, k) for k in TRAIN_START_DEFAULTS} == TRAIN_START_DEFAULTS
    assert cfg.loss.model_dump() == {
        "alpha": 1.0,
        "gamma": 1.0,
        "beta_tc_target": 6.0,
        "beta_tc_annealing_epochs": 40,
        "compute_in_fp32": True,
    }
    assert cfg.train.lr == 1e-4  # '1e-4' is a string to PyYAML; the loader reads it as a float
    assert cfg.train.precision == "16-mixed" and cfg.train.gradient_checkpointing is True


def test_exp1_yaml_mirrors_exp2_with_its_own_variant_and_loss():
    exp1, exp2 = load_config(config_path("exp1_baseline_vae")), load_config(config_path("exp2_tcvae_sbd"))
    assert exp1.model.variant == "baseline_vae"
    assert exp1.loss.model_dump() == {"beta_kl_target": 1.0, "beta_kl_annealing_epochs": 40}
    assert exp1.data == exp2.data
    # the same training settings, but for the keys only Exp2 has and Exp2's start (head lr, warm-up)
    exp2_train = {k: v for k, v in exp2.train.model_dump().items() if k != "compute_tcvae_terms_in_fp32"}
    exp1_start = {"encoder_head_lr_scale": 1.0, "encoder_head_lr_ramp_steps": 0}
    assert exp1.train.model_dump() == {**exp2_train, **exp1_start}


def test_dotted_overrides_are_parsed_as_yaml_before_validation():
    cfg = load_config(
        config_path("exp2_tcvae_sbd"), ["train.max_epochs=3", "data.batch_size=2", "train.lr=3e-4"]
    )
    assert cfg.train.max_epochs == 3 and cfg.data.batch_size == 2 and cfg.train.lr == 3e-4


@pytest.mark.parametrize(
    "override,key",
    [
        (["model.base_filters=8"], "model.base_filters"),
        (["model.sbd_grid_size=[4, 4, 4]"], "model.sbd_grid_size"),
        (["data.val_split=1.0"], "data.val_split"),
        (["data.val_split=0"], "data.val_split"),
        (["data.roi_size=[96, 96, 96]"], "data.roi_size"),
        (["train.max_epochs=ten"], "train.max_epochs"),
        (["train.gradient_checkpointing=maybe"], "train.gradient_checkpointing"),
        (["loss.beta_tc_targt=6.0"], "loss.beta_tc_targt"),
        (["model.variant=ode"], "model.variant"),
        (["train.precision=8-bit"], "train.precision"),
        (["data.modalities=[t1c, t1n, t2f]"], "data.modalities"),
        (["loss.beta_kl_target=1.0"], "loss.beta_kl_target"),
        (["train.precision=64-true"], "train.precision"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("[", r"\[")):
        load_config(config_path("exp2_tcvae_sbd"), override)


@pytest.mark.parametrize(
    "override,message",
    [
        ("loss.alpha=.nan", r"loss\.alpha: nan is not a finite number"),
        ("loss.gamma=-5", r"loss\.gamma: -5\.0 must be >= 0"),
        ("loss.beta_tc_target=-inf", r"loss\.beta_tc_target: -inf is not a finite number"),
        ("loss.beta_tc_target=.nan", r"loss\.beta_tc_target: nan is not a finite number"),
        ("train.lr=.inf", r"train\.lr: inf is not a finite number"),
        ("train.lr='nan'", r"train\.lr: nan is not a finite number"),
        ("train.lr=0", r"train\.lr: 0\.0 must be > 0"),
        ("data.spacing=[1.0, .nan, 1.0]", r"data\.spacing\[1\]: nan is not a finite number"),
        ("data.fov_mm=.inf", r"data\.fov_mm: inf is not a finite number"),
        ("data.cache_rate=.nan", r"data\.cache_rate: nan is not a finite number"),
        # finite but absurd: 1 µm voxels ask for ~10^18 voxels, 1e308 mm for an infinite crop
        ("data.spacing=[1e-6, 1e-6, 1e-6]", r"data\.spacing\[0\]: 1e-06 must lie in \[0\.25, 8\] mm"),
        ("data.fov_mm=1e308", r"data\.fov_mm: 1e\+308 must lie in \[64, 512\] mm"),
    ],
)
def test_non_finite_and_negative_numbers_are_rejected_naming_key_and_value(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(config_path("exp2_tcvae_sbd"), [override])


def test_exp1_beta_rejects_non_finite_values():
    with pytest.raises(ConfigError, match=r"loss\.beta_kl_target: inf"):
        load_config(config_path("exp1_baseline_vae"), ["loss.beta_kl_target=.inf"])


def test_missing_key_and_unknown_section_are_errors(tmp_path):
    raw = yaml.safe_load(config_path("exp2_tcvae_sbd").read_text())
    del raw["loss"]["alpha"]
    raw["extra"] = {"a": 1}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="extra"):
        load_config(path)
    del raw["extra"]
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"loss\.alpha: missing"):
        load_config(path)


def test_compute_in_fp32_alias_must_agree():
    cfg = load_config(config_path("exp2_tcvae_sbd"), ["train.compute_tcvae_terms_in_fp32=true"])
    assert cfg.loss.compute_in_fp32 is True and "compute_tcvae_terms_in_fp32" not in cfg.train
    with pytest.raises(ConfigError, match="compute_tcvae_terms_in_fp32"):
        load_config(config_path("exp2_tcvae_sbd"), ["train.compute_tcvae_terms_in_fp32=false"])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(config_path("exp2_tcvae_sbd"), ["train.max_epochs=7"])
    save_config(cfg, tmp_path / "config_resolved.yaml")
    assert load_config(tmp_path / "config_resolved.yaml") == cfg


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.sbd_z_gain=-0.1", r"model\.sbd_z_gain: -0\.1 must be >= 0"),
        ("model.sbd_coord_gain=0", r"model\.sbd_coord_gain: 0\.0 must be > 0"),
        ("model.sbd_project_norm=sometimes", r"model\.sbd_project_norm: expected true or false"),
        ("model.logvar_init_bias=-50", r"model\.logvar_init_bias: -50\.0 must lie in \[-20, 5\]"),
        ("model.logvar_init_bias=.nan", r"model\.logvar_init_bias: nan is not a finite number"),
        ("train.encoder_head_lr_scale=0", r"train\.encoder_head_lr_scale: 0\.0 must be > 0"),
        ("train.lr_warmup_steps=-1", r"train\.lr_warmup_steps: -1 must be >= 0"),
        ("train.encoder_head_lr_ramp_steps=1.5", r"train\.encoder_head_lr_ramp_steps: .*integer"),
    ],
)
def test_sbd_start_keys_are_validated(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(config_path("exp2_tcvae_sbd"), [override])


def test_sbd_start_keys_belong_to_exp2_and_exp1_keeps_a_plain_encoder_head():
    with pytest.raises(ConfigError, match=r"model\.sbd_z_gain"):
        load_config(config_path("exp1_baseline_vae"), ["model.sbd_z_gain=0.1"])
    assert load_config(config_path("exp1_baseline_vae")).train.encoder_head_lr_scale == 1.0


def test_every_problem_is_reported_at_once_with_key_and_value():
    bad = [
        "data.batch_size=0",
        "loss.beta_tc_targt=3",
        "train.lr=.nan",
        "model.z_dim=64",
        "data.roi_size=[96, 96, 96]",
    ]
    with pytest.raises(ConfigError) as info:
        load_config(config_path("exp2_tcvae_sbd"), bad)
    text = str(info.value)
    assert "5 problems" in text
    for line in (
        "data.batch_size: 0 must be > 0",
        "loss.beta_tc_targt: unknown key",
        "train.lr: nan is not a finite number",
        "model.z_dim: 64 is fixed to 128",
        "data.roi_size: [96, 96, 96] must be [128, 128, 128]",
    ):
        assert line in text, (line, text)


def test_the_published_json_schema_is_the_schema_of_the_code():
    """docs/config.schema.json is regenerated by `vae-dynamics config schema --out
    docs/config.schema.json`."""
    from pathlib import Path

    from vae_dynamics.config.loader import json_schema_text

    published = Path(__file__).resolve().parents[1] / "docs" / "config.schema.json"
    assert published.read_text() == json_schema_text()
    schema = yaml.safe_load(published.read_text())
    exp2 = schema["$defs"]["Exp2Config"]
    assert set(exp2["required"]) == set(EXP2_KEYS)
    assert schema["$defs"]["Exp2Model"]["additionalProperties"] is False


def test_the_documented_key_reference_is_the_schema_of_the_code():
    """docs/config-keys.md is regenerated by `vae-dynamics config schema --format markdown --out
    docs/config-keys.md`; it lists every key of both experiments with the schema's default."""
    from pathlib import Path

    from vae_dynamics.config.loader import schema_markdown

    published = Path(__file__).resolve().parents[1] / "docs" / "config-keys.md"
    assert published.read_text() == schema_markdown()
    text = published.read_text()
    assert (
        "| `model.sbd_z_gain` | `float` | `0.1` |" in text
        and "| `loss.beta_tc_target` | `float` |  |" in text
    )


def test_the_json_schema_accepts_the_shipped_configs_and_refuses_a_bad_one():
    import jsonschema

    from vae_dynamics.config import json_schema

    schema = json_schema()
    for name in ("exp1_baseline_vae", "exp2_tcvae_sbd"):
        raw = yaml.safe_load(config_path(name).read_text())
        raw["train"]["lr"] = float(raw["train"]["lr"])  # '1e-4' is a string to PyYAML (the loader reads it)
        jsonschema.validate(raw, schema)
        raw["model"]["z_dim"] = "many"
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(raw, schema)


def test_a_resolved_config_is_validated_when_loaded(tmp_path):
    from vae_dynamics.training.run_dir import ResumeError, RunDir

    cfg = load_config(config_path("exp2_tcvae_sbd")).to_dict()
    cfg["loss"]["beta_tc_target"] = -1.0  # a hand-edited config_resolved.yaml
    save_config(cfg, tmp_path / "config_resolved.yaml")
    with pytest.raises(ResumeError, match=r"loss\.beta_tc_target: -1\.0 must be >= 0"):
        RunDir(tmp_path).saved_config()


def test_the_cli_reports_config_errors_without_a_traceback(capsys):
    from vae_dynamics.cli import main

    with pytest.raises(SystemExit) as info:
        main(["config", "validate", "--config", str(config_path("exp1")), "--set", "train.lr=-1"])
    assert "train.lr: -1.0 must be > 0" in str(info.value.code)
    main(["config", "show", "--config", str(config_path("exp2")), "--set", "train.max_epochs=3"])
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["train"]["max_epochs"] == 3 and shown["model"]["sbd_grid_size"] == [8, 8, 8]
