"""A serial port opened for probing: raw bytes out, raw bytes in, every wait bounded.

The device clients (`drivers/<family>/client.py`) own a port for the gateway's lifetime and speak one protocol.
Discovery is different: it opens a port it knows nothing about, sends one protocol's hello, collects whatever
comes back for a short while, and closes the port again — often trying several protocols on the same port in
turn. `SerialLine` is that small, protocol-neutral piece; the probes that give the bytes a meaning live next to
their codecs (`drivers/scale/probe.py`, `drivers/rfid/probe.py`, `drivers/modbus/scan.py`).

Transport: pyserial-asyncio-fast, like the clients (the port's fd sits in the event loop, so a wait costs no
thread and a cancelled probe stops at once). Closing uses `abort()`: a graceful close first drains the output
with tcdrain, which on a line with hardware flow control and nobody listening can wait forever — and "never
hang on a silent port" is the one promise a probe must keep.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from types import TracebackType
from typing import Final, Literal, Self

import serial
import serial_asyncio_fast

Parity = Literal["N", "E", "O"]

CLOSE_TIMEOUT_S: Final = 2.0
"""Upper bound on waiting for the transport to report the port closed."""


class SerialLineError(Exception):
    """The port cannot be opened, or went away while open; `reason` is fit for one line of output."""

    def __init__(self, port: str, reason: str) -> None:
        super().__init__(f"{port}: {reason}")
        self.port = port
        self.reason = reason


def char_time_s(baudrate: int, parity: Parity = "N", stopbits: int = 1, bytesize: int = 8) -> float:
    """Seconds one character occupies on the wire: start + data + optional parity + stop bits."""
    return (1 + bytesize + (0 if parity == "N" else 1) + stopbits) / baudrate


class _Receiver(asyncio.Protocol):
    """Glue from the transport's callbacks to the line (no logic of its own)."""

    def __init__(self, line: SerialLine) -> None:
        self._line = line
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self._line._on_bytes(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self._line._on_lost(exc)


class SerialLine:
    """`async with SerialLine("/dev/ttyUSB0", baudrate=9600) as line: line.write(b"@\\r\\n"); ...`.

    Received bytes accumulate in a buffer until `take()`; `wait_until(done, timeout_s)` waits until a predicate
    over that buffer holds, or the timeout passes — never longer. Opening a missing or busy port raises
    `SerialLineError` with the OS's reason; so does any wait after the port was lost (USB unplugged).
    """

    def __init__(
        self,
        port: str,
        *,
        baudrate: int = 9600,
        bytesize: int = 8,
        parity: Parity = "N",
        stopbits: int = 1,
    ) -> None:
        self.port = port
        self.baudrate = baudrate
        self.bytesize = bytesize
        self.parity = parity
        self.stopbits = stopbits
        self.bytes_in = 0
        self.bytes_out = 0
        self.last_rx_mono = 0.0
        """`time.monotonic()` of the last received chunk (0 before any)."""
        self._buffer = bytearray()
        self._arrived = asyncio.Event()
        self._transport: asyncio.Transport | None = None
        self._receiver: _Receiver | None = None
        self._lost: str | None = None

    @property
    def char_time_s(self) -> float:
        """Seconds per character at this line's settings."""
        return char_time_s(self.baudrate, self.parity, self.stopbits, self.bytesize)

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        try:
            transport, receiver = await serial_asyncio_fast.create_serial_connection(
                loop,
                lambda: _Receiver(self),
                self.port,
                baudrate=self.baudrate,
                bytesize=self.bytesize,
                parity=self.parity,
                stopbits=self.stopbits,
            )
        except serial.SerialException as exc:
            # pyserial wraps the OSError: "[Errno 2] could not open port X: [Errno 2] No such file ..."
            cause = exc.__cause__ or exc.__context__
            reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(exc)
            raise SerialLineError(self.port, f"cannot open: {reason}") from exc
        except (OSError, ValueError) as exc:
            raise SerialLineError(self.port, f"cannot open: {exc}") from exc
        assert isinstance(receiver, _Receiver)  # noqa: S101 - our factory made it
        self._transport, self._receiver = transport, receiver
        self._lost = None
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the port at once (pending output is dropped), waiting a bounded time for the close."""
        transport, receiver = self._transport, self._receiver
        self._transport = self._receiver = None
        if transport is None or receiver is None:
            return
        if not transport.is_closing():  # a lost port is already closing; a second close trips the library
            transport.abort()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await receiver.closed

    # --- transport callbacks ---------------------------------------------------------------------------------

    def _on_bytes(self, data: bytes) -> None:
        self._buffer += data
        self.bytes_in += len(data)
        self.last_rx_mono = time.monotonic()
        self._arrived.set()

    def _on_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:  # lost while in use, not closed by us
            self._lost = f"port lost: {exc}" if exc else "port lost"
        self._arrived.set()

    # --- I/O -------------------------------------------------------------------------------------------------

    def _check(self) -> asyncio.Transport:
        if self._lost is not None:
            raise SerialLineError(self.port, self._lost)
        if self._transport is None:
            raise SerialLineError(self.port, "not open")
        return self._transport

    def write(self, data: bytes) -> None:
        """Queue bytes for sending (the transport writes them without blocking)."""
        self._check().write(data)
        self.bytes_out += len(data)

    @property
    def buffered(self) -> bytes:
        """A copy of what was received and not yet taken."""
        return bytes(self._buffer)

    def take(self) -> bytes:
        """Everything received since the last `take()`, removed from the buffer."""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    async def wait_until(self, done: Callable[[bytes], bool], timeout_s: float) -> bool:
        """Wait until `done(buffered bytes)` holds (True) or `timeout_s` passes (False)."""
        self._check()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout_s, 0.0)
        while not done(bytes(self._buffer)):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._arrived.wait()
            self._check()
        return True

    async def wait_quiet(self, quiet_s: float, timeout_s: float) -> bool:
        """Wait until no byte has arrived for `quiet_s` (True), or `timeout_s` passes first (False).

        Used to let a line fall silent before a request, and to collect the rest of a garbled reply.
        """
        self._check()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout_s, 0.0)
        while True:
            since_last = time.monotonic() - self.last_rx_mono
            if since_last >= quiet_s:
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            await asyncio.sleep(min(quiet_s - since_last, remaining))
            self._check()
