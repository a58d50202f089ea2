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
    expected = {
        "Snakefile",
        "rules/training.smk",
        "profiles/slurm/config.yaml",
        "profiles/default/config.yaml",
        "workflow/scripts/train.py",
        "workflow/envs/vae_dynamics.yaml",
        "config/demo.yaml",
        "src/vae_dynamics/py.typed",
        "CITATION.cff",
    }
    assert expected <= files, expected - files


def _lock(*files: str) -> dict[str, str]:
    """requirements/<files>: normalised name -> exact version."""
    pins = {}
    for file in files or ("runtime.txt", "dev.txt"):
        for line in (REPO / "requirements" / file).read_text().splitlines():
            if line and not line.startswith(("#", "-r")):
                name, version = line.split("==")
                pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_the_locks_pin_every_dependency_exactly_and_satisfy_pyproject():
    """The runtime lock holds the package's dependencies and its workflow, demo, export, slurm and tracker
    extras, and no dev tool; the dev lock adds the rest."""
    from packaging.requirements import Requirement

    runtime, dev = _lock("runtime.txt"), _lock("dev.txt")
    assert runtime["torch"] == "2.13.0" and "snakemake" in runtime and "vae-dynamics" not in runtime
    assert not {"pytest", "mypy", "ruff", "mkdocs"} & runtime.keys() and not runtime.keys() & dev.keys()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    shipped = [
        *project["dependencies"],
        *(s for e in ("workflow", "demo", "export", "slurm", "wandb", "mlflow") for s in extras[e]),
    ]
    tools = [s for s in [*extras["dev"], *extras["docs"]] if not s.startswith("vae_dynamics")]
    for specs, pins, where in [(shipped, runtime, "runtime"), (tools, {**runtime, **dev}, "runtime or dev")]:
        for spec in specs:
            req = Requirement(spec)
            name = re.sub(r"[-_.]+", "-", req.name).lower()
            assert name in pins, f"{spec}: not in requirements/{where}.txt"
            assert req.specifier.contains(pins[name], prereleases=True), (
                f"lock {name}=={pins[name]} breaks {spec}"
            )


def test_the_library_alone_needs_no_workflow_engine():
    """`pip install vae_dynamics` (no extras) gives a library that loads runs and encodes scans: its core
    dependencies hold neither Snakemake nor nilearn, and the modules a library user imports do not import
    them."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {re.split(r"[<>=\[ ]", spec)[0].lower() for spec in project["dependencies"]}
    assert not core & {"snakemake", "nilearn", "configargparse", "jsonschema", "pytest"}
    code = (
        "import sys\nimport vae_dynamics.inference, vae_dynamics.evaluation.new_scans, vae_dynamics.cli\n"
        "import vae_dynamics.training.run, vae_dynamics.pipeline.plan\n"
        "print(sorted(m for m in ('snakemake', 'nilearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_an_install_from_the_lock_has_exactly_the_locks_versions():
    """After `make install` (LOCK=1, which copies the lock to .venv/.lock): every installed version is the
    lock's, so provenance.json records the lock's versions."""
    import importlib.metadata as md

    marker = Path(sys.prefix) / ".lock"
    if not marker.is_file():
        pytest.skip("this environment was not installed from the lock (make install LOCK=0, or another venv)")
    locks = [(REPO / "requirements" / f).read_text() for f in ("runtime.txt", "dev.txt")]
    assert marker.read_text() == "".join(locks), "lock changed: make install"
    wrong = {n: (v, md.version(n)) for n, v in _lock().items() if md.version(n).split("+")[0] != v}
    assert wrong == {}


def test_the_conda_env_and_the_apptainer_image_install_exactly_the_lock():
    """Neither adds an unpinned package nor a dev tool: both install requirements/runtime.txt, then the
    package itself without resolving anything else (Apptainer cannot be installed here to build it)."""
    env = yaml.safe_load((REPO / "workflow" / "envs" / "vae_dynamics.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip == ["-r ../../requirements/runtime.txt", "-e ../.."]
    assert "python=3.11" in env["dependencies"]  # the python the lock was made with
    definition = (REPO / "containers" / "vae_dynamics.def").read_text()
    post = definition.split("%post", 1)[1].split("%environment", 1)[0]
    installs = [line.strip() for line in post.splitlines() if "pip install" in line]
    assert installs == [
        "/opt/venv/bin/python -m pip install --no-cache-dir --upgrade pip",
        "/opt/venv/bin/python -m pip install --no-cache-dir -r /opt/vae_dynamics/requirements/runtime.txt",
        "/opt/venv/bin/python -m pip install --no-cache-dir --no-deps /opt/vae_dynamics",
    ]
    assert "requirements/runtime.txt /opt/vae_dynamics/requirements/runtime.txt" in definition
    assert "python3.11 -m venv" in post


def _copy_of_the_working_tree(dest: Path) -> Path:
    """The tracked and untracked-but-not-ignored files, in a new git repository, with this .venv."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes((REPO / name).read_bytes())
    (dest / ".venv").symlink_to(Path(sys.prefix))
    for args in (["init", "-q"], ["add", "-A"]):
        subprocess.run(["git", *args], cwd=dest, check=True)
    return dest


