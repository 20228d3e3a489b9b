"""Batched generation with continuous batching: many sequences decode together, one model forward per step.

The engine holds up to `max_batch` sequences, each in a row ("slot") of one SlotKVCache with its own length.
A step admits waiting sequences into free rows, runs ONE forward over every active sequence (a new prompt
and a window re-encoded after sliding are packed in beside the one-token rows of the others), and picks each
sequence's next token with its own sampling settings and random generator. A sequence that ends leaves its
row at once, and a waiting one takes it at the next step.

This is the one generation path: generate.py, evaluate.py, serve.py and bench.py all decode through it.
Batching never changes results: each sequence's tokens are those it would get alone (tests/generation checks
them against a cache-free reference decoder), with a generator on the model's device seeded with the request's
seed (greedy: the same ids). The sliding window is window.py's, per sequence: a sequence whose cache is full
re-encodes the last 3/4 of its window at positions 0, 1, ..., in the same forward as the others' single tokens.

Failures: a sequence whose own token cannot be picked (non-finite logits, a failed draw) ends alone with the
error, and the others decode on; a failed forward, which every active sequence shares, ends them all.

Threads: `submit`, `SequenceHandle.cancel`, `events` and `result` may be called from any thread. Steps run
on one thread at a time: the caller's (`run`, `generate`) or the engine's own (`start`), which also calls
the `on_event` callbacks, so those should be quick.
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Callable, Optional

import torch
from tqdm import tqdm

from model.model import Model
from tinystories.errors import UserError
from tinystories.generation.requests import (
    MAX_TOP_LOGPROBS,
    GenerationRequest,
    SequenceHandle,
    SequenceResult,
    TokenEvent,
    sequence_seed,
)
from tinystories.generation.sampling import SamplingConfig, check_prompt, pick_next_tokens
from tinystories.generation.text_stream import Utf8Stream
from tinystories.generation.window import feed_start
from tinystories.memory import available_bytes, kv_cache_bytes
from tinystories.tokenizer import EOT_ID, get_tokenizer


def check_cache_fits(model: Model, slots: int) -> None:
    """Refuse (UserError) a number of slots whose cache would not fit in the device's free memory."""
    weight = model.token_embedding.weight
    needed = kv_cache_bytes(model.config, slots * model.config.block_size, weight.dtype)
    available = available_bytes(weight.device)
    if needed > available:
        raise UserError(f"--batch_size {slots}: the KV cache needs {needed / 2**30:.2f} GiB "
                        f"({needed / slots / 2**20:.1f} MiB per sequence) but only {available / 2**30:.2f} GiB "
                        f"of {weight.device.type} memory is free; lower --batch_size")


class _Sequence:
    """One sequence's decoding state: its window of tokens, its text so far and what the caller has seen."""

    def __init__(self, request: GenerationRequest, handle: SequenceHandle,
                 on_event: Optional[Callable[[TokenEvent], None]], block_size: int, device: torch.device) -> None:
        self.request, self.handle, self.on_event = request, handle, on_event
        self.block_size = block_size
        self.window = list(request.prompt_ids[-block_size:])  # the tokens the cache row holds or will hold
        self.cached = 0  # positions of the window in the cache row
        self.generator = torch.Generator(device=device)
        if request.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(request.seed)
        self.new_ids: list[int] = []
        self.stream = Utf8Stream()
        self.text = ""
        self.shown = 0  # characters of self.text handed out in events
        self.started = time.perf_counter()

    def feed(self) -> list[int]:
        """The tokens the next forward must feed: the prompt, a slid window, or the last token picked."""
        fed = self.window[feed_start(self.cached, len(self.window), self.block_size):]
        if len(fed) > 1:  # a prompt or a slid window: the cache row starts over with these tokens
            self.window = fed
        return fed

    def add(self, token: int, logprob: Optional[float], top: list[tuple[int, float]]) -> Optional[str]:
        """Take the picked token and hand out its event; the finish reason if the sequence has ended."""
        request = self.request
        self.new_ids.append(token)
        self.window.append(token)
        if request.stop_at_eos and token == EOT_ID:
            reason: Optional[str] = "stop"
            self.text += self.stream.flush()
        else:
            self.text += self.stream.push(token)
            cut = min((i for i in (self.text.find(stop, self.shown) for stop in request.stop) if i >= 0), default=-1)
            if cut >= 0:
                self.text, reason = self.text[:cut], "stop"
            elif len(self.new_ids) == request.max_new_tokens:
                self.text, reason = self.text + self.stream.flush(), "length"
            else:
                reason = None
        shown = len(self.text) if reason else len(self.text) - _held_back(self.text, request.stop)
        piece, self.shown = self.text[self.shown:shown], shown
        self._emit(TokenEvent(token, piece, logprob, top))
        return reason

    def _emit(self, event: TokenEvent) -> None:
        self.handle._add(event)
        if self.on_event is not None:
            self.on_event(event)

    def result(self, reason: str) -> SequenceResult:
        text = self.text if reason != "cancelled" else self.text[:self.shown]
        return SequenceResult(self.new_ids, text, reason, self.handle.prompt_tokens,
                              time.perf_counter() - self.started, self.request.prompt)


