"""Checkpoint files: round trip, weights_only loading, atomic writes, clear errors for bad files."""
import contextlib
import re
import subprocess
import sys
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import pytest
import torch

from model.model import Model, preset
from tinystories.checkpoint import load_checkpoint, load_model, model_checkpoint, save_checkpoint
from tinystories.errors import UserError

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def full_disk(tmp_path: Path, size: str = "1m") -> Iterator[Path]:
    """A small tmpfs (1 MB) under tmp_path, which a tiny-preset model's files overflow (the test is skipped where
    mounting one needs root); on leaving it, no file may be open on it."""
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(small)],
                      capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield small
    finally:
        busy = subprocess.run(["umount", str(small)], capture_output=True).returncode != 0
        if busy:  # a file still open on it: detach it anyway, so that no test leaves a mount behind
            subprocess.run(["umount", "--lazy", str(small)], capture_output=True)
    assert not busy, f"a file on {small} was left open"


def test_round_trip_gives_identical_model(tmp_path):
    model = Model(preset("nano"))
    path = tmp_path / "model.pth"
    save_checkpoint(path, model_checkpoint(model, step=7))
    raw = torch.load(path, weights_only=True)
    assert raw["step"] == 7 and raw["config"] == asdict(model.config)
    loaded, checkpoint = load_model(path)
    assert not loaded.training and checkpoint["step"] == 7
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert loaded.lm_head.weight is loaded.token_embedding.weight


def test_plain_torch_save_with_asdict_config_loads(tmp_path):
    model = Model(preset("nano"))
    path = tmp_path / "plain.pth"
    torch.save({"model": model.state_dict(), "config": asdict(model.config)}, path)
    assert torch.equal(load_model(path)[0].token_embedding.weight, model.token_embedding.weight)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "absent.pth")


def test_truncated_file_is_a_user_error(tmp_path):
    path = tmp_path / "model.pth"
    save_checkpoint(path, model_checkpoint(Model(preset("nano"))))
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(UserError, match="could not be read"):
        load_checkpoint(path)


def test_foreign_files_are_user_errors(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(UserError, match="could not be read"):
        load_checkpoint(text)
    foreign = tmp_path / "foreign.pth"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(UserError, match="not a TinyStories checkpoint"):
        load_checkpoint(foreign)


def test_config_and_weights_that_disagree_are_user_errors(tmp_path):
    checkpoint = model_checkpoint(Model(preset("nano")))
    checkpoint["config"]["n_embd"] = 64
    path = tmp_path / "mismatch.pth"
    save_checkpoint(path, checkpoint)
    with pytest.raises(UserError, match="do not match"):
        load_model(path)
    checkpoint["config"]["colour"] = "blue"
    save_checkpoint(path, checkpoint)
    with pytest.raises(UserError, match="unknown fields"):
        load_model(path)


class _Payload:
    """A pickle that would create a file if it were ever unpickled with code execution allowed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("zip_format", [True, False])
def test_a_malicious_pickle_is_one_line_without_torch_warnings_or_advice(tmp_path, zip_format):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    torch.save({"model": _Payload(marker), "config": {}}, path, pickle_protocol=4,
               _use_new_zipfile_serialization=zip_format)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(UserError, match="could not be read") as raised:
            load_checkpoint(path)
    assert [str(warning.message) for warning in caught] == []  # torch warns about protocol 4 otherwise
    assert "weights_only" not in str(raised.value) and "\n" not in str(raised.value)
    assert not marker.exists()
    result = subprocess.run([sys.executable, "generate.py", "--model", str(path)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error: ")
    assert len(result.stderr.strip().splitlines()) == 1 and "weights_only" not in result.stderr


@pytest.mark.parametrize("edit, message", [
    (lambda state: state.update({"token_embedding.weight": torch.zeros(512, 16)}),
     "token_embedding.weight has shape (512, 16), but its config implies (512, 32)"),
    (lambda state: state.pop("blocks.0.mlp.fc.weight"), "it lacks blocks.0.mlp.fc.weight"),
    (lambda state: state.update({"blocks.1.mlp.fc.weight": torch.zeros(128, 32)}),
     "its config does not use blocks.1.mlp.fc.weight"),
    (lambda state: state.update({"final_norm.weight": [1.0] * 32}), "final_norm.weight is not a tensor"),
])
def test_a_weights_config_mismatch_names_the_tensor(tmp_path, edit, message):
    checkpoint = model_checkpoint(Model(preset("nano")))
    edit(checkpoint["model"])
    path = tmp_path / "mismatch.pth"
    save_checkpoint(path, checkpoint)
    with pytest.raises(UserError, match=re.escape(message)):
        load_model(path)


def test_a_model_with_non_finite_weights_is_refused(tmp_path):
    model = Model(preset("nano"))
    with torch.no_grad():
        model.blocks[0].mlp.fc.weight[3, 5] = float("nan")
    path = tmp_path / "nan.pth"
    save_checkpoint(path, model_checkpoint(model))
    with pytest.raises(UserError, match=r"blocks.0.mlp.fc.weight holds non-finite values \(NaN or infinity\)"):
        load_model(path)


def test_a_full_disk_is_one_line_that_keeps_the_previous_checkpoint(tmp_path):
    """torch.save reports a failed write as a RuntimeError ("unexpected pos ..."), which was a traceback."""
    with full_disk(tmp_path) as small:
        path = small / "model.pth"
        save_checkpoint(path, model_checkpoint(Model(preset("nano"))))  # fits in 1 MB
        previous = path.read_bytes()
        with pytest.raises(UserError) as refused:
            save_checkpoint(path, model_checkpoint(Model(preset("tiny"))))  # 13 MB
        assert str(refused.value) == f"could not write {path}: No space left on device; the previous model.pth is kept"
        assert path.read_bytes() == previous and sorted(small.iterdir()) == [path]
        path.unlink()
        with pytest.raises(UserError, match="No space left on device; it was not written$"):
            save_checkpoint(path, model_checkpoint(Model(preset("tiny"))))
        assert sorted(small.iterdir()) == []


def test_a_torch_save_failure_that_is_not_a_write_error_is_raised_as_it_is(tmp_path):
    with pytest.raises(Exception) as raised:  # a lambda cannot be pickled: our mistake, not the user's
        save_checkpoint(tmp_path / "model.pth", {"model": {}, "config": {}, "hook": lambda: None})
    assert not isinstance(raised.value, UserError)
    assert sorted(tmp_path.iterdir()) == []
