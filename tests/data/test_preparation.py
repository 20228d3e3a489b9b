"""prepare_data: round trips for every format, the split, determinism, the cache, atomicity, load_tokens."""
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tinystories.data import DataConfig, load_tokens, pipeline, prepare_data, read_meta
from tinystories.data.pipeline import ValidationRule
from tinystories.data.synthetic import synthetic_stories
from tinystories.errors import UserError
from tinystories.tokenizer import EOT_ID, EOT_TOKEN, get_tokenizer

TRICKY = [
    "Lily said, “Hello!” and waved.\n\nÜnïcödé, 日本語 and emoji 🐻 work too.",
    "This story mentions <|endoftext|> in its text, which must stay ordinary text.",
    "Numbers 1,234 and   spaces\tand tabs.",
]
STORIES = TRICKY + list(synthetic_stories("train", 400))


def write_stories(path, stories):
    """`stories` in the format that `path`'s extension names."""
    if path.suffix == ".txt":
        path.write_text("".join(f"{story}\n<|endoftext|>\n" for story in stories), encoding="utf-8")
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({"text": story}) + "\n" for story in stories), encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps([{"story": story} for story in stories]), encoding="utf-8")
    else:
        pq.write_table(pa.table({"text": stories}), path, row_group_size=64)
    return path


def split_as_prepare_does(stories, seed=1337, fraction=0.05):
    in_validation = ValidationRule(seed, fraction)
    return ([s for s in stories if not in_validation(s)], [s for s in stories if in_validation(s)])


def expected_tokens(stories):
    encoding = get_tokenizer()
    return np.array([t for story in stories for t in encoding.encode_ordinary(story) + [EOT_ID]], dtype=np.uint16)


def prepare(data_path, data_dir, **settings):
    return prepare_data(DataConfig(data_path=str(data_path), data_dir=str(data_dir), **settings), progress=False)


def file_bytes(data_dir):
    return {path.name: path.read_bytes() for path in sorted(data_dir.iterdir())}


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".json", ".parquet"])
def test_every_format_round_trips(tmp_path, suffix):
    source = write_stories(tmp_path / f"stories{suffix}", STORIES)
    data_dir = prepare(source, tmp_path / "out")
    train, validation = split_as_prepare_does(STORIES)
    for split, stories in (("train", train), ("validation", validation)):
        tokens = load_tokens(data_dir, split)
        assert get_tokenizer().decode(tokens.tolist()) == EOT_TOKEN.join(stories) + EOT_TOKEN
        np.testing.assert_array_equal(tokens, expected_tokens(stories))
    meta = read_meta(data_dir)
    assert meta["files"] == [{"name": source.name, "role": "train", "bytes": source.stat().st_size,
                              "sha256": meta["inputs"]["source"]["files"][0]["sha256"]}]
    assert not (data_dir / "test.bin").exists()


# Pinned by hand: the indices in STORIES of the stories whose BLAKE2b-64 keyed with b"1337", read as a
# little-endian integer, is below 0.05 * 2**64 (docs/data.md's rule at the default seed and fraction).
PINNED_VALIDATION = [17, 37, 56, 65, 74, 109, 115, 158, 189, 209, 224, 247, 272, 296, 297, 317, 332, 334, 346,
                     376, 381]


def test_split_follows_the_readmes_rule_on_pinned_stories(tmp_path):
    digests = {0: "9abc2d2ddf2d91c6", 17: "9dd3a24fe189eb06", 37: "020714d0a7de8d0b"}
    for index, digest in digests.items():
        assert hashlib.blake2b(STORIES[index].encode("utf-8"), digest_size=8, key=b"1337").hexdigest() == digest
    # Little-endian: story 17's hash is 0x06eb89e1... = 0.027 of 2**64 (validation), story 0's 0xc6912d... = 0.78.
    assert int.from_bytes(bytes.fromhex(digests[17]), "little") < 0.05 * 2**64
    assert int.from_bytes(bytes.fromhex(digests[0]), "little") > 0.05 * 2**64
    data_dir = prepare(write_stories(tmp_path / "s.jsonl", STORIES), tmp_path / "out")
    np.testing.assert_array_equal(load_tokens(data_dir, "validation"),
                                  expected_tokens([STORIES[i] for i in PINNED_VALIDATION]))
    np.testing.assert_array_equal(load_tokens(data_dir, "train"),
                                  expected_tokens([s for i, s in enumerate(STORIES) if i not in PINNED_VALIDATION]))
    assert read_meta(data_dir)["splits"]["validation"]["stories"] == 21


