"""The commands the README and the documentation show work as shown: every `vae-dynamics` command line
parses with the real command-line parser (and the cheap ones run), every `snakemake` command line plans
as a dry run on the demo subjects, and the site builds with `mkdocs build --strict`."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, make_workdir, snakemake

from vae_dynamics.cli import build_parser

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PROGRAM = re.compile(r"^(?:\.venv/bin/)?(vae-dynamics|snakemake)\s")
# Command lines that a dry run on the demo subjects cannot stand for, each for its reason.
NOT_DRY_RUN = {
    "--use-conda": "builds a conda environment",
    "--unlock": "acts on a real run's lock",
    "profiles/slurm": "needs a SLURM cluster (tests/test_slurm.py runs it)",
    "my_sweep.yaml": "the reader's own file",
    "encoded/": "needs the reader's encode set",
}


def command_lines() -> list[tuple[str, str]]:
    """(page, command) for every command line inside a code block: indented by 4 or fenced."""
    found = []
    for page in PAGES:
        fenced = False
        for line in page.read_text().splitlines():
            if line.lstrip().startswith("```"):
                fenced = not fenced
                continue
            if not (fenced or line.startswith("    ")):
                continue
            text = line.strip().split("  #", 1)[0].strip()
            if PROGRAM.match(text):
                found.append((page.relative_to(REPO).as_posix(), text))
    return found


COMMANDS = command_lines()
CLI = [(p, c) for p, c in COMMANDS if PROGRAM.match(c).group(1) == "vae-dynamics"]  # type: ignore[union-attr]
SNAKEMAKE_LINES = [(p, c) for p, c in COMMANDS if (p, c) not in CLI]


def test_the_pages_show_both_kinds_of_command():
    assert len(CLI) >= 8 and len(SNAKEMAKE_LINES) >= 12, COMMANDS
    assert any(p == "README.md" for p, _ in SNAKEMAKE_LINES) and any(p == "README.md" for p, _ in CLI)


@pytest.mark.parametrize("page,command", CLI, ids=[f"{p}:{c[:60]}" for p, c in CLI])
def test_each_vae_dynamics_command_of_the_docs_parses(page, command):
    words = shlex.split(re.sub(r"\s*\[[^\]]*\]", "", command))[1:]  # without [optional] parts
    try:
        build_parser().parse_args(words)
    except SystemExit as exc:
        pytest.fail(f"{page}: `{command}` does not parse (exit {exc.code})")


@pytest.mark.parametrize(
    "words",
    [
        ["--help"],
        ["experiments"],
        ["config", "validate", "--config", "src/vae_dynamics/config/exp2_tcvae_sbd.yaml"],
        ["sweep", "list", "--configfile", "config/demo.yaml"],
    ],
)
def test_the_cheap_commands_of_the_docs_run(words):
    vae = str(Path(sys.executable).with_name("vae-dynamics"))
    out = subprocess.run([vae, *words], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.slow
def test_each_snakemake_command_of_the_docs_plans_as_a_dry_run(demo_root, tmp_path):
    """Each line as a user types it, with -n added and the data root pointed at the demo subjects."""
    work = make_workdir(tmp_path, demo_root)
    tried = 0
    for page, command in SNAKEMAKE_LINES:
        if any(key in command for key in NOT_DRY_RUN):
            continue
        words = shlex.split(command)[1:]
        words = [re.sub(r"^data_root=.*", f"data_root={demo_root}", w) for w in words]
        cores = words.index("--cores") if "--cores" in words else None
        if cores is not None:  # the helper sets --cores
            del words[cores : cores + 2]
        if "-n" not in words:
            words.insert(0, "-n")
        out = snakemake(work, *words, check=False)
        assert out.returncode == 0, f"{page}: `{command}`\n{out.stdout[-1500:]}\n{out.stderr[-2500:]}"
        tried += 1
    assert tried >= 10


@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path):
    mkdocs = Path(sys.executable).with_name("mkdocs")
    out = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    assert (tmp_path / "site" / "api" / "index.html").is_file()
