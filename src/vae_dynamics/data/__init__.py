"""Data: subject indexing, splits, MONAI preprocessing, the persistent cache, the data module, demo data."""

MODALITIES = ("t1c", "t1n", "t2f", "t2w")
SEG_KEY = "seg"
FILE_KEYS = (*MODALITIES, SEG_KEY)
SEG_LABELS = (0, 1, 2, 3)  # background, NETC, SNFH (edema), ET
