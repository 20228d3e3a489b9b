"""tinystories.evaluation.judge and evaluate.py --judge, over real HTTP against a scripted OpenAI-compatible server
(tests/judge_server.py) through the official openai client: parsing, re-asking, retries, the cache,
aggregation against hand-computed statistics, Ctrl-C and resume, and a key that never leaks."""
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from model.model import Model, preset
from tests.evaluation.test_evaluate_script import evaluate_script
from tests.evaluation.test_evaluate_script import run as run_evaluate
from tests.judge_server import REFUSED_KEY, JudgeServer, scripted_grades
from tests.scripts import refusal
from tinystories.checkpoint import model_checkpoint, save_checkpoint
from tinystories.errors import UserError
from tinystories.evaluation.judge import Judge, JudgeConfig, grade_all
from tinystories.evaluation.judge_cache import GradingCache, cache_key
from tinystories.evaluation.judge_protocol import (
    CRITERIA,
    MAX_REPLY_BYTES,
    PROMPT_VERSION,
    grading_messages,
    parse_grades,
)
from tinystories.evaluation.judge_report import judge_report, mean_interval, t_quantile
from tinystories.serving.server_process import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
SECRET = "sk-test-9c1f2e7d-never-print-me"
# Student's t, 0.975 quantile, from a printed table: the independent reference for the intervals.
T_TABLE = {1: 12.7062, 2: 4.3027, 4: 2.7764, 5: 2.5706, 9: 2.2622, 30: 2.0423, 100: 1.9840}
SCENARIOS = ["valid", "invalid_then_valid", "never_valid", "rate_limited_once", "server_error",
             "server_error_once", "slow_once", "fenced"]
GRADED = {"valid", "invalid_then_valid", "rate_limited_once", "server_error_once", "slow_once", "fenced"}
REQUESTS = {"valid": 1, "invalid_then_valid": 2, "never_valid": 2, "rate_limited_once": 2, "server_error": 3,
            "server_error_once": 2, "slow_once": 2, "fenced": 1}  # with judge_retries=2

@pytest.fixture
def server():
    judge_server = JudgeServer().start()
    yield judge_server
    judge_server.shutdown()
    judge_server.server_close()


@pytest.fixture
def secret_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)


def judge_for(server: JudgeServer, **settings) -> Judge:
    options = {"judge": "scripted-judge", "judge_base_url": server.base_url, "judge_backoff": 0.01,
               "judge_timeout": 0.5, "judge_retries": 2, **settings}
    return Judge(JudgeConfig(**options))


def expected_grades(beginning: str, completion: str) -> dict:
    return scripted_grades(grading_messages(beginning, completion)[1]["content"])


def assert_secret_nowhere(folder: Path, *texts: str) -> None:
    for text in texts:
        assert SECRET not in text
    for path in folder.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


# --- parsing, statistics (no HTTP) ---------------------------------------------------------------------------------

def test_parse_grades_is_strict_but_tolerates_surrounding_text():
    grades = {"grammar": 7, "creativity": 5, "consistency": 8, "plot": 6, "age_group": "C"}
    text = json.dumps(grades)
    assert parse_grades(f"Good work.\n{text}") == (grades, "Good work.")
    assert parse_grades(f"Fine.\n```json\n{text}\n```\nThanks!") == (grades, "Fine.")
    assert parse_grades(f'Scale: {{"grammar": 1}}. {text}')[0] == grades  # an incomplete object before is ignored
    assert parse_grades(json.dumps({**grades, "comment": "extra keys are fine"}))[0] == grades
    for bad in [{**grades, "grammar": 7.5}, {**grades, "plot": "6"}, {**grades, "plot": True},
                {**grades, "creativity": 11}, {**grades, "consistency": 0}, {**grades, "age_group": "G"},
                {key: value for key, value in grades.items() if key != "plot"}]:
        assert parse_grades(f"Assessment. {json.dumps(bad)}") is None, bad
    assert parse_grades("I would give it a 7.") is None
    assert parse_grades('{"grammar": 7, "creativity": 5,') is None
    assert parse_grades(f"Assessment. {json.dumps({**grades, 'age_group': ['C']})}") is None  # was a TypeError


