"""Text generation: temperature, top-k and top-p sampling, and beam search, over the model's KV cache.

The prompt is processed in one forward; every later forward feeds one new token per sequence, reading the
keys and values of earlier positions from the cache.

Sliding window: the model has `block_size` learned positions, so the cache holds at most that many
tokens. When it is full and another token must be fed, the oldest quarter of the window is dropped: the
cache is emptied and the last `block_size - block_size // 4` tokens are fed again in one forward, at
positions 0, 1, ... (the positions they would have as the start of a training window), and decoding
continues one token at a time. Every token is therefore predicted from at least 3/4 of a window of
context, and the re-encoding costs one forward over 3/4 of a window every `block_size // 4` tokens.
A prompt longer than `block_size` is cut to its last `block_size` tokens.
"""
from __future__ import annotations

import codecs
import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import torch
import torch.nn as nn

from model.model import Model
from tinystories.checks import require_token_ids_within
from tinystories.errors import UserError
from tinystories.precision import PRECISIONS, Int8Linear, can_pack, float32_decoder, replace_linears, step_decoder
from tinystories.tokenizer import EOT_ID, get_tokenizer


NON_FINITE_OUTPUTS = ("the model produces non-finite values (NaN or infinity) for this text, so nothing can be "
                      "sampled; its weights are broken (use an earlier checkpoint)")


