"""Where the scripts read and write by default, and the names of a training run's files."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

RESULTS_DIR = "results"
DATA_ROOT = Path("data")  # prepared token files go to data/<dataset or name of the story files>
DEFAULT_DATA_DIR = str(DATA_ROOT / "tinystories")
BEST_MODEL = "best_model.pth"
CHECKPOINT = "checkpoint.pth"
LOCK = "train.lock"


@dataclass(frozen=True)
class RunPaths:
    """The files of a training run under its --out_dir."""
    out_dir: Path

    @property
    def checkpoints(self) -> Path:
        return self.out_dir / "checkpoints"

    @property
    def logs(self) -> Path:
        return self.out_dir / "logs"

    @property
    def best_model(self) -> Path:
        return self.checkpoints / BEST_MODEL

    @property
    def checkpoint(self) -> Path:
        return self.checkpoints / CHECKPOINT

    @property
    def lock(self) -> Path:
        return self.out_dir / LOCK

    def new_log(self) -> Path:
        return self.logs / f"training_{datetime.now():%Y%m%d_%H%M%S}.log"


DEFAULT_MODEL = str(RunPaths(Path(RESULTS_DIR)).best_model)  # results/checkpoints/best_model.pth
