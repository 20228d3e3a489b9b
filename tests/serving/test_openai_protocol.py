"""tinystories.serving.openai_protocol: what a completions request may hold, and the objects sent back."""
import json

import pytest

from tinystories.serving.openai_protocol import (
    DEFAULT_MAX_TOKENS,
    LOWEST_LOGPROB,
    ApiError,
    Limits,
    Logprobs,
    ResponseHeader,
    _shown,
    choice,
    parse_completion_request,
    server_sent_event,
    token_text,
    usage,
)
from tinystories.tokenizer import EOT_ID, get_tokenizer

LIMITS = Limits(max_tokens=100, max_sequences=6, vocab_size=50257)


def parse(**fields):
    return parse_completion_request(json.dumps({"model": "m", **fields}).encode(), "m", LIMITS)


def refused(raw: bytes) -> ApiError:
    with pytest.raises(ApiError) as error:
        parse_completion_request(raw, "m", LIMITS)
    return error.value


def test_defaults_are_openais():
    request = parse(prompt="Once upon a time")
    assert request.prompts == [get_tokenizer().encode_ordinary("Once upon a time")]
    assert (request.max_tokens, request.n, request.stream, request.logprobs) == (DEFAULT_MAX_TOKENS, 1, False, None)
    assert (request.sampling.temperature, request.sampling.top_k, request.sampling.top_p) == (1.0, 0, 1.0)
    assert request.stop == [] and request.seed is None and not request.ignore_eos


def test_null_means_the_default():
    assert parse(prompt="Hi", temperature=None, max_tokens=None, stop=None, n=None) == parse(prompt="Hi")


def test_prompts_as_text_or_token_ids():
    assert parse(prompt=["a", "b"]).prompts == [[64], [65]]
    assert parse(prompt=[64, 65]).prompts == [[64, 65]]
    assert parse(prompt=[[64], [65, 66]], n=3).sequences == 6


def test_settings_are_taken_as_given():
    request = parse(prompt="Hi", max_tokens=100, temperature=0, top_p=0.5, top_k=7, n=2, stop="!", seed=3,
                    stream=True, stream_options={"include_usage": True}, logprobs=5, ignore_eos=True, best_of=2,
                    user="someone", presence_penalty=0)
    assert (request.max_tokens, request.n, request.stop, request.seed, request.logprobs) == (100, 2, ["!"], 3, 5)
    assert (request.sampling.temperature, request.sampling.top_p, request.sampling.top_k) == (0.0, 0.5, 7)
    assert request.stream and request.include_usage and request.ignore_eos


@pytest.mark.parametrize("raw, status, param, words", [
    (b"{", 400, None, "not valid JSON"),
    (b"\xff", 400, None, "not valid JSON"),
    (b"[]", 400, None, "must be a JSON object"),
    (b'{"prompt": "Hi"}', 422, "model", "model is required"),
    (b'{"model": 1, "prompt": "Hi"}', 422, "model", "valid string"),
    (b'{"model": "other", "prompt": "Hi"}', 404, "model", "does not exist here"),
    (b'{"model": "m"}', 422, "prompt", "prompt must be"),
    (b'{"model": "m", "prompt": [["a"]]}', 422, "prompt", "prompt must be"),
    (b'{"model": "m", "prompt": ["Hi", ""]}', 400, "prompt", "prompt is empty"),
    (b'{"model": "m", "prompt": [-1]}', 400, "prompt", "outside this model's vocabulary"),
    (b'{"model": "m", "prompt": "Hi", "n": true}', 422, "n", "valid integer"),
    (b'{"model": "m", "prompt": "Hi", "n": 0}', 400, "n", "between 1 and this server's limit of 6"),
    (b'{"model": "m", "prompt": ["a", "b"], "n": 4}', 400, "n", "got 4 × 2"),
    (b'{"model": "m", "prompt": "Hi", "max_tokens": 101}', 400, "max_tokens", "limit of 100"),
    (b'{"model": "m", "prompt": "Hi", "temperature": NaN}', 400, "temperature", "between 0 and 2"),
    (b'{"model": "m", "prompt": "Hi", "top_p": 0}', 400, "top_p", "above 0 and at most 1"),
    (b'{"model": "m", "prompt": "Hi", "top_k": -1}', 400, "top_k", "0 (disabled) or positive"),
    (b'{"model": "m", "prompt": "Hi", "stop": ["a", ""]}', 400, "stop", "non-empty strings"),
    (b'{"model": "m", "prompt": "Hi", "stop": [1]}', 422, "stop", "a string or a list of strings, got [1]"),
    (b'{"model": "m", "prompt": "Hi", "seed": -5}', 400, "seed", "between 0 and 2**63 - 1"),
    (b'{"model": "m", "prompt": "Hi", "logprobs": 6}', 400, "logprobs", "between 0 and 5"),
    (b'{"model": "m", "prompt": "Hi", "stream_options": {"include_usage": true}}', 400, "stream_options",
     "only allowed with stream"),
    (b'{"model": "m", "prompt": "Hi", "suffix": "end"}', 400, "suffix", "not supported"),
    (b'{"model": "m", "prompt": "Hi", "best_of": 3}', 400, "best_of", "not supported"),
    (b'{"model": "m", "prompt": "Hi", "frequency_penalty": 0.5}', 400, "frequency_penalty", "not supported"),
    (b'{"model": "m", "prompt": "Hi", "logit_bias": {"50256": -100}}', 400, "logit_bias", "not supported"),
])
def test_bad_requests_say_what_to_change(raw, status, param, words):
    error = refused(raw)
    assert (error.status, error.param) == (status, param)
    assert words in error.message
    assert error.body() == {"error": {"message": error.message, "type": error.type, "param": param,
                                      "code": error.code}}


