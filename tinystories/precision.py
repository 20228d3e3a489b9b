"""Decoding precisions: float32 (exact, the default) and int8 weight-only products.

One decoded token reads every weight once, so on a CPU its time is mostly memory traffic; storing the
matrices as int8 with one float32 scale per output row reads a quarter of the bytes, while activations,
norms, attention and the token embedding stay float32. Rows are rounded symmetrically:
w ≈ round(w / s) * s with s = max|w_row| / 127.

`rounded_copy` gives a float32 Model whose matrices hold exactly the rounded values, so evaluate.py measures
the loss an int8 decoder computes (docs/benchmarks.md gives the measured cost). bfloat16 is not offered: on
processors without bf16 instructions (AVX2 only, as the machine this was measured on) it is slower than
float32, and where they exist its cost could not be measured here.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from model.model import Model

PRECISIONS = ("float32", "int8")
PRECISION_HELP = ("decoding precision: float32 (exact) or int8 (weight-only int8 products, CPU: faster, "
                  "a small measured loss cost; see docs/benchmarks.md)")


def int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 values, float32 scale per row) of an (out, in) weight, rounded symmetrically per row."""
    weight = weight.detach().float()
    scales = weight.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127
    return torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8), scales


class Int8Linear(nn.Module):
    """nn.Linear with an int8 weight and per-row scales, multiplied by `aten._weight_int8pack_mm`."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        values, scales = int8_rows(weight)
        self.register_buffer("weight", values)
        self.register_buffer("scales", scales)
        self.register_buffer("bias", None if bias is None else bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, x.shape[-1]), self.weight, self.scales)
        if self.bias is not None:
            rows = rows + self.bias
        return rows.view(*x.shape[:-1], self.weight.shape[0])


def int8_linears(model: Model) -> None:
    """Replace every nn.Linear of `model` (the output layer included) by an Int8Linear, in place."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, Int8Linear(child.weight, child.bias))


def rounded_copy(model: Model, precision: str) -> Model:
    """A float32 model computing what the `precision` decoder of `model` computes, for measuring the loss:
    `model` itself for float32; for int8 a copy with every matrix of a linear layer rounded to int8 and back,
    its output layer untied from the token embedding (the decoder rounds the output layer but reads
    embedding rows in float32)."""
    if precision == "float32":
        return model
    rounded = copy.deepcopy(model).eval()
    with torch.no_grad():
        rounded.lm_head.weight = nn.Parameter(rounded.lm_head.weight.clone())
        for module in rounded.modules():
            if isinstance(module, nn.Linear):
                values, scales = int8_rows(module.weight)
                module.weight.copy_(values.float() * scales[:, None])
    return rounded
