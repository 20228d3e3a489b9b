"""tinystories/training/folder_lock.py: one holder at a time; a killed holder's lock is taken over, a live one's
never."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from tinystories.errors import UserError
from tinystories.training.folder_lock import FolderLock


def finished_pid() -> int:
    """The id of a process that has exited (and been reaped), so nothing runs under it."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    path = tmp_path / "train.lock"
    with FolderLock(path):
        holder = json.loads(path.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(UserError, match=f"is in use by a training run \\(pid {os.getpid()} on this host\\)"):
            FolderLock(path).acquire()
    assert not path.exists()
    FolderLock(path).acquire().release()


def test_a_lock_of_a_process_that_is_gone_is_taken_over(tmp_path):
    path = tmp_path / "train.lock"
    path.write_text(json.dumps({"pid": finished_pid(), "host": socket.gethostname(), "started": None}))
    lock = FolderLock(path).acquire()
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()


def test_a_reused_pid_does_not_keep_a_stale_lock(tmp_path):
    path = tmp_path / "train.lock"  # our own pid, but recorded with another start time: an earlier process's
    path.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "1"}))
    FolderLock(path).acquire().release()


def test_a_lock_held_on_another_host_is_never_taken_over(tmp_path):
    path = tmp_path / "train.lock"
    path.write_text(json.dumps({"pid": finished_pid(), "host": "another-host.example", "started": None}))
    with pytest.raises(UserError, match="on host another-host.example"):
        FolderLock(path).acquire()


def test_a_half_written_lock_is_stale_only_once_it_is_old(tmp_path):
    path = tmp_path / "train.lock"
    path.write_text("")
    with pytest.raises(UserError, match="being locked by another run at this moment"):
        FolderLock(path).acquire()
    old = time.time() - 60
    os.utime(path, (old, old))
    FolderLock(path).acquire().release()
