"""vae-dynamics: every step of the pipeline as a subcommand (the Snakemake rules call the same functions).

    vae-dynamics train --config src/vae_dynamics/config/exp2_tcvae_sbd.yaml [--set train.max_epochs=3]
    vae-dynamics train --config C --run-dir D --resume          continue D/checkpoints/last.ckpt
    vae-dynamics demo --out results/demo/data --n-subjects 6
    vae-dynamics index --root /data/BraTS_Men_Train --out-dir results/index   (or --sheet subjects.tsv)
    vae-dynamics splits --subjects results/index/subjects.csv --out-dir results/splits
    vae-dynamics cache --config C --splits results/splits --manifest results/cache/manifest.json
    vae-dynamics encode --summary results/exp2/train_summary.json --out results/exp2/latents.csv
    vae-dynamics encode --run results/exp2 --sheet new.csv --out encoded/ [--reconstruct] [--traverse 4]
    vae-dynamics factors --subjects results/index/subjects.csv --out results/factors/factors.csv
    vae-dynamics evaluate --summary S --latents L --factors F --out results/exp2/evaluation
    vae-dynamics metrics --latents L.csv --factors F.csv --out M.json
    vae-dynamics config show|validate|schema [--config C] [--set KEY=VALUE ...]
    vae-dynamics sweep list|summarize --configfile config/demo.yaml   a workflow sweep's runs / summary
    vae-dynamics experiments                                    the registered experiments

Each subcommand imports only what it needs: `vae-dynamics --help` and `config` do not load torch.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

from vae_dynamics import __version__
from vae_dynamics.evaluation import N_TRAVERSED


def _count(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer >= minimum (a usage error, not a traceback, otherwise)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def _config_file(value: str) -> str:
    """--config: a YAML file, or a shipped experiment by name (exp1, exp2, exp2_tcvae_sbd)."""
    if Path(value).exists() or value.endswith((".yaml", ".yml")) or "/" in value:
        return value
    from vae_dynamics.config import ConfigError, config_path

    try:
        return str(config_path(value))
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--config",
        required=required,
        type=_config_file,
        help="experiment YAML, or a shipped experiment by name (exp2, exp1); model.variant selects it",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.max_epochs=3 (value read as YAML; repeatable)",
    )


# ---- subcommands ------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> None:
    from vae_dynamics.config import load_config
    from vae_dynamics.training.checkpointing import Preempted
    from vae_dynamics.training.run import train

    if args.resume and not args.run_dir:
        raise UsageError("--resume needs --run-dir")
    cfg = load_config(args.config, args.overrides)
    try:
        summary = train(cfg, args.run_dir, args.resume, args.splits)
    except Preempted as exc:
        print(f"train: pre-empted: {exc}; run the same command with --resume to continue", file=sys.stderr)
        raise SystemExit(exc.code) from None
    if "best_checkpoint" in summary:  # rank 0
        best = Path(summary["run_dir"]) / summary["best_checkpoint"]
        print(f"run directory: {summary['run_dir']}\nbest checkpoint: {best}")


def cmd_demo(args: argparse.Namespace) -> None:
    from vae_dynamics.data.demo import generate

    start = time.perf_counter()
    generate(args.out, args.n_subjects, args.seed, args.workers)
    print(f"wrote {args.n_subjects} demo subjects to {args.out} in {time.perf_counter() - start:.1f} s")


def cmd_index(args: argparse.Namespace) -> None:
    from vae_dynamics.data.index import index_subjects

    subjects, rejected = index_subjects(
        args.root, args.out_dir, args.workers, not args.no_progress, sheet=args.sheet
    )
    print(f"{len(subjects)} valid subjects, {len(rejected)} rejected -> {args.out_dir}")
    for row in rejected.itertuples():
        print(f"  rejected {row.subject_id}: {row.file}: {row.reason}", file=sys.stderr)


def cmd_splits(args: argparse.Namespace) -> None:
    from vae_dynamics.data.splits import make_splits

    train, val = make_splits(args.subjects, args.out_dir, args.val_split, args.seed)
    print(f"{len(train)} train / {len(val)} val subjects -> {args.out_dir}")


def cmd_cache(args: argparse.Namespace) -> None:
    from vae_dynamics.config import load_config
    from vae_dynamics.data.cache import build_cache

    cfg = load_config(args.config, args.overrides)
    splits = Path(args.splits)
    manifest = build_cache(
        cfg.data,
        [splits / "train.csv", splits / "val.csv"],
        args.cache_dir or cfg.data.cache_dir,
        args.manifest,
        workers=args.workers,
    )
    print(f"cached {manifest['n_subjects']} subjects in {manifest['cache_dir']} ({manifest['seconds']} s)")


def cmd_encode(args: argparse.Namespace) -> None:
    if args.summary:  # the run's own train/val subjects, from the training cache
        if args.images or args.sheet or args.reconstruct or args.traverse:
            raise UsageError("--images/--sheet/--reconstruct/--traverse go with --run, not --summary")
        from vae_dynamics.evaluation.encode import encode_latents

        table = encode_latents(args.summary, args.out, args.device, args.batch_size, args.workers)
        print(f"{len(table)} subjects -> {args.out}")
        return
    if bool(args.images) == bool(args.sheet):
        raise UsageError("--run needs one of --images DIR (BraTS-layout subject folders) or --sheet S")
    from vae_dynamics.evaluation.new_scans import write_encoding
    from vae_dynamics.gpus import claim_gpus
    from vae_dynamics.inference import load_run

    with contextlib.ExitStack() as stack:
        if args.device is None:  # on CUDA when present, on a GPU no other job of this user holds
            stack.enter_context(claim_gpus(1))
        run = load_run(args.run, args.device)
        print(
            f"run: {run.run_dir} ({run.summary['experiment']}), checkpoint {run.checkpoint}, on {run.device}"
        )
        table = write_encoding(
            run,
            args.images or args.sheet,
            args.out,
            reconstruct=args.reconstruct,
            panels=True,
            traverse=args.traverse,
            batch_size=args.batch_size,
            workers=args.workers,
            progress=True,
            force=args.force,
        )
    rejected = table.attrs["rejected"]
    for row in rejected.itertuples():
        print(f"  rejected {row.subject_id}: {row.file}: {row.reason}", file=sys.stderr)
    print(f"{len(table)} scans encoded, {len(rejected)} rejected -> {args.out}")


def cmd_factors(args: argparse.Namespace) -> None:
    from vae_dynamics.evaluation.factors import subject_factors

    table = subject_factors(args.subjects, Path(args.out), args.demo_factors, args.workers)
    print(f"{len(table)} subjects -> {args.out}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from vae_dynamics.evaluation import printed
    from vae_dynamics.evaluation.evaluate import evaluate_run

    metrics = evaluate_run(
        args.summary, args.latents, args.factors, args.out, args.device, args.traversed_dims, args.force
    )
    print(printed(metrics))


def cmd_metrics(args: argparse.Namespace) -> None:
    from vae_dynamics.evaluation import printed
    from vae_dynamics.evaluation.metrics import metrics_from_files

    columns = args.factors_columns.split(",") if args.factors_columns else None
    result = metrics_from_files(args.latents, args.factors, Path(args.out), columns)
    print(printed(result))


def cmd_config(args: argparse.Namespace) -> None:
    import yaml

    from vae_dynamics.config import load_config
    from vae_dynamics.config.loader import json_schema_text, schema_markdown

    if args.action == "schema":
        text = schema_markdown() if args.format == "markdown" else json_schema_text()
        if args.out:
            Path(args.out).write_text(text)
            print(f"{args.format} schema of the experiment config -> {args.out}")
        else:
            sys.stdout.write(text)
        return
    if not args.config:
        raise UsageError(f"config {args.action} needs --config")
    cfg = load_config(args.config, args.overrides)
    if args.action == "show":
        sys.stdout.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    else:
        print(f"{args.config}: valid ({cfg.model.variant})")


def cmd_sweep(args: argparse.Namespace) -> None:
    from vae_dynamics.pipeline.plan import load_workflow_config, sweep_runs

    config = load_workflow_config(*args.configfile)
    runs = sweep_runs(config)
    if not runs:
        raise UsageError(
            f"the workflow config ({', '.join(args.configfile) or 'config/config.yaml'}) has no sweep"
        )
    if args.action == "list":
        for run, spec in runs.items():
            print(f"{run}  (run identity {spec['identity']})")
        return
    from vae_dynamics.evaluation.sweep import summarize_sweep

    table = summarize_sweep(runs, args.results, Path(args.results) / "sweep")
    missing = len(runs) - len(table)
    print(
        f"{len(table)} of {len(runs)} runs summarised -> {args.results}/sweep/summary.md"
        + (f" ({missing} missing, listed there)" if missing else "")
    )


def cmd_export_panels(args: argparse.Namespace) -> None:
    from vae_dynamics.pipeline.steps import export_step

    panels = export_step(args.run, args.out, args.curves, args.device, force=args.force)
    print(f"{len(panels)} panels -> {args.out}" + (f"; loss curves -> {args.curves}" if args.curves else ""))


def cmd_export(args: argparse.Namespace) -> None:
    from vae_dynamics.bundle import export_bundle

    out = export_bundle(args.run, args.out, args.format, args.force)
    print(f"MONAI bundle -> {out}")


def cmd_compare(args: argparse.Namespace) -> None:
    from vae_dynamics.evaluation.compare import compare_runs

    table = compare_runs(args.runs, args.out, force=args.force)
    print(f"{len(table.columns)} runs compared -> {Path(args.out) / 'summary.md'}")


def cmd_experiments(args: argparse.Namespace) -> None:
    from vae_dynamics import experiments

    for e in experiments.EXPERIMENTS.values():
        print(f"{e.key}  model.variant={e.variant}  {e.title}  ({e.yaml_path})")


# ---- parser -----------------------------------------------------------------------------------------


class UsageError(Exception):
    """A combination of arguments that argparse cannot express."""


def _version_line() -> str:
    """vae-dynamics 0.4.0 (git 0123456789ab, uncommitted changes): the version and the code's commit."""
    from vae_dynamics.provenance import code_version

    v = code_version()
    commit = f"git {v['git_commit'][:12]}" if v["git_commit"] else "not a git checkout"
    return f"vae-dynamics {__version__} ({commit}{', uncommitted changes' if v['git_dirty'] else ''})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vae-dynamics", description=__doc__, formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=_version_line())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, func, help, arguments in SUBCOMMANDS:
        p = sub.add_parser(name, help=help, description=help, formatter_class=_Formatter)
        p.set_defaults(func=func)
        arguments(p)
    return parser


