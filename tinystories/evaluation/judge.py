"""LLM-graded completions, as the paper evaluated its models: a judge model reads a story's beginning and a
pupil's (the model's) completion and grades grammar, creativity, consistency and plot from 1 to 10, with a
guess of the pupil's age group.

The judge is any OpenAI-compatible chat-completions endpoint, through the official `openai` client; the key
comes from the environment variable OPENAI_API_KEY only. Gradings are cached on disk, keyed by (judge model,
prompt version, beginning, completion), so a repeated or interrupted run asks only what is not graded yet.
A reply without a valid grades object is asked again once, then counted as ungraded: never guessed. A reply that
is not a usable chat completion (not JSON, another shape, larger than MAX_REPLY_BYTES) leaves its item ungraded
with the reason, as an HTTP error does; cached gradings are checked as strictly as the judge's replies.
This module asks and retries; judge_protocol.py holds the prompt and reads the replies, judge_cache.py the
cache, judge_report.py the statistics.
"""
from __future__ import annotations

import os
import queue
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Optional

from tqdm import tqdm

from tinystories.errors import UserError
from tinystories.evaluation.judge_cache import GradingCache, cache_key
from tinystories.evaluation.judge_protocol import (
    MAX_REPLY_BYTES,
    PROMPT_VERSION,
    REASK_PROMPT,
    RequestFailed,
    chat_reply,
    grading_messages,
    parse_grades,
    unusable_reply,
)

OPENAI_BASE_URL = "https://api.openai.com/v1"
KEY_VARIABLE = "OPENAI_API_KEY"
# What a local server (vLLM, llama.cpp, Ollama) is sent when OPENAI_API_KEY is unset: they ignore it.
NO_KEY = "no-key"


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


# --- the cache -----------------------------------------------------------------------------------------------------


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
        too_large = unusable_reply(f"larger than {limit:,} bytes")
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
                        raise RequestFailed("timeout")
            except RequestFailed:
                raise
            except Exception as error:  # the HTTP library's own error: the client wraps only those before the body
                raise RequestFailed("timeout" if "timeout" in type(error).__name__.lower()
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
            except RequestFailed as error:
                if not error.retryable:
                    raise
                failure = error
            except openai.APIStatusError as error:
                if error.status_code == 429 or error.status_code >= 500:
                    failure = RequestFailed(f"HTTP {error.status_code}", retry_after=_retry_after(error))
                elif error.status_code in (401, 403):
                    raise UserError(f"the judge at {self.host} refused the key (HTTP {error.status_code}); check "
                                    f"{KEY_VARIABLE}") from None
                elif error.status_code == 404:
                    raise UserError(f"the judge at {self.host} has no model {self.model!r} or no chat "
                                    f"completions endpoint (HTTP 404)") from None
                else:  # e.g. 400 for a prompt too long for the judge: this item only, and asking again won't help
                    raise RequestFailed(f"HTTP {error.status_code}{_server_message(error)}", retryable=False) from None
            except openai.APITimeoutError:
                failure = RequestFailed("timeout")
            except openai.APIConnectionError:
                failure = RequestFailed("connection failed")
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
        except RequestFailed as failure:
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


