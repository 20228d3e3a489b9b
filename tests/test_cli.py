"""Flags derived from dataclasses, layered config files, one-line argument errors."""
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
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
    seed: int = 1337
    split_seed: Optional[int] = None
    beams: int = field(default=1, metadata={"min": 1, "max": 8})


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


def config_file(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("argv, message", [
    (["--learning_rate", "nan"], "--learning_rate must be a finite number"),
    (["--learning_rate=-inf"], "--learning_rate must be a finite number"),
    (["--learning_rate", "1e999"], "--learning_rate must be a finite number"),
    (["--seed", "-1"], "--seed must be between 0 and 4294967295"),
    (["--seed", "99999999999999999999"], "--seed must be between 0 and 4294967295"),
    (["--split_seed", "4294967296"], "--split_seed must be between 0 and 4294967295"),
    (["--batch_size", "99999999999999999999"], "--batch_size must be between"),
    (["--beams", "0"], "--beams must be between 1 and 8, got 0"),
    (["--beams", "9"], "--beams must be between 1 and 8, got 9"),
])
def test_bad_numbers_on_the_command_line_are_refused(argv, message):
    with pytest.raises(UserError, match=message):
        merge_dataclass(Settings(), parse(argv), "command line")


@pytest.mark.parametrize("name, text, message", [
    ("nan.yaml", "learning_rate: .nan\n", "learning_rate must be a finite number"),
    ("inf.yaml", "learning_rate: -.inf\n", "learning_rate must be a finite number"),
    ("nan.json", '{"learning_rate": NaN}', "learning_rate must be a finite number"),
    ("huge.json", '{"learning_rate": 1e999}', "learning_rate must be a finite number"),
    ("nan_text.yaml", "learning_rate: nan\n", "learning_rate must be a finite number"),
    ("seed.yaml", "seed: -1\n", "seed must be between 0 and 4294967295"),
    ("seed.json", '{"seed": 99999999999999999999}', "seed must be between 0 and 4294967295"),
    ("beams.json", '{"beams": 0}', "beams must be between 1 and 8"),
    ("choice.yaml", "compile: maybe\n", "compile must be one of auto, true, false, got 'maybe'"),
    ("bool_choice.yaml", "compile: yes\n", "compile: expected str"),
])
def test_bad_numbers_and_choices_in_config_files_are_refused(tmp_path, name, text, message):
    path = config_file(tmp_path, name, text)
    with pytest.raises(UserError, match=message) as raised:
        merge_dataclass(Settings(), load_config_file(path), f"config file {path}")
    assert str(raised.value).startswith(f"config file {path}: ")


def test_finite_and_in_range_values_are_kept(tmp_path):
    path = config_file(tmp_path, "ok.yaml", "learning_rate: 3.0e-4\nseed: 4294967295\nbeams: 8\ncompile: 'true'\n")
    settings = merge_dataclass(Settings(), load_config_file(path), path)
    assert (settings.learning_rate, settings.seed, settings.beams, settings.compile) == (3e-4, 2**32 - 1, 8, "true")
    assert merge_dataclass(Settings(), parse(["--seed", "0", "--beams", "1"]), "command line").seed == 0


def test_config_file_that_is_not_utf8_is_a_user_error(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("learning_rate: 1e-4  # r\xe9glage\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1.yaml is not UTF-8 text \(byte 0xe9 at offset 24\)"):
        load_config_file(str(path))


def test_config_file_that_is_a_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="is a folder"):
        load_config_file(str(tmp_path))


@pytest.mark.parametrize("argv, config_text, message", [
    (["--max_grad_norm", "nan"], None, "--max_grad_norm must be a finite number"),  # would turn clipping off
    (["--learning_rate", "nan"], None, "--learning_rate must be a finite number"),
    (["--seed", "-1"], None, "--seed must be between 0"),
    # train.py renames split_seed to DataConfig's seed before the checks, so the message says "seed".
    (["--split_seed", "99999999999999999999"], None, "seed must be between 0"),
    ([], "compile: maybe\n", "compile must be one of auto, true, false"),
    ([], "dtype: float64\n", "dtype must be one of"),
    ([], "learning_rate: .nan\n", "learning_rate must be a finite number"),
    ([], "split_seed: -5\n", "seed must be between 0"),
])
def test_train_script_checks_flags_and_config_files_alike(tmp_path, argv, config_text, message):
    """train.py's settings go through the same checks (it layers a --config file under its flags)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("train_script", Path(__file__).resolve().parent.parent / "train.py")
    train_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_script)
    if config_text is not None:
        argv = [*argv, "--config", config_file(tmp_path, "run.yaml", config_text)]
    with pytest.raises(UserError, match=message):
        train_script.parse_arguments(argv)
