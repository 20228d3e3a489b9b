"""LLM-graded completions, as the paper evaluated its models: a judge model reads a story's beginning and a
pupil's (the model's) completion and grades grammar, creativity, consistency and plot from 1 to 10, with a
guess of the pupil's age group.

The judge is any OpenAI-compatible chat-completions endpoint, through the official `openai` client; the key
comes from the environment variable OPENAI_API_KEY only. Gradings are cached on disk, keyed by (judge model,
prompt version, beginning, completion), so a repeated or interrupted run asks only what is not graded yet.
A reply without a valid grades object is asked again once, then counted as ungraded: never guessed. A reply that
is not a usable chat completion (not JSON, another shape, larger than MAX_REPLY_BYTES) leaves its item ungraded
with the reason, as an HTTP error does; cached gradings are checked as strictly as the judge's replies.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import re
import sys
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from tqdm import tqdm

from tinystories.errors import UserError
from tinystories.files import check_output_file

# The grading conversation. Change any text below and bump PROMPT_VERSION: cached gradings and reports name it.
PROMPT_VERSION = "tinystories-judge-v1"
CRITERIA = ("grammar", "creativity", "consistency", "plot")
AGE_GROUPS = {"A": "3 or under", "B": "4-5", "C": "6-7", "D": "8-9", "E": "10-12", "F": "13-16"}
SEPARATOR = "***"
SYSTEM_PROMPT = "You are a primary-school teacher who grades pupils' writing exercises fairly and briefly."
GRADING_PROMPT = """\
A teacher began the story below. A pupil was given the part before the {separator} separator and wrote \
the part after it. The beginning may stop in the middle of a sentence: the pupil had to finish that sentence \
and go on with the story.

{beginning}{separator}{completion}

First write a short assessment of the pupil's part, in a few sentences: its grammar and spelling, whether it \
fits what the beginning set up, and whether it finished the sentence that was cut. Then give your grades as \
one JSON object on the last line, with nothing after it:
{{"grammar": G, "creativity": C, "consistency": S, "plot": P, "age_group": "X"}}
G, C, S and P are whole numbers from 1 (very poor) to 10 (excellent) for the grammar, the creativity, the \
consistency with the beginning, and how well the plot holds together. X is your guess of the pupil's age \
group: {age_groups}."""
REASK_PROMPT = """\
Your reply did not end with a valid grades object. Reply with that JSON object only: \
{"grammar": G, "creativity": C, "consistency": S, "plot": P, "age_group": "X"}, with whole numbers from 1 \
to 10 and an age group letter from A to F."""

OPENAI_BASE_URL = "https://api.openai.com/v1"
KEY_VARIABLE = "OPENAI_API_KEY"
# What a local server (vLLM, llama.cpp, Ollama) is sent when OPENAI_API_KEY is unset: they ignore it.
NO_KEY = "no-key"
# The most bytes of a reply that are read (or 64 per --judge_max_tokens token, when that is more): a grading is
# a few kilobytes, so a larger body is not one, and reading or parsing it could take any time or memory.
MAX_REPLY_BYTES = 1 << 20
# The most digits of a number in a reply or a cache line: token counts have a few; Python's int() of a number
# of a million digits takes seconds (and beyond 4,300 raises ValueError).
MAX_DIGITS = 30


def _usable_url(url: str) -> bool:
    """http or https, a host, and a port from 1 to 65535 if one is given ("http://" has no host)."""
    parsed = urllib.parse.urlparse(url)
    try:
        port = parsed.port
    except ValueError:  # not a number, or out of range
        return False
    return parsed.scheme in ("http", "https") and bool(parsed.hostname) and port != 0


