"""Checkpoint files, shared by every script.

A checkpoint is a `.pth` dict holding at least "model" (a state_dict) and "config" (a plain dict of Config
fields), plus whatever the writer adds (step, val_loss, optimizer state, ...). Only plain Python types and
tensors go in, so `torch.load(path, weights_only=True)` reads it. Writes are atomic: a temporary file in the
same folder is fsynced and renamed over the target, so a crash mid-save never loses the previous file.
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from model.model import Config, Model
from tinystories import quickstart
from tinystories.errors import UserError, first_line
from tinystories.files import atomic_write


def save_checkpoint(path: str | os.PathLike, checkpoint: dict[str, Any]) -> None:
    """Atomically write `checkpoint` (which must hold "model" and "config") with torch.save; a failed write (a
    full disk) is atomic_write's one-line UserError, and nothing is left under `path`."""
    atomic_write(path, lambda file: _torch_save(checkpoint, file))


def _torch_save(checkpoint: dict[str, Any], file: Any) -> None:
    """torch.save, raising the OSError of a failed write itself: torch's zip writer reports it as a RuntimeError
    ("unexpected pos ...") raised while handling it."""
    try:
        torch.save(checkpoint, file)
    except RuntimeError as error:
        cause = error.__context__
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__context__
        if cause is None:
            raise
        raise cause from None


def model_checkpoint(model: Model, **extra: Any) -> dict[str, Any]:
    """The minimal checkpoint of `model`: its state_dict on the CPU and its config as a plain dict."""
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    return {"model": state, "config": dataclasses.asdict(model.config), **extra}


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint; a missing, truncated or foreign file is a UserError naming it."""
    file = Path(path)
    if file.is_dir():
        raise UserError(f"checkpoint {path} is a folder; pass the .pth file (e.g. {Path(path) / 'best_model.pth'})")
    if not file.is_file():
        raise UserError(f"checkpoint {path} not found; pass --model, or train one offline in minutes with "
                        f"`{quickstart.COMMAND}` and pass --model {quickstart.MODEL}")
    try:
        with warnings.catch_warnings():
            # torch warns (e.g. about an unusual pickle protocol) before its own error; our one line says it all.
            warnings.simplefilter("ignore")
            checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = first_line(error)
        if "weights_only" in reason:  # torch's advice to load unsafely is wrong for a corrupt file
            reason = "it holds something other than tensors and plain values, which are never loaded, for safety"
        raise UserError(f"checkpoint {path} could not be read (truncated, corrupt or not a checkpoint): "
                        f"{reason}") from None
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
    if not isinstance(state, dict):
        raise UserError(f"{path}: 'model' must be a dict of tensors (a state_dict)")
    if "lm_head.weight" not in state and "token_embedding.weight" in state:
        state = {**state, "lm_head.weight": state["token_embedding.weight"]}  # tied: either name suffices
    _check_weights(state, model.state_dict(), path)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise UserError(f"{path}: weights do not match its config: {first_line(error)}") from None
    return model.to(device).eval(), checkpoint


def _check_weights(state: dict[str, Any], expected: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Name the first tensor that the config does not expect, lacks, shapes differently, or that holds NaN or
    infinity (a model with such a weight produces non-finite outputs)."""
    def mismatch(reason: str) -> UserError:
        return UserError(f"{path}: weights do not match its config: {reason}")

    missing, unused = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing:
        raise mismatch(f"it lacks {', '.join(missing[:3])}")
    if unused:
        raise mismatch(f"its config does not use {', '.join(unused[:3])}")
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise mismatch(f"{name} is not a tensor")
        if tensor.shape != expected[name].shape:
            raise mismatch(f"{name} has shape {tuple(tensor.shape)}, but its config implies "
                           f"{tuple(expected[name].shape)}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserError(f"{path}: {name} holds non-finite values (NaN or infinity), so the model produces "
                            "non-finite outputs; use an earlier checkpoint")
