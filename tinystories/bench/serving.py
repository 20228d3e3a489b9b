"""The workloads of bench.py's serving section: 1, 4 and 16 concurrent streaming clients against one serve.py.

Each client streams one completion of exactly `new_tokens` tokens (ignore_eos) over plain HTTP, as an OpenAI
client would; a round starts its clients together. Figures: the aggregate tokens/s of a round (all clients'
tokens over the time from the first request to the last token), and the time to first token (from sending the
request to the first token's event). The same engine without HTTP, decoding as many sequences in-process, is
timed in the same rounds: the bound the server approaches when HTTP, JSON and the event loop cost nothing.
tinystories.bench.harness times these workloads, interleaved, and turns them into figures.
"""
from __future__ import annotations

import http.client
import json
import statistics
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

import numpy as np
import torch

from model.model import Model
from tinystories.bench.harness import Contender, Figure, Settings, interleave
from tinystories.checkpoint import model_checkpoint, save_checkpoint
from tinystories.generation.decoders import decoding_model
from tinystories.generation.engine import Engine
from tinystories.generation.requests import GenerationRequest, sequence_seed
from tinystories.generation.sampling import SamplingConfig
from tinystories.serving.server_process import ServerProcess
from tinystories.tokenizer import get_tokenizer

CLIENT_COUNTS = (1, 4, 16)
PROMPT = "Once upon a time"
MODEL_NAME = "bench"


def stream_completion(base_url: str, body: dict) -> tuple[float, int]:
    """(seconds from sending the request to the first token's event, completion tokens) of one streamed request."""
    address = urlsplit(base_url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=600)
    started = time.perf_counter()
    connection.request("POST", "/v1/completions", headers={"Content-Type": "application/json"},
                       body=json.dumps({**body, "stream": True, "stream_options": {"include_usage": True}}))
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"serve.py answered {response.status}: {response.read()[:300]!r}")
    first_token = None
    tokens = 0
    for line in response:
        if not line.startswith(b"data: {"):
            continue
        if first_token is None:
            first_token = time.perf_counter() - started
        document = json.loads(line[len(b"data: "):])
        if document.get("usage"):
            tokens = document["usage"]["completion_tokens"]
    connection.close()
    return first_token or float("nan"), tokens


def concurrent_streams(base_url: str, clients: int, new_tokens: int, sampling: SamplingConfig, seed: int,
                       first_token_seconds: list[float]) -> None:
    """`clients` streams at once, each of exactly new_tokens tokens; appends each one's time to first token."""
    start = threading.Barrier(clients)
    results: list[tuple[float, int]] = []
    errors: list[BaseException] = []

    def client(number: int) -> None:
        body = {"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": new_tokens, "temperature": sampling.temperature,
                "top_p": sampling.top_p, "top_k": sampling.top_k, "seed": seed + number, "ignore_eos": True}
        start.wait()
        try:
            results.append(stream_completion(base_url, body))
        except BaseException as error:  # re-raised below, in the benchmark's thread
            errors.append(error)

    threads = [threading.Thread(target=client, args=(number,)) for number in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    if any(tokens != new_tokens for _, tokens in results):
        raise RuntimeError(f"a client received {[tokens for _, tokens in results]} tokens, not {new_tokens} each")
    first_token_seconds.extend(seconds for seconds, _ in results)


@dataclass
class Workload:
    name: str
    run: Callable[[], None]  # one round
    tokens: int  # tokens one round generates
    first_token_seconds: list[float]  # every client's, warm-up round included


class ServingWorkloads:
    """serve.py with `model` on `device` (as a context manager), and one workload per number of clients, plus
    the engine alone decoding max(CLIENT_COUNTS) sequences in this process."""

    def __init__(self, model: Model, device: torch.device, new_tokens: int, seed: int) -> None:
        self.model, self.device, self.new_tokens, self.seed = model, device, new_tokens, seed
        self.sampling = SamplingConfig()
        self.most = max(CLIENT_COUNTS)
        self._exit_stack = ExitStack()
        self.server: ServerProcess
        self.workloads: list[Workload] = []

    def __enter__(self) -> "ServingWorkloads":
        folder = Path(self._exit_stack.enter_context(tempfile.TemporaryDirectory()))
        checkpoint = folder / "bench_model.pth"
        save_checkpoint(checkpoint, model_checkpoint(self.model))
        self.server = self._exit_stack.enter_context(ServerProcess(
            str(checkpoint), "--device", str(self.device), "--max_batch", str(self.most), "--max_queue", "0",
            "--max_n", "1", "--max_tokens_limit", str(self.new_tokens), "--served_model_name", MODEL_NAME,
            log_dir=folder))
        for clients in CLIENT_COUNTS:
            workload = Workload(f"serve.py, {clients} client{'s' * (clients > 1)}", lambda: None,
                                clients * self.new_tokens, [])
            workload.run = lambda clients=clients, seconds=workload.first_token_seconds: concurrent_streams(
                self.server.base_url, clients, self.new_tokens, self.sampling, self.seed, seconds)
            self.workloads.append(workload)
        self.workloads.append(self._engine_alone())
        return self

    def __exit__(self, *_: object) -> None:
        self._exit_stack.close()

    def _engine_alone(self) -> Workload:
        engine = Engine(decoding_model(self.model), max_batch=self.most)
        prompt = get_tokenizer().encode_ordinary(PROMPT)
        requests = [GenerationRequest(prompt, self.new_tokens, self.sampling, seed=sequence_seed(self.seed, number),
                                      stop_at_eos=False) for number in range(self.most)]

        def run() -> None:
            results = engine.generate(requests)
            assert all(len(result.token_ids) == self.new_tokens for result in results)
        return Workload(f"engine alone, {self.most} sequences, no HTTP", run, self.most * self.new_tokens, [])


def serving_figures(settings: Settings, rounds: int, seed: int, new_tokens: int) -> list[Figure]:
    """serve.py under 1, 4 and 16 concurrent streaming clients: aggregate tokens/s (with its ratio to one client
    and to the engine alone, without HTTP) and the median and 95th percentile of the time to first token."""
    torch.manual_seed(seed)
    model = Model(settings.model_config).to(settings.device).eval()
    with ServingWorkloads(model, settings.device, new_tokens, seed) as serving:
        workloads = serving.workloads
        rates, _ = interleave([Contender(workload.name, workload.run, workload.tokens) for workload in workloads],
                              rounds, torch.device("cpu"), "serving")
    medians = {name: statistics.median(samples) for name, samples in rates.items()}
    one_client, engine_alone = workloads[0].name, workloads[-1].name
    figures = []
    for workload in workloads[:-1]:
        clients = workload.tokens // new_tokens
        ratios = {"1 client": medians[workload.name] / medians[one_client]} if workload.name != one_client else {}
        ratios["engine alone"] = medians[workload.name] / medians[engine_alone]
        milliseconds = [1000 * seconds for seconds in workload.first_token_seconds]
        by_round = [milliseconds[start:start + clients] for start in range(clients, len(milliseconds), clients)]
        figures += [Figure("serving", workload.name, "tokens/s", rates[workload.name], ratios),  # each round's:
                    Figure("serving", f"{workload.name}, time to first token, median", "ms",
                           [statistics.median(first_tokens) for first_tokens in by_round]),
                    Figure("serving", f"{workload.name}, time to first token, p95", "ms",
                           [float(np.percentile(first_tokens, 95)) for first_tokens in by_round])]
    return figures + [Figure("serving", engine_alone, "tokens/s", rates[engine_alone])]
