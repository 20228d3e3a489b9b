"""tinystories/checks.py and paths.py: the shared checks of user values read the same everywhere."""
import pytest

from tinystories.checks import preset_config, require_at_least, require_token_ids_within
from tinystories.errors import UserError, first_line
from tinystories.paths import DEFAULT_DATA_DIR, DEFAULT_MODEL
from tinystories.training.config import TrainConfig


def test_at_least_names_the_flag_and_skips_unset_values():
    with pytest.raises(UserError, match="^--batch_size must be at least 1, got 0$"):
        TrainConfig(batch_size=0)
    with pytest.raises(UserError, match="^--max_steps must be at least 1, got -3$"):
        TrainConfig(max_steps=-3)
    require_at_least(TrainConfig(max_steps=None), ["max_steps"])  # unset is allowed


def test_token_ids_beyond_the_vocabulary_name_the_largest():
    require_token_ids_within(511, 512, "the prompt")
    with pytest.raises(UserError, match="the prompt has token ids up to 512, beyond the model's vocabulary of 512; x"):
        require_token_ids_within(512, 512, "the prompt", "x")


def test_a_bad_preset_is_a_user_error():
    assert preset_config("nano", n_layer=3).n_layer == 3
    with pytest.raises(UserError, match="unknown preset 'huge'"):
        preset_config("huge")
    with pytest.raises(UserError, match="divisible"):
        preset_config("tiny", n_head=3)


def test_first_line_of_an_error():
    assert first_line(ValueError("bad value\nsecond line")) == "bad value"
    assert first_line(OSError()) == "OSError"


def test_default_paths():
    assert DEFAULT_MODEL == "results/checkpoints/best_model.pth" and DEFAULT_DATA_DIR == "data/tinystories"