def _train_args(p: argparse.ArgumentParser) -> None:
    _config_args(p)
    p.add_argument("--run-dir", help="run directory (default: <logging.save_dir>/<timestamp>_<experiment>)")
    p.add_argument("--resume", action="store_true", help="continue from <run-dir>/checkpoints/last.ckpt")
    p.add_argument("--splits", help="folder with train.csv/val.csv (default: index data.root_dir)")


def _force_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--force",
        action="store_true",
        help="replace --out even when it holds files this command did not write (never an input or the run)",
    )


def _run_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--run",
        required=True,
        help="a trained run (experiment folder, run dir, summary, .ckpt) or an exported bundle",
    )


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (BraTS-MEN layout)")
    p.add_argument("--n-subjects", type=_count(1), default=8, help="subjects to generate")
    p.add_argument("--seed", type=int, default=0, help="seed of the anatomy, tumour and noise draws")
    p.add_argument("--workers", type=_count(1), default=1, help="subjects generated in parallel")


def _index_args(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--root", help="BraTS-MEN training folder")
    source.add_argument("--sheet", help="sample sheet (.csv/.tsv): subject_id, t1c, t1n, t2f, t2w, seg")
    p.add_argument("--out-dir", required=True, help="where subjects.csv and rejected.csv are written")
    p.add_argument("--workers", type=_count(1), default=1, help="subjects validated in parallel")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs, batch jobs)")


