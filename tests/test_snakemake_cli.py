"""The commands a researcher types, through Snakemake's own argument parser (dry runs of the demo config).

`--resources` takes every following word (argparse nargs: "*" in Snakemake 5-7, "+" in 8-9): a target
after it is read as a resource. profiles/default (picked up automatically) adds `resources: [gpu=1]`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))

WORKING = {
    "no target (rule all)": ["--cores", "8", "--resources", "gpu=1", "-n"],
    "option=value": ["--cores", "8", "--resources=gpu=1", "-n", "results/exp2/done"],
    "target first": ["-n", "--cores", "8", "results/exp2/done", "--resources", "gpu=1"],
    "an option after --resources": ["--cores", "8", "--resources", "gpu=1", "-n", "results/exp2/done"],
    "-- before the target": ["-n", "--cores", "8", "--resources", "gpu=1", "--", "results/exp2/done"],
}


def dry(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(
        # --forceall: the plan shows every job also in a checkout where `make demo` has run
        [SNAKEMAKE, "--configfile", "config/demo.yaml", "--forceall", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


@pytest.mark.parametrize("form", WORKING)
def test_these_forms_build_results_exp2_done(form):
    out = dry(WORKING[form])
    assert out.returncode == 0, out.stderr[-2000:]
    assert "rule done:" in out.stdout and "results/exp2/done" in out.stdout


def test_the_literal_command_fails_with_snakemakes_own_error():
    """`snakemake --cores 8 --resources gpu=1 results/exp2/done` (here with -n first): the target is
    parsed as a resource. Snakemake < 9.16.3 says 'not enough values to unpack', later versions
    'dictionary update sequence element #1'."""
    out = dry(["-n", "--cores", "8", "--resources", "gpu=1", "results/exp2/done"])
    assert out.returncode != 0
    assert "not enough values to unpack" in out.stderr or "dictionary update sequence element" in out.stderr


def test_a_missing_data_folder_is_named_before_any_job_runs(tmp_path):
    """The shipped config's data folder exists only on its author's disk: the dry run says so, with the
    ways out, instead of a real run failing inside index_subjects' log."""
    from conftest import make_workdir, snakemake

    missing = tmp_path / "no_such_folder"
    work = make_workdir(tmp_path, missing)
    out = snakemake(work, "-n", "--", "results/exp2/done", check=False)
    said = out.stdout + out.stderr  # Snakemake prints a planning error on stdout
    assert out.returncode != 0
    assert f"the data folder {missing} does not exist" in said and "--config data_root=" in said


def test_a_data_folder_without_complete_subjects_is_named_before_any_job_runs_and_fast(tmp_path):
    """A folder of subject folders that lack a modality (here: t2w renamed) fails the dry run in one line
    naming the folder and the files looked for, within seconds."""
    import time

    from conftest import make_workdir, snakemake

    root = tmp_path / "BraTS_Men_Train"
    for sid in ("BraTS-MEN-00001-000", "BraTS-MEN-00002-000"):
        (root / sid).mkdir(parents=True)
        for key in ("t1c", "t1n", "t2f", "T2W", "seg"):
            (root / sid / f"{sid}-{key}.nii.gz").write_bytes(b"")
    work = make_workdir(tmp_path, root)
    start = time.perf_counter()
    out = snakemake(work, "-n", "--", "results/exp2/done", check=False)
    took = time.perf_counter() - start
    said = out.stdout + out.stderr
    assert out.returncode != 0 and took < 10, took
    assert f"none of the 2 subject folders of {root} holds all of" in said and "<subject>-t2w.nii.gz" in said
    (root / "BraTS-MEN-00001-000" / "BraTS-MEN-00001-000-T2W.nii.gz").rename(
        root / "BraTS-MEN-00001-000" / "BraTS-MEN-00001-000-t2w.nii.gz"
    )
    assert snakemake(work, "-n", "--", "results/exp2/done").returncode == 0  # one complete subject: planned


def test_a_report_before_the_run_says_to_run_first(tmp_path):
    """`--report` collects finished runs' figures: before a run it fails in one line that says what to do,
    not on the first missing figure."""
    from conftest import make_workdir, snakemake

    work = make_workdir(tmp_path, tmp_path / "data")
    out = snakemake(work, "--report", "report.zip", "--", "results/exp2/done", check=False)
    said = out.stdout + out.stderr
    assert out.returncode != 0 and not (work / "report.zip").exists()
    assert "results/exp2/done does not exist yet: run the same command without --report first" in said
    assert "marked for report but does not exist" not in said