def test_token_text_shows_end_of_text_and_unfinished_characters():
    tokenizer = get_tokenizer()
    assert token_text(EOT_ID) == "<|endoftext|>"
    assert token_text(tokenizer.encode_ordinary(" upon")[0]) == " upon"
    [first, *_] = tokenizer.encode_ordinary("🙂")  # four UTF-8 bytes over more than one token
    assert token_text(first) == tokenizer.decode_single_token_bytes(first).decode("utf-8", errors="replace")
    assert "\ufffd" in token_text(first)


def test_logprobs_list_the_chosen_token_among_the_alternatives():
    logprobs = Logprobs()
    logprobs.add(64, -0.5, [(65, -0.25), (66, -2.0)], offset=0)  # sampled: not the most likely
    logprobs.add(65, float("-inf"), [], offset=1)
    assert logprobs.as_dict() == {"tokens": ["a", "b"], "token_logprobs": [-0.5, LOWEST_LOGPROB],
                                  "top_logprobs": [{"b": -0.25, "c": -2.0, "a": -0.5}, {"b": LOWEST_LOGPROB}],
                                  "text_offset": [0, 1]}


def test_completion_and_chunk_objects():
    header = ResponseHeader("m")
    document = header.wrap([choice(0, "text", "length", None)], usage(3, 4))
    assert document["id"].startswith("cmpl-") and document["object"] == "text_completion" and document["model"] == "m"
    assert document["choices"] == [{"index": 0, "text": "text", "logprobs": None, "finish_reason": "length"}]
    assert document["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    event = server_sent_event(header.wrap([choice(1, "é", None, None)]))
    assert event.startswith("data: {") and event.endswith("}\n\n") and json.loads(event[6:])["id"] == header.id


@pytest.mark.parametrize("raw, words", [
    (b'{"model": "m", "prompt": "Hi", "max_tokens": ' + b"9" * 4301 + b"}", "an integer of more than 4300 digits"),
    (b'{"model": "m", "prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nests lists or objects too deeply"),
    (b'{"model": "m", "prompt": "Hi", "x": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}", "too deeply"),
])
def test_bodies_python_cannot_read_are_400s_not_crashes(raw, words):
    """json.loads raised ValueError (Python's limit on integer digits) or RecursionError: a 500 and a traceback."""
    error = refused(raw)
    assert error.status == 400 and words in error.message and "set_int_max_str_digits" not in error.message


def test_a_value_nested_too_deeply_to_quote_is_named_instead():
    nested: list = []
    for _ in range(100_000):
        nested = [nested]
    assert _shown(nested) == "a list nested too deeply"
    assert _shown([1, "a"]) == '[1, "a"]' and len(_shown("x" * 500)) == 80
