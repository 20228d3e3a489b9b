"""What a caller hands the engine and gets back: a request, its token events, its result, and the handle
that carries them between threads; and the seed each sequence of a seeded run gets."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import torch

from tinystories.generation.sampling import SamplingConfig
from tinystories.tokenizer import EOT_ID

MAX_TOP_LOGPROBS = 5


@dataclass
class GenerationRequest:
    prompt_ids: list[int]  # non-empty; longer than block_size -> the last block_size tokens are kept
    max_new_tokens: int
    sampling: SamplingConfig
    seed: Optional[int] = None  # this sequence's own generator seed (None: nondeterministic)
    stop_at_eos: bool = True  # stop after <|endoftext|> (the EOT token is reported, not in the text)
    stop: list[str] = field(default_factory=list)  # stop strings: the text is cut before the first one found
    logprobs: bool = False  # report each token's logprob (TokenEvent.logprob; None otherwise)
    top_logprobs: int = 0  # 0..5: also report the N most likely alternatives of each token (implies logprobs)
    prompt: str = ""  # the prompt as text, when it was given as text: handed back in the result


@dataclass
class TokenEvent:
    token_id: int
    text: str  # the new complete UTF-8 text this token adds ('' while held back)
    logprob: Optional[float]  # log-softmax of the model's raw (temperature 1) logits for token_id, if asked
    top_logprobs: list[tuple[int, float]]  # up to top_logprobs (token id, logprob), most likely first


@dataclass
class SequenceResult:
    token_ids: list[int]  # the new tokens, including a final <|endoftext|> when it ended the sequence
    text: str  # the new text, without <|endoftext|>, cut before a stop string
    finish_reason: str  # "stop" (<|endoftext|> or a stop string), "length" or "cancelled"
    prompt_tokens: int  # tokens of the prompt as submitted
    seconds: float = 0.0  # from joining a slot to finishing
    prompt: str = ""  # the request's prompt text

    @property
    def ended_with_eos(self) -> bool:
        return self.finish_reason == "stop" and bool(self.token_ids) and self.token_ids[-1] == EOT_ID

    @property
    def tokens_per_second(self) -> float:
        return len(self.token_ids) / self.seconds if self.seconds > 0 else 0.0


SEED_STEP = 0x9E3779B9  # 2**32 / golden ratio: odd, so 2**32 consecutive sequences get distinct seeds


def sequence_seed(run_seed: int, sequence_number: int) -> int:
    """The seed of sequence number k (0-based, in prompt/sample order) of a run seeded with `run_seed`:
    (run_seed + k * 2654435769) mod 2**32 (the CPU generator reads 32 bits of a seed). Sequence 0 keeps the
    run's seed, so a single sample reads as it did before batching."""
    return (run_seed + sequence_number * SEED_STEP) % 2**32


def default_batch_size(device: torch.device) -> int:
    """Sequences decoded together when --batch_size is not given: GPUs need many rows to be busy."""
    return 256 if device.type == "cuda" else 32


class SequenceHandle:
    """A submitted sequence: its events as they come, its result once finished, and a way to cancel it."""

    def __init__(self, prompt_tokens: int,
                 on_finish: Optional[Callable[[SequenceResult | BaseException], None]] = None) -> None:
        self.prompt_tokens = prompt_tokens
        self._on_finish = on_finish
        self._condition = threading.Condition()
        self._events: list[TokenEvent] = []
        self._result: Optional[SequenceResult] = None
        self._error: Optional[BaseException] = None
        self.cancel_requested = False

    @property
    def done(self) -> bool:
        return self._result is not None or self._error is not None

    def cancel(self) -> None:
        """End the sequence at the next step (finish_reason "cancelled"); its slot frees then."""
        self.cancel_requested = True

    def events(self) -> Iterator[TokenEvent]:
        """Every event of the sequence, blocking for the next one; ends when the sequence finishes."""
        index = 0
        while True:
            with self._condition:
                self._condition.wait_for(lambda index=index: len(self._events) > index or self.done)
                pending = self._events[index:]
                finished = self.done
            yield from pending
            index += len(pending)
            if finished and index == len(self._events):
                if self._error is not None:
                    raise self._error
                return

    def result(self, timeout: Optional[float] = None) -> SequenceResult:
        """The finished sequence, waiting for it (TimeoutError after `timeout` seconds)."""
        with self._condition:
            if not self._condition.wait_for(lambda: self.done, timeout):
                raise TimeoutError("the sequence has not finished")
        if self._error is not None:
            raise self._error
        return self._result

    def _add(self, event: TokenEvent) -> None:
        with self._condition:
            self._events.append(event)
            self._condition.notify_all()

    def _finish(self, result: Optional[SequenceResult], error: Optional[BaseException] = None) -> None:
        with self._condition:
            self._result, self._error = result, error
            self._condition.notify_all()
        if self._on_finish is not None:
            self._on_finish(result if error is None else error)