def _splits_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--subjects", required=True, help="subjects.csv from `vae-dynamics index`")
    p.add_argument("--out-dir", required=True, help="where train.csv and val.csv are written")
    p.add_argument(
        "--val-split", type=float, default=0.1, help="share of the subjects held out for validation"
    )
    p.add_argument("--seed", type=int, default=42, help="seed of the split")


def _cache_args(p: argparse.ArgumentParser) -> None:
    _config_args(p)
    p.add_argument("--splits", required=True, help="folder with train.csv and val.csv")
    p.add_argument("--cache-dir", help="cache root (default: data.cache_dir of the config)")
    p.add_argument("--manifest", required=True, help="manifest JSON to write")
    p.add_argument("--workers", type=_count(1), default=1, help="subjects preprocessed in parallel")


def _encode_args(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--summary", help="train_summary.json: encode the run's train and val subjects")
    which.add_argument(
        "--run",
        help="a trained run (experiment folder, run dir, summary or .ckpt): "
        "encode the scans of --images or --sheet",
    )
    p.add_argument("--images", help="folder of BraTS-layout subject folders (seg optional)")
    p.add_argument(
        "--sheet",
        help="sample sheet .csv/.tsv: subject_id, t1c, t1n, t2f, t2w, optional seg, "
        "any other columns (carried into latents.csv); paths relative to the sheet",
    )
    p.add_argument("--out", required=True, help="--summary: latents CSV; --run: the output folder")
    p.add_argument(
        "--reconstruct",
        action="store_true",
        help="also write each scan's reconstruction (NIfTI in its own space) and panel",
    )
    p.add_argument(
        "--traverse",
        type=_count(0),
        default=0,
        metavar="K",
        help="also draw the K dimensions of largest KL around each scan's code",
    )
    p.add_argument("--batch-size", type=_count(1), default=8, help="scans encoded at once")
    p.add_argument("--workers", type=_count(0), default=0, help="data loader worker processes")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    _force_arg(p)


def _factors_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--subjects", required=True, help="subjects.csv written by `vae-dynamics index`")
    p.add_argument("--out", required=True, help="factors CSV to write")
    p.add_argument("--demo-factors", help="the demo generator's factors.csv (ground truth)")
    p.add_argument("--workers", type=_count(1), default=1, help="subjects measured in parallel")


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--summary", required=True, help="train_summary.json of a finished run")
    p.add_argument("--latents", required=True, help="latents.csv of that run")
    p.add_argument("--factors", required=True, help="factors.csv (`vae-dynamics factors`)")
    p.add_argument("--out", required=True, help="evaluation folder to write")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    _force_arg(p)
    p.add_argument(
        "--traversed-dims",
        type=_count(1),
        metavar="N",
        default=N_TRAVERSED,
        help="dimensions drawn as traversals, largest KL first (6 decodes at 128³ each)",
    )


def _metrics_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--latents", required=True, help="CSV with subject_id and mu_* columns")
    p.add_argument("--factors", required=True, help="CSV with subject_id and factor columns")
    p.add_argument("--out", required=True, help="metrics JSON to write")
    p.add_argument("--factors-columns", help="comma-separated factor columns (default: all)")


def _config_command_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("show", "validate", "schema"))
    _config_args(p, required=False)
    p.add_argument("--out", help="schema: write to this file instead of stdout")
    p.add_argument(
        "--format",
        choices=("json", "markdown"),
        default="json",
        help="schema: JSON schema, or the Markdown key reference of the documentation",
    )


