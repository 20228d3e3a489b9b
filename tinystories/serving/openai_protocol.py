"""The OpenAI completions protocol: checking a request, and the response, stream-chunk and error objects.

Only the wire format lives here (OpenAI's legacy `POST /v1/completions`, which the official clients and
tools built on them speak); `tinystories.serving.app` moves requests between HTTP and the engine. Status codes:
400 for a body that is not a JSON object (or one Python cannot read: an integer of thousands of digits,
lists nested a thousand deep) or a value out of range, 422 for a field of the wrong type or a missing one,
404 for an unknown model; the server adds 401, 413, 429 and 503.
"""
from __future__ import annotations

import json
import secrets
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, ValidationError

from tinystories.generation.sampling import SamplingConfig
from tinystories.tokenizer import EOT_ID, EOT_TOKEN, get_tokenizer

MAX_LOGPROBS = 5  # OpenAI's limit for completions
MAX_STOP_STRINGS = 4  # OpenAI's limit
DEFAULT_MAX_TOKENS = 16  # OpenAI's default when a request leaves max_tokens out
LOWEST_LOGPROB = -9999.0  # JSON has no -Infinity; vLLM reports impossible tokens the same way
SEED_RANGE = (0, 2**63 - 1)
EXAMPLE = '{"model": "...", "prompt": "Once upon a time", "max_tokens": 50}'