def test_split_sizes_disjoint_and_counted(tmp_path):
    stories = list(synthetic_stories("train", 3000))
    data_dir = prepare(write_stories(tmp_path / "s.jsonl", stories), tmp_path / "out", val_fraction=0.1)
    splits = read_meta(data_dir)["splits"]
    decoded = {split: get_tokenizer().decode(load_tokens(data_dir, split).tolist()).split(EOT_TOKEN)[:-1]
               for split in ("train", "validation")}
    assert len(decoded["train"]) + len(decoded["validation"]) == len(stories)
    assert not set(decoded["train"]) & set(decoded["validation"])
    assert 0.08 < len(decoded["validation"]) / len(stories) < 0.12
    for split in decoded:
        tokens = load_tokens(data_dir, split)
        assert splits[split]["stories"] == len(decoded[split]) == int((tokens == EOT_ID).sum())
        assert splits[split]["tokens"] == len(tokens)


def test_same_files_for_any_worker_count_and_chunking(tmp_path, monkeypatch):
    source = write_stories(tmp_path / "s.txt", STORIES)
    one = prepare(source, tmp_path / "one", num_workers=1)
    monkeypatch.setattr(pipeline, "CHUNK_CHARACTERS", 500)  # many more, smaller chunks in flight
    three = prepare(source, tmp_path / "three", num_workers=3)
    assert file_bytes(one) == file_bytes(three)


def test_held_out_files_become_test_and_default_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus").mkdir()
    write_stories(tmp_path / "corpus" / "stories-train.jsonl", STORIES[:200])
    write_stories(tmp_path / "corpus" / "stories-valid.txt", STORIES[200:])
    data_dir = prepare_data(DataConfig(data_path="corpus"), progress=False)
    assert data_dir == tmp_path.joinpath("data", "corpus").relative_to(tmp_path)
    test_text = get_tokenizer().decode(load_tokens(data_dir, "test").tolist())
    assert test_text == EOT_TOKEN.join(STORIES[200:]) + EOT_TOKEN
    assert [f["role"] for f in read_meta(data_dir)["files"]] == ["train", "test"]


def test_only_held_out_files_is_an_error(tmp_path):
    source = write_stories(tmp_path / "valid.jsonl", STORIES)
    with pytest.raises(UserError, match="no training stories"):
        prepare(source, tmp_path / "out")


def test_max_stories(tmp_path):
    data_dir = prepare(write_stories(tmp_path / "s.parquet", STORIES), tmp_path / "out", max_stories=100)
    splits = read_meta(data_dir)["splits"]
    assert splits["train"]["stories"] + splits["validation"]["stories"] == 100
    assert read_meta(data_dir)["inputs"]["max_stories"] == 100


def test_cache_is_reused_and_rebuilt_when_inputs_change(tmp_path, capsys):
    source = write_stories(tmp_path / "s.jsonl", STORIES)
    data_dir = prepare(source, tmp_path / "out")
    stamps = {path.name: path.stat().st_mtime_ns for path in data_dir.iterdir()}
    capsys.readouterr()

    prepare(source, data_dir, num_workers=1)  # the worker count is not an input
    assert "up to date" in capsys.readouterr().out
    assert stamps == {path.name: path.stat().st_mtime_ns for path in data_dir.iterdir()}

    prepare(source, data_dir, seed=7)
    assert "inputs changed (seed)" in capsys.readouterr().out

    write_stories(source, [STORIES[1]] + [STORIES[0]] + STORIES[2:])  # same size, other content
    prepare(source, data_dir, seed=7)
    assert "inputs changed (source)" in capsys.readouterr().out

    with open(data_dir / "train.bin", "r+b") as file:
        file.truncate(10)
    prepare(source, data_dir, seed=7)
    assert "train.bin is missing or truncated" in capsys.readouterr().out
    assert len(load_tokens(data_dir, "train")) == read_meta(data_dir)["splits"]["train"]["tokens"]


