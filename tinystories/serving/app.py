"""The HTTP server: OpenAI's completions API and the playground page, over the batched engine.

Handlers only translate. A request is checked (`tinystories.serving.openai_protocol`), its sequences are submitted
to the engine, which decodes every running sequence together, one forward per step, on its own thread, and
each sequence's TokenEvents and final result come back to the event loop through
`loop.call_soon_threadsafe` into one asyncio queue per request. A client that disconnects has its
sequences cancelled, which frees their slots at the engine's next step.

A request's body is read up to `max_body_bytes` (413 beyond that), and parsed and tokenized on a worker thread,
so that a long prompt never holds up the event loop, and with it every other client. A client that leaves
before its body is complete is logged in one line.

Admission: at most `max_batch` sequences decode at once and `max_queue` more may wait for a slot; a request
that would exceed that is answered 429 with Retry-After instead of growing the queue without bound.
SIGTERM or Ctrl-C stops accepting connections, cancels every running sequence so that each open stream ends
at once with finish_reason "cancelled" and `data: [DONE]`, and exits with status 0.
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import signal
import socket
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from tinystories.errors import UserError
from tinystories.generation.engine import Engine
from tinystories.generation.requests import SequenceResult, TokenEvent
from tinystories.serving.openai_protocol import (
    STREAM_END,
    ApiError,
    CompletionRequest,
    Logprobs,
    ResponseHeader,
    choice,
    parse_completion_request,
    server_sent_event,
    usage,
)
from tinystories.serving.service import (
    API_KEY_ENV,
    ChoiceText,
    GenerationFailed,
    ServerConfig,
    Service,
    Submission,
    generation_requests,
)

PLAYGROUND = Path(__file__).resolve().parent / "playground"
SHUTDOWN_GRACE_SECONDS = 5  # uvicorn's limit for open connections after the streams were told to end
LOG = logging.getLogger("uvicorn.error")  # uvicorn's own log, which serve() configures
# The page and its two files come from this server only: nothing from elsewhere may load or run.
SECURITY_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
                    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def _stream(service: Service, submission: Submission, request: CompletionRequest,
                  header: ResponseHeader) -> AsyncIterator[str]:
    choices = [ChoiceText(False) for _ in submission.handles]
    prompt_tokens = completion_tokens = 0
    try:
        async for index, item in submission.items():
            if isinstance(item, TokenEvent):
                logprobs = None if request.logprobs is None else Logprobs()
                choices[index].add(item, logprobs)
                if item.text or logprobs is not None:
                    yield server_sent_event(header.wrap([choice(index, item.text, None, logprobs)]))
            else:
                completion_tokens += len(item.token_ids)
                prompt_tokens += item.prompt_tokens if index % request.n == 0 else 0
                rest = choices[index].rest(item)
                yield server_sent_event(header.wrap([choice(index, rest, item.finish_reason, None)]))
        if request.include_usage:
            yield server_sent_event(header.wrap([], usage(prompt_tokens, completion_tokens)))
    except GenerationFailed as error:  # the status line has gone out: report it in the stream, as OpenAI does
        yield server_sent_event(error.body())
    finally:
        submission.cancel()  # a client that left: its sequences stop at the engine's next step
    yield STREAM_END


async def _body(http_request: Request, limit: int) -> bytes:
    """The request's body; 413 as soon as it is known to be longer than `limit` bytes (from its Content-Length, or
    as it arrives), before the rest is read. ClientDisconnect if the client leaves before sending all of it."""
    declared = http_request.headers.get("content-length", "")
    if declared.isdigit() and (len(declared) > 20 or int(declared) > limit):
        raise _too_large(limit)
    body = bytearray()
    async for chunk in http_request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    return bytes(body)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is larger than this server's limit of {limit:,} bytes; send a shorter "
                         "prompt (the model reads only the end of a long one)", code="request_too_large")


async def _until_disconnected(http_request: Request) -> None:
    while (await http_request.receive())["type"] != "http.disconnect":
        pass


async def _collect(submission: Submission, request: CompletionRequest, header: ResponseHeader) -> dict[str, Any]:
    choices = [ChoiceText(request.logprobs is not None) for _ in submission.handles]
    results: dict[int, SequenceResult] = {}
    async for index, item in submission.items():
        if isinstance(item, TokenEvent):
            choices[index].add(item, choices[index].logprobs)
        else:
            results[index] = item
    prompt_tokens = sum(results[index].prompt_tokens for index in range(0, len(results), request.n))
    return header.wrap(
        [choice(index, results[index].text, results[index].finish_reason, choices[index].logprobs)
         for index in range(len(results))],
        usage(prompt_tokens, sum(len(result.token_ids) for result in results.values())))


def _service(request: Request) -> Service:
    return request.app.state.service


def require_api_key(request: Request) -> None:
    """401 unless the request carries the server's key (when it has one); the key is never echoed."""
    expected = _service(request).api_key
    if expected is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise ApiError(401, "this server needs an API key: send the header 'Authorization: Bearer <key>' "
                            "(the openai client's api_key)", type="authentication_error", code="missing_api_key")
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise ApiError(401, "the API key is not this server's; ask its operator for the right one",
                       type="authentication_error", code="invalid_api_key")


api = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])


