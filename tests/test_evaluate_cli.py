"""evaluate.py end to end on prepared token files, local story files and an imported Hugging Face model."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from model.model import Model, preset
from tinystories.checkpoint import load_model, model_checkpoint, save_checkpoint
from tinystories.data import DataConfig, load_tokens, prepare_data
from tinystories.evaluation import stream_loss
from tinystories.hf import from_hf
from tinystories.tokenizer import EOT_ID

ROOT = Path(__file__).resolve().parent.parent
# Loaded by path: Hugging Face's `evaluate` package would otherwise shadow the script.
spec = importlib.util.spec_from_file_location("evaluate_script", ROOT / "evaluate.py")
evaluate_script = sys.modules["evaluate_script"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(evaluate_script)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    """(a tiny checkpoint with block_size 64, a prepared synthetic data folder)."""
    folder = tmp_path_factory.mktemp("evaluate")
    torch.manual_seed(0)
    checkpoint = folder / "model.pth"
    save_checkpoint(checkpoint, model_checkpoint(Model(preset("tiny", block_size=64)), step=123))
    data_dir = prepare_data(DataConfig(dataset="synthetic", max_stories=80, data_dir=str(folder / "data")),
                            progress=False)
    return checkpoint, data_dir


def run(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["evaluate.py", *args])
    status = 0
    try:
        evaluate_script.run_main(evaluate_script.main)
    except SystemExit as exit:
        status = exit.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_reports_exact_loss_and_completion_metrics(setup, tmp_path, monkeypatch, capsys):
    checkpoint, data_dir = setup
    output = tmp_path / "evaluation.json"
    status, out, err = run(monkeypatch, capsys, "--model", str(checkpoint), "--data_dir", str(data_dir),
                           "--split", "validation", "--generate", "3", "--max_tokens", "12", "--output", str(output))
    assert status == 0, err
    report = json.loads(output.read_text())
    tokens = load_tokens(data_dir, "validation")
    model, _ = load_model(checkpoint)
    expected = stream_loss(model, tokens, batch_size=7, progress=False)
    assert report["tokens"] == len(tokens) - 1 and report["stories"] == int(np.sum(tokens == EOT_ID))
    assert report["loss"] == pytest.approx(expected.loss, rel=1e-6)
    assert report["bits_per_byte"] == pytest.approx(expected.bits_per_byte, rel=1e-6)
    assert report["step"] == 123 and report["split"] == "validation" and report["model"] == str(checkpoint)
    assert report["tokens_per_second"] > 0 and report["seconds"] > 0
    generation = report["generation"]
    assert generation["completions"] == 3 and 0 < generation["distinct_1"] <= 1
    assert set(generation) >= {"distinct_2", "distinct_3", "repetition_4", "mean_new_tokens", "eos_fraction"}
    completions = Path(generation["completions_file"]).read_text()
    assert completions.count("=== ") == 3 and output.with_suffix(".completions.txt").is_file()
    for label in ("loss", "perplexity", "bits per byte", "distinct-1/2/3", "repetition-4", str(output)):
        assert label in out


def test_max_samples_and_the_all_split(setup, tmp_path, monkeypatch, capsys):
    checkpoint, data_dir = setup
    output = tmp_path / "e.json"
    common = ["--model", str(checkpoint), "--data_dir", str(data_dir), "--output", str(output)]
    assert run(monkeypatch, capsys, *common, "--split", "train", "--max_samples", "3")[0] == 0
    report = json.loads(output.read_text())
    train = load_tokens(data_dir, "train")
    third_end = np.flatnonzero(train == EOT_ID)[2]
    assert report["stories"] == 3 and report["tokens"] == third_end
    assert run(monkeypatch, capsys, *common, "--split", "all")[0] == 0
    report = json.loads(output.read_text())
    assert report["tokens"] == len(train) + len(load_tokens(data_dir, "validation")) - 1


def test_local_story_files(setup, tmp_path, monkeypatch, capsys):
    checkpoint, _ = setup
    stories = tmp_path / "stories.txt"
    stories.write_text("Tom had a red ball.\n<|endoftext|>\nLily saw a cat. It was soft.\n<|endoftext|>\nThe end.\n")
    output = tmp_path / "files.json"
    status, _, err = run(monkeypatch, capsys, "--model", str(checkpoint), "--data_path", str(stories),
                         "--max_samples", "2", "--output", str(output))
    assert status == 0, err
    report = json.loads(output.read_text())
    assert report["stories"] == 2 and report["split"] is None and report["data"] == str(stories)


def test_imported_hugging_face_model(setup, tmp_path, monkeypatch, capsys):
    _, data_dir = setup
    hf_model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=50257, n_positions=64, n_embd=32, n_layer=1, n_head=2, activation_function="gelu_new"))
    checkpoint = tmp_path / "imported.pth"
    save_checkpoint(checkpoint, model_checkpoint(from_hf(hf_model)))
    output = tmp_path / "imported.json"
    status, _, err = run(monkeypatch, capsys, "--model", str(checkpoint), "--data_dir", str(data_dir),
                         "--generate", "1", "--max_tokens", "5", "--output", str(output))
    assert status == 0, err
    assert json.loads(output.read_text())["step"] is None


@pytest.mark.parametrize("args, message", [
    (["--model", "missing.pth"], "not found"),
    (["--data_dir", "no_such_data"], "not found"),
    (["--split", "dev"], "invalid choice"),
    (["--batch_size", "0"], "--batch_size"),
    (["--max_samples", "0"], "--max_samples"),
    (["--temperature", "3"], "--temperature"),
    (["--data_path", "no_such_file.txt"], "not found"),
    (["--output", "/dev/null/report.json"], "/dev/null is a file, not a folder"),
])
def test_bad_arguments_are_one_line_errors(setup, tmp_path, monkeypatch, capsys, args, message):
    checkpoint, data_dir = setup
    defaults = {"--model": str(checkpoint), "--data_dir": str(data_dir), "--output": str(tmp_path / "x.json")}
    defaults.update(dict(zip(args[::2], args[1::2])))
    status, out, err = run(monkeypatch, capsys, *[item for pair in defaults.items() for item in pair])
    assert status == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err
    assert not (tmp_path / "x.json").exists()
