"""serve.py in a child process, for bench.py and the tests: start it on a free port, wait until it answers, stop it.

The child's stdout and stderr go to files (a pipe nobody reads would fill and block the server), so its
log can be read at any time.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_SECONDS = 180  # importing torch and loading a model on a busy two-core machine is slow


class ServerProcess:
    """`python serve.py --model MODEL --port 0 ARGS...`, as a context manager."""

    def __init__(self, model: str, *args: str, log_dir: Path, env: Optional[dict[str, str]] = None) -> None:
        self.command = [sys.executable, str(ROOT / "serve.py"), "--model", model, "--port", "0", *args]
        self.env = {**os.environ, **(env or {})}
        self.stdout_path, self.stderr_path = log_dir / "serve.stdout", log_dir / "serve.stderr"
        self.process: Optional[subprocess.Popen] = None
        self.base_url = ""

    def __enter__(self) -> "ServerProcess":
        self.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop()

    def start(self) -> None:
        with open(self.stdout_path, "wb") as stdout, open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(self.command, stdout=stdout, stderr=stderr, cwd=ROOT, env=self.env)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self.base_url:
            found = re.search(r"^API:\s+(http://\S+)/v1", self.stdout_path.read_text(), re.MULTILINE)
            if found:
                self.base_url = found.group(1)
            elif self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"serve.py did not start:\n{self.log()[-3000:]}")
            else:
                time.sleep(0.1)
        while True:
            try:
                if self.health()["status"] == "ok":
                    return
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"serve.py did not answer /health:\n{self.log()[-3000:]}")
            time.sleep(0.1)

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.base_url}/health", timeout=10) as response:
            return json.load(response)

    def stop(self, timeout: float = 30) -> Optional[int]:
        """SIGTERM, then wait; the exit status (None if it was never started)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log(self) -> str:
        """What the server printed so far: stdout, then stderr (uvicorn's log)."""
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(errors="replace")
