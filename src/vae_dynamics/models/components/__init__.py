"""Building blocks shared by the VAEs."""
