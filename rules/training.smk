# Training: train_exp2 / train_exp1 (the main runs) and train_sweep_run (one job per sweep run).
# The run directory with its Lightning checkpoints is NOT an output (Snakemake deletes outputs of failed
# jobs): a rerun after an interruption resumes from <run_dir>/checkpoints/last.ckpt. The outputs are
# small files written atomically when training has finished.
#
# params hold what defines the result: the run directory (the run's identity, config/identity.py) and
# train.max_epochs. Raising max_epochs reruns the job, which resumes the same run directory; changing
# data.num_workers or logging keys alone reruns nothing. The script resolves the full config itself.


for exp in EXPERIMENTS:

    rule:
        name:
            f"train_{exp}"
        input:
            manifest="results/cache/manifest.json",
            train="results/splits/train.csv",
            val="results/splits/val.csv",
            experiment=wf.experiment_yaml(config, exp),
        output:
            summary=f"results/{exp}/train_summary.json",
            metrics=f"results/{exp}/metrics.csv",
        log:
            f"logs/train_{exp}.log",
        benchmark:
            f"benchmarks/train_{exp}.tsv"
        conda:
            "../workflow/envs/vae_dynamics.yaml"
        threads: 4
        resources:
            # one GPU per device of the run (train.devices x train.num_nodes; DDP when > 1)
            gpu=lambda wildcards, exp=exp: run_config(exp).train.devices,
        params:
            run=exp,
            run_dir=lambda wildcards, exp=exp: run_dir(exp),
            max_epochs=lambda wildcards, exp=exp: run_config(exp).train.max_epochs,
        script:
            "../workflow/scripts/train.py"


rule train_sweep_run:
    input:
        manifest="results/cache/manifest.json",
        train="results/splits/train.csv",
        val="results/splits/val.csv",
        experiment=lambda wildcards: wf.experiment_yaml(config, wf.run_experiment(wildcards.run)),
    output:
        summary="results/{run}/train_summary.json",
        metrics="results/{run}/metrics.csv",
    log:
        "logs/train_{run}.log",
    benchmark:
        "benchmarks/train_{run}.tsv"
    wildcard_constraints:
        run=SWEEP_PATTERN,
    conda:
        "../workflow/envs/vae_dynamics.yaml"
    threads: 4
    resources:
        gpu=lambda wildcards: run_config(wildcards.run).train.devices,
    params:
        run=lambda wildcards: wildcards.run,
        run_dir=lambda wildcards: run_dir(wildcards.run),
        max_epochs=lambda wildcards: run_config(wildcards.run).train.max_epochs,
    script:
        "../workflow/scripts/train.py"
