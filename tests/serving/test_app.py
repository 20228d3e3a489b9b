"""serve.py end to end: the official openai client, concurrent streams, bad requests, admission, shutdown, and
the playground page in a real headless Chromium.

One server (a random tiny model, an API key from the environment) serves the whole module; the references
are independent of it: Hugging Face transformers' logits, generate.py, and the single-sequence sampler.
"""
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import types
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import openai
import pytest
import torch
import uvicorn

from model.model import Model, preset
from tests.generation.reference import engine_decode
from tinystories.checkpoint import model_checkpoint, save_checkpoint
from tinystories.generation.decoders import decoding_model
from tinystories.generation.engine import Engine
from tinystories.generation.requests import sequence_seed
from tinystories.generation.sampling import SamplingConfig
from tinystories.generation.weight_formats import rounded_copy
from tinystories.interop.hf import to_hf
from tinystories.serving import openai_protocol
from tinystories.serving.app import create_app, listening_socket
from tinystories.serving.server_process import ROOT, ServerProcess
from tinystories.serving.service import ServerConfig
from tinystories.tokenizer import EOT_ID, get_tokenizer

MAX_BATCH, MAX_QUEUE, MAX_N, MAX_TOKENS_LIMIT = 8, 8, 8, 600
API_KEY = secrets.token_hex(16)
PROMPT = "Once upon a time, there was a little girl named Lily."
# Child processes decode on one thread too (see one_torch_thread): faster for a tiny model on a busy machine.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model() -> Model:
    torch.manual_seed(0)
    tiny = Model(preset("tiny", dropout=0.0)).eval()
    with torch.no_grad():  # sharper than the initial near-uniform logits, so greedy choices are clear
        for parameter in tiny.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return tiny


@pytest.fixture(scope="module")
def decoder(model) -> Model:
    return decoding_model(model)


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("serve") / "model.pth"
    save_checkpoint(path, model_checkpoint(model, step=0))
    return path


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    with ServerProcess(str(checkpoint), "--max_batch", str(MAX_BATCH), "--max_queue", str(MAX_QUEUE),
                       "--max_n", str(MAX_N), "--max_tokens_limit", str(MAX_TOKENS_LIMIT),
                       "--served_model_name", "tiny-stories", log_dir=tmp_path_factory.mktemp("serve_log"),
                       env={**ONE_THREAD, "TINYSTORIES_API_KEY": API_KEY}) as running:
        yield running
        log = running.log()
    assert API_KEY not in log, "the API key must never be logged"
    assert "Traceback" not in log, log[-3000:]


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


def reference_tokens(decoder: Model, prompt: str, max_tokens: int, sampling: SamplingConfig, seed=None,
                     stop_at_eos: bool = True) -> list[int]:
    """The single-sequence sampler, which batching must not change.

    Sampled comparisons use top_k 50: a batched forward may round logits differently in the last bit, which
    over this random model's near-uniform 50,257-way distribution can move a draw across a boundary now
    and then; among 50 candidates it practically never does.
    """
    ids = get_tokenizer().encode_ordinary(prompt)
    return engine_decode(decoder, ids, max_tokens, sampling, seed, stop_at_eos)


def text_of(ids: list[int]) -> str:
    return get_tokenizer().decode([token for token in ids if token != EOT_ID])


def request(server, method: str, path: str, body=None, headers=None, key=API_KEY):
    """(status, headers, parsed JSON body) of one plain HTTP request."""
    address = urlsplit(server.base_url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
    raw = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    all_headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {}),
                   **(headers or {})}
    connection.request(method, path, body=raw, headers=all_headers)
    response = connection.getresponse()
    payload = response.read()
    connection.close()
    return response.status, dict(response.getheaders()), json.loads(payload) if payload else None


