"""Checkpoint files: round trip, weights_only loading, atomic writes, clear errors for bad files."""
from dataclasses import asdict

import pytest
import torch

from model.model import Model, preset
from tinystories.checkpoint import load_checkpoint, load_model, model_checkpoint, save_checkpoint
from tinystories.errors import UserError


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
