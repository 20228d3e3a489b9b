"""Stories to token files: the validation split rule, parallel streaming tokenization, atomic split files.

Stories arrive one at a time from a reader; they are grouped into chunks of about `CHUNK_CHARACTERS`
characters, a few chunks are tokenized at once on a thread pool (tiktoken releases the GIL), and the
results are written in input order. Memory therefore stays flat however large the corpus is, and the output
is the same for any number of workers or chunk size.
"""
from __future__ import annotations

import collections
import hashlib
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import tiktoken

from tinystories.data.token_files import TOKEN_DTYPE
from tinystories.files import temporary_file_beside
from tinystories.tokenizer import EOT_ID, EOT_TOKEN, get_tokenizer

CHUNK_CHARACTERS = 1 << 18
SPLIT_RULE = ("a training story goes to validation when BLAKE2b-64(story text as UTF-8, key = the seed as decimal "
              "text), read as a little-endian integer, is below val_fraction * 2**64")


class ValidationRule:
    """Whether a training story belongs to the validation split: a keyed hash of its text against the fraction.

    It depends only on the text, the seed and the fraction, so the split is the same for any number of workers,
    any file order and any `--max_stories`, and duplicate stories always land on the same side.
    """

    def __init__(self, seed: int, fraction: float) -> None:
        self.key = str(seed).encode()
        self.threshold = int(fraction * 2**64)

    def __call__(self, story: str) -> bool:
        digest = hashlib.blake2b(story.encode("utf-8"), digest_size=8, key=self.key).digest()
        return int.from_bytes(digest, "little") < self.threshold


def encode_stories(encoding: tiktoken.Encoding, stories: list[str]) -> np.ndarray:
    """The uint16 ids of `stories`, each followed by `<|endoftext|>`, exactly as per-story encoding gives them."""
    if not stories:
        return np.zeros(0, dtype=TOKEN_DTYPE)
    if any(EOT_TOKEN in story for story in stories):
        # A story that spells out the separator must have it encoded as ordinary text: encode one by one.
        ids = [token for story in stories for token in encoding.encode_ordinary(story) + [EOT_ID]]
        return np.array(ids, dtype=TOKEN_DTYPE)
    # One call per chunk: tiktoken encodes the text between special tokens independently, so joining with the
    # separator gives the per-story ids while crossing into Rust once instead of once per story.
    joined = EOT_TOKEN.join(stories) + EOT_TOKEN
    return encoding.encode_to_numpy(joined, allowed_special={EOT_TOKEN}).astype(TOKEN_DTYPE)


def ordered_map(function, items: Iterable, num_workers: int) -> Iterator:
    """function(item) for each item, in order, at most 2 × num_workers items in flight."""
    pending: collections.deque[Future] = collections.deque()
    with ThreadPoolExecutor(num_workers) as pool:
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= 2 * num_workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def labelled_chunks(labelled_stories: Iterable[tuple[str, str]],
                    labels: Iterable[str]) -> Iterator[tuple[str, list[str]]]:
    """(label, stories) groups of about `CHUNK_CHARACTERS` characters, each label's stories in input order."""
    buffers: dict[str, list[str]] = {label: [] for label in labels}
    sizes = dict.fromkeys(buffers, 0)
    for label, story in labelled_stories:
        buffers[label].append(story)
        sizes[label] += len(story)
        if sizes[label] >= CHUNK_CHARACTERS:
            yield label, buffers[label]
            buffers[label], sizes[label] = [], 0
    for label, buffer in buffers.items():
        if buffer:
            yield label, buffer


def encode_labelled(labelled_stories: Iterable[tuple[str, str]], labels: Iterable[str],
                    num_workers: int) -> Iterator[tuple[str, np.ndarray, int]]:
    """(label, token ids, number of stories) per chunk, tokenized on `num_workers` threads, in input order."""
    encoding = get_tokenizer()

    def encode(item: tuple[str, list[str]]) -> tuple[str, np.ndarray, int]:
        label, stories = item
        return label, encode_stories(encoding, stories), len(stories)

    yield from ordered_map(encode, labelled_chunks(labelled_stories, labels), num_workers)


def tokenize_stories(stories: Iterable[str], num_workers: int) -> Iterator[np.ndarray]:
    """Token arrays (stories in input order, each followed by 50256): prepare.py's tokenization, one split."""
    for _, tokens, _ in encode_labelled((("all", story) for story in stories), ["all"], num_workers):
        yield tokens


@dataclass
class SplitFile:
    """One split's token file, written to a hidden temporary file and renamed into place only when complete."""
    path: Path
    stories: int = 0
    tokens: int = 0
    sha256: "hashlib._Hash" = field(default_factory=hashlib.sha256)

    def __post_init__(self) -> None:
        self.file, self.temporary = temporary_file_beside(self.path)

    def write(self, tokens: np.ndarray, stories: int) -> None:
        data = tokens.tobytes()
        self.file.write(data)
        self.sha256.update(data)
        self.tokens += len(tokens)
        self.stories += stories

    def close(self) -> None:
        if not self.file.closed:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()

    def commit(self) -> dict:
        """Rename into place; the split's record for meta.json."""
        self.close()
        os.replace(self.temporary, self.path)
        return {"file": self.path.name, "stories": self.stories, "tokens": self.tokens,
                "sha256": self.sha256.hexdigest()}

    def discard(self) -> None:
        self.close()
        self.temporary.unlink(missing_ok=True)


def write_splits(labelled_stories: Iterable[tuple[str, str]], split_files: dict[str, SplitFile],
                 num_workers: int) -> None:
    """Tokenize (split, story) pairs into their split files, keeping each split's stories in input order."""
    for split, tokens, stories in encode_labelled(labelled_stories, split_files, num_workers):
        split_files[split].write(tokens, stories)