def open_stream(server, body, read_first_event: bool = True):
    """(connection, response) of a streaming completion; its first event read, so it is running."""
    address = urlsplit(server.base_url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
    connection.request("POST", "/v1/completions", body=json.dumps({**body, "stream": True}).encode(),
                       headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    if not read_first_event:
        return connection, None
    response = connection.getresponse()
    assert response.status == 200
    assert response.readline().startswith(b"data: {")
    return connection, response


def wait_for(condition, timeout: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def wait_until_idle(server, timeout: float = 30) -> dict:
    """/health once no sequence is running, waiting or in flight."""
    def idle():
        health = server.health()
        return health if health["in_flight"] == health["active"] == health["waiting"] == 0 else None
    return wait_for(idle, timeout, "the server to become idle")


# ---- the official openai client -------------------------------------------------------------------------------

def test_models_and_health(client, server):
    assert [card.id for card in client.models.list().data] == ["tiny-stories"]
    health = server.health()
    assert health["status"] == "ok" and health["max_batch"] == MAX_BATCH and health["max_queue"] == MAX_QUEUE


def test_completion_with_the_openai_client(client, decoder):
    completion = client.completions.create(model="tiny-stories", prompt=PROMPT, max_tokens=12, temperature=0.9,
                                           top_p=0.9, seed=11, extra_body={"top_k": 40})
    [choice] = completion.choices
    expected = reference_tokens(decoder, PROMPT, 12, SamplingConfig(0.9, 40, 0.9), seed=sequence_seed(11, 0))
    assert choice.text == text_of(expected) and choice.index == 0
    assert choice.finish_reason == ("stop" if expected[-1] == EOT_ID else "length")
    assert completion.id.startswith("cmpl-") and completion.model == "tiny-stories"
    assert completion.object == "text_completion"
    prompt_tokens = len(get_tokenizer().encode_ordinary(PROMPT))
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (prompt_tokens, len(expected))
    assert completion.usage.total_tokens == prompt_tokens + len(expected)


def test_streamed_completion_equals_the_whole_one(client):
    settings = dict(model="tiny-stories", prompt=PROMPT, max_tokens=30, seed=5, temperature=1.0)
    whole = client.completions.create(**settings).choices[0]
    chunks = list(client.completions.create(**settings, stream=True, stream_options={"include_usage": True}))
    pieces = [chunk.choices[0].text for chunk in chunks if chunk.choices]
    assert len([piece for piece in pieces if piece]) > 1, "the text should arrive in several pieces"
    assert "".join(pieces) == whole.text
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == whole.finish_reason
    assert chunks[-1].usage.completion_tokens > 0 and chunks[-1].choices == []


def test_n_samples_are_seeded_one_by_one(client, decoder):
    completion = client.completions.create(model="tiny-stories", prompt=PROMPT, max_tokens=15, n=3, seed=42,
                                           temperature=1.0, extra_body={"top_k": 50})
    assert [choice.index for choice in completion.choices] == [0, 1, 2]
    for choice in completion.choices:
        expected = reference_tokens(decoder, PROMPT, 15, SamplingConfig(1.0, 50, 1.0),
                                    seed=sequence_seed(42, choice.index))
        assert choice.text == text_of(expected)
    assert len({choice.text for choice in completion.choices}) == 3


def test_a_list_of_prompts_gives_n_choices_each(client):
    completion = client.completions.create(model="tiny-stories", prompt=["Tom had a dog.", "The sun was hot."],
                                           max_tokens=8, n=2, temperature=0)
    texts = [choice.text for choice in completion.choices]
    assert len(texts) == 4 and texts[0] == texts[1] != texts[2] == texts[3]  # greedy: samples of a prompt agree


def test_stop_string_cuts_the_text(client):
    greedy = client.completions.create(model="tiny-stories", prompt=PROMPT, max_tokens=40, temperature=0,
                                       extra_body={"ignore_eos": True}).choices[0].text
    stop = greedy[len(greedy) // 2:len(greedy) // 2 + 3]
    stopped = client.completions.create(model="tiny-stories", prompt=PROMPT, max_tokens=40, temperature=0,
                                        stop=[stop, "never appears"], extra_body={"ignore_eos": True}).choices[0]
    assert stopped.text == greedy[:greedy.index(stop)] and stopped.finish_reason == "stop"


def test_logprobs_are_the_models_log_softmax(client, model, decoder):
    completion = client.completions.create(model="tiny-stories", prompt=PROMPT, max_tokens=10, temperature=0,
                                           logprobs=3)
    logprobs = completion.choices[0].logprobs
    tokenizer = get_tokenizer()
    ids = reference_tokens(decoder, PROMPT, 10, SamplingConfig(0.0, 0, 1.0))
    assert logprobs.tokens == [tokenizer.decode([token]) for token in ids]
    assert "".join(logprobs.tokens).replace("<|endoftext|>", "") == completion.choices[0].text
    prompt_ids = tokenizer.encode_ordinary(PROMPT)
    with torch.no_grad():  # Hugging Face's GPT-2 with our weights: an independent forward
        logits = to_hf(model).eval()(torch.tensor([prompt_ids + ids])).logits[0]
    reference = torch.log_softmax(logits[len(prompt_ids) - 1:-1].double(), dim=-1)
    for position, token in enumerate(ids):
        assert logprobs.token_logprobs[position] == pytest.approx(reference[position, token].item(), abs=1e-4)
        best = torch.topk(reference[position], 3)
        assert best.indices[0] == token  # greedy
        top = logprobs.top_logprobs[position]
        assert len(top) == 3  # the chosen token is one of the three alternatives
        for value, other in zip(best.values.tolist(), best.indices.tolist()):
            assert top[tokenizer.decode([other])] == pytest.approx(value, abs=1e-4)
        assert logprobs.text_offset[position] == len("".join(logprobs.tokens[:position]))


def test_greedy_text_equals_generate_py(client, checkpoint):
    result = subprocess.run([sys.executable, "generate.py", "--model", str(checkpoint), "--prompt", PROMPT,
                             "--temperature", "0", "--max_tokens", "40"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env={**os.environ, **ONE_THREAD})
    assert result.returncode == 0, result.stderr
    served = client.completions.create(model="tiny-stories", prompt=PROMPT, max_tokens=40, temperature=0)
    assert result.stdout == PROMPT + served.choices[0].text + "\n"


def test_float16_precision_serves_the_float16_decoders_tokens(model, checkpoint, tmp_path):
    with ServerProcess(str(checkpoint), "--precision", "float16", log_dir=tmp_path, env=ONE_THREAD) as server:
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)
        served = client.completions.create(model=str(checkpoint), prompt=PROMPT, max_tokens=30, temperature=0,
                                           logprobs=0, extra_body={"ignore_eos": True})
    expected = reference_tokens(decoding_model(model, "float16"), PROMPT, 30, SamplingConfig(temperature=0.0),
                                stop_at_eos=False)
    assert served.choices[0].text == text_of(expected)
    ids = torch.tensor([get_tokenizer().encode_ordinary(PROMPT) + expected])
    with torch.no_grad():  # each chosen token's log-probability under the float16 and the float32 weights
        chosen = {name: torch.log_softmax(weights(ids)[0][0, -31:-1], dim=-1).gather(1, ids[0, -30:, None])[:, 0]
                  for name, weights in (("float16", rounded_copy(model, "float16")), ("float32", model))}
    logprobs = torch.tensor(served.choices[0].logprobs.token_logprobs)
    assert (logprobs - chosen["float16"]).abs().max() <= 1e-5 < 1e-4 <= (logprobs - chosen["float32"]).abs().max()


def test_sixteen_concurrent_streams_are_correct_and_batched(server, decoder):
    prompts = [f"{name} went to the {place}." for name in ("Tom", "Lily", "Sam", "Mia")
               for place in ("park", "sea", "shop", "forest")]
    start = threading.Barrier(len(prompts))
    texts: dict[int, str] = {}
    errors: list[BaseException] = []

    def stream(number: int) -> None:
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=API_KEY, max_retries=0, timeout=300)
        if number % 2 == 0:
            settings = {"temperature": 0, "extra_body": {"ignore_eos": True}}
        else:
            settings = {"temperature": 1.0, "seed": number, "extra_body": {"ignore_eos": True, "top_k": 50}}
        try:
            start.wait()
            chunks = client.completions.create(model="tiny-stories", prompt=prompts[number], max_tokens=60,
                                               stream=True, **settings)
            texts[number] = "".join(chunk.choices[0].text for chunk in chunks)
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    steps_before = server.health()["steps"]
    threads = [threading.Thread(target=stream, args=(number,)) for number in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for number, prompt in enumerate(prompts):
        sampling = SamplingConfig(0.0, 0, 1.0) if number % 2 == 0 else SamplingConfig(1.0, 50, 1.0)
        seed = None if number % 2 == 0 else sequence_seed(number, 0)
        expected = reference_tokens(decoder, prompt, 60, sampling, seed, stop_at_eos=False)
        assert texts[number] == get_tokenizer().decode(expected), f"client {number}"
    health = wait_until_idle(server)
    steps = health["steps"] - steps_before
    assert health["max_active_seen"] == MAX_BATCH  # every slot was busy at once
    assert steps <= 16 * 60 / 4, f"{steps} forward steps for 960 tokens: the streams were not batched"


# ---- bad requests, admission, disconnects -----------------------------------------------------------------------

BAD_REQUESTS = [
    # (method, path, body, headers, key, status, words in the message)
    ("POST", "/v1/completions", b'{"model": "tiny-stories", "prompt": ', {}, API_KEY, 400, "not valid JSON"),
    ("POST", "/v1/completions", b'["a list"]', {}, API_KEY, 400, "must be a JSON object"),
    ("POST", "/v1/completions", {"prompt": "Hi"}, {}, API_KEY, 422, "model is required"),
    ("POST", "/v1/completions", {"model": "tiny-stories", "prompt": "Hi", "temperature": "hot"}, {}, API_KEY, 422,
     "temperature: input should be a valid number"),
    ("POST", "/v1/completions", {"model": "tiny-stories", "prompt": "Hi", "max_tokens": 2.5}, {}, API_KEY, 422,
     "max_tokens: input should be a valid integer"),
    ("POST", "/v1/completions", {"model": "tiny-stories", "prompt": 7}, {}, API_KEY, 422, "prompt must be"),
    ("POST", "/v1/completions", {"model": "tiny-stories", "prompt": "Hi", "temperature": 2.5}, {}, API_KEY, 400,
     "temperature must be between 0 and 2"),
    ("POST", "/v1/completions", {"model": "tiny-stories", "prompt": "Hi", "temperature": -1}, {}, API_KEY, 400,
     "temperature must be between 0 and 2"),
    ("POST", "/v1/completions", {"model": "tiny-stories", "prompt": "Hi", "top_p": 0}, {}, API_KEY, 400,
     "top_p must be above 0 and at most 1"),
    ("POST", "/v1/completions", {"model": "tiny-stories", "prompt": "Hi", "top_p": 1.5}, {}, API_KEY, 400,
     "top_p must be above 0 and at most 1"),
    ("POST", "/v1/completions", {"model": "tiny-stories", "prompt": "Hi", "max_tokens": 0}, {}, API_KEY, 400,
     "max_tokens must be between 1 and this server's limit of 600"),
    ("POST", "/v1/completions", {"model": "tiny-stories", "prompt": "Hi", "max_tokens": 601}, {}, API_KEY, 400,
     "max_tokens must be between 1 and this server's limit of 600"),
    ("POST", "/v1/completions", {"model": "tiny-stories", "prompt": "Hi", "n": 9}, {}, API_KEY, 400,
     "limit of 8 sequences per request"),
    ("POST", "/v1/completions", {"model": "tiny-stories", "prompt": ""}, {}, API_KEY, 400, "prompt is empty"),
    ("POST", "/v1/completions", {"model": "tiny-stories", "prompt": [70000]}, {}, API_KEY, 400,
     "outside this model's vocabulary"),
    ("POST", "/v1/completions", {"model": "tiny-stories", "prompt": "Hi", "logprobs": 6}, {}, API_KEY, 400,
     "logprobs must be between 0 and 5"),
    ("POST", "/v1/completions", {"model": "tiny-stories", "prompt": "Hi", "stop": ["a", "b", "c", "d", "e"]}, {},
     API_KEY, 400, "stop must be up to 4 non-empty strings"),
    ("POST", "/v1/completions", {"model": "tiny-stories", "prompt": "Hi", "echo": True}, {}, API_KEY, 400,
     "echo is not supported"),
    ("POST", "/v1/completions", {"model": "gpt-4", "prompt": "Hi"}, {}, API_KEY, 404,
     "the model 'gpt-4' does not exist here; this server serves 'tiny-stories'"),
    ("POST", "/v1/completions", {"model": "tiny-stories", "prompt": "Hi"}, {}, None, 401, "needs an API key"),
    ("POST", "/v1/completions", {"model": "tiny-stories", "prompt": "Hi"}, {}, "wrong-key-123", 401,
     "API key is not this server's"),
    ("GET", "/v1/models", None, {}, "wrong-key-123", 401, "API key is not this server's"),
    ("POST", "/v1/chat/completions", {"model": "tiny-stories", "messages": []}, {}, API_KEY, 400,
     "use POST /v1/completions"),
    ("GET", "/v1/completions", None, {}, API_KEY, 405, "GET is not allowed on /v1/completions"),
    ("GET", "/v2/anything", None, {}, API_KEY, 404, "no such route: GET /v2/anything"),
    # Bodies that used to be answered 500 with a traceback in the log, or read and tokenized whole (issue 25).
    ("POST", "/v1/completions", b'{"model": "tiny-stories", "prompt": "Hi", "seed": ' + b"7" * 5000 + b"}", {},
     API_KEY, 400, "an integer of more than 4300 digits"),
    ("POST", "/v1/completions", b'{"model": "tiny-stories", "prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", {},
     API_KEY, 400, "nests lists or objects too deeply"),
    ("POST", "/v1/completions", b'{"model": "tiny-stories", "prompt": "' + b"a" * 2**20 + b'"}', {}, API_KEY, 413,
     "larger than this server's limit of 1,048,576 bytes"),
]


@pytest.mark.parametrize("method, path, body, headers, key, status, words", BAD_REQUESTS,
                         ids=[f"{row[5]}-{row[6][:30]}" for row in BAD_REQUESTS])
def test_bad_requests_get_openai_errors(server, method, path, body, headers, key, status, words):
    answered, _, document = request(server, method, path, body, headers, key=key)
    assert answered == status
    assert set(document) == {"error"} and {"message", "type", "param", "code"} <= set(document["error"])
    assert words in document["error"]["message"]
    assert "wrong-key-123" not in json.dumps(document)


def test_the_server_answers_normally_after_bad_requests(client, server):
    for method, path, body, headers, key, _, _ in BAD_REQUESTS:
        request(server, method, path, body, headers, key=key)
    with pytest.raises(openai.BadRequestError, match="temperature must be between 0 and 2"):
        client.completions.create(model="tiny-stories", prompt="Hi", temperature=3)
    assert client.completions.create(model="tiny-stories", prompt="Hi", max_tokens=5).choices[0].text
    assert wait_until_idle(server)["status"] == "ok"


def test_a_disconnect_mid_stream_frees_the_slot(server):
    steps_before = server.health()["steps"]
    connection, _ = open_stream(server, {"model": "tiny-stories", "prompt": PROMPT, "max_tokens": 600,
                                         "ignore_eos": True})
    assert server.health()["in_flight"] == 1
    connection.close()
    wait_until_idle(server, timeout=30)
    assert server.health()["steps"] - steps_before < 600, "the sequence ran to its end after the client left"


def test_a_full_queue_answers_429_with_retry_after(server):
    long = {"model": "tiny-stories", "prompt": PROMPT, "max_tokens": 600, "ignore_eos": True, "n": MAX_N}
    streams = [open_stream(server, long, read_first_event=False) for _ in range((MAX_BATCH + MAX_QUEUE) // MAX_N)]
    wait_for(lambda: server.health()["in_flight"] == MAX_BATCH + MAX_QUEUE, what="the queue to fill")
    status, headers, document = request(server, "POST", "/v1/completions",
                                        {"model": "tiny-stories", "prompt": "Hi", "max_tokens": 5})
    assert status == 429 and int(headers["retry-after"]) >= 1
    assert document["error"]["type"] == "rate_limit_error" and "busy" in document["error"]["message"]
    for connection, _ in streams:
        connection.close()
    wait_until_idle(server)
    body = {"model": "tiny-stories", "prompt": "Hi", "max_tokens": 5}
    assert request(server, "POST", "/v1/completions", body)[0] == 200


def test_tiny_temperatures_and_top_p_complete_beside_concurrent_streams(client, server):
    """A temperature below about 1e-38 or a top_p below float32's smallest value used to be answered 503, and
    end every stream decoding in the same step with that error."""
    long = {"model": "tiny-stories", "prompt": PROMPT, "max_tokens": MAX_TOKENS_LIMIT, "ignore_eos": True,
            "temperature": 0.9, "top_k": 50}
    streams = [open_stream(server, {**long, "seed": number}) for number in range(3)]
    settings = dict(model="tiny-stories", prompt="Tom had a dog.", max_tokens=20)
    greedy = client.completions.create(**settings, temperature=0, extra_body={"ignore_eos": True}).choices[0].text
    for tiny in ({"temperature": 1e-45}, {"temperature": 1e-40, "extra_body": {"top_k": 0}},
                 {"temperature": 1.0, "top_p": 1e-46}, {"temperature": 1e-46, "top_p": 1e-46, "n": 2}):
        extra_body = {"ignore_eos": True, **tiny.pop("extra_body", {})}
        completion = client.completions.create(**settings, **tiny, extra_body=extra_body)  # 200, or it raises
        assert [choice.text for choice in completion.choices] == [greedy] * tiny.get("n", 1), tiny
    assert server.health()["in_flight"] >= 3, "the streams should still be decoding beside those requests"
    for connection, response in streams:
        events = [line[len("data: "):] for line in response.read().decode().splitlines() if line.startswith("data: ")]
        connection.close()
        assert events[-1] == "[DONE]" and not any('"error"' in event for event in events)
        assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"
    wait_until_idle(server)


def test_a_body_that_grows_past_the_limit_is_answered_413(server):
    """Without a Content-Length (chunked), the body is refused once what arrived passes the limit."""
    address = urlsplit(server.base_url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
    chunks = (b'{"model": "tiny-stories", "prompt": "' if number == 0 else b"a" * 2**16 for number in range(40))
    connection.request("POST", "/v1/completions", body=chunks, encode_chunked=True,
                       headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    response = connection.getresponse()
    document = json.loads(response.read())
    connection.close()
    assert response.status == 413 and "limit of 1,048,576 bytes" in document["error"]["message"]
    assert document["error"]["code"] == "request_too_large"
    body = {"model": "tiny-stories", "prompt": "Hi", "max_tokens": 5}
    assert request(server, "POST", "/v1/completions", body)[0] == 200


def test_a_client_that_leaves_mid_body_is_one_line_in_the_log(server):
    """Used to log a traceback (starlette's ClientDisconnect)."""
    address = urlsplit(server.base_url)
    with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
        sock.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: {address.netloc}\r\nAuthorization: Bearer {API_KEY}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n".encode()
                     + b'{"model": "tiny-stories", "prompt": "' + b"a" * 2000)
    line = "left before sending the whole request body"
    wait_for(lambda: line in server.log(), what="the server to log the client that left")
    log = server.log()
    assert log.count(line) == 1 and "Traceback" not in log and "Exception in ASGI application" not in log
    assert [text for text in log.splitlines() if line in text][0].startswith("INFO:")
    assert wait_until_idle(server)["status"] == "ok"


def test_health_answers_while_a_long_prompt_is_tokenized(model, decoder, monkeypatch):
    """Parsing and tokenizing used to run on the event loop: one 20 MB body kept every client waiting, /health
    included, for 2.3 s. Here the tokenizer holds the long prompt until /health has answered, so a server that
    tokenized on its event loop could not answer at all. The server runs in this process, on a real port."""
    tokenizer = get_tokenizer()
    tokenizing, release = threading.Event(), threading.Event()

    class HeldTokenizer:
        def encode_ordinary(self, text: str) -> list[int]:
            if len(text) > 100_000:
                tokenizing.set()
                release.wait(60)
            return tokenizer.encode_ordinary(text)

    monkeypatch.setattr(openai_protocol, "get_tokenizer", HeldTokenizer)
    monkeypatch.delenv("TINYSTORIES_API_KEY", raising=False)
    app = create_app(Engine(decoder, max_batch=2), "tiny-stories", ServerConfig(port=0),
                     vocab_size=model.config.vocab_size, context_length=model.config.block_size)
    sock = listening_socket("127.0.0.1", 0)
    local = types.SimpleNamespace(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}")
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level="warning"))
    serving = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    serving.start()
    answers = []
    long_prompt = PROMPT * 16_000  # 850 KB: legal (under the 1 MiB limit); the model reads its last tokens
    poster = threading.Thread(target=lambda: answers.append(request(
        local, "POST", "/v1/completions", {"model": "tiny-stories", "prompt": long_prompt, "max_tokens": 5,
                                           "temperature": 0}, key=None)))
    try:
        wait_for(lambda: server.started, what="the in-process server to start")
        poster.start()
        assert tokenizing.wait(60)
        started = time.monotonic()
        with urllib.request.urlopen(f"{local.base_url}/health", timeout=10) as response:
            assert response.status == 200 and json.load(response)["status"] == "ok"
        assert time.monotonic() - started < 5 and poster.is_alive()  # the long prompt is still being tokenized
    finally:
        release.set()
        if poster.ident is not None:
            poster.join(timeout=120)
        server.should_exit = True
        serving.join(timeout=60)
    [(status, _, document)] = answers
    assert status == 200 and document["usage"]["prompt_tokens"] == len(tokenizer.encode_ordinary(long_prompt))
    assert document["choices"][0]["text"]


# ---- the page in a real browser ----------------------------------------------------------------------------------

def chromium_driver(width: int = 1100, height: int = 1000):
    """Headless Debian Chromium through chromedriver (installed by .ci/run)."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as ChromeService

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={width},{height}"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=ChromeService(shutil.which("chromedriver")))


def use_playground(driver, base_url: str, prompt: str, max_tokens: int, seed: int, api_key=None,
                   timeout: float = 120) -> dict:
    """Load the page, type a prompt, press Generate, wait until done; what the page showed along the way."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{base_url}/")
    wait = WebDriverWait(driver, timeout)
    if api_key is not None:
        wait.until(lambda d: d.find_element(By.ID, "key-row").is_displayed())
        driver.find_element(By.ID, "api-key").send_keys(api_key)
    for field, value in (("prompt", prompt), ("max-tokens", str(max_tokens)), ("seed", str(seed))):
        element = driver.find_element(By.ID, field)
        element.clear()
        element.send_keys(value)
    # Record the story's length at every change, to see that it grows piece by piece.
    driver.execute_script("""
        window.storyLengths = [];
        const output = document.getElementById('story-output');
        new MutationObserver(() => window.storyLengths.push(output.textContent.length))
            .observe(output, {childList: true, characterData: true, subtree: true});""")
    driver.find_element(By.ID, "generate").click()
    wait.until(lambda d: not d.find_element(By.ID, "generate").get_attribute("disabled")
               and d.execute_script("return window.storyLengths.length") > 0)
    tokens = driver.find_elements(By.CSS_SELECTOR, "#tokens .tok")
    ActionChains(driver).move_to_element(tokens[min(5, len(tokens) - 1)]).perform()
    wait.until(lambda d: d.find_element(By.ID, "tooltip").is_displayed())
    return {"story": driver.find_element(By.ID, "story-output").get_attribute("textContent"),
            "lengths": driver.execute_script("return window.storyLengths"),
            "status": driver.find_element(By.ID, "status").text,
            "probabilities": [float(token.get_attribute("data-p")) for token in tokens],
            "tooltip": driver.find_element(By.ID, "tooltip").text}


def stop_midway(driver, server, max_tokens: int = MAX_TOKENS_LIMIT) -> str:
    """Generate a long story on the loaded page, press Stop once tokens arrive; the status line after."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    field = driver.find_element(By.ID, "max-tokens")
    field.clear()
    field.send_keys(str(max_tokens))
    driver.find_element(By.ID, "generate").click()
    wait = WebDriverWait(driver, 120)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#tokens .tok")) >= 3)
    driver.find_element(By.ID, "stop").click()
    wait.until(lambda d: d.find_element(By.ID, "status").text.startswith("stopped"))
    wait_until_idle(server)
    return driver.find_element(By.ID, "status").text


def test_playground_streams_a_story_and_shows_token_probabilities(server, client, tmp_path):
    driver = chromium_driver()
    try:
        steps_before = server.health()["steps"]
        shown = use_playground(driver, server.base_url, "Once upon a time", max_tokens=80, seed=3, api_key=API_KEY)
        driver.save_screenshot(str(tmp_path / "playground.png"))
        stopped = stop_midway(driver, server)
    finally:
        driver.quit()
    assert server.health()["steps"] - steps_before < 80 + MAX_TOKENS_LIMIT, "Stop should end the generation"
    assert int(stopped.split()[2]) < MAX_TOKENS_LIMIT  # "stopped after N tokens"
    expected = client.completions.create(model="tiny-stories", prompt="Once upon a time", max_tokens=80, seed=3,
                                         temperature=0.8, top_p=0.95, extra_body={"top_k": 50}).choices[0]
    assert shown["story"] == expected.text
    assert len(set(shown["lengths"])) > 3, "the story should appear piece by piece"
    assert f"{len(shown['probabilities'])} tokens" in shown["status"]
    assert all(0 < p <= 1 for p in shown["probabilities"]) and len(set(shown["probabilities"])) > 1
    assert "%" in shown["tooltip"]
    assert (tmp_path / "playground.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- the command: arguments and shutdown --------------------------------------------------------------------------

def test_bad_arguments_exit_2_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, "serve.py", "--model", str(tmp_path / "missing.pth")], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "not found" in result.stderr


def test_sigterm_ends_open_streams_and_exits_0(checkpoint, tmp_path):
    server = ServerProcess(str(checkpoint), log_dir=tmp_path, env=ONE_THREAD)
    server.start()
    try:
        _, response = open_stream(server, {"model": str(checkpoint), "prompt": PROMPT, "max_tokens": 600,
                                           "ignore_eos": True})
        os.kill(server.process.pid, signal.SIGTERM)
        started = time.monotonic()
        rest = response.read().decode()  # the stream ends by itself
        assert time.monotonic() - started < 10
        events = [line[len("data: "):] for line in rest.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and json.loads(events[-2])["choices"][0]["finish_reason"] == "cancelled"
        assert server.process.wait(timeout=20) == 0
    finally:
        server.stop()
    assert "stopped" in server.log()