def test_parse_grades_takes_linear_time_on_hostile_replies():
    """A reply of a million "{" took minutes (every "{" decoded, each error counting lines up to it); nested
    objects were a RecursionError."""
    grades = json.dumps({"grammar": 7, "creativity": 5, "consistency": 8, "plot": 6, "age_group": "C"})
    started = time.monotonic()
    assert parse_grades("{" * 2_000_000) is None
    assert parse_grades('{"a": ' * 300_000) is None
    assert parse_grades("{" * 500_000 + grades)[0]["grammar"] == 7
    assert parse_grades("}{" * 500_000 + "1" * 5000 + grades)[0]["plot"] == 6
    assert parse_grades('{"grammar": 1' + "0" * 5000 + "}") is None  # int() of it would raise ValueError
    assert time.monotonic() - started < 10


def test_t_quantiles_match_a_printed_table():
    for df, value in T_TABLE.items():
        assert t_quantile(0.975, df) == pytest.approx(value, abs=1e-4)


def test_mean_interval_by_hand():
    # [7, 5, 8, 6]: mean 6.5, sample variance 5/3, half-width t(0.975, 3) * sqrt(5/3) / 2 with t = 3.1824.
    interval = mean_interval([7, 5, 8, 6])
    half = 3.1824 * math.sqrt(5 / 3) / 2
    assert interval["mean"] == 6.5
    assert interval["ci95_low"] == pytest.approx(6.5 - half, abs=1e-4)
    assert interval["ci95_high"] == pytest.approx(6.5 + half, abs=1e-4)
    assert mean_interval([4]) == {"mean": 4.0, "ci95_low": None, "ci95_high": None}
    assert mean_interval([])["mean"] is None


# --- real HTTP -----------------------------------------------------------------------------------------------------

def test_scripted_replies_retries_and_the_report(server, secret_key, tmp_path, capsys):
    items = [(f"[judge-test:{scenario}] Once upon a time, a {scenario} cat", f" sat on a mat number {n}.")
             for n, scenario in enumerate(SCENARIOS)]
    judge = judge_for(server)
    gradings = grade_all(judge, items, GradingCache(str(tmp_path / "cache.jsonl")))
    for scenario, (beginning, completion), grading in zip(SCENARIOS, items, gradings):
        assert grading.beginning == beginning and grading.completion == completion
        assert grading.requests == REQUESTS[scenario], scenario
        if scenario in GRADED:
            assert grading.grades == expected_grades(beginning, completion), scenario
        else:
            assert grading.grades is None and grading.reason, scenario
    assert "HTTP 500 after 3 request(s)" in gradings[SCENARIOS.index("server_error")].reason
    assert "no valid grades" in gradings[SCENARIOS.index("never_valid")].reason
    assert gradings[0].assessment == "The pupil finished the sentence and kept to the story."
    assert server.requests == sum(REQUESTS.values())
    assert server.authorizations == {f"Bearer {SECRET}"}  # the key from the environment reached the judge

    report = judge_report(judge, gradings)
    graded = [expected_grades(*item) for scenario, item in zip(SCENARIOS, items) if scenario in GRADED]
    t = T_TABLE[len(graded) - 1]
    for criterion in CRITERIA:
        values = [grades[criterion] for grades in graded]
        mean, half = statistics.mean(values), t * statistics.stdev(values) / math.sqrt(len(values))
        assert report["criteria"][criterion]["mean"] == pytest.approx(mean, abs=1e-12)
        assert report["criteria"][criterion]["ci95_low"] == pytest.approx(mean - half, abs=1e-3)
        assert report["criteria"][criterion]["ci95_high"] == pytest.approx(mean + half, abs=1e-3)
    assert report["age_groups"] == {letter: Counter(g["age_group"] for g in graded)[letter] for letter in "ABCDEF"}
    assert (report["items"], report["graded"], report["ungraded"]) == (8, 6, 2)
    assert report["judge_model"] == "scripted-judge" and report["prompt_version"] == PROMPT_VERSION
    assert report["endpoint_host"] == server.base_url.split("/")[2] and report["requests"] == server.requests
    assert report["prompt_tokens"] > 0 and report["completion_tokens"] > 0

    # Again with the cache on disk: only the two ungraded items are asked again.
    before = server.requests
    again = grade_all(judge, items, GradingCache(str(tmp_path / "cache.jsonl")))
    assert server.requests - before == REQUESTS["never_valid"] + REQUESTS["server_error"]
    assert [g.grades for g in again] == [g.grades for g in gradings]
    assert judge_report(judge, again)["from_cache"] == 6
    assert_secret_nowhere(tmp_path, *capsys.readouterr())


