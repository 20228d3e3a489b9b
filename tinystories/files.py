"""Writing files so that a crash never leaves a half-written file under the final name.

Everything is written to a hidden temporary file beside its target (a unique name, so concurrent runs never
share one), flushed to disk, and renamed over the target in one step.
"""
from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

from tinystories.errors import UserError


def default_mode(folder: bool = False) -> int:
    """The permissions a plain open() (or mkdir(), for a folder) would give under this process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if folder else 0o666) & ~umask


def temporary_file_beside(target: Path) -> tuple[BinaryIO, Path]:
    """An open binary file with a unique hidden name in target's folder, with ordinary permissions
    (mkstemp's own are owner-only, which a rename would carry over to the target)."""
    descriptor, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.fchmod(descriptor, default_mode())
    return os.fdopen(descriptor, "wb"), Path(name)


def read_text_file(path: str | os.PathLike, what: str) -> str:
    """The UTF-8 text of a small input file; a folder, an unreadable file or other bytes are a UserError
    that starts with `what` (e.g. "config file x.yaml")."""
    file = Path(path)
    if file.is_dir():
        raise UserError(f"{what} is a folder, not a file")
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{what} not found") from None
    except OSError as error:
        raise UserError(f"{what} could not be read: {error.strerror or error}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{what} is not UTF-8 text (byte {data[error.start]:#04x} at offset {error.start})") from None


def ensure_folder(folder: str | os.PathLike) -> Path:
    """Create `folder` (and its parents) now and check that a file can be created in it, so a bad output path
    is a one-line error before any work rather than a traceback after it."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise UserError(f"{folder} is a file, not a folder; pass a folder path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create the output folder {folder}: {error.strerror or error}") from None
    try:
        # Permission bits alone do not tell (root ignores them; a read-only mount does not show in them).
        probe, probe_path = temporary_file_beside(path / "write_check")
        probe.close()
        probe_path.unlink()
    except OSError as error:
        raise UserError(f"cannot write in the output folder {folder}: {error.strerror or error}") from None
    return path


def check_output_file(path: str | os.PathLike, flag: str) -> Path:
    """Check before any work that the file `path` (given as `flag`) can be written: not a folder, and its
    folder exists or can be made, and takes new files."""
    file = Path(path)
    if file.is_dir():
        raise UserError(f"{flag} {path} is a folder; pass the path of the file to write")
    ensure_folder(file.parent)
    return file


def check_not_an_input(output: str | os.PathLike, flag: str, inputs: Iterable[str | os.PathLike],
                       folder: bool = False) -> None:
    """Refuse, before any work, an output that would overwrite one of the run's inputs: the same file (also
    through `..`, a link or a hard link), a file inside an input folder (a model folder's files are inputs), and
    with `folder` (the output is a folder to write files into) one that holds an input."""
    target = Path(output).resolve()
    for given in inputs:
        source = Path(given).resolve()
        same = target == source or (target.exists() and source.exists() and os.path.samefile(target, source))
        if same or (source.is_dir() and source in target.parents):
            where = "is" if same else "is inside"
            raise UserError(f"{flag} {output} {where} the input {given}, which writing it would destroy; "
                            "choose another path")
        if folder and target in source.parents:
            raise UserError(f"{flag} {output} holds the input {given}, which writing there could overwrite; "
                            "choose another path")


@contextlib.contextmanager
def folders_removed_on_failure(*folders: str | os.PathLike) -> Iterator[None]:
    """On an exception inside the block, remove those of `folders` and their parents that did not exist before
    it and are still empty, so a run that fails before writing anything leaves no empty folders behind."""
    missing = missing_folders(*folders)
    try:
        yield
    except BaseException:
        remove_empty_folders(missing)
        raise


def missing_folders(*folders: str | os.PathLike) -> list[Path]:
    """Those of `folders` and their parents that do not exist yet, children before parents."""
    missing = {path for folder in folders for path in (Path(folder), *Path(folder).parents) if not path.exists()}
    return sorted(missing, key=lambda p: len(p.parts), reverse=True)


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove each of `folders` (children listed before parents) that is empty: anything written stays."""
    for path in folders:
        try:
            path.rmdir()
        except OSError:
            pass


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` for a writer that opens its file by name; when the block completes, the
    file is fsynced and renamed to `path`.

    A failure to write (a full disk, a folder gone read-only) is a UserError saying that the previous file,
    if any, is kept: the temporary file is removed and `path` is untouched.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        file, temporary = temporary_file_beside(target)
        file.close()
    except OSError as error:
        raise _write_failed(target, error) from None
    try:
        yield temporary
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(temporary, target)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise _write_failed(target, error) from None
        raise
    fsync_folder(target.parent)  # make the rename itself durable


def fsync_folder(folder: Path) -> None:
    """Make the renames into `folder` durable."""
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def atomic_write(path: str | os.PathLike, write: Any) -> None:
    """Call `write(file_object)` on a temporary file beside `path`, then fsync and rename it to `path` as
    atomic_path does (a failed write is the same UserError)."""
    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        write(file)


def _write_failed(target: Path, error: OSError) -> UserError:
    kept = f"the previous {target.name} is kept" if target.is_file() else "it was not written"
    return UserError(f"could not write {target}: {error.strerror or error}; {kept}")


def write_json(path: str | os.PathLike, document: Any) -> None:
    """`document` as indented JSON, written atomically."""
    text = json.dumps(document, indent=2) + "\n"
    atomic_write(path, lambda file: file.write(text.encode("utf-8")))


def write_json_lines(path: str | os.PathLike, records: Iterable[Any]) -> None:
    """One JSON document per line (JSONL), written atomically."""
    text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    atomic_write(path, lambda file: file.write(text.encode("utf-8")))


def remove_stale_temporaries(folder: Path, target_globs: Iterable[str]) -> list[Path]:
    """Delete the temporary files (see temporary_file_beside) that killed writes of targets matching
    `target_globs` left in `folder`.

    Only the caller knows that no live writer shares the folder (train.py holds its lock); names of the form
    `.<target>.<random>.tmp` whose target matches no glob are left alone.
    """
    globs = list(target_globs)
    removed = []
    for path in folder.glob(".*.tmp") if folder.is_dir() else []:
        target = path.name[1:].removesuffix(".tmp").rpartition(".")[0]
        if target and path.is_file() and any(fnmatch.fnmatchcase(target, glob) for glob in globs):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
