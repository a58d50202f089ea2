"""The experiment records are the one place that lists experiments; everything else reads them, and the
classes of each are wired by reference (models.MODELS, losses.OBJECTIVES, lit_modules.LIT_MODULES)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from vae_dynamics import experiments
from vae_dynamics.config import ConfigError, config_path, load_config

REPO = Path(__file__).resolve().parents[1]


def test_each_experiment_is_one_record_with_its_yaml_schema_model_loss_and_module():
    from vae_dynamics import models
    from vae_dynamics.losses import OBJECTIVES, TCVAEObjective, VAEObjective
    from vae_dynamics.models import MODELS, TCVAESBD, BaselineVAE
    from vae_dynamics.training.lit_modules import LIT_MODULES, TCVAELitModule, VAELitModule

    assert list(experiments.EXPERIMENTS) == ["exp2", "exp1"]
    for e in experiments.EXPERIMENTS.values():
        cfg = load_config(e.yaml_path, {"model.base_filters": 16})
        assert experiments.of(cfg) is e and cfg.model.variant == e.variant
        assert e.yaml_path.stem == e.name and config_path(e.key) == e.yaml_path
        assert e.warmup_epochs(cfg.loss) == 40
        assert type(models.build(cfg)) is MODELS[e.variant]
    exp2, exp1 = experiments.get("exp2_tcvae_sbd"), experiments.get("exp1")
    wiring = [(MODELS[v], OBJECTIVES[v], LIT_MODULES[v]) for v in (exp2.variant, exp1.variant)]
    assert wiring == [(TCVAESBD, TCVAEObjective, TCVAELitModule), (BaselineVAE, VAEObjective, VAELitModule)]
    with pytest.raises(ConfigError, match=r"model\.variant: 'ode' is not a known experiment variant"):
        experiments.of({"model": {"variant": "ode"}})


def test_no_class_is_loaded_from_a_string():
    """grep: no importlib, no entry points, no import paths as strings in the package."""
    offenders = [
        f"{f.relative_to(REPO)}:{i}: {line.strip()}"
        for f in (REPO / "src/vae_dynamics").rglob("*.py")
        for i, line in enumerate(f.read_text().splitlines(), 1)
        if re.search(r"import_module|entry_points|__import__", line)
        or re.search(r"[\"']vae_dynamics(\.\w+)+:\w+[\"']", line)
    ]
    assert not offenders, offenders


def test_no_other_place_decides_by_experiment_name():
    """grep: outside the registry, the config models (config/schema.py, whose model.variant Literal is the
    variant), the YAMLs and the tests, no code spells an experiment's variant or name."""
    names = [e.variant for e in experiments.EXPERIMENTS.values()] + [
        e.name for e in experiments.EXPERIMENTS.values()
    ]
    pattern = re.compile("|".join(re.escape(f'"{n}"') for n in names))
    files = [
        *REPO.glob("src/**/*.py"),
        *REPO.glob("rules/*.smk"),
        REPO / "Snakefile",
        *REPO.glob("workflow/**/*.py"),
        *REPO.glob("bench/*.py"),
    ]
    offenders = [
        f"{f.relative_to(REPO)}:{i}: {line.strip()}"
        for f in files
        if f.relative_to(REPO).as_posix()
        not in ("src/vae_dynamics/experiments.py", "src/vae_dynamics/config/schema.py")
        for i, line in enumerate(f.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not offenders, offenders


def test_the_cli_and_the_config_commands_do_not_import_torch():
    code = (
        "import sys\nfrom vae_dynamics.cli import main\n"
        "main(['config', 'validate', '--config', 'src/vae_dynamics/config/exp2_tcvae_sbd.yaml'])\n"
        "main(['experiments'])\n"
        "print('HEAVY', sorted(m for m in ('torch', 'monai', 'lightning') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr
    assert "exp2  model.variant=tcvae_sbd" in out.stdout


def test_scripts_train_is_the_train_subcommand_and_the_only_other_door():
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "--resume" in out.stdout and "usage: vae-dynamics train" in out.stdout
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"vae-dynamics": "vae_dynamics.cli:main"}


def test_the_run_directory_layout_is_spelled_only_in_run_dir():
    """grep: the names inside a run directory appear as path literals only in training/run_dir.py (RunDir),
    and where a library fixes them: the Lightning loggers' folder names (tracking.py, which RunDir.logs
    mirrors) and Lightning's last.ckpt inside any checkpoint folder (checkpointing.py)."""
    names = (
        "checkpoints",
        "splits",
        "config_resolved.yaml",
        "train.log",
        "logs",
        "recon",
        "provenance.json",
        "preprocessing.json",
        "last.ckpt",
        "train.lock",
    )
    pattern = re.compile(r"""/ ["'](""" + "|".join(re.escape(n) for n in names) + r""")["']""")
    allowed = {
        "training/run_dir.py": None,
        "training/tracking.py": {"logs"},
        "training/checkpointing.py": {"last.ckpt"},
    }
    offenders = []
    for f in (REPO / "src/vae_dynamics").rglob("*.py"):
        where = f.relative_to(REPO / "src/vae_dynamics").as_posix()
        for i, line in enumerate(f.read_text().splitlines(), 1):
            for m in pattern.finditer(line):
                if where in allowed and (allowed[where] is None or m.group(1) in allowed[where]):
                    continue
                offenders.append(f"{where}:{i}: {line.strip()}")
    assert not offenders, offenders
