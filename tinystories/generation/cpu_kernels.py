"""This project's C++ kernels for the CPU (tinystories/generation/kernels/), compiled on first use and then loaded from
torch's extension cache.

The build takes about 10 s, once per source version, instruction set and torch version, each in its own
folder under torch's extension cache, ~/.cache/torch_extensions (TORCH_EXTENSIONS_DIR moves it). It needs a
C++ compiler with OpenMP (`c++`, or the one CXX names) and ninja (requirements.txt). The SIMD instructions
follow torch's own detection on this processor, passed as Inductor passes them to the C++ it generates.

A build records the library's sha256 beside it (tinystories_kernels.so.sha256), and every later run checks it
before loading: a damaged library (truncated, overwritten) would otherwise kill the process that maps it. One
that fails the check is built again.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator

import torch

from tinystories.errors import UserError, first_line
from tinystories.files import atomic_write

SOURCES = Path(__file__).parent / "kernels"
# at::vec's Vectorized types pick their SIMD code from the CPU_CAPABILITY macro; the flags let the compiler use it.
# AVX-512 processors get the AVX2 code too: the kernels wait on memory, not on arithmetic, so wider vectors
# would buy nothing, and the AVX2 code is the one measured and tested (on AMD EPYC).
AVX2_FLAGS = ["-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"]
ARCH_FLAGS = {"AVX2": AVX2_FLAGS, "AVX512": AVX2_FLAGS}
LIBRARY = "tinystories_kernels.so"


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
    """The kernels' namespace, or the UserError saying why they could not be built or loaded."""
    # torch.utils.cpp_extension logs at its import, where torch's CUDA build finds a CUDA_HOME (or an nvcc) but
    # no GPU, that no CUDA runtime is found, which these CPU kernels do not need; and at a build it warns, over
    # many lines, about any compiler other than the one torch was built with (a build that fails says so in one
    # line below, and one that succeeds works). Its logger is quietened for our import, build and load only.
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return _build_and_load()
    finally:
        logger.setLevel(level)


def _build_and_load() -> Any:
    from torch.utils import cpp_extension

    _find_ninja()
    capability = torch.backends.cpu.get_cpu_capability()
    flags = ["-O3", "-fopenmp", *ARCH_FLAGS.get(capability, [])]
    source = SOURCES / "decoding.cpp"
    # One folder per source, flags and torch: a change builds afresh instead of loading a stale library.
    key = hashlib.sha256("\n".join([source.read_text(), *flags, torch.__version__]).encode()).hexdigest()[:16]
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root())
    folder = root / f"tinystories_kernels-{key}"
    library, digest = folder / LIBRARY, folder / f"{LIBRARY}.sha256"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with _locked(folder):
            if library.exists() and digest.exists():
                if _sha256(library) == _recorded(digest):
                    return _load_library(library, folder)
                # A truncated library kills the process that maps it (SIGBUS), garbage fails to load: rebuild.
                print(f"the CPU kernel's library in {folder} is damaged (its sha256 is not its build's); building it "
                      "again", file=sys.stderr)
                damaged = True
            else:  # not built yet, or built without a digest (a crash between the two, an older version)
                print("compiling this project's CPU kernel (once; about 10 s)", file=sys.stderr)
                damaged = False
            library.unlink(missing_ok=True)
            digest.unlink(missing_ok=True)
            try:
                cpp_extension.load("tinystories_kernels", [str(source)], extra_cflags=flags,
                                   build_directory=str(folder), is_python_module=False)
            except (RuntimeError, OSError) as error:
                if damaged:
                    return UserError(f"could not rebuild this project's damaged CPU kernel ({_reason(error)}); "
                                     f"delete the folder {folder} and run again")
                return UserError(f"could not build this project's CPU kernel ({_reason(error)}); it needs a C++ "
                                 "compiler with OpenMP (c++, or set CXX) and ninja (pip install -r requirements.txt)")
            # Recorded after a build that loaded, so that a later run checks what it is about to load.
            atomic_write(digest, lambda file: file.write(f"{_sha256(library)}  {LIBRARY}\n".encode()))
            return torch.ops.tinystories_kernels
    except (OSError, UserError) as error:  # the folder cannot be made, locked or written
        reason = (error.strerror or error) if isinstance(error, OSError) else error
        return UserError(f"could not use the CPU kernel's build folder {folder} ({reason}); delete it, or set "
                         "TORCH_EXTENSIONS_DIR to a writable folder")


def _load_library(library: Path, folder: Path) -> Any:
    """The kernels' namespace from `library`, which has passed its check; the UserError if it will not load."""
    try:
        torch.ops.load_library(str(library))
    except (RuntimeError, OSError) as error:
        return UserError(f"could not load this project's CPU kernel ({first_line(error)}); delete the folder {folder} "
                         "and run again to rebuild it")
    return torch.ops.tinystories_kernels


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _recorded(digest: Path) -> str:
    """The sha256 that a digest file (sha256sum's format) records; '' where it holds none."""
    words = digest.read_bytes().split()
    return words[0].decode("ascii", "replace") if words else ""


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on `folder` (where fcntl exists), so that no other process rebuilds the library
    while this one checks, builds or loads it."""
    with open(folder / "tinystories_kernels.lock", "a") as file:
        try:
            import fcntl
        except ImportError:  # Windows
            yield
            return
        fcntl.flock(file, fcntl.LOCK_EX)
        yield