@dataclass
class SamplingConfig:
    temperature: float = field(default=0.8, metadata={
        "help": "softmax temperature in [0, 2]; 0 always picks the most likely token (greedy)"})
    top_k: int = field(default=50, metadata={"help": "sample among the k most likely tokens only (0 disables)"})
    top_p: float = field(default=0.95, metadata={
        "help": "sample among the most likely tokens whose probabilities add up to top_p, in (0, 1] (1 disables)"})

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature <= 2.0:
            raise UserError(f"--temperature must be between 0 and 2 (0 means greedy), got {self.temperature}")
        if self.top_k < 0:
            raise UserError(f"--top_k must be 0 (disabled) or positive, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise UserError(f"--top_p must be in (0, 1] (1 disables it), got {self.top_p}")


def next_token_distribution(logits: torch.Tensor, sampling: SamplingConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(token ids, their probabilities, summing to 1) that the next token is drawn from, for logits (V,).

    The order is Hugging Face's: divide by the temperature, keep the top k (and every token tied with the
    k-th), then keep the most likely tokens until their probability reaches top_p (at least one token).
    Working on the top-k candidates only avoids sorting the whole vocabulary.
    """
    scores = logits.float() / sampling.temperature
    if 0 < sampling.top_k < scores.numel():
        kth_best = torch.topk(scores, sampling.top_k, sorted=False).values.min()
        ids = torch.nonzero(scores >= kth_best).squeeze(1)
    else:
        ids = torch.arange(scores.numel(), device=scores.device)
    return _nucleus(scores[ids][None], ids[None], [sampling])[0]


def _nucleus(scores: torch.Tensor, ids: torch.Tensor, samplings: list[SamplingConfig]
             ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each row of candidates ids (R, k), ascending, with their scores (R, k): the ids sorted by score and
    their softmax, then cut to the most likely whose probability reaches the row's top_p and renormalised.
    The sort, softmax and running sums are done for all rows in one call each."""
    sorted_scores, order = scores.sort(dim=1, descending=True)
    ids = ids.gather(1, order)
    probabilities = torch.softmax(sorted_scores, dim=1)
    top_p = torch.tensor([sampling.top_p for sampling in samplings], device=scores.device)
    keep = probabilities.cumsum(dim=1) - probabilities < top_p[:, None]  # the first token always has 0 before it
    distributions = []
    for row, sampling in enumerate(samplings):
        if sampling.top_p < 1.0:
            kept = probabilities[row][keep[row]]
            distributions.append((ids[row][keep[row]], kept / kept.sum()))
        else:
            distributions.append((ids[row], probabilities[row]))
    return distributions


def check_finite(logits: torch.Tensor) -> None:
    """Refuse NaN or infinite logits: sampling would fail deep in torch, and argmax would pick garbage."""
    # The extremes are NaN or infinite exactly when some logit is, and cost a tenth of isfinite(...).all().
    if not all(math.isfinite(extreme) for extreme in torch.aminmax(logits.float())):
        raise UserError(NON_FINITE_OUTPUTS)


def pick_next_token(logits: torch.Tensor, sampling: SamplingConfig, generator: Optional[torch.Generator]) -> int:
    """The next token for logits (V,): the argmax at temperature 0, else a draw from next_token_distribution."""
    check_finite(logits)
    if sampling.temperature == 0.0:
        return int(logits.argmax())
    ids, probabilities = next_token_distribution(logits, sampling)
    return int(ids[torch.multinomial(probabilities, 1, generator=generator)])


def pick_next_tokens(logits: torch.Tensor, samplings: list[SamplingConfig],
                     generators: list[Optional[torch.Generator]]) -> list[int]:
    """pick_next_token for each row of logits (B, V), with its own settings and generator: the same tokens,
    but the work over the whole vocabulary (argmax, top-k) is done for all rows in one call each."""
    if len(samplings) == 1:  # one sequence: the batched bookkeeping below would only add overhead
        return [pick_next_token(logits[0], samplings[0], generators[0])]
    check_finite(logits)
    tokens: list[Optional[int]] = [None] * len(samplings)
    greedy = [row for row, sampling in enumerate(samplings) if sampling.temperature == 0.0]
    if greedy:
        for row, token in zip(greedy, logits[greedy].argmax(dim=1).tolist()):
            tokens[row] = token
    vocab_size = logits.shape[1]
    for top_k in {s.top_k for s in samplings if s.temperature > 0 and 0 < s.top_k < vocab_size}:
        rows = [row for row, s in enumerate(samplings) if s.temperature > 0 and s.top_k == top_k]
        selected = logits if len(rows) == len(samplings) else logits[rows]  # indexing copies every row
        settings = [samplings[row] for row in rows]
        ids, scores, ties = _top_k_candidates(selected, settings, top_k)
        for row, tie, (candidates, probabilities) in zip(rows, ties, _nucleus(scores, ids, settings)):
            if not tie:
                tokens[row] = int(candidates[torch.multinomial(probabilities, 1, generator=generators[row])])
    for row, token in enumerate(tokens):
        if token is None:  # top-k disabled, or a tie at the k-th place: the single-row path
            tokens[row] = pick_next_token(logits[row], samplings[row], generators[row])
    return tokens


def _top_k_candidates(logits: torch.Tensor, samplings: list[SamplingConfig], top_k: int
                      ) -> tuple[torch.Tensor, torch.Tensor, list[bool]]:
    """For rows of logits (R, V): the ids (R, top_k), ascending, of each row's top_k tokens, their scores (logits
    divided by the temperature), and whether a token outside the top k ties with the k-th (next_token_distribution
    would keep it: those rows must take that path). Only the k + 1 best of each row are divided and sorted."""
    best = torch.topk(logits.float(), top_k + 1, dim=1)  # raw logits: dividing by T > 0 keeps their order
    temperatures = torch.tensor([s.temperature for s in samplings], device=logits.device)
    scores = best.values / temperatures[:, None]
    ties = (scores[:, top_k] >= scores[:, top_k - 1]).tolist()
    ids, order = best.indices[:, :top_k].sort(dim=1)
    return ids, scores[:, :top_k].gather(1, order), ties


class _LastPositionHead(nn.Module):
    """The output layer applied to the last position only: decoding needs no other logits, and a prefill
    of hundreds of tokens would otherwise spend most of its time on unused (T, vocab_size) logits."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x[:, -1:])


def decoding_model(model: Model, precision: str = "float32") -> Model:
    """A copy of `model` for generation only: forward returns the logits of the last position, (B, 1, V).

    float32: on the CPU each step of a lone sequence is one call of this project's kernel and the rest runs on
    weights prepacked for oneDNN; logits agree with `model` to float rounding. float16 and int8 (CPU only): the
    weights of the linear layers in fewer bytes, products in float32 (tinystories.precision).
    """
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    decoder = copy.deepcopy(model).eval()
    weight = decoder.token_embedding.weight
    if precision != "float32" and weight.device.type != "cpu":
        raise UserError(f"--precision {precision} runs on the CPU only (use --device cpu, or float32 on GPUs)")
    if precision != "float32" and weight.dtype != torch.float32:
        dtype = str(weight.dtype).removeprefix("torch.")
        raise UserError(f"--precision {precision} needs a float32 model, not {dtype}")
    if precision == "float16":
        decoder = step_decoder(decoder, "float16")
    elif precision == "int8":
        replace_linears(decoder, Int8Linear)
    elif can_pack(decoder):  # float32 on the CPU
        decoder = float32_decoder(decoder)
    decoder.lm_head = _LastPositionHead(decoder.lm_head)
    return decoder


class _Window:
    """The token sequences being decoded and the KV cache over their last `block_size` tokens."""

    def __init__(self, model: Model, prompt: torch.Tensor, new_tokens: int) -> None:
        self.model = model
        block_size = model.config.block_size
        self.keep = block_size - block_size // 4  # tokens kept when the window slides (module docstring)
        self.cache = model.new_kv_cache(prompt.shape[0], max_len=min(block_size, prompt.shape[1] + new_tokens))
        self.tokens = prompt  # (B, L): every token so far, prompt included
        self.logits = self._forward(prompt[:, -block_size:])

    def _forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx, kv_cache=self.cache)[0][:, -1].float()  # (B, V)

    def append(self, next_tokens: torch.Tensor) -> None:
        """Feed next_tokens (B,), one per sequence; self.logits then predicts the token after them."""
        column = next_tokens.view(-1, 1)
        self.tokens = torch.cat([self.tokens, column], dim=1)
        if self.cache.length == self.cache.max_len:
            self.cache.reset()
            self.logits = self._forward(self.tokens[:, -self.keep:])
        else:
            self.logits = self._forward(column)

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep sequences `rows` (with repeats): beam search's surviving hypotheses."""
        self.tokens = self.tokens[rows]
        self.logits = self.logits[rows]
        self.cache.reorder(rows)


def check_prompt(prompt: list[int], vocab_size: int) -> None:
    """Refuse (UserError) an empty prompt or token ids outside the model's vocabulary."""
    if not prompt:
        raise UserError("the prompt is empty; give at least one token of text")
    require_token_ids_within(max(prompt), vocab_size, "the prompt", smallest=min(prompt))


def _prompt_tensor(model: Model, prompt: list[int]) -> torch.Tensor:
    check_prompt(prompt, model.config.vocab_size)
    return torch.tensor([prompt], dtype=torch.long, device=model.token_embedding.weight.device)


@torch.inference_mode()
def sample_tokens(model: Model, prompt: list[int], max_new_tokens: int, sampling: SamplingConfig,
                  generator: Optional[torch.Generator] = None, stop_at_eos: bool = True) -> Iterator[int]:
    """Yield up to `max_new_tokens` new token ids one at a time; stop after `<|endoftext|>` if stop_at_eos."""
    if max_new_tokens < 1:
        return
    window = _Window(model, _prompt_tensor(model, prompt), max_new_tokens)
    for step in range(max_new_tokens):
        token = pick_next_token(window.logits[0], sampling, generator)
        yield token
        if (stop_at_eos and token == EOT_ID) or step == max_new_tokens - 1:
            return
        window.append(torch.tensor([token], device=window.tokens.device))


@torch.inference_mode()
def beam_search(model: Model, prompt: list[int], max_new_tokens: int, num_beams: int, stop_at_eos: bool = True,
                length_penalty: float = 1.0) -> list[int]:
    """The new tokens of the best hypothesis of a deterministic beam search, as Hugging Face's
    `generate(do_sample=False, num_beams=num_beams)` with its defaults (early_stopping=False) finds them.

    Each step ranks every one-token extension of the running hypotheses by summed log-probability and keeps
    the best `2 * num_beams` (`num_beams` when EOS is ignored). Those among the first `num_beams` that end
    with `<|endoftext|>` are finished, scored sum / length ** length_penalty, length counting new tokens;
    the best `num_beams` that do not end with it keep running. The search stops after `max_new_tokens`
    (the running hypotheses are then finished too) or once `num_beams` hypotheses are finished and the best
    running one, scored at its current length, cannot beat the worst of them.
    """
    if max_new_tokens < 1:
        return []
    window = _Window(model, _prompt_tensor(model, prompt), max_new_tokens)
    vocab_size = window.logits.shape[-1]
    width = 2 * num_beams if stop_at_eos else num_beams
    running_scores = torch.zeros(1, device=window.logits.device)  # summed log-probabilities of the new tokens
    running: list[list[int]] = [[]]
    finished: list[tuple[float, list[int]]] = []
    for length in range(1, max_new_tokens + 1):
        check_finite(window.logits)
        scores = running_scores[:, None] + torch.log_softmax(window.logits, dim=-1)  # (beams, V)
        top_scores, top_indices = torch.topk(scores.view(-1), min(width, scores.numel()))
        candidates = [(float(score), index // vocab_size, index % vocab_size)
                      for score, index in zip(top_scores.tolist(), top_indices.tolist())]
        last_step = length == max_new_tokens
        for score, beam, token in candidates[:num_beams]:
            if last_step or (stop_at_eos and token == EOT_ID):
                finished.append((score / length ** length_penalty, running[beam] + [token]))
        finished = sorted(finished, key=lambda hypothesis: hypothesis[0], reverse=True)[:num_beams]
        if last_step:
            break
        survivors = [c for c in candidates if not (stop_at_eos and c[2] == EOT_ID)][:num_beams]
        running = [running[beam] + [token] for _, beam, token in survivors]
        running_scores = torch.tensor([score for score, _, _ in survivors], device=window.logits.device)
        device = window.tokens.device
        window.reorder(torch.tensor([beam for _, beam, _ in survivors], device=device))
        window.append(torch.tensor([token for _, _, token in survivors], device=device))
        best_possible = survivors[0][0] / length ** length_penalty
        if len(finished) == num_beams and best_possible <= finished[-1][0]:
            break
    return finished[0][1]


class Utf8Stream:
    """Token ids in, text out as soon as it is complete: a multi-byte character split across tokens is held
    back until its last byte arrives, so streamed pieces never split a character."""

    def __init__(self) -> None:
        self._tokenizer = get_tokenizer()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        return self._decoder.decode(self._tokenizer.decode_single_token_bytes(token))

    def flush(self) -> str:
        """What is left at the end (an unfinished character becomes U+FFFD)."""
        return self._decoder.decode(b"", final=True)


@dataclass
class Completion:
    prompt: str
    text: str  # the new text, without the final <|endoftext|>
    token_ids: list[int]  # the new tokens, including a final <|endoftext|>
    ended_with_eos: bool
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return len(self.token_ids) / self.seconds if self.seconds > 0 else 0.0


def complete(model: Model, prompt: str, max_new_tokens: int, sampling: SamplingConfig, num_beams: int = 1,
             generator: Optional[torch.Generator] = None, stop_at_eos: bool = True,
             on_text: Optional[Callable[[str], None]] = None) -> Completion:
    """Continue `prompt`, calling on_text with each new piece of text as soon as it is decoded.

    With num_beams > 1 the sampling settings are unused (beam search is deterministic) and the text
    arrives in one piece at the end.
    """
    prompt_ids = get_tokenizer().encode_ordinary(prompt)
    started = time.perf_counter()
    if num_beams > 1:
        tokens: Iterator[int] = iter(beam_search(model, prompt_ids, max_new_tokens, num_beams, stop_at_eos))
    else:
        tokens = sample_tokens(model, prompt_ids, max_new_tokens, sampling, generator, stop_at_eos)
    stream = Utf8Stream()
    new_ids: list[int] = []
    pieces: list[str] = []
    for token in tokens:
        new_ids.append(token)
        if not (stop_at_eos and token == EOT_ID):
            pieces.append(stream.push(token))
            if on_text is not None and pieces[-1]:
                on_text(pieces[-1])
    pieces.append(stream.flush())
    if on_text is not None and pieces[-1]:
        on_text(pieces[-1])
    ended_with_eos = stop_at_eos and bool(new_ids) and new_ids[-1] == EOT_ID
    return Completion(prompt, "".join(pieces), new_ids, ended_with_eos, time.perf_counter() - started)
