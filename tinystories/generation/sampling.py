"""Choosing the next token: temperature, top-k and top-p sampling settings, and the pickers that apply them
to one row of logits or to a batch of rows at once."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Union

import torch

from tinystories.checks import require_token_ids_within
from tinystories.errors import UserError

NON_FINITE_OUTPUTS = ("the model produces non-finite values (NaN or infinity) for this text, so nothing can be "
                      "sampled; its weights are broken (use an earlier checkpoint)")
# Logits no larger than this many times the temperature stay finite in float32 when divided by it (float32's
# largest value is just below 2 ** 128); a temperature must also be a normal float32 number, since a smaller one
# rounds to 0 (or loses precision) when the division casts it. Ordinary settings are far inside both bounds.
_DIVIDES_SAFELY = 2.0 ** 127
_SMALLEST_TEMPERATURE = torch.finfo(torch.float32).tiny  # about 1.2e-38


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
    return _distribution(logits, sampling, _largest_magnitude(logits))


def _distribution(logits: torch.Tensor, sampling: SamplingConfig, magnitude: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """next_token_distribution for logits (V,) whose largest absolute value is `magnitude`."""
    scores = _divided(logits.float(), sampling.temperature, magnitude)
    if 0 < sampling.top_k < scores.numel():
        kth_best = torch.topk(scores, sampling.top_k, sorted=False).values.min()
        ids = torch.nonzero(scores >= kth_best).squeeze(1)
    else:
        ids = torch.arange(scores.numel(), device=scores.device)
    return _nucleus(scores[ids][None], ids[None], [sampling])[0]


def _divides_safely(magnitude: float, temperature: float) -> bool:
    """Whether logits no larger than `magnitude` (in absolute value) stay finite divided by `temperature`."""
    return temperature >= _SMALLEST_TEMPERATURE and magnitude <= _DIVIDES_SAFELY * temperature


def _divided(logits: torch.Tensor, temperature: float, magnitude: float) -> torch.Tensor:
    """The scores logits / temperature, for float32 logits (V,) whose largest absolute value is `magnitude`.

    A temperature so small that the division would overflow (below about 1e-38 for ordinary logits), which
    softmax would turn into NaN, divides the logits less their maximum instead: the best tokens score 0 and the
    others far below (or minus infinity), so the tokens tied for the best share the probability, which is
    what the distribution tends to as the temperature goes to 0. Every other temperature divides as it always has.
    """
    if _divides_safely(magnitude, temperature):
        return logits / temperature
    return (logits - logits.max()) / max(temperature, _SMALLEST_TEMPERATURE)


def _nucleus(scores: torch.Tensor, ids: torch.Tensor, samplings: list[SamplingConfig]
             ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each row of candidates ids (R, k), ascending, with their scores (R, k): the ids sorted by score and
    their softmax, then cut to the most likely whose probability reaches the row's top_p and renormalised.
    The sort, softmax and running sums are done for all rows in one call each."""
    sorted_scores, order = scores.sort(dim=1, descending=True)
    ids = ids.gather(1, order)
    probabilities = torch.softmax(sorted_scores, dim=1)
    top_p = torch.tensor([sampling.top_p for sampling in samplings], device=scores.device)
    keep = probabilities.cumsum(dim=1) - probabilities < top_p[:, None]
    keep[:, 0] = True  # the most likely token always stays, even for a top_p that rounds to 0 in float32
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
    _largest_magnitude(logits)


def _largest_magnitude(logits: torch.Tensor) -> float:
    """The largest absolute value among the logits, once they are known to be finite (check_finite)."""
    # The extremes are NaN or infinite exactly when some logit is, and cost a tenth of isfinite(...).all().
    lowest, highest = (float(extreme) for extreme in torch.aminmax(logits.float()))
    if not (math.isfinite(lowest) and math.isfinite(highest)):
        raise UserError(NON_FINITE_OUTPUTS)
    return max(-lowest, highest)


def pick_next_token(logits: torch.Tensor, sampling: SamplingConfig, generator: Optional[torch.Generator]) -> int:
    """The next token for logits (V,): the argmax at temperature 0, else a draw from next_token_distribution."""
    magnitude = _largest_magnitude(logits)
    if sampling.temperature == 0.0:
        return int(logits.argmax())
    ids, probabilities = _distribution(logits, sampling, magnitude)
    return int(ids[torch.multinomial(probabilities, 1, generator=generator)])


def pick_next_tokens(logits: torch.Tensor, samplings: list[SamplingConfig],
                     generators: list[Optional[torch.Generator]]) -> list[Union[int, Exception]]:
    """pick_next_token for each row of logits (B, V), with its own settings and generator: the same tokens,
    but the work over the whole vocabulary (argmax, top-k) is done for all rows in one call each.

    A row whose own picking fails (its logits are not finite, its draw raises) gets the exception in place of
    a token, and the other rows still get theirs; no row draws twice. A failure of the work shared by several
    rows (the batched argmax or top-k) raises.
    """
    if len(samplings) == 1:  # one sequence: the batched bookkeeping below would only add overhead
        return [_pick_alone(logits[0], samplings[0], generators[0])]
    tokens: list[Union[int, Exception, None]] = [None] * len(samplings)
    try:
        magnitude = _largest_magnitude(logits)
    except UserError:  # some row is not finite: every row is checked and picked alone below, so only those fail
        magnitude = math.inf
    greedy = [row for row, sampling in enumerate(samplings) if sampling.temperature == 0.0]
    if greedy and math.isfinite(magnitude):
        for row, token in zip(greedy, logits[greedy].argmax(dim=1).tolist()):
            tokens[row] = token
    vocab_size = logits.shape[1]
    # Rows whose temperature would overflow the division (and rows of a batch with non-finite logits) pick alone.
    batched = [row for row, s in enumerate(samplings)
               if s.temperature > 0 and 0 < s.top_k < vocab_size and _divides_safely(magnitude, s.temperature)]
    for top_k in {samplings[row].top_k for row in batched}:
        rows = [row for row in batched if samplings[row].top_k == top_k]
        selected = logits if len(rows) == len(samplings) else logits[rows]  # indexing copies every row
        settings = [samplings[row] for row in rows]
        ids, scores, ties = _top_k_candidates(selected, settings, top_k)
        for row, tie, (candidates, probabilities) in zip(rows, ties, _nucleus(scores, ids, settings)):
            if not tie:
                try:
                    tokens[row] = int(candidates[torch.multinomial(probabilities, 1, generator=generators[row])])
                except Exception as error:  # this row's draw: it alone fails
                    tokens[row] = error
    # Top-k disabled, a tie at the k-th place, a tiny temperature: the single-row path.
    return [_pick_alone(logits[row], samplings[row], generators[row]) if token is None else token
            for row, token in enumerate(tokens)]


def _pick_alone(logits: torch.Tensor, sampling: SamplingConfig, generator: Optional[torch.Generator]
                ) -> Union[int, Exception]:
    """pick_next_token, or the exception it raised."""
    try:
        return pick_next_token(logits, sampling, generator)
    except Exception as error:
        return error


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


def check_prompt(prompt: list[int], vocab_size: int) -> None:
    """Refuse (UserError) an empty prompt or token ids outside the model's vocabulary."""
    if not prompt:
        raise UserError("the prompt is empty; give at least one token of text")
    require_token_ids_within(max(prompt), vocab_size, "the prompt", smallest=min(prompt))
