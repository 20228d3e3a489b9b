"""Flags derived from dataclasses, layered config files, one-line argument errors."""
import json
from pathlib import Path
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Optional

import pytest

from tinystories.cli import ArgumentParser, add_dataclass_arguments, explicit_values, load_config_file, merge_dataclass
from tinystories.errors import UserError


@dataclass
class Settings:
    batch_size: int = 32
    learning_rate: float = 1e-4
    compile: str = field(default="auto", metadata={"choices": ["auto", "true", "false"]})
    wandb: bool = False
    max_steps: Optional[int] = None
    model: list[str] = field(default_factory=lambda: ["a.pth"])


def parse(argv):
    parser = ArgumentParser(prog="test")
    add_dataclass_arguments(parser, Settings)
    return explicit_values(Settings, parser.parse_args(argv))


def test_flags_have_field_names_and_types():
    assert parse(["--batch_size", "8", "--learning_rate", "3e-4", "--wandb", "true", "--max_steps", "none"]) == {
        "batch_size": 8, "learning_rate": 3e-4, "wandb": True, "max_steps": None}
    assert parse([]) == {}


def test_a_bare_true_false_flag_means_true():
    assert parse(["--wandb"]) == {"wandb": True}
    assert parse(["--wandb", "--batch_size", "8"]) == {"wandb": True, "batch_size": 8}
    assert parse(["--wandb", "false"]) == {"wandb": False}


def test_a_list_flag_takes_one_or_more_values(tmp_path):
    assert parse(["--model", "x.pth"]) == {"model": ["x.pth"]}
    assert parse(["--model", "x.pth", "hf_model/", "--wandb"]) == {"model": ["x.pth", "hf_model/"], "wandb": True}
    assert merge_dataclass(Settings(), {"model": "y.pth"}, "file").model == ["y.pth"]  # a file may give one value
    with pytest.raises(UserError, match="model"):
        merge_dataclass(Settings(), {"model": [1]}, "file")


def test_defaults_then_file_then_flags(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text("batch_size: 4\nlearning_rate: 1\nmax_steps: 10\n")
    settings = merge_dataclass(Settings(), load_config_file(str(config_file)), str(config_file))
    settings = merge_dataclass(settings, parse(["--batch_size", "2"]), "command line")
    assert settings == Settings(batch_size=2, learning_rate=1.0, max_steps=10)


def test_bad_config_files_are_user_errors(tmp_path):
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"batch_sizes": 4}))
    with pytest.raises(UserError, match="unknown setting"):
        merge_dataclass(Settings(), load_config_file(str(unknown)), str(unknown))
    wrong_type = tmp_path / "wrong.json"
    wrong_type.write_text(json.dumps({"batch_size": "many"}))
    with pytest.raises(UserError, match="batch_size"):
        merge_dataclass(Settings(), load_config_file(str(wrong_type)), str(wrong_type))
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(UserError, match="could not be parsed"):
        load_config_file(str(broken))
    with pytest.raises(UserError, match="not found"):
        load_config_file(str(tmp_path / "absent.yaml"))


def test_bad_flag_value_exits_2_with_one_line():
    code = ("import sys; sys.path.insert(0, '.'); from tinystories.errors import run_main;"
            "from tests.test_cli import parse; run_main(lambda: parse(['--batch_size', 'many']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "batch_size" in result.stderr
