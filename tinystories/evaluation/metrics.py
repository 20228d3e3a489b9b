"""Evaluation: the exact loss of a model on a token stream, and offline measures of its generated text.

Loss. The stream (stories in order, each followed by <|endoftext|>) is cut into windows of `block_size`
inputs (512, or the model's context if smaller) starting every `block_size` tokens; each input predicts the
next token, so every token after the first is scored exactly once, seeing between 1 and block_size tokens of
its window. The last window is shorter when block_size does not divide the length. With N scored tokens:
    loss = (1/N) * sum of -ln p(token | the tokens before it in its window)    (nats per token)
    perplexity = exp(loss)
    bits per byte = N * loss / (ln 2 * B)    B = UTF-8 bytes of the scored tokens' text
Bits per byte does not depend on the tokenizer. <|endoftext|> counts as one byte (it stands for the
separator between stories).

Generation quality (the paper graded stories with GPT-4; these need no network). Completions are split
into words: lowercase runs of letters, digits, underscores and apostrophes.
    distinct-n    = distinct n-grams over all completions / n-grams over all completions
    repetition-n  = n-gram occurrences whose n-gram occurs more than once in the same completion
                    / n-gram occurrences, both summed over all completions
"""
from __future__ import annotations

import functools
import math
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Iterator, Sequence, Union

import numpy as np
import torch
from tqdm import tqdm

from tinystories.checks import require_token_ids_within
from tinystories.errors import UserError
from tinystories.evaluation.subjects import Subject
from tinystories.tokenizer import EOT_ID, get_tokenizer

SCAN_CHUNK = 1 << 22  # tokens read at a time when scanning a memory-mapped split


