"""bench.py and tinystories.bench at a tiny size: every contender runs and the report has its shape (no
speed is asserted; the fast paths it measures are tested in test_loss.py and test_training.py)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from tinystories.bench.harness import BenchConfig, resolve_settings
from tinystories.bench.run import format_table
from tinystories.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
REPEATS = 2
TINY_BENCH = ["--device", "cpu", "--preset", "tiny", "--batch_size", "2", "--seq_len", "32", "--repeats", str(REPEATS),
              "--new_tokens", "8", "--data_stories", "40"]
CONTENDERS = {
    "training": ["ours, eager", "HF GPT2LMHeadModel", "MFU, ours, eager", "MFU, HF GPT2LMHeadModel"],
    "evaluation": ["ours", "HF GPT2LMHeadModel"],
    "generation": ["ours, engine, 1 seq", "HF generate, 1 seq",
                   "ours, engine, 8 seq", "HF generate, 8 seq", "ours, engine, 32 seq", "HF generate, 32 seq",
                   "ours, weight products only", "bandwidth bound"],
    "data": ["ours, tokenize_stories", "bare tiktoken encode_ordinary_batch"],
    "hardware": ["peak matmul (float32)", "read bandwidth"],
}


def test_bench_runs_every_contender_and_reports_table_and_json(tmp_path):
    report_path = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "bench.py", *TINY_BENCH, "--json", str(report_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    assert report["device"] == "cpu" and report["device_name"] and report["torch"] == torch.__version__
    assert report["transformers"] == transformers.__version__
    assert report["settings"]["resolved"]["seq_len"] == 32 and report["settings"]["resolved"]["compile"] is False
    names = {section: [f["name"] for f in report["figures"] if f["section"] == section] for section in CONTENDERS}
    assert names == CONTENDERS
    for figure in report["figures"]:
        assert len(figure["samples"]) == REPEATS and all(sample > 0 for sample in figure["samples"]), figure
        assert figure["min"] <= figure["median"] <= figure["max"]
    ratios = {(f["section"], f["name"]): f["ratios"] for f in report["figures"] if f["ratios"]}
    engines = {("generation", f"ours, engine, {batch} seq") for batch in (1, 8, 32)}
    assert set(ratios) == {("training", "ours, eager"), ("evaluation", "ours"),
                           ("generation", "ours, weight products only"),
                           ("data", "ours, tokenize_stories")} | engines
    assert set(ratios[("generation", "ours, engine, 1 seq")]) == {"HF", "bound"}
    assert set(ratios[("generation", "ours, engine, 32 seq")]) == {"HF", "ours at 1 seq"}
    table = result.stdout.splitlines()
    for section, figures in CONTENDERS.items():
        for name in figures:
            assert any(line.startswith(section) and f"  {name}  " in line for line in table), name
    assert str(report_path) in result.stderr
    check_derived_figures(report)


def median(samples: list[float]) -> float:
    ordered = sorted(samples)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def check_derived_figures(report: dict) -> None:
    """Ratios, MFU and the bandwidth bound recomputed by hand from the report's raw samples."""
    figures = {(f["section"], f["name"]): f for f in report["figures"]}
    # The tiny preset (C = 64, L = 2, V = 50,257, 128 positions) at seq_len 32. Multiplying parameters: each
    # block's 12C² + 13C, the final norm's 2C and the (tied) token embedding's V·C; not the positions.
    c, layers, seq_len = 64, 2, 32
    multiplying = layers * (12 * c * c + 13 * c) + 2 * c + 50257 * c
    assert multiplying == 3_316_544
    flops_per_token = 6 * multiplying + 12 * layers * c * seq_len
    assert report["training"]["flops_per_token"] == flops_per_token == 19_948_416
    for (section, name), baseline in [(("training", "ours, eager"), ("training", "HF GPT2LMHeadModel")),
                                      (("evaluation", "ours"), ("evaluation", "HF GPT2LMHeadModel")),
                                      (("data", "ours, tokenize_stories"),
                                       ("data", "bare tiktoken encode_ordinary_batch"))]:
        ratio = next(iter(figures[(section, name)]["ratios"].values()))
        assert ratio == pytest.approx(median(figures[(section, name)]["samples"])
                                      / median(figures[baseline]["samples"]), rel=1e-9), name
    for batch in (1, 8, 32):
        engine = figures[("generation", f"ours, engine, {batch} seq")]
        expected = {"HF": median(engine["samples"]) / median(figures[("generation", f"HF generate, {batch} seq")]
                                                              ["samples"])}
        if batch > 1:
            expected["ours at 1 seq"] = median(engine["samples"]) / median(
                figures[("generation", "ours, engine, 1 seq")]["samples"])
        else:
            bound = figures[("generation", "bandwidth bound")]["samples"]
            expected["bound"] = median(engine["samples"]) / median(bound)
        assert engine["ratios"] == pytest.approx(expected, rel=1e-9), batch
    peaks = figures[("hardware", "peak matmul (float32)")]["samples"]  # TFLOP/s
    for name in ("ours, eager", "HF GPT2LMHeadModel"):
        expected = [100 * flops_per_token * rate / (peak * 1e12)
                    for rate, peak in zip(figures[("training", name)]["samples"], peaks)]
        assert figures[("training", f"MFU, {name}")]["samples"] == pytest.approx(expected, rel=1e-9)
    # Decoding reads every multiplying weight once per token, 4 bytes each in float32.
    bandwidth = figures[("hardware", "read bandwidth")]["samples"]  # GB/s
    bound = figures[("generation", "bandwidth bound")]["samples"]
    assert bound == pytest.approx([rate * 1e9 / (4 * multiplying) for rate in bandwidth], rel=1e-9)


