"""Story files on disk: which files a `--data_path` names, and the stories each one holds.

Formats: `.txt` (stories separated by lines holding exactly `<|endoftext|>`), `.jsonl` (one object per line
with a string field `text` or `story`), `.json` (an array of such objects, or JSON Lines), `.parquet` (a string
column `text` or `story`). Every story is stripped of surrounding whitespace; empty stories are dropped.
Bad input is a UserError naming the file and the line (or byte offset).
"""
from __future__ import annotations

import glob
import json
import sys
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, Optional, Union

from tinystories.errors import UserError, first_line
from tinystories.tokenizer import EOT_TOKEN

SUPPORTED_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
STORY_FIELDS = ("text", "story")
SEPARATOR_LINE = EOT_TOKEN.encode()
BYTE_ORDER_MARK = b"\xef\xbb\xbf"
# TinyStories' stories are a few kilobytes; a longer one means a wrong format (say, a file without separator
# lines, or one huge JSON line), and reading lines without a bound would hold the whole file in memory at
# once, tokenizing it many times over (a 50 MB one-line .txt once took 2.5 GB before its error).
MAX_STORY_BYTES = 4 << 20

# Called with the number of input bytes just consumed; the calls for one file add up to its size.
ByteProgress = Callable[[int], None]
PathsLike = Union[str, Path, Iterable[Union[str, Path]]]


def expand_paths(data_path: PathsLike) -> list[Path]:
    """The story files named by comma-separated files, folders (searched recursively) or globs, in order, once each."""
    if isinstance(data_path, (str, Path)):
        entries = [entry.strip() for entry in str(data_path).split(",")]
    else:
        entries = [str(entry).strip() for entry in data_path]
    entries = [entry for entry in entries if entry]
    if not entries:
        raise UserError(f"--data_path {str(data_path)!r} names no files")
    files: list[Path] = []
    for entry in entries:
        for path in _files_of(entry):
            if path not in files:
                files.append(path)
    return files


def _files_of(entry: str) -> list[Path]:
    if glob.has_magic(entry):
        matches = [Path(match) for match in sorted(glob.glob(entry, recursive=True))]
        story_files = [path for path in matches if path.is_file() and path.suffix.lower() in SUPPORTED_SUFFIXES]
        if not story_files:
            raise UserError(f"--data_path pattern {entry} matches no {'/'.join(SUPPORTED_SUFFIXES)} files")
        return story_files
    path = Path(entry)
    if path.is_dir():
        story_files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES)
        if not story_files:
            raise UserError(f"folder {path} holds no {'/'.join(SUPPORTED_SUFFIXES)} files")
        return story_files
    if not path.is_file():
        raise UserError(f"data file {path} not found")
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise UserError(f"{path}: unsupported format {path.suffix or '(no extension)'}; "
                        f"use {', '.join(SUPPORTED_SUFFIXES)}")
    return [path]


def read_stories(data_path: PathsLike, progress: Optional[ByteProgress] = None) -> Iterator[str]:
    """Every story of every file that `data_path` names, in order."""
    for path in expand_paths(data_path):
        yield from read_file_stories(path, progress)


def read_file_stories(path: Path, progress: Optional[ByteProgress] = None) -> Iterator[str]:
    """The stories of one file; a file without any story is a UserError."""
    path = Path(path)
    readers = {".txt": _txt_stories, ".jsonl": _json_lines_stories, ".json": _json_stories,
               ".parquet": _parquet_stories}
    count = progress or (lambda size: None)
    found = False
    for story in readers[path.suffix.lower()](path, count):
        found = True
        yield story
    if not found:
        raise UserError(f"{path}: no stories found")


def _decoded(line: bytes, path: Path, line_number: int, line_offset: int) -> str:
    """The line as text; a UTF-8 byte-order mark at the start of the file is dropped."""
    skipped = len(BYTE_ORDER_MARK) if line_offset == 0 and line.startswith(BYTE_ORDER_MARK) else 0
    try:
        return line[skipped:].decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{path}:{line_number}: invalid UTF-8 at byte offset "
                        f"{line_offset + skipped + error.start}") from None


