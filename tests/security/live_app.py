"""A real server (uvicorn on 127.0.0.1) in an event loop on a thread of its own, for synchronous fuzzers.

Why a thread: schemathesis and Hypothesis drive synchronous tests example by example (schemathesis sends each
case with `requests`), while the gateway and the hub own async resources (the SQLite store, the device
pollers) bound to the loop that opened them. Running the whole stack in one background loop keeps those
resources on their loop and lets the fuzzer talk to it over real HTTP, the way a browser on the store LAN does.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

from fastapi import FastAPI

from edge.api import ApiServer

T = TypeVar("T")

WAIT_S = 60.0
"""A hang guard for a loaded 2-core machine, not a timing claim."""

ServerFactory = Callable[[], AbstractAsyncContextManager[str]]
"""Starts a server on the loop it is entered in and yields its base URL."""


class LiveApp:
    """`with LiveApp(factory) as live:` keeps what `factory` starts running at `live.url` until the block ends."""

    def __init__(self, factory: ServerFactory) -> None:
        self._factory = factory
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="live-app.loop", daemon=True)
        self._stack = contextlib.AsyncExitStack()
        self.url = ""

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the app's loop and wait for its result (from the test's thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT_S)

    def __enter__(self) -> LiveApp:
        self._thread.start()
        try:
            self.run(self._start())
        except BaseException:
            self._shutdown_loop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.run(self._stop())
        finally:
            self._shutdown_loop()

    def _shutdown_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(WAIT_S)
        self.loop.close()

    async def _start(self) -> None:
        self.url = await self._stack.enter_async_context(self._factory())

    async def _stop(self) -> None:
        await self._stack.aclose()


@contextlib.asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """Serve `app` with the gateway's own `ApiServer` on a free loopback port; yield its base URL."""
    server = ApiServer(app, "127.0.0.1", 0)
    task = asyncio.create_task(server.serve(), name="live-app.serve")
    try:
        port = await server.started(WAIT_S)
        yield f"http://127.0.0.1:{port}"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
