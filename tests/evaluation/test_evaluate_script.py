"""evaluate.py end to end on prepared token files, local story files and an imported Hugging Face model."""
import errno
import importlib.util
import json
import math
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from model.model import Model, preset
from tests.scripts import refusal, run_script
from tinystories import files
from tinystories.checkpoint import load_model, model_checkpoint, save_checkpoint
from tinystories.data import DataConfig, load_tokens, prepare_data
from tinystories.evaluation.metrics import stream_loss
from tinystories.evaluation.subjects import CheckpointSubject
from tinystories.interop.hf import from_hf
from tinystories.interop.hf_folders import save_hf
from tinystories.tokenizer import EOT_ID, get_tokenizer

ROOT = Path(__file__).resolve().parents[2]
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
    return run_script(monkeypatch, capsys, evaluate_script, *args)


def test_reports_exact_loss_and_completion_metrics(setup, tmp_path, monkeypatch, capsys):
    checkpoint, data_dir = setup
    output = tmp_path / "evaluation.json"
    status, out, err = run(monkeypatch, capsys, "--model", str(checkpoint), "--data_dir", str(data_dir),
                           "--split", "validation", "--generate", "3", "--max_tokens", "12", "--output", str(output))
    assert status == 0, err
    report = json.loads(output.read_text())
    [result] = report["models"]
    tokens = load_tokens(data_dir, "validation")
    model, _ = load_model(checkpoint)
    expected = stream_loss(CheckpointSubject(model), tokens, batch_size=7, progress=False)
    assert report["tokens"] == len(tokens) - 1 and report["stories"] == int(np.sum(tokens == EOT_ID))
    assert result["loss"] == pytest.approx(expected.loss, rel=1e-6)
    assert result["bits_per_byte"] == pytest.approx(expected.bits_per_byte, rel=1e-6)
    assert result["step"] == 123 and report["split"] == "validation" and result["model"] == str(checkpoint)
    assert result["tokens_per_second"] > 0 and result["seconds"] > 0 and result["kind"] == "checkpoint"
    generation = report["generation"]
    assert generation["completions"] == 3 and generation["seed"] == 1337 and generation["max_tokens"] == 12
    assert Path(generation["completions_file"]) == output.with_suffix(".completions.txt")
    prompts, texts, lengths, ended = read_completions(output.with_suffix(".completions.txt"),
                                                      first_sentences(tokens, 3))
    assert len(prompts) == 3 and all(length <= 12 for length in lengths)
    expected = hand_metrics(texts, lengths, ended)
    for name, value in expected.items():
        assert result["generation"][name] == pytest.approx(value, abs=1e-12), name
    for label in ("loss", "perplexity", "bits per byte", "distinct-1/2/3", "repetition-4", str(output)):
        assert label in out


def first_sentences(tokens: np.ndarray, count: int) -> list[str]:
    """docs/evaluation.md's prompts, found by hand: each story's text up to its first '.', '!' or '?'."""
    stories = get_tokenizer().decode(tokens.tolist()).split("<|endoftext|>")[:count]
    prompts = []
    for story in stories:
        story = story.strip()
        end = min(story.index(mark) for mark in ".!?" if mark in story)
        prompts.append(story[:end + 1])
    return prompts


def read_completions(path: Path, prompts: list[str]) -> tuple[list[str], list[str], list[int], list[bool]]:
    """(prompts, completion texts, new tokens without a final <|endoftext|>, ended) from the completions file,
    checking that each completion starts with its expected prompt."""
    header = re.compile(r"=== (\d+)/(\d+): (\d+) new tokens, "
                        r"(ended with <\|endoftext\|>|stopped at --max_tokens) ===\n")
    parts = header.split(path.read_text(encoding="utf-8"))[1:]
    texts, lengths, ended = [], [], []
    for index, prompt in enumerate(prompts):
        number, total, new_tokens, ending, body = parts[5 * index:5 * index + 5]
        assert (int(number), int(total)) == (index + 1, len(prompts))
        assert body.startswith(prompt), (body, prompt)
        texts.append(body[len(prompt):].removesuffix("\n\n" if index < len(prompts) - 1 else "\n"))
        ended.append(ending.startswith("ended"))
        lengths.append(int(new_tokens) - ended[-1])
    assert len(parts) == 5 * len(prompts)
    return prompts, texts, lengths, ended


