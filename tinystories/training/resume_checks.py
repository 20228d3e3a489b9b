"""The checks of a checkpoint before a run resumes from it: every entry well-formed, the same run settings and
data, and state that fits the run's model, optimizer and batches; each failure one line naming the problem."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch

from tinystories.checkpoint import load_checkpoint
from tinystories.errors import UserError
from tinystories.training.run_state import (
    START_OVER,
    TRAINING_ENTRIES,
    RunIdentity,
    RunParts,
    TrainingState,
)


class _Invalid(Exception):
    """A problem found in a checkpoint's training state."""


def _expect(condition: bool, problem: str) -> None:
    if not condition:
        raise _Invalid(problem)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _cannot_resume(path: Path, problem: str) -> UserError:
    return UserError(f"{path} cannot be resumed: {problem} (an incomplete or edited checkpoint); {START_OVER}")


def read_resumable(path: Path) -> dict[str, Any]:
    """The checkpoint at `path`, with every entry a resumed run reads present and of the right form."""
    checkpoint = load_checkpoint(path)
    if "optimizer" not in checkpoint:
        raise UserError(f"{path} holds model weights only, not a training state to resume; "
                        "pass --resume never to start over")
    try:
        _check_entries(checkpoint)
    except _Invalid as problem:
        raise _cannot_resume(path, str(problem)) from None
    return checkpoint


def _check_entries(checkpoint: dict[str, Any]) -> None:
    missing = [name for name in TRAINING_ENTRIES if name not in checkpoint]
    _expect(not missing, f"{', '.join(repr(name) for name in missing)} missing")
    optimizer = checkpoint["optimizer"]
    _expect(isinstance(optimizer, dict) and isinstance(optimizer.get("state"), dict)
            and isinstance(optimizer.get("param_groups"), list)
            and all(isinstance(group, dict) and isinstance(group.get("params"), list)
                    for group in optimizer["param_groups"]), "'optimizer' is not an optimizer state")
    _expect(isinstance(checkpoint["scaler"], dict), "'scaler' is not a gradient scaler state")
    position = checkpoint["data_position"]
    _expect(isinstance(position, dict) and set(position) == {"epoch", "position"}
            and all(_is_int(value) and value >= 0 for value in position.values()),
            "'data_position' must be {'epoch': n, 'position': n} with whole numbers n >= 0")
    rng = checkpoint["rng"]
    _expect(isinstance(rng, list) and len(rng) > 0, "'rng' must be a list of each process's generator states")
    for states in rng:
        _check_rng_states(states)
    _check_training_state(checkpoint["training_state"])
    fingerprint = checkpoint["data_fingerprint"]
    _expect(isinstance(fingerprint, dict) and all(isinstance(v, str) for v in fingerprint.values()),
            "'data_fingerprint' must map splits to fingerprints")
    world_batch = checkpoint["world_batch"]
    _expect(isinstance(world_batch, list) and len(world_batch) == 2
            and all(_is_int(value) and value >= 1 for value in world_batch),
            "'world_batch' must be [batch size, processes]")
    arguments = checkpoint["training_arguments"]
    _expect(isinstance(arguments, dict) and _is_int(arguments.get("seed")),
            "'training_arguments' must be a mapping of the training settings, with a whole-number seed")
    _expect(isinstance(checkpoint.get("data_arguments", {}), dict), "'data_arguments' must be a mapping")


def _check_rng_states(states: Any) -> None:
    _expect(isinstance(states, dict) and set(states) == {"torch", "cuda", "numpy", "python"},
            "'rng' entries must hold exactly torch, cuda, numpy and python generator states")
    torch_state = states["torch"]
    _expect(isinstance(torch_state, torch.Tensor) and torch_state.dtype == torch.uint8
            and torch_state.shape == torch.get_rng_state().shape, "the torch generator state is malformed")
    _expect(isinstance(states["cuda"], list) and all(isinstance(s, torch.Tensor) and s.dtype == torch.uint8
                                                     for s in states["cuda"]),
            "the CUDA generator states are malformed")
    numpy_state = states["numpy"]
    _expect(isinstance(numpy_state, list) and len(numpy_state) == 5 and numpy_state[0] == "MT19937"
            and isinstance(numpy_state[1], torch.Tensor) and numpy_state[1].shape == (624,)
            and _is_int(numpy_state[2]) and 0 <= numpy_state[2] <= 624 and _is_int(numpy_state[3])
            and isinstance(numpy_state[4], float), "the numpy generator state is malformed")
    python_state = states["python"]
    _expect(isinstance(python_state, list) and len(python_state) == 3 and _is_int(python_state[0])
            and isinstance(python_state[1], list) and len(python_state[1]) == 625
            and all(_is_int(word) and 0 <= word < 2**32 for word in python_state[1]) and python_state[1][-1] <= 624
            and (python_state[2] is None or isinstance(python_state[2], float)),
            "the Python generator state is malformed")


def _check_training_state(state: Any) -> None:
    _expect(isinstance(state, dict), "'training_state' is not a mapping")
    names = [f.name for f in dataclasses.fields(TrainingState)]
    unknown, missing = sorted(set(state) - set(names)), [name for name in names if name not in state]
    _expect(not unknown, f"'training_state' has unknown entries {', '.join(unknown)}")
    _expect(not missing, f"'training_state' lacks {', '.join(missing)}")
    _expect(_is_int(state["step"]) and state["step"] >= 0, "training_state step must be a whole number >= 0")
    _expect(_is_int(state["tokens_seen"]) and state["tokens_seen"] >= 0,
            "training_state tokens_seen must be a whole number >= 0")
    _expect(_is_number(state["best_val_loss"]), "training_state best_val_loss must be a number")
    _expect(_is_number(state["elapsed_seconds"]) and 0 <= state["elapsed_seconds"] < math.inf,
            "training_state elapsed_seconds must be a finite number >= 0")
    _expect(isinstance(state["history"], list) and all(isinstance(entry, dict) for entry in state["history"]),
            "training_state history must be a list of evaluation records")


