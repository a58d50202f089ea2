"""Rule index_subjects: validate every subject below the data root (or of the data_sheet)."""

from pathlib import Path

from vae_dynamics.data.index import index_subjects
from vae_dynamics.pipeline.steps import log_to

with log_to(snakemake.log[0]):
    out_dir = Path(snakemake.output.subjects).parent
    subjects, rejected = index_subjects(
        snakemake.params.root, out_dir, workers=snakemake.threads, sheet=snakemake.params.sheet
    )
    print(f"{len(subjects)} valid subjects, {len(rejected)} rejected")
    for row in rejected.itertuples():
        print(f"rejected {row.subject_id}: {row.file}: {row.reason}")