@dataclass
class JudgeConfig:
    judge: Optional[str] = field(default=None, metadata={
        "metavar": "MODEL", "help": "grade completions with this chat model (e.g. gpt-4o) of --judge_base_url"})
    judge_base_url: str = field(default=OPENAI_BASE_URL, metadata={
        "metavar": "URL", "help": "an OpenAI-compatible API (a local vLLM, llama.cpp or Ollama server works the "
                                  "same); the key comes from the OPENAI_API_KEY environment variable only"})
    judge_stories: int = field(default=50, metadata={
        "help": "story beginnings to complete and grade: the first part of the first N test-split stories"})
    judge_prompts: Optional[str] = field(default=None, metadata={
        "metavar": "FILE", "help": "grade completions of these beginnings instead: one per line, .jsonl "
                                   "(\"prompt\" or \"text\"), or a YAML list of strings"})
    judge_concurrency: int = field(default=4, metadata={"help": "judge requests in flight at once"})
    judge_retries: int = field(default=5, metadata={
        "help": "retries of a request that failed with 429, 5xx, a timeout or a lost connection"})
    judge_backoff: float = field(default=1.0, metadata={
        "help": "seconds before the first retry; doubled for each further retry (a Retry-After header wins)"})
    judge_timeout: float = field(default=120.0, metadata={"help": "seconds to wait for one judge reply"})
    judge_max_tokens: int = field(default=600, metadata={"help": "reply tokens per grading, at most"})
    judge_cache: str = field(default="results/judge_cache.jsonl", metadata={
        "metavar": "FILE", "help": "gradings kept across runs, keyed by judge model, prompt version, beginning "
                                   "and completion"})

    def __post_init__(self) -> None:
        for name, minimum in (("judge_stories", 1), ("judge_concurrency", 1), ("judge_retries", 0),
                              ("judge_max_tokens", 1)):
            if getattr(self, name) < minimum:
                raise UserError(f"--{name} must be at least {minimum}, got {getattr(self, name)}")
        for name in ("judge_backoff", "judge_timeout"):
            if not getattr(self, name) > 0:
                raise UserError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.judge is not None and not self.judge.strip():
            raise UserError("--judge is empty; give the judge model's name")
        if not _usable_url(self.judge_base_url):
            raise UserError(f"--judge_base_url must be an http:// or https:// URL with a host (such as "
                            f"http://127.0.0.1:8000/v1), got {self.judge_base_url!r}")


# --- the grading conversation --------------------------------------------------------------------------------------

def grading_messages(beginning: str, completion: str) -> list[dict[str, str]]:
    age_groups = ", ".join(f"{letter} ({ages})" for letter, ages in AGE_GROUPS.items())
    prompt = GRADING_PROMPT.format(separator=SEPARATOR, beginning=beginning, completion=completion,
                                   age_groups=age_groups)
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]


def _valid_grades(candidate: Any) -> Optional[dict[str, Any]]:
    if not isinstance(candidate, dict):
        return None
    grades: dict[str, Any] = {}
    for criterion in CRITERIA:
        score = candidate.get(criterion)
        # Strict: whole numbers only (7.5, "7" and true are not grades).
        if type(score) is not int or not 1 <= score <= 10:
            return None
        grades[criterion] = score
    age_group = candidate.get("age_group")
    if not isinstance(age_group, str) or age_group not in AGE_GROUPS:
        return None
    grades["age_group"] = age_group
    return grades


class _LongNumber(ValueError):
    pass


def _short_int(digits: str) -> int:
    if len(digits) > MAX_DIGITS:
        raise _LongNumber(f"a number of {len(digits):,} digits")
    return int(digits)


def _load_json(text: str) -> Any:
    """json.loads refusing numbers of more than MAX_DIGITS digits (ValueError); RecursionError when too deep."""
    return json.loads(text, parse_int=_short_int)


# A grades object is flat (numbers and a letter): candidates are the brace pairs with no brace inside, found in
# one pass. Decoding from every "{" instead took minutes on a reply of a million of them.
_FLAT_OBJECT = re.compile(r"\{[^{}]*\}")


def parse_grades(reply: str) -> Optional[tuple[dict[str, Any], str]]:
    """(grades, the assessment before them) from a judge's reply, or None when it holds no valid grades object.

    The last flat JSON object in the reply (no object inside it) that has every criterion as a whole number from
    1 to 10 and an age group letter counts; text around it (an assessment, a code fence) is tolerated.
    """
    found = None
    for match in _FLAT_OBJECT.finditer(reply):
        try:
            candidate = _load_json(match.group())
        except (ValueError, RecursionError):
            continue
        grades = _valid_grades(candidate)
        if grades is not None:
            found = grades, reply[:match.start()]
    if found is None:
        return None
    grades, before = found
    return grades, before.strip().removesuffix("```json").removesuffix("```").strip()


# --- the cache -----------------------------------------------------------------------------------------------------