def check_same_run(checkpoint: dict[str, Any], path: Path, identity: RunIdentity) -> None:
    """Refuse to resume under settings that would not continue the saved run exactly (checked before any work)."""
    saved_config = checkpoint["config"]
    if saved_config != identity.model_config:
        changed = sorted(k for k in set(saved_config) | set(identity.model_config)
                         if saved_config.get(k) != identity.model_config.get(k))
        raise UserError(f"{path} was trained with a different model ({', '.join(changed)} differ); "
                        "use the same settings, another --out_dir, or --resume never")
    saved_seed = checkpoint["training_arguments"]["seed"]
    if saved_seed != identity.seed:
        raise UserError(f"{path} was trained with --seed {saved_seed}; resuming exactly needs the same seed "
                        "(it sets the data order and dropout)")
    if checkpoint["world_batch"] != identity.world_batch:
        raise UserError(f"{path} was trained with batch size and processes {checkpoint['world_batch']}; "
                        f"resuming exactly needs the same ({identity.world_batch[0]}, {identity.world_batch[1]})")
    saved_accumulation = checkpoint["training_arguments"].get("gradient_accumulation_steps")
    if saved_accumulation is not None and saved_accumulation != identity.gradient_accumulation_steps:
        raise UserError(f"{path} was trained with --gradient_accumulation_steps {saved_accumulation}; resuming "
                        f"exactly needs the same (it sets the effective batch of every optimizer step)")
    saved_split = checkpoint.get("data_arguments", {})  # absent from checkpoints of older versions
    changed = [name for name in identity.split if name in saved_split and saved_split[name] != identity.split[name]]
    if changed:
        settings = ", ".join(f"--{name} {saved_split[name]}" for name in changed)
        raise UserError(f"{path} was trained on a split made with {settings}; resuming needs the same data "
                        "(use the same settings, another --out_dir, or --resume never)")


def check_same_data(checkpoint: dict[str, Any], path: Path, fingerprint: dict[str, str], data_dir: Path) -> None:
    if checkpoint["data_fingerprint"] != fingerprint:
        raise UserError(f"{path} was trained on different data than {data_dir}; "
                        "use the same data, another --out_dir, or --resume never")


def check_fits(checkpoint: dict[str, Any], path: Path, parts: RunParts, world_size: int) -> None:
    """Whether the saved states fit the live model, optimizer, scaler, batches and processes."""
    try:
        _check_fits(checkpoint, parts, world_size)
    except _Invalid as problem:
        raise _cannot_resume(path, str(problem)) from None


def _check_fits(checkpoint: dict[str, Any], parts: RunParts, world_size: int) -> None:
    weights = checkpoint["model"]
    expected = parts.model.state_dict()
    _expect(isinstance(weights, dict) and set(weights) == set(expected),
            "its weights are not those of this model")
    for name, tensor in expected.items():
        _expect(isinstance(weights[name], torch.Tensor) and weights[name].shape == tensor.shape,
                f"weight {name} has the wrong shape")
    saved_groups = checkpoint["optimizer"]["param_groups"]
    live_groups = parts.optimizer.param_groups
    _expect([len(group["params"]) for group in saved_groups] == [len(group["params"]) for group in live_groups],
            f"its optimizer has {len(saved_groups)} parameter groups of sizes "
            f"{[len(group['params']) for group in saved_groups]}, this model needs "
            f"{[len(group['params']) for group in live_groups]}")
    shapes = [parameter.shape for group in live_groups for parameter in group["params"]]
    identifiers = [identifier for group in saved_groups for identifier in group["params"]]
    _expect(identifiers == list(range(len(shapes))), "its optimizer's parameter numbering is not this model's")
    for identifier, moments in checkpoint["optimizer"]["state"].items():
        _expect(identifier in identifiers and isinstance(moments, dict)
                and all(isinstance(moments.get(key), torch.Tensor) for key in ("step", "exp_avg", "exp_avg_sq"))
                and moments["exp_avg"].shape == moments["exp_avg_sq"].shape == shapes[identifier],
                f"its optimizer state of parameter {identifier} does not fit this model")
    if parts.scaler.is_enabled():
        scaler = checkpoint["scaler"]
        _expect(all(_is_number(scaler.get(key)) for key in ("scale", "growth_factor", "backoff_factor",
                                                            "growth_interval", "_growth_tracker")),
                "its gradient scaler state is incomplete (float16 training needs one)")
    position = checkpoint["data_position"]["position"]
    _expect(position < parts.batches.batches_per_epoch,
            f"its data position (batch {position}) is beyond this split's {parts.batches.batches_per_epoch} "
            "batches per epoch")
    _expect(len(checkpoint["rng"]) == world_size,
            f"it holds generator states of {len(checkpoint['rng'])} processes, not {world_size}")
    if torch.cuda.is_available():  # without CUDA, its generator states are not restored
        _expect(all(len(states["cuda"]) <= torch.cuda.device_count() for states in checkpoint["rng"]),
                "it holds CUDA generator states of more GPUs than this machine has")
