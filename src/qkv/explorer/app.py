"""The explorer's web app: the page, its static files and the JSON API (FastAPI).

    GET  /               the page (static/index.html)
    GET  /static/...     its script and style, shipped in the package: nothing from the network
    GET  /api/health     {"status": "ok", "version", "default_model", "models": [...], "limits": {...}}
    POST /api/attention  {"text": str, "model"?: str, "layer"?: int} -> tokens, weights, entropy, distance,
                         rollout, start (weights: L×H×N×N when it fits the budget, else one layer, 1×H×N×N;
                         "layers_sent" says which)
    POST /api/lab        the mechanism lab's knobs -> every step's matrices (see `qkv.explorer.lab`)

Every error is JSON ``{"error": message}`` with a 4xx status for bad input (400
malformed or out of range, 413 too large), 403 for a request the guard refuses
(`qkv.explorer.guard`: another site's page, a foreign ``Host``, a change without
the per-launch token the server writes into its own pages) and 503 for a model
that is not installed or a queue that is full; never a 500 for anything a client sends.
Model work runs in worker threads (at most `MODEL_THREADS` at once, one forward
pass per model at a time), the lab in its own threads, so a slow model request
never holds up ``/api/health``, the page or the lab.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

import qkv
from qkv.explorer.guard import Guard
from qkv.explorer.lab import MAX_D_K, MAX_HEADS, MAX_WORDS, LabConfig, LabError, compute
from qkv.explorer.learn_routes import add_learn_routes
from qkv.explorer.models import ExplorerError, Limits, Loader, ModelRegistry
from qkv.models import PACKAGES

__all__ = ["create_app"]

MODEL_THREADS = 4  # model requests running at once (each model still runs one pass at a time)
LAB_THREADS = 4

log = logging.getLogger("qkv.explorer")

# The page may load its own files and talk to its own server, nothing else.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _static_dir() -> str:
    return str(resources.files("qkv.explorer").joinpath("static"))


def create_app(
    *,
    model: str = "minilm",
    models: Sequence[str] | None = None,
    loader: Loader | None = None,
    limits: Limits | None = None,
    allowed_hosts: Sequence[str] | None = None,
    token: str | None = None,
) -> FastAPI:
    """The explorer app; serve it with any ASGI server (``qkv explore`` uses uvicorn).

    Args:
        model: the model the page starts with (a known name or a path).
        models: every model a request may name (default: ``model``, then minilm and smollm2).
            Requests can never name anything else, so a client cannot make the server read a file.
        loader: ``name -> loaded model`` (default `qkv.models.load`); tests pass small fakes.
        limits: request limits (`Limits`).
        allowed_hosts: accepted ``Host`` names (e.g. ``["127.0.0.1", "localhost"]`` against DNS
            rebinding when bound to loopback); None accepts any.
        token: the secret every POST and DELETE must carry in ``X-QKV-Token`` (default: a fresh
            random one, ``app.state.token``); the server writes it into its own pages, which send it.

    >>> from fastapi.testclient import TestClient
    >>> app = create_app()
    >>> client = TestClient(app, headers={"X-QKV-Token": app.state.token})
    >>> client.get("/api/health").json()["status"]
    'ok'
    >>> r = client.post("/api/attention", json={"text": ""})
    >>> r.status_code, r.json()["error"]
    (400, "text: expected some text, e.g. 'The cat sat on the mat.', got an empty string")
    >>> TestClient(app).post("/api/attention", json={"text": "hi"}).status_code  # no token
    403
    """
    names = list(models) if models is not None else [model, *(n for n in PACKAGES if n != model)]
    if model not in names:
        names.insert(0, model)
    registry = ModelRegistry(names, loader=loader, limits=limits)
    app = FastAPI(title="qkv explorer", version=qkv.__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.registry = registry
    app.state.default_model = model
    app.state.waiting = 0  # model requests waiting or running (503 beyond limits.max_waiting)
    app.state.lab_waiting = 0
    model_limiter = anyio.CapacityLimiter(MODEL_THREADS)
    lab_limiter = anyio.CapacityLimiter(LAB_THREADS)
    guard = Guard(token=token, allowed_hosts=allowed_hosts)
    app.state.token = guard.token
    index = guard.page(resources.files("qkv.explorer").joinpath("static", "index.html").read_bytes())

    _add_error_handlers(app)

    @app.middleware("http")
    async def refuse_strangers(request: Request, call_next: Callable) -> Response:
        refusal = guard.refusal(request.method, request.url.path, request.headers)
        if refusal is not None:
            return _error(refusal, 403)
        return await call_next(request)

    @app.middleware("http")
    async def no_stale_files(request: Request, call_next: Callable) -> Response:
        response = await call_next(request)
        response.headers.setdefault("Cache-Control", "no-cache")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return Response(index, media_type="text/html; charset=utf-8", headers={"Content-Security-Policy": CSP})

    app.mount("/static", StaticFiles(directory=_static_dir()), name="static")

    @app.get("/api/health")
    async def health() -> Response:
        return _json(
            {
                "status": "ok",
                "version": qkv.__version__,
                "default_model": model,
                "models": registry.describe(),
                "limits": registry.limits.as_json(),
                "lab": {"max_words": MAX_WORDS, "max_d_k": MAX_D_K, "max_heads": MAX_HEADS},
            }
        )

    @app.post("/api/attention")
    async def attention(request: Request) -> Response:
        body = await read_json(request, registry.limits.max_body_bytes)
        _only(body, ("text", "model", "layer"))
        if "text" not in body:
            raise ExplorerError(400, 'text: missing; send {"text": "The cat sat on the mat."}')
        text = registry.check_text(body["text"])
        name = registry.check_name(body.get("model", model))
        layer = registry.check_layer(body["layer"]) if "layer" in body else None  # its range: once the model is known
        if app.state.waiting >= registry.limits.max_waiting:
            raise ExplorerError(503, f"busy: {app.state.waiting} requests are waiting for a model; try again shortly")
        app.state.waiting += 1
        try:
            work = lambda: _encode(registry.attention(name, text, layer))  # noqa: E731 - runs in a worker thread
            content = await anyio.to_thread.run_sync(work, limiter=model_limiter)
        finally:
            app.state.waiting -= 1
        return Response(content, media_type="application/json")

    @app.post("/api/lab")
    async def lab(request: Request) -> Response:
        body = await read_json(request, registry.limits.max_body_bytes)
        config = LabConfig.from_json(body)
        if app.state.lab_waiting >= registry.limits.max_waiting:
            raise ExplorerError(503, f"busy: {app.state.lab_waiting} lab requests are waiting; try again shortly")
        app.state.lab_waiting += 1
        try:
            content = await anyio.to_thread.run_sync(lambda: _encode(compute(config)), limiter=lab_limiter)
        finally:
            app.state.lab_waiting -= 1
        return Response(content, media_type="application/json")

    add_learn_routes(app, csp=CSP, page=guard.page)  # the Learn page and /api/learn/... (qkv.explorer.learn_routes)
    return app


def _encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _json(payload: dict[str, Any], status: int = 200) -> Response:
    return Response(_encode(payload), status_code=status, media_type="application/json")


def _only(body: dict[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise ExplorerError(400, f"unknown field {unknown[0]!r}; expected only {list(allowed)}")


MAX_DIGITS = 64  # the longest integer a request may write; the API's numbers have a few digits


def _int_of(digits: str) -> int:
    count = len(digits.lstrip("-"))
    if count > MAX_DIGITS:
        raise ExplorerError(400, f"body: a number of {count} digits; the explorer takes at most {MAX_DIGITS} digits")
    return int(digits)


def _check_strings(data: Any) -> None:
    """400 if any string of ``data`` (key or value, at any depth) holds an unpaired UTF-16 surrogate.

    JSON may spell one as ``"\\ud800"``; Python then holds a str that cannot be written as UTF-8,
    so nothing downstream (a tokenizer, the answer's encoder) could use it. Walked without recursion.
    """
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ExplorerError(
                    400, "body: a string holds an unpaired UTF-16 surrogate (such as \\ud800); send valid Unicode"
                ) from None


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The request body as a JSON object, reading at most ``limit`` bytes (413 beyond, 400 if not a JSON object).

    Also 400: integers of more than `MAX_DIGITS` digits, strings with an unpaired surrogate,
    nesting deeper than the parser's stack. (``NaN`` and ``Infinity`` pass: each field's check refuses them.)
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ExplorerError(400, f"Content-Length: expected a number of bytes, got {declared[:40]!r}")
        if int(declared) > limit:
            raise ExplorerError(413, f"body: {int(declared)} bytes, the explorer reads at most {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ExplorerError(413, f"body: more than {limit} bytes, the explorer reads at most {limit}")
    if not body.strip():
        raise ExplorerError(400, 'body: expected a JSON object such as {"text": "The cat sat."}, got nothing')
    try:
        text = bytes(body).decode("utf-8")  # JSON is UTF-8 (RFC 8259), nothing else
    except UnicodeDecodeError:
        raise ExplorerError(400, "body: expected UTF-8 JSON, got bytes that are not UTF-8") from None
    try:
        data = json.loads(text, parse_int=_int_of)
    except json.JSONDecodeError as error:
        where = f"line {error.lineno} column {error.colno}"
        raise ExplorerError(400, f"body: not valid JSON ({error.msg} at {where})") from None
    except RecursionError:
        raise ExplorerError(400, "body: JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise ExplorerError(400, f"body: expected a JSON object {{...}}, got {_json_type(data)}")
    _check_strings(data)
    return data


def _json_type(data: Any) -> str:
    names = {list: "an array", str: "a string", bool: "true or false", int: "a number", float: "a number"}
    return "null" if data is None else names.get(type(data), "something else")


def _error(message: str, status: int, headers: Any = None) -> Response:
    """``{"error": message}``; ASCII-escaped, so no message can fail to encode."""
    content = json.dumps({"error": message}, ensure_ascii=True, separators=(",", ":"))
    return Response(content, status_code=status, headers=headers, media_type="application/json")


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ExplorerError)
    async def explorer_error(request: Request, error: ExplorerError) -> Response:
        return _error(error.message, error.status)

    @app.exception_handler(LabError)
    async def lab_error(request: Request, error: LabError) -> Response:
        return _error(str(error), 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        if error.status_code == 404:
            message = f"not found: {request.url.path}; the API is /api/health, /api/attention, /api/lab"
        elif error.status_code == 405:
            message = f"method {request.method} not allowed on {request.url.path}"
        else:
            message = error.detail if isinstance(error.detail, str) else "the request was refused"
        return _error(message, error.status_code, error.headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> Response:
        # The exception's class and text stay in the server's log: they help whoever runs it and
        # may tell a client about the server's insides. The client gets an id to quote.
        incident = secrets.token_hex(4)
        log.exception("qkv explorer: internal error %s on %s", incident, request.url.path)
        return _error(f"internal error (id {incident}); the server's log has the details", 500)
