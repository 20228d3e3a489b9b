"""Decoding weight formats, as the linear layers of a decoder: float32 (exact, the default), float16 weights and
int8 weight-only products.

One decoded token reads every weight once, so on a CPU its time is mostly memory traffic. On the CPU, float32
and float16 decoders are StepDecoders: each step of single-stream decoding is one call of this project's
kernel (tinystories/generation/kernels/decoding.cpp), which streams the weights at the memory's speed, and Model's
modules do the rest (prompts, batches). float32 prepacks the weights for oneDNN for the rest; where the
kernel cannot be built, it does everything so, more slowly. The other modes store the matrices of the linear
layers in fewer bytes, while activations, sums, norms, attention and the token embedding stay float32:
- float16: each weight rounded to the nearest float16; half the bytes. The kernel converts weights to float32
  as it streams them, in the products of a step and in those of up to KERNEL_ROWS rows.
- int8: one float32 scale per output row, rows rounded symmetrically, w ≈ round(w / s) * s with
  s = max|w_row| / 127; a quarter of the bytes. Products by `aten._weight_int8pack_mm`.

`rounded_copy` gives a float32 Model whose matrices hold exactly the rounded values, so evaluate.py measures
the loss each decoder computes (docs/benchmarks.md gives the measured costs). bfloat16 is not offered: in the
same bytes float16 keeps 3 more bits of every weight, and trained weights are far inside its range.
"""
from __future__ import annotations

import copy
import functools
import sys
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.model import AnyKVCache, KVCache, Model, SlotKVCache
from tinystories.errors import UserError
from tinystories.generation.cpu_kernels import kernels

WEIGHT_FORMATS = ("float32", "float16", "int8")
WEIGHT_FORMAT_HELP = ("decoding precision: float32 (exact), float16 (weights in float16, sums in float32; CPU, the "
                  "fastest) or int8 (weight-only int8 products, CPU); both cost a little loss, measured in "
                  "docs/benchmarks.md")
# Rows up to this many go to the kernel (it reads each weight once for all of them); longer inputs (a prompt)
# to a float32 product of the weights converted once, which compilers' matrix-matrix kernels do faster.
KERNEL_ROWS = 16


def int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 values, float32 scale per row) of an (out, in) weight, rounded symmetrically per row."""
    weight = weight.detach().float()
    scales = weight.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127
    return torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8), scales


class PackedLinear(nn.Module):
    """nn.Linear with its weight prepacked for oneDNN: on the CPU, a one-row product reads the weight at
    close to memory bandwidth, where the default BLAS call runs on one thread at a third of it. With `kernel`,
    it also keeps the plain weight, and a one-row product (a step of single-stream decoding) is this
    project's kernel's, which reads it faster still."""

    def __init__(self, linear: nn.Linear, kernel: bool = False) -> None:
        super().__init__()
        self.weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1)
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.plain_weight = linear.weight.detach() if kernel else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.plain_weight is not None and x.numel() == x.shape[-1]:
            rows = kernels().linear(x.reshape(1, -1).contiguous(), self.plain_weight, self.bias)
            return rows.view(*x.shape[:-1], self.plain_weight.shape[0])
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


class Int8Linear(nn.Module):
    """nn.Linear with an int8 weight and per-row scales, multiplied by `aten._weight_int8pack_mm`."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        values, scales = int8_rows(linear.weight)
        self.register_buffer("weight", values)
        self.register_buffer("scales", scales)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, x.shape[-1]), self.weight, self.scales)
        if self.bias is not None:
            rows = rows + self.bias
        return rows.view(*x.shape[:-1], self.weight.shape[0])


