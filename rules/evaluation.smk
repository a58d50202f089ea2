# Evaluation: subject factors, latents of every subject, disentanglement metrics and figures,
# and the side-by-side comparison of Exp1 and Exp2.

COMPARED = wf.compared_experiments()  # the baseline first: exp1, exp2


rule subject_factors:
    input:
        subjects="results/index/subjects.csv",
        demo=index_inputs,
    output:
        "results/factors/factors.csv",
    log:
        "logs/subject_factors.log",
    benchmark:
        "benchmarks/subject_factors.tsv"
    conda:
        "../workflow/envs/vae_dynamics.yaml"
    threads: 4
    script:
        "../workflow/scripts/subject_factors.py"


rule encode_latents:
    input:
        summary="results/{run}/train_summary.json",
    output:
        "results/{run}/latents.csv",
    log:
        "logs/encode_latents_{run}.log",
    benchmark:
        "benchmarks/encode_latents_{run}.tsv"
    wildcard_constraints:
        run=RUN_PATTERN,
    conda:
        "../workflow/envs/vae_dynamics.yaml"
    threads: 4
    resources:
        gpu=1,
    params:
        batch_size=lambda wildcards: run_config(wildcards.run).data.batch_size,
    script:
        "../workflow/scripts/encode_latents.py"


rule evaluate_latents:
    input:
        summary="results/{run}/train_summary.json",
        latents="results/{run}/latents.csv",
        factors="results/factors/factors.csv",
    output:
        metrics="results/{run}/evaluation/metrics.json",
        recon="results/{run}/evaluation/recon_metrics.csv",
        correlations=report(
            "results/{run}/evaluation/factor_correlations.png",
            caption="../workflow/report/factor_correlations.rst",
            category="{run}",
            subcategory="latent space",
        ),
        traversals=report(
            "results/{run}/evaluation/traversals.png",
            caption="../workflow/report/traversals.rst",
            category="{run}",
            subcategory="latent space",
        ),
        kl=report(
            "results/{run}/evaluation/kl_per_dim.png",
            caption="../workflow/report/kl_per_dim.rst",
            category="{run}",
            subcategory="latent space",
        ),
        latent_map=report(
            "results/{run}/evaluation/latent_map.png",
            caption="../workflow/report/latent_map.rst",
            category="{run}",
            subcategory="latent space",
        ),
        per_dimension=report(
            directory("results/{run}/evaluation/traversals"),
            patterns=["{dim}.png"],
            caption="../workflow/report/traversal_dimension.rst",
            category="{run}",
            subcategory="traversals per dimension",
        ),
    log:
        "logs/evaluate_latents_{run}.log",
    benchmark:
        "benchmarks/evaluate_latents_{run}.tsv"
    wildcard_constraints:
        run=RUN_PATTERN,
    conda:
        "../workflow/envs/vae_dynamics.yaml"
    threads: 4
    resources:
        gpu=1,
    params:
        traversed_dims=wf.traversed_dims(config),
    script:
        "../workflow/scripts/evaluate_latents.py"


rule compare_experiments:
    input:
        metrics=expand("results/{exp}/evaluation/metrics.json", exp=COMPARED),
        summaries=expand("results/{exp}/train_summary.json", exp=COMPARED),
        epochs=expand("results/{exp}/metrics.csv", exp=COMPARED),
        traversals=expand("results/{exp}/evaluation/traversals.png", exp=COMPARED),
    output:
        md=report(
            "results/compare/summary.md",
            caption="../workflow/report/compare.rst",
            category="comparison",
        ),
        csv="results/compare/summary.csv",
        done="results/compare/done",
    log:
        "logs/compare_experiments.log",
    conda:
        "../workflow/envs/vae_dynamics.yaml"
    params:
        experiments=COMPARED,
    script:
        "../workflow/scripts/compare_experiments.py"
