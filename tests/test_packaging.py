"""The package as a release: its version line, its citation, and what the sdist carries."""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
from pathlib import Path

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
