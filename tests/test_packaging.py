"""The package as a release: its version line, its citation, and what the sdist carries."""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest
import yaml

from vae_dynamics import __version__

REPO = Path(__file__).resolve().parents[1]


def test_version_names_the_release_and_the_code_commit():
    out = subprocess.run(
        [sys.executable, "-m", "vae_dynamics.cli", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    assert re.fullmatch(
        rf"vae-dynamics {re.escape(__version__)} \(git {commit[:12]}(, uncommitted changes)?\)\n", out.stdout
    )


def test_the_citation_cites_the_project_and_the_methods_and_data_it_implements():
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["version"] == __version__
    cited = {ref["identifiers"][0]["value"] for ref in cff["references"]}
    assert cited == {"arXiv:1802.04942", "arXiv:1901.07017", "arXiv:2305.07642"}  # β-TCVAE, SBD, BraTS-MEN


def test_the_sdist_carries_the_workflow_and_the_type_marker(tmp_path, monkeypatch):
    from setuptools import build_meta

    monkeypatch.chdir(REPO)  # the build backend works on the project in the current folder
    name = build_meta.build_sdist(str(tmp_path))
    with tarfile.open(tmp_path / name) as sdist:
        files = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    expected = {"Snakefile", "rules/training.smk", "profiles/slurm/config.yaml", "profiles/default/config.yaml",
                "workflow/scripts/train.py", "workflow/envs/vae_dynamics.yaml", "config/demo.yaml",
                "src/vae_dynamics/py.typed", "CITATION.cff"}  # fmt: skip
    assert expected <= files, expected - files


def _lock() -> dict[str, str]:
    """requirements/lock.txt: normalised name -> exact version."""
    pins = {}
    for line in (REPO / "requirements" / "lock.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_the_lock_pins_every_dependency_exactly_and_satisfies_pyproject():
    from packaging.requirements import Requirement

    pins = _lock()
    assert pins["torch"] == "2.13.0" and "snakemake" in pins and "vae-dynamics" not in pins
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for spec in [*project["dependencies"], *project["optional-dependencies"]["dev"]]:
        req = Requirement(spec)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{spec}: not in requirements/lock.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"lock {name}=={pins[name]} breaks {spec}"
        )


def test_an_install_from_the_lock_has_exactly_the_locks_versions():
    """After `make install` (LOCK=1, which copies the lock to .venv/.lock): every installed version is the
    lock's, so provenance.json records the lock's versions."""
    import importlib.metadata as md

    marker = Path(sys.prefix) / ".lock"
    if not marker.is_file():
        pytest.skip("this environment was not installed from the lock (make install LOCK=0, or another venv)")
    assert marker.read_text() == (REPO / "requirements" / "lock.txt").read_text(), (
        "lock changed: make install"
    )
    wrong = {n: (v, md.version(n)) for n, v in _lock().items() if md.version(n).split("+")[0] != v}
    assert wrong == {}


def test_the_conda_env_and_the_apptainer_image_install_exactly_the_lock():
    """Neither adds an unpinned package: both install requirements/lock.txt, then the package itself
    without resolving anything else (Apptainer cannot be installed here to build the image)."""
    env = yaml.safe_load((REPO / "workflow" / "envs" / "vae_dynamics.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip == ["-r ../../requirements/lock.txt", "-e ../.."]
    assert "python=3.11" in env["dependencies"]  # the python the lock was made with
    definition = (REPO / "containers" / "vae_dynamics.def").read_text()
    post = definition.split("%post", 1)[1].split("%environment", 1)[0]
    installs = [line.strip() for line in post.splitlines() if "pip install" in line]
    assert installs == [
        "/opt/venv/bin/python -m pip install --no-cache-dir --upgrade pip",
        "/opt/venv/bin/python -m pip install --no-cache-dir -r /opt/vae_dynamics/requirements/lock.txt",
        "/opt/venv/bin/python -m pip install --no-cache-dir --no-deps /opt/vae_dynamics",
    ]
    assert "requirements/lock.txt /opt/vae_dynamics/requirements/lock.txt" in definition
    assert "python3.11 -m venv" in post
