"""Rule export_bundle: the run's model as a MONAI bundle zip (configs, TorchScript, ONNX, model card)."""

from pathlib import Path

from vae_dynamics.bundle import export_bundle
from vae_dynamics.pipeline.steps import log_to

with log_to(snakemake.log[0]):
    run = Path(snakemake.input.summary).parent
    print(f"bundle -> {export_bundle(run, snakemake.output[0], fmt='zip', force=True)}")
