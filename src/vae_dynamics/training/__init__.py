"""Training: LightningModules, callbacks, β schedules and the run (trainer + artifacts) assembly."""
