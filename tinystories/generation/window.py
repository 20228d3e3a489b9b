"""The sliding window, the one rule every decoder here follows (the engine's sequences and beam search).

The model has `block_size` learned positions, so a sequence's KV cache holds at most that many tokens. When it
is full and another token must be fed, the oldest quarter of the window is dropped: the cache is emptied and
the last `block_size - block_size // 4` tokens are fed again in one forward, at positions 0, 1, ... (the
positions they would have as the start of a training window), and decoding continues one token at a time.
Every token is therefore predicted from at least 3/4 of a window of context, and the re-encoding costs one
forward over 3/4 of a window every `block_size // 4` tokens. A prompt longer than `block_size` is cut to its
last `block_size` tokens.
"""
from __future__ import annotations


def kept_after_sliding(block_size: int) -> int:
    """Tokens a full window keeps when it slides."""
    return block_size - block_size // 4


def feed_start(cached: int, length: int, block_size: int) -> int:
    """Where, in a sequence of `length` tokens of which the cache holds `cached`, the next forward starts
    feeding: the prompt's last `block_size` tokens when nothing is cached, the kept part when the cache is full
    (the cache then starts over), and otherwise only the newest token."""
    if cached == 0:
        return max(0, length - block_size)
    if cached == block_size:
        return length - kept_after_sliding(block_size)
    return length - 1
