"""Running our GGUF files with llama.cpp itself, through llama-cpp-python: the peer that bench.py's
cpu-inference section times and scores. llama-cpp-python is optional (requirements-gguf.txt).
"""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from tinystories.errors import UserError
from tinystories.generation.sampling import SamplingConfig

_PROBE = """
import sys, llama_cpp
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=16, verbose=False)
llm.eval([464, 3290])
"""


def llama_cpp_module() -> ModuleType:
    try:
        import llama_cpp
    except ModuleNotFoundError:
        raise UserError("running GGUF files needs llama-cpp-python: pip install -r requirements-gguf.txt") from None
    return llama_cpp


def load(path: str | Path, n_ctx: int, logits_all: bool = False) -> Any:
    """A llama_cpp.Llama over the file (every logit kept with logits_all), its log lines silenced, on as many
    threads as torch uses (llama-cpp-python's default is half the cores)."""
    threads = torch.get_num_threads()
    return llama_cpp_module().Llama(model_path=str(path), n_ctx=n_ctx, logits_all=logits_all, verbose=False, seed=0,
                                    n_threads=threads, n_threads_batch=threads)


def failure(path: str | Path) -> str | None:
    """Why llama.cpp cannot run the file on this machine, tried in a subprocess, or None if it runs.

    A llama.cpp built natively for one processor can die with SIGILL on another (seen with q8_0 files)."""
    result = subprocess.run([sys.executable, "-c", _PROBE, str(path)], capture_output=True, text=True, timeout=300)
    if result.returncode == 0:
        return None
    if result.returncode == -signal.SIGILL:
        return "llama.cpp died with an illegal instruction on this processor (its native build)"
    return f"llama.cpp failed (exit status {result.returncode}): {result.stderr.strip()[-300:]}"


def logits(llm: Any, ids: list[int]) -> np.ndarray:
    """llama.cpp's float32 logits (T, V) at every position of one forward over ids (llm needs logits_all)."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)], dtype=np.float32)


def sample(llm: Any, prompt: list[int], new_tokens: int, sampling: SamplingConfig) -> list[int]:
    """`new_tokens` tokens sampled after prompt with our sampling settings (no repetition penalty, no min-p),
    past <|endoftext|> as bench.py's own generation does."""
    tokens = []
    for token in llm.generate(prompt, temp=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
                              min_p=0.0, repeat_penalty=1.0, reset=True):
        tokens.append(token)
        if len(tokens) == new_tokens:
            break
    return tokens

