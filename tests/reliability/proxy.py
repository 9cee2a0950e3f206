"""A TCP proxy on loopback whose behaviour the tests switch at run time: the network between gateway and broker.

Modes (`TcpProxy.mode`):

- ``pass``: bytes flow both ways unchanged.
- ``drop``: every open connection is reset (`transport.abort()`, the peer sees ECONNRESET) and new ones are
  accepted and reset at once — a cable pulled out of a router that answers with RST.
- ``delay``: each chunk waits `delay_s` before it is forwarded (per direction, order kept) — a slow WAN.
- ``blackhole``: a half-open link: connections stay up and new ones are accepted, everything sent is read and
  discarded, nothing is ever answered — a NAT box that lost its state, or a peer frozen behind a live socket.
  The client only notices through its own timeouts (MQTT keepalive, PUBACK wait; MQTT 3.1.1 §3.1.2.10).

Switching back to ``pass`` un-freezes connections that were blackholed; what was discarded meanwhile is gone
(as on a real network), so the MQTT session on top is broken and the client must reconnect — the point.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

Mode = Literal["pass", "drop", "delay", "blackhole"]
MODES: tuple[Mode, ...] = ("pass", "drop", "delay", "blackhole")
_CHUNK_BYTES = 65536


class TcpProxy:
    """Forward 127.0.0.1:`port` → `target_host`:`target_port`, with a switchable fault mode."""

    def __init__(self, target_host: str, target_port: int, *, delay_s: float = 0.5) -> None:
        self.target = (target_host, target_port)
        self.delay_s = delay_s
        self.mode: Mode = "pass"
        self.port = 0
        self.connections_accepted = 0
        self.connections_reset = 0
        self.bytes_discarded = 0
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter | None]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen on a free loopback port (`self.port`)."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close the listener and every link."""
        if self._server is not None:
            self._server.close()
        self._reset_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    def set_mode(self, mode: Mode, *, delay_s: float | None = None) -> None:
        """Switch the fault mode; ``drop`` resets every open connection now."""
        if mode not in MODES:
            raise ValueError(f"unknown proxy mode {mode!r}; one of {MODES}")
        if delay_s is not None:
            self.delay_s = delay_s
        self.mode = mode
        if mode == "drop":
            self._reset_all()

    def _reset_all(self) -> None:
        for client_w, upstream_w in list(self._links):
            for w in (client_w, upstream_w):
                if w is not None and not w.is_closing():
                    w.transport.abort()
            self.connections_reset += 1
        self._links.clear()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections_accepted += 1
        if self.mode == "drop":
            client_w.transport.abort()
            self.connections_reset += 1
            return
        upstream_w: asyncio.StreamWriter | None = None
        link: tuple[asyncio.StreamWriter, asyncio.StreamWriter | None]
        if self.mode == "blackhole":
            # Accept and swallow, never connecting upstream: a CONNECT sent now is lost as on a dead path. When
            # the link comes back this connection is closed (its handshake is gone); the client reconnects.
            link = (client_w, None)
            self._links.add(link)
            with contextlib.suppress(OSError):
                while self.mode == "blackhole":
                    data = await client_r.read(_CHUNK_BYTES)
                    if not data:
                        break
                    self.bytes_discarded += len(data)
            self._close(link)
            return
        try:
            upstream_r, upstream_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.transport.abort()
            return
        link = (client_w, upstream_w)
        self._links.add(link)
        up = asyncio.create_task(self._pump(client_r, upstream_w, link), name="proxy.up")
        down = asyncio.create_task(self._pump(upstream_r, client_w, link), name="proxy.down")
        for t in (up, down):
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        link: tuple[asyncio.StreamWriter, asyncio.StreamWriter | None],
    ) -> None:
        try:
            while True:
                data = await reader.read(_CHUNK_BYTES)
                if not data:
                    break
                if self.mode == "blackhole":
                    self.bytes_discarded += len(data)
                    continue
                if self.mode == "delay":
                    await asyncio.sleep(self.delay_s)
                if self.mode == "drop" or writer.is_closing():
                    break
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._close(link)

    def _close(self, link: tuple[asyncio.StreamWriter, asyncio.StreamWriter | None]) -> None:
        self._links.discard(link)
        for w in link:
            if w is not None and not w.is_closing():
                w.close()