def cache_key(judge_model: str, beginning: str, completion: str) -> str:
    return hashlib.sha256(json.dumps([judge_model, PROMPT_VERSION, beginning, completion]).encode("utf-8")).hexdigest()


def _is_text(value: Any) -> bool:
    """A str that UTF-8 can encode (JSON's "\\ud800" escapes decode to lone surrogates, which it cannot)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0


def cache_entry(line: bytes) -> Optional[dict[str, Any]]:
    """The grading of one cache line, checked as strictly as a judge's reply: a key, grades that parse_grades
    would accept, an assessment that is text, token counts that are whole numbers; None for anything else."""
    try:
        entry = _load_json(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
        return None
    grades = _valid_grades(entry.get("grades"))
    assessment = entry.get("assessment", "")
    tokens = [entry.get("prompt_tokens", 0), entry.get("completion_tokens", 0)]
    if grades is None or not _is_text(assessment) or not all(_is_count(count) for count in tokens):
        return None
    return {**entry, "grades": grades, "assessment": assessment, "prompt_tokens": tokens[0],
            "completion_tokens": tokens[1]}


def check_cache_path(path: str) -> None:
    """Refuse, before any work, a --judge_cache that cannot be appended to: a folder, a path under a file, a
    folder that takes no new files, a file that cannot be opened for appending."""
    file = Path(path)
    if file.exists() and not file.is_file():
        raise UserError(f"--judge_cache {path} exists and is not a file")
    try:
        check_output_file(file, "--judge_cache")
    except UserError as error:
        raise UserError(f"--judge_cache {path} cannot be written: {error}") from None
    if file.is_file():
        try:
            with open(file, "ab"):  # what add() does; nothing is written now
                pass
        except OSError as error:
            raise UserError(f"--judge_cache {path} cannot be written: {error.strerror or error}") from None


class GradingCache:
    """Gradings on disk, one JSON line each, appended (and fsynced) as they arrive, so Ctrl-C or a crash keeps
    every grading finished before it. Only gradings are kept: an ungraded item is asked again next time, and so
    is one whose line is not a valid grading (cut short by a crash, or edited).

    The file is checked to be writable here, before the first request, not after the work."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.entries: dict[str, dict[str, Any]] = {}
        self.ignored = 0  # lines that are not valid gradings
        self._ends_with_newline = True
        check_cache_path(path)
        if not self.path.is_file():
            return
        try:
            data = self.path.read_bytes()
        except OSError as error:
            raise UserError(f"--judge_cache {path} cannot be read: {error.strerror or error}") from None
        self._ends_with_newline = not data or data.endswith(b"\n")
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            entry = cache_entry(line)
            if entry is None:
                self.ignored += 1
            else:
                self.entries[entry["key"]] = entry
        if self.ignored:
            print(f"note: {self.ignored:,} line(s) of --judge_cache {path} are not valid gradings (cut short by a "
                  f"crash, or edited); their items are graded again", file=sys.stderr)

    def get(self, key: str) -> Optional[dict[str, Any]]:
        return self.entries.get(key)

    def add(self, entry: dict[str, Any]) -> None:
        # A line cut short by a crash has no newline: the new line starts after one, so it is not glued to it.
        text = ("" if self._ends_with_newline else "\n") + json.dumps(entry, ensure_ascii=False) + "\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as file:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
        except OSError as error:
            raise UserError(f"could not write --judge_cache {self.path}: {error.strerror or error}; the "
                            f"gradings already in it are kept") from None
        self._ends_with_newline = True
        self.entries[entry["key"]] = entry


# --- asking the judge ----------------------------------------------------------------------------------------------

@dataclass
class Grading:
    beginning: str
    completion: str
    grades: Optional[dict[str, Any]]  # the four criteria and age_group; None: ungraded
    assessment: str = ""
    reason: str = ""  # why it is ungraded
    requests: int = 0  # requests this run made for it (0: from the cache)
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _RequestFailed(Exception):
    """A request that got no reply for this item; retryable: 429, 5xx, a timeout, a lost connection."""

    def __init__(self, reason: str, retryable: bool = True, retry_after: Optional[float] = None) -> None:
        super().__init__(reason)
        self.retryable, self.retry_after = retryable, retry_after


