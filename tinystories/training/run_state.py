"""What a training run carries across a restart, and the checkpoint that holds it.

A run's state (step, best loss, history), every random generator's state, the identity of its data, and stop
requests by signal. `training_checkpoint` writes them with the model, optimizer, scaler and data position;
`read_resumable`, `check_same_run`, `check_same_data` and `check_fits` check a checkpoint in full, before any
of it is used, so that an incomplete or edited file is one line naming what is wrong; `restore` then loads it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from tinystories.checkpoint import model_checkpoint
from tinystories.data import DataConfig
from tinystories.data.batches import WindowBatches

# train.py's name for the data's split seed (its --seed is training's).
SPLIT_SEED = "split_seed"
TRAINING_ENTRIES = ("optimizer", "scaler", "data_position", "rng", "training_state", "data_fingerprint",
                    "world_batch", "training_arguments")
START_OVER = "pass --resume never to start over, or use another --out_dir"


@dataclass
class TrainingState:
    """What a resumed run needs besides model and optimizer."""
    step: int = 0
    best_val_loss: float = math.inf
    tokens_seen: int = 0
    elapsed_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RunParts:
    """The live objects whose state a training checkpoint saves and restores."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    batches: WindowBatches


@dataclass
class RunIdentity:
    """What must be the same for a resumed run to continue exactly where the saved one stopped."""
    model_config: dict[str, Any]
    seed: int  # initialisation, data order and dropout
    world_batch: list[int]  # batch size per process, processes
    split: dict[str, Any]  # the settings that decide which stories are trained on
    gradient_accumulation_steps: int  # with world_batch, the effective batch of an optimizer step


def split_settings(data_config: DataConfig) -> dict[str, Any]:
    """The data settings that decide the train/validation split, by their train.py flag names."""
    return {SPLIT_SEED: data_config.seed, "val_fraction": data_config.val_fraction,
            "max_stories": data_config.max_stories}


def rng_states() -> dict[str, Any]:
    """Every random generator's state as plain types and tensors (weights_only-loadable)."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    python_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian],
        "python": [python_state[0], list(python_state[1]), python_state[2]],
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if torch.cuda.is_available() and states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])
    kind, keys, position, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def data_fingerprint(tokens: np.ndarray) -> str:
    """Identifies a token split cheaply: its length and a hash of its first and last million tokens."""
    digest = hashlib.sha256(str(len(tokens)).encode())
    digest.update(np.ascontiguousarray(tokens[:1_000_000]).tobytes())
    digest.update(np.ascontiguousarray(tokens[-1_000_000:]).tobytes())
    return digest.hexdigest()[:16]


def training_checkpoint(parts: RunParts, state: TrainingState, rng: list[dict[str, Any]], identity: RunIdentity,
                        fingerprint: dict[str, str], training_arguments: dict[str, Any]) -> dict[str, Any]:
    """checkpoint.pth: everything needed to continue exactly (`rng` holds every rank's generators)."""
    return model_checkpoint(
        parts.model,
        optimizer=parts.optimizer.state_dict(),
        scaler=parts.scaler.state_dict(),
        data_position=parts.batches.state_dict(),
        rng=rng,
        training_state=dataclasses.asdict(state),
        data_fingerprint=fingerprint,
        world_batch=identity.world_batch,
        training_arguments=training_arguments,
        data_arguments=identity.split,
        step=state.step,
        epoch=parts.batches.epoch,
        best_val_loss=state.best_val_loss,
    )


def restore(checkpoint: dict[str, Any], parts: RunParts, rank: int) -> TrainingState:
    """Load a checked checkpoint into the live objects; returns the run's state."""
    parts.model.load_state_dict(checkpoint["model"])
    parts.optimizer.load_state_dict(checkpoint["optimizer"])
    parts.scaler.load_state_dict(checkpoint["scaler"])
    parts.batches.load_state_dict(checkpoint["data_position"])
    restore_rng_states(checkpoint["rng"][rank])
    return TrainingState(**checkpoint["training_state"])
