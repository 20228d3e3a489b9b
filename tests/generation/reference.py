"""A cache-free reference decoder that the engine is checked against, and the engine run on one prompt.

The reference runs the model over the whole window again at every step, following the sliding-window rule as
tinystories/generation/window.py describes it (written out here, not called), and picks each token with
pick_next_token: greedy at temperature 0, else a draw from the given generator.
"""
from typing import Optional

import torch

from model.model import Model
from tinystories.generation.engine import Engine
from tinystories.generation.requests import GenerationRequest
from tinystories.generation.sampling import SamplingConfig, pick_next_token
from tinystories.tokenizer import EOT_ID

GREEDY = SamplingConfig(temperature=0.0)


@torch.no_grad()
def reference_decode(model: Model, prompt: list[int], steps: int, sampling: SamplingConfig = GREEDY,
                     generator: Optional[torch.Generator] = None, stop_at_eos: bool = False) -> list[int]:
    block_size = model.config.block_size
    keep = block_size - block_size // 4
    device = model.token_embedding.weight.device
    tokens = list(prompt)
    start = max(0, len(tokens) - block_size)
    for _ in range(steps):
        if len(tokens) - start > block_size:  # the window is full: keep its last 3/4
            start = len(tokens) - keep
        logits = model(torch.tensor([tokens[start:]], device=device))[0][0, -1]
        tokens.append(pick_next_token(logits, sampling, generator))
        if stop_at_eos and tokens[-1] == EOT_ID:
            break
    return tokens[len(prompt):]


def engine_decode(model: Model, prompt: list[int], steps: int, sampling: SamplingConfig = GREEDY,
                  seed: Optional[int] = None, stop_at_eos: bool = False) -> list[int]:
    """The new tokens the engine gives one prompt decoded alone (its generator seeded with `seed`)."""
    request = GenerationRequest(prompt, steps, sampling, seed=seed, stop_at_eos=stop_at_eos)
    [result] = Engine(model, max_batch=1).generate([request])
    return result.token_ids
