# vae_dynamics workflow: index_subjects -> make_splits -> build_persistent_cache -> train_exp2
#                        -> export_recon_panels -> encode_latents -> evaluate_latents (+ subject_factors)
#                        -> results/exp2/done   (and the same for exp1)
#                        -> compare_experiments -> results/compare/done  (Exp1 vs Exp2)
#
#   snakemake --cores 8 -- results/exp2/done                         (profiles/default sets gpu=1)
#   snakemake --cores 8 --resources gpu=1 -n -- results/exp2/done    (dry run)
#   snakemake --profile profiles/slurm -- results/exp2/done          (SLURM cluster)
#   snakemake --cores 2 --configfile config/demo.yaml -- results/exp2/done   (embedded demo)
#   snakemake --cores 2 --configfile config/demo.yaml -- results/compare/done  (demo, Exp1 vs Exp2)
#   snakemake --cores 2 --configfile config/demo.yaml -- results/sweep/done    (demo sweep: β × seeds)
#   snakemake --cores 8 -- results/exp2/encoded/<name>/latents.csv   (new scans, named under encode:)


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"  # the report's front page (snakemake --report, after a run)


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/training.smk"
include: "rules/export.smk"
include: "rules/evaluation.smk"
include: "rules/sweep.smk"
include: "rules/encode.smk"


# Seconds of work each: run by the Snakemake process itself, not submitted as cluster jobs (a SLURM job
# per marker file or split table costs a queue wait and two Snakemake start-ups).
localrules:
    all,
    make_splits,
    done,
    compare_experiments,
    sweep_summary,


rule all:
    default_target: True
    input:
        "results/exp2/done",