# Each raw reply of tests/judge_server.py: (graded, requests with judge_retries=2, words of the reason).
UNUSABLE = {
    "not_json": (False, 1, "(not JSON)"),
    "json_list": (False, 1, "(a JSON list, not an object)"),
    "json_string": (False, 1, "(a JSON string, not an object)"),
    "choices_string": (False, 1, "(no list of choices)"),
    "no_message": (False, 1, "(no message in its first choice)"),
    "content_not_text": (False, 1, "(its message's content is not text but a JSON object)"),
    "huge_number": (False, 1, "(a number of 5,001 digits)"),
    "deep_nesting": (False, 1, "(JSON nested too deeply)"),
    "brace_flood": (False, 1, f"(larger than {MAX_REPLY_BYTES:,} bytes)"),
    "brace_flood_unsized": (False, 1, f"(larger than {MAX_REPLY_BYTES:,} bytes)"),
    "brace_content": (False, 2, "no valid grades in the reply, twice"),
    "cut_short": (False, 3, "connection failed after 3 request(s)"),
    "trickle": (False, 3, "timeout after 3 request(s)"),
    "string_usage": (True, 1, ""),
    "lone_surrogate": (True, 1, ""),
    "retry_after_nan_once": (True, 2, ""),
    "retry_after_negative_once": (True, 2, ""),
}


def test_replies_the_judge_cannot_use_leave_their_items_ungraded_with_the_reason(server, secret_key, tmp_path):
    """Each of these was a traceback (or, for a message of 900 KiB of "{", minutes of parsing): now the item
    is ungraded and says why, as for an HTTP error, and the other items are graded."""
    scenarios = list(UNUSABLE) + ["valid"]
    items = [(f"[judge-test:{scenario}] Once upon a time, a {scenario} dog", " ran home.") for scenario in scenarios]
    cache_path = tmp_path / "cache.jsonl"
    started = time.monotonic()
    gradings = grade_all(judge_for(server), items, GradingCache(str(cache_path)))
    assert time.monotonic() - started < 20
    for scenario, grading in zip(scenarios, gradings):
        graded, requests, reason = UNUSABLE.get(scenario, (True, 1, ""))
        assert grading.requests == requests, (scenario, grading)
        if graded:
            assert grading.grades == expected_grades(grading.beginning, grading.completion), scenario
            assert grading.reason == ""
        else:
            assert grading.grades is None, scenario
            assert reason in grading.reason, grading
            if requests == 1:  # not asked again: it would not help
                assert grading.reason.startswith("a reply that is not a chat completion (")
                assert grading.reason.endswith("after 1 request(s)")
    by_name = dict(zip(scenarios, gradings))
    assert (by_name["string_usage"].prompt_tokens, by_name["string_usage"].completion_tokens) == (0, 0)
    assert by_name["lone_surrogate"].assessment == "Good work?."
    assert by_name["valid"].prompt_tokens > 0
    report = judge_report(judge_for(server), gradings)
    assert report["graded"] == 5 and report["ungraded"] == 13 and report["items"] == 18
    # What was graded went to the cache (the lone surrogate written as "?"), and reads back whole.
    again = GradingCache(str(cache_path))
    assert len(again.entries) == 5 and again.ignored == 0
    key = cache_key("scripted-judge", *items[scenarios.index("lone_surrogate")])
    assert again.get(key)["assessment"] == "Good work?."


