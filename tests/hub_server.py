"""A local stand-in for the Hugging Face Hub's file endpoint, so tests run huggingface_hub's real download,
cache and error handling with no network: `/{repo}/resolve/{revision}/{file}` (datasets under `datasets/`)
answers HEAD and GET with the headers huggingface_hub reads, and every request is recorded."""
from __future__ import annotations

import hashlib
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"  # what a branch name such as "main" resolves to


@dataclass
class HubFile:
    content: bytes
    commit: str
    etag: str  # huggingface_hub names the cached blob after it: the sha256 for LFS files


@dataclass
class FakeHub:
    files: dict[str, HubFile] = field(default_factory=dict)  # "datasets/owner/name/file" -> the file
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, "datasets/owner/name/file")
    other_requests: list[str] = field(default_factory=list)  # anything but a file (huggingface_hub's API calls)
    failures: dict[str, list[int]] = field(default_factory=dict)  # path -> status codes to answer first

    def add(self, repo: str, filename: str, content: bytes, commit: str = COMMIT, etag: str | None = None) -> None:
        self.files[f"{repo}/{filename}"] = HubFile(content, commit, etag or hashlib.sha256(content).hexdigest())

    def start(self) -> str:
        """Serve in a thread; return the endpoint URL for HF_ENDPOINT."""
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:
                self.answer(body=False)

            def do_GET(self) -> None:
                self.answer(body=True)

            def answer(self, body: bool) -> None:
                repo, resolve, rest = urllib.parse.unquote(self.path.split("?")[0]).lstrip("/").partition("/resolve/")
                path = f"{repo}/{rest.partition('/')[2]}"
                if resolve:
                    hub.requests.append((self.command, path))
                else:
                    hub.other_requests.append(self.path)
                if hub.failures.get(path):
                    self.send_response(hub.failures[path].pop(0))
                    self.send_header("Retry-After", "0")  # huggingface_hub then retries after one second
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                hub_file = hub.files.get(path)
                if hub_file is None:
                    # As the Hub answers: an unknown repository is 401 (it may be private), a missing file 404.
                    known = any(name.startswith(f"{repo}/") for name in hub.files)
                    self.send_response(404 if known else 401)
                    self.send_header("X-Error-Code", "EntryNotFound" if known else "RepoNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("X-Repo-Commit", hub_file.commit)
                self.send_header("ETag", f'"{hub_file.etag}"')
                self.send_header("X-Linked-Etag", f'"{hub_file.etag}"')
                self.send_header("X-Linked-Size", str(len(hub_file.content)))
                self.send_header("Content-Length", str(len(hub_file.content)))
                self.end_headers()
                if body:
                    self.wfile.write(hub_file.content)

            def log_message(self, *args) -> None:  # requests are recorded, not printed
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
