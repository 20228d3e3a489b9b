"""tinystories/hardware.py: the datasheet peaks, the compile rule, FLOPs per token, device and precision flags."""
import pytest
import torch

from model.model import preset
from tinystories.errors import UserError
from tinystories.hardware import (
    flops_per_token,
    peak_flops,
    peak_flops_of,
    resolve_device,
    resolve_dtype,
    should_compile,
)


def test_datasheet_peak_matches_whole_words_of_the_device_name():
    assert peak_flops_of("NVIDIA H100 80GB HBM3") == peak_flops_of("NVIDIA H200") == 989e12
    assert peak_flops_of("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops_of("NVIDIA L40S") is None and peak_flops_of("NVIDIA A10G") is None
    assert peak_flops_of("NVIDIA L4") == 121e12
    assert peak_flops(torch.device("cpu")) is None


def test_compile_rule_is_on_for_cuda_only_unless_told():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [should_compile(setting, cpu) for setting in ("auto", "true", "false")] == [False, True, False]
    assert [should_compile(setting, cuda) for setting in ("auto", "true", "false")] == [True, True, False]


def test_flops_per_token_counts_the_hugging_face_twin_by_hand():
    transformers = pytest.importorskip("transformers")
    config = preset("tiny")
    twin = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd, n_layer=config.n_layer,
        n_head=config.n_head))
    # 6 FLOPs per multiplying weight (all but the position table; the tied embedding once, as the output layer)
    multiplying = sum(p.numel() for p in twin.parameters()) - twin.transformer.wpe.weight.numel()
    attention = 12 * config.n_layer * config.n_embd * 32
    assert flops_per_token(config, seq_len=32) == 6 * multiplying + attention


def test_device_and_precision_flags():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    with pytest.raises(UserError, match="--device must be"):
        resolve_device("tpu")
    with pytest.raises(UserError, match="float16 needs a GPU"):
        resolve_dtype("float16", torch.device("cpu"))
