"""Between HTTP and the engine: what the handlers share (the engine, the limits, admission and draining), a
request's submitted sequences, and each choice's text and logprobs as the engine's events arrive. Nothing here
knows of FastAPI routes; app.py translates between these and HTTP."""
from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Optional, Union

from tinystories.checks import require_at_least
from tinystories.errors import UserError
from tinystories.generation.engine import Engine
from tinystories.generation.requests import GenerationRequest, SequenceHandle, SequenceResult, TokenEvent, sequence_seed
from tinystories.serving.openai_protocol import (
    ApiError,
    CompletionRequest,
    Limits,
    Logprobs,
)

API_KEY_ENV = "TINYSTORIES_API_KEY"


@dataclass
class ServerConfig:
    host: str = field(default="127.0.0.1", metadata={
        "help": "address to listen on; 0.0.0.0 makes the server reachable from other machines (set an API key)"})
    port: int = field(default=8000, metadata={"help": "TCP port (0: any free port, printed at start)"})
    api_key: Optional[str] = field(default=None, repr=False, metadata={
        "help": f"require 'Authorization: Bearer KEY' on /v1/ requests; prefer the {API_KEY_ENV} environment "
                "variable, since other users of this machine can read command lines"})
    max_batch: int = field(default=32, metadata={"help": "sequences decoded together, one forward per step"})
    max_queue: int = field(default=64, metadata={
        "help": "sequences that may wait for a free slot; requests beyond that are answered 429"})
    max_tokens_limit: int = field(default=1024, metadata={"help": "the largest max_tokens a request may ask for"})
    max_n: int = field(default=16, metadata={"help": "the most sequences one request may ask for (prompts x n)"})
    max_body_bytes: int = field(default=2**20, metadata={
        "help": "the largest request body in bytes (1 MiB: far more text than a model's context holds); a larger "
                "one is answered 413"})

    def __post_init__(self) -> None:
        require_at_least(self, ("max_batch", "max_tokens_limit", "max_n", "max_body_bytes"))
        require_at_least(self, ("max_queue",), minimum=0)
        if self.max_n > self.max_batch + self.max_queue:
            raise UserError(f"--max_n {self.max_n} could never be admitted: it is above --max_batch + --max_queue "
                            f"({self.max_batch + self.max_queue})")
        if not 0 <= self.port <= 65535:
            raise UserError(f"--port must be between 0 and 65535, got {self.port}")

    def resolved_api_key(self) -> Optional[str]:
        """The key requests must carry: --api_key, else the environment variable, else none."""
        return self.api_key or os.environ.get(API_KEY_ENV) or None


RETRY_AFTER_SECONDS = 1


