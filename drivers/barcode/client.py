"""Async client for one serial/USB-CDC barcode scanner: `async with ScannerClient(...) as s: async for scan in s`.

Layering (STYLE.md rules 5-8)::

    ScannerClient ─ owns the port: one named task `barcode[id].loop` opens it, reconnects with capped full-jitter
          │         backoff, logs availability once per change; frames + decodes; bounded queue of scans
          │ data_received(bytes)
    _LineProtocol ─ asyncio.Protocol: feeds the sans-IO `LineFramer`, reports connection_lost
          │
    pyserial-asyncio-fast SerialTransport (loop.add_reader on the tty fd)

Why pyserial-asyncio-fast rather than pyserial in a thread: a scanner is a read-only byte stream that is
silent most of the time. The transport registers the tty's fd with the event loop, so an idle scanner costs
nothing, bytes reach the framer as they arrive, cancellation is immediate, and an unplugged USB device
surfaces as `connection_lost` (pyserial raises "device reports readiness to read but returned no data" on a
hung-up tty). A thread would need a blocking read with a timeout — polling, a thread per scanner, and a
shutdown that waits for the timeout — which is what STYLE.md asks us not to do.

Overflow policy: decoded scans wait in a bounded queue (`ScannerSettings.queue_size`); when the consumer falls
behind, the *oldest* scan is dropped (one WARNING per overflow episode, `counters.dropped` counts every one).
A stalled consumer must not stall the tty read (the scanner has no flow control and would lose bytes anyway),
and after a stall the newest scans are the ones a checkout lane still cares about.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Final

import serial
from serial_asyncio_fast import SerialTransport, create_serial_connection

from drivers.backoff import full_jitter_s
from drivers.barcode.models import ScannerCounters, ScannerSettings, ScannerUnavailable
from drivers.barcode.protocol import (
    DEFAULT_CONFIG,
    LineFramer,
    MemberScan,
    ProtocolError,
    RejectReason,
    Scan,
    ScanConfig,
    decode_scan,
)

_log = logging.getLogger(__name__)

_MISCONFIGURED_ERRNOS: Final = frozenset({errno.EACCES, errno.EPERM, errno.ENOTTY})


class _LineProtocol(asyncio.Protocol):
    """Bytes from the transport into the client's framer; the loss of the port into a future."""

    def __init__(self, client: ScannerClient) -> None:
        self._client = client
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self._client._on_bytes(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


class ScannerClient:
    """One scanner: `async with ScannerClient(settings, "lane-1") as scanner: async for scan in scanner: …`.

    Iterating yields `ProductScan` and `MemberScan` values; lines that are not scans (garbage, bad check
    digits, codes that are neither product nor member) are counted in `counters.rejected` by reason and
    logged once per reason, never raised. A missing or vanished port is retried for ever with capped
    exponential backoff and full jitter; a port that is present but unopenable (permissions) only at the cap.
    """

    def __init__(
        self,
        settings: ScannerSettings,
        scanner_id: str,
        *,
        config: ScanConfig = DEFAULT_CONFIG,
        backoff_base_s: float = 0.2,
        backoff_cap_s: float = 10.0,
        rng: random.Random | None = None,
        on_rejected: Callable[[str, str], None] | None = None,
    ) -> None:
        """`on_rejected(text, reason)` hears each well-framed line that is not a product or member scan — a
        receiving dock's SSCC pallet label or a (02)+(37) case label is such a line, and the receiving desk
        books it from its text. Called in the transport's read callback: it must not block."""
        if backoff_base_s <= 0 or backoff_cap_s < backoff_base_s:
            raise ValueError("need 0 < backoff_base_s <= backoff_cap_s")
        if settings.queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.settings = settings
        self.scanner_id = scanner_id
        self.config = config
        self.counters = ScannerCounters()
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self._rng = rng or random.Random()
        self._on_rejected = on_rejected
        self._framer = LineFramer(settings.max_line_bytes)
        self._queue: asyncio.Queue[Scan] = asyncio.Queue(settings.queue_size)
        self._available: bool | None = None
        self._overflowing = False
        self._logged_reasons: set[RejectReason] = set()
        self._task: asyncio.Task[None] | None = None
        self._transport: SerialTransport | None = None

    # --- lifecycle -------------------------------------------------------------------------------------------

    async def __aenter__(self) -> ScannerClient:
        self._task = asyncio.create_task(self._run(), name=f"barcode[{self.scanner_id}].loop")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def __aiter__(self) -> AsyncIterator[Scan]:
        return self.scans()

    async def scans(self) -> AsyncIterator[Scan]:
        """Decoded scans, in order, for as long as the client is open."""
        while True:
            yield await self.get()

    async def get(self) -> Scan:
        """The next decoded scan (waits while the scanner is idle or unplugged)."""
        if self._task is None:
            raise RuntimeError("use `async with ScannerClient(...)` before reading scans")
        scan = await self._queue.get()
        if self._queue.empty():
            self._overflowing = False
        return scan

    @property
    def pending_bytes(self) -> int:
        """Bytes of a line still waiting for its terminator (a half line is lost if the port closes now)."""
        return self._framer.pending_bytes

    @property
    def available(self) -> bool:
        """True while the port is open."""
        return bool(self._available)

    # --- connection loop -------------------------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                protocol = await self._open()
            except ScannerUnavailable as exc:
                self._set_available(False, exc.reason)
                delay_s = (
                    self.backoff_cap_s
                    if exc.misconfigured
                    else full_jitter_s(attempt, self.backoff_base_s, self.backoff_cap_s, self._rng)
                )
                attempt += 1
                await asyncio.sleep(delay_s)
                continue
            attempt = 0
            self.counters.connects += 1
            self._set_available(True, "port open")
            try:
                lost = await protocol.lost
            finally:
                await self._close(protocol)
            self.counters.disconnects += 1
            self._set_available(False, f"port lost: {lost}" if lost else "port closed")

    async def _open(self) -> _LineProtocol:
        loop = asyncio.get_running_loop()
        protocol = _LineProtocol(self)
        # pyserial opens the tty in an executor thread; if we are cancelled meanwhile, wait for that open to
        # finish and close it, or the fd would outlive the client.
        opening = asyncio.create_task(
            create_serial_connection(
                loop, lambda: protocol, self.settings.port, baudrate=self.settings.baudrate
            ),
            name=f"barcode[{self.scanner_id}].open",
        )
        try:
            transport, _ = await asyncio.shield(opening)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                late_transport, _ = await opening
                late_transport.abort()
                async with asyncio.timeout(5.0):
                    await asyncio.shield(protocol.lost)
            raise
        except serial.SerialException as exc:
            code = exc.errno if isinstance(exc.errno, int) else None
            raise ScannerUnavailable(
                self.scanner_id,
                f"cannot open {self.settings.port}: {exc.strerror or exc}",
                misconfigured=code in _MISCONFIGURED_ERRNOS,
            ) from exc
        except OSError as exc:
            raise ScannerUnavailable(
                self.scanner_id,
                f"cannot open {self.settings.port}: {exc.strerror or exc}",
                misconfigured=exc.errno in _MISCONFIGURED_ERRNOS,
            ) from exc
        assert isinstance(transport, SerialTransport)  # noqa: S101 - not a socket:// URL
        self._transport = transport
        return protocol

    async def _close(self, protocol: _LineProtocol) -> None:
        """Drop the transport without flushing (we never write), and count any half line as lost.

        Waits for `connection_lost`: the transport closes the tty in an executor thread, and a client that
        returned before that would leak the fd past its `async with`.
        """
        transport, self._transport = self._transport, None
        if transport is not None and not transport.is_closing():
            transport.abort()
        # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that lands as `lost` completes
        # (CPython gh-86296) and the client would then hang in shutdown (seen: ~4 % of cancels after an unplug).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await asyncio.shield(protocol.lost)
        dropped = self._framer.reset()
        if dropped:
            self._reject(
                ProtocolError(f"{dropped} bytes of a half line when the port closed", RejectReason.PARTIAL)
            )

    def _set_available(self, online: bool, reason: str) -> None:
        """Log availability once per change (STYLE.md rule 8): WARNING when lost, INFO when back."""
        self.counters.online = online
        if self._available is online:
            return
        self._available = online
        if online:
            _log.info("barcode scanner %s available on %s", self.scanner_id, self.settings.port)
        else:
            self.counters.last_error = reason
            _log.warning("barcode scanner %s unavailable: %s", self.scanner_id, reason)

    # --- decoding (runs in the transport's read callback) ----------------------------------------------------

    def _on_bytes(self, data: bytes) -> None:
        framer = self._framer
        framer.feed(data)
        while True:
            try:
                line = framer.next_line()
            except ProtocolError as exc:
                self.counters.lines += 1
                self._reject(exc)
                continue
            if line is None:
                return
            self.counters.lines += 1
            self.counters.last_seen_mono = time.monotonic()
            try:
                scan = decode_scan(line, self.config)
            except ProtocolError as exc:
                self._reject(exc)
                if self._on_rejected is not None:
                    self._on_rejected(line.decode("utf-8", errors="replace"), exc.reason.value)
                continue
            self._deliver(scan)

    def _deliver(self, scan: Scan) -> None:
        if isinstance(scan, MemberScan):
            self.counters.members += 1
        else:
            self.counters.scans += 1
        if self._queue.full():
            self._queue.get_nowait()
            self.counters.dropped += 1
            if not self._overflowing:
                self._overflowing = True
                _log.warning(
                    "barcode scanner %s: consumer is behind, dropping oldest scans (queue of %d)",
                    self.scanner_id,
                    self.settings.queue_size,
                )
        self._queue.put_nowait(scan)

    def _reject(self, exc: ProtocolError) -> None:
        """Count a rejected line by reason; log the first of each reason at WARNING, the rest at DEBUG."""
        self.counters.rejected[exc.reason.value] = self.counters.rejected.get(exc.reason.value, 0) + 1
        self.counters.last_error = str(exc)
        level = logging.DEBUG if exc.reason in self._logged_reasons else logging.WARNING
        self._logged_reasons.add(exc.reason)
        _log.log(level, "barcode scanner %s rejected a line (%s): %s", self.scanner_id, exc.reason.value, exc)