def test_failed_rebuild_keeps_the_previous_files_usable_and_leaves_no_temporary_files(tmp_path, capsys):
    good = write_stories(tmp_path / "good.jsonl", STORIES)
    data_dir = prepare(good, tmp_path / "out")
    before = file_bytes(data_dir)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"title": "no text"}\n')
    with pytest.raises(UserError, match="bad.jsonl:2"):
        prepare(f"{good},{bad}", data_dir)
    assert file_bytes(data_dir) == before  # no temporary files, and the old files still match their meta.json
    capsys.readouterr()
    prepare(good, data_dir)
    assert "up to date" in capsys.readouterr().out


def test_interrupted_commit_leaves_nothing_trusted(tmp_path, monkeypatch):
    source = write_stories(tmp_path / "s.jsonl", STORIES)
    data_dir = prepare(source, tmp_path / "out", seed=1)

    def killed(self):
        raise KeyboardInterrupt  # as if the process died between renaming the new files and writing meta.json

    monkeypatch.setattr(pipeline.SplitFile, "commit", killed)
    with pytest.raises(KeyboardInterrupt):
        prepare(source, data_dir, seed=2)
    with pytest.raises(UserError, match="prepare.py"):
        load_tokens(data_dir, "train")
    assert not [path for path in data_dir.iterdir() if path.name.startswith(".")]


def test_output_folder_inside_the_input_folder_is_not_read_as_input(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "data" / "mine"
    folder.mkdir(parents=True)
    write_stories(folder / "a.jsonl", STORIES[:200])
    write_stories(folder / "b.jsonl", STORIES[200:])
    for _ in range(2):
        assert prepare_data(DataConfig(data_path="data/mine"), progress=False) == Path("data/mine")
    assert "up to date" in capsys.readouterr().out
    assert [f["name"] for f in read_meta(folder)["files"]] == ["a.jsonl", "b.jsonl"]


def test_stale_test_split_is_removed(tmp_path):
    train = write_stories(tmp_path / "a.jsonl", STORIES[:200])
    held_out = write_stories(tmp_path / "a_test.jsonl", STORIES[200:])
    data_dir = prepare(f"{train},{held_out}", tmp_path / "out")
    assert (data_dir / "test.bin").exists()
    prepare(train, data_dir)
    assert not (data_dir / "test.bin").exists()
    with pytest.raises(UserError, match="no test split"):
        load_tokens(data_dir, "test")


def test_too_few_stories_for_validation(tmp_path):
    source = write_stories(tmp_path / "s.jsonl", STORIES[:3])
    with pytest.raises(UserError, match="validation split is empty"):
        prepare(source, tmp_path / "out", val_fraction=0.001)
    assert not (tmp_path / "out").exists()  # the failed run wrote nothing and removed the folder it made


def test_load_tokens_errors(tmp_path):
    with pytest.raises(UserError, match="python prepare.py"):
        load_tokens(tmp_path, "train")
    data_dir = prepare(write_stories(tmp_path / "s.jsonl", STORIES), tmp_path / "out")
    with pytest.raises(UserError, match="unknown split"):
        load_tokens(data_dir, "dev")
    os.truncate(data_dir / "validation.bin", 4)
    with pytest.raises(UserError, match="does not match meta.json"):
        load_tokens(data_dir, "validation")
    (data_dir / "meta.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        read_meta(data_dir)


def test_invalid_settings_are_user_errors():
    for settings in ({"val_fraction": 1.0}, {"max_stories": 0}, {"num_workers": 0}, {"dataset": "wikitext"}):
        with pytest.raises(UserError):
            DataConfig(**settings)
