"""Choosing the device and numeric precision from the `--device` and `--dtype` flags."""
from __future__ import annotations

import contextlib
import re
from typing import ContextManager

import torch

from tinystories.errors import UserError

DEVICE_HELP = "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps"
DTYPE_CHOICES = ["auto", "float32", "bfloat16", "float16"]


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
