"""Data: subject indexing, splits, MONAI preprocessing, the persistent cache, the data module, demo data."""

MODALITIES = ("t1c", "t1n", "t2f", "t2w")
SEG_KEY = "seg"
FILE_KEYS = (*MODALITIES, SEG_KEY)
SEG_LABELS = (0, 1, 2, 3)  # background, NETC, SNFH (edema), ET

# A subject id becomes a file name (recon panels, snapshots, latents): letters, digits, '.', '_', '-',
# starting with a letter or digit (no path separators, no '..', no hidden files).
SUBJECT_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"
