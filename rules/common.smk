# Config loading and validation, and the input functions shared by the rules. Everything here is
# light (no torch): `snakemake -n` runs on a login node.
import functools
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

try:
    from vae_dynamics.pipeline import plan as wf
except ImportError as exc:  # a bare Snakemake: the package plans the runs, so it comes first
    raise WorkflowError(
        "this workflow needs the vae_dynamics package where Snakemake runs (it plans the runs and "
        f"validates the configs): `make install`, or `pip install -e .` in this environment ({exc}); "
        "--use-conda then builds the jobs' environment from workflow/envs/vae_dynamics.yaml"
    ) from None

min_version("8.0")

report_problem = wf.report_problem(sys.argv)  # `--report` before a run: one line, not a missing file
if report_problem:
    raise WorkflowError(report_problem)

validate(config, "../workflow/schemas/config.schema.yaml")
wf.check_experiment_keys(config)  # experiments:, overrides.<exp>, sweep.<exp> name registered ones

EXPERIMENTS = wf.experiment_keys()  # the experiments: exp2, exp1
DEMO = config.get("demo") or None
# A sweep's runs (results/sweep/<exp>/<name>), every config validated before any work.
SWEEP = wf.sweep_runs(config)
RUNS = [*EXPERIMENTS, *SWEEP]
# The {run} wildcard: a main run (exp2, exp1) or a sweep run (sweep/exp2/beta_tc_target=6,seed=43).
RUN_PATTERN = "|".join(re.escape(r) for r in RUNS)
SWEEP_PATTERN = "|".join(re.escape(r) for r in SWEEP) or "sweep/(?!)"
DATA_SHEET = wf.data_sheet(config)
# Scans encoded with a finished run (results/<run>/encoded/<name>/latents.csv), from `encode:`.
ENCODE = wf.encode_sets(config)
ENCODE_PATTERN = "|".join(re.escape(n) for n in ENCODE) or "(?!)"


@functools.cache
def run_config(run):
    """The resolved, validated experiment config of a run (YAML + data_root + overrides [+ sweep point])."""
    return wf.run_config(config, run, SWEEP)  # SWEEP: resolved once, not once per run


def data_config():
    """Data section shared by every run (the data pipeline is identical)."""
    return run_config(EXPERIMENTS[0]).data


def run_dir(run):
    """Run directory named by the run's identity: raising max_epochs resumes it, a new model starts afresh."""
    return f"results/{run}/runs/{wf.run_identity(run_config(run))}"


def index_inputs(wildcards):
    if DATA_SHEET:
        return [DATA_SHEET]  # a changed sheet re-indexes
    if DEMO:
        return [f"{wf.DEMO_DATA}/factors.csv"]
    if not Path("results/index/subjects.csv").exists():
        # found while the jobs are planned (a dry run too), not inside the first job's log
        problem = data_root_problem()
        if problem:
            raise WorkflowError(problem)
    return []


@functools.cache
def data_root_problem():
    """The data folder checked once per planning (two rules ask for index_inputs)."""
    data = data_config()
    return wf.data_root_problem(data.root_dir, data.modalities)


def job_run(run, wildcards):
    """A training job's run: the main run its rule was made for (exp2), or its {run} wildcard (a sweep run)."""
    return wildcards.run if run == "{run}" else run
