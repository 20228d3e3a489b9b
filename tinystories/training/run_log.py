"""The training record: a JSON log, a loss-curve plot, and optional TensorBoard / Weights & Biases."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tinystories.errors import UserError
from tinystories.files import atomic_write, write_json

CURVE_FILE = "loss_curve.png"


class RunLog:
    """Keeps `results/logs/training_*.log` (arguments + history) and `loss_curve.png` current."""

    def __init__(self, log_path: Path, arguments: dict[str, Any], history: list[dict[str, Any]],
                 tensorboard: bool = False, wandb: bool = False) -> None:
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.curve_path = log_path.parent / CURVE_FILE
        self.arguments = arguments
        self.history = history
        self._tensorboard = self._open_tensorboard(log_path.parent) if tensorboard else None
        self._wandb = self._open_wandb(arguments) if wandb else None

    @staticmethod
    def _open_tensorboard(folder: Path) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
        return SummaryWriter(log_dir=str(folder / "tensorboard"))

    @staticmethod
    def _open_wandb(arguments: dict[str, Any]) -> Any:
        try:
            import wandb
        except ImportError:
            raise UserError("--wandb needs the wandb package: pip install wandb") from None
        return wandb.init(project="tinystories", config=arguments)

    def record(self, entry: dict[str, Any]) -> None:
        """Append one evaluation's entry, rewrite the JSON log and redraw the curve."""
        self.history.append(entry)
        write_json(self.log_path, {"arguments": self.arguments, "history": self.history})
        self._plot()
        numbers = {key: value for key, value in entry.items()
                   if isinstance(value, (int, float)) and key != "step"}
        if self._tensorboard is not None:
            for key, value in numbers.items():
                self._tensorboard.add_scalar(key, value, entry["step"])
            self._tensorboard.flush()
        if self._wandb is not None:
            self._wandb.log(numbers, step=entry["step"])

    def _plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg")  # files only; no display needed
        import matplotlib.pyplot as plt

        tokens = [entry["tokens_seen"] for entry in self.history]
        figure, axes = plt.subplots(figsize=(7, 4.5))
        axes.plot(tokens, [entry["train_loss"] for entry in self.history], marker=".", label="train")
        axes.plot(tokens, [entry["val_loss"] for entry in self.history], marker=".", label="validation")
        axes.set_xlabel("tokens seen")
        axes.set_ylabel("cross-entropy loss (nats/token)")
        axes.set_title("TinyStories training")
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        atomic_write(self.curve_path, lambda file: figure.savefig(file, format="png", dpi=100))
        plt.close(figure)

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exception: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()