def _sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("list", "summarize"))
    p.add_argument(
        "--configfile", action="append", default=[], help="workflow config merged over config/config.yaml"
    )
    p.add_argument("--results", default="results", help="the workflow's results folder")


def _export_panels_args(p: argparse.ArgumentParser) -> None:
    _run_arg(p)
    p.add_argument("--out", required=True, help="folder of the panels (one PNG per validation subject)")
    p.add_argument("--curves", help="also draw the loss curves into this PNG")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    _force_arg(p)


def _export_args(p: argparse.ArgumentParser) -> None:
    _run_arg(p)
    p.add_argument("--out", required=True, help="the bundle folder (or, with --format zip, a .zip file)")
    p.add_argument("--format", choices=("bundle", "zip"), default="bundle", help="a folder, or one zip file")
    _force_arg(p)


def _compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        help="evaluated runs: folders holding train_summary.json, metrics.csv and evaluation/ "
        "(results/exp1, results/exp2, a sweep run's folder); named by their folder",
    )
    p.add_argument("--out", required=True, help="folder for summary.md and summary.csv")
    _force_arg(p)


def _no_args(p: argparse.ArgumentParser) -> None:
    pass


# (name, function, help, its arguments), in the order `vae-dynamics --help` lists them
Subcommand = tuple[str, Callable[[argparse.Namespace], None], str, Callable[[argparse.ArgumentParser], None]]
SUBCOMMANDS: list[Subcommand] = [
    ("train", cmd_train, "train the experiment model.variant of --config selects; resumable", _train_args),
    ("demo", cmd_demo, "generate the BraTS-MEN-format demo dataset from the MNI152 anatomy", _demo_args),
    ("index", cmd_index, "validate every subject folder -> subjects.csv, rejected.csv", _index_args),
    ("splits", cmd_splits, "seeded train/val split of the indexed subjects", _splits_args),
    ("cache", cmd_cache, "preprocess every split subject once into the persistent cache", _cache_args),
    (
        "encode",
        cmd_encode,
        "posterior (μ, log σ²) of a run's own subjects, or of any new scans",
        _encode_args,
    ),
    (
        "factors",
        cmd_factors,
        "tumour volumes and centroid per subject (+ the demo's ground truth)",
        _factors_args,
    ),
    (
        "evaluate",
        cmd_evaluate,
        "metrics.json, reconstruction quality, correlations, traversals of a run",
        _evaluate_args,
    ),
    ("metrics", cmd_metrics, "MIG, DCI, SAP and active units of latents against factors", _metrics_args),
    (
        "export-panels",
        cmd_export_panels,
        "reconstruction panels of a run's validation subjects (and its loss curves)",
        _export_panels_args,
    ),
    (
        "export",
        cmd_export,
        "the run's model as a MONAI bundle: TorchScript, ONNX, model card, inference config",
        _export_args,
    ),
    ("compare", cmd_compare, "evaluated runs side by side -> summary.md, summary.csv", _compare_args),
    (
        "config",
        cmd_config,
        "show or validate an experiment config, or print its JSON schema",
        _config_command_args,
    ),
    ("sweep", cmd_sweep, "list a workflow sweep's runs, or summarise the runs that finished", _sweep_args),
    ("experiments", cmd_experiments, "list the registered experiments", _no_args),
]


