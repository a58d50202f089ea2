"""What the Snakemake workflow calls: `plan` (torch-free: the runs, their configs and identities, read
by the rules) and `steps` (what each job runs)."""