def hand_metrics(texts: list[str], lengths: list[int], ended: list[bool]) -> dict[str, float]:
    """docs/evaluation.md's definitions, written out: words are lowercase runs of letters, digits, '_' and "'"."""
    words = [re.findall(r"[a-z0-9_']+", text.lower()) for text in texts]
    metrics = {}
    for n in (1, 2, 3):
        grams = [tuple(w[i:i + n]) for w in words for i in range(len(w) - n + 1)]
        metrics[f"distinct_{n}"] = len(set(grams)) / len(grams) if grams else 0.0
    counts = [Counter(tuple(w[i:i + 4]) for i in range(len(w) - 3)) for w in words]
    occurrences = sum(sum(c.values()) for c in counts)
    repeated = sum(k for c in counts for k in c.values() if k > 1)
    metrics["repetition_4"] = repeated / occurrences if occurrences else 0.0
    metrics["mean_new_tokens"] = sum(lengths) / len(lengths)
    metrics["eos_fraction"] = sum(ended) / len(ended)
    return metrics


def test_json_report_has_the_readmes_fields_and_the_test_split(setup, tmp_path, monkeypatch, capsys):
    checkpoint, data_dir = setup
    output = tmp_path / "test.json"
    status, _, err = run(monkeypatch, capsys, "--model", str(checkpoint), "--data_dir", str(data_dir),
                         "--split", "test", "--batch_size", "3", "--output", str(output))
    assert status == 0, err
    report = json.loads(output.read_text())
    assert set(report) == {"split", "data", "max_samples", "stories", "tokens", "block_size", "batch_size", "device",
                           "precision", "generation", "judge", "models"}
    assert report["precision"] == "float32"
    [result] = report["models"]
    assert set(result) == {"model", "kind", "step", "block_size", "loss", "perplexity", "bits_per_byte", "bytes",
                           "batch_size", "seconds", "tokens_per_second", "generation", "judge"}
    tokens = load_tokens(data_dir, "test")
    assert report["split"] == "test" and report["data"] == f"{data_dir} (test)" and report["generation"] is None
    assert report["judge"] is None and result["generation"] is None and result["judge"] is None
    assert report["tokens"] == len(tokens) - 1 and report["stories"] == int(np.sum(tokens == EOT_ID))
    # Requested 512-token windows; the model's context of 64 is smaller, so its windows are 64.
    assert (report["block_size"], report["batch_size"], report["device"]) == (512, 3, "cpu")
    assert (result["block_size"], result["batch_size"]) == (64, 3)
    # Every scored token's bytes, <|endoftext|> counting one: docs/evaluation.md's B.
    tokenizer = get_tokenizer()
    assert result["bytes"] == sum(1 if t == EOT_ID else len(tokenizer.decode_single_token_bytes(t))
                                  for t in tokens[1:].tolist())
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]), rel=1e-12)
    assert result["bits_per_byte"] == pytest.approx(
        report["tokens"] * result["loss"] / (math.log(2) * result["bytes"]), rel=1e-12)
    # Both are rounded (seconds to 1 ms, which on a fast run moves tokens / seconds by more than 1 token/s).
    slowest, fastest = (report["tokens"] / (result["seconds"] + sign * 0.0005) for sign in (1, -1))
    assert slowest - 0.05 <= result["tokens_per_second"] <= fastest + 0.05


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
    report = json.loads(output.read_text())
    [result] = report["models"]
    assert result["step"] is None
    # The Hugging Face model itself, window by window (64 inputs starting every 64 tokens), token-weighted.
    tokens = torch.from_numpy(load_tokens(data_dir, "validation").astype(np.int64))
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(tokens) - 1, 64):
            inputs, targets = tokens[start:start + 64], tokens[start + 1:start + 65]
            logits = hf_model.eval()(inputs[None, :len(targets)]).logits[0]
            total += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
    assert report["tokens"] == len(tokens) - 1 and result["block_size"] == 64
    assert result["loss"] == pytest.approx(total / (len(tokens) - 1), rel=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--model", "missing.pth"], "not found"),
    (["--data_dir", "no_such_data"], "not found"),
    (["--split", "dev"], "invalid choice"),
    (["--batch_size", "0"], "--batch_size"),
    (["--batch_size", "1000000000"], "--batch_size 1000000000 needs about"),  # more than any machine holds
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


def test_a_checkpoint_and_its_export_side_by_side(setup, tmp_path, monkeypatch, capsys):
    checkpoint, data_dir = setup
    save_hf(load_model(checkpoint)[0], tmp_path / "hf")
    output = tmp_path / "both.json"
    status, out, err = run(monkeypatch, capsys, "--model", str(checkpoint), str(tmp_path / "hf"), "--data_dir",
                           str(data_dir), "--split", "test", "--max_samples", "20", "--generate", "2",
                           "--max_tokens", "8", "--output", str(output))
    assert status == 0, err
    ours, theirs = json.loads(output.read_text())["models"]
    assert (ours["kind"], theirs["kind"]) == ("checkpoint", "hugging face")
    assert theirs["loss"] == pytest.approx(ours["loss"], abs=1e-5) and theirs["bytes"] == ours["bytes"]
    assert theirs["bits_per_byte"] == pytest.approx(ours["bits_per_byte"], abs=1e-5)
    assert ours["generation"]["mean_new_tokens"] > 0 and theirs["generation"]["mean_new_tokens"] > 0
    header = next(line for line in out.splitlines() if line.startswith("model "))
    assert str(checkpoint) in header and str(tmp_path / "hf") in header  # one table, a column each
    loss_line = next(line for line in out.splitlines() if line.startswith("loss "))
    assert loss_line.count(f"{ours['loss']:.4f} nats/token") == 2
    assert (output.with_suffix(".completions.txt").read_text().count(f"=== {tmp_path / 'hf'}: ")) == 2


def test_unwritable_output_is_refused_before_the_evaluation(setup, tmp_path, read_only_folder, monkeypatch, capsys):
    """--output naming a folder used to run the whole evaluation, then die with IsADirectoryError."""
    checkpoint, data_dir = setup
    monkeypatch.setattr(evaluate_script, "stream_loss", lambda *args, **kwargs: pytest.fail("evaluated anyway"))
    (tmp_path / "report.completions.txt").mkdir()
    for output, generate, message in [(tmp_path, "0", "is a folder"),
                                      (read_only_folder / "report.json", "0", "cannot write in"),
                                      (tmp_path / "report.json", "2", "report.completions.txt is a folder")]:
        status, out, err = run(monkeypatch, capsys, "--model", str(checkpoint), "--data_dir", str(data_dir),
                               "--output", str(output), "--generate", generate)
        assert status == 2 and out == "", err
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and message in err


def test_a_failed_report_write_keeps_the_printed_results(setup, tmp_path, monkeypatch, capsys):
    checkpoint, data_dir = setup
    real_write = files.atomic_write

    def disk_full(file):
        raise OSError(errno.ENOSPC, "No space left on device")

    # The report goes through files.write_json, which writes with files.atomic_write.
    monkeypatch.setattr(files, "atomic_write", lambda path, write: real_write(path, disk_full))
    status, out, err = run(monkeypatch, capsys, "--model", str(checkpoint), "--data_dir", str(data_dir),
                           "--max_samples", "3", "--output", str(tmp_path / "report.json"))
    assert status == 2 and "perplexity" in out  # the results reached the terminal before the write failed
    assert err.strip().splitlines() == [f"error: could not write {tmp_path / 'report.json'}: No space left on "
                                        "device; it was not written (the results are printed above)"]


def test_a_model_with_non_finite_outputs_is_a_one_line_error(setup, tmp_path, monkeypatch, capsys):
    """Used to print `loss nan` and exit 0."""
    _, data_dir = setup
    for fill in (float("nan"), 3e38):  # NaN weights, or finite ones whose outputs overflow
        model = Model(preset("tiny", block_size=64))
        with torch.no_grad():
            model.final_norm.weight.fill_(fill)
        path = tmp_path / "broken.pth"
        save_checkpoint(path, model_checkpoint(model))
        status, out, err = run(monkeypatch, capsys, "--model", str(path), "--data_dir", str(data_dir),
                               "--max_samples", "3", "--output", str(tmp_path / "report.json"))
        assert status == 2 and out == ""
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and "non-finite" in err
        assert not (tmp_path / "report.json").exists()


def test_an_output_that_is_an_input_is_refused_and_the_input_kept(setup, tmp_path, monkeypatch, capsys):
    """--output equal to the checkpoint used to evaluate it, then write the report over it."""
    checkpoint, data_dir = setup
    model = tmp_path / "model.pth"
    model.write_bytes(checkpoint.read_bytes())
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.json").symlink_to(model)
    stories = tmp_path / "stories.txt"
    stories.write_text("Tom had a red ball.\n<|endoftext|>\nLily saw a cat.\n")
    (tmp_path / "stories.completions.txt").write_text("A dog ran.\n")
    monkeypatch.setattr(evaluate_script, "stream_loss", lambda *args, **kwargs: pytest.fail("evaluated anyway"))
    with_data_dir = ["--model", str(model), "--data_dir", str(data_dir)]
    with_stories = ["--model", str(model), "--data_path", f"{stories},{tmp_path / 'stories.completions.txt'}"]
    for args, output, message in [
            (with_data_dir, model, f"is the input {model}"),
            (with_data_dir, tmp_path / "sub" / ".." / "model.pth", f"is the input {model}"),
            (with_data_dir, tmp_path / "link.json", f"is the input {model}"),  # a link to it
            (with_data_dir, data_dir / "report.json", f"is inside the input {data_dir}"),
            (with_stories, stories, f"is the input {stories}"),
            (with_stories + ["--generate", "1"], tmp_path / "stories.json", "--output's completions file")]:
        error = refusal(monkeypatch, capsys, evaluate_script, *args, "--output", str(output))
        assert message in error and "which writing it would destroy" in error, error
    assert model.read_bytes() == checkpoint.read_bytes() and (tmp_path / "link.json").is_symlink()
    assert stories.read_text().startswith("Tom had") and (tmp_path / "stories.completions.txt").read_text() == \
        "A dog ran.\n"
    assert not (data_dir / "report.json").exists()


def test_float16_says_a_weight_beyond_its_range_not_a_broken_checkpoint(setup, tmp_path, monkeypatch, capsys):
    """A finite weight above 65,504 becomes infinite in float16: evaluate.py said the weights were broken and
    to use an earlier checkpoint; it says now what generate.py says (the same check, Float16Linear's)."""
    _, data_dir = setup
    model = Model(preset("tiny", block_size=64))
    with torch.no_grad():
        model.blocks[0].mlp.fc.weight[0, 0] = 70_000.0
    path = tmp_path / "big_weight.pth"
    save_checkpoint(path, model_checkpoint(model))
    common = ["--model", str(path), "--data_dir", str(data_dir), "--max_samples", "3",
              "--output", str(tmp_path / "report.json")]
    error = refusal(monkeypatch, capsys, evaluate_script, *common, "--precision", "float16")
    assert error == "error: a weight exceeds float16's range (largest 65504); use --precision float32\n"
    assert not (tmp_path / "report.json").exists()
    status, _, err = run(monkeypatch, capsys, *common)  # float32 holds it: the checkpoint is fine
    assert status == 0, err
