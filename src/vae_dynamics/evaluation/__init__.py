"""Latent-space evaluation: encoding to latents, subject factors, disentanglement metrics, traversals."""

# How many latent dimensions (largest KL first) an evaluation draws as traversals unless told
# (`vae-dynamics evaluate --traversed-dims`, the workflow's evaluation.traversed_dims).
N_TRAVERSED = 8
