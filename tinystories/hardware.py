"""The hardware a run uses: device and precision from the flags, TF32, the compile rule, and the FLOP counts
(per token, and the datasheet peak of known GPUs) behind model FLOPs utilisation. Training and the benchmark
both take these decisions from here."""
from __future__ import annotations

import contextlib
import platform
import re
from typing import ContextManager, Optional

import torch

from model.model import Config, Model
from tinystories.errors import UserError

DEVICE_HELP = "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps"
DTYPE_CHOICES = ["auto", "float32", "bfloat16", "float16"]
COMPILE_CHOICES = ["auto", "true", "false"]
# Dense bf16 peak FLOP/s of common GPUs, for MFU; other devices report no MFU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "4090": 165e12}


def resolve_device(name: str = "auto") -> torch.device:
    """The torch.device for a `--device` value; an unavailable device is a UserError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", name):
        raise UserError(f"--device must be {DEVICE_HELP}; got {name!r}")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps: MPS is not available on this machine (use --device cpu)")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: bfloat16 where the GPU supports it, else float16 on GPUs, float32 on CPU and MPS."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name not in DTYPE_CHOICES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPE_CHOICES)}; got {name!r}")
    dtype = getattr(torch, name)
    if device.type == "cpu" and dtype == torch.float16:
        raise UserError("--dtype float16 needs a GPU; use float32 or bfloat16 on the CPU")
    return dtype


def autocast(device: torch.device, dtype: torch.dtype) -> ContextManager:
    """Mixed-precision autocast for bf16/fp16; nothing for fp32 (parameters stay fp32 either way)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def enable_tf32(device: torch.device) -> None:
    """Let float32 matrix products use TF32 tensor cores on CUDA: several times faster, and the 10-bit
    mantissa is far below the noise of training (bf16 autocast rounds harder anyway)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def should_compile(setting: str, device: torch.device) -> bool:
    """The `--compile` rule: auto compiles on CUDA only, where it pays; compiling for the CPU takes minutes."""
    return setting == "true" or (setting == "auto" and device.type == "cuda")


def flops_per_token(config: Config, seq_len: Optional[int] = None) -> int:
    """Training FLOPs per token: 6 per parameter that multiplies (all but the position embedding; the tied
    token embedding counts once, as the output layer) plus attention's 12 · layers · width · context, the
    context being seq_len (default block_size). docs/benchmarks.md derives it."""
    with torch.device("meta"):  # count without allocating weights
        model = Model(config)
    parameters = model.num_parameters() - model.position_embedding.weight.numel()
    return 6 * parameters + 12 * config.n_layer * config.n_embd * (seq_len or config.block_size)


def peak_flops(device: torch.device) -> Optional[float]:
    """The datasheet dense bf16 peak of a known CUDA GPU, else None."""
    if device.type != "cuda":
        return None
    return peak_flops_of(torch.cuda.get_device_name(device))


def peak_flops_of(device_name: str) -> Optional[float]:
    """By whole words of the name ("NVIDIA A100-SXM4-80GB" is an A100; an "L40S" is not an "L4")."""
    words = set(re.split(r"[\s\-_]+", device_name))
    return next((flops for key, flops in PEAK_FLOPS.items() if key in words), None)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name and the threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    processor = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            processor = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{processor}, {torch.get_num_threads()} threads"
