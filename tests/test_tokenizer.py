"""tinystories.tokenizer: GPT-2's ids, lossless round trips, agreement with Hugging Face `tokenizers`."""
import json
import shutil

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from tinystories import tokenizer as tokenizer_module
from tinystories.errors import UserError
from tinystories.tokenizer import bpe_file_paths, get_tokenizer

SAMPLE = [
    "Hello world",
    "Once upon a time, there was a little girl named Lily. She loved to play outside.",
    "don't, I'll, we're, they've, she'd, I'm, it's — DON'T",
    "numbers 0 7 42 1234567890 3.14159 -273.15 1,000,000",
    "  leading spaces, trailing spaces   ",
    "tabs\tand\t\tnew\nlines\n\n\nand\r\nwindows line ends",
    "whitespace runs:      end \u00a0non-breaking\u2003em space",
    "unicode: café naïve Ærøskøbing straße ĳ ﬁ",
    "scripts: Привет мир, 你好，世界, こんにちは, 안녕하세요, مرحبا, שלום, नमस्ते",
    "emoji: 🐈 🐕‍🦺 👍🏽 🇫🇷 ❤️ 🤖🤖🤖",
    "combining: e\u0301 a\u0308 n\u0303",
    "symbols: <html> {json: [1, 2]} $x^2$ @user #tag 100% ~/path/to/file.py",
    "",
    " ",
    "\n",
]


def test_known_ids():
    encoding = get_tokenizer()
    assert encoding.encode("Hello world") == [15496, 995]
    assert encoding.encode("<|endoftext|>", allowed_special={"<|endoftext|>"}) == [50256]
    assert encoding.eot_token == 50256
    assert encoding.n_vocab == 50257


@pytest.mark.parametrize("text", SAMPLE)
def test_decode_inverts_encode(text):
    encoding = get_tokenizer()
    assert encoding.decode(encoding.encode(text)) == text


def hugging_face_byte_level_bpe() -> Tokenizer:
    """GPT-2's tokenizer as Hugging Face `tokenizers` builds it from the same two files."""
    paths = bpe_file_paths()
    vocab = json.loads(paths["encoder.json"].read_text(encoding="utf-8"))
    lines = paths["vocab.bpe"].read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines[1:] if line]
    bpe = Tokenizer(models.BPE(vocab, merges))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    return bpe


def test_agrees_with_hugging_face_tokenizers():
    encoding = get_tokenizer()
    reference = hugging_face_byte_level_bpe()
    for text in SAMPLE:
        ids = encoding.encode(text)
        assert ids == reference.encode(text).ids, text
        assert reference.decode(ids) == text


@pytest.fixture
def fresh_tokenizer_cache():
    """get_tokenizer is cached: rebuild it inside the test, and from the real files after it."""
    get_tokenizer.cache_clear()
    yield
    get_tokenizer.cache_clear()


@pytest.mark.parametrize("tampered_name", ["encoder.json", "vocab.bpe"])
def test_tampered_vocabulary_is_refused(tampered_name, tmp_path, monkeypatch, fresh_tokenizer_cache):
    copies = {}
    for name, path in bpe_file_paths().items():
        copies[name] = tmp_path / name
        shutil.copyfile(path, copies[name])
    content = bytearray(copies[tampered_name].read_bytes())
    content[len(content) // 2] ^= 0x01
    copies[tampered_name].write_bytes(bytes(content))
    monkeypatch.setattr(tokenizer_module, "bpe_file_paths", lambda: copies)
    with pytest.raises(UserError, match="sha256"):
        get_tokenizer()


def test_missing_vocabulary_file_is_refused(tmp_path, monkeypatch, fresh_tokenizer_cache):
    paths = {**bpe_file_paths(), "encoder.json": tmp_path / "encoder.json"}
    monkeypatch.setattr(tokenizer_module, "bpe_file_paths", lambda: paths)
    with pytest.raises(UserError, match="missing"):
        get_tokenizer()
