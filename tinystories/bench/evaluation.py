"""The evaluation section: tokens/s of an inference-mode forward with the loss, ours against Hugging Face."""
from __future__ import annotations

import torch

from model.model import Model
from tinystories.bench.harness import HF_MODEL, Contender, Figure, Settings, compared, hf_twin, interleave, random_batch
from tinystories.hardware import (
    autocast,
)


def evaluation_figures(settings: Settings, rounds: int, seed: int) -> list[Figure]:
    """Tokens/s of an inference-mode forward and mean loss over a batch, as training's evaluation runs it."""
    torch.manual_seed(seed)
    ours = Model(settings.model_config).to(settings.device).eval()
    hf = hf_twin(ours)
    x, y = random_batch(settings, torch.Generator().manual_seed(seed))

    @torch.inference_mode()
    def ours_forward() -> None:
        for _ in range(settings.steps):
            with autocast(settings.device, settings.dtype):
                ours(x, y, return_logits=False)

    @torch.inference_mode()
    def hf_forward() -> None:
        for _ in range(settings.steps):
            with autocast(settings.device, settings.dtype):
                hf(input_ids=x, labels=y)

    tokens = settings.steps * settings.batch_size * settings.seq_len
    rates, _ = interleave([Contender("ours", ours_forward, tokens), Contender(HF_MODEL, hf_forward, tokens)],
                          rounds, settings.device, "evaluation")
    return compared("evaluation", "tokens/s", rates, HF_MODEL, "HF")
