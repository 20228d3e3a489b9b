"""The shipped CPU quick start: one command that trains offline, and the files it writes.

Error messages that would otherwise send a user without the Hub or a GPU to a command that cannot work
(`python train.py` with the specification's defaults) name these instead; README's first screen shows the same commands.
"""
from __future__ import annotations

CONFIG = "configs/cpu-quickstart.yaml"
COMMAND = f"python train.py --config {CONFIG}"
MODEL = "results/quickstart/checkpoints/best_model.pth"  # its out_dir's best model
DATA_DIR = "data/synthetic"  # the token files of --dataset synthetic
