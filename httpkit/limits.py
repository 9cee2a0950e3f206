"""Hostile-input limits of an HTTP API: a body cap, UTF-8 and strict JSON bodies, documented 4xx answers.

Why a body cap: uvicorn and Starlette read a body of any size into memory, and neither API takes anything
large (the gateway's largest body is an ROI overlay of a few kB, the hub's a config rollout): one request
could exhaust the machine. Each app passes its own `max_body_bytes`; a body over it is answered
``413 Content Too Large`` (RFC 9110 §15.5.14) before the route runs: at once when ``Content-Length`` says so,
or as soon as a chunked body (RFC 9112 §7.1) passes the cap.

Why UTF-8 only: FastAPI 0.165 decodes a body that is not declared JSON as UTF-8 text to echo it in its 422
answer, and a body that is not UTF-8 makes that a 500 (`UnicodeDecodeError`). The APIs take JSON and UTF-8
text (a delivery note) only, so any other bytes are refused with ``400``.

Why strict JSON: see `cloud_bridge.strict_json` — FastAPI echoes a NaN or a lone surrogate in its 422 answer
and cannot serialise it (a 500 instead of a refusal), and a string that passes a route's validation reaches
SQLite, which cannot store it either. So a JSON body (``application/json`` or ``application/*+json``,
FastAPI's own rule in `fastapi.routing`) is refused with ``400`` and the reason unless it is strict JSON
nested at most `MAX_JSON_DEPTH` deep — the rules the gateway's command intake applies to hub commands.

The body is read whole (it is capped) and checked before the route runs, then handed to it unchanged; nothing
of a refused request reaches a route, so nothing of it is stored.

Why the 4XX declaration: routes answer an unknown id with 404, a state conflict with 409, a refused body with
400 or 413 — always a JSON object with a ``detail`` member (FastAPI's `HTTPException` shape) — and input the
schema cannot judge with 422 and a reason. `document_client_errors` states that for every operation (an
OpenAPI ``4XX`` range response, OpenAPI 3.1 §4.8.16.2) so a client, and schemathesis, can rely on the shape of
every refusal.

The middleware is pure ASGI (ASGI 3.0 HTTP scope).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from email.message import Message as MimeHeader
from typing import Any, Final

from fastapi import FastAPI

from cloud_bridge import strict_json

MAX_JSON_DEPTH: Final = 64
"""Arrays and objects nested deeper are refused; the deepest body the API takes is under 10 levels."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CLIENT_ERROR: Final[dict[str, Any]] = {
    "description": "Refused: unknown resource, conflict, unreadable, invalid or oversized request",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["detail"],
                "properties": {"detail": {"description": "why (text, or FastAPI's validation list)"}},
            }
        }
    },
}
"""The ``4XX`` response every operation declares: a JSON object with ``detail``."""


def _too_large(max_body_bytes: int, size: int) -> str:
    return f"request body of {size} bytes or more exceeds the limit of {max_body_bytes} bytes"


class BodySizeLimit:
    """ASGI middleware: 413 for a body over `max_body_bytes`, 400 for one that is not UTF-8 or strict JSON."""

    def __init__(self, app: AsgiApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None and length > self.max_body_bytes:
            await _refuse(send, 413, _too_large(self.max_body_bytes, length), close=True)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # http.disconnect: the client is gone, nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await _refuse(send, 413, _too_large(self.max_body_bytes, size), close=True)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        problem = body_problem(body, json_declared=_declared_json(scope)) if body else None
        if problem is not None:
            await _refuse(send, 400, problem, close=False)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _refuse(send: Send, status: int, detail: str, *, close: bool) -> None:
    """Answer `status` with ``{"detail": ...}``; `close` when the rest of the body was never read."""
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _declared_json(scope: Scope) -> bool:
    """Whether the Content-Type says JSON as FastAPI reads it (`fastapi.routing`)."""
    for name, value in scope.get("headers", []):
        if name == b"content-type":
            header = MimeHeader()
            header["content-type"] = value.decode("latin-1")
            subtype = header.get_content_subtype()
            return header.get_content_maintype() == "application" and (
                subtype == "json" or subtype.endswith("+json")
            )
    return False  # FastAPI 0.165 then hands a model route the text, not parsed JSON


def body_problem(body: bytes, *, json_declared: bool) -> str | None:
    """Why the API refuses `body` (not UTF-8; declared JSON but not strict JSON); None when it takes it."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"request body is not UTF-8 (byte {exc.start}); this API takes JSON and UTF-8 text only"
    if not json_declared:
        return None
    problem = json_problem(text)
    return None if problem is None else f"invalid JSON body: {problem}"


def json_problem(text: str) -> str | None:
    """Why `text` is not strict JSON (`cloud_bridge.strict_json`, depth ≤ `MAX_JSON_DEPTH`); None when it is."""
    try:
        strict_json.loads(text, max_depth=MAX_JSON_DEPTH)
    except ValueError as exc:  # also int() over 4300 digits
        return str(exc)
    return None


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # uvicorn's h11 refuses these first; the streaming count still applies
    return None


def document_client_errors(app: FastAPI) -> None:
    """Declare `CLIENT_ERROR` as the ``4XX`` response of every operation in the app's OpenAPI document."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                if isinstance(operation, dict) and "responses" in operation:
                    responses = operation["responses"]
                    responses.setdefault("4XX", CLIENT_ERROR)
                    _widen_422(responses.get("422"))
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


def _widen_422(response: Any) -> None:
    """FastAPI documents 422 as its validation-error list only, but routes also answer 422 with a reason
    string for input the schema cannot judge (a GTIN with a wrong check digit, an unknown item): say both."""
    if not isinstance(response, dict):
        return
    media = response.get("content", {}).get("application/json")
    if not isinstance(media, dict) or "schema" not in media or "anyOf" in media["schema"]:
        return
    refusal = CLIENT_ERROR["content"]["application/json"]["schema"]
    media["schema"] = {"anyOf": [media["schema"], refusal]}
    response["description"] = f"{response.get('description', 'Validation Error')}, or a reason (`detail`)"


def install_http_limits(app: FastAPI, max_body_bytes: int) -> None:
    """The body cap and the documented 4xx answers, on one app (call once, from `create_app`)."""
    app.add_middleware(BodySizeLimit, max_body_bytes=max_body_bytes)
    document_client_errors(app)
