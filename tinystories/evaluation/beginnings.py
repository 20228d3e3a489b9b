"""Story beginnings for the judge's completions: the first part of held-out stories cut at a seeded word, or
beginnings read from a file."""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

from tinystories.errors import UserError, first_line


def story_beginning(story: str, seed: int, number: int) -> str:
    """The first part of a story, cut after a word (a run of non-space characters) at a seeded point.

    A story of W words keeps its first k words, k drawn uniformly from [max(1, floor(0.3 W)), max(1, floor(0.6 W))]
    by random.Random(f"{seed}:{number}") (number: the story's 0-based place), so the cut usually falls inside a
    sentence, as in the paper, and the same seed gives the same beginnings on every machine.
    """
    ends = [match.end() for match in re.finditer(r"\S+", story)]
    if not ends:
        raise UserError(f"story {number + 1} is empty; it has no beginning to complete")
    rng = random.Random(f"{seed}:{number}")
    kept = rng.randint(max(1, len(ends) * 3 // 10), max(1, len(ends) * 6 // 10))
    return story[:ends[kept - 1]].strip()


def read_beginnings(path: str) -> list[str]:
    """Beginnings from a file: a YAML list of strings (.yaml/.yml), JSON Lines of strings or of objects with
    "prompt" or "text" (.jsonl), else one per line (blank lines skipped)."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--judge_prompts file {path} not found")
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"--judge_prompts file {path} is not UTF-8 text") from None
    if file.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            beginnings = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise UserError(f"{path}: not valid YAML: {first_line(error)}") from None
        if not isinstance(beginnings, list) or not all(isinstance(item, str) for item in beginnings):
            raise UserError(f"{path}: expected a YAML list of strings")
    elif file.suffix.lower() == ".jsonl":
        beginnings = []
        for line_number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(f"{path}:{line_number}: invalid JSON: {error.msg}") from None
            value = item if isinstance(item, str) else item.get("prompt", item.get("text")) \
                if isinstance(item, dict) else None
            if not isinstance(value, str):
                raise UserError(f"{path}:{line_number}: expected a string or an object with a \"prompt\" or "
                                f"\"text\" string")
            beginnings.append(value)
    else:
        beginnings = text.splitlines()
    beginnings = [item.strip() for item in beginnings if item.strip()]
    if not beginnings:
        raise UserError(f"--judge_prompts file {path} holds no beginnings")
    return beginnings