@api.post("/completions")
async def completions(http_request: Request) -> Any:
    service = _service(http_request)
    try:
        raw = await _body(http_request, service.config.max_body_bytes)
    except ClientDisconnect:  # nobody is left to answer; the server goes on
        client = http_request.client
        who = f"client {client.host}:{client.port}" if client else "a client"
        LOG.info("%s left before sending the whole request body", who)
        return Response(status_code=499)
    # Parsing and tokenizing a long prompt takes a while: on a worker thread, the event loop serves the others.
    request = await asyncio.to_thread(parse_completion_request, raw, service.model_name, service.limits)
    service.admit(request.sequences)
    submission = Submission(service, generation_requests(request))
    header = ResponseHeader(service.model_name)
    if request.stream:
        return StreamingResponse(_stream(service, submission, request, header), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    collecting = asyncio.ensure_future(_collect(submission, request, header))
    disconnected = asyncio.ensure_future(_until_disconnected(http_request))
    try:
        done, _ = await asyncio.wait({collecting, disconnected}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        disconnected.cancel()
        if not collecting.done():  # the client left (or the server is stopping) before the text was ready
            collecting.cancel()
            submission.cancel()
    if collecting not in done:
        return Response(status_code=499)  # nginx's "client closed request"; nobody is there to read it
    return JSONResponse(collecting.result())


@api.post("/chat/completions")
async def chat_completions() -> None:
    raise ApiError(400, "this server serves a story model, which continues text and has no chat format: "
                        "use POST /v1/completions with a prompt such as \"Once upon a time\"",
                   code="unsupported_endpoint")


def _model_card(service: Service) -> dict[str, Any]:
    return {"id": service.model_name, "object": "model", "created": service.created, "owned_by": "tinystories",
            "max_model_len": service.context_length}


@api.get("/models")
async def models(http_request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [_model_card(_service(http_request))]}


@api.get("/models/{model_name:path}")
async def model(model_name: str, http_request: Request) -> dict[str, Any]:
    service = _service(http_request)
    if model_name != service.model_name:
        raise ApiError(404, f"the model {model_name!r} does not exist here; this server serves "
                            f"{service.model_name!r}", "model", code="model_not_found")
    return _model_card(service)


async def health(http_request: Request) -> dict[str, Any]:
    """Readiness and the engine's counters (monitoring; no API key needed)."""
    service = _service(http_request)
    engine = service.engine
    return {"status": "shutting_down" if service.draining else "ok", "model": service.model_name,
            "active": engine.active, "waiting": engine.waiting, "max_batch": engine.max_batch,
            "max_queue": service.config.max_queue, "in_flight": service.in_flight, "steps": engine.steps,
            "max_active_seen": engine.max_active_seen}


async def playground() -> FileResponse:
    return FileResponse(PLAYGROUND / "index.html")


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def _api_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ApiError)
    return _error_response(error)


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    """Starlette's 404 and 405 (no such route or method) as OpenAI-style error objects, not HTML pages."""
    assert isinstance(error, HTTPException)
    hint = "routes: POST /v1/completions, GET /v1/models, GET /health, and the page at /"
    message = {404: f"no such route: {request.method} {request.url.path}; {hint}",
               405: f"{request.method} is not allowed on {request.url.path}; {hint}"}.get(error.status_code,
                                                                                          str(error.detail))
    return _error_response(ApiError(error.status_code, message, headers=dict(error.headers or {})))


def create_app(engine: Engine, model_name: str, config: ServerConfig, vocab_size: int,
               context_length: int) -> FastAPI:
    """The ASGI app; the engine's thread runs while the app does (its lifespan)."""
    service = Service(engine, model_name, config, vocab_size, context_length)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.loop = asyncio.get_running_loop()
        engine.start()
        yield
        engine.shutdown()

    # No /docs pages: they load scripts from a CDN, and this server loads nothing from the internet.
    app = FastAPI(title="TinyStories", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.include_router(api)
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/", playground, methods=["GET"], include_in_schema=False)
    app.mount("/static", StaticFiles(directory=PLAYGROUND), name="static")
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    return app


class _GracefulServer(uvicorn.Server):
    """uvicorn, which on SIGTERM or Ctrl-C first tells every open stream to end."""

    def __init__(self, config: uvicorn.Config, service: Service) -> None:
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.service.request_drain()
        super().handle_exit(sig, frame)


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port; an address in use or not this machine's is a UserError."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as error:
        raise UserError(f"cannot listen on {host}:{port}: {error.strerror or error}; choose another --port or "
                        "--host") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(app: FastAPI, config: ServerConfig) -> None:
    """Serve `app` until SIGTERM or Ctrl-C, then shut down gracefully and return."""
    sock = listening_socket(config.host, config.port)
    host, port = sock.getsockname()[:2]
    base = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    print(f"API:        {base}/v1  (POST /v1/completions, GET /v1/models)\nplayground: {base}/\n"
          f"health:     {base}/health", flush=True)
    service: Service = app.state.service
    if service.api_key is None and not _is_loopback(config.host):
        print(f"warning: listening on {config.host} without an API key: anyone who can reach this machine can use "
              f"the model; set {API_KEY_ENV}", file=sys.stderr, flush=True)
    server = _GracefulServer(uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS),
                             service)
    # uvicorn re-raises the signal it stopped on; the server has already shut down cleanly by then, so the
    # process should exit 0, not die of the signal.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    server.run(sockets=[sock])