def test_retry_after_that_is_not_a_number_of_seconds_uses_the_backoff(server, secret_key, tmp_path):
    """Retry-After nan and -30 crashed time.sleep; now the backoff (here 0.3 s) applies instead."""
    items = [(f"[judge-test:retry_after_{kind}_once] A bird {kind}", " flew.") for kind in ("nan", "negative")]
    started = time.monotonic()
    gradings = grade_all(judge_for(server, judge_backoff=0.3, judge_concurrency=1), items,
                         GradingCache(str(tmp_path / "c.jsonl")))
    elapsed = time.monotonic() - started
    assert [g.requests for g in gradings] == [2, 2] and all(g.grades is not None for g in gradings)
    assert 0.6 <= elapsed < 10  # two backoffs of 0.3 s, no Retry-After of 60 s or a crash


def test_a_second_run_makes_no_requests_and_the_cache_key_has_the_model(server, secret_key, tmp_path):
    items = [(f"Lily went to the park {n}", " and played.") for n in range(5)]
    cache_path = str(tmp_path / "cache.jsonl")
    first = grade_all(judge_for(server), items, GradingCache(cache_path))
    assert server.requests == 5
    second = grade_all(judge_for(server), items, GradingCache(cache_path))
    assert server.requests == 5 and [g.grades for g in second] == [g.grades for g in first]
    grade_all(judge_for(server, judge="another-judge"), items, GradingCache(cache_path))
    assert server.requests == 10  # another judge's grades are not reused


def test_cache_entries_are_checked_as_strictly_as_replies(server, secret_key, tmp_path, capsys):
    """An entry without grades, with grades as a string, string token counts or a lone surrogate was a
    traceback; grades out of range (grammar 53) were averaged into the report. Each is now graded again."""
    items = [(f"A fox number {n} hid", " in the woods.") for n in range(10)]
    good = {"grammar": 3, "creativity": 4, "consistency": 5, "plot": 6, "age_group": "B"}
    bad_entries = [
        {},  # no grades
        {"grades": "grammar 7"},
        {"grades": {**good, "grammar": 53}},
        {"grades": {**good, "age_group": ["B"]}},
        {"grades": good, "prompt_tokens": "12"},
        {"grades": good, "completion_tokens": -3},
        {"grades": good, "assessment": 7},
    ]
    lines = [json.dumps({"key": cache_key("scripted-judge", *item), "assessment": "cached", **entry}).encode()
             for item, entry in zip(items, bad_entries)]
    lines.append(json.dumps({"key": cache_key("scripted-judge", *items[7]), "grades": good,
                             "assessment": "lone \ud800 surrogate"}).encode())  # the JSON escape, as text
    lines.append(json.dumps({"key": cache_key("scripted-judge", *items[8]), "grades": good,
                             "assessment": "caf\u00e9"}).encode().replace(b"\\u00e9", b"\xe9"))  # not UTF-8
    lines.append(json.dumps({"key": cache_key("scripted-judge", *items[9]), "grades": good, "assessment": "ok",
                             "prompt_tokens": 11, "completion_tokens": 5}).encode())
    cache_path = tmp_path / "cache.jsonl"
    # The last line cut short by a crash (no newline): what is appended after it must not be glued to it.
    cache_path.write_bytes(b"\n".join(lines) + b'\n{"key": "cut sh')
    cache = GradingCache(str(cache_path))
    assert cache.ignored == 10 and len(cache.entries) == 1
    assert "note: 10 line(s) of --judge_cache" in capsys.readouterr().err

    gradings = grade_all(judge_for(server), items, cache)
    assert server.requests == 9  # all but the valid entry
    for n, (item, grading) in enumerate(zip(items, gradings)):
        assert grading.grades == (good if n == 9 else expected_grades(*item)), n
    assert gradings[9].requests == 0 and (gradings[9].prompt_tokens, gradings[9].completion_tokens) == (11, 5)
    report = judge_report(judge_for(server), gradings)
    assert report["criteria"]["grammar"]["mean"] == pytest.approx(
        statistics.mean(g.grades["grammar"] for g in gradings)) and report["criteria"]["grammar"]["mean"] <= 10
    assert report["from_cache"] == 1 and report["graded"] == 10
    # Every new grading was appended on a line of its own: all ten read back, the cut line alone is ignored.
    reread = GradingCache(str(cache_path))
    assert len(reread.entries) == 10 and reread.ignored == 10
    assert [reread.get(cache_key("scripted-judge", *item))["grades"] for item in items] == [g.grades for g in gradings]


