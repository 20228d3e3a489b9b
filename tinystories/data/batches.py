"""Batches of token windows from a split, for training (seeded, resumable, rank-aware) and evaluation (fixed).

A split of n tokens holds (n - 1) // block_size windows of block_size + 1 tokens, window i starting at token
i × block_size; its first block_size tokens are the input and its last block_size the targets, so every token
after the first is a target exactly once per epoch.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from tinystories.errors import UserError

Batch = tuple[torch.Tensor, torch.Tensor]


def window_count(tokens: np.ndarray, block_size: int) -> int:
    n_windows = (len(tokens) - 1) // block_size
    if n_windows < 1:
        raise UserError(f"the split has {len(tokens):,} tokens, too few for one window of {block_size + 1}; "
                        "use more data or a smaller --block_size")
    return n_windows


def gather_windows(tokens: np.ndarray, starts: np.ndarray, block_size: int) -> Batch:
    """(inputs, targets), int64 tensors of shape (len(starts), block_size), for windows starting at `starts`."""
    rows = np.stack([np.asarray(tokens[start:start + block_size + 1]) for start in starts]).astype(np.int64)
    windows = torch.from_numpy(rows)
    return windows[:, :-1], windows[:, 1:]


class WindowBatches:
    """Training batches: each epoch visits the windows in the permutation `default_rng((seed, epoch))`.

    Batch k of an epoch is the permutation's slice [k·B·W, (k+1)·B·W) for batch size B and world size W; rank r
    takes every W-th window of that slice starting at r. The ranks' batch k together are therefore exactly batch
    k of a one-process run with batch size B·W. Windows left over after the last full batch are skipped in that
    epoch (others next epoch). The position (epoch, next batch) is the whole state, so resuming is O(1).
    """

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, device: Optional[torch.device] = None) -> None:
        self.tokens = tokens
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.device = device or torch.device("cpu")
        self.n_windows = window_count(tokens, block_size)
        self.batches_per_epoch = self.n_windows // (batch_size * world_size)
        if self.batches_per_epoch < 1:
            raise UserError(f"the split's {self.n_windows:,} windows of {block_size} tokens are fewer than one batch "
                            f"of {batch_size * world_size}; use more data or a smaller --batch_size")
        self.epoch = 0
        self.position = 0
        self._order: Optional[np.ndarray] = None

    def _epoch_order(self) -> np.ndarray:
        if self._order is None:
            self._order = np.random.default_rng((self.seed, self.epoch)).permutation(self.n_windows)
        return self._order

    def next_batch(self) -> Batch:
        """The next (inputs, targets) on the device; moves to the next epoch after the last batch of one."""
        global_batch = self.batch_size * self.world_size
        first = self.position * global_batch
        window_ids = self._epoch_order()[first + self.rank:first + global_batch:self.world_size]
        x, y = gather_windows(self.tokens, window_ids * self.block_size, self.block_size)
        self.position += 1
        if self.position == self.batches_per_epoch:
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < self.batches_per_epoch:
            raise UserError(f"data position (epoch {epoch}, batch {position}) does not fit this split's "
                            f"{self.batches_per_epoch} batches per epoch")
        self.epoch, self.position, self._order = epoch, position, None


def fixed_eval_batches(tokens: np.ndarray, block_size: int, batch_size: int, n_batches: int, seed: int) -> list[Batch]:
    """The same evaluation batches on every call: up to `n_batches` full batches of distinct windows in a seeded
    order (one smaller batch when the split has fewer windows than one batch). Tensors stay on the CPU."""
    n_windows = window_count(tokens, block_size)
    order = np.random.default_rng(seed).permutation(n_windows)
    if n_windows < batch_size:
        return [gather_windows(tokens, np.sort(order) * block_size, block_size)]
    count = min(n_batches, n_windows // batch_size)
    return [gather_windows(tokens, order[k * batch_size:(k + 1) * batch_size] * block_size, block_size)
            for k in range(count)]
