"""The TinyStories GPT: configuration, network and key/value cache.

Reading order: Config and its presets, KVCache, SlotKVCache, CausalSelfAttention, MLP, Block, Model.
This file holds the network only: no files, no tokenizer, no command line.
Shapes in comments: B batch, T new tokens, S cached + new tokens, C n_embd, H heads, D head size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.loss import output_cross_entropy

ACTIVATIONS = ("gelu", "gelu_new")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class Config:
    vocab_size: int = 50257
    block_size: int = 512
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.1
    bias: bool = True
    # "gelu" is exact GELU (the specification's); "gelu_new" is GPT-2's tanh approximation, so GPT-2 imports are exact.
    activation: str = "gelu"
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self) -> None:
        # Configs also come from files (checkpoints, Hugging Face config.json), so types are checked too.
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if not isinstance(self.bias, bool):
            raise ValueError(f"bias must be true or false, got {self.bias!r}")
        if not _is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not _is_number(self.layer_norm_epsilon) or not 0.0 < self.layer_norm_epsilon < math.inf:
            raise ValueError(f"layer_norm_epsilon must be a positive finite number, got {self.layer_norm_epsilon!r}")

    @property
    def ffn_size(self) -> int:
        return 4 * self.n_embd


# "33M" is the specification's architecture; the others keep tests and CPU experiments fast.
PRESETS: dict[str, Config] = {
    "33M": Config(),
    "small": Config(n_layer=4, n_head=4, n_embd=256, block_size=256),
    "tiny": Config(n_layer=2, n_head=2, n_embd=64, block_size=128),
    "nano": Config(n_layer=1, n_head=2, n_embd=32, block_size=64, vocab_size=512),
}


def preset(name: str, **overrides) -> Config:
    """A copy of the named preset with some fields replaced."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)


