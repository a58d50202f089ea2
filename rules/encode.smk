# Inference: the scans named under `encode:` in the workflow config, encoded with a finished run.
# Nothing of the training cache is read or written: the scans are preprocessed as they are read.


rule encode_scans:
    input:
        summary="results/{run}/train_summary.json",
        source=lambda wildcards: ENCODE[wildcards.name]["source"],
    output:
        latents="results/{run}/encoded/{name}/latents.csv",
    log:
        "logs/encode_scans_{run}_{name}.log",
    benchmark:
        "benchmarks/encode_scans_{run}_{name}.tsv"
    wildcard_constraints:
        run=RUN_PATTERN,
        name=ENCODE_PATTERN,
    conda:
        "../workflow/envs/vae_dynamics.yaml"
    threads: 4
    resources:
        gpu=1,  # encodes on CUDA when present (the script claims its own GPU: vae_dynamics/gpus.py)
    params:
        reconstruct=lambda wildcards: ENCODE[wildcards.name]["reconstruct"],
        traverse=lambda wildcards: ENCODE[wildcards.name]["traverse"],
    script:
        "../workflow/scripts/encode_scans.py"