class ConcatenatedTokens:
    """Several token arrays read as one stream (split "all"), without copying them into memory."""

    def __init__(self, parts: Sequence[np.ndarray]) -> None:
        self.parts = list(parts)
        self.starts = np.cumsum([0] + [len(part) for part in self.parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index: slice) -> np.ndarray:
        start, stop, _ = index.indices(len(self))
        pieces = [part[max(start - offset, 0):max(stop - offset, 0)]
                  for part, offset in zip(self.parts, self.starts[:-1])]
        return np.concatenate(pieces)


Tokens = Union[np.ndarray, ConcatenatedTokens]


def _chunks(tokens: Tokens) -> Iterator[tuple[int, np.ndarray]]:
    for start in range(0, len(tokens), SCAN_CHUNK):
        yield start, np.asarray(tokens[start:start + SCAN_CHUNK])


def first_stories(tokens: Tokens, count: int) -> Tokens:
    """The stream up to and including the `count`-th <|endoftext|> (all of it if it has fewer stories)."""
    found = 0
    for start, chunk in _chunks(tokens):
        ends = np.flatnonzero(chunk == EOT_ID)
        if found + len(ends) >= count:
            return tokens[:start + int(ends[count - found - 1]) + 1]
        found += len(ends)
    return tokens


def count_stories(tokens: Tokens) -> int:
    """Stories in the stream: its <|endoftext|> tokens, plus one for an unterminated last story."""
    ends = sum(int(np.count_nonzero(chunk == EOT_ID)) for _, chunk in _chunks(tokens))
    unterminated = len(tokens) > 0 and int(tokens[len(tokens) - 1:][0]) != EOT_ID
    return ends + int(unterminated)


def story_texts(tokens: Tokens, count: int) -> list[str]:
    """The text of the first `count` stories of the stream."""
    stories = np.asarray(first_stories(tokens, count))
    ends = np.flatnonzero(stories == EOT_ID)
    starts = np.concatenate([[0], ends + 1])
    tokenizer = get_tokenizer()
    return [tokenizer.decode(stories[start:end].tolist()) for start, end in zip(starts, ends)][:count]


@functools.lru_cache(maxsize=1)
def _token_byte_lengths() -> np.ndarray:
    tokenizer = get_tokenizer()
    lengths = np.array([len(tokenizer.decode_single_token_bytes(i)) for i in range(tokenizer.n_vocab)], dtype=np.int64)
    lengths[EOT_ID] = 1
    return lengths


def byte_count(tokens: Tokens) -> int:
    """UTF-8 bytes of the tokens' text, <|endoftext|> counting as one."""
    lengths = _token_byte_lengths()
    return sum(int(lengths[chunk].sum()) for _, chunk in _chunks(tokens))


@dataclass
class LossResult:
    nll: float  # summed cross-entropy of the scored tokens, in nats
    tokens: int  # scored tokens: every token of the stream after the first
    bytes: int  # UTF-8 bytes of the scored tokens
    batch_size: int  # windows per forward actually used (halved from the requested size while memory ran out)
    seconds: float

    @property
    def loss(self) -> float:
        return self.nll / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def bits_per_byte(self) -> float:
        return self.nll / (math.log(2) * self.bytes)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def _is_out_of_memory(error: RuntimeError) -> bool:
    message = str(error).lower()
    return "out of memory" in message or "can't allocate memory" in message


def _windows_nll(subject: Subject, chunk: np.ndarray, rows: int, length: int) -> float:
    """Summed cross-entropy of `rows` windows of `length` inputs laid end to end in chunk (rows*length + 1)."""
    require_token_ids_within(int(chunk.max()), subject.vocab_size, "the data")
    data = torch.from_numpy(chunk.astype(np.int64)).to(subject.device)
    inputs, targets = data[:-1].view(rows, length), data[1:].view(rows, length)
    # Per-token losses are summed in float64 so the total does not depend on how the stream was batched.
    nll = subject.token_losses(inputs, targets).double().sum().item()
    if not math.isfinite(nll):
        raise UserError("the model produces non-finite values (NaN or infinity) on this data, so its loss is "
                        f"{nll}; its weights are broken (use an earlier checkpoint)")
    return nll


@torch.inference_mode()
def stream_loss(subject: Subject, tokens: Tokens, batch_size: int, progress: bool = True) -> LossResult:
    """The exact loss of `subject` on the stream (module docstring), in batches of up to batch_size windows
    of subject.block_size inputs."""
    length = len(tokens)
    if length < 2:
        raise UserError("the data has fewer than 2 tokens; there is nothing to score")
    block_size = subject.block_size
    whole_windows, tail = divmod(length - 1, block_size)
    started = time.perf_counter()
    nll, window = 0.0, 0
    with tqdm(total=length - 1, unit="tok", unit_scale=True, desc="loss", disable=not progress) as bar:
        while window < whole_windows:
            rows = min(batch_size, whole_windows - window)
            chunk = np.asarray(tokens[window * block_size:(window + rows) * block_size + 1])
            try:
                nll += _windows_nll(subject, chunk, rows, block_size)
            except RuntimeError as error:
                if not _is_out_of_memory(error) or batch_size == 1:
                    raise
                batch_size //= 2  # the largest batch that fits: halve and retry these windows
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            window += rows
            bar.update(rows * block_size)
        if tail:
            nll += _windows_nll(subject, np.asarray(tokens[whole_windows * block_size:]), 1, tail)
            bar.update(tail)
    seconds = time.perf_counter() - started
    scored_bytes = byte_count(tokens) - byte_count(tokens[:1])  # the first token is context only
    return LossResult(nll, length - 1, scored_bytes, batch_size, seconds)


WORD = re.compile(r"[\w']+")
SENTENCE_END = re.compile(r"[.!?][\"'\u201d\u2019]?(?=\s|$)")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def first_sentence(story: str) -> str:
    """The story up to its first sentence end (. ! or ?, with a closing quote), else its first ten words."""
    story = story.strip()
    match = SENTENCE_END.search(story)
    if match is None:
        return " ".join(story.split()[:10])
    return story[:match.end()]


def _ngrams(sequence: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(sequence[i:i + n]) for i in range(len(sequence) - n + 1)]


def distinct_n(texts: list[list[str]], n: int) -> float:
    """Distinct n-grams / n-grams, over all texts together (0 when there are no n-grams)."""
    grams = [gram for text in texts for gram in _ngrams(text, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_n(texts: list[list[str]], n: int) -> float:
    """Fraction of n-gram occurrences whose n-gram occurs more than once within the same text."""
    repeated = total = 0
    for text in texts:
        counts = Counter(_ngrams(text, n))
        total += sum(counts.values())
        repeated += sum(count for count in counts.values() if count > 1)
    return repeated / total if total else 0.0


def generation_quality(completions: list[str], new_tokens: list[int], ended_with_eos: list[bool]) -> dict[str, float]:
    """distinct-1/2/3 and repetition-4 of the completions' words, their mean length in new tokens (the
    final <|endoftext|> not counted) and the fraction that ended with <|endoftext|>."""
    if not completions:
        raise ValueError("no completions to measure")
    texts = [words(text) for text in completions]
    lengths = [count - int(ended) for count, ended in zip(new_tokens, ended_with_eos)]
    return {
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "distinct_3": distinct_n(texts, 3),
        "repetition_4": repetition_n(texts, 4),
        "mean_new_tokens": sum(lengths) / len(lengths),
        "eos_fraction": sum(ended_with_eos) / len(ended_with_eos),
    }
