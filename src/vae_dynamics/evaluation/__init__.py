"""Latent-space evaluation: encoding to latents, subject factors, disentanglement metrics, traversals."""

# How many latent dimensions (largest KL first) an evaluation draws as traversals unless told
# (`vae-dynamics evaluate --traversed-dims`, the workflow's evaluation.traversed_dims).
N_TRAVERSED = 8


def format_value(value: object, digits: int = 4) -> str:
    """A number as the summaries (compare, sweep) show it; '–' for a missing one."""
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        return "–"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)