def test_table_puts_ratios_in_their_own_column():
    report = {"figures": [
        {"section": "training", "name": "ours", "unit": "tokens/s", "median": 1234.5, "min": 1200.0, "max": 1300.0,
         "ratios": {"HF": 1.156}},
        {"section": "training", "name": "HF", "unit": "tokens/s", "median": 1000.0, "min": 990.0, "max": 1010.0,
         "ratios": {}}]}
    header, rule, ours, theirs = format_table(report).splitlines()
    assert header.split()[-4:] == ["ratio", "(median", "/", "median)"] and set(rule) == {"-", " "}
    assert ours.split() == ["training", "ours", "1,234", "1,200-1,300", "tokens/s", "1.16x", "HF"]
    assert theirs.split() == ["training", "HF", "1,000", "990-1,010", "tokens/s"]


@pytest.mark.parametrize("flags, message", [
    ({"seq_len": 4096}, "block_size"),
    ({"sections": "training,speed"}, "--sections"),
    ({"repeats": 0}, "--repeats"),
    ({"preset": "huge"}, "unknown preset"),
    ({"preset": "nano", "new_tokens": 64}, "--new_tokens"),
    ({"batch_size": 10**9}, "--batch_size 1000000000 needs about"),
    ({"batch_size": 10**9, "sections": "evaluation"}, "for evaluation sequences"),
    ({"data_stories": 10**12, "sections": "data"}, "--data_stories 1000000000000 needs about"),
])
def test_bad_settings_are_user_errors(flags, message):
    with pytest.raises(UserError, match=message):
        resolve_settings(BenchConfig(device="cpu", **flags))


def test_defaults_follow_the_device():
    settings = resolve_settings(BenchConfig(device="cpu"))
    assert (settings.batch_size, settings.seq_len, settings.steps, settings.compile) == (2, 512, 1, False)
    assert settings.dtype == torch.float32


def test_bad_flag_exits_with_status_2():
    result = subprocess.run([sys.executable, "bench.py", "--repeats", "zero"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


def test_each_run_gets_its_own_report_unless_json_is_given():
    from datetime import datetime

    first, second = datetime(2026, 1, 2, 3, 4, 5), datetime(2026, 1, 2, 3, 4, 6)
    config = BenchConfig()
    assert config.report_path(first) == Path("results/bench_20260102_030405.json")
    assert config.report_path(first) != config.report_path(second)
    assert BenchConfig(json="results/bench_gpu.json").report_path(first) == Path("results/bench_gpu.json")


def test_unwritable_json_is_refused_before_measuring(tmp_path, read_only_folder):
    for path, message in [(tmp_path, "is a folder"), (read_only_folder / "bench.json", "cannot write in")]:
        result = subprocess.run([sys.executable, "bench.py", *TINY_BENCH, "--json", str(path)], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and result.stdout == ""
        assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
