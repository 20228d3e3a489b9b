"""Whether a size a user chose fits in memory, checked before the work so that a too-large value is one line
instead of minutes of swapping and a kill by the kernel (`--num_beams 100000` once took 24 GB that way).

Estimates count float32 bytes of what a forward keeps alive at once, from the model's Config:
    KV cache           2 · n_layer · L · n_embd per sequence of L positions
    layer activations  L · 10 · n_embd per sequence: the residual stream, q, k, v and the 4x-wide MLP hidden
                       layer, plus L · 2 · n_head · L of attention scores when decoding
    logits             vocab_size per scored position, 12 copies: up to 6 live at once (the output,
                       log-softmax, summed scores, the reordered rows, ...) and as much again of allocator
                       slack, as measured
They are upper bounds within a small factor (tests/test_memory.py measures them), which is all a refusal needs.
Available memory is what the device reports free: torch.cuda.mem_get_info on CUDA, else the smaller of the
kernel's MemAvailable and the container's (cgroup) limit less its usage.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

from model.loss import logits_chunk_bytes
from model.model import Config, Model
from tinystories.errors import UserError

FLOAT_BYTES = 4
GB = 1e9
_CGROUP_FILES = [("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
                 ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")]


def _read_int(path: str) -> Optional[int]:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):  # absent, or "max" (no limit)
        return None


def _host_available_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def available_bytes(device: torch.device) -> int:
    """Bytes that new tensors on `device` can take now."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    available = _host_available_bytes()  # MPS shares the host's memory
    for limit_file, usage_file in _CGROUP_FILES:
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None:
            available = min(available, max(limit - usage, 0))
    return available


def kv_cache_bytes(config: Config, positions: int, dtype: torch.dtype = torch.float32) -> int:
    """Memory of a KV cache over `positions` positions (summed over sequences): keys and values of every layer."""
    return 2 * config.n_layer * positions * config.n_embd * dtype.itemsize


def sequence_bytes(config: Config, length: int) -> int:
    """Memory one sequence of `length` positions needs while decoding: its KV cache, a forward over it (the
    prompt, or a window refed when it slides) and its logits."""
    length = min(length, config.block_size)
    activations = length * (10 * config.n_embd + 2 * config.n_head * length)
    logits = 12 * config.vocab_size
    # Beam search reorders the cache by copying it, so two caches exist for a moment.
    return 2 * kv_cache_bytes(config, length) + FLOAT_BYTES * (activations + logits)


def window_bytes(config: Config, length: int) -> int:
    """Memory one window of `length` tokens needs in an evaluation forward: one layer's activations at a time,
    attention by a fused kernel (no scores kept); the logits are scored a chunk of positions at a time
    (loss_bytes)."""
    return FLOAT_BYTES * length * 10 * config.n_embd


def training_window_bytes(config: Config, length: int) -> int:
    """Memory one window of `length` tokens needs in a training step: every layer's activations kept for the
    backward (Korthikanti et al. 2022 count 34 · n_embd + 5 · n_head · L bytes per position in 16 bits; twice
    that in fp32) and full logits with their gradient and softmax (Hugging Face's model materialises them)."""
    per_layer = 17 * config.n_embd + 3 * config.n_head * length
    return FLOAT_BYTES * length * (config.n_layer * per_layer + 3 * config.vocab_size)


def parameter_bytes(config: Config) -> int:
    """fp32 weights of `Model(config)`."""
    with torch.device("meta"):  # count without allocating
        return FLOAT_BYTES * Model(config).num_parameters()


def loss_bytes(device: torch.device) -> int:
    """Memory of the chunked loss: a chunk of logits and its probabilities (model/loss.py)."""
    return 2 * logits_chunk_bytes(device)


def require_fits(flag: str, value: int, bytes_each: int, device: torch.device, fixed_bytes: int = 0,
                 what: str = "") -> None:
    """Refuse `--flag value` when `value` units of `bytes_each` (plus `fixed_bytes`) exceed what `device` has
    free, naming the largest value that fits."""
    available = available_bytes(device)
    needed = fixed_bytes + value * bytes_each
    if needed <= available:
        return
    largest = max((available - fixed_bytes) // bytes_each, 0)
    advice = f"use at most {largest}" if largest >= 1 else "nothing this size fits; free some memory"
    raise UserError(f"{flag} {value} needs about {needed / GB:.1f} GB{what} but {device.type} has "
                    f"{available / GB:.1f} GB free; {advice}")
