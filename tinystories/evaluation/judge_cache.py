"""The judge's cache: every grading appended to a JSON-lines file as it arrives, keyed by the judge model, the
prompt version, the beginning and the completion, so a rerun asks only for what is not graded yet. Each entry
read back is checked as strictly as a reply; a bad one is graded again, never averaged."""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

from tinystories.errors import UserError
from tinystories.evaluation.judge_protocol import (
    PROMPT_VERSION,
    is_count,
    is_text,
    load_json,
    valid_grades,
)
from tinystories.files import check_output_file


def cache_key(judge_model: str, beginning: str, completion: str) -> str:
    return hashlib.sha256(json.dumps([judge_model, PROMPT_VERSION, beginning, completion]).encode("utf-8")).hexdigest()


def cache_entry(line: bytes) -> Optional[dict[str, Any]]:
    """The grading of one cache line, checked as strictly as a judge's reply: a key, grades that parse_grades
    would accept, an assessment that is text, token counts that are whole numbers; None for anything else."""
    try:
        entry = load_json(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
        return None
    grades = valid_grades(entry.get("grades"))
    assessment = entry.get("assessment", "")
    tokens = [entry.get("prompt_tokens", 0), entry.get("completion_tokens", 0)]
    if grades is None or not is_text(assessment) or not all(is_count(count) for count in tokens):
        return None
    return {**entry, "grades": grades, "assessment": assessment, "prompt_tokens": tokens[0],
            "completion_tokens": tokens[1]}


def check_cache_path(path: str) -> None:
    """Refuse, before any work, a --judge_cache that cannot be appended to: a folder, a path under a file, a
    folder that takes no new files, a file that cannot be opened for appending."""
    file = Path(path)
    if file.exists() and not file.is_file():
        raise UserError(f"--judge_cache {path} exists and is not a file")
    try:
        check_output_file(file, "--judge_cache")
    except UserError as error:
        raise UserError(f"--judge_cache {path} cannot be written: {error}") from None
    if file.is_file():
        try:
            with open(file, "ab"):  # what add() does; nothing is written now
                pass
        except OSError as error:
            raise UserError(f"--judge_cache {path} cannot be written: {error.strerror or error}") from None


class GradingCache:
    """Gradings on disk, one JSON line each, appended (and fsynced) as they arrive, so Ctrl-C or a crash keeps
    every grading finished before it. Only gradings are kept: an ungraded item is asked again next time, and so
    is one whose line is not a valid grading (cut short by a crash, or edited).

    The file is checked to be writable here, before the first request, not after the work."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.entries: dict[str, dict[str, Any]] = {}
        self.ignored = 0  # lines that are not valid gradings
        self._ends_with_newline = True
        check_cache_path(path)
        if not self.path.is_file():
            return
        try:
            data = self.path.read_bytes()
        except OSError as error:
            raise UserError(f"--judge_cache {path} cannot be read: {error.strerror or error}") from None
        self._ends_with_newline = not data or data.endswith(b"\n")
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            entry = cache_entry(line)
            if entry is None:
                self.ignored += 1
            else:
                self.entries[entry["key"]] = entry
        if self.ignored:
            print(f"note: {self.ignored:,} line(s) of --judge_cache {path} are not valid gradings (cut short by a "
                  f"crash, or edited); their items are graded again", file=sys.stderr)

    def get(self, key: str) -> Optional[dict[str, Any]]:
        return self.entries.get(key)

    def add(self, entry: dict[str, Any]) -> None:
        # A line cut short by a crash has no newline: the new line starts after one, so it is not glued to it.
        text = ("" if self._ends_with_newline else "\n") + json.dumps(entry, ensure_ascii=False) + "\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as file:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
        except OSError as error:
            raise UserError(f"could not write --judge_cache {self.path}: {error.strerror or error}; the "
                            f"gradings already in it are kept") from None
        self._ends_with_newline = True
        self.entries[entry["key"]] = entry
