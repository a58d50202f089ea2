# Sweeps: the runs of `sweep:` in the workflow config (rules/common.smk: SWEEP), each trained, exported
# and evaluated by the same rules as the main runs under results/sweep/<exp>/<name>/, sharing the one
# index, split and cache; then one aggregation. Without a sweep, results/sweep/done has nothing to do.


rule sweep_summary:
    input:
        metrics=expand("results/{run}/evaluation/metrics.json", run=list(SWEEP)),
        done=expand("results/{run}/done", run=list(SWEEP)),
    output:
        md=report(
            "results/sweep/summary.md",
            caption="../workflow/report/sweep_summary.rst",
            category="sweep",
        ),
        csv="results/sweep/summary.csv",
        by_point="results/sweep/summary_by_point.csv",
        tradeoff=report(
            "results/sweep/tradeoff.png",
            caption="../workflow/report/sweep_tradeoff.rst",
            category="sweep",
        ),
        seeds=report(
            "results/sweep/seeds.png",
            caption="../workflow/report/sweep_seeds.rst",
            category="sweep",
        ),
        done="results/sweep/done",
    log:
        "logs/sweep_summary.log",
    conda:
        "../workflow/envs/vae_dynamics.yaml"
    params:
        runs=SWEEP,
        # Snakemake does not recreate a deleted intermediate file while the final target is up to date:
        # once the sweep is summarised, naming the runs whose evaluation has gone missing makes such a
        # deletion rerun that run's evaluation (and the summary, which then runs once more next time).
        unevaluated=lambda wildcards: (
            [run for run in SWEEP if not Path(f"results/{run}/evaluation/metrics.json").exists()]
            if Path("results/sweep/done").exists()
            else []
        ),
    script:
        "../workflow/scripts/sweep_summary.py"
