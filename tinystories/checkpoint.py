"""Checkpoint files, shared by every script.

A checkpoint is a `.pth` dict holding at least "model" (a state_dict) and "config" (a plain dict of Config
fields), plus whatever the writer adds (step, val_loss, optimizer state, ...). Only plain Python types and
tensors go in, so `torch.load(path, weights_only=True)` reads it. Writes are atomic: a temporary file in the
same folder is fsynced and renamed over the target, so a crash mid-save never loses the previous file.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from model.model import Config, Model
from tinystories import quickstart
from tinystories.errors import UserError, first_line
from tinystories.files import atomic_write


def save_checkpoint(path: str | os.PathLike, checkpoint: dict[str, Any]) -> None:
    """Atomically write `checkpoint` (which must hold "model" and "config") with torch.save."""
    atomic_write(path, lambda file: torch.save(checkpoint, file))


def model_checkpoint(model: Model, **extra: Any) -> dict[str, Any]:
    """The minimal checkpoint of `model`: its state_dict on the CPU and its config as a plain dict."""
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    return {"model": state, "config": dataclasses.asdict(model.config), **extra}


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint; a missing, truncated or foreign file is a UserError naming it."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"checkpoint {path} not found; pass --model, or train one offline in minutes with "
                        f"`{quickstart.COMMAND}` and pass --model {quickstart.MODEL}")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = first_line(error)
        if "weights_only" in reason:  # torch's advice to load unsafely is wrong for a corrupt file
            reason = "it holds something other than tensors and plain values, which are never loaded, for safety"
        raise UserError(f"checkpoint {path} could not be read (truncated, corrupt or not a checkpoint): {reason}") from None
    if not isinstance(checkpoint, dict) or not {"model", "config"} <= checkpoint.keys():
        raise UserError(f"{path} is not a TinyStories checkpoint (it needs 'model' and 'config' entries)")
    return checkpoint


def config_from_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike = "checkpoint") -> Config:
    config = checkpoint["config"]
    if not isinstance(config, dict):
        raise UserError(f"{path}: 'config' must be a dict of Config fields")
    known = {field.name for field in dataclasses.fields(Config)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise UserError(f"{path}: config has unknown fields {', '.join(unknown)}")
    try:
        return Config(**config)
    except (TypeError, ValueError) as error:
        raise UserError(f"{path}: invalid config: {error}") from None


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Model, dict[str, Any]]:
    """(model in eval mode on `device`, the whole checkpoint dict) from a checkpoint file."""
    checkpoint = load_checkpoint(path)
    config = config_from_checkpoint(checkpoint, path)
    model = Model(config)
    state = checkpoint["model"]
    if "lm_head.weight" not in state and "token_embedding.weight" in state:
        state = {**state, "lm_head.weight": state["token_embedding.weight"]}  # tied: either name suffices
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise UserError(f"{path}: weights do not match its config: {first_line(error)}") from None
    return model.to(device).eval(), checkpoint
