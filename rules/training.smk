# Training: one rule per experiment (train_exp2, train_exp1). The run directory with its
# Lightning checkpoints is NOT an output (Snakemake deletes outputs of failed jobs): a rerun
# after an interruption resumes from <run_dir>/checkpoints/last.ckpt. The outputs are small
# files written atomically when training has finished.

for exp in EXPERIMENTS:

    rule:
        name:
            f"train_{exp}"
        input:
            manifest="results/cache/manifest.json",
            train="results/splits/train.csv",
            val="results/splits/val.csv",
            experiment=EXPERIMENTS[exp],
        output:
            summary=f"results/{exp}/train_summary.json",
            metrics=f"results/{exp}/metrics.csv",
        params:
            config=lambda wildcards, exp=exp: experiment_config(exp),
            run_dir=lambda wildcards, exp=exp: run_dir(exp),
        threads: 4
        resources:
            # one GPU per device of the run (train.devices x train.num_nodes; DDP when > 1)
            gpu=lambda wildcards, exp=exp: experiment_config(exp)["train"]["devices"],
        log:
            f"logs/train_{exp}.log",
        benchmark:
            f"benchmarks/train_{exp}.tsv"
        conda:
            "../workflow/envs/vae_dynamics.yaml"
        script:
            "../workflow/scripts/train.py"
