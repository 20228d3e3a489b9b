"""A scripted OpenAI-compatible judge for tests and for trying `evaluate.py --judge` without a real one.

    python tests/judge_server.py --port 8765 [--delay 0.5]
    OPENAI_API_KEY=anything python evaluate.py ... --judge scripted --judge_base_url http://127.0.0.1:8765/v1

It answers POST /v1/chat/completions. The grades it gives are a function of the grading request's first user
message (scripted_grades), so a test or a person can recompute every grade it gave. A beginning that contains
`[judge-test:NAME]` picks a scenario instead of a plain valid reply:
    invalid_then_valid  a reply without grades, then (asked again) a valid one
    never_valid         always out-of-range grades
    rate_limited_once   HTTP 429 (Retry-After: 0), then valid
    server_error        HTTP 500, always
    server_error_once   HTTP 500, then valid
    slow_once           a reply after SLOW_SECONDS (longer than a test's client timeout), then valid
    fenced              a valid reply inside a ```json code fence, after an assessment
    retry_after_nan_once, retry_after_negative_once
                        HTTP 429 with Retry-After: nan (or -30), then valid
and every name of RAW_REPLIES: a raw body served as given, always; most are not usable chat completions (not
JSON, a JSON list, choices as a string, 2 MiB of "{", ...). A test may add its own to a server's raw_replies.
Usage is reported as prompt tokens = words of all messages, completion tokens = words of the reply.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator, Optional, Union

SLOW_SECONDS = 1.5
REFUSED_KEY = "refused-key"  # the key this server answers with HTTP 401
SCENARIO = re.compile(r"\[judge-test:(\w+)\]")


def chat_completion(content: Any, usage: Any = None) -> dict[str, Any]:
    """An OpenAI chat completion holding `content` as the assistant's message."""
    return {"id": "chatcmpl-raw", "object": "chat.completion", "created": 1700000000, "model": "scripted",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": usage}


def _json(document: Any) -> bytes:
    return json.dumps(document).encode("utf-8")


def _trickle(body: bytes, seconds: float, chunks: int = 40) -> Iterator[bytes]:
    """Spaces (which JSON allows before a value) a chunk every seconds/chunks, then `body`."""
    for _ in range(chunks):
        time.sleep(seconds / chunks)
        yield b" "
    yield body


# (status, headers, body) for a scenario, from the valid grades (JSON text) the request would otherwise get. A header
# "Content-Length": None leaves the length out: the body then ends when the connection closes (HTTP/1.0). A body
# that is an iterator is sent a chunk at a time.
RawReply = tuple[int, dict[str, Optional[str]], Union[bytes, Iterator[bytes]]]
RAW_REPLIES: dict[str, Callable[[str], RawReply]] = {
    "not_json": lambda grades: (200, {"Content-Type": "text/html"}, b"<html><body>502 Bad Gateway</body></html>"),
    "json_list": lambda grades: (200, {}, _json([chat_completion(grades)])),
    "json_string": lambda grades: (200, {}, _json(grades)),
    "choices_string": lambda grades: (200, {}, _json({"choices": grades})),
    "no_message": lambda grades: (200, {}, _json({"choices": [{"index": 0, "finish_reason": "stop"}]})),
    "content_not_text": lambda grades: (200, {}, _json(chat_completion(json.loads(grades)))),
    # Usable grades with unusable token counts: graded, the counts not counted.
    "string_usage": lambda grades: (200, {}, _json(chat_completion(
        f"Good.\n{grades}", {"prompt_tokens": "many", "completion_tokens": "12", "total_tokens": [1]}))),
    "huge_number": lambda grades: (200, {}, _json(chat_completion(f"Good.\n{grades}")).replace(
        b'"created": 1700000000', b'"created": 1' + b"0" * 5000)),
    "deep_nesting": lambda grades: (200, {}, b'{"choices": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"),
    "brace_flood": lambda grades: (200, {}, b"{" * (2 << 20)),  # 2 MiB, its length announced
    "brace_flood_unsized": lambda grades: (200, {"Content-Length": None}, b"{" * (2 << 20)),
    # A valid reply sent over 3 s, a space at a time: no read waits long, but the whole takes longer than a
    # test's --judge_timeout (a timeout: retried).
    "trickle": lambda grades: (200, {"Content-Length": None}, _trickle(_json(chat_completion(grades)), 3.0)),
    # A body cut short: the connection closes 10 bytes into the 1,000 announced (a lost connection: retried).
    "cut_short": lambda grades: (200, {"Content-Length": "1000"}, b'{"choices"'),
    # A lone surrogate (JSON's "\ud800" escape, which UTF-8 cannot encode) in a valid reply: graded, the surrogate "?".
    "lone_surrogate": lambda grades: (200, {}, _json(chat_completion(f"Good work\ud800.\n{grades}"))),
    # 900 KiB of "{" as the message: under the size limit, so the grades parser meets it (twice: re-asked).
    "brace_content": lambda grades: (200, {}, _json(chat_completion("{" * (900 << 10)))),
}


def scripted_grades(user_message: str) -> dict[str, Any]:
    """The grades this server gives a grading request: digits of the message's sha256."""
    digest = hashlib.sha256(user_message.encode("utf-8")).digest()
    return {"grammar": 1 + digest[0] % 10, "creativity": 1 + digest[1] % 10, "consistency": 1 + digest[2] % 10,
            "plot": 1 + digest[3] % 10, "age_group": "ABCDEF"[digest[4] % 6]}


class JudgeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int = 0, delay: float = 0.0, verbose: bool = False) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.delay, self.verbose = delay, verbose
        self.lock = threading.Lock()
        self.requests = 0  # chat completion requests received
        self.attempts: Counter = Counter()  # per grading conversation (its first user message)
        self.authorizations: set[str] = set()  # Authorization headers seen
        self.in_flight = self.max_in_flight = 0
        self.raw_replies = dict(RAW_REPLIES)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def start(self) -> "JudgeServer":
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self


def _words(text: str) -> int:
    return len(text.split())


class _Handler(BaseHTTPRequestHandler):
    server: JudgeServer

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def _send(self, status: int, body: dict[str, Any], headers: Optional[dict[str, str]] = None) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_raw(self, status: int, headers: dict[str, Optional[str]], body: Union[bytes, Iterator[bytes]]) -> None:
        self.send_response(status)
        if isinstance(body, bytes):
            headers = {"Content-Length": str(len(body)), **headers}
        for name, value in {"Content-Type": "application/json", **headers}.items():
            if value is not None:
                self.send_header(name, value)
        self.end_headers()
        try:
            for chunk in [body] if isinstance(body, bytes) else body:
                self.wfile.write(chunk)
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading (a body too large, or too slow, for it)

    def _error(self, status: int, message: str, headers: Optional[dict[str, str]] = None) -> None:
        self._send(status, {"error": {"message": message, "type": "scripted", "code": status}}, headers)

    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._error(404, f"no route {self.path}")
            return
        request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        messages = request["messages"]
        first_user = next(m["content"] for m in messages if m["role"] == "user")
        authorization = self.headers.get("Authorization", "")
        with self.server.lock:
            self.server.requests += 1
            self.server.attempts[first_user] += 1
            attempt = self.server.attempts[first_user]
            self.server.authorizations.add(authorization)
            self.server.in_flight += 1
            self.server.max_in_flight = max(self.server.max_in_flight, self.server.in_flight)
        try:
            self._reply(request, messages, first_user, attempt, authorization)
        finally:
            with self.server.lock:
                self.server.in_flight -= 1

    def _reply(self, request: dict[str, Any], messages: list[dict[str, str]], first_user: str, attempt: int,
               authorization: str) -> None:
        if authorization == f"Bearer {REFUSED_KEY}":
            self._error(401, "scripted: invalid API key")
            return
        if self.server.delay:
            time.sleep(self.server.delay)
        found = SCENARIO.search(first_user)
        scenario = found.group(1) if found else "valid"
        grades = json.dumps(scripted_grades(first_user))
        reask = len(messages) > 2  # the judge's conversation after a reply without grades
        if scenario == "server_error" or (scenario == "server_error_once" and attempt == 1):
            self._error(500, "scripted server error")
            return
        if scenario == "rate_limited_once" and attempt == 1:
            self._error(429, "scripted rate limit", {"Retry-After": "0"})
            return
        if scenario in ("retry_after_nan_once", "retry_after_negative_once") and attempt == 1:
            self._error(429, "scripted rate limit", {"Retry-After": "nan" if "nan" in scenario else "-30"})
            return
        if scenario in self.server.raw_replies:
            self._send_raw(*self.server.raw_replies[scenario](grades))
            return
        if scenario == "slow_once" and attempt == 1:
            time.sleep(SLOW_SECONDS)
        if scenario == "never_valid":
            reply = 'The grades: {"grammar": 11, "creativity": 0, "consistency": 5, "plot": 5, "age_group": "Z"}'
        elif scenario == "invalid_then_valid" and not reask:
            reply = "A fine story, I would give it a seven."
        elif scenario == "fenced":
            reply = f"The pupil kept the tense.\n```json\n{grades}\n```"
        else:
            reply = f"The pupil finished the sentence and kept to the story.\n{grades}"
        prompt_tokens = sum(_words(m["content"]) for m in messages)
        self._send(200, {
            "id": f"chatcmpl-{self.server.requests}", "object": "chat.completion", "created": int(time.time()),
            "model": request["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": _words(reply),
                      "total_tokens": prompt_tokens + _words(reply)},
        })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before every reply")
    arguments = parser.parse_args()
    server = JudgeServer(arguments.port, arguments.delay, verbose=True)
    print(f"scripted judge listening on {server.base_url}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print(f"stopped after {server.requests} requests", file=sys.stderr)


if __name__ == "__main__":
    main()
