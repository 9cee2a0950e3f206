"""Async Modbus bus client (one per RS-485 line or TCP endpoint) and a poller per weight transmitter.

Layering (STYLE.md rules 7-10)::

    TransmitterPoller ─ one per transmitter: schedule, decode, counters, availability (logged once per change)
          │ read_block(unit_id, block)
    ModbusBus ───────── one per line: ONE client, ONE lock, t3.5 silence, reconnect with backoff,
          │             transport errors → our exception tree (the only place that happens)
    RTU: pymodbus 3.16 AsyncModbusSerialClient (retries=0, its own reconnect disabled)
    TCP: `MbapTcpClient` — one asyncio connection speaking MBAP through `protocol.py`'s sans-IO codec

Why TCP does not go through pymodbus: a store polls hundreds of transmitters 10 times a second over Modbus TCP
gateways, and py-spy put pymodbus at ~36 % of the gateway's busy event loop at 500 transmitters × 10 Hz
(docs/benchmarks-peer.md). Against the same simulator, pymodbus' client alone took 157-183 µs of CPU per
12-register read on the 2-core bench machine, this bus with `MbapTcpClient` 120-124 µs. The MBAP framing is a
few lines of `protocol.py`; RTU keeps pymodbus, whose serial framer and inter-frame timing are worth their cost
on a line that carries tens of transactions a second.

Why the bus owns the lock and the gap: Modbus RTU is single-master half-duplex; a second request sent while a
reply is on the wire collides with it, and a request must follow at least 3.5 character times of silence
(Modbus over Serial Line v1.02 §2.5.1.1) or the device's framer merges it with the previous frame.

Why pymodbus retries are 0: every failure must be ours to count (timeouts, CRC errors) and to schedule; a
hidden retry triples wire time on a slow line and hides a flaky device behind a healthy-looking sample.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import time
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Final

from pymodbus.client import AsyncModbusSerialClient
from pymodbus.exceptions import ConnectionException, ModbusException

from drivers.aio import reraise_swallowed_cancel
from drivers.backoff import full_jitter_s
from drivers.modbus.models import (
    Availability,
    BusSettings,
    BusUnavailable,
    DeviceCounters,
    DeviceExceptionResponse,
    DeviceTimeout,
    FrameError,
    ModbusDriverError,
    RtuSettings,
    Sample,
)
from drivers.modbus.protocol import (
    MAX_READ_REGISTERS,
    Block,
    MbapDecoder,
    MbapFrame,
    PollPlan,
    ProtocolError,
    exception_code,
    fc03_registers,
    mbap_read_request,
    rtu_check,
)

_log = logging.getLogger(__name__)

PYMODBUS_LOGGER: Final = "pymodbus"
"""pymodbus logs an ERROR per unanswered request; see `quiet_pymodbus_logging`."""

_EXCEPTION_NAMES: Final = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
"""Modbus Application Protocol v1.1b3 §7 exception codes."""


def quiet_pymodbus_logging() -> None:
    """Raise pymodbus' logger to CRITICAL: the driver reports every failure itself, once per change.

    pymodbus logs one ERROR per unanswered request and one WARNING per failed connect, which breaks the
    "availability is logged once per change" rule (STYLE.md rule 8). Logging is process-wide state, so the
    process root (not this library) calls this once at start.
    """
    logging.getLogger(PYMODBUS_LOGGER).setLevel(logging.CRITICAL)


class _MbapProtocol(asyncio.Protocol):
    """The asyncio side of one Modbus TCP connection: frames in, replies matched to requests by transaction id."""

    def __init__(self, on_lost: Callable[[_MbapProtocol], None]) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future[MbapFrame]] = {}
        self.decoder = MbapDecoder()
        self.stray_frames = 0
        """Replies nobody waits for any more (they came after their request's timeout)."""
        self._on_lost = on_lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # noqa: S101 - a stream connection
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for frame in self.decoder.feed(data):
            fut = self.pending.pop(frame.transaction_id, None)
            if fut is None or fut.done():
                self.stray_frames += 1
                continue
            fut.set_result(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        pending, self.pending = self.pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError(f"connection lost ({exc})" if exc else "connection closed"))
        self._on_lost(self)


class MbapTcpClient:
    """A lean Modbus TCP client (Modbus Messaging on TCP/IP Implementation Guide v1.0b): one connection,
    FC03 reads, replies matched by transaction id. Used through `ModbusBus`, which serialises requests.

    `read_holding_registers` returns the reply frame as it came (exception or not: `ModbusBus` interprets it in
    one place) and raises `TimeoutError` (no reply in time) or `ConnectionError` (connection gone).
    `on_disconnect` is called once when an established connection drops.
    """

    def __init__(self, host: str, port: int, timeout_s: float, on_disconnect: Callable[[], None]) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self._on_disconnect = on_disconnect
        self._protocol: _MbapProtocol | None = None
        self._tid = 0

    @property
    def connected(self) -> bool:
        """True while the TCP connection is up."""
        return self._protocol is not None and self._protocol.transport is not None

    async def connect(self) -> bool:
        """Open the connection; False (never an exception) when it cannot be opened within the timeout."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout_s):
                _, protocol = await loop.create_connection(
                    lambda: _MbapProtocol(self._lost), self.host, self.port
                )
        except (OSError, TimeoutError):
            return False
        self._protocol = protocol
        return True

    def _lost(self, protocol: _MbapProtocol) -> None:
        if protocol is self._protocol:
            self._protocol = None
            self._on_disconnect()

    async def read_holding_registers(self, unit_id: int, block: Block) -> MbapFrame:
        """Send one FC03 request and wait for its reply frame."""
        protocol = self._protocol
        if protocol is None or protocol.transport is None:
            raise ConnectionError(f"{self.host}:{self.port} not connected")
        self._tid = tid = (self._tid + 1) & 0xFFFF
        fut: asyncio.Future[MbapFrame] = asyncio.get_running_loop().create_future()
        protocol.pending[tid] = fut
        try:
            protocol.transport.write(mbap_read_request(tid, unit_id, block))
            async with asyncio.timeout(self.timeout_s):
                return await fut
        finally:
            if protocol.pending.get(tid) is fut:
                del protocol.pending[tid]

    def close(self) -> None:
        """Close the connection (no `on_disconnect` for a close we asked for)."""
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()


class ModbusBus:
    """One Modbus line: `async with ModbusBus(settings, "rs485-1") as bus: await bus.read_block(1, block)`.

    Transactions are serialised by one lock; on RTU each one starts only after `settings.inter_frame_s` of
    silence (bytes that arrive late, e.g. a reply after its timeout, restart the silence). When the transport
    is down, `read_block` fails fast with `BusUnavailable` while a named task reconnects with capped
    exponential backoff and full jitter; a missing serial device path is retried only at the cap.
    """

    def __init__(
        self,
        settings: BusSettings,
        bus_id: str,
        *,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        if backoff_base_s <= 0 or backoff_cap_s < backoff_base_s:
            raise ValueError("need 0 < backoff_base_s <= backoff_cap_s")
        self.settings = settings
        self.bus_id = bus_id
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self._rng = rng or random.Random()  # jitter, not security
        self._client: AsyncModbusSerialClient | MbapTcpClient | None = None
        self._lock = asyncio.Lock()
        self._down = asyncio.Event()
        self._reconnect_task: asyncio.Task[None] | None = None
        self._closing = False
        self._misconfigured = False
        self._last_quiet_mono = 0.0
        self._rx_last: bytes | None = None
        self.last_connect_error: str | None = None
        self.busy_s = 0.0
        """Sum of transaction durations (request sent → reply or timeout): the line's occupied time."""
        self.transactions = 0
        self.connects = 0
        self.disconnects = 0
        """Transport losses seen after a successful connect (not failed connect attempts)."""
        self.connect_failures = 0

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def __aenter__(self) -> ModbusBus:
        self._closing = False
        self._client = self._make_client()
        # A bus that is down at start is not an error: the gateway starts, the device reports offline, and
        # the reconnect task keeps trying.
        connected = await self._try_connect()
        if not connected:
            self._down.set()
        self._reconnect_task = asyncio.create_task(
            self._reconnect_loop(0 if connected else 1), name=f"modbus_bus[{self.bus_id}].reconnect"
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop reconnecting and close the port/socket."""
        self._closing = True
        task, self._reconnect_task = self._reconnect_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        if self._client is not None:
            self._client.close()

    def _make_client(self) -> AsyncModbusSerialClient | MbapTcpClient:
        s = self.settings
        # reconnect_delay=0 disables pymodbus' own reconnect (ours has jitter and per-error-class policy).
        if isinstance(s, RtuSettings):
            return AsyncModbusSerialClient(
                s.port,
                baudrate=s.baudrate,
                bytesize=s.bytesize,
                parity=s.parity,
                stopbits=s.stopbits,
                name=f"modbus_bus[{self.bus_id}]",
                reconnect_delay=0,
                timeout=s.timeout_s,
                retries=0,
                trace_packet=self._trace_packet,
                trace_connect=self._trace_connect,
            )
        return MbapTcpClient(s.host, s.port, s.timeout_s, lambda: self._trace_connect(False))

    @property
    def connected(self) -> bool:
        """True while the port is open / the TCP connection is up."""
        return self._client is not None and bool(self._client.connected)

    @property
    def inter_frame_s(self) -> float:
        """Silence kept between transactions (0 on TCP, where MBAP framing needs none)."""
        return self.settings.inter_frame_s if isinstance(self.settings, RtuSettings) else 0.0

    @property
    def target(self) -> str:
        """The port path or host:port, for messages."""
        s = self.settings
        return s.port if isinstance(s, RtuSettings) else f"{s.host}:{s.port}"

    def stats(self) -> dict[str, int | float | bool | str | None]:
        """Bus-level counters for the bus-time report."""
        return {
            "bus_id": self.bus_id,
            "connected": self.connected,
            "busy_s": self.busy_s,
            "transactions": self.transactions,
            "connects": self.connects,
            "disconnects": self.disconnects,
            "connect_failures": self.connect_failures,
            "last_connect_error": self.last_connect_error,
        }

    # --- reconnect -----------------------------------------------------------------------------------------

    def _port_problem(self) -> str | None:
        """Why the serial port cannot be opened by anyone's retry, or None (TCP, or the path looks usable)."""
        s = self.settings
        if not isinstance(s, RtuSettings):
            return None
        if not os.path.exists(s.port):
            return f"serial port {s.port} does not exist"
        if not os.access(s.port, os.R_OK | os.W_OK):
            return f"no permission to open serial port {s.port} (is the service user in group dialout?)"
        return None

    async def _try_connect(self) -> bool:
        client = self._client
        if client is None:
            return False
        if (problem := self._port_problem()) is not None:
            self._misconfigured = True
            self.connect_failures += 1
            self.last_connect_error = problem
            return False
        self._misconfigured = False
        if client.connected:  # nothing to do (the drop was noticed after the transport had come back)
            self._down.clear()
            return True
        if await client.connect() and client.connected:
            self.connects += 1
            self.last_connect_error = None
            self._last_quiet_mono = time.monotonic()
            self._down.clear()
            return True
        self.connect_failures += 1
        self.last_connect_error = f"cannot open {self.target}"
        return False

    def _retry_delay_s(self, attempt: int) -> float:
        if self._misconfigured:
            # Retrying a missing device path fast cannot help; someone has to plug it in or fix the config.
            return self.backoff_cap_s * self._rng.uniform(0.5, 1.0)
        return full_jitter_s(attempt, self.backoff_base_s, self.backoff_cap_s, self._rng)

    async def _reconnect_loop(self, failed_attempts: int) -> None:
        """Wait for the transport to drop, then reconnect; after a failed attempt, back off before the next.

        The first attempt after a drop is immediate (a TCP reset is usually transient); every further one
        waits a capped, fully jittered exponential delay, so a dead line never becomes a tight loop.
        """
        attempt = failed_attempts
        while True:
            if attempt:
                await asyncio.sleep(self._retry_delay_s(attempt - 1))
            else:
                await self._down.wait()
            attempt = 0 if await self._try_connect() else attempt + 1
            reraise_swallowed_cancel()  # pymodbus connects through 3.11's wait_for

    # --- pymodbus callbacks (run in the event loop, synchronously) ----------------------------------------

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if sending:
            self._rx_last = None
        else:
            self._rx_last = bytes(data)
            self._last_quiet_mono = time.monotonic()
        return data

    def _trace_connect(self, connected: bool) -> None:
        if not connected and not self._closing:
            self.disconnects += 1
            self._down.set()

    # --- transactions --------------------------------------------------------------------------------------

    async def _wait_for_silence(self) -> None:
        gap_s = self.inter_frame_s
        if gap_s <= 0:
            return
        # Bounded: a line that never falls silent (babbling device) must not stall the master forever; each
        # round sleeps until t3.5 after the last byte seen, and a byte arriving meanwhile moves that point.
        give_up = time.monotonic() + gap_s + self.settings.timeout_s
        for _ in range(64):
            now = time.monotonic()
            remaining = min(self._last_quiet_mono + gap_s, give_up) - now
            if remaining <= 0:
                return
            await asyncio.sleep(remaining)

    async def read_block(
        self,
        unit_id: int,
        block: Block,
        *,
        device_id: str | None = None,
        counters: DeviceCounters | None = None,
    ) -> list[int]:
        """FC03-read one block of holding registers (Modbus Application Protocol v1.1b3 §6.3).

        Raises `DeviceTimeout`, `FrameError`, `DeviceExceptionResponse` or `BusUnavailable`; `device_id`
        names the device in them (default `bus_id/unit_id`), `counters.bus_time_s` gets this transaction's
        wire time.
        """
        who = device_id or f"{self.bus_id}/{unit_id}"
        if not 1 <= block.count <= MAX_READ_REGISTERS:
            raise ValueError(f"block count {block.count} outside 1..{MAX_READ_REGISTERS}")
        async with self._lock:
            client = self._client
            if client is None:
                raise RuntimeError("ModbusBus is not open; use it as an async context manager")
            if not client.connected:
                self._down.set()
                raise BusUnavailable(
                    who,
                    self.last_connect_error or f"{self.target} disconnected, reconnecting",
                    misconfigured=self._misconfigured,
                )
            await self._wait_for_silence()
            started = time.monotonic()
            try:
                if isinstance(client, MbapTcpClient):
                    frame = await client.read_holding_registers(unit_id, block)
                    return self._tcp_registers(frame, unit_id, block, who)
                response = await client.read_holding_registers(
                    block.start, count=block.count, device_id=unit_id
                )
            except ModbusException as exc:
                raise self._translate(exc, who) from exc
            except TimeoutError as exc:
                raise DeviceTimeout(who, f"no reply within {self.settings.timeout_s:g} s") from exc
            except ConnectionError as exc:
                self._down.set()
                raise BusUnavailable(
                    who, f"{self.target} disconnected ({exc})", misconfigured=self._misconfigured
                ) from exc
            finally:
                ended = time.monotonic()
                self.busy_s += ended - started
                self.transactions += 1
                if counters is not None:
                    counters.bus_time_s += ended - started
                self._last_quiet_mono = max(self._last_quiet_mono, ended)
        if response.isError():
            code = int(response.exception_code)
            name = _EXCEPTION_NAMES.get(code, "unknown exception")
            raise DeviceExceptionResponse(who, f"exception {code:02d} ({name}) reading {block}", code)
        registers = [int(r) for r in response.registers]
        if len(registers) != block.count:
            raise FrameError(who, f"asked for {block.count} registers at {block.start}, got {len(registers)}")
        return registers

    @staticmethod
    def _tcp_registers(frame: MbapFrame, unit_id: int, block: Block, who: str) -> list[int]:
        """An MBAP reply → the block's registers, or the driver error it stands for."""
        if frame.unit_id != unit_id:
            raise FrameError(who, f"reply from unit id {frame.unit_id}, asked {unit_id}")
        code = exception_code(frame.pdu)
        if code is not None:
            name = _EXCEPTION_NAMES.get(code, "unknown exception")
            raise DeviceExceptionResponse(who, f"exception {code:02d} ({name}) reading {block}", code)
        try:
            return fc03_registers(frame.pdu, block.count)
        except ProtocolError as exc:
            raise FrameError(who, f"garbled reply: {exc}") from exc

    def _translate(self, exc: ModbusException, who: str) -> ModbusDriverError:
        """The one place pymodbus exceptions become ours."""
        if isinstance(exc, ConnectionException) or not self.connected:
            self._down.set()
            return BusUnavailable(
                who, f"{self.target} disconnected ({exc})", misconfigured=self._misconfigured
            )
        rx = self._rx_last
        if rx:
            # Bytes came back but pymodbus found no valid reply in them (its RTU framer drops a bad-CRC frame
            # silently and waits for the timeout); say what was wrong with them.
            detail = "garbled reply"
            if isinstance(self.settings, RtuSettings):
                try:
                    rtu_check(rx)
                except ProtocolError as perr:
                    detail = f"garbled reply: {perr}"
            return FrameError(who, f"{detail} ({len(rx)} bytes {rx[:16].hex()})")
        text = str(exc)
        if "device id" in text or "transaction id" in text:
            return FrameError(who, text)
        return DeviceTimeout(who, f"no reply within {self.settings.timeout_s:g} s")


class TransmitterPoller:
    """Polls one weight transmitter on a fixed-rate schedule and yields samples and availability changes.

    `async for item in poller.run(): ...` yields a `Sample` per successful poll and an `Availability` only
    when availability changes: offline after `offline_after` consecutive failed polls (one WARNING), online
    again at the first success after that (one INFO). A first success at start yields no `Availability`
    (the sample itself says the device is there). While offline the poller retries with capped, fully
    jittered exponential backoff (never faster than the poll interval) instead of every interval. Every
    failure — timeout, garbled frame, exception response, bus down, undecodable words — is counted in
    `counters` and skipped; none of them ends the iterator.
    """

    def __init__(
        self,
        bus: ModbusBus,
        device_id: str,
        unit_id: int,
        plan: PollPlan,
        interval_s: float,
        *,
        offline_after: int = 3,
        backoff_cap_s: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        if offline_after < 1:
            raise ValueError("offline_after must be at least 1")
        self.bus = bus
        self.device_id = device_id
        self.unit_id = unit_id
        self.plan = plan
        self.interval_s = interval_s
        self.offline_after = offline_after
        self.backoff_cap_s = max(backoff_cap_s, interval_s)
        self.counters = DeviceCounters()
        self._rng = rng or random.Random()  # jitter, not security
        self._available: bool | None = None
        self._consecutive_failures = 0
        self._bus_down_noted = False
        self._offline_since_mono: float | None = None

    @property
    def online(self) -> bool | None:
        """None before the first verdict, then the current availability."""
        return self._available

    def _advance(self, tick: float) -> float:
        """Next tick of the fixed-rate schedule; ticks already missed are skipped, never burst."""
        tick += self.interval_s
        now = time.monotonic()
        if tick < now:
            tick += math.ceil((now - tick) / self.interval_s) * self.interval_s
        return tick

    async def run(self) -> AsyncIterator[Sample | Availability]:
        """Poll forever (until the consumer stops iterating or the task is cancelled)."""
        next_tick = time.monotonic()
        while True:
            reraise_swallowed_cancel()  # pymodbus (RTU) awaits through 3.11's wait_for, which may drop a cancel
            delay_s = next_tick - time.monotonic()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            outcome = await self._poll_once()
            reraise_swallowed_cancel()
            if isinstance(outcome, Sample):
                self._consecutive_failures = 0
                if self._available is False:
                    offline_s = time.monotonic() - (self._offline_since_mono or time.monotonic())
                    _log.info("modbus device %s back online after %.1f s", self.device_id, offline_s)
                    self._available = True
                    self.counters.online = True
                    yield Availability(self.device_id, online=True, reason="reply received", ts=outcome.ts)
                self._available = True
                self.counters.online = True
                yield outcome
                next_tick = self._advance(next_tick)
                continue
            self._consecutive_failures += 1
            if self._available is not False and self._consecutive_failures >= self.offline_after:
                self._available = False
                self.counters.online = False
                self._offline_since_mono = time.monotonic()
                _log.warning(
                    "modbus device %s offline after %d failed polls: %s",
                    self.device_id,
                    self._consecutive_failures,
                    outcome,
                )
                yield Availability(self.device_id, online=False, reason=outcome, ts=time.time())
            if self._available is False:
                attempt = self._consecutive_failures - self.offline_after
                backoff_s = full_jitter_s(attempt, self.interval_s, self.backoff_cap_s, self._rng)
                next_tick = time.monotonic() + max(self.interval_s, backoff_s)
            else:
                next_tick = self._advance(next_tick)

    async def _poll_once(self) -> Sample | str:
        """One cycle: read every block and decode; the sample, or the failure's reason after counting it."""
        c = self.counters
        c.polls += 1
        try:
            words = [
                await self.bus.read_block(self.unit_id, block, device_id=self.device_id, counters=c)
                for block in self.plan.blocks
            ]
            readings = self.plan.decode(words)
        except DeviceTimeout as exc:
            c.timeouts += 1
            reason = exc.reason
        except FrameError as exc:
            c.crc_errors += 1
            reason = exc.reason
        except DeviceExceptionResponse as exc:
            c.exceptions += 1
            reason = exc.reason
        except BusUnavailable as exc:
            if not self._bus_down_noted:
                self._bus_down_noted = True
                c.disconnects += 1
            reason = exc.reason
        except ProtocolError as exc:
            c.decode_errors += 1
            reason = f"undecodable registers: {exc}"
        else:
            now_mono = time.monotonic()
            c.ok += 1
            c.last_seen_mono = now_mono
            self._bus_down_noted = False
            return Sample(self.device_id, ts=time.time(), mono=now_mono, readings=tuple(readings))
        c.errors += 1
        c.last_error = reason
        return reason
