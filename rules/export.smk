# Export: reconstruction panels from the best checkpoint, loss curves, and the done marker.


rule export_recon_panels:
    input:
        summary="results/{exp}/train_summary.json",
    output:
        panels=report(
            directory("results/{exp}/recon_panels"),
            patterns=["{subject}.png"],
            caption="../workflow/report/recon_panels.rst",
            category="{exp}",
            subcategory="reconstructions",
        ),
        curves=report(
            "results/{exp}/loss_curves.png",
            caption="../workflow/report/loss_curves.rst",
            category="{exp}",
            subcategory="training",
        ),
    wildcard_constraints:
        exp="exp1|exp2",
    resources:
        gpu=1,  # decodes on CUDA when present (the script claims its own GPU: vae_dynamics/gpus.py)
    log:
        "logs/export_recon_panels_{exp}.log",
    benchmark:
        "benchmarks/export_recon_panels_{exp}.tsv"
    conda:
        "../workflow/envs/vae_dynamics.yaml"
    script:
        "../workflow/scripts/export_recon_panels.py"


rule done:
    input:
        summary="results/{exp}/train_summary.json",
        panels="results/{exp}/recon_panels",
        curves="results/{exp}/loss_curves.png",
        evaluation="results/{exp}/evaluation/metrics.json",
    output:
        "results/{exp}/done",
    wildcard_constraints:
        exp="exp1|exp2",
    log:
        "logs/done_{exp}.log",
    conda:
        "../workflow/envs/vae_dynamics.yaml"
    script:
        "../workflow/scripts/done.py"