class Float16Linear(nn.Module):
    """nn.Linear with a float16 weight and float32 everything else; on the CPU."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().to(torch.float16).contiguous()
        if not torch.isfinite(weight).all() and torch.isfinite(linear.weight).all():
            raise UserError(f"a weight exceeds float16's range (largest {torch.finfo(torch.float16).max:.0f}); "
                            f"use --precision float32")
        self.register_buffer("weight", weight)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] <= KERNEL_ROWS:
            out = kernels().linear(rows.contiguous(), self.weight, self.bias)
        else:
            out = F.linear(rows, self.weight.float(), self.bias)
        return out.view(*x.shape[:-1], self.weight.shape[0])


class StepDecoder(Model):
    """A Model with Float16Linear or PackedLinear(kernel=True) layers whose hidden_states, for one new token of
    one sequence through a cache (each step of single-stream decoding), is one call of the kernel's decode_step;
    other inputs take Model's path through the same weights."""

    def hidden_states(self, idx: torch.Tensor, kv_cache: Optional[AnyKVCache] = None) -> torch.Tensor:
        row = _single_step_row(idx, kv_cache)
        if row is None:
            return super().hidden_states(idx, kv_cache)
        position = int(kv_cache.positions(1, idx.device)[0])
        hidden = kernels().decode_step(
            int(idx[0, 0]), position, row, self.token_embedding.weight, self.position_embedding.weight,
            self._step_tensors, self.final_norm.weight, _or_zeros(self.final_norm.bias, self.final_norm.weight),
            kv_cache.keys, kv_cache.values, self.config.n_head, self.config.layer_norm_epsilon,
            self.config.activation == "gelu_new")
        kv_cache.advance(1)
        return hidden.view(1, 1, -1)

    @functools.cached_property
    def _step_tensors(self) -> list[torch.Tensor]:
        """Each block's weights in decode_step's order, absent biases as zeros (gathering them takes 0.15 ms)."""
        tensors = []
        for block in self.blocks:
            for module in (block.attn_norm, block.attn.qkv, block.attn.out_proj, block.mlp_norm, block.mlp.fc,
                           block.mlp.proj):
                weight = module.plain_weight if isinstance(module, PackedLinear) else module.weight
                tensors += [weight, _or_zeros(module.bias, weight)]
        return tensors

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> StepDecoder:
        self.__dict__.pop("_step_tensors", None)  # .to(), .float() and the like replace tensors: gather again
        return super()._apply(fn, recurse)


def _or_zeros(bias: Optional[torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    return torch.zeros(weight.shape[0]) if bias is None else bias


def _single_step_row(idx: torch.Tensor, kv_cache: Optional[AnyKVCache]) -> Optional[int]:
    """The cache row that idx, one token, continues, if decode_step can take it; else None."""
    if idx.shape != (1, 1) or kv_cache is None or kv_cache.keys.dtype != torch.float32:
        return None
    if isinstance(kv_cache, KVCache) and kv_cache.keys.shape[1] == 1 and kv_cache.length < kv_cache.max_len:
        return 0
    if isinstance(kv_cache, SlotKVCache) and len(kv_cache.decoding) == 1 and not kv_cache.starting:
        return kv_cache.decoding[0]
    return None


STEP_LINEARS: dict[str, Callable[[nn.Linear], nn.Module]] = {
    "float32": functools.partial(PackedLinear, kernel=True), "float16": Float16Linear}


def step_decoder(model: Model, weight_format: str) -> Model:
    """`model` (a copy to keep) turned into a StepDecoder of `weight_format`, float32 or float16. UserError if the
    kernels cannot be built."""
    kernels()  # built (or loaded) now, not during the first token
    replace_linears(model, STEP_LINEARS[weight_format])
    model.__class__ = StepDecoder  # the same modules and parameters, one method more
    return model


def float32_decoder(model: Model) -> Model:
    """`model` (a copy to keep, float32 on the CPU) as a float32 StepDecoder; where the kernels cannot be
    built, with PackedLinear layers only, as fast as before the kernels existed, after one note on stderr."""
    try:
        return step_decoder(model, "float32")
    except UserError as error:
        _note_once(f"note: decoding without this project's CPU kernel, more slowly: {error}")
        replace_linears(model, PackedLinear)
        return model


@functools.cache
def _note_once(line: str) -> None:
    print(line, file=sys.stderr)


def can_pack(model: Model) -> bool:
    """Whether oneDNN can prepack the float32 CPU model's linear layers."""
    weight = model.token_embedding.weight
    return (weight.device.type == "cpu" and weight.dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def replace_linears(model: Model, make: Callable[[nn.Linear], nn.Module]) -> None:
    """Replace every nn.Linear of `model` (the output layer included) by make(it), in place."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, make(child))


def rounded(weight: torch.Tensor, weight_format: str) -> torch.Tensor:
    """The float32 values a `weight_format` decoder multiplies by in place of `weight`."""
    if weight_format == "float16":
        return weight.detach().to(torch.float16).float()
    values, scales = int8_rows(weight)
    return values.float() * scales[:, None]


def rounded_copy(model: Model, weight_format: str) -> Model:
    """A float32 model computing what the `weight_format` decoder of `model` computes, for measuring the loss:
    `model` itself for float32; otherwise a copy with every matrix of a linear layer rounded and converted back,
    its output layer untied from the token embedding (the decoder rounds the output layer but reads
    embedding rows in float32)."""
    if weight_format == "float32":
        return model
    copied = copy.deepcopy(model).eval()
    with torch.no_grad():
        copied.lm_head.weight = nn.Parameter(copied.lm_head.weight.clone())
        for module in copied.modules():
            if isinstance(module, nn.Linear):
                module.weight.copy_(rounded(module.weight, weight_format))
    return copied