def _openai() -> Any:
    try:
        import openai
    except ModuleNotFoundError:
        raise UserError("the judge needs the openai package: pip install -r requirements.txt") from None
    return openai


def _server_message(error: Any) -> str:
    """': <the message of the error object>' when the server sent one (OpenAI's shape), else ''."""
    body = error.body if isinstance(error.body, dict) else {}
    message = body.get("message")
    lines = str(message).strip().splitlines() if message else []
    return f": {lines[0][:200]}" if lines else ""


def _retry_after(error: Any) -> Optional[float]:
    """Retry-After in seconds (at most 60), or None when absent or not a number of seconds from 0 (nan, -30 or
    an HTTP date: the backoff applies)."""
    try:
        seconds = float(error.response.headers["retry-after"])
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    return min(seconds, 60.0) if seconds >= 0 else None  # NaN compares false


def _unusable(what: str) -> _RequestFailed:
    return _RequestFailed(f"a reply that is not a chat completion ({what})", retryable=False)


def _json_kind(value: Any) -> str:
    kinds = {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}
    return kinds.get(type(value), "number")


def _token_count(usage: Any, name: str) -> int:
    """usage[name] when it is a whole number of tokens; 0 for anything else (a malformed count does not spoil
    the grades, it is only not counted)."""
    value = usage.get(name) if isinstance(usage, dict) else None
    return value if _is_count(value) else 0


