# Training: train_exp2 / train_exp1 (the main runs, one per registered experiment) and train_sweep_run
# (one job per sweep run), made by one rule factory: the same inputs, outputs, resources and script.
# The run directory with its Lightning checkpoints is NOT an output (Snakemake deletes outputs of failed
# jobs): a rerun after an interruption resumes from <run_dir>/checkpoints/last.ckpt. The outputs are
# small files written atomically when training has finished.
#
# params hold what defines the result: the run directory (the run's identity, config/identity.py) and
# train.max_epochs. Raising max_epochs reruns the job, which resumes the same run directory; changing
# data.num_workers or logging keys alone reruns nothing. The script resolves the full config itself.


for name, run in [*((f"train_{exp}", exp) for exp in EXPERIMENTS), ("train_sweep_run", "{run}")]:

    rule:
        name:
            name
        input:
            manifest="results/cache/manifest.json",
            train="results/splits/train.csv",
            val="results/splits/val.csv",
            experiment=lambda wildcards, run=run: wf.experiment_yaml(
                config, wf.run_experiment(job_run(run, wildcards))
            ),
        output:
            summary=f"results/{run}/train_summary.json",
            metrics=f"results/{run}/metrics.csv",
        log:
            f"logs/train_{run}.log",
        benchmark:
            f"benchmarks/train_{run}.tsv"
        wildcard_constraints:
            run=SWEEP_PATTERN,
        conda:
            "../workflow/envs/vae_dynamics.yaml"
        threads: 4
        resources:
            # one GPU per device of the run (train.devices x train.num_nodes; DDP when > 1)
            gpu=lambda wildcards, run=run: run_config(job_run(run, wildcards)).train.devices,
        params:
            experiment=lambda wildcards, run=run: wf.run_experiment(job_run(run, wildcards)),
            point=lambda wildcards, run=run: wf.run_point(job_run(run, wildcards), SWEEP),
            run_dir=lambda wildcards, run=run: run_dir(job_run(run, wildcards)),
            max_epochs=lambda wildcards, run=run: run_config(job_run(run, wildcards)).train.max_epochs,
        script:
            "../workflow/scripts/train.py"
