"""tinystories/training/run_state.py: generator states round-trip, data fingerprints, stop requests, and a checkpoint to
resume checked in full before any of it is used (one line naming what is wrong, never a traceback)."""
import copy
import dataclasses
import hashlib
import os
import random
import signal
import threading
import time

import numpy as np
import pytest
import torch

from model.model import Model, preset
from tinystories.data import DataConfig
from tinystories.data.batches import WindowBatches
from tinystories.errors import UserError
from tinystories.training.config import TrainConfig
from tinystories.training.resume_checks import check_fits, check_same_data, check_same_run, read_resumable
from tinystories.training.run_state import (
    RunIdentity,
    RunParts,
    TrainingState,
    data_fingerprint,
    restore,
    restore_rng_states,
    rng_states,
    seed_everything,
    split_settings,
    training_checkpoint,
)
from tinystories.training.stop_signals import STOPPING_MESSAGE, StopRequest
from tinystories.training.trainer import Trainer


def test_generator_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    states = rng_states()
    torch.save(states, tmp_path / "rng.pth")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_states(torch.load(tmp_path / "rng.pth", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_data_fingerprint_sees_length_and_both_ends():
    tokens = np.arange(3_000_000, dtype=np.uint16)
    changed_end, longer = tokens.copy(), np.append(tokens, 0).astype(np.uint16)
    changed_end[-1] += 1
    fingerprints = {data_fingerprint(t) for t in (tokens, changed_end, longer)}
    assert len(fingerprints) == 3 and data_fingerprint(tokens.copy()) == data_fingerprint(tokens)


def wait_for(condition, seconds=5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_stop_request_acknowledges_the_first_signal_and_stops_now_on_the_second():
    # SIGTERM's default action, as in train.py: without StopRequest's own handler the signal would end the process.
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        said, stopped_now = [], []
        with StopRequest(acknowledge=said.append, stop_now=stopped_now.append) as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            assert wait_for(lambda: said == [STOPPING_MESSAGE]) and stop.signal_number == signal.SIGTERM
            os.kill(os.getpid(), signal.SIGINT)
            assert wait_for(lambda: stopped_now == [signal.SIGTERM])  # with the first signal's number
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_stop_request_answers_while_the_main_thread_is_inside_one_long_call():
    """Python would run a signal handler only after the call returns; the thread answers during it."""
    said = []

    def acknowledge(message: str) -> None:
        said.append((message, threading.current_thread() is threading.main_thread()))

    with StopRequest(acknowledge=acknowledge, stop_now=lambda number: None):
        os.kill(os.getpid(), signal.SIGINT)
        torch.randn(2000, 2000) @ torch.randn(2000, 2000)  # one call into C++
        assert wait_for(lambda: said == [(STOPPING_MESSAGE, False)])  # answered by the thread, not the main one


def live_parts(seed: int, tokens: np.ndarray) -> RunParts:
    torch.manual_seed(seed)
    model = Model(preset("nano", dropout=0.0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    scaler = torch.amp.GradScaler("cpu", init_scale=512.0 * (seed + 1), growth_interval=7 + seed)
    return RunParts(model, optimizer, scaler, WindowBatches(tokens, block_size=16, batch_size=2, seed=seed))


def settings(out_dir, **overrides):
    values = dict(preset="tiny", block_size=32, batch_size=2, gradient_accumulation_steps=1, max_steps=2,
                  eval_interval=2, eval_iters=1, device="cpu", compile="false", out_dir=str(out_dir))
    return TrainConfig(**{**values, **overrides})


def synthetic_config(data_dir):
    return DataConfig(dataset="synthetic", max_stories=400, data_dir=str(data_dir))


@pytest.fixture(scope="module")
def saved(synthetic_data_dir, tmp_path_factory):
    """A real checkpoint.pth after two steps."""
    out_dir = tmp_path_factory.mktemp("saved_run")
    Trainer(settings(out_dir), synthetic_config(synthetic_data_dir)).run()
    return torch.load(out_dir / "checkpoints" / "checkpoint.pth", weights_only=True)


def without(name):
    return lambda checkpoint: checkpoint.pop(name)


def setter(*keys, value):
    def edit(checkpoint):
        target = checkpoint
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return edit


def one_optimizer_group(checkpoint):
    groups = checkpoint["optimizer"]["param_groups"]
    groups[0]["params"] += groups[1]["params"]
    del groups[1]


def wrong_moment_shape(checkpoint):
    checkpoint["optimizer"]["state"][0]["exp_avg"] = torch.zeros(3)


EDITS = {
    "missing rng": (without("rng"), "'rng' missing"),
    "missing scaler": (without("scaler"), "'scaler' missing"),
    "extra training_state key": (setter("training_state", "learning_rate", value=0.1),
                                 "'training_state' has unknown entries learning_rate"),
    "data position not a mapping": (setter("data_position", value=[0, 1]), "'data_position' must be"),
    "data position beyond the epoch": (setter("data_position", "position", value=10**6),
                                       "data position (batch 1000000) is beyond"),
    "negative epoch": (setter("data_position", "epoch", value=-1), "'data_position' must be"),
    "wrong optimizer groups": (one_optimizer_group, "parameter groups of sizes"),
    "optimizer moments of another shape": (wrong_moment_shape, "optimizer state of parameter 0"),
    "training_arguments as a list": (setter("training_arguments", value=[1, 2]), "'training_arguments' must be"),
    "torch generator state cut short": (setter("rng", 0, "torch", value=torch.zeros(10, dtype=torch.uint8)),
                                        "torch generator state is malformed"),
    "python generator index out of range": (setter("rng", 0, "python", 1, 624, value=10**6),
                                            "Python generator state is malformed"),
    "generator states of two processes": (lambda c: c["rng"].append(c["rng"][0]), "of 2 processes, not 1"),
    "negative step": (setter("training_state", "step", value=-5), "step must be a whole number"),
    "NaN best loss": (setter("training_state", "best_val_loss", value=float("nan")), "best_val_loss"),
    "a weight missing": (lambda c: c["model"].pop("final_norm.weight"), "weights are not those of this model"),
    "world_batch not a pair": (setter("world_batch", value=2), "'world_batch' must be"),
}


@pytest.mark.parametrize("edit, message", EDITS.values(), ids=EDITS.keys())
def test_an_incomplete_or_edited_checkpoint_is_refused_in_one_line(edit, message, saved, synthetic_data_dir,
                                                                   tmp_path):
    checkpoint = copy.deepcopy(saved)
    edit(checkpoint)
    path = tmp_path / "edited.pth"
    torch.save(checkpoint, path)
    with pytest.raises(UserError) as refused:
        Trainer(settings(tmp_path / "run", max_steps=4, resume=str(path)), synthetic_config(synthetic_data_dir))
    text = str(refused.value)
    assert message in text and text.startswith(f"{path} cannot be resumed") and "\n" not in text, text


def test_the_unedited_checkpoint_resumes(saved, synthetic_data_dir, tmp_path):
    path = tmp_path / "checkpoint.pth"
    torch.save(saved, path)
    trainer = Trainer(settings(tmp_path / "run", max_steps=4, resume=str(path)), synthetic_config(synthetic_data_dir))
    assert trainer.state.step == 2
    assert all(torch.equal(trainer.model.state_dict()[name], saved["model"][name]) for name in saved["model"])
    trainer.lock.release()


def test_a_different_split_is_refused_before_the_data_is_touched(saved, tmp_path):
    path = tmp_path / "checkpoint.pth"
    torch.save(saved, path)
    data = DataConfig(dataset="synthetic", max_stories=400, data_dir=str(tmp_path / "never_built"), seed=7)
    with pytest.raises(UserError, match="trained on a split made with --split_seed 1337"):
        Trainer(settings(tmp_path / "run", resume=str(path)), data)
    assert not (tmp_path / "never_built").exists()


TOKENS = np.random.default_rng(0).integers(0, 512, size=2000).astype(np.uint16)
IDENTITY = RunIdentity(dataclasses.asdict(preset("nano", dropout=0.0)), seed=3, world_batch=[2, 1],
                       split={"split_seed": 9, "val_fraction": 0.1, "max_stories": 400}, gradient_accumulation_steps=2)
BATCHES_PER_EPOCH = live_parts(0, TOKENS).batches.batches_per_epoch  # position BATCHES_PER_EPOCH is one too far
STATE = TrainingState(step=3, best_val_loss=5.5, tokens_seen=96, elapsed_seconds=1.5,
                      history=[{"step": 2, "val_loss": 5.5}])


def trained_parts() -> RunParts:
    """Live parts after three steps: optimizer moments and a data position that are not the initial ones."""
    parts = live_parts(0, TOKENS)
    for _ in range(3):
        inputs, targets = parts.batches.next_batch()
        parts.model(inputs, targets)[1].backward()
        parts.optimizer.step()
        parts.optimizer.zero_grad()
    return parts


def test_a_training_checkpoint_restores_every_part_and_generator_exactly(tmp_path):
    """training_checkpoint, then read_resumable, the checks and restore into other live objects, in process."""
    saved = trained_parts()
    generators = rng_states()
    expected_draws = (torch.rand(3), np.random.rand(3), random.random())
    checkpoint = training_checkpoint(saved, STATE, [generators], IDENTITY, {"train": "f1"},
                                     {"seed": 3, "gradient_accumulation_steps": 2})
    path = tmp_path / "checkpoint.pth"
    torch.save(checkpoint, path)

    loaded = read_resumable(path)
    assert loaded["data_arguments"] == IDENTITY.split and loaded["world_batch"] == [2, 1]
    assert (loaded["step"], loaded["epoch"], loaded["best_val_loss"]) == (3, 0, 5.5)  # read without resuming
    check_same_run(loaded, path, IDENTITY)
    check_same_data(loaded, path, {"train": "f1"}, tmp_path)
    resumed = live_parts(1, TOKENS)
    check_fits(loaded, path, resumed, world_size=1)
    assert restore(loaded, resumed, rank=0) == STATE
    assert (torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random()) == \
        (expected_draws[0].tolist(), expected_draws[1].tolist(), expected_draws[2])
    for name, tensor in saved.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name
    live, restored = saved.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert live["param_groups"] == restored["param_groups"] and live["state"].keys() == restored["state"].keys()
    for index, moments in live["state"].items():
        assert all(torch.equal(restored["state"][index][key], value) for key, value in moments.items())
    assert resumed.scaler.state_dict() == saved.scaler.state_dict()
    assert resumed.batches.state_dict() == saved.batches.state_dict() == {"epoch": 0, "position": 3}


def renumbered_parameters(checkpoint):
    for group in checkpoint["optimizer"]["param_groups"]:
        group["params"] = [identifier + 1 for identifier in group["params"]]


SCALER_KEYS = ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker")
FIT_EDITS = {
    "a weight missing": (lambda c: c["model"].pop("final_norm.weight"), "its weights are not those of this model"),
    "a weight of another shape": (setter("model", "final_norm.weight", value=torch.zeros(3)),
                                  "weight final_norm.weight has the wrong shape"),
    "a weight that is not a tensor": (setter("model", "final_norm.weight", value=[1.0]),
                                      "weight final_norm.weight has the wrong shape"),
    "parameters numbered from 1": (renumbered_parameters, "its optimizer's parameter numbering is not this model's"),
    "data position at the end of the epoch": (setter("data_position", "position", value=BATCHES_PER_EPOCH),
                                              f"its data position (batch {BATCHES_PER_EPOCH}) is beyond this "
                                              f"split's {BATCHES_PER_EPOCH} batches per epoch"),
    **{f"scaler without {key}": (lambda c, key=key: c["scaler"].pop(key),
                                 "its gradient scaler state is incomplete (float16 training needs one)")
       for key in SCALER_KEYS},
}


@pytest.mark.parametrize("edit, message", FIT_EDITS.values(), ids=FIT_EDITS.keys())
def test_saved_states_that_do_not_fit_the_live_parts_are_refused_in_one_line(edit, message, resumable, tmp_path):
    checkpoint = copy.deepcopy(resumable)
    edit(checkpoint)
    with pytest.raises(UserError) as refused:  # the live scaler is enabled, as float16 training's: its state is checked
        check_fits(checkpoint, tmp_path / "checkpoint.pth", live_parts(1, TOKENS), world_size=1)
    assert str(refused.value) == (f"{tmp_path / 'checkpoint.pth'} cannot be resumed: {message} "
                                  "(an incomplete or edited checkpoint); pass --resume never to start over, or use "
                                  "another --out_dir")


def test_a_different_model_or_data_is_refused_naming_what_differs(tmp_path):
    checkpoint = training_checkpoint(trained_parts(), STATE, [rng_states()], IDENTITY, {"train": "f1"}, {"seed": 3})
    path = tmp_path / "checkpoint.pth"
    older = dict(IDENTITY.model_config, n_embd=64)
    del older["activation"]  # a setting that one of the two does not have differs too
    checkpoint["config"] = older
    with pytest.raises(UserError) as refused:
        check_same_run(checkpoint, path, IDENTITY)
    assert str(refused.value) == (f"{path} was trained with a different model (activation, n_embd differ); "
                                  "use the same settings, another --out_dir, or --resume never")
    with pytest.raises(UserError) as refused:
        check_same_data(checkpoint, path, {"train": "f2"}, tmp_path / "data")
    assert str(refused.value) == (f"{path} was trained on different data than {tmp_path / 'data'}; "
                                  "use the same data, another --out_dir, or --resume never")


@pytest.mark.parametrize("length", [10, 2_000_001, 2_500_000])
def test_data_fingerprint_is_the_sha256_of_length_first_and_last_million_tokens(length):
    tokens = (np.arange(length) % 50_000).astype(np.uint16)
    head, tail = tokens[:1_000_000], tokens[max(length - 1_000_000, 0):]
    digest = hashlib.sha256(str(length).encode() + head.tobytes() + tail.tobytes())
    assert data_fingerprint(tokens) == digest.hexdigest()[:16]


def test_seed_everything_seeds_torch_numpy_and_python():
    def draws():
        return torch.rand(2).tolist(), np.random.rand(2).tolist(), random.random()
    seed_everything(5)
    first = draws()
    seed_everything(5)
    assert draws() == first
    seed_everything(6)
    assert all(a != b for a, b in zip(draws(), first))


def test_stop_request_keeps_answering_after_another_signals_wakeup_byte():
    """Other signals with a Python handler write their number to the wakeup pipe too; they are skipped."""
    previous = signal.signal(signal.SIGUSR1, lambda number, frame: None)
    try:
        said = []
        with StopRequest(acknowledge=said.append, stop_now=lambda number: None) as stop:
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.2)
            assert stop.signal_number is None
            os.kill(os.getpid(), signal.SIGTERM)
            assert wait_for(lambda: said == [STOPPING_MESSAGE]) and stop.signal_number == signal.SIGTERM
    finally:
        signal.signal(signal.SIGUSR1, previous)


@pytest.fixture(scope="module")
def resumable():
    return training_checkpoint(trained_parts(), STATE, [rng_states()], IDENTITY, {"train": "f1"},
                               {"seed": 3, "gradient_accumulation_steps": 2})


RNG = ("rng", 0)
ENTRY_PROBLEMS = {
    "two entries missing": (lambda c: [c.pop("rng"), c.pop("scaler")], "'scaler', 'rng' missing"),
    "optimizer a list": (setter("optimizer", value=[]), "'optimizer' is not an optimizer state"),
    "optimizer state a list": (setter("optimizer", "state", value=[]), "'optimizer' is not an optimizer state"),
    "optimizer groups a mapping": (setter("optimizer", "param_groups", value={}),
                                   "'optimizer' is not an optimizer state"),
    "a group without its parameters": (lambda c: c["optimizer"]["param_groups"][0].pop("params"),
                                       "'optimizer' is not an optimizer state"),
    "scaler a list": (setter("scaler", value=[]), "'scaler' is not a gradient scaler state"),
    "data position with another key": (setter("data_position", "batch", value=0), "'data_position' must be"),
    "data position a fraction": (setter("data_position", "position", value=1.5), "'data_position' must be"),
    "data position true": (setter("data_position", "epoch", value=True), "'data_position' must be"),
    "rng empty": (setter("rng", value=[]), "'rng' must be a list of each process's generator states"),
    "rng a mapping": (setter("rng", value={}), "'rng' must be a list of each process's generator states"),
    "fingerprint a list": (setter("data_fingerprint", value=[]), "'data_fingerprint' must map splits to fingerprints"),
    "fingerprint a number": (setter("data_fingerprint", "train", value=1),
                             "'data_fingerprint' must map splits to fingerprints"),
    "world_batch of three": (setter("world_batch", value=[2, 1, 1]), "'world_batch' must be [batch size, processes]"),
    "world_batch of zero processes": (setter("world_batch", value=[2, 0]),
                                      "'world_batch' must be [batch size, processes]"),
    "training_arguments without a seed": (setter("training_arguments", value={}),
                                          "'training_arguments' must be a mapping of the training settings, with a "
                                          "whole-number seed"),
    "data_arguments a list": (setter("data_arguments", value=[]), "'data_arguments' must be a mapping"),
    "generator states of another kind": (setter(*RNG, value=[]), "'rng' entries must hold exactly torch, cuda, "
                                                                "numpy and python generator states"),
    "generator states without python": (lambda c: c["rng"][0].pop("python"), "'rng' entries must hold exactly"),
    "torch state of another type": (setter(*RNG, "torch", value=torch.zeros(5056, dtype=torch.int32)),
                                    "the torch generator state is malformed"),
    "cuda states a tensor": (setter(*RNG, "cuda", value=torch.zeros(3, dtype=torch.uint8)),
                             "the CUDA generator states are malformed"),
    "cuda state of another type": (setter(*RNG, "cuda", value=[torch.zeros(3)]),
                                   "the CUDA generator states are malformed"),
    "numpy state of 4": (lambda c: c["rng"][0]["numpy"].pop(), "the numpy generator state is malformed"),
    "numpy generator of another name": (setter(*RNG, "numpy", 0, value="PCG64"),
                                        "the numpy generator state is malformed"),
    "numpy keys cut short": (setter(*RNG, "numpy", 1, value=torch.zeros(623, dtype=torch.int64)),
                             "the numpy generator state is malformed"),
    "numpy position 625": (setter(*RNG, "numpy", 2, value=625), "the numpy generator state is malformed"),
    "numpy position a float": (setter(*RNG, "numpy", 2, value=3.0), "the numpy generator state is malformed"),
    "python position 625": (setter(*RNG, "python", 1, 624, value=625), "the Python generator state is malformed"),
    "numpy position negative": (setter(*RNG, "numpy", 2, value=-1), "the numpy generator state is malformed"),
    "numpy gauss flag a fraction": (setter(*RNG, "numpy", 3, value=0.5), "the numpy generator state is malformed"),
    "numpy cached gaussian an integer": (setter(*RNG, "numpy", 4, value=1), "the numpy generator state is malformed"),
    "python state of 2": (lambda c: c["rng"][0]["python"].pop(), "the Python generator state is malformed"),
    "python version a string": (setter(*RNG, "python", 0, value="3"), "the Python generator state is malformed"),
    "python words cut short": (lambda c: c["rng"][0]["python"][1].pop(0), "the Python generator state is malformed"),
    "python word of 33 bits": (setter(*RNG, "python", 1, 0, value=2**32), "the Python generator state is malformed"),
    "python word negative": (setter(*RNG, "python", 1, 0, value=-1), "the Python generator state is malformed"),
    "python gauss an integer": (setter(*RNG, "python", 2, value=1), "the Python generator state is malformed"),
    "training state a list": (setter("training_state", value=[]), "'training_state' is not a mapping"),
    "two unknown entries": (lambda c: c["training_state"].update(lr=1, beta=2),
                            "'training_state' has unknown entries beta, lr"),
    "two entries lacking": (lambda c: [c["training_state"].pop(name) for name in ("history", "step")],
                            "'training_state' lacks step, history"),
    "step a fraction": (setter("training_state", "step", value=1.5), "training_state step must be a whole number >= 0"),
    "tokens seen negative": (setter("training_state", "tokens_seen", value=-1),
                             "training_state tokens_seen must be a whole number >= 0"),
    "best loss a string": (setter("training_state", "best_val_loss", value="low"),
                           "training_state best_val_loss must be a number"),
    "elapsed infinite": (setter("training_state", "elapsed_seconds", value=float("inf")),
                         "training_state elapsed_seconds must be a finite number >= 0"),
    "elapsed negative": (setter("training_state", "elapsed_seconds", value=-0.5),
                         "training_state elapsed_seconds must be a finite number >= 0"),
    "history a mapping": (setter("training_state", "history", value={}),
                          "training_state history must be a list of evaluation records"),
    "history of numbers": (setter("training_state", "history", value=[1]),
                           "training_state history must be a list of evaluation records"),
}


@pytest.mark.parametrize("edit, problem", ENTRY_PROBLEMS.values(), ids=ENTRY_PROBLEMS.keys())
def test_each_check_of_a_resumable_checkpoint_names_its_problem(edit, problem, resumable, tmp_path):
    checkpoint = copy.deepcopy(resumable)
    edit(checkpoint)
    path = tmp_path / "checkpoint.pth"
    torch.save(checkpoint, path)
    with pytest.raises(UserError) as refused:
        read_resumable(path)
    text = str(refused.value)
    assert text.startswith(f"{path} cannot be resumed: {problem}") and text.endswith(
        " (an incomplete or edited checkpoint); pass --resume never to start over, or use another --out_dir"), text


BOUNDARIES = {
    "step 0, nothing seen, no time": lambda c: c["training_state"].update(step=0, tokens_seen=0, elapsed_seconds=0.0),
    "numpy position 0": setter(*RNG, "numpy", 2, value=0),
    "numpy position 624": setter(*RNG, "numpy", 2, value=624),
    "python position 624": setter(*RNG, "python", 1, 624, value=624),
    "python gauss cached": setter(*RNG, "python", 2, value=0.25),
    "python word 0": setter(*RNG, "python", 1, 0, value=0),
    "no CUDA states": setter(*RNG, "cuda", value=[]),
    "an older checkpoint without data_arguments": without("data_arguments"),
}


@pytest.mark.parametrize("edit", BOUNDARIES.values(), ids=BOUNDARIES.keys())
def test_values_at_the_edge_of_each_check_are_accepted(edit, resumable, tmp_path):
    checkpoint = copy.deepcopy(resumable)
    edit(checkpoint)
    torch.save(checkpoint, tmp_path / "checkpoint.pth")
    assert read_resumable(tmp_path / "checkpoint.pth").keys() == checkpoint.keys()


RUN_CHANGES = {
    "another seed": ({"seed": 4}, "was trained with --seed 3; resuming exactly needs the same seed (it sets the data "
                                  "order and dropout)"),
    "another batch": ({"world_batch": [4, 1]}, "was trained with batch size and processes [2, 1]; resuming exactly "
                                               "needs the same (4, 1)"),
    "more processes": ({"world_batch": [2, 2]}, "was trained with batch size and processes [2, 1]; resuming exactly "
                                                "needs the same (2, 2)"),
    "another accumulation": ({"gradient_accumulation_steps": 4}, "was trained with --gradient_accumulation_steps 2; "
                             "resuming exactly needs the same (it sets the effective batch of every optimizer step)"),
    "another split": ({"split": {"split_seed": 10, "val_fraction": 0.1, "max_stories": 500}},
                      "was trained on a split made with --split_seed 9, --max_stories 400; resuming needs the same "
                      "data (use the same settings, another --out_dir, or --resume never)"),
}


@pytest.mark.parametrize("changes, message", RUN_CHANGES.values(), ids=RUN_CHANGES.keys())
def test_each_setting_that_would_change_the_run_is_refused_in_one_line(changes, message, resumable, tmp_path):
    with pytest.raises(UserError) as refused:
        check_same_run(resumable, tmp_path / "c.pth", dataclasses.replace(IDENTITY, **changes))
    assert str(refused.value) == f"{tmp_path / 'c.pth'} {message}"


def test_settings_an_older_checkpoint_did_not_record_are_not_compared(resumable, tmp_path):
    older = copy.deepcopy(resumable)
    del older["training_arguments"]["gradient_accumulation_steps"], older["data_arguments"]["max_stories"]
    identity = dataclasses.replace(IDENTITY, gradient_accumulation_steps=8,
                                   split=dict(IDENTITY.split, max_stories=None, new_setting=1))
    check_same_run(older, tmp_path / "c.pth", identity)
    del older["data_arguments"]  # older still: no split settings at all
    check_same_run(older, tmp_path / "c.pth", identity)


def test_split_settings_are_named_by_train_pys_flags():
    from train import parse_arguments

    settings = split_settings(DataConfig(seed=7, val_fraction=0.2, max_stories=30))
    assert settings == {"split_seed": 7, "val_fraction": 0.2, "max_stories": 30}
    _, data_config = parse_arguments([arg for name, value in settings.items() for arg in (f"--{name}", str(value))])
    assert split_settings(data_config) == settings


def test_a_weights_only_checkpoint_is_not_resumed(resumable, tmp_path):
    path = tmp_path / "best_model.pth"
    torch.save({"model": resumable["model"], "config": resumable["config"]}, path)
    with pytest.raises(UserError) as refused:
        read_resumable(path)
    assert str(refused.value) == (f"{path} holds model weights only, not a training state to resume; "
                                  "pass --resume never to start over")
