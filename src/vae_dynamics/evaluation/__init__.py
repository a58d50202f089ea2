"""Latent-space evaluation: encoding to latents, subject factors, disentanglement metrics, traversals."""
