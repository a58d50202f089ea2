"""Figures: reconstruction panels and loss curves."""
