"""A prepared data folder: `meta.json` and one uint16 token file per split, checked before they are trusted."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from tinystories import quickstart
from tinystories.errors import UserError
from tinystories.files import write_json

SPLITS = ("train", "validation", "test")
META_FILE = "meta.json"
TOKEN_DTYPE = np.uint16


def read_meta(data_dir: Union[str, Path]) -> dict[str, Any]:
    """The folder's meta.json; a missing or unreadable one is a UserError saying how to make it."""
    folder = Path(data_dir)
    if not folder.is_dir():
        raise UserError(f"data folder {folder} not found; make it with python prepare.py (see README, Data), or pass "
                        f"--data_dir {quickstart.DATA_DIR} after `{quickstart.COMMAND}` (offline)")
    path = folder / META_FILE
    if not path.is_file():
        raise UserError(f"{folder} holds no prepared token files ({META_FILE} not found); "
                        "make them with python prepare.py (see README, Data)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path} is not valid JSON; run python prepare.py again to rebuild it") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("splits"), dict):
        raise UserError(f"{path} is not a meta.json written by prepare.py; run python prepare.py again")
    return meta


def write_meta(data_dir: Path, meta: dict[str, Any]) -> None:
    """Write meta.json atomically: it is the mark that the folder's token files are complete."""
    write_json(data_dir / META_FILE, meta)


def _has_recorded_size(data_dir: Path, record: dict[str, Any]) -> bool:
    """Whether a split's token file exists with the size its meta.json record gives."""
    path = data_dir / record["file"]
    return path.is_file() and path.stat().st_size == record["tokens"] * np.dtype(TOKEN_DTYPE).itemsize


def stale_split(data_dir: Path, meta: dict[str, Any]) -> Optional[str]:
    """The name of a token file that does not have the size meta.json records, or None when all do."""
    return next((record["file"] for record in meta["splits"].values()
                 if not _has_recorded_size(data_dir, record)), None)


def load_tokens(data_dir: Union[str, Path], split: str) -> np.ndarray:
    """The token ids of one split as a read-only memmap, after checking the file against meta.json."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    folder = Path(data_dir)
    meta = read_meta(folder)
    record = meta["splits"].get(split)
    if record is None:
        raise UserError(f"{folder} has no {split} split (its source has no held-out stories)")
    path = folder / record["file"]
    if not _has_recorded_size(folder, record):
        raise UserError(f"{path} does not match meta.json (missing or truncated); "
                        "run python prepare.py again to rebuild it")
    if record["tokens"] == 0:
        return np.zeros(0, dtype=TOKEN_DTYPE)
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r")
