"""Writing files so that a crash never leaves a half-written file under the final name.

Everything is written to a hidden temporary file beside its target (a unique name, so concurrent runs never
share one), flushed to disk, and renamed over the target in one step.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from tinystories.errors import UserError


def _default_mode() -> int:
    """The permissions a plain open() would give a new file under this process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def temporary_file_beside(target: Path) -> tuple[BinaryIO, Path]:
    """An open binary file with a unique hidden name in target's folder, with ordinary permissions
    (mkstemp's own are owner-only, which a rename would carry over to the target)."""
    descriptor, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.fchmod(descriptor, _default_mode())
    return os.fdopen(descriptor, "wb"), Path(name)


def ensure_folder(folder: str | os.PathLike) -> None:
    """Create `folder` (and its parents) now, so a bad output path is a one-line error before any work."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create the output folder {folder}: {error.strerror or error}") from None


def atomic_write(path: str | os.PathLike, write: Any) -> None:
    """Call `write(file_object)` on a temporary file beside `path`, fsync it, then rename it to `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    file, temporary = temporary_file_beside(target)
    try:
        with file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)
