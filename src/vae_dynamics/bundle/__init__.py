"""Sharing a trained model as a MONAI bundle (`vae-dynamics export`), and reading one back (`load_run`).

<bundle>/configs/metadata.json     MONAI's metadata: data formats of the encoder and the decoder,
                                   the preprocessing contract, versions, intended use, data terms
<bundle>/configs/inference.json    `python -m monai.bundle run`: encode a folder of scans to codes.csv
<bundle>/configs/vae_dynamics.yaml, preprocessing.json, train_summary.json   the run's own record
<bundle>/models/model.pt           the weights: a plain state dict (loads with weights_only=True)
<bundle>/models/encoder.ts, decoder.ts      TorchScript
<bundle>/models/encoder.onnx, decoder.onnx  ONNX
<bundle>/scripts/                  transforms.py (the preprocessing) and encode.py: torch, MONAI,
                                   NumPy only, so the bundle runs without this package
<bundle>/docs/README.md            the model card; docs/data_license.txt, the training data's terms
"""

from vae_dynamics.bundle.export import BundleError, export_bundle, is_bundle, read_bundle

__all__ = ["BundleError", "export_bundle", "is_bundle", "read_bundle"]
