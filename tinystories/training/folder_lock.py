"""One writer per output folder: a lock file that names its holder's process and host.

Two train.py runs on one --out_dir would overwrite each other's checkpoints while both reported success. The
lock file is created exclusively (an atomic test-and-set on every local file system); one left behind by a
killed run is recognised as stale when its process no longer exists on this host (or the id now belongs to a
process that started later), and is taken over.
"""
from __future__ import annotations

import json
import math
import os
import socket
import time
from pathlib import Path
from typing import Any, Optional

from tinystories.errors import UserError

FRESH_SECONDS = 10.0


def _process_start(pid: int) -> Optional[str]:
    """When process `pid` started, in clock ticks since boot (Linux); None where /proc does not say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]  # field 22; the name before ")" may hold spaces


def _is_running(pid: int, started: Optional[str]) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    current = _process_start(pid)
    return started is None or current is None or current == started


class FolderLock:
    """`with FolderLock(path):` or acquire()/release(); a second holder gets a UserError in one line."""

    def __init__(self, path: Path, purpose: str = "a training run") -> None:
        self.path = path
        self.purpose = purpose
        self.held = False

    def _holder(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(), "started": _process_start(os.getpid())}

    def acquire(self) -> "FolderLock":
        for _ in range(2):  # a second try after removing a stale lock
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._refuse_unless_stale()
                continue
            except OSError as error:
                raise UserError(f"cannot write the lock file {self.path}: {error.strerror or error}") from None
            with os.fdopen(descriptor, "w") as file:
                json.dump(self._holder(), file)
            self.held = True
            return self
        raise UserError(f"{self.path.parent} is being locked by another run at this moment; try again")

    def _refuse_unless_stale(self) -> None:
        try:
            holder = json.loads(self.path.read_text())
            pid, host = int(holder["pid"]), str(holder["host"])
        except FileNotFoundError:
            return  # released meanwhile
        except (OSError, ValueError, KeyError, TypeError):
            if self._age_seconds() < FRESH_SECONDS:  # its holder may be writing it right now
                raise UserError(f"{self.path.parent} is being locked by another run at this moment; "
                                "try again") from None
            holder, pid, host = {}, None, None  # half-written by a run killed while taking it
        if pid is not None and (host != socket.gethostname() or _is_running(pid, holder.get("started"))):
            where = "this host" if host == socket.gethostname() else f"host {host}"
            raise UserError(f"{self.path.parent} is in use by {self.purpose} (pid {pid} on {where}); wait for it "
                            f"to finish or use another folder (if that run is gone, delete {self.path})")
        self.path.unlink(missing_ok=True)

    def _age_seconds(self) -> float:
        try:
            return time.time() - self.path.stat().st_mtime
        except OSError:
            return math.inf

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exception: Any) -> None:
        self.release()
