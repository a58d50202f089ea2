#!/usr/bin/env python
"""Train Exp1 (baseline VAE) or Exp2 (β-TCVAE + SBD), selected by model.variant in the config.

python scripts/train.py --config src/vae_dynamics/config/exp2_tcvae_sbd.yaml
python scripts/train.py --config src/vae_dynamics/config/exp1_baseline_vae.yaml
python scripts/train.py --config C --run-dir D --resume          # continue D/checkpoints/last.ckpt
python scripts/train.py --config C --set train.max_epochs=3 --set data.batch_size=2
"""

from vae_dynamics.cli import train_main as main

if __name__ == "__main__":
    main()
