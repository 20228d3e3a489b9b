"""prepare_data: from a source (the Hub, local files, or the synthetic corpus) to a folder of token files.

The folder is reused while its inputs (the source's files and their digests, the tokenizer, the split
settings, the format version) are unchanged, and rebuilt otherwise. See README, Data.
"""
from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from tqdm.auto import tqdm

from tinystories.checks import require_at_least
from tinystories.data import hub, synthetic
from tinystories.data.pipeline import SPLIT_RULE, SplitFile, ValidationRule, write_splits
from tinystories.data.readers import ByteProgress, expand_paths, read_file_stories
from tinystories.data.token_files import META_FILE, SPLITS, read_meta, stale_split, write_meta
from tinystories.errors import UserError
from tinystories.files import ensure_folder, folders_removed_on_failure
from tinystories.paths import DATA_ROOT
from tinystories.tokenizer import EOT_ID, VOCAB_SIZE

FORMAT_VERSION = 1
DATASETS = ("tinystories", "tinystories-v2", "synthetic")
HELD_OUT_WORDS = {"valid", "validation", "val", "test"}
TOKENIZER = {"name": "gpt2", "vocab_size": VOCAB_SIZE, "end_of_text": EOT_ID, "dtype": "uint16"}


@dataclass
class DataConfig:
    dataset: str = field(default="tinystories", metadata={
        "choices": list(DATASETS),
        "help": "tinystories (the Hub's parquet files), tinystories-v2 (GPT-4-only text files), or synthetic "
                "(generated, no network); ignored with --data_path"})
    data_path: Optional[str] = field(default=None, metadata={
        "metavar": "FILES", "help": "local .txt/.jsonl/.json/.parquet story files, folders or globs, comma-separated"})
    data_dir: Optional[str] = field(default=None, metadata={
        "metavar": "DIR", "help": "folder of the token files (default: data/<dataset> or data/<name of the files>)"})
    seed: int = field(default=1337, metadata={"help": "seed of the train/validation split"})
    val_fraction: float = field(default=0.05, metadata={"help": "share of training stories held for validation"})
    max_stories: Optional[int] = field(default=None, metadata={
        "help": "read at most N training and N held-out stories (quick experiments)"})
    num_workers: Optional[int] = field(default=None, metadata={"help": "tokenizer threads (None: all cores)"})

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise UserError(f"--dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise UserError(f"--val_fraction must be between 0 and 1 (exclusive), got {self.val_fraction}")
        require_at_least(self, ("max_stories", "num_workers"))

    @property
    def workers(self) -> int:
        """Tokenizer threads: --num_workers, or every core this process may use."""
        if self.num_workers:
            return self.num_workers
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class StoryStream:
    """One input of a source: its role, and a way to open it (a download, for the Hub) when it is reached."""
    role: str  # "train" or "test"
    open: Callable[[ByteProgress], tuple[Optional[dict[str, Any]], Iterator[str]]]


@dataclass
class Source:
    description: dict[str, Any]  # part of the cache key: what the stories come from
    streams: list[StoryStream]
    default_dir: Path
    total_bytes: Optional[int] = None


def is_held_out(path: Path) -> bool:
    """Whether a local file holds held-out stories: a word of its name is valid, validation, val or test."""
    return bool(HELD_OUT_WORDS & set(re.split(r"[-_. ]+", path.name.lower())))


def _file_record(name: str, role: str, path: Path, sha256: str) -> dict[str, Any]:
    return {"name": name, "role": role, "bytes": path.stat().st_size, "sha256": sha256}


def local_source(data_path: str, data_dir: Optional[str]) -> Source:
    paths = expand_paths(data_path)
    name = paths[0].stem if len(paths) == 1 else Path(os.path.commonpath([p.resolve().parent for p in paths])).name
    default_dir = DATA_ROOT / (name or "local")
    output = Path(data_dir or default_dir).resolve()
    # A data folder inside the --data_path folder holds this run's own meta.json: it is no story file.
    paths = [path for path in paths if not (path.name == META_FILE and path.resolve().parent == output)]
    records = [_file_record(path.name, "test" if is_held_out(path) else "train", path, hub.sha256_of(path))
               for path in paths]

    def opener(path: Path, record: dict[str, Any]) -> Callable:
        return lambda progress: (record, read_file_stories(path, progress))

    streams = [StoryStream(record["role"], opener(path, record)) for path, record in zip(paths, records)]
    return Source({"kind": "local files", "files": records}, streams, default_dir,
                  sum(record["bytes"] for record in records))


def hub_source(dataset: str) -> Source:
    def opener(hub_file: hub.HubFile) -> Callable:
        def open_stream(progress: ByteProgress) -> tuple[dict[str, Any], Iterator[str]]:
            path, sha256 = hub.download_hub_file(hub_file)
            return _file_record(hub_file.filename, hub_file.role, path, sha256), read_file_stories(path, progress)
        return open_stream

    files = hub.HUB_FILES[dataset]
    description = {"kind": "Hugging Face Hub", "repository": hub.REPOSITORY, "revision": hub.REVISION,
                   "files": [f.filename for f in files]}
    return Source(description, [StoryStream(f.role, opener(f)) for f in files], DATA_ROOT / dataset)


def synthetic_source() -> Source:
    def opener(split: str, count: int) -> Callable:
        def open_stream(progress: ByteProgress) -> tuple[None, Iterator[str]]:
            def stories() -> Iterator[str]:
                for story in synthetic.synthetic_stories(split, count):
                    progress(len(story.encode("utf-8")))
                    yield story
            return None, stories()
        return open_stream

    description = {"kind": "synthetic", "generator_version": synthetic.GENERATOR_VERSION,
                   "train_stories": synthetic.TRAIN_STORIES, "test_stories": synthetic.TEST_STORIES}
    streams = [StoryStream("train", opener("train", synthetic.TRAIN_STORIES)),
               StoryStream("test", opener("test", synthetic.TEST_STORIES))]
    return Source(description, streams, DATA_ROOT / "synthetic")


def make_source(config: DataConfig) -> Source:
    if config.data_path is not None:
        return local_source(config.data_path, config.data_dir)
    if config.dataset == "synthetic":
        return synthetic_source()
    return hub_source(config.dataset)


def _rebuild_reason(data_dir: Path, inputs: dict[str, Any]) -> Optional[str]:
    """Why the folder's token files cannot be reused for `inputs`; None when they can."""
    try:
        meta = read_meta(data_dir)
    except UserError:
        return f"{META_FILE} is missing or unreadable"
    old_inputs = meta.get("inputs", {})
    changed = sorted(key for key in set(old_inputs) | set(inputs) if old_inputs.get(key) != inputs.get(key))
    if changed:
        return f"inputs changed ({', '.join(changed)})"
    stale = stale_split(data_dir, meta)
    return f"{stale} is missing or truncated" if stale else None


def prepare_data(config: DataConfig, progress: bool = True, report: bool = True) -> Path:
    """Make (or reuse) the token files that `config` describes; returns their folder. `progress` shows bars,
    `report` says whether the files were reused or rebuilt (False on torchrun's other ranks: one says it)."""
    source = make_source(config)
    inputs = {"source": source.description, "tokenizer": TOKENIZER, "seed": config.seed,
              "val_fraction": config.val_fraction, "max_stories": config.max_stories,
              "format_version": FORMAT_VERSION}
    data_dir = Path(config.data_dir) if config.data_dir else source.default_dir
    reason = _rebuild_reason(data_dir, inputs)
    if reason is None:
        if report:
            print(f"{data_dir}: token files are up to date for these inputs; reusing them")
        return data_dir
    if data_dir.is_dir() and any(data_dir.iterdir()) and report:
        print(f"{data_dir}: {reason}; rebuilding the token files")
    with folders_removed_on_failure(data_dir):
        ensure_folder(data_dir)  # an unusable folder fails now, before the stories are read
        splits, files = _tokenize(source, config, data_dir, progress)
    if "test" not in splits:
        (data_dir / "test.bin").unlink(missing_ok=True)
    write_meta(data_dir, {"inputs": inputs, "files": files, "split_rule": SPLIT_RULE, "splits": splits})
    summary = ", ".join(f"{split} {record['stories']:,} stories / {record['tokens']:,} tokens"
                        for split, record in splits.items())
    print(f"wrote {data_dir}: {summary}")
    return data_dir


def _tokenize(source: Source, config: DataConfig, data_dir: Path,
              progress: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Write the split files; returns their meta.json records and the records of the files read."""
    roles = {stream.role for stream in source.streams}
    if "train" not in roles:
        raise UserError("the inputs hold no training stories: every file is named as held-out "
                        "(valid, validation, val or test); give at least one file of training stories")
    split_names = [split for split in SPLITS if split != "test" or "test" in roles]
    split_files = {split: SplitFile(data_dir / f"{split}.bin") for split in split_names}
    in_validation = ValidationRule(config.seed, config.val_fraction)
    files_read: list[dict[str, Any]] = []
    bar = tqdm(total=source.total_bytes, unit="B", unit_scale=True, unit_divisor=1000, desc="tokenizing",
               disable=not progress, dynamic_ncols=True)

    def labelled_stories() -> Iterator[tuple[str, str]]:
        for role in ("train", "test"):
            remaining = config.max_stories
            for stream in (s for s in source.streams if s.role == role):
                if remaining == 0:
                    break
                record, stories = stream.open(bar.update)
                if record is not None:
                    files_read.append(record)
                for story in itertools.islice(stories, remaining):
                    if role == "test":
                        yield "test", story
                    else:
                        yield ("validation" if in_validation(story) else "train"), story
                    if remaining is not None:
                        remaining -= 1
                bar.set_postfix(stories=f"{sum(f.stories for f in split_files.values()):,}", refresh=False)

    try:
        write_splits(labelled_stories(), split_files, config.workers)
        bar.set_postfix(stories=f"{sum(f.stories for f in split_files.values()):,}")
        for split, remedy in (("train", "a smaller"), ("validation", "a larger")):
            if split_files[split].stories == 0:
                raise UserError(f"the {split} split is empty ({split_files['train'].stories} training and "
                                f"{split_files['validation'].stories} validation stories): give more stories "
                                f"or {remedy} --val_fraction")
        bar.close()
        # The old meta.json goes only now: until here an interrupted rebuild left the old files usable, and
        # from here until the new meta.json is written, nothing in the folder is trusted.
        (data_dir / META_FILE).unlink(missing_ok=True)
        records = {split: split_file.commit() for split, split_file in split_files.items()}
    except BaseException:
        bar.leave = False  # the error line alone stays on the terminal
        raise
    finally:
        bar.close()
        for split_file in split_files.values():
            split_file.discard()
    return records, files_read