def test_concurrency_is_limited(secret_key, tmp_path):
    slow = JudgeServer(delay=0.5).start()  # long enough that three requests overlap on a busy machine too
    try:
        items = [(f"Story {n} begins", " and ends.") for n in range(9)]
        judge = judge_for(slow, judge_concurrency=3, judge_timeout=10)
        grade_all(judge, items, GradingCache(str(tmp_path / "c.jsonl")))
        assert slow.requests == 9 and slow.max_in_flight == 3
    finally:
        slow.shutdown()
        slow.server_close()


def test_a_refused_key_stops_the_run_in_one_line(server, monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", REFUSED_KEY)
    with pytest.raises(UserError, match="refused the key") as error:
        grade_all(judge_for(server), [("A", " b.")], GradingCache(str(tmp_path / "c.jsonl")))
    assert REFUSED_KEY not in str(error.value)


def test_openai_without_a_key_is_a_user_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(UserError, match="OPENAI_API_KEY"):
        Judge(JudgeConfig(judge="gpt-4o"))


# --- evaluate.py --judge -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("judge_model") / "model.pth"
    save_checkpoint(path, model_checkpoint(Model(preset("tiny", block_size=64)), step=5))
    return path


def test_evaluate_with_a_judge(server, secret_key, checkpoint, synthetic_data_dir, tmp_path, monkeypatch, capsys):
    output = tmp_path / "report.json"
    arguments = ["--model", str(checkpoint), "--data_dir", str(synthetic_data_dir), "--split", "test",
                 "--max_samples", "5", "--judge", "scripted-judge", "--judge_base_url", server.base_url,
                 "--judge_stories", "4", "--max_tokens", "10", "--judge_cache", str(tmp_path / "cache.jsonl"),
                 "--output", str(output)]
    status, out, err = run_evaluate(monkeypatch, capsys, *arguments)
    assert status == 0, err
    report = json.loads(output.read_text())
    settings, result = report["judge"], report["models"][0]["judge"]
    assert settings["beginnings"] == 4 and settings["prompt_version"] == PROMPT_VERSION
    assert settings["endpoint_host"] == server.base_url.split("/")[2] and settings["sampling"]["temperature"] == 0.8
    records = [json.loads(line) for line in Path(settings["gradings_file"]).read_text().splitlines()]
    assert len(records) == 4 and server.requests == 4
    for record in records:
        assert record["model"] == str(checkpoint)
        assert record["grades"] == expected_grades(record["beginning"], record["completion"])
    for criterion in CRITERIA:
        expected = statistics.mean(record["grades"][criterion] for record in records)
        assert result["criteria"][criterion]["mean"] == pytest.approx(expected)
        assert "judge " + criterion in out
    assert result["graded"] == 4 and "4 of 4 (0 ungraded)" in out and PROMPT_VERSION in out
    # The same command again: every grading comes from the cache.
    assert run_evaluate(monkeypatch, capsys, *arguments)[0] == 0
    assert server.requests == 4 and json.loads(output.read_text())["models"][0]["judge"]["from_cache"] == 4
    assert_secret_nowhere(tmp_path, out, err)


def test_ctrl_c_keeps_the_gradings_and_a_rerun_asks_only_the_rest(checkpoint, tmp_path):
    slow = JudgeServer(delay=0.4).start()
    try:
        beginnings = tmp_path / "beginnings.txt"
        beginnings.write_text("\n".join(f"Once upon a time, a cat number {n}" for n in range(8)))
        cache = tmp_path / "cache.jsonl"
        command = [sys.executable, "evaluate.py", "--model", str(checkpoint), "--data_path", str(beginnings),
                   "--judge", "scripted-judge", "--judge_base_url", slow.base_url, "--judge_prompts",
                   str(beginnings), "--judge_concurrency", "1", "--max_tokens", "6", "--judge_cache", str(cache),
                   "--output", str(tmp_path / "report.json")]
        environment = {**os.environ, "OPENAI_API_KEY": SECRET}
        # As from a terminal: a background job's children inherit an ignored SIGINT, which would hide Ctrl-C.
        process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 120
        while not (cache.is_file() and len(cache.read_text().splitlines()) >= 2) and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
        assert process.returncode == 130, err
        kept = len(cache.read_text().splitlines())
        assert 2 <= kept < 8 and "interrupted" in err and not (tmp_path / "report.json").exists()
        asked = slow.requests
        slow.delay = 0
        rerun = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        assert slow.requests - asked == 8 - kept  # only what was not graded yet
        report = json.loads((tmp_path / "report.json").read_text())
        assert report["models"][0]["judge"]["graded"] == 8 and report["models"][0]["judge"]["from_cache"] == kept
        assert_secret_nowhere(tmp_path, out, err, rerun.stdout, rerun.stderr)
    finally:
        slow.shutdown()
        slow.server_close()


@pytest.mark.parametrize("args, message", [
    (["--judge_concurrency", "0"], "--judge_concurrency"),
    (["--judge_base_url", "localhost:8000"], "--judge_base_url"),
    (["--judge_base_url", "http://"], "with a host"),  # was accepted: nothing graded, exit 0
    (["--judge_base_url", "https:///v1"], "with a host"),
    (["--judge_base_url", "http://:8000/v1"], "with a host"),
    (["--judge_base_url", "http://127.0.0.1:port/v1"], "with a host"),
    (["--judge_base_url", "ftp://127.0.0.1/v1"], "--judge_base_url"),
    (["--judge_prompts", "missing.txt"], "not found"),
])
def test_bad_judge_arguments_are_one_line_errors(checkpoint, synthetic_data_dir, secret_key, tmp_path, monkeypatch,
                                                 capsys, args, message):
    status, out, err = run_evaluate(monkeypatch, capsys, "--model", str(checkpoint), "--data_dir",
                                    str(synthetic_data_dir), "--judge", "j", "--output", str(tmp_path / "r.json"),
                                    *args)
    assert status == 2 and out == "" and len(err.strip().splitlines()) == 1 and message in err


def test_an_unwritable_judge_cache_is_refused_before_any_work(server, secret_key, checkpoint, synthetic_data_dir,
                                                               read_only_folder, tmp_path, monkeypatch, capsys):
    """Used to be a traceback at the first grading, after the completions were made."""
    monkeypatch.setattr(evaluate_script, "stream_loss", lambda *args, **kwargs: pytest.fail("evaluated anyway"))
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "a_folder").mkdir()
    for cache, message in [(tmp_path / "a_file" / "cache.jsonl", "a_file is a file, not a folder"),
                           (read_only_folder / "cache.jsonl", "cannot write in the output folder"),
                           (tmp_path / "a_folder", "exists and is not a file")]:
        error = refusal(monkeypatch, capsys, evaluate_script, "--model", str(checkpoint), "--data_dir",
                        str(synthetic_data_dir), "--judge", "scripted-judge", "--judge_base_url", server.base_url,
                        "--judge_cache", str(cache), "--output", str(tmp_path / "report.json"))
        assert error.startswith(f"error: --judge_cache {cache}") and message in error, error
    assert server.requests == 0 and not (tmp_path / "report.json").exists()


