"""tinystories/files.py: atomic writes keep the previous file on failure and give ordinary permissions (also for a
writer that opens the file by name); a killed save's temporaries are found by name; JSON and JSON lines are written
atomically; output locations are checked before work starts; input text files fail in one line."""
import errno
import json
import os

import pytest

from tinystories.errors import UserError
from tinystories.files import (
    atomic_path,
    atomic_write,
    check_output_file,
    ensure_folder,
    read_text_file,
    remove_stale_temporaries,
    write_json,
    write_json_lines,
)


def test_failed_atomic_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "checkpoint.pth"
    path.write_bytes(b"previous")

    def crash(file):
        file.write(b"partial")
        raise RuntimeError("killed mid-save")

    with pytest.raises(RuntimeError):
        atomic_write(path, crash)
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]


def test_atomic_path_renames_on_success_and_keeps_the_previous_file_on_a_write_error(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"previous")
    with pytest.raises(UserError, match=r"could not write .*model.gguf: .*; the previous model.gguf is kept"):
        with atomic_path(path) as temporary:
            assert temporary.parent == tmp_path and temporary != path
            temporary.write_bytes(b"partial")
            raise OSError(28, "No space left on device")
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]

    with atomic_path(path) as temporary:
        temporary.write_bytes(b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]


def test_written_files_get_the_permissions_of_a_plain_open(tmp_path):
    previous = os.umask(0o022)
    try:
        atomic_write(tmp_path / "report.json", lambda file: file.write(b"{}"))
    finally:
        os.umask(previous)
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o644


def test_stale_temporaries_of_named_targets_only_are_removed(tmp_path):
    ours = [tmp_path / ".checkpoint.pth.k2j4_x9a.tmp", tmp_path / ".training_20260101_120000.log.abcd1234.tmp"]
    foreign = [tmp_path / ".notes.txt.abcd1234.tmp", tmp_path / "checkpoint.pth", tmp_path / "run.tmp"]
    for path in ours + foreign:
        path.write_bytes(b"x")
    removed = remove_stale_temporaries(tmp_path, ["checkpoint.pth", "training_*.log"])
    assert sorted(removed) == sorted(ours)
    assert sorted(tmp_path.iterdir()) == sorted(foreign)


def test_json_is_written_indented_with_a_final_newline(tmp_path):
    write_json(tmp_path / "report.json", {"a": [1, 2]})
    text = (tmp_path / "report.json").read_text()
    assert json.loads(text) == {"a": [1, 2]} and text.endswith("}\n") and '\n  "a"' in text


def test_a_failed_block_removes_only_the_empty_folders_it_created(tmp_path):
    from tinystories.files import folders_removed_on_failure

    (tmp_path / "kept").mkdir()
    with pytest.raises(RuntimeError):
        with folders_removed_on_failure(tmp_path / "results" / "run" / "checkpoints", tmp_path / "kept" / "logs",
                                        tmp_path / "data" / "synthetic"):
            (tmp_path / "results" / "run" / "checkpoints").mkdir(parents=True)
            (tmp_path / "kept" / "logs").mkdir()
            (tmp_path / "data" / "synthetic").mkdir(parents=True)
            (tmp_path / "data" / "synthetic" / "train.bin").write_bytes(b"written before the failure")
            raise RuntimeError("the run failed")
    assert not (tmp_path / "results").exists() and not (tmp_path / "kept" / "logs").exists()
    assert (tmp_path / "kept").is_dir() and (tmp_path / "data" / "synthetic" / "train.bin").is_file()
    with folders_removed_on_failure(tmp_path / "ok"):
        (tmp_path / "ok").mkdir()
    assert (tmp_path / "ok").is_dir()  # success keeps even an empty folder


def test_json_lines_are_one_document_a_line_keeping_unicode(tmp_path):
    records = [{"text": "Lily said \"hi\"\nthen left", "grade": 7}, {"text": "café ☕"}]
    write_json_lines(tmp_path / "gradings.jsonl", records)
    raw = (tmp_path / "gradings.jsonl").read_bytes()
    assert raw.count(b"\n") == 2 and raw.endswith(b"\n") and "café ☕".encode("utf-8") in raw
    assert [json.loads(line) for line in raw.decode("utf-8").splitlines()] == records


def test_ensure_folder_creates_and_checks_the_folder(tmp_path, read_only_folder):
    assert ensure_folder(tmp_path / "a" / "b") == tmp_path / "a" / "b" and (tmp_path / "a" / "b").is_dir()
    assert list((tmp_path / "a" / "b").iterdir()) == []  # the write check leaves nothing behind
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="file is a file, not a folder"):
        ensure_folder(tmp_path / "file")
    with pytest.raises(UserError, match="cannot create"):
        ensure_folder(tmp_path / "file" / "below")
    with pytest.raises(UserError, match=f"cannot write in the output folder {read_only_folder}"):
        ensure_folder(read_only_folder)
    with pytest.raises(UserError, match="cannot create"):
        ensure_folder(read_only_folder / "new")


def test_check_output_file(tmp_path, read_only_folder):
    assert check_output_file(tmp_path / "out" / "report.json", "--output") == tmp_path / "out" / "report.json"
    with pytest.raises(UserError, match=f"--output {tmp_path} is a folder; pass the path of the file to write"):
        check_output_file(tmp_path, "--output")
    with pytest.raises(UserError, match="cannot write in"):
        check_output_file(read_only_folder / "report.json", "--output")


def test_a_write_that_fails_is_one_line_saying_what_was_kept(tmp_path):
    path = tmp_path / "report.json"

    def disk_full(file):
        file.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UserError, match=r"could not write .*report.json: No space left on device; it was not written"):
        atomic_write(path, disk_full)
    path.write_bytes(b"previous")
    with pytest.raises(UserError, match="No space left on device; the previous report.json is kept"):
        atomic_write(path, disk_full)
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_read_text_file_errors(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"caf\xe9\n")
    with pytest.raises(UserError, match=r"notes.txt is not UTF-8 text \(byte 0xe9 at offset 3\)"):
        read_text_file(path, f"prompt file {path}")
    with pytest.raises(UserError, match="is a folder"):
        read_text_file(tmp_path, "prompt file")
    with pytest.raises(UserError, match="missing.txt not found"):
        read_text_file(tmp_path / "missing.txt", f"prompt file {tmp_path / 'missing.txt'}")
    readable = tmp_path / "readable.txt"
    readable.write_text("café", encoding="utf-8")
    assert read_text_file(readable, "prompt file") == "café"