def _held_back(text: str, stops: list[str]) -> int:
    """Characters at the end of `text` that could be the start of a stop string, so are not shown yet."""
    longest = 0
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:length]):
                longest = length
                break
    return longest


class Engine:
    """Continuous batching over one model: submit sequences, then step (or `start` a thread that steps)."""

    def __init__(self, model: Model, max_batch: int = 32, sequences: Optional[int] = None) -> None:
        """`max_batch` sequences decode together, and their cache must fit (UserError otherwise); when the number
        of sequences that will be submitted is known, the cache holds no more rows than that."""
        if max_batch < 1:  # the scripts check their own flags (--batch_size, --max_batch) before this
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        check_cache_fits(model, max_batch)
        if sequences is not None:
            max_batch = min(max_batch, max(sequences, 1))
        self.model = model
        self.max_batch = max_batch
        self.device = model.token_embedding.weight.device
        self.cache = model.new_slot_kv_cache(max_batch)
        self._rows: list[_Sequence] = []  # active sequences; sequence i lives in cache row i
        self._waiting: collections.deque[_Sequence] = collections.deque()
        self._condition = threading.Condition()  # guards _waiting and wakes the stepping thread
        self._step_lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._stopping = False
        self.steps = 0
        self.max_active_seen = 0

    @property
    def active(self) -> int:
        return len(self._rows)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def submit(self, request: GenerationRequest, on_event: Optional[Callable[[TokenEvent], None]] = None,
               on_finish: Optional[Callable[[SequenceResult | BaseException], None]] = None) -> SequenceHandle:
        """Queue a sequence (thread-safe); it joins a slot at the first step with one free. `on_event` gets each
        TokenEvent and then `on_finish` the result (or the error that ended the sequence), on the stepping
        thread, in that order."""
        check_prompt(request.prompt_ids, self.model.config.vocab_size)
        if request.max_new_tokens < 0:
            raise UserError(f"max_new_tokens must be 0 or more, got {request.max_new_tokens}")
        if not 0 <= request.top_logprobs <= MAX_TOP_LOGPROBS:
            raise UserError(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {request.top_logprobs}")
        if any(not isinstance(stop, str) or not stop for stop in request.stop):
            raise UserError("stop strings must be non-empty text")
        handle = SequenceHandle(len(request.prompt_ids), on_finish)
        sequence = _Sequence(request, handle, on_event, self.model.config.block_size, self.device)
        with self._condition:
            self._waiting.append(sequence)
            self._condition.notify_all()
        return handle

    def step(self) -> bool:
        """Admit waiting sequences, run one forward for all active ones and pick their next tokens.
        False when there was nothing to do."""
        with self._step_lock:
            for row in reversed(range(len(self._rows))):
                if self._rows[row].handle.cancel_requested:
                    self._finish(row, "cancelled")
            self._admit()
            if not self._rows:
                return False
            self._decode()
            self.steps += 1
            return True

    def run(self) -> None:
        """Step until no sequence is active or waiting."""
        while self.step():
            pass

    def generate(self, requests: list[GenerationRequest], progress: bool = False) -> list[SequenceResult]:
        """Decode every request (together, `max_batch` at a time); results in request order."""
        handles = [self.submit(request) for request in requests]
        with tqdm(total=len(handles), desc="sequences", unit="seq", disable=not progress) as bar:
            def update() -> None:
                bar.update(sum(handle.done for handle in handles) - bar.n)
            if self._thread is not None:
                for handle in handles:
                    handle.result()
                    update()
            else:
                while self.step():
                    update()
            update()
        return [handle.result() for handle in handles]

    def start(self) -> None:
        """Step on a background thread whenever there is work, until `shutdown`."""
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="generation-engine", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        """Stop the background thread; sequences not finished yet end "cancelled"."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._step_lock:
            for sequence in self._waiting:
                sequence.handle.cancel()
            while self._waiting or self._rows:
                self._admit()
                for row in reversed(range(len(self._rows))):
                    self._finish(row, "cancelled")

    def _loop(self) -> None:
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._stopping or self._waiting or self._rows)
                if self._stopping:
                    return
            try:
                self.step()
            except BaseException as error:  # a failed forward (out of memory, ...) ends every sequence with it
                self._fail_all(error)

    def _fail_all(self, error: BaseException) -> None:
        with self._step_lock, self._condition:
            failed = self._rows + list(self._waiting)
            self._rows, self._waiting = [], collections.deque()
            self.cache.lengths = [0] * self.max_batch
        reported = _reported(error)
        for sequence in failed:
            sequence.handle._finish(None, reported)

    def _admit(self) -> None:
        with self._condition:
            while self._waiting and (self._waiting[0].handle.cancel_requested or len(self._rows) < self.max_batch):
                sequence = self._waiting.popleft()
                if sequence.handle.cancel_requested:  # it ends without a slot, which may all be taken
                    sequence.handle._finish(sequence.result("cancelled"))
                    continue
                sequence.started = time.perf_counter()
                self._rows.append(sequence)
                if sequence.request.max_new_tokens == 0:
                    self._finish(len(self._rows) - 1, "length")
        self.max_active_seen = max(self.max_active_seen, len(self._rows))

    @torch.inference_mode()
    def _decode(self) -> None:
        decoding, starting, decoding_tokens, starting_tokens = [], [], [], []
        for row, sequence in enumerate(self._rows):
            feed = sequence.feed()
            if 0 < sequence.cached < self.cache.max_len:
                decoding.append(row)
                decoding_tokens += feed
            else:
                starting.append((row, len(feed)))
                starting_tokens += feed
        tokens = decoding_tokens + starting_tokens
        order = decoding + [row for row, _ in starting]
        self.cache.plan(decoding, starting)
        idx = torch.tensor([tokens], dtype=torch.long, device=self.device)
        hidden = self.model.hidden_states(idx, self.cache)  # (1, N, C)
        counts = [1] * len(decoding) + [count for _, count in starting]
        last = torch.tensor(counts, device=self.device).cumsum(0) - 1  # each row's last packed token
        logits = self.model.lm_head(hidden[0, last].unsqueeze(1))[:, -1].float()  # (rows, V) in `order`
        sequences = [self._rows[row] for row in order]
        for row, sequence in zip(order, sequences):
            sequence.cached = self.cache.lengths[row]
        # A sequence whose own picking failed gets the exception instead of a token, and ends with it alone.
        picked = pick_next_tokens(logits, [s.request.sampling for s in sequences], [s.generator for s in sequences])
        logprobs = self._logprobs(logits, picked, sequences)
        finished = []
        for index, row in enumerate(order):
            sequence = self._rows[row]
            if isinstance(picked[index], Exception):
                sequence.handle._finish(None, _reported(picked[index]))
                finished.append((row, "cancelled"))  # its handle has the error; "cancelled" only frees the row
                continue
            chosen, top = logprobs.get(index, (None, []))
            try:
                reason = sequence.add(picked[index], chosen, top)
            except Exception as error:  # the caller's callback failed: end its sequence, not the engine
                sequence.handle._finish(None, error)
                reason = "cancelled"
            if reason is not None:
                finished.append((row, reason))
        for row, reason in sorted(finished, reverse=True):
            self._finish(row, reason)

    @staticmethod
    def _logprobs(logits: torch.Tensor, picked: list[int | Exception], sequences: list[_Sequence]
                  ) -> dict[int, tuple[float, list[tuple[int, float]]]]:
        """For each row whose request asks for them (and that has a token): the picked token's logprob and the
        top alternatives. Only those rows pay for the normalisation over the whole vocabulary."""
        wanted = [index for index, s in enumerate(sequences)
                  if (s.request.logprobs or s.request.top_logprobs) and not isinstance(picked[index], Exception)]
        if not wanted:
            return {}
        logprobs = torch.log_softmax(logits[wanted], dim=-1)
        chosen = logprobs.gather(1, torch.tensor([picked[i] for i in wanted], device=logits.device)[:, None])
        result = {}
        for position, index in enumerate(wanted):
            top = []
            if sequences[index].request.top_logprobs:
                values, ids = torch.topk(logprobs[position], sequences[index].request.top_logprobs)
                top = list(zip(ids.tolist(), values.tolist()))
            result[index] = (chosen[position, 0].item(), top)
        return result

    def _finish(self, row: int, reason: str) -> None:
        """End the sequence in `row`; the last row's sequence moves into it, so busy rows stay first."""
        sequence = self._rows[row]
        if not sequence.handle.done:
            sequence.handle._finish(sequence.result(reason))
        last = len(self._rows) - 1
        if row != last:
            self.cache.move(last, row)
            self._rows[row] = self._rows[last]
        else:
            self.cache.release(row)
        self._rows.pop()


def _reported(error: BaseException) -> BaseException:
    """The error a sequence ends with: a UserError (a model with non-finite outputs) stays one, so the script
    reports it in one line; anything else says that generation failed."""
    return error if isinstance(error, UserError) else RuntimeError(f"generation failed: {error}")


def complete_all(model: Model, prompts: list[str], max_new_tokens: int, sampling: SamplingConfig, run_seed: int,
                 batch_size: int, stop_at_eos: bool = True, progress: bool = False) -> list[SequenceResult]:
    """Continue every prompt, `batch_size` at a time; prompt k's generator is seeded sequence_seed(run_seed, k)."""
    tokenizer = get_tokenizer()
    requests = [GenerationRequest(tokenizer.encode_ordinary(prompt), max_new_tokens, sampling,
                                  seed=sequence_seed(run_seed, number), stop_at_eos=stop_at_eos, prompt=prompt)
                for number, prompt in enumerate(prompts)]
    return Engine(model, batch_size, sequences=len(requests)).generate(requests, progress)
