"""Async client for one serial UHF module (M100 / JRD-4035 family) on a serial port path.

    async with UhfReaderClient("/dev/ttyUSB0", "rfid-shelf-3") as reader:
        async for read in reader.reads():        # TagRead(epc, rssi_dbm, ts, mono, identity, ...)
            ...

Layering (STYLE.md rules 5-8): one named task `uhf_reader[{id}].loop` owns the port. It opens the port
(pyserial-asyncio-fast), starts a multi-poll inventory, feeds every byte to the sans-IO `FrameDecoder`, and
puts reads on a bounded queue. Overflow policy: when the consumer falls behind, new reads are dropped and
counted (`dropped_reads`) with one warning per episode; availability changes are never dropped (an old read
is evicted to make room).

Liveness: a module in multi-poll sends nothing while no tag is in the field, so silence alone is not an
outage. After `silence_s` without a frame the client *probes*: it sends stop (0x28), which every module
answers, and on the answer restarts the inventory (this also resumes a module that ran out of rounds or was
power-cycled). A probe unanswered for another `silence_s` marks the reader offline — one WARNING, and one INFO
when it answers again (rule 8). A port that cannot be opened or fails is reopened with capped exponential
backoff and full jitter; a missing device path is retried only at the cap (someone must plug it in).

Bad input never stops the loop: garbage, checksum and length errors, bad tag CRCs and malformed EPCs are each
counted in `ReaderCounters` and logged once per kind per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Final

import serial_asyncio_fast

from drivers.backoff import full_jitter_s
from drivers.rfid._common import ReaderEvents
from drivers.rfid.epc import RawEpc, Sgtin96, parse_epc
from drivers.rfid.errors import ChecksumError, EpcError, FrameError, ProtocolError, TagCrcError
from drivers.rfid.models import Availability, ReaderCounters, ReaderUnavailable, TagRead
from drivers.rfid.protocol import (
    CMD_ERROR,
    CMD_SINGLE_INVENTORY,
    CMD_STOP_MULTI_INVENTORY,
    Frame,
    FrameDecoder,
    FrameType,
    NeedMore,
    error_name,
    multi_inventory,
    parse_error,
    parse_tag_notice,
    stop_multi_inventory,
)

_log = logging.getLogger(__name__)

DEFAULT_BAUDRATE: Final = 115200
"""The M100 / JRD-4035 factory setting."""
_READ_CHUNK: Final = 4096
_MAX_LOGGED_EPCS: Final = 256


class UhfReaderClient:
    """One serial UHF module; an async context manager whose loop task owns the port."""

    def __init__(
        self,
        port: str,
        reader_id: str,
        *,
        baudrate: int = DEFAULT_BAUDRATE,
        auto_start: bool = True,
        rounds: int = 0xFFFF,
        silence_s: float = 2.0,
        require_crc: bool = True,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        queue_size: int = 4096,
        rng: random.Random | None = None,
    ) -> None:
        if silence_s <= 0:
            raise ValueError("silence_s must be > 0")
        if backoff_base_s <= 0 or backoff_cap_s < backoff_base_s:
            raise ValueError("need 0 < backoff_base_s <= backoff_cap_s")
        if queue_size < 2:
            raise ValueError("queue_size must be >= 2")
        self.port = port
        self.reader_id = reader_id
        self.baudrate = baudrate
        self.rounds = rounds
        self.silence_s = silence_s
        self.require_crc = require_crc
        """Drop notices without the tag's Gen2 CRC (see `protocol.parse_tag_notice`); the M100 sends it."""
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.counters = ReaderCounters()
        self._events = ReaderEvents(queue_size, self.counters, on_overflow=self._warn_overflow)
        self._inventory_wanted = auto_start
        self._rng = rng or random.Random()  # jitter, not security
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._write_lock = asyncio.Lock()
        self._available: bool | None = None
        self._logged_kinds: set[str] = set()
        self._logged_epcs: set[str] = set()

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def __aenter__(self) -> UhfReaderClient:
        self._events.closed = False
        self._task = asyncio.create_task(self._run(), name=f"uhf_reader[{self.reader_id}].loop")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the loop, close the port, and end the `events()` iterators."""
        if self._events.closed:
            return
        self._events.closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        self._events.end()

    @property
    def available(self) -> bool | None:
        """True while the module answers, False after it stopped, None before the first verdict."""
        return self._available

    @property
    def connected(self) -> bool:
        """True while the serial port is open."""
        return self._writer is not None

    # --- commands ------------------------------------------------------------------------------------------

    async def start_inventory(self) -> None:
        """Start (or restart) the multi-poll inventory; it is also restarted after every probe."""
        self._inventory_wanted = True
        await self._send(multi_inventory(self.rounds))

    async def stop_inventory(self) -> None:
        """Stop the inventory; the client keeps probing liveness but no longer restarts it."""
        self._inventory_wanted = False
        await self._send(stop_multi_inventory())

    async def _send(self, frame: bytes) -> None:
        writer = self._writer
        if writer is None:
            raise ReaderUnavailable(self.reader_id, f"{self.port} is not open")
        async with self._write_lock:
            try:
                writer.write(frame)
                await writer.drain()
            except OSError as exc:
                raise ReaderUnavailable(self.reader_id, f"write to {self.port} failed: {exc}") from exc

    # --- consumer side -------------------------------------------------------------------------------------

    def events(self) -> AsyncIterator[TagRead | Availability]:
        """Tag reads and availability changes, in arrival order, until the client is closed."""
        return self._events.events()

    def reads(self) -> AsyncIterator[TagRead]:
        """Only the tag reads of `events()`."""
        return self._events.reads()

    def _warn_overflow(self) -> None:
        _log.warning(
            "uhf reader %s: consumer behind, dropping reads (queue of %d full)",
            self.reader_id,
            self._events.maxsize,
        )

    # --- availability --------------------------------------------------------------------------------------

    def _set_available(self, online: bool, reason: str) -> None:
        self.counters.online = online
        if self._available is online:
            return
        self._available = online
        if online:
            _log.info("uhf reader %s on %s online: %s", self.reader_id, self.port, reason)
        else:
            _log.warning("uhf reader %s on %s offline: %s", self.reader_id, self.port, reason)
        self._events.put(Availability(self.reader_id, online=online, reason=reason, ts=time.time()))

    def _log_once(self, kind: str, message: str) -> None:
        self.counters.last_error = message
        if kind in self._logged_kinds:
            return
        self._logged_kinds.add(kind)
        _log.warning("uhf reader %s: %s (further %s errors are only counted)", self.reader_id, message, kind)

    # --- the loop ------------------------------------------------------------------------------------------

    def _port_problem(self) -> str | None:
        if self.port.startswith(("socket://", "rfc2217://", "loop://")):
            return None
        if not os.path.exists(self.port):
            return f"serial port {self.port} does not exist"
        if not os.access(self.port, os.R_OK | os.W_OK):
            return f"no permission to open serial port {self.port} (is the service user in group dialout?)"
        return None

    async def _run(self) -> None:
        attempt = 0
        while True:
            problem = self._port_problem()
            misconfigured = problem is not None
            if problem is None:
                try:
                    reader, writer = await serial_asyncio_fast.open_serial_connection(
                        url=self.port, baudrate=self.baudrate
                    )
                except OSError as exc:  # serial.SerialException is an OSError
                    problem = f"cannot open {self.port}: {exc}"
                except ValueError as exc:  # pyserial: a setting the port rejects, e.g. the baud rate
                    problem = f"{self.port} rejects its settings: {exc}"
                    misconfigured = True
            if problem is not None:
                self.counters.connect_failures += 1
                self.counters.last_error = problem
                self._set_available(False, problem)
                # Retrying a missing path or a rejected setting fast cannot help; someone has to fix it.
                delay_s = (
                    self.backoff_cap_s * self._rng.uniform(0.5, 1.0)
                    if misconfigured
                    else full_jitter_s(attempt, self.backoff_base_s, self.backoff_cap_s, self._rng)
                )
                attempt += 1
                await asyncio.sleep(delay_s)
                continue
            self.counters.connects += 1
            self._writer = writer
            self._logged_kinds.clear()
            heard = False
            try:
                heard = await self._session(reader)
                reason = f"{self.port} closed"
            except (OSError, ReaderUnavailable) as exc:
                reason = f"{self.port} failed: {exc}"
            finally:
                self._writer = None
                with contextlib.suppress(OSError):
                    writer.close()
            self.counters.disconnects += 1
            self.counters.last_error = reason
            self._set_available(False, reason)
            attempt = 0 if heard else attempt + 1
            await asyncio.sleep(full_jitter_s(attempt, self.backoff_base_s, self.backoff_cap_s, self._rng))

    async def _session(self, reader: asyncio.StreamReader) -> bool:
        """Run one open port until it fails; returns whether the module said anything at all."""
        decoder = FrameDecoder()
        heard = False
        probe_outstanding = False
        if self._inventory_wanted:
            await self._send(multi_inventory(self.rounds))
        while True:
            try:
                async with asyncio.timeout(self.silence_s):
                    data = await reader.read(_READ_CHUNK)
            except TimeoutError:
                self._on_idle(decoder)
                if probe_outstanding:
                    self._set_available(False, f"no reply to a probe within {self.silence_s:g} s")
                self.counters.probes += 1
                probe_outstanding = True
                await self._send(stop_multi_inventory())
                continue
            if not data:
                return heard
            decoder.receive_data(data)
            if await self._drain(decoder):
                heard = True
                probe_outstanding = False

    def _on_idle(self, decoder: FrameDecoder) -> None:
        """The line fell silent with bytes buffered: a half frame that will never complete."""
        if not decoder.pending:
            return
        before = decoder.skipped_bytes
        self.counters.truncated_frames += 1
        self._log_once("truncated", f"line idle after a partial frame of {decoder.pending} bytes")
        while decoder.pending:
            decoder.discard_partial()
            self._decode_all(decoder)
        self.counters.garbage_bytes += decoder.skipped_bytes - before

    async def _drain(self, decoder: FrameDecoder) -> bool:
        before = decoder.skipped_bytes
        frames = self._decode_all(decoder)
        skipped = decoder.skipped_bytes - before
        if skipped:
            self.counters.garbage_bytes += skipped
            self._log_once("garbage", f"skipped {skipped} bytes of garbage between frames")
        for frame in frames:
            if (
                frame.frame_type == FrameType.RESPONSE
                and frame.command == CMD_STOP_MULTI_INVENTORY
                and self._inventory_wanted
            ):
                await self._send(multi_inventory(self.rounds))
        return bool(frames)

    def _decode_all(self, decoder: FrameDecoder) -> list[Frame]:
        """Every complete frame in the buffer, handled; errors are counted and the stream continues."""
        frames: list[Frame] = []
        while True:
            try:
                event = decoder.next_event()
            except ChecksumError as exc:
                self.counters.checksum_errors += 1
                self._log_once("checksum", f"frame dropped: {exc}")
                continue
            except FrameError as exc:
                self.counters.frame_errors += 1
                self._log_once("frame", f"frame dropped: {exc}")
                continue
            if isinstance(event, NeedMore):
                return frames
            frames.append(event)
            self._handle(event)

    def _handle(self, frame: Frame) -> None:
        c = self.counters
        c.frames += 1
        now_mono = time.monotonic()
        c.last_seen_mono = now_mono
        self._set_available(True, "module answering")
        if frame.frame_type == FrameType.NOTICE and frame.command == CMD_SINGLE_INVENTORY:
            try:
                notice = parse_tag_notice(frame, require_crc=self.require_crc)
            except TagCrcError as exc:
                c.crc_errors += 1
                self._log_once("crc", f"tag read dropped: {exc}")
                return
            except ProtocolError as exc:
                c.frame_errors += 1
                self._log_once("notice", f"tag notice dropped: {exc}")
                return
            epc = notice.epc_hex
            malformed: str | None = None
            identity: Sgtin96 | RawEpc
            try:
                identity = parse_epc(notice.epc)
            except EpcError as exc:
                identity = RawEpc(epc)
                malformed = str(exc)
                c.malformed_epc += 1
                c.last_error = f"malformed EPC {epc}: {exc}"
                if epc not in self._logged_epcs and len(self._logged_epcs) < _MAX_LOGGED_EPCS:
                    self._logged_epcs.add(epc)
                    _log.warning("uhf reader %s: malformed EPC %s: %s", self.reader_id, epc, exc)
            c.tag_reads += 1
            self._events.put(
                TagRead(
                    reader_id=self.reader_id,
                    epc=epc,
                    rssi_dbm=notice.rssi_dbm,
                    pc=notice.pc,
                    ts=time.time(),
                    mono=now_mono,
                    identity=identity,
                    malformed=malformed,
                )
            )
        elif frame.frame_type == FrameType.RESPONSE and frame.command == CMD_ERROR:
            c.error_frames += 1
            try:
                code = parse_error(frame)
            except ProtocolError as exc:
                c.frame_errors += 1
                self._log_once("error-frame", f"undecodable error frame: {exc}")
                return
            c.last_error = f"module error: {error_name(code)}"
