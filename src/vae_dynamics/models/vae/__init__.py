"""The two experiment models."""
