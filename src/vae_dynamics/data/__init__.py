"""Data: subject indexing, splits, MONAI preprocessing, the persistent cache, the data module, demo data."""

from vae_dynamics.config.schema import MODALITIES  # the one spelling (config/ is the bottom layer)

SEG_KEY = "seg"
FILE_KEYS = (*MODALITIES, SEG_KEY)
TUMOUR_LABELS = {"netc": 1, "snfh": 2, "et": 3}  # BraTS 2023: 1 NETC, 2 SNFH (edema), 3 ET
SEG_LABELS = (0, *TUMOUR_LABELS.values())  # with 0, the background

# A subject id becomes a file name (recon panels, snapshots, latents): letters, digits, '.', '_', '-',
# starting with a letter or digit (no path separators, no '..', no hidden files).
SUBJECT_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"