class KVCache:
    """Keys and values of every layer for incremental decoding, preallocated to `max_len` positions.

    One forward over a prefix and token-by-token forwards through the same cache give the same logits.
    """

    def __init__(self, config: Config, batch_size: int, max_len: Optional[int] = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        max_len = config.block_size if max_len is None else max_len
        if max_len > config.block_size:
            raise ValueError(f"max_len {max_len} exceeds block_size {config.block_size}")
        head_size = config.n_embd // config.n_head
        shape = (config.n_layer, batch_size, config.n_head, max_len, head_size)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.block_size = config.block_size
        self.length = 0  # positions filled so far, the same for every layer once a forward completes

    @property
    def max_len(self) -> int:
        return self.keys.shape[3]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new (B, H, T, D) keys and values of `layer`; return all keys and values so far."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} positions needed, {self.max_len} allocated")
        self.keys[layer, :, :, start:end] = k
        self.values[layer, :, :, start:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def reorder(self, batch_indices: torch.Tensor) -> None:
        """Keep rows `batch_indices` of the batch (beam search picks which hypotheses survive)."""
        self.keys = self.keys.index_select(1, batch_indices)
        self.values = self.values.index_select(1, batch_indices)

    def reset(self) -> None:
        self.length = 0

    def positions(self, new_tokens: int, device: torch.device) -> torch.Tensor:
        """Positions (T,) of the next forward's tokens: they continue the cached sequence."""
        if self.length + new_tokens > self.block_size:
            raise ValueError(f"sequence of {self.length + new_tokens} tokens exceeds block_size {self.block_size}")
        return torch.arange(self.length, self.length + new_tokens, device=device)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Causal attention of the new (B, H, T, D) queries over the cached and new keys and values."""
        past = self.length
        T = q.shape[2]
        k, v = self.update(layer, k, v)  # (B, H, S, D)
        if past == 0:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if T == 1:
            # One new token may see every cached position: no mask, so SDPA keeps its fast path.
            return F.scaled_dot_product_attention(q, k, v)
        # Several new tokens after a cached prefix: new token i sees positions up to past + i.
        visible = torch.ones(T, past + T, dtype=torch.bool, device=q.device).tril(diagonal=past)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=visible)

    def advance(self, new_tokens: int) -> None:
        """Count the tokens of a completed forward (every layer has stored them)."""
        self.length += new_tokens


class SlotKVCache:
    """Keys and values of up to `slots` sequences decoded together, each in its own row with its own length:
    the cache of batched generation, where sequences start and end at different steps.

    A forward through it takes idx (1, N): the new tokens of several rows packed end to end, as `plan` lays
    them out. First comes one token for each row in `decoding`, continuing that row at its own length; then
    all the tokens of each row in `starting`, which replace that row's contents from position 0 (a new
    prompt, or a window re-encoded after sliding). Packing instead of padding means a long prompt costs the
    decoding rows nothing in the linear layers. Attention never crosses rows, and a row's tokens see only
    that row's positions up to their own.
    """

    def __init__(self, config: Config, slots: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        head_size = config.n_embd // config.n_head
        shape = (config.n_layer, slots, config.n_head, config.block_size, head_size)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.lengths = [0] * slots  # positions filled in each row
        self.plan([], [])

    @property
    def max_len(self) -> int:
        return self.keys.shape[3]

    def plan(self, decoding: list[int], starting: list[tuple[int, int]]) -> None:
        """Lay out the next forward: one token for each row of `decoding`, then `count` tokens for each
        (row, count) of `starting`, in that order."""
        if any(self.lengths[row] >= self.max_len for row in decoding):
            raise ValueError(f"a decoding row already holds all {self.max_len} positions")
        if any(not 0 < count <= self.max_len for _, count in starting):
            raise ValueError(f"a starting row must have between 1 and {self.max_len} tokens")
        self.decoding, self.starting = decoding, starting
        device = self.keys.device
        past = [self.lengths[row] for row in decoding]
        self._positions = torch.tensor(past + [p for _, count in starting for p in range(count)],
                                       dtype=torch.long, device=device)
        if not decoding:
            return
        # Decoding attends over rows 0..n-1 of the cache as one view (no copy); a row that is not decoding
        # gets a zero query that sees position 0 only, and its output is dropped.
        n = max(decoding) + 1
        self._every_row = decoding == list(range(n))
        # Rows 0..n-1 all at one length (a single sequence, or sequences that started together) need no mask.
        self._same_length = past[0] if self._every_row and len(set(past)) == 1 else None
        if self._same_length is not None:
            return
        self._rows = torch.tensor(decoding, device=device)
        self._past = self._positions[:len(decoding)]
        visible = torch.zeros(n, max(past) + 1, dtype=torch.bool, device=device)
        visible[:, 0] = True
        visible[self._rows] = torch.arange(visible.shape[1], device=device) <= self._past[:, None]
        # (n, 1, 1, S): row r sees its positions up to its new token. Additive (0 or -inf) rather than boolean:
        # SDPA on the CPU runs twice as fast with it, and the result is the same.
        self._visible = torch.zeros(visible.shape, dtype=self.keys.dtype, device=device).masked_fill_(
            ~visible, float("-inf"))[:, None, None, :]

    def positions(self, new_tokens: int, device: torch.device) -> torch.Tensor:
        """Positions (N,) of the planned tokens, each counted in its own row."""
        if new_tokens != self._positions.numel():
            raise ValueError(f"the forward has {new_tokens} tokens but the plan lays out {self._positions.numel()}")
        return self._positions

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention of the packed (1, H, N, D) queries, each over its own row; stores the new keys and values."""
        keys, values = self.keys[layer], self.values[layer]  # (slots, H, max_len, D)
        outputs = [self._attend_decoding(keys, values, q, k, v)] if self.decoding else []
        start = len(self.decoding)
        for row, count in self.starting:
            end = start + count
            keys[row, :, :count] = k[0, :, start:end]
            values[row, :, :count] = v[0, :, start:end]
            outputs.append(F.scaled_dot_product_attention(q[:, :, start:end], k[:, :, start:end], v[:, :, start:end],
                                                          is_causal=True))
            start = end
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)

    def _attend_decoding(self, keys: torch.Tensor, values: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                         v: torch.Tensor) -> torch.Tensor:
        """Attention (1, H, d, D) of the decoding rows' one new token each, stored at each row's own length."""
        d = len(self.decoding)
        q_new, k_new, v_new = (t[0, :, :d].transpose(0, 1) for t in (q, k, v))  # (d, H, D)
        queries = q_new.unsqueeze(2)  # (d, H, 1, D)
        if self._same_length is not None:
            at = self._same_length
            keys[:d, :, at], values[:d, :, at] = k_new, v_new
            y = F.scaled_dot_product_attention(queries, keys[:d, :, :at + 1], values[:d, :, :at + 1])
        else:
            keys[self._rows, :, self._past] = k_new
            values[self._rows, :, self._past] = v_new
            n, S = self._visible.shape[0], self._visible.shape[-1]
            if not self._every_row:
                queries = queries.new_zeros(n, *queries.shape[1:]).index_copy(0, self._rows, queries)
            y = F.scaled_dot_product_attention(queries, keys[:n, :, :S], values[:n, :, :S], attn_mask=self._visible)
            if not self._every_row:
                y = y.index_select(0, self._rows)
        return y.squeeze(2).transpose(0, 1).unsqueeze(0)

    def advance(self, new_tokens: int) -> None:
        """Count the planned tokens once a forward has stored them in every layer."""
        for row in self.decoding:
            self.lengths[row] += 1
        for row, count in self.starting:
            self.lengths[row] = count
        self.plan([], [])

    def move(self, source: int, target: int) -> None:
        """Move row `source`'s sequence to row `target` (keeping the busy rows first); `source` becomes empty."""
        length = self.lengths[source]
        self.keys[:, target, :, :length] = self.keys[:, source, :, :length]
        self.values[:, target, :, :length] = self.values[:, source, :, :length]
        self.lengths[target], self.lengths[source] = length, 0

    def release(self, row: int) -> None:
        self.lengths[row] = 0