def test_a_judge_cache_that_is_an_input_is_refused(server, secret_key, checkpoint, synthetic_data_dir, tmp_path,
                                                   monkeypatch, capsys):
    """Gradings appended to the checkpoint (or to --judge_prompts) would corrupt it; the report written over the
    cache would lose every grading."""
    model = tmp_path / "model.pth"
    model.write_bytes(checkpoint.read_bytes())
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Once upon a time\n")
    common = ["--model", str(model), "--data_dir", str(synthetic_data_dir), "--judge", "scripted-judge",
              "--judge_base_url", server.base_url, "--judge_prompts", str(prompts)]
    for cache, output, message in [
            (model, tmp_path / "r.json", f"--judge_cache {model} is the input {model}"),
            (prompts, tmp_path / "r.json", f"--judge_cache {prompts} is the input {prompts}"),
            (tmp_path / "r.json", tmp_path / "r.json", f"--output {tmp_path / 'r.json'} is the input"),
            (tmp_path / "r.judged.jsonl", tmp_path / "r.json", "--output's gradings file")]:
        error = refusal(monkeypatch, capsys, evaluate_script, *common, "--judge_cache", str(cache),
                        "--output", str(output))
        assert message in error, error
    assert model.read_bytes() == checkpoint.read_bytes() and prompts.read_text() == "Once upon a time\n"
    assert server.requests == 0 and not (tmp_path / "r.json").exists()


