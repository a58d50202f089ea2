"""Latent-space evaluation: encoding to latents, subject factors, disentanglement metrics, traversals."""

# How many latent dimensions (largest KL first) an evaluation draws as traversals unless told
# (`vae-dynamics evaluate --traversed-dims`, the workflow's evaluation.traversed_dims).
N_TRAVERSED = 8

# The headline numbers of metrics.json, in table order (compare and sweep summaries): disentanglement
# and the latent space, then reconstruction (over the all-zero and the training-mean-volume predictors,
# and whether the decoder uses the code: z_dependence 1 = another subject's code reconstructs as well).
LATENT_SCALARS = (
    "mig",
    "dci_disentanglement",
    "dci_completeness",
    "dci_informativeness",
    "sap",
    "active_units",
    "kl_total",
)
RECON_SCALARS = ("val_mse_over_zero_predictor", "val_mse_over_mean_volume", "z_dependence")
# What an evaluation prints when it has finished (the CLI, the workflow's log).
PRINTED_SCALARS = ("mig", "dci_disentanglement", "sap", "active_units")


def printed(metrics: dict) -> str:
    """The one line an evaluation prints: its PRINTED_SCALARS as JSON."""
    import json

    return json.dumps({k: metrics[k] for k in PRINTED_SCALARS})


def format_value(value: object, digits: int = 4) -> str:
    """A number as the summaries (compare, sweep) show it; '–' for a missing one."""
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        return "–"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)