@pytest.mark.slow
def test_pre_commit_runs_every_hook_offline_and_fails_on_a_type_error(tmp_path):
    """`pre-commit run --all-files` on a copy of this tree: every local hook runs from .venv (nothing is
    cloned, so no network is needed) and passes; a type error in the package then fails the mypy hook."""
    work = _copy_of_the_working_tree(tmp_path / "tree")
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PRE_COMMIT_HOME": str(tmp_path / "cache"),
        "MYPY_CACHE_DIR": str(tmp_path / "mypy_cache"),
    }

    def pre_commit() -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(work / ".venv/bin/pre-commit"), "run", "--all-files"],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    clean = pre_commit()
    assert clean.returncode == 0, clean.stdout[-3000:] + clean.stderr[-2000:]
    for hook in ("ruff check", "ruff format", "snakefmt", "mypy"):
        assert re.search(rf"^{re.escape(hook)}.*Passed$", clean.stdout, flags=re.M), clean.stdout
    module = work / "src/vae_dynamics/parallel.py"
    module.write_text(module.read_text() + '\n\ndef broken() -> int:\n    return "not an int"\n')
    broken = pre_commit()
    assert broken.returncode != 0
    assert re.search(r"^mypy.*Failed$", broken.stdout, flags=re.M), broken.stdout
    assert 'Incompatible return value type (got "str", expected "int")' in broken.stdout


def test_every_bench_results_file_the_docs_cite_is_in_git():
    """A results file named in docs/ or the README is tracked (`.gitignore` once swallowed bench/results/).
    The exceptions: the GPU record, lost before it was committed (the docs must say so, and the next
    `make bench-gpu` on an H100/H200 writes it again), and the GPU learning run, which has not run yet
    (docs/LEARNING.md must say so until `make bench-gpu-learning` writes it)."""
    lost = {"bench/results/gpu.json"}
    pending = {"bench/results/gpu_learning.json"}
    cited = {
        m
        for doc in [*REPO.glob("docs/*.md"), REPO / "README.md"]
        for m in re.findall(r"bench/results/[\w.-]+\.json", doc.read_text())
    }
    tracked = set(
        subprocess.run(
            ["git", "ls-files", "bench/results"], cwd=REPO, check=True, capture_output=True, text=True
        ).stdout.split()
    )
    assert cited - tracked - lost - pending == set()
    ignored = subprocess.run(["git", "check-ignore", "bench/results/x.json"], cwd=REPO, capture_output=True)
    assert ignored.returncode == 1  # not ignored
    performance = (REPO / "docs" / "PERFORMANCE.md").read_text()
    for path in lost - tracked:
        assert f"`{path}`) was lost" in performance, path
    learning = (REPO / "docs" / "LEARNING.md").read_text()
    for path in pending - tracked:
        assert f"`{path}` does not exist yet" in learning, path