def chat_reply(body: bytes) -> tuple[str, int, int]:
    """(the message's text, prompt tokens, completion tokens) of a chat-completion response body, checked step by
    step; _RequestFailed (not retryable) saying what is wrong for any other body. No choices, or a message
    without content (a refusal), is an empty text: no grades, so it is asked again."""
    try:
        document = _load_json(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise _unusable("not UTF-8 text") from None
    except _LongNumber as error:
        raise _unusable(f"{error}") from None
    except RecursionError:
        raise _unusable("JSON nested too deeply") from None
    except ValueError:
        raise _unusable("not JSON") from None
    if not isinstance(document, dict):
        raise _unusable(f"a JSON {_json_kind(document)}, not an object")
    choices = document.get("choices")
    if not isinstance(choices, list):
        raise _unusable("no list of choices")
    prompt_tokens = _token_count(document.get("usage"), "prompt_tokens")
    completion_tokens = _token_count(document.get("usage"), "completion_tokens")
    if not choices:
        return "", prompt_tokens, completion_tokens
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    if not isinstance(message, dict):
        raise _unusable("no message in its first choice")
    content = message.get("content")
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise _unusable(f"its message's content is not text but a JSON {_json_kind(content)}")
    # Lone surrogates (JSON's "\ud800") cannot be written as UTF-8: they become "?".
    return content.encode("utf-8", errors="replace").decode("utf-8"), prompt_tokens, completion_tokens


class Judge:
    """One judge model behind an OpenAI-compatible endpoint; grade() is safe to call from several threads."""

    def __init__(self, config: JudgeConfig) -> None:
        openai = _openai()
        self.config = config
        self.model = config.judge
        self.host = urllib.parse.urlparse(config.judge_base_url).netloc
        key = os.environ.get(KEY_VARIABLE)
        if not key:
            if config.judge_base_url.rstrip("/") == OPENAI_BASE_URL:
                raise UserError(f"set the {KEY_VARIABLE} environment variable to use OpenAI's API as the judge")
            key = NO_KEY
        # Retries are ours (max_retries=0): the client's would hide how many requests each grading took.
        self.client = openai.OpenAI(api_key=key, base_url=config.judge_base_url, max_retries=0,
                                    timeout=config.judge_timeout)
        if not hasattr(self.client.chat.completions, "with_streaming_response"):
            raise UserError(f"the judge needs openai 1.8 or newer (this is {openai.__version__}): "
                            "pip install -U openai")
        self.max_reply_bytes = max(MAX_REPLY_BYTES, 64 * config.judge_max_tokens)

    def _body(self, messages: list[dict[str, str]]) -> bytes:
        """The body of one chat-completion response, read up to max_reply_bytes and within judge_timeout; the
        client's own parsing is not used (it fails with a traceback on bodies of other shapes)."""
        limit, deadline = self.max_reply_bytes, time.monotonic() + self.config.judge_timeout
        too_large = _unusable(f"larger than {limit:,} bytes")
        with self.client.chat.completions.with_streaming_response.create(
                model=self.model, messages=messages, temperature=0.0,
                max_tokens=self.config.judge_max_tokens) as response:
            length = response.headers.get("content-length", "")
            if length.isdigit() and len(length) < 20 and int(length) > limit:
                raise too_large
            chunks, size = [], 0
            try:
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise too_large
                    chunks.append(chunk)
                    if time.monotonic() > deadline:
                        raise _RequestFailed("timeout")
            except _RequestFailed:
                raise
            except Exception as error:  # the HTTP library's own error: the client wraps only those before the body
                raise _RequestFailed("timeout" if "timeout" in type(error).__name__.lower()
                                     else "connection failed") from None
        return b"".join(chunks)

    def _ask(self, messages: list[dict[str, str]], grading: Grading) -> str:
        """One chat completion, retried with exponential backoff on transient failures."""
        openai = _openai()
        for attempt in range(self.config.judge_retries + 1):
            grading.requests += 1
            try:
                content, prompt_tokens, completion_tokens = chat_reply(self._body(messages))
                grading.prompt_tokens += prompt_tokens
                grading.completion_tokens += completion_tokens
                return content
            except _RequestFailed as error:
                if not error.retryable:
                    raise
                failure = error
            except openai.APIStatusError as error:
                if error.status_code == 429 or error.status_code >= 500:
                    failure = _RequestFailed(f"HTTP {error.status_code}", retry_after=_retry_after(error))
                elif error.status_code in (401, 403):
                    raise UserError(f"the judge at {self.host} refused the key (HTTP {error.status_code}); check "
                                    f"{KEY_VARIABLE}") from None
                elif error.status_code == 404:
                    raise UserError(f"the judge at {self.host} has no model {self.model!r} or no chat "
                                    f"completions endpoint (HTTP 404)") from None
                else:  # e.g. 400 for a prompt too long for the judge: this item only, and asking again won't help
                    raise _RequestFailed(f"HTTP {error.status_code}{_server_message(error)}", retryable=False) from None
            except openai.APITimeoutError:
                failure = _RequestFailed("timeout")
            except openai.APIConnectionError:
                failure = _RequestFailed("connection failed")
            if attempt == self.config.judge_retries:
                raise failure
            delay = self.config.judge_backoff * 2.0 ** min(attempt, 40)  # 2.0 ** 1100 would overflow
            time.sleep(failure.retry_after if failure.retry_after is not None else delay)
        raise AssertionError("unreachable")

    def grade(self, beginning: str, completion: str) -> Grading:
        """Ask for grades, and once more if the reply has none; ungraded (with a reason) if neither has."""
        grading = Grading(beginning, completion, None)
        messages = grading_messages(beginning, completion)
        try:
            reply = self._ask(messages, grading)
            parsed = parse_grades(reply)
            if parsed is None:
                messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": REASK_PROMPT}]
                parsed = parse_grades(self._ask(messages, grading))
                if parsed is None:
                    grading.reason = "no valid grades in the reply, twice"
                    return grading
        except _RequestFailed as failure:
            grading.reason = f"{failure} after {grading.requests} request(s)"
            return grading
        grading.grades, assessment = parsed
        grading.assessment = assessment
        return grading


def _workers(judge: Judge, work: "queue.Queue[tuple[int, str, str]]", done: "queue.Queue[Any]") -> None:
    while True:
        try:
            index, beginning, completion = work.get_nowait()
        except queue.Empty:
            return
        try:
            done.put((index, judge.grade(beginning, completion)))
        except BaseException as error:  # a UserError (bad key, unknown model) stops the run from the main thread
            done.put((index, error))


def grade_all(judge: Judge, items: list[tuple[str, str]], cache: GradingCache, progress: bool = False) -> list[Grading]:
    """Gradings of (beginning, completion) pairs in order: cached ones without a request, the rest asked with
    judge_concurrency requests in flight. Each new grading is cached as it arrives; on Ctrl-C the workers
    (daemon threads) are abandoned and what was graded stays in the cache."""
    gradings: list[Optional[Grading]] = [None] * len(items)
    work: "queue.Queue[tuple[int, str, str]]" = queue.Queue()
    for index, (beginning, completion) in enumerate(items):
        entry = cache.get(cache_key(judge.model, beginning, completion))
        if entry is not None:
            gradings[index] = Grading(beginning, completion, entry["grades"], entry.get("assessment", ""),
                                      prompt_tokens=entry.get("prompt_tokens", 0),
                                      completion_tokens=entry.get("completion_tokens", 0))
        else:
            work.put((index, beginning, completion))
    asked = work.qsize()
    done: "queue.Queue[Any]" = queue.Queue()
    for _ in range(min(judge.config.judge_concurrency, asked)):
        threading.Thread(target=_workers, args=(judge, work, done), daemon=True).start()
    with tqdm(total=asked, desc=f"grading ({judge.model})", unit="story", disable=not progress) as bar:
        try:
            for _ in range(asked):
                index, result = done.get()
                if isinstance(result, BaseException):
                    raise result
                gradings[index] = result
                if result.grades is not None:
                    cache.add({"key": cache_key(judge.model, result.beginning, result.completion),
                               "judge_model": judge.model, "prompt_version": PROMPT_VERSION,
                               "beginning": result.beginning, "completion": result.completion,
                               "grades": result.grades, "assessment": result.assessment,
                               "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens})
                bar.update()
        except KeyboardInterrupt:
            print(f"{len(cache.entries):,} gradings are kept in {cache.path}; the same command asks only for the "
                  f"rest", file=sys.stderr)
            raise
    return [grading for grading in gradings if grading is not None]


# --- the report ----------------------------------------------------------------------------------------------------

def t_quantile(probability: float, degrees_of_freedom: int) -> float:
    """The `probability` quantile (above 0.5) of Student's t distribution, by bisection on its CDF, which is
    integrated from the density with Simpson's rule (accurate to about 1e-9 for these uses)."""
    df = degrees_of_freedom
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def density(x: float) -> float:
        return math.exp(log_norm - (df + 1) / 2 * math.log1p(x * x / df))

    def cdf(x: float, steps: int = 2000) -> float:
        h = x / steps
        total = density(0.0) + density(x) + sum((4 if i % 2 else 2) * density(i * h) for i in range(1, steps))
        return 0.5 + total * h / 3

    low, high = 0.0, 1.0
    while cdf(high) < probability:
        low, high = high, high * 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if cdf(middle) < probability else (low, middle)
    return (low + high) / 2


def mean_interval(values: list[int]) -> dict[str, Optional[float]]:
    """The mean and its 95% confidence interval, mean ± t(0.975, n-1) · s / sqrt(n) (s: the sample standard
    deviation); the interval is null for fewer than two values."""
    if not values:
        return {"mean": None, "ci95_low": None, "ci95_high": None}
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "ci95_low": None, "ci95_high": None}
    deviation = math.sqrt(sum((value - mean) ** 2 for value in values) / (n - 1))
    half = t_quantile(0.975, n - 1) * deviation / math.sqrt(n)
    return {"mean": mean, "ci95_low": mean - half, "ci95_high": mean + half}


def judge_report(judge: Judge, gradings: list[Grading]) -> dict[str, Any]:
    graded = [g.grades for g in gradings if g.grades is not None]
    ages = Counter(grades["age_group"] for grades in graded)
    return {
        "judge_model": judge.model, "endpoint_host": judge.host, "prompt_version": PROMPT_VERSION,
        "items": len(gradings), "graded": len(graded), "ungraded": len(gradings) - len(graded),
        "criteria": {criterion: mean_interval([grades[criterion] for grades in graded]) for criterion in CRITERIA},
        "age_groups": {letter: ages.get(letter, 0) for letter in AGE_GROUPS},
        "requests": sum(g.requests for g in gradings),
        "from_cache": sum(1 for g in gradings if g.requests == 0 and g.grades is not None),
        # Tokens of every grading in the report, cached ones included (what the gradings cost when asked).
        "prompt_tokens": sum(g.prompt_tokens for g in gradings),
        "completion_tokens": sum(g.completion_tokens for g in gradings),
    }


def grading_records(gradings: list[Grading], **common: Any) -> Iterator[dict[str, Any]]:
    """One JSON-ready record per grading (for the JSONL file beside the report), with `common` fields first."""
    for number, grading in enumerate(gradings):
        record = asdict(grading)
        yield {**common, "number": number, **record}
