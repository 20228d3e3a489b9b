"""Local story files: every format, path expansion, and one clear UserError per kind of bad input."""
import json
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tinystories.data.readers import MAX_STORY_BYTES, expand_paths, read_file_stories, read_stories
from tinystories.errors import UserError

STORIES = [
    "Tom had a red ball.\nHe liked to play with it.",
    "Lily said, “Hello!” and waved. Ünïcödé and 日本語 work too.",
    "A story that mentions <|endoftext|> in its text.",
]


def write_txt(path, stories, newline="\n"):
    path.write_text(newline.join(f"{story}{newline}<|endoftext|>" for story in stories) + newline, encoding="utf-8",
                    newline="")
    return path


def write_jsonl(path, stories, field="text"):
    path.write_text("".join(json.dumps({field: story}) + "\n" for story in stories), encoding="utf-8")
    return path


def write_parquet(path, stories):
    pq.write_table(pa.table({"text": stories}), path)
    return path


def test_txt_splits_on_separator_lines_and_strips(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("\n  first story \n<|endoftext|>\n\n<|endoftext|>\nsecond\nstory\n<|endoftext|>\ntail",
                    encoding="utf-8")
    assert list(read_file_stories(path)) == ["first story", "second\nstory", "tail"]


def test_txt_with_windows_line_endings(tmp_path):
    path = write_txt(tmp_path / "a.txt", ["one\r\nline two", "three"], newline="\r\n")
    assert list(read_file_stories(path)) == ["one\r\nline two", "three"]


def test_txt_without_separators_is_one_story(tmp_path, capsys):
    path = tmp_path / "book.txt"
    path.write_text("Chapter one.\n\nChapter two.\n", encoding="utf-8")
    assert list(read_file_stories(path)) == ["Chapter one.\n\nChapter two."]
    assert "whole file is one story" in capsys.readouterr().err


@pytest.mark.parametrize("field", ["text", "story"])
def test_jsonl_fields_and_blank_lines(tmp_path, field):
    path = write_jsonl(tmp_path / "a.jsonl", STORIES, field)
    path.write_text(path.read_text(encoding="utf-8") + "\n   \n", encoding="utf-8")
    assert list(read_file_stories(path)) == STORIES


def test_json_array_and_json_lines_named_json(tmp_path):
    array = tmp_path / "array.json"
    array.write_text(json.dumps([{"text": story} for story in STORIES]), encoding="utf-8")
    lines = write_jsonl(tmp_path / "lines.json", STORIES)
    assert list(read_file_stories(array)) == STORIES
    assert list(read_file_stories(lines)) == STORIES


def test_parquet_text_column(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", STORIES + [" ", None])
    assert list(read_file_stories(path)) == STORIES


def test_progress_counts_every_input_byte(tmp_path):
    for path in (write_txt(tmp_path / "a.txt", STORIES), write_jsonl(tmp_path / "a.jsonl", STORIES),
                 write_parquet(tmp_path / "a.parquet", STORIES)):
        counted = []
        list(read_file_stories(path, counted.append))
        assert sum(counted) == path.stat().st_size


def test_expand_paths_files_folders_globs_commas(tmp_path):
    write_txt(tmp_path / "b.txt", STORIES[:1])
    (tmp_path / "sub").mkdir()
    write_jsonl(tmp_path / "sub" / "a.jsonl", STORIES[1:2])
    (tmp_path / "notes.md").write_text("not a story file")
    assert expand_paths(str(tmp_path)) == [tmp_path / "b.txt", tmp_path / "sub" / "a.jsonl"]
    assert expand_paths(f"{tmp_path}/*.txt,{tmp_path}/sub/a.jsonl, {tmp_path}/b.txt") == \
        [tmp_path / "b.txt", tmp_path / "sub" / "a.jsonl"]
    assert list(read_stories([tmp_path / "b.txt", tmp_path / "sub"])) == STORIES[:2]


@pytest.mark.parametrize("data_path, message", [
    ("missing.txt", "not found"),
    ("*.nothing", "matches no"),
    ("notes.md", "unsupported format"),
    ("empty_dir", "holds no"),
    (" , ", "names no files"),
])
def test_expand_paths_errors(tmp_path, monkeypatch, data_path, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.md").write_text("x")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(UserError, match=message):
        expand_paths(data_path)


def bad_input_error(path):
    with pytest.raises(UserError) as caught:
        list(read_file_stories(path))
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    return message


def test_invalid_utf8_names_line_and_byte(tmp_path):
    txt = tmp_path / "bad.txt"
    txt.write_bytes(b"good line\nbad \xff here\n")
    assert "bad.txt:2: invalid UTF-8 at byte offset 14" in bad_input_error(txt)
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_bytes(b'{"text": "ok"}\n{"text": "\xc3("}\n')
    assert "bad.jsonl:2: invalid UTF-8 at byte offset 25" in bad_input_error(jsonl)
    array = tmp_path / "bad.json"
    array.write_bytes(b'[\n{"text": "\xff"}]')
    assert "bad.json:2: invalid UTF-8 at byte offset 12" in bad_input_error(array)


@pytest.mark.parametrize("content, message", [
    ('{"text": "ok"}\n{"title": "no story"}\n', ':2: JSON object has no "text" or "story" field'),
    ('{"text": "ok"}\n{"text": 3}\n', ':2: field "text" must be a string'),
    ('{"text": "ok"}\n{"text": "unterminated\n', ":2: not valid JSON"),
    ('["a list"]\n', ":1: expected a JSON object"),
    ('{"text": "lone \\ud800 surrogate"}\n', ":1: text holds an unpaired surrogate"),
])
def test_bad_json_lines(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    assert message in bad_input_error(path)


@pytest.mark.parametrize("name, content", [("empty.txt", ""), ("blank.jsonl", "\n \n"), ("empty.json", "[]")])
def test_empty_input(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    assert "no stories found" in bad_input_error(path)


def test_bad_parquet(tmp_path):
    no_text = tmp_path / "no_text.parquet"
    pq.write_table(pa.table({"title": ["x"]}), no_text)
    assert 'no "text" or "story" column' in bad_input_error(no_text)
    not_parquet = tmp_path / "fake.parquet"
    not_parquet.write_text("hello")
    assert "not a readable parquet file" in bad_input_error(not_parquet)


@pytest.mark.parametrize("name, line_end", [("one_line.txt", b""), ("one_line.jsonl", b""),
                                            ("no_separators.txt", b"\n")])
def test_a_huge_story_is_refused_without_reading_it_whole(tmp_path, name, line_end):
    """A 50 MB one-line .txt once needed 2.5 GB before its error; now memory stays within the story limit."""
    path = tmp_path / name
    line = b"Once upon a time there was a cat. " * 3000 + line_end  # about 100 kB per line
    with open(path, "wb") as file:
        for _ in range(200 if line_end else 1):
            file.write(line)
        if not line_end:
            file.write(b"x" * (20 << 20))  # one 20 MB line
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match=rf"{name}:\d+: a story longer than 4 MB; stories are separated"):
            list(read_file_stories(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * MAX_STORY_BYTES