class ApiError(Exception):
    """A request the server refuses, as OpenAI reports it: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: Optional[str] = None,
                 type: str = "invalid_request_error", code: Optional[str] = None,
                 headers: Optional[dict[str, str]] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class Limits:
    """What one request may ask of this server."""
    max_tokens: int  # the largest max_tokens
    max_sequences: int  # the most sequences (prompts × n)
    vocab_size: int  # token-id prompts must be below it


class _StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    include_usage: Optional[bool] = None


class _CompletionBody(BaseModel):
    """The fields' JSON types; null means "the default", as in OpenAI's API. Other fields are ignored."""
    model_config = ConfigDict(strict=True, extra="allow")
    model: str
    prompt: Any = None  # a string, a list of strings, token ids or lists of token ids: checked by hand
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None  # an extension (vLLM and llama.cpp have it too)
    n: Optional[int] = None
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    stream: Optional[bool] = None
    stream_options: Optional[_StreamOptions] = None
    logprobs: Optional[int] = None
    ignore_eos: Optional[bool] = None  # an extension (as vLLM's): keep going after <|endoftext|>
    echo: Optional[bool] = None
    suffix: Optional[str] = None
    best_of: Optional[int] = None
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    logit_bias: Optional[dict[str, Any]] = None


@dataclass
class CompletionRequest:
    """A checked completions request: its prompts as token ids and the generation settings."""
    prompts: list[list[int]]
    max_tokens: int
    n: int
    sampling: SamplingConfig
    stop: list[str] = field(default_factory=list)
    seed: Optional[int] = None
    stream: bool = False
    include_usage: bool = False
    logprobs: Optional[int] = None  # None: no logprobs; 0..5: the chosen token's and this many alternatives
    ignore_eos: bool = False

    @property
    def sequences(self) -> int:
        return len(self.prompts) * self.n


def _invalid(message: str, param: Optional[str] = None) -> ApiError:
    return ApiError(400, message, param)


# Fields whose JSON type is one of several: pydantic would report only the first alternative.
_EXPECTED = {"stop": "a string or a list of strings",
             "stream_options": 'an object such as {"include_usage": true}', "logit_bias": "an object"}


def _type_error(error: ValidationError) -> ApiError:
    first = error.errors()[0]
    param = str(first["loc"][0])
    if first["type"] == "missing":
        return ApiError(422, f"{param} is required; for example {EXAMPLE}", param)
    got = _shown(first.get("input"))
    if param in _EXPECTED:
        return ApiError(422, f"{param} must be {_EXPECTED[param]}, got {got}", param)
    message = first["msg"][0].lower() + first["msg"][1:]
    return ApiError(422, f"{param}: {message}, got {got}", param)


def _shown(value: Any) -> str:
    """The start of a JSON value, to quote in a message; one nested too deeply to write is only named."""
    try:
        return json.dumps(value)[:80]
    except RecursionError:
        return f"a {type(value).__name__} nested too deeply"


def _prompts(prompt: Any, vocab_size: int) -> list[list[int]]:
    """Token ids of each prompt in `prompt`: a string, a list of strings, a list of ids or a list of lists of ids."""
    def is_ids(value: Any) -> bool:
        return isinstance(value, list) and bool(value) and all(type(item) is int for item in value)

    if isinstance(prompt, str) or is_ids(prompt):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt or not all(isinstance(p, str) or is_ids(p) for p in prompt):
        raise ApiError(422, "prompt must be a non-empty string, a list of strings, a list of token ids or a list "
                            f"of lists of token ids; for example {EXAMPLE}", "prompt")
    prompts = []
    for text_or_ids in prompt:
        ids = get_tokenizer().encode_ordinary(text_or_ids) if isinstance(text_or_ids, str) else text_or_ids
        if not ids:
            raise _invalid("prompt is empty: give some text to continue, e.g. \"Once upon a time\"", "prompt")
        if not all(0 <= token < vocab_size for token in ids):
            raise _invalid(f"prompt has token ids outside this model's vocabulary [0, {vocab_size})", "prompt")
        prompts.append(ids)
    return prompts


def _refuse_unsupported(body: _CompletionBody) -> None:
    if body.echo:
        raise _invalid("echo is not supported; leave it out or set it to false", "echo")
    if body.suffix:
        raise _invalid("suffix (insertion) is not supported by a left-to-right story model; leave it out", "suffix")
    if body.best_of is not None and body.best_of != (body.n or 1):
        raise _invalid("best_of is not supported; leave it out (or equal to n)", "best_of")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name):
            raise _invalid(f"{name} is not supported; leave it out or set it to 0", name)
    if body.logit_bias:
        raise _invalid("logit_bias is not supported; leave it out", "logit_bias")


def parse_completion_request(raw: bytes, model_name: str, limits: Limits) -> CompletionRequest:
    """The checked request in `raw` (the HTTP body); an ApiError says what to change."""
    try:
        document = json.loads(raw)
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, or an integer too long for Python to convert
        problem = (f"has an integer of more than {sys.get_int_max_str_digits()} digits, which no field takes"
                   if "digits" in str(error) else f"is not valid JSON ({error})")
        raise _invalid(f"the request body {problem}; send an object such as {EXAMPLE}") from None
    except RecursionError:
        raise _invalid("the request body nests lists or objects too deeply to read (about a thousand levels); "
                       f"send an object such as {EXAMPLE}") from None
    if not isinstance(document, dict):
        raise _invalid(f"the request body must be a JSON object such as {EXAMPLE}")
    try:
        body = _CompletionBody.model_validate(document)
    except ValidationError as error:
        raise _type_error(error) from None
    if body.model != model_name:
        raise ApiError(404, f"the model {body.model!r} does not exist here; this server serves {model_name!r} "
                            "(GET /v1/models lists it)", "model", code="model_not_found")
    _refuse_unsupported(body)
    prompts = _prompts(body.prompt, limits.vocab_size)

    max_tokens = DEFAULT_MAX_TOKENS if body.max_tokens is None else body.max_tokens
    if not 1 <= max_tokens <= limits.max_tokens:
        raise _invalid(f"max_tokens must be between 1 and this server's limit of {limits.max_tokens}, "
                       f"got {max_tokens}", "max_tokens")
    n = 1 if body.n is None else body.n
    if n < 1 or n * len(prompts) > limits.max_sequences:
        raise _invalid(f"n × number of prompts must be between 1 and this server's limit of {limits.max_sequences}"
                       f" sequences per request, got {n} × {len(prompts)}", "n")
    temperature = 1.0 if body.temperature is None else body.temperature
    if not 0.0 <= temperature <= 2.0:
        raise _invalid(f"temperature must be between 0 and 2 (0 always picks the most likely token), "
                       f"got {temperature}", "temperature")
    top_p = 1.0 if body.top_p is None else body.top_p
    if not 0.0 < top_p <= 1.0:
        raise _invalid(f"top_p must be above 0 and at most 1 (1 disables it), got {top_p}", "top_p")
    top_k = 0 if body.top_k is None else body.top_k
    if top_k < 0:
        raise _invalid(f"top_k must be 0 (disabled) or positive, got {top_k}", "top_k")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > MAX_STOP_STRINGS or not all(stop):
        raise _invalid(f"stop must be up to {MAX_STOP_STRINGS} non-empty strings, got {json.dumps(stop)[:80]}", "stop")
    if body.seed is not None and not SEED_RANGE[0] <= body.seed <= SEED_RANGE[1]:
        raise _invalid(f"seed must be between 0 and 2**63 - 1, got {body.seed}", "seed")
    if body.logprobs is not None and not 0 <= body.logprobs <= MAX_LOGPROBS:
        raise _invalid(f"logprobs must be between 0 and {MAX_LOGPROBS}, got {body.logprobs}", "logprobs")
    stream = bool(body.stream)
    if body.stream_options is not None and not stream:
        raise _invalid("stream_options is only allowed with stream: true", "stream_options")
    return CompletionRequest(
        prompts=prompts, max_tokens=max_tokens, n=n,
        sampling=SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p), stop=stop, seed=body.seed,
        stream=stream, include_usage=bool(body.stream_options and body.stream_options.include_usage),
        logprobs=body.logprobs, ignore_eos=bool(body.ignore_eos))


def token_text(token_id: int) -> str:
    """How a token is shown in logprobs: its text, with bytes of an unfinished character as U+FFFD."""
    if token_id == EOT_ID:
        return EOT_TOKEN
    return get_tokenizer().decode_single_token_bytes(token_id).decode("utf-8", errors="replace")


def _logprob(value: float) -> float:
    return max(float(value), LOWEST_LOGPROB)


class Logprobs:
    """OpenAI's completions logprobs object, built one token at a time."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.token_logprobs: list[float] = []
        self.top_logprobs: list[dict[str, float]] = []
        self.text_offset: list[int] = []

    def add(self, token_id: int, logprob: float, alternatives: list[tuple[int, float]], offset: int) -> None:
        """Record a token, its logprob, its most likely alternatives (id, logprob) and where its text starts.

        As in OpenAI's API, the alternatives also list the chosen token, so there are up to N + 1 of them.
        """
        self.tokens.append(token_text(token_id))
        self.token_logprobs.append(_logprob(logprob))
        top = {token_text(other): _logprob(value) for other, value in alternatives}
        top.setdefault(token_text(token_id), _logprob(logprob))
        self.top_logprobs.append(top)
        self.text_offset.append(offset)

    def as_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "token_logprobs": self.token_logprobs, "top_logprobs": self.top_logprobs,
                "text_offset": self.text_offset}


@dataclass
class ResponseHeader:
    """What every object of one response shares: its id, creation time and model."""
    model: str
    id: str = field(default_factory=lambda: f"cmpl-{secrets.token_hex(12)}")
    created: int = field(default_factory=lambda: int(time.time()))

    def wrap(self, choices: list[dict[str, Any]], usage: Optional[dict[str, int]] = None) -> dict[str, Any]:
        """A completion (or, with one choice per call, a stream chunk) object."""
        document = {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                    "choices": choices}
        if usage is not None:
            document["usage"] = usage
        return document


def choice(index: int, text: str, finish_reason: Optional[str], logprobs: Optional[Logprobs]) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": None if logprobs is None else logprobs.as_dict(),
            "finish_reason": finish_reason}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def server_sent_event(document: dict[str, Any]) -> str:
    return f"data: {json.dumps(document, ensure_ascii=False)}\n\n"


STREAM_END = "data: [DONE]\n\n"
