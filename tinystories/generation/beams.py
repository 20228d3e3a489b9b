"""Beam search, as the paper evaluated with and Hugging Face's generate(num_beams=...) runs it.

The hypotheses share one KV cache of `num_beams` rows (two per beam while EOS ends some), reordered as the
best extensions survive; the cache follows window.py's sliding rule, as the engine's sequences do.
"""
from __future__ import annotations

import time

import torch

from model.model import Model
from tinystories.generation.requests import SequenceResult
from tinystories.generation.sampling import check_finite, check_prompt
from tinystories.generation.window import feed_start
from tinystories.tokenizer import EOT_ID, get_tokenizer


class _Beams:
    """The running hypotheses' tokens (prompt included) and their KV cache."""

    def __init__(self, model: Model, prompt: list[int], new_tokens: int) -> None:
        check_prompt(prompt, model.config.vocab_size)
        self.model = model
        self.block_size = model.config.block_size
        device = model.token_embedding.weight.device
        self.tokens = torch.tensor([prompt], dtype=torch.long, device=device)  # (beams, L)
        self.cache = model.new_kv_cache(1, max_len=min(self.block_size, len(prompt) + new_tokens))
        self.logits = self._feed()

    def _feed(self) -> torch.Tensor:
        """Feed what the window rule says; the logits (beams, V) that predict each hypothesis's next token."""
        start = feed_start(self.cache.length, self.tokens.shape[1], self.block_size)
        if self.cache.length == self.block_size:
            self.cache.reset()
        return self.model(self.tokens[:, start:], kv_cache=self.cache)[0][:, -1].float()

    def extend(self, rows: list[int], tokens: list[int]) -> None:
        """Keep hypotheses `rows` (with repeats), each extended by its token."""
        device = self.tokens.device
        index = torch.tensor(rows, device=device)
        self.cache.reorder(index)
        self.tokens = torch.cat([self.tokens[index], torch.tensor(tokens, device=device)[:, None]], dim=1)
        self.logits = self._feed()


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
    beams = _Beams(model, prompt, max_new_tokens)
    vocab_size = beams.logits.shape[-1]
    width = 2 * num_beams if stop_at_eos else num_beams
    running_scores = torch.zeros(1, device=beams.logits.device)  # summed log-probabilities of the new tokens
    running: list[list[int]] = [[]]
    finished: list[tuple[float, list[int]]] = []
    for length in range(1, max_new_tokens + 1):
        check_finite(beams.logits)
        scores = running_scores[:, None] + torch.log_softmax(beams.logits, dim=-1)  # (beams, V)
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
        running_scores = torch.tensor([score for score, _, _ in survivors], device=beams.logits.device)
        beams.extend([beam for _, beam, _ in survivors], [token for _, _, token in survivors])
        best_possible = survivors[0][0] / length ** length_penalty
        if len(finished) == num_beams and best_possible <= finished[-1][0]:
            break
    return finished[0][1]


def beam_complete(model: Model, prompt: str, max_new_tokens: int, num_beams: int,
                  stop_at_eos: bool = True) -> SequenceResult:
    """Continue `prompt` with beam_search; the result in the engine's shape (its text arrives in one piece)."""
    tokenizer = get_tokenizer()
    prompt_ids = tokenizer.encode_ordinary(prompt)
    started = time.perf_counter()
    new_ids = beam_search(model, prompt_ids, max_new_tokens, num_beams, stop_at_eos)
    ended = stop_at_eos and bool(new_ids) and new_ids[-1] == EOT_ID
    return SequenceResult(new_ids, tokenizer.decode(new_ids[:-1] if ended else new_ids), "stop" if ended else "length",
                          len(prompt_ids), time.perf_counter() - started, prompt=prompt)
