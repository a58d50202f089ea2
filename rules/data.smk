# Data: demo generation (demo config only), subject index, splits, persistent cache.


rule make_demo_dataset:
    output:
        "results/demo/data/factors.csv",
    log:
        "logs/make_demo_dataset.log",
    benchmark:
        "benchmarks/make_demo_dataset.tsv"
    conda:
        "../workflow/envs/vae_dynamics.yaml"
    threads: 2
    params:
        out_dir=lambda wildcards, output: str(Path(output[0]).parent),
        n_subjects=(DEMO or {}).get("n_subjects", 6),
        seed=(DEMO or {}).get("seed", 0),
    script:
        "../workflow/scripts/make_demo_dataset.py"


rule index_subjects:
    input:
        index_inputs,
    output:
        subjects="results/index/subjects.csv",
        rejected="results/index/rejected.csv",
    log:
        "logs/index_subjects.log",
    benchmark:
        "benchmarks/index_subjects.tsv"
    conda:
        "../workflow/envs/vae_dynamics.yaml"
    threads: 8
    params:
        root=lambda wildcards: None if DATA_SHEET else data_config().root_dir,
        sheet=DATA_SHEET,
    script:
        "../workflow/scripts/index_subjects.py"


rule make_splits:
    input:
        subjects="results/index/subjects.csv",
    output:
        train="results/splits/train.csv",
        val="results/splits/val.csv",
    log:
        "logs/make_splits.log",
    conda:
        "../workflow/envs/vae_dynamics.yaml"
    params:
        val_split=lambda wildcards: data_config().val_split,
        seed=lambda wildcards: run_config(EXPERIMENTS[0]).train.seed,
    script:
        "../workflow/scripts/make_splits.py"


rule build_persistent_cache:
    input:
        train="results/splits/train.csv",
        val="results/splits/val.csv",
    output:
        manifest="results/cache/manifest.json",
    log:
        "logs/build_persistent_cache.log",
    benchmark:
        "benchmarks/build_persistent_cache.tsv"
    conda:
        "../workflow/envs/vae_dynamics.yaml"
    threads: 8
    params:
        # the preprocessing contract and where the tensors go: data.num_workers etc. rebuild nothing
        data=lambda wildcards: wf.cache_settings(data_config()),
    script:
        "../workflow/scripts/build_persistent_cache.py"