def test_a_judge_pointed_at_serve_py_leaves_every_item_ungraded(checkpoint, synthetic_data_dir, secret_key, tmp_path,
                                                                 monkeypatch, capsys):
    """serve.py continues text and has no chat format: its chat endpoint answers 400, so nothing is graded,
    each item says why, and the run ends normally with the count."""
    with ServerProcess(str(checkpoint), log_dir=tmp_path, env={"OMP_NUM_THREADS": "1"}) as serving:
        output = tmp_path / "report.json"
        status, out, err = run_evaluate(
            monkeypatch, capsys, "--model", str(checkpoint), "--data_dir", str(synthetic_data_dir), "--split", "test",
            "--max_samples", "2", "--judge", "tiny-stories", "--judge_base_url", f"{serving.base_url}/v1",
            "--judge_stories", "3", "--max_tokens", "6", "--judge_cache", str(tmp_path / "cache.jsonl"),
            "--output", str(output))
        assert status == 0, err
        assert serving.health()["status"] == "ok"  # still serving
    result = json.loads(output.read_text())["models"][0]["judge"]
    assert (result["items"], result["graded"], result["ungraded"]) == (3, 0, 3)
    assert "0 of 3 (3 ungraded)" in out and "Traceback" not in err
    records = [json.loads(line) for line in Path(json.loads(output.read_text())["judge"]["gradings_file"])
               .read_text().splitlines()]
    assert len(records) == 3 and all(record["grades"] is None for record in records)
    assert all(record["reason"].startswith("HTTP 400: ") and "chat" in record["reason"] for record in records)
    assert not (tmp_path / "cache.jsonl").exists() or not (tmp_path / "cache.jsonl").read_text().strip()
    assert_secret_nowhere(tmp_path, out, err)