def _bounded_lines(file: BinaryIO, path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of a binary file, never reading more than MAX_STORY_BYTES of one line."""
    line_number = 0
    while line := file.readline(MAX_STORY_BYTES + 1):
        line_number += 1
        if len(line) > MAX_STORY_BYTES:
            raise _too_long(path, line_number)
        yield line_number, line


def _too_long(path: Path, line_number: int) -> UserError:
    return UserError(f"{path}:{line_number}: a story longer than {MAX_STORY_BYTES >> 20} MB; stories are separated "
                     f"by lines holding exactly {EOT_TOKEN} (.txt) or are one JSON object per line (.jsonl)")


def _txt_stories(path: Path, count: ByteProgress) -> Iterator[str]:
    lines: list[str] = []
    story_bytes = separators = offset = 0
    with open(path, "rb") as file:
        for line_number, line in _bounded_lines(file, path):
            if line.rstrip(b"\r\n").removeprefix(BYTE_ORDER_MARK if offset == 0 else b"") == SEPARATOR_LINE:
                separators += 1
                story = "".join(lines).strip()
                lines, story_bytes = [], 0
                if story:
                    yield story
            else:
                story_bytes += len(line)
                if story_bytes > MAX_STORY_BYTES:
                    raise _too_long(path, line_number)
                lines.append(_decoded(line, path, line_number, offset))
            offset += len(line)
            count(len(line))
    story = "".join(lines).strip()
    if story:
        if separators == 0:
            print(f"note: {path} has no {EOT_TOKEN} separator lines; the whole file is one story", file=sys.stderr)
        yield story


def _story_of(record: object, path: Path, line_number: int) -> Optional[str]:
    """The story in one JSON record (None when blank); a malformed record is a UserError."""
    where = f"{path}:{line_number}"
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object with a \"text\" field, got {type(record).__name__}")
    field = next((name for name in STORY_FIELDS if name in record), None)
    if field is None:
        raise UserError(f'{where}: JSON object has no "text" or "story" field')
    story = record[field]
    if not isinstance(story, str):
        raise UserError(f'{where}: field "{field}" must be a string, got {type(story).__name__}')
    try:
        story.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"{where}: text holds an unpaired surrogate (\\ud800-\\udfff escape)") from None
    return story.strip() or None


def _json_lines_stories(path: Path, count: ByteProgress) -> Iterator[str]:
    offset = 0
    with open(path, "rb") as file:
        for line_number, line in _bounded_lines(file, path):
            text = _decoded(line, path, line_number, offset)
            offset += len(line)
            count(len(line))
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                raise UserError(f"{path}:{line_number}: not valid JSON ({error.msg})") from None
            story = _story_of(record, path, line_number)
            if story:
                yield story


def _json_stories(path: Path, count: ByteProgress) -> Iterator[str]:
    """A JSON array of objects, read whole; JSON Lines under a .json name also work (streamed)."""
    with open(path, "rb") as file:
        start = file.read(4096).removeprefix(BYTE_ORDER_MARK).lstrip()
    if not start.startswith(b"["):
        yield from _json_lines_stories(path, count)
        return
    content = path.read_bytes()
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as error:
        line_number = content.count(b"\n", 0, error.start) + 1
        raise UserError(f"{path}:{line_number}: invalid UTF-8 at byte offset {error.start}") from None
    try:
        records = json.loads(text.removeprefix("\ufeff"))
    except json.JSONDecodeError as error:
        raise UserError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
    count(len(content))
    # json.loads does not give positions of array elements; name the element instead of a line.
    for index, record in enumerate(records):
        story = _story_of(record, path, index + 1)
        if story:
            yield story


def _parquet_stories(path: Path, count: ByteProgress) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        raise UserError(f"{path}: not a readable parquet file ({first_line(error)})") from None
    column = next((name for name in STORY_FIELDS if name in parquet.schema_arrow.names), None)
    if column is None:
        raise UserError(f'{path}: parquet file has no "text" or "story" column '
                        f"(columns: {', '.join(parquet.schema_arrow.names)})")
    column_type = parquet.schema_arrow.field(column).type
    if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
        raise UserError(f'{path}: parquet column "{column}" must hold strings, not {column_type}')
    size = path.stat().st_size
    rows_total = max(parquet.metadata.num_rows, 1)
    rows_read = reported = 0
    batches = parquet.iter_batches(columns=[column], batch_size=4096)
    while True:
        try:
            batch = next(batches, None)
            stories = [] if batch is None else batch.column(0).to_pylist()
        except UnicodeDecodeError as error:
            raise UserError(f"{path}: invalid UTF-8 in rows {rows_read + 1:,} to {rows_read + 4096:,} "
                            f"({error.reason})") from None
        except (pa.ArrowException, OSError) as error:
            raise UserError(f"{path}: unreadable after row {rows_read:,} ({first_line(error)})") from None
        if batch is None:
            break
        for story in stories:
            if story is not None and story.strip():
                yield story.strip()
        rows_read += batch.num_rows
        progress_bytes = size * rows_read // rows_total
        count(progress_bytes - reported)
        reported = progress_bytes
    count(size - reported)
