"""Request latency of an HTTP API as a Prometheus histogram, labelled by route template (gateway and hub)."""

from __future__ import annotations

import time
from typing import Final

from prometheus_client import Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNMATCHED_ROUTE: Final = "unmatched"
"""The `route` label of requests no route matched (404s for unknown paths, slash redirects)."""


def route_template(scope: Scope, entry_root_path: str = "") -> str:
    """The matched route's path template (`/api/alerts/{alert_id}/ack`, `/api/stores/{store_id}/stock`, `/static/{path}`), or `unmatched`.

    The router records the matched route in `scope["route"]` and updates the very scope dict the middleware
    passed down, so it is readable once the app answers. A `Mount` (static files, a sub-app) extends
    `scope["root_path"]` instead (ASGI spec, "root_path"), and FastAPI 0.165 sets no `route` for it (seen in
    tests): the part of `root_path` added since `entry_root_path` is the mount's prefix, and the rest of the
    path is `{path}` (or the sub-app's own route template). Never the raw path, so the label's cardinality
    is the number of routes.
    """
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    root_path = scope.get("root_path", "") or ""
    prefix = root_path[len(entry_root_path) :] if root_path.startswith(entry_root_path) else ""
    if isinstance(template, str) and template:
        if prefix and not template.startswith(prefix + "/"):
            return prefix + template  # a route inside a mounted sub-app
        return template
    return f"{prefix}/{{path}}" if prefix else UNMATCHED_ROUTE


class ApiLatencyMiddleware:
    """Pure ASGI middleware observing each HTTP request's time to response start, by method, route and code.

    Time to the response's first message, not to its last byte: the SSE stream stays open for hours, and its
    latency is how fast it opened. A request that raises before answering is recorded with code 500 (what
    Starlette's outer error middleware then sends). A pure ASGI middleware rather than `BaseHTTPMiddleware`,
    which would buffer through an extra task and interfere with streaming responses.
    """

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        entry_root_path = str(scope.get("root_path", "") or "")
        observed = False

        def observe(code: int) -> None:
            nonlocal observed
            if observed:
                return
            observed = True
            self.histogram.labels(
                scope.get("method", "GET"), route_template(scope, entry_root_path), str(code)
            ).observe(time.perf_counter() - started)

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                observe(int(message.get("status", 0)))
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        except Exception:  # a cancelled request (client gone, shutdown) is not an answer: not observed
            observe(500)
            raise
