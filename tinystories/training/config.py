"""Every training setting in one dataclass (train.py derives its flags from it; the specification's `train(...)` keyword
arguments map onto it one to one), and what follows from the settings alone: the learning-rate schedule and the
optimizer."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn
from torch.torch_version import TorchVersion

from model.model import Config
from tinystories.checks import PRESET_HELP, preset_config, require_at_least
from tinystories.errors import UserError
from tinystories.hardware import (
    COMPILE_CHOICES,
    DEVICE_HELP,
    DTYPE_CHOICES,
)
from tinystories.paths import RESULTS_DIR

MODEL_OVERRIDES = ("n_layer", "n_head", "n_embd", "block_size", "dropout")


@dataclass
class TrainConfig:
    # The specification's train(...) keyword arguments and defaults.
    epochs: int = field(default=20, metadata={"help": "passes over the training split (unless --max_steps)"})
    batch_size: int = field(default=32, metadata={"help": "sequences per micro-batch (per GPU)"})
    learning_rate: float = field(default=1e-4, metadata={"help": "peak learning rate after warmup"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay on 2-D weights"})
    eval_interval: int = field(default=500, metadata={"help": "optimizer steps between evaluations"})
    eval_iters: int = field(default=200, metadata={"help": "validation batches per evaluation"})
    gradient_accumulation_steps: int = field(default=32, metadata={
        "help": "micro-batches per optimizer step, over all GPUs"})
    max_grad_norm: float = field(default=0.5, metadata={"help": "gradient clipping threshold (0 disables)"})
    warmup_steps: int = field(default=1000, metadata={"help": "linear warmup steps"})
    save_interval: int = field(default=5000, metadata={"help": "optimizer steps between checkpoint.pth saves"})
    # Beyond the specification.
    max_steps: Optional[int] = field(default=None, metadata={"help": "optimizer steps to train; overrides --epochs"})
    min_lr: float = field(default=1e-5, metadata={"help": "learning rate at the end of the cosine decay"})
    seed: int = field(default=1337, metadata={"help": "seed for initialisation, data order and dropout"})
    device: str = field(default="auto", metadata={"help": DEVICE_HELP})
    dtype: str = field(default="auto", metadata={"choices": DTYPE_CHOICES,
                                                  "help": "auto: bfloat16 on GPUs that support it, else float16; "
                                                          "float32 on CPU"})
    compile: str = field(default="auto", metadata={"choices": COMPILE_CHOICES,
                                                    "help": "torch.compile the model (auto: on CUDA only)"})
    out_dir: str = field(default=RESULTS_DIR, metadata={"help": "folder for checkpoints/ and logs/"})
    resume: str = field(default="auto", metadata={
        "help": "auto (continue from OUT_DIR/checkpoints/checkpoint.pth if present), never, or a checkpoint path"})
    log_interval: int = field(default=10, metadata={"help": "optimizer steps between progress-bar loss updates"})
    preset: str = field(default="33M", metadata={"help": PRESET_HELP})
    n_layer: Optional[int] = field(default=None, metadata={"help": "override the preset's layers"})
    n_head: Optional[int] = field(default=None, metadata={"help": "override the preset's attention heads"})
    n_embd: Optional[int] = field(default=None, metadata={"help": "override the preset's hidden size"})
    block_size: Optional[int] = field(default=None, metadata={"help": "override the preset's context length"})
    dropout: Optional[float] = field(default=None, metadata={"help": "override the preset's dropout"})
    wandb: bool = field(default=False, metadata={"help": "log to Weights & Biases (needs wandb)"})
    tensorboard: bool = field(default=False, metadata={"help": "log to TensorBoard under OUT_DIR/logs/tensorboard"})

    def __post_init__(self) -> None:
        require_at_least(self, ("epochs", "batch_size", "eval_interval", "eval_iters", "gradient_accumulation_steps",
                                "save_interval", "log_interval", "max_steps"))
        for name in ("learning_rate", "min_lr", "weight_decay", "max_grad_norm", "warmup_steps"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name} must not be negative, got {getattr(self, name)}")
        if self.min_lr > self.learning_rate:
            raise UserError(f"--min_lr ({self.min_lr}) must not exceed --learning_rate ({self.learning_rate})")

    def model_config(self) -> Config:
        overrides = {name: getattr(self, name) for name in MODEL_OVERRIDES if getattr(self, name) is not None}
        return preset_config(self.preset, **overrides)


def learning_rate_at(step: int, config: TrainConfig, total_steps: int) -> float:
    """Linear warmup from 0 to learning_rate, then cosine decay to min_lr at total_steps."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    if step >= total_steps:
        return config.min_lr
    progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
    return config.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.learning_rate - config.min_lr)


def make_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on 2-D weights (matrices, embeddings) only, not on biases and norms.

    The fused kernel updates each parameter in one pass; it exists on CUDA and, since torch 2.4, on the CPU.
    """
    parameters = list(model.parameters())  # unique: the tied output weight appears once
    groups = [{"params": [p for p in parameters if p.dim() >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0}]
    fused = device.type == "cuda" or (device.type == "cpu" and TorchVersion(torch.__version__) >= "2.4")
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(0.9, 0.95), fused=fused)
