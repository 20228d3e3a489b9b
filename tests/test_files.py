"""tinystories/files.py: atomic writes keep the previous file on failure and give ordinary permissions."""
import os

import pytest

from tinystories.files import atomic_write


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


def test_written_files_get_the_permissions_of_a_plain_open(tmp_path):
    previous = os.umask(0o022)
    try:
        atomic_write(tmp_path / "report.json", lambda file: file.write(b"{}"))
    finally:
        os.umask(previous)
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o644