def expected_errors() -> tuple[type[BaseException], ...]:
    """Errors that carry a message for the user (a traceback would add nothing)."""
    from vae_dynamics.config import ConfigError
    from vae_dynamics.io import BusyError, LockUnsupportedError, OutputError

    errors: list[type[BaseException]] = [
        ConfigError,
        UsageError,
        FileNotFoundError,
        OutputError,
        BusyError,
        LockUnsupportedError,
    ]
    if "vae_dynamics.training.run" in sys.modules:
        from vae_dynamics.training.checkpointing import DamagedCheckpointError
        from vae_dynamics.training.run_dir import ResumeError
        from vae_dynamics.training.tracking import LoggerUnavailableError

        errors += [DamagedCheckpointError, ResumeError, LoggerUnavailableError]
    if "vae_dynamics.data.index" in sys.modules:
        from vae_dynamics.data.index import NoValidSubjectsError, SheetError

        errors += [NoValidSubjectsError, SheetError]
    if "vae_dynamics.inference" in sys.modules:
        from vae_dynamics.bundle import BundleError
        from vae_dynamics.inference import ContractMismatchError, DamagedCheckpointFileError

        errors += [ContractMismatchError, DamagedCheckpointFileError, BundleError]
    return tuple(errors)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command != "train":  # training logs to <run_dir>/train.log and prints progress itself
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except Exception as exc:
        if isinstance(exc, expected_errors()):
            sys.exit(f"{args.command}: {exc}")
        raise


def train_main(argv: list[str] | None = None) -> None:
    """`python scripts/train.py ...` = `vae-dynamics train ...`."""
    main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
