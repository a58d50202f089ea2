# Evaluation: subject factors, latents of every subject, disentanglement metrics and figures,
# and the side-by-side comparison of Exp1 and Exp2.

COMPARED = sorted(EXPERIMENTS)  # baseline first: exp1, exp2


rule subject_factors:
    input:
        subjects="results/index/subjects.csv",
        demo=index_inputs,
    output:
        "results/factors/factors.csv",
    threads: 4
    log:
        "logs/subject_factors.log",
    benchmark:
        "benchmarks/subject_factors.tsv"
    conda:
        "../workflow/envs/vae_dynamics.yaml"
    script:
        "../workflow/scripts/subject_factors.py"


rule encode_latents:
    input:
        summary="results/{exp}/train_summary.json",
    output:
        "results/{exp}/latents.csv",
    wildcard_constraints:
        exp="exp1|exp2",
    params:
        batch_size=lambda wildcards: experiment_config(wildcards.exp)["data"]["batch_size"],
    threads: 4
    resources:
        gpu=1,
    log:
        "logs/encode_latents_{exp}.log",
    benchmark:
        "benchmarks/encode_latents_{exp}.tsv"
    conda:
        "../workflow/envs/vae_dynamics.yaml"
    script:
        "../workflow/scripts/encode_latents.py"


rule evaluate_latents:
    input:
        summary="results/{exp}/train_summary.json",
        latents="results/{exp}/latents.csv",
        factors="results/factors/factors.csv",
    output:
        metrics="results/{exp}/evaluation/metrics.json",
        recon="results/{exp}/evaluation/recon_metrics.csv",
        correlations=report(
            "results/{exp}/evaluation/factor_correlations.png",
            caption="../workflow/report/factor_correlations.rst",
            category="{exp}",
            subcategory="latent space",
        ),
        traversals=report(
            "results/{exp}/evaluation/traversals.png",
            caption="../workflow/report/traversals.rst",
            category="{exp}",
            subcategory="latent space",
        ),
        kl=report(
            "results/{exp}/evaluation/kl_per_dim.png",
            caption="../workflow/report/kl_per_dim.rst",
            category="{exp}",
            subcategory="latent space",
        ),
        latent_map=report(
            "results/{exp}/evaluation/latent_map.png",
            caption="../workflow/report/latent_map.rst",
            category="{exp}",
            subcategory="latent space",
        ),
        per_dimension=report(
            directory("results/{exp}/evaluation/traversals"),
            patterns=["{dim}.png"],
            caption="../workflow/report/traversal_dimension.rst",
            category="{exp}",
            subcategory="traversals per dimension",
        ),
    wildcard_constraints:
        exp="exp1|exp2",
    threads: 4
    resources:
        gpu=1,
    log:
        "logs/evaluate_latents_{exp}.log",
    benchmark:
        "benchmarks/evaluate_latents_{exp}.tsv"
    conda:
        "../workflow/envs/vae_dynamics.yaml"
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
    params:
        experiments=COMPARED,
    log:
        "logs/compare_experiments.log",
    conda:
        "../workflow/envs/vae_dynamics.yaml"
    script:
        "../workflow/scripts/compare_experiments.py"