AnyKVCache = Union[KVCache, SlotKVCache]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: Config, layer_index: int) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.layer_index = layer_index
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.out_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.residual_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, kv_cache: Optional[AnyKVCache] = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        if kv_cache is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                               is_causal=True)
        else:
            y = kv_cache.attend(self.layer_index, q, k, v)  # caches serve inference: no dropout
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.residual_dropout(self.out_proj(y))


class MLP(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.fc = nn.Linear(config.n_embd, config.ffn_size, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh" if config.activation == "gelu_new" else "none")
        self.proj = nn.Linear(config.ffn_size, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(self.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: Config, layer_index: int) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_index)
        self.mlp_norm = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, kv_cache: Optional[AnyKVCache] = None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), kv_cache)
        return x + self.mlp(self.mlp_norm(x))


class Model(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.n_embd)
        self.position_embedding = nn.Embedding(config.block_size, config.n_embd)
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.final_norm = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.token_embedding.weight  # weight tying: one tensor, counted once
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2 * n_layer) so the residual stream's variance
        # does not grow with depth (two residual additions per block).
        for name, parameter in self.named_parameters():
            if name.endswith("out_proj.weight") or name.endswith("mlp.proj.weight"):
                nn.init.normal_(parameter, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self, include_embeddings: bool = True) -> int:
        """Unique parameters (the tied output weight counted once); optionally without the embeddings."""
        total = sum(p.numel() for p in self.parameters())
        if not include_embeddings:
            total -= self.token_embedding.weight.numel() + self.position_embedding.weight.numel()
        return total

    def hidden_states(self, idx: torch.Tensor, kv_cache: Optional[AnyKVCache] = None) -> torch.Tensor:
        """idx (B, T) token ids -> the final-norm outputs (B, T, C) that the output layer turns into logits.

        With `kv_cache`, idx continues the cached sequences: the cache gives the positions and the attention.
        """
        B, T = idx.shape
        if kv_cache is None:
            if T > self.config.block_size:
                raise ValueError(f"sequence of {T} tokens exceeds block_size {self.config.block_size}")
            positions = torch.arange(T, device=idx.device)
        else:
            positions = kv_cache.positions(T, idx.device)
        x = self.embedding_dropout(self.token_embedding(idx) + self.position_embedding(positions))  # (B, T, C)
        for block in self.blocks:
            x = block(x, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(T)
        return self.final_norm(x)

    def forward(self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None, kv_cache: Optional[AnyKVCache] = None,
                return_logits: bool = True) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """idx (B, T) token ids -> logits (B, T, vocab_size) and the mean cross-entropy over targets != -1.

        With `kv_cache`, idx continues the cached sequences (see hidden_states).
        With targets and return_logits=False, the logits are None and the loss comes from model/loss.py, a
        chunk of positions at a time: faster, and without the memory of every position's logits (training
        and evaluation use this).
        """
        x = self.hidden_states(idx, kv_cache)
        if targets is not None and not return_logits:
            return None, output_cross_entropy(x, self.lm_head.weight, targets)
        logits = self.lm_head(x)  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def new_kv_cache(self, batch_size: int, max_len: Optional[int] = None) -> KVCache:
        """An empty cache on this model's device and in its parameters' dtype."""
        weight = self.token_embedding.weight
        return KVCache(self.config, batch_size, max_len, device=weight.device, dtype=weight.dtype)

    def new_slot_kv_cache(self, slots: int) -> SlotKVCache:
        """An empty cache of `slots` independent rows of block_size positions, on this model's device and dtype."""
        weight = self.token_embedding.weight
        return SlotKVCache(self.config, slots, device=weight.device, dtype=weight.dtype)