class Service:
    """What the handlers share: the engine, the limits, and the sequences in flight."""

    def __init__(self, engine: Engine, model_name: str, config: ServerConfig, vocab_size: int,
                 context_length: int) -> None:
        self.engine, self.model_name, self.config = engine, model_name, config
        self.context_length = context_length
        self.limits = Limits(max_tokens=config.max_tokens_limit, max_sequences=config.max_n, vocab_size=vocab_size)
        self.api_key = config.resolved_api_key()
        self.created = int(time.time())
        self.in_flight = 0  # sequences submitted and not yet finished; touched on the event loop only
        self.submissions: set[Submission] = set()
        self.draining = False
        self.loop: Optional[asyncio.AbstractEventLoop] = None

    def admit(self, sequences: int) -> None:
        if self.draining:
            raise ApiError(503, "the server is shutting down; send the request again to a running server",
                           type="server_error", code="shutting_down")
        capacity = self.config.max_batch + self.config.max_queue
        if self.in_flight + sequences > capacity:
            raise ApiError(429, f"the server is busy: {self.in_flight} sequences are running or waiting for a slot, "
                                f"and it takes at most {capacity}; retry in a moment", type="rate_limit_error",
                           code="rate_limit_exceeded", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    def drain(self) -> None:
        """End every running stream now (on the event loop): shutdown has begun."""
        self.draining = True
        for submission in list(self.submissions):
            submission.cancel()

    def request_drain(self) -> None:
        """drain() from a signal handler, which may interrupt the event loop's thread anywhere."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.drain)


class GenerationFailed(ApiError):
    """The engine could not finish a sequence (its forward failed); not the client's fault, and not a crash."""

    def __init__(self, error: Exception) -> None:
        super().__init__(503, f"generation failed on the server ({error}); try again, perhaps with fewer or "
                              "shorter sequences", type="server_error", code="generation_failed")


class Submission:
    """One request's sequences in the engine; their TokenEvents and results arrive on an asyncio queue, in order.

    The engine calls on_event and on_finish on its own thread; both hand over with call_soon_threadsafe, so
    the queue is only touched on the event loop.
    """

    def __init__(self, service: Service, requests: list[GenerationRequest]) -> None:
        assert service.loop is not None
        self.service, self.loop = service, service.loop
        self.queue: asyncio.Queue[tuple[int, Union[TokenEvent, SequenceResult, Exception]]] = asyncio.Queue()
        self.handles: list[SequenceHandle] = []
        self.unfinished = 0
        service.submissions.add(self)
        try:
            for index, request in enumerate(requests):
                self.handles.append(service.engine.submit(request, on_event=self._forwarder(index),
                                                          on_finish=self._forwarder(index)))
                service.in_flight += 1
                self.unfinished += 1
        except UserError as error:  # the checks in openai_protocol should have caught it already
            self.cancel()
            if not self.unfinished:
                service.submissions.discard(self)
            raise ApiError(400, str(error)) from None

    def _post(self, index: int, item: Union[TokenEvent, SequenceResult, Exception]) -> None:
        try:
            self.loop.call_soon_threadsafe(self._deliver, index, item)
        except RuntimeError:  # the event loop has closed: the server is gone and nobody is listening
            pass

    def _forwarder(self, index: int):
        return lambda event: self._post(index, event)

    def _deliver(self, index: int, item: Union[TokenEvent, SequenceResult, Exception]) -> None:
        if not isinstance(item, TokenEvent):
            self.service.in_flight -= 1
            self.unfinished -= 1
            if self.unfinished == 0:
                self.service.submissions.discard(self)
        self.queue.put_nowait((index, item))

    async def items(self) -> AsyncIterator[tuple[int, Union[TokenEvent, SequenceResult]]]:
        """(sequence index, TokenEvent or its final SequenceResult) until every sequence has finished;
        a failed sequence raises GenerationFailed."""
        results = 0
        while results < len(self.handles):
            index, item = await self.queue.get()
            if isinstance(item, Exception):
                raise GenerationFailed(item)
            results += isinstance(item, SequenceResult)
            yield index, item

    def cancel(self) -> None:
        for handle in self.handles:
            if not handle.done:
                handle.cancel()


def generation_requests(request: CompletionRequest) -> list[GenerationRequest]:
    """One engine request per choice, in OpenAI's order: choice k = prompt k // n, sample k % n.

    With a seed, choice k is seeded with sequence_seed(seed, k): choice 0 with the seed itself, as generate.py's
    first sample.
    """
    prompts = [ids for ids in request.prompts for _ in range(request.n)]
    return [GenerationRequest(prompt_ids=ids, max_new_tokens=request.max_tokens, sampling=request.sampling,
                              seed=None if request.seed is None else sequence_seed(request.seed, index),
                              stop_at_eos=not request.ignore_eos, stop=list(request.stop),
                              logprobs=request.logprobs is not None, top_logprobs=request.logprobs or 0)
            for index, ids in enumerate(prompts)]


class ChoiceText:
    """The text and logprobs of one choice so far, as its events arrive."""

    def __init__(self, with_logprobs: bool) -> None:
        self.text = ""
        self.logprobs = Logprobs() if with_logprobs else None

    def add(self, event: TokenEvent, logprobs: Optional[Logprobs]) -> None:
        if logprobs is not None:
            logprobs.add(event.token_id, event.logprob, event.top_logprobs, len(self.text))
        self.text += event.text

    def rest(self, result: SequenceResult) -> str:
        """The end of the result's text that no event carried (held-back bytes of a last character)."""
        return result.text[len(self.text):] if result.text.startswith(self.text) else ""
