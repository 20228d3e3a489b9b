"""The model a decoder runs: a copy of the trained model for generation only, in a chosen weight format."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from model.model import Model
from tinystories.errors import UserError
from tinystories.generation.weight_formats import (
    WEIGHT_FORMATS,
    Int8Linear,
    can_pack,
    float32_decoder,
    replace_linears,
    step_decoder,
)


class _LastPositionHead(nn.Module):
    """The output layer applied to the last position only: decoding needs no other logits, and a prefill
    of hundreds of tokens would otherwise spend most of its time on unused (T, vocab_size) logits."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x[:, -1:])


def decoding_model(model: Model, weight_format: str = "float32") -> Model:
    """A copy of `model` for generation only: forward returns the logits of the last position, (B, 1, V).

    float32: on the CPU each step of a lone sequence is one call of this project's kernel and the rest runs on
    weights prepacked for oneDNN; logits agree with `model` to float rounding. float16 and int8 (CPU only): the
    weights of the linear layers in fewer bytes, products in float32 (tinystories.generation.weight_formats).
    """
    if weight_format not in WEIGHT_FORMATS:
        raise UserError(f"--precision must be one of {', '.join(WEIGHT_FORMATS)}, got {weight_format!r}")
    decoder = copy.deepcopy(model).eval()
    weight = decoder.token_embedding.weight
    if weight_format != "float32" and weight.device.type != "cpu":
        raise UserError(f"--precision {weight_format} runs on the CPU only (use --device cpu, or float32 on GPUs)")
    if weight_format != "float32" and weight.dtype != torch.float32:
        dtype = str(weight.dtype).removeprefix("torch.")
        raise UserError(f"--precision {weight_format} needs a float32 model, not {dtype}")
    if weight_format == "float16":
        decoder = step_decoder(decoder, "float16")
    elif weight_format == "int8":
        replace_linears(decoder, Int8Linear)
    elif can_pack(decoder):  # float32 on the CPU
        decoder = float32_decoder(decoder)
    decoder.lm_head = _LastPositionHead(decoder.lm_head)
    return decoder
