"""Token ids in, text out as soon as it is complete, for every decoder that streams text."""
from __future__ import annotations

import codecs

from tinystories.tokenizer import get_tokenizer


class Utf8Stream:
    """A multi-byte character split across tokens is held back until its last byte arrives, so streamed pieces
    never split a character."""

    def __init__(self) -> None:
        self._tokenizer = get_tokenizer()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        return self._decoder.decode(self._tokenizer.decode_single_token_bytes(token))

    def flush(self) -> str:
        """What is left at the end (an unfinished character becomes U+FFFD)."""
        return self._decoder.decode(b"", final=True)
