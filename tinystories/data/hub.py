"""TinyStories on the Hugging Face Hub: which files, at which revision, downloaded and checked.

Downloads go through `huggingface_hub.hf_hub_download`, so its cache, resumable downloads, `HF_HUB_OFFLINE`
and tokens work as users expect. The revision is a commit, so a cached file needs no network at all.
"""
from __future__ import annotations

import functools
import hashlib
import socket
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tinystories import quickstart
from tinystories.errors import UserError, first_line

REPOSITORY = "roneneldan/TinyStories"
REVISION = "f54c09fd23315a6f9c86f9dc80f725de7d8f9c64"
OFFLINE_HINT = ("use local story files with --data_path FILES, or --dataset synthetic for a generated corpus; "
                f"the whole CPU quick start, offline: {quickstart.COMMAND}")


@dataclass(frozen=True)
class HubFile:
    filename: str
    role: str  # "train": training stories (split into train and validation); "test": held out
    sha256: Optional[str] = None  # None: checked against the digest in the Hub's LFS pointer instead


HUB_FILES: dict[str, list[HubFile]] = {
    "tinystories": [
        HubFile("data/train-00000-of-00004-2d5a1467fff1081b.parquet", "train"),
        HubFile("data/train-00001-of-00004-5852b56a2bd28fd9.parquet", "train"),
        HubFile("data/train-00002-of-00004-a26307300439e943.parquet", "train"),
        HubFile("data/train-00003-of-00004-d243063613e5a057.parquet", "train"),
        HubFile("data/validation-00000-of-00001-869c898b519ad725.parquet", "test",
                "33406a6206554cfc279c29c11f4df51528af487aa1a602b075566fc83c49dcab"),
    ],
    "tinystories-v2": [
        HubFile("TinyStoriesV2-GPT4-train.txt", "train"),
        HubFile("TinyStoriesV2-GPT4-valid.txt", "test"),
    ],
}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def hub_resolves() -> bool:
    """Whether the Hub's host name resolves: without it, huggingface_hub would retry for half a minute."""
    import huggingface_hub.constants

    host = urllib.parse.urlparse(huggingface_hub.constants.ENDPOINT).hostname or ""
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def download_hub_file(hub_file: HubFile) -> tuple[Path, str]:
    """The local path of `hub_file` at REVISION (from the cache when there) and its verified sha256."""
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    fetch = functools.partial(huggingface_hub.hf_hub_download, REPOSITORY, hub_file.filename, repo_type="dataset",
                              revision=REVISION)
    try:
        local = fetch(local_files_only=True)  # the revision is a commit: a cached file needs no network
    except LocalEntryNotFoundError:
        if huggingface_hub.constants.HF_HUB_OFFLINE or not hub_resolves():
            raise UserError(f"the Hugging Face Hub is unreachable (offline, or its name does not resolve) and "
                            f"{hub_file.filename} is not in its cache; {OFFLINE_HINT}") from None
        print(f"downloading {hub_file.filename} from {REPOSITORY} at {REVISION[:10]}", file=sys.stderr)
        try:
            local = fetch()
        except LocalEntryNotFoundError:
            raise UserError(f"the Hugging Face Hub is unreachable and {hub_file.filename} is not in its cache; "
                            f"{OFFLINE_HINT}") from None
        except (HfHubHTTPError, OSError) as error:
            raise UserError(f"downloading {hub_file.filename} from the Hugging Face Hub failed ({first_line(error)}); "
                            f"{OFFLINE_HINT}") from None
    path = Path(local)
    # huggingface_hub stores an LFS file as a blob named by its sha256 and links the snapshot file to it.
    expected = hub_file.sha256 or (path.resolve().name if path.is_symlink() else None)
    actual = sha256_of(path)
    if expected is not None and actual != expected:
        raise UserError(f"{path} has sha256 {actual}, expected {expected}: the download is corrupt; "
                        "delete it and run again")
    return path, actual
