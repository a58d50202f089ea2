"""Rule compare_experiments: Exp1 and Exp2 side by side -> summary.md, summary.csv, done."""

from vae_dynamics.evaluation.compare import compare_experiments
from vae_dynamics.io import write_text
from vae_dynamics.pipeline.steps import log_to

with log_to(snakemake.log[0]):
    i = snakemake.input
    runs = {
        exp: {"metrics": m, "summary": s, "epochs": e, "traversals": t}
        for exp, m, s, e, t in zip(
            snakemake.params.experiments, i.metrics, i.summaries, i.epochs, i.traversals
        )
    }
    compare_experiments(runs, snakemake.output.md, snakemake.output.csv)
    write_text(f"{snakemake.output.md}\n{snakemake.output.csv}\n", snakemake.output.done)
