# Export: reconstruction panels from the best checkpoint, loss curves, the done marker, and the model as
# a MONAI bundle (results/<run>/export/bundle.zip, on request).


rule export_recon_panels:
    input:
        summary="results/{run}/train_summary.json",
    output:
        panels=report(
            directory("results/{run}/recon_panels"),
            patterns=["{subject}.png"],
            caption="../workflow/report/recon_panels.rst",
            category="{run}",
            subcategory="reconstructions",
        ),
        curves=report(
            "results/{run}/loss_curves.png",
            caption="../workflow/report/loss_curves.rst",
            category="{run}",
            subcategory="training",
        ),
    log:
        "logs/export_recon_panels_{run}.log",
    benchmark:
        "benchmarks/export_recon_panels_{run}.tsv"
    wildcard_constraints:
        run=RUN_PATTERN,
    conda:
        "../workflow/envs/vae_dynamics.yaml"
    resources:
        gpu=1,  # decodes on CUDA when present (the script claims its own GPU: vae_dynamics/gpus.py)
    script:
        "../workflow/scripts/export_recon_panels.py"


rule export_bundle:
    # The trained model as a MONAI bundle zip, to share (not part of done: ask for it by name).
    input:
        summary="results/{run}/train_summary.json",
        evaluation="results/{run}/evaluation/metrics.json",
    output:
        "results/{run}/export/bundle.zip",
    log:
        "logs/export_bundle_{run}.log",
    benchmark:
        "benchmarks/export_bundle_{run}.tsv"
    wildcard_constraints:
        run=RUN_PATTERN,
    conda:
        "../workflow/envs/vae_dynamics.yaml"
    script:
        "../workflow/scripts/export_bundle.py"


rule done:
    input:
        summary="results/{run}/train_summary.json",
        panels="results/{run}/recon_panels",
        curves="results/{run}/loss_curves.png",
        evaluation="results/{run}/evaluation/metrics.json",
    output:
        "results/{run}/done",
    log:
        "logs/done_{run}.log",
    wildcard_constraints:
        run=RUN_PATTERN,
    conda:
        "../workflow/envs/vae_dynamics.yaml"
    script:
        "../workflow/scripts/done.py"
