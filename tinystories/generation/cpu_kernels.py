"""This project's C++ kernels for the CPU (tinystories/generation/kernels/), compiled on first use and then loaded from
torch's extension cache.

The build takes about 10 s, once per source version, instruction set and torch version, each in its own
folder under torch's extension cache, ~/.cache/torch_extensions (TORCH_EXTENSIONS_DIR moves it). It needs a
C++ compiler with OpenMP (`c++`, or the one CXX names) and ninja (requirements.txt). The SIMD instructions
follow torch's own detection on this processor, passed as Inductor passes them to the C++ it generates.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from tinystories.errors import UserError, first_line

SOURCES = Path(__file__).parent / "kernels"
# at::vec's Vectorized types pick their SIMD code from the CPU_CAPABILITY macro; the flags let the compiler use it.
# AVX-512 processors get the AVX2 code too: the kernels wait on memory, not on arithmetic, so wider vectors
# would buy nothing, and the AVX2 code is the one measured and tested (on AMD EPYC).
AVX2_FLAGS = ["-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"]
ARCH_FLAGS = {"AVX2": AVX2_FLAGS, "AVX512": AVX2_FLAGS}


def _find_ninja() -> None:
    """Put the ninja of the `ninja` package on PATH when none is there (a virtual environment not activated)."""
    if shutil.which("ninja") is None:
        try:
            import ninja
        except ImportError:
            return
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def _reason(error: BaseException) -> str:
    """The line of a failed build that says why: the compiler's first error, not the commands ninja ran."""
    lines = [line.strip() for line in str(error).splitlines()[1:]]
    said = [line for line in lines if line and " -c " not in line and not line.startswith(("FAILED:", "ninja:"))]
    errors = [line for line in said if "error" in line]
    return (errors or said or [first_line(error)])[0]


def kernels() -> Any:
    """torch.ops.tinystories_kernels, the kernels built first if torch's extension cache lacks them. A build
    that failed is not tried again in this process: the same UserError is raised."""
    loaded = _load()
    if isinstance(loaded, UserError):
        raise loaded
    return loaded


@functools.cache
def _load() -> Any:
    """The kernels' namespace, or the UserError saying why they could not be built."""
    from torch.utils import cpp_extension

    _find_ninja()
    capability = torch.backends.cpu.get_cpu_capability()
    flags = ["-O3", "-fopenmp", *ARCH_FLAGS.get(capability, [])]
    source = SOURCES / "decoding.cpp"
    # One folder per source, flags and torch: a change builds afresh instead of loading a stale library.
    key = hashlib.sha256("\n".join([source.read_text(), *flags, torch.__version__]).encode()).hexdigest()[:16]
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root())
    folder = root / f"tinystories_kernels-{key}"
    if not (folder / "tinystories_kernels.so").exists():
        print("compiling this project's CPU kernel (once; about 10 s)", file=sys.stderr)
    # torch warns, over many lines, about any compiler other than the one it was built with; a build that
    # fails says so in one line below, and one that succeeds works.
    logger = logging.getLogger(cpp_extension.__name__)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        cpp_extension.load("tinystories_kernels", [str(source)], extra_cflags=flags, build_directory=str(folder),
                           is_python_module=False)
        return torch.ops.tinystories_kernels
    except (RuntimeError, OSError) as error:
        return UserError(f"could not build this project's CPU kernel ({_reason(error)}); it needs a C++ compiler "
                         f"with OpenMP (c++, or set CXX) and ninja (pip install -r requirements.txt)")
    finally:
        logger.setLevel(level)
