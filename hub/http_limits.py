"""Hostile-input limits of the HQ API: a body cap, UTF-8 and strict JSON bodies, documented 4xx answers.

Why a body cap: nothing the hub's API takes is larger than a config rollout (a YAML text per store), yet
uvicorn and Starlette read a body of any size into memory, so one request could exhaust the hub. Bodies over
`MAX_BODY_BYTES` are answered ``413 Content Too Large`` (RFC 9110 §15.5.14) before the route runs: at once
when ``Content-Length`` says so, or as soon as a chunked body (RFC 9112 §7.1) passes the cap.

Why UTF-8 only: FastAPI 0.165 decodes a body that is not declared JSON as UTF-8 text to echo it in its 422
answer, and a body that is not UTF-8 makes that a 500 (`UnicodeDecodeError`). The API takes JSON only, so
any other bytes are refused with ``400``.

Why strict JSON: Python's `json` accepts what JSON does not — ``NaN``/``Infinity`` (RFC 8259 §6), lone UTF-16
surrogates from ``"\\ud800"`` escapes and duplicate member names (both outside I-JSON, RFC 7493 §2.1, §2.3).
FastAPI then echoes such an input in its 422 answer and cannot serialise it (a lone surrogate is not UTF-8;
Starlette renders with ``allow_nan=False``): a 500 instead of a refusal — and a string that passes a route's
validation reaches SQLite, which cannot store it either. So a JSON body (``application/json`` or
``application/*+json``, FastAPI's own rule in `fastapi.routing`) is refused with ``400`` and the reason
unless it is I-JSON nested at most `MAX_JSON_DEPTH` deep: the rules `cloud_bridge.uplink.parse_command`
applies to hub commands.

The body is read whole (it is capped) and checked before the route runs, then handed to it unchanged; nothing
of a refused request reaches a route, so nothing of it is stored.

Why the 4XX declaration: routes answer an unknown id with 404, a state conflict with 409, a refused body with
400 or 413 — always a JSON object with a ``detail`` member (FastAPI's `HTTPException` shape) — and input the
schema cannot judge with 422 and a reason. `document_client_errors` states that for every operation (an
OpenAPI ``4XX`` range response, OpenAPI 3.1 §4.8.16.2) so a client, and schemathesis, can rely on the shape of
every refusal.

The middleware is pure ASGI (ASGI 3.0 HTTP scope). This is a copy of
`edge/http_limits.py` because the import contract keeps the hub from importing `edge`; keep them in step.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, MutableMapping
from email.message import Message as MimeHeader
from typing import Any, Final, NoReturn

from fastapi import FastAPI

MAX_BODY_BYTES: Final = 16 * 1024 * 1024
"""16 MiB: the largest body the API takes is a config rollout with one YAML text per store (each at most
200 000 characters, typically 5–20 kB): room for a fleet of hundreds of stores in one request."""

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

    def __init__(self, app: AsgiApp, max_body_bytes: int = MAX_BODY_BYTES) -> None:
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


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON (RFC 8259 §6)")


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for name, value in pairs:
        if name in doc:
            raise ValueError(f"duplicate member name {name[:40]!r} (RFC 7493 §2.3)")
        doc[name] = value
    return doc


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
    """Why `text` is not strict JSON (RFC 8259, I-JSON, depth ≤ `MAX_JSON_DEPTH`); None when it is."""
    try:
        doc = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_members)
    except RecursionError:
        return f"nested deeper than {MAX_JSON_DEPTH} levels"
    except ValueError as exc:  # JSONDecodeError, the hooks above, and int() over 4300 digits
        return str(exc)
    stack: list[tuple[object, int]] = [(doc, 1)]
    while stack:  # iterative: a hostile body must not be able to exhaust the recursion limit here
        node, depth = stack.pop()
        if isinstance(node, str):
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                return "a string holds a lone UTF-16 surrogate, which is not Unicode (RFC 7493 §2.1)"
        elif isinstance(node, float) and not math.isfinite(node):
            return "a number is out of the range of an IEEE 754 double (RFC 7493 §2.2)"
        elif isinstance(node, dict | list):
            if depth > MAX_JSON_DEPTH:
                return f"nested deeper than {MAX_JSON_DEPTH} levels"
            children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
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


def install_http_limits(app: FastAPI, max_body_bytes: int = MAX_BODY_BYTES) -> None:
    """The body cap and the documented 4xx answers, on one app (call once, from `create_app`)."""
    app.add_middleware(BodySizeLimit, max_body_bytes=max_body_bytes)
    document_client_errors(app)
