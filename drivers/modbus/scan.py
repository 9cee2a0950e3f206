"""Modbus bus scan for installers: which unit ids answer, what each one probably is, which ids two devices share.

Why not the gateway's `ModbusBus`: a scan must *see* bad replies, not only count them. pymodbus' RTU framer
drops a frame with a bad CRC and waits out the timeout, and it cannot tell "two devices answered" from "one
device answered badly". So the scan speaks the few bytes it needs itself — one FC03 request, framed with this
package's own CRC (`protocol.rtu_frame`) — over a raw `SerialLine` (RTU) or a TCP stream (MBAP), and classifies
every reply byte by byte:

    ok          a well-formed reply from the addressed unit
    exception   a Modbus exception reply (spec §7): the unit is there, the register is not
    timeout     nothing at all within the timeout: nobody has this address
    late        a clean reply that came after its timeout (recorded for the unit it came from): a slow device
    garbled     bytes that are not one clean reply: CRC mismatch, a partial frame, extra bytes after a good
                frame, or stray bytes between exchanges
    gateway     a TCP gateway's exception 0A/0B (spec §7: "gateway path unavailable" / "gateway target device
                failed to respond"): nobody behind the gateway has this address

Address conflicts (two devices set to one id). Both answer the same request at nearly the same moment; on
RS-485 their drivers fight and the master reads a frame whose CRC fails or whose length is wrong — or, if one
answers a little later, a good frame followed by stray bytes. A noisy line garbles replies too, so one bad reply
proves nothing. The rule (`analyse_conflicts`):

  * an id is *repeatedly garbled* when at least 2 of its replies, and at least half of them, were garbled;
  * its *neighbours* are the (up to) two scanned ids on each side; a neighbour is clean when none of its
    replies was garbled (silence is clean: nobody there, and nothing on the line either);
  * repeatedly garbled with every neighbour clean → **conflict**: the line is fine right next to it, so the
    garbling belongs to this one address;
  * repeatedly garbled next to garbled neighbours → **garbled**: line noise, a wrong baud rate or parity,
    missing termination — or conflicts side by side, which cannot be told apart until the line is clean.

Every id that gave a garbled reply is asked again, up to `ScanSettings.attempts` times, so the verdict rests on
repeated evidence. The profile reads of a responder (below) add to its evidence as well.

Profile guess (`check_profile`, `choose_profile`): for each known register map, read every channel's weight and
status registers and ask whether the words *look like* that map:

  * registers the map names answer with exception 02 → the map cannot be this device's;
  * a float32 weight must be finite and either 0 or between 1e-6 and 1e8 in magnitude; reading int32 counts
    as float32 gives denormal-tiny values (≈1e-27) and reading a float with the wrong word order gives huge
    ones (≈1e9), both rejected;
  * an int32/uint32 weight must stay within ±1e8 counts (a 24-bit ADC spans ±8.4e6); float32 bit patterns read
    as integers are ≈±1.1e9, rejected;
  * a status word must not set bits the map does not define (stable/overload/fault).

A map fits when at least 75 % of its channels pass. If exactly one map fits, that is the guess; if every
register read zero the evidence is marked weak (zeros are valid in every encoding); if several fit, or none,
the scan says so instead of guessing.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Final, Protocol, Self

from drivers.modbus.protocol import (
    ProtocolError,
    RegisterMap,
    ValueType,
    crc16_modbus,
    decode_value,
    plan_poll,
    rtu_frame,
    t35_s,
)
from drivers.serial_line import Parity, SerialLine, SerialLineError

FC_READ_HOLDING: Final = 0x03
"""Read Holding Registers, Modbus Application Protocol v1.1b3 §6.3."""
EXCEPTION_FLAG: Final = 0x80
"""An exception reply echoes the function code with its top bit set (spec §7)."""
GATEWAY_NO_TARGET: Final = frozenset({0x0A, 0x0B})
"""Exception 0A gateway path unavailable, 0B gateway target device failed to respond (spec §7)."""
MBAP_HEADER_LEN: Final = 7
"""Transaction id, protocol id, length (all uint16) and unit id (Modbus Messaging on TCP/IP v1.0b §3.1.3)."""
MAX_MBAP_LENGTH: Final = 254
"""Largest MBAP length field: unit id + the 253-byte PDU limit (spec §4.1)."""

INT_MAX_COUNTS: Final = 1e8
FLOAT_MAX: Final = 1e8
FLOAT_MIN_NONZERO: Final = 1e-6
PLAUSIBLE_SHARE: Final = 0.75
NEIGHBOURS_EACH_SIDE: Final = 2
EVERY_ID_SHARE: Final = 0.9
"""A Modbus TCP device (not a gateway) may ignore the unit id and answer every one (Modbus Messaging on TCP/IP
Implementation Guide v1.0b §4.4.2: the unit id is meant for gateways); when at least this share of a range of
8 or more ids answers cleanly, the scan says so instead of reporting hundreds of transmitters."""


class ScanError(Exception):
    """The bus itself cannot be scanned (port missing or busy, connection refused or lost)."""

    def __init__(self, target: str, reason: str) -> None:
        super().__init__(f"{target}: {reason}")
        self.target = target
        self.reason = reason


class ReplyKind(StrEnum):
    """How one request was answered (see the module docstring)."""

    OK = "ok"
    EXCEPTION = "exception"
    TIMEOUT = "timeout"
    LATE = "late"
    GARBLED = "garbled"
    GATEWAY = "gateway"


@dataclass(frozen=True, slots=True)
class Reply:
    """One classified reply; `registers` for OK, `exception_code` for EXCEPTION/GATEWAY, `detail` in words."""

    kind: ReplyKind
    registers: tuple[int, ...] = ()
    exception_code: int | None = None
    detail: str = ""
    raw: bytes = b""


# --- sans-IO: requests and reply classification ------------------------------------------------------------


def read_request_pdu(start: int, count: int) -> bytes:
    """The FC03 PDU: function code, start address, quantity (spec §6.3)."""
    if not 0 <= start <= 0xFFFF or not 1 <= count <= 125:
        raise ProtocolError(f"cannot read {count} registers at {start}")
    return struct.pack(">BHH", FC_READ_HOLDING, start, count)


def rtu_request(unit_id: int, start: int, count: int) -> bytes:
    """An RTU FC03 request: address, PDU, CRC (Modbus over Serial Line v1.02 §2.5.1)."""
    if not 1 <= unit_id <= 247:
        raise ProtocolError(f"unit id {unit_id} outside 1..247 (Serial Line v1.02 §2.2)")
    return rtu_frame(bytes((unit_id,)) + read_request_pdu(start, count))


def rtu_reply_length(buf: bytes, function_code: int = FC_READ_HOLDING) -> int | None:
    """Length of the RTU reply `buf` starts with, once its header says; None when it cannot (yet) tell.

    A normal FC03 reply is address, function, byte count, data, CRC (5 + byte count); an exception reply is
    address, function | 0x80, code, CRC (5 bytes).
    """
    if len(buf) < 2:
        return None
    if buf[1] == function_code | EXCEPTION_FLAG:
        return 5
    if buf[1] == function_code and len(buf) >= 3:
        return 5 + buf[2]
    return None


def rtu_reply_complete(buf: bytes, function_code: int = FC_READ_HOLDING) -> bool:
    """True once `buf` holds at least the whole reply its header announces."""
    n = rtu_reply_length(buf, function_code)
    return n is not None and len(buf) >= n


def classify_pdu(pdu: bytes, count: int, function_code: int = FC_READ_HOLDING) -> Reply:
    """Classify a reply PDU (function code onwards), already de-framed and from the right unit."""
    if not pdu:
        return Reply(ReplyKind.GARBLED, detail="empty reply")
    if pdu[0] == function_code | EXCEPTION_FLAG:
        if len(pdu) != 2:
            return Reply(ReplyKind.GARBLED, detail=f"exception reply of {len(pdu)} bytes")
        code = pdu[1]
        kind = ReplyKind.GATEWAY if code in GATEWAY_NO_TARGET else ReplyKind.EXCEPTION
        return Reply(kind, exception_code=code, detail=f"exception {code:02X}")
    if pdu[0] != function_code:
        return Reply(ReplyKind.GARBLED, detail=f"unexpected function code 0x{pdu[0]:02x}")
    if len(pdu) < 2 or pdu[1] != 2 * count or len(pdu) != 2 + 2 * count:
        got = pdu[1] if len(pdu) >= 2 else 0
        return Reply(ReplyKind.GARBLED, detail=f"byte count {got}, expected {2 * count}")
    words = struct.unpack(f">{count}H", pdu[2:])
    return Reply(ReplyKind.OK, registers=tuple(int(w) for w in words))


def classify_rtu_reply(raw: bytes, unit_id: int, count: int, function_code: int = FC_READ_HOLDING) -> Reply:
    """Classify everything received after one RTU request (Serial Line v1.02 §2.5.1 framing)."""
    if not raw:
        return Reply(ReplyKind.TIMEOUT, detail="no reply")
    n = rtu_reply_length(raw, function_code)
    if n is None:
        what = f"0x{raw[1]:02x}" if len(raw) >= 2 else "missing"
        return Reply(
            ReplyKind.GARBLED, detail=f"partial or unknown frame ({len(raw)} bytes, function {what})", raw=raw
        )
    if len(raw) < n:
        return Reply(ReplyKind.GARBLED, detail=f"partial frame ({len(raw)} of {n} bytes)", raw=raw)
    frame, extra = raw[:n], raw[n:]
    crc = frame[-2] | frame[-1] << 8
    if crc16_modbus(frame[:-2]) != crc:
        detail = "CRC mismatch"
        if extra:
            detail += f" and {len(extra)} more bytes"
        return Reply(ReplyKind.GARBLED, detail=detail, raw=raw)
    if frame[0] != unit_id:
        return Reply(ReplyKind.GARBLED, detail=f"reply carries unit id {frame[0]}", raw=raw)
    if extra:
        return Reply(
            ReplyKind.GARBLED,
            detail=f"{len(extra)} extra bytes after a valid reply (a second answer?)",
            raw=raw,
        )
    reply = classify_pdu(frame[1:-2], count, function_code)
    return Reply(reply.kind, reply.registers, reply.exception_code, reply.detail, raw)


def mbap_request(transaction_id: int, unit_id: int, pdu: bytes) -> bytes:
    """MBAP header + PDU (Modbus Messaging on TCP/IP v1.0b §3.1.3); protocol id 0 = Modbus."""
    return struct.pack(">HHHB", transaction_id & 0xFFFF, 0, len(pdu) + 1, unit_id) + pdu


# --- transports ---------------------------------------------------------------------------------------------


class ScanTransport(Protocol):
    """What the scanner needs from a bus: one FC03 read, classified, and what came in after its time."""

    @property
    def target(self) -> str: ...

    @property
    def late(self) -> list[tuple[int, Reply]]:
        """(unit id, LATE or GARBLED reply) for bytes that arrived after that unit's exchange had ended;
        the scanner drains it after every read."""
        ...

    async def read_registers(self, unit_id: int, start: int, count: int) -> Reply: ...


class RtuScanTransport:
    """FC03 over a raw serial line: `async with RtuScanTransport(port, baudrate=19200) as t:`.

    Per exchange: wait for t3.5 of silence (Serial Line v1.02 §2.5.1.1); keep any bytes that arrived since the
    last exchange as *late* for the unit asked last; send; wait for the reply the header announces (length
    framing — USB adapters deliver bytes in bursts, so inter-character timing cannot frame a reply); then listen
    `settle_s` longer for a second answer. No byte within `timeout_s` after the request has left is a timeout
    (a silent id costs request wire time + t3.5 + `timeout_s`); a reply that starts but never completes is
    collected for one more timeout and classified garbled.
    """

    def __init__(
        self,
        port: str,
        *,
        baudrate: int = 19200,
        parity: Parity = "N",
        stopbits: int = 1,
        bytesize: int = 8,
        timeout_s: float = 0.1,
        settle_s: float = 0.02,
    ) -> None:
        if timeout_s <= 0 or settle_s < 0:
            raise ValueError("timeout_s must be positive and settle_s not negative")
        self.port = port
        self.timeout_s = timeout_s
        self.settle_s = settle_s
        self._line = SerialLine(port, baudrate=baudrate, bytesize=bytesize, parity=parity, stopbits=stopbits)
        bits = 1 + bytesize + (0 if parity == "N" else 1) + stopbits
        self.gap_s = t35_s(baudrate, bits)
        self._late: list[tuple[int, Reply]] = []
        self._last: tuple[int, int] | None = None
        """(unit id, register count) of the previous exchange, to judge bytes that arrive after it."""

    @property
    def target(self) -> str:
        """The port path."""
        return self.port

    @property
    def late(self) -> list[tuple[int, Reply]]:
        """Late replies and stray bytes per unit, drained by the scanner."""
        return self._late

    async def __aenter__(self) -> Self:
        try:
            await self._line.__aenter__()
        except SerialLineError as exc:
            raise ScanError(self.port, exc.reason) from exc
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._line.aclose()

    async def read_registers(self, unit_id: int, start: int, count: int) -> Reply:
        """One FC03 exchange, classified."""
        line = self._line
        try:
            # A babbling line must not stall the scan: give up waiting for silence after one timeout.
            await line.wait_quiet(self.gap_s, self.timeout_s)
            stale = line.take()
            if stale and self._last is not None:
                self._late.append((self._last[0], _after_the_fact(classify_rtu_reply(stale, *self._last))))
            self._last = (unit_id, count)
            request = rtu_request(unit_id, start, count)
            line.write(request)
            # The timeout runs from the end of the request to the first byte of the reply; once a reply has
            # started, it gets its own wire time plus one more timeout to complete.
            wire_s = len(request) * line.char_time_s
            started = await line.wait_until(bool, wire_s + self.timeout_s)
            reply_s = (5 + 2 * count) * line.char_time_s + self.timeout_s
            if started and await line.wait_until(rtu_reply_complete, reply_s):
                got = len(line.buffered)
                await line.wait_until(lambda b: len(b) > got, self.settle_s)
                if len(line.buffered) > got:  # a second answer is coming in: let it finish
                    await line.wait_quiet(max(self.gap_s, self.settle_s), self.timeout_s)
            raw = line.take()
        except SerialLineError as exc:
            raise ScanError(self.port, exc.reason) from exc
        reply = classify_rtu_reply(raw, unit_id, count)
        other = _other_unit(raw, unit_id, count)
        if other is not None:
            # A clean frame from another unit: the late answer to an earlier request, not this one's reply.
            self._late.append((other, Reply(ReplyKind.LATE, detail="reply after its timeout", raw=raw)))
            return Reply(ReplyKind.TIMEOUT, detail=f"no reply (a late reply from unit {other} came instead)")
        return reply


def _after_the_fact(reply: Reply) -> Reply:
    """Bytes that arrived after an exchange had ended: a clean reply is LATE, anything else GARBLED."""
    if reply.kind in (ReplyKind.OK, ReplyKind.EXCEPTION):
        return Reply(ReplyKind.LATE, detail="reply after its timeout", raw=reply.raw)
    detail = f"{len(reply.raw)} stray bytes after its exchange ({reply.detail}; a second answer?)"
    return Reply(ReplyKind.GARBLED, detail=detail, raw=reply.raw)


def _other_unit(raw: bytes, unit_id: int, count: int) -> int | None:
    """The unit id of `raw` when it is exactly one clean frame from a different unit, else None."""
    if not raw or raw[0] == unit_id:
        return None
    if classify_rtu_reply(raw, raw[0], count).kind in (ReplyKind.OK, ReplyKind.EXCEPTION):
        return raw[0]
    n = rtu_reply_length(raw)
    if n is not None and len(raw) == n and crc16_modbus(raw[:-2]) == (raw[-2] | raw[-1] << 8):
        return raw[0]  # clean frame, just another register count: still someone else's reply
    return None


class TcpScanTransport:
    """FC03 over Modbus TCP (MBAP): `async with TcpScanTransport("10.0.0.5", 502) as t:`.

    Replies are matched by transaction id; a reply to an earlier, timed-out request is *late* for its unit. A
    connection the peer closes is reopened once per request; a second failure ends the scan (`ScanError`).
    """

    def __init__(self, host: str, port: int = 502, *, timeout_s: float = 0.3, connect_timeout_s: float = 3.0):
        if timeout_s <= 0 or connect_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._buf = bytearray()
        self._tid = 0
        self._pending: dict[int, int] = {}
        """Transaction id → unit id of requests that timed out (their replies may still come)."""
        self._late: list[tuple[int, Reply]] = []

    @property
    def target(self) -> str:
        """host:port."""
        return f"{self.host}:{self.port}"

    @property
    def late(self) -> list[tuple[int, Reply]]:
        """Late replies per unit, drained by the scanner."""
        return self._late

    async def _connect(self) -> None:
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        except TimeoutError:
            raise ScanError(self.target, f"no TCP connection within {self.connect_timeout_s:g} s") from None
        except OSError as exc:
            raise ScanError(self.target, f"cannot connect: {exc.strerror or exc}") from exc
        self._buf.clear()
        self._pending.clear()

    async def _close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def __aenter__(self) -> Self:
        await self._connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()

    def _next_frame(self) -> tuple[int, int, bytes] | None:
        """(transaction id, unit id, PDU) of the next complete MBAP frame in the buffer, or None."""
        if len(self._buf) < MBAP_HEADER_LEN:
            return None
        tid, _pid, length, unit = struct.unpack(">HHHB", self._buf[:MBAP_HEADER_LEN])
        if not 2 <= length <= MAX_MBAP_LENGTH:
            raise ProtocolError(f"MBAP length {length} out of range")
        total = 6 + length
        if len(self._buf) < total:
            return None
        pdu = bytes(self._buf[MBAP_HEADER_LEN:total])
        del self._buf[:total]
        return tid, unit, pdu

    async def read_registers(self, unit_id: int, start: int, count: int) -> Reply:
        """One FC03 exchange, classified; reconnects once if the peer had closed the connection."""
        for attempt in (1, 2):
            if self._writer is None:
                await self._connect()
            try:
                return await self._exchange(unit_id, start, count)
            except (ConnectionError, asyncio.IncompleteReadError, EOFError) as exc:
                await self._close()
                if attempt == 2:
                    raise ScanError(self.target, f"connection lost: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _exchange(self, unit_id: int, start: int, count: int) -> Reply:
        reader, writer = self._reader, self._writer
        assert reader is not None  # noqa: S101 - connected by the caller
        assert writer is not None  # noqa: S101
        self._tid = (self._tid + 1) & 0xFFFF
        tid = self._tid
        writer.write(mbap_request(tid, unit_id, read_request_pdu(start, count)))
        try:
            async with asyncio.timeout(self.timeout_s):
                await writer.drain()  # 12 bytes never fill a buffer unless the peer stopped reading
        except TimeoutError:
            raise ConnectionError("the peer stopped reading") from None
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        while True:
            try:
                frame = self._next_frame()
            except ProtocolError as exc:
                raw = bytes(self._buf)
                self._buf.clear()
                return Reply(ReplyKind.GARBLED, detail=str(exc), raw=raw)
            if frame is not None:
                got_tid, got_unit, pdu = frame
                if got_tid == tid:
                    if got_unit != unit_id:
                        return Reply(ReplyKind.GARBLED, detail=f"reply carries unit id {got_unit}", raw=pdu)
                    reply = classify_pdu(pdu, count)
                    return Reply(reply.kind, reply.registers, reply.exception_code, reply.detail, pdu)
                late_unit = self._pending.pop(got_tid, None)
                if late_unit is not None:
                    self._late.append(
                        (late_unit, Reply(ReplyKind.LATE, detail="reply after its timeout", raw=pdu))
                    )
                continue
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                self._pending[tid] = unit_id
                return Reply(ReplyKind.TIMEOUT, detail="no reply")
            data = b""
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    data = await reader.read(4096)
                    if not data:
                        raise EOFError("closed by the peer")
            self._buf += data


# --- profile guess ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProfileCheck:
    """How well one register map explains a device's registers."""

    profile: str
    readable: bool | None
    """False: a register the map names answered with an exception; None: no clean reply to judge by."""
    channels: int
    plausible: int
    all_zero: bool = False
    note: str = ""

    @property
    def share(self) -> float:
        """Fraction of channels whose words look like this map."""
        return self.plausible / self.channels if self.channels else 0.0

    @property
    def fits(self) -> bool:
        """Readable and at least `PLAUSIBLE_SHARE` of the channels plausible."""
        return bool(self.readable) and self.share >= PLAUSIBLE_SHARE


@dataclass(frozen=True, slots=True)
class ProfileGuess:
    """The verdict over every map tried: `profile` is None when no single map fits."""

    profile: str | None
    reason: str
    checks: tuple[ProfileCheck, ...] = ()
    weak: bool = False
    """The guess rests on registers that all read zero."""


def plausible_weight(raw: float, value_type: ValueType) -> bool:
    """Could this raw (unscaled) value be a weight in this encoding? See the module docstring."""
    if not math.isfinite(raw):
        return False
    if value_type is ValueType.FLOAT32:
        magnitude = abs(raw)
        return magnitude == 0.0 or FLOAT_MIN_NONZERO <= magnitude <= FLOAT_MAX
    if value_type in (ValueType.INT32, ValueType.UINT32):
        return abs(raw) <= INT_MAX_COUNTS
    return True  # a 16-bit word is a plausible count whatever it holds


def check_profile(register_map: RegisterMap, image: Mapping[int, int]) -> ProfileCheck:
    """Judge a register image (address → word, covering the map's registers) against one map."""
    wp, sp = register_map.weight, register_map.status
    defined = 0
    if sp is not None:
        for bit in (sp.stable_bit, sp.overload_bit, sp.fault_bit):
            if bit is not None:
                defined |= 1 << bit
    plausible = 0
    zeros = True
    bad_weight = bad_status = 0
    for ch in range(register_map.channels):
        start, width = register_map.weight_span(ch)
        words = [image[a] for a in range(start, start + width)]
        zeros = zeros and not any(words)
        ok = plausible_weight(decode_value(words, wp.value_type, wp.word_order), wp.value_type)
        if not ok:
            bad_weight += 1
        span = register_map.status_span(ch)
        if span is not None:
            word = image[span[0]]
            zeros = zeros and word == 0
            if word & ~defined:
                ok = False
                bad_status += 1
        plausible += ok
    notes = []
    if bad_weight:
        notes.append(f"{bad_weight} weights implausible as {wp.value_type.value} {wp.word_order.value}")
    if bad_status:
        notes.append(f"{bad_status} status words set undefined bits")
    if zeros:
        notes.append("every register reads 0")
    return ProfileCheck(
        register_map.name, True, register_map.channels, plausible, all_zero=zeros, note="; ".join(notes)
    )


def choose_profile(checks: Sequence[ProfileCheck]) -> ProfileGuess:
    """Pick the one map that fits (see the module docstring), or explain why none can be picked."""
    all_checks = tuple(checks)
    fits = [c for c in all_checks if c.fits]
    strong = [c for c in fits if not c.all_zero]

    def others(chosen: ProfileCheck | None) -> str:
        parts = [f"{c.profile}: {c.note or 'no clean reply'}" for c in all_checks if c is not chosen]
        return "; ".join(parts)

    def describe(c: ProfileCheck) -> str:
        text = f"{c.plausible}/{c.channels} channels plausible"
        rest = others(c)
        return f"{text}; {rest}" if rest else text

    if len(strong) == 1:
        return ProfileGuess(strong[0].profile, describe(strong[0]), all_checks)
    if len(strong) > 1:
        best = max(c.share for c in strong)
        top = [c for c in strong if c.share == best]
        if len(top) == 1:
            return ProfileGuess(top[0].profile, describe(top[0]), all_checks)
        names = ", ".join(c.profile for c in top)
        return ProfileGuess(None, f"fits several profiles equally: {names}", all_checks)
    if len(fits) == 1:
        reason = f"{describe(fits[0])} (every register reads 0: weak evidence)"
        return ProfileGuess(fits[0].profile, reason, all_checks, weak=True)
    if fits:
        names = ", ".join(c.profile for c in fits)
        return ProfileGuess(None, f"every register reads 0 in {names}: cannot tell", all_checks)
    if not all_checks:
        return ProfileGuess(None, "no profiles to compare with", all_checks)
    return ProfileGuess(None, f"no profile fits: {others(None)}", all_checks)


# --- the scan -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScanSettings:
    """What to scan and how patiently."""

    first_id: int = 1
    last_id: int = 247
    attempts: int = 3
    """Requests per id at most when replies come back garbled (1 = never ask twice)."""
    probe_address: int = 0
    probe_count: int = 1
    """The sweep's request: any reply, exception included, proves a device has the address."""
    guess_profiles: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.first_id <= self.last_id <= 247:
            raise ValueError(f"unit id range {self.first_id}..{self.last_id} is not within 1..247")
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if not 1 <= self.probe_count <= 125 or not 0 <= self.probe_address <= 0xFFFF:
            raise ValueError("probe register range is not a valid FC03 read")

    @property
    def unit_ids(self) -> range:
        """The ids swept, in order."""
        return range(self.first_id, self.last_id + 1)


class UnitStatus(StrEnum):
    """The verdict on one id that answered at all."""

    OK = "ok"
    SLOW = "slow"
    """Answers, but only after the timeout: rescan with a longer one."""
    CONFLICT = "conflict"
    GARBLED = "garbled"


@dataclass(frozen=True, slots=True)
class UnitFinding:
    """One id that answered (cleanly or not)."""

    unit_id: int
    status: UnitStatus
    replies: Mapping[str, int]
    """Replies by `ReplyKind` value over every request to this id (sweep, retries, profile reads)."""
    exception_code: int | None = None
    """The sweep request's exception code, when the probe register does not exist on the device."""
    guess: ProfileGuess | None = None
    note: str = ""
    garbled_details: tuple[str, ...] = ()


@dataclass(slots=True)
class BusScanResult:
    """The outcome of one bus scan."""

    target: str
    first_id: int
    last_id: int
    findings: list[UnitFinding] = field(default_factory=list)
    requests: int = 0
    duration_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    answers_every_id: bool = False
    """Nearly every id answered cleanly: one device ignoring the unit id (see `EVERY_ID_SHARE`)."""

    @property
    def responders(self) -> list[UnitFinding]:
        """Ids whose replies were usable (status OK)."""
        return [f for f in self.findings if f.status is UnitStatus.OK]

    @property
    def conflicts(self) -> list[int]:
        """Ids two devices seem to share."""
        return [f.unit_id for f in self.findings if f.status is UnitStatus.CONFLICT]


Progress = Callable[[int, int, int], None]
"""Called after each id of the sweep with (ids done, ids total, ids that answered so far)."""


_HEARD: Final = frozenset({ReplyKind.OK, ReplyKind.EXCEPTION, ReplyKind.LATE, ReplyKind.GARBLED})
"""Reply kinds that prove something is on the line at that address."""


def _garbled_count(history: Sequence[Reply]) -> int:
    return sum(r.kind is ReplyKind.GARBLED for r in history)


def repeatedly_garbled(history: Sequence[Reply]) -> bool:
    """At least two replies, and at least half of them, garbled."""
    g = _garbled_count(history)
    return g >= 2 and 2 * g >= len(history)


def analyse_conflicts(histories: Mapping[int, Sequence[Reply]]) -> dict[int, tuple[UnitStatus, str]]:
    """Verdict and explanation for every id whose history has a garbled reply (rule in the module docstring).

    `histories` holds every scanned id, silent ones included (their timeouts are what makes them clean).
    """
    scanned = sorted(histories)
    out: dict[int, tuple[UnitStatus, str]] = {}
    for i, uid in enumerate(scanned):
        history = histories[uid]
        g = _garbled_count(history)
        if not g:
            continue
        if not repeatedly_garbled(history):
            out[uid] = (UnitStatus.OK, f"{g} garbled reply of {len(history)} (a glitch, not repeated)")
            continue
        neighbours = (
            scanned[max(0, i - NEIGHBOURS_EACH_SIDE) : i] + scanned[i + 1 : i + 1 + NEIGHBOURS_EACH_SIDE]
        )
        noisy = [n for n in neighbours if _garbled_count(histories[n])]
        ratio = f"{g} of {len(history)} replies garbled"
        if not neighbours:
            out[uid] = (
                UnitStatus.GARBLED,
                f"{ratio}, and no neighbouring id scanned to compare with: an address conflict or a line problem",
            )
        elif not noisy:
            ids = ", ".join(map(str, neighbours))
            out[uid] = (
                UnitStatus.CONFLICT,
                f"ADDRESS CONFLICT: {ratio} while ids {ids} are clean — two devices answer id {uid} "
                "(or one device garbles every reply); give one of them a free address, or unplug one to check",
            )
        else:
            ids = ", ".join(map(str, noisy))
            out[uid] = (
                UnitStatus.GARBLED,
                f"{ratio}, and ids {ids} next to it are garbled too: line noise, wrong baud rate/parity or "
                "termination — or several conflicts side by side; fix the line, then rescan",
            )
    return out


class _Recorder:
    """Every reply per id, including the late ones the transport reports."""

    def __init__(self, transport: ScanTransport) -> None:
        self.transport = transport
        self.histories: dict[int, list[Reply]] = {}
        self.requests = 0

    async def read(self, unit_id: int, start: int, count: int) -> Reply:
        reply = await self.transport.read_registers(unit_id, start, count)
        self.requests += 1
        self.histories.setdefault(unit_id, []).append(reply)
        late = self.transport.late
        while late:
            late_unit, late_reply = late.pop(0)
            self.histories.setdefault(late_unit, []).append(late_reply)
        return reply


async def _guess(
    recorder: _Recorder, unit_id: int, profiles: Sequence[RegisterMap], attempts: int
) -> ProfileGuess:
    checks: list[ProfileCheck] = []
    for rmap in profiles:
        plan = plan_poll(rmap, range(rmap.channels))
        image: dict[int, int] = {}
        readable: bool | None = True
        note = ""
        for block in plan.blocks:
            reply = await recorder.read(unit_id, block.start, block.count)
            tries = 1
            # Ask again after a garbled reply: a glitch must not cost the guess, and a conflict shows up as
            # the same read garbled again and again.
            while reply.kind is ReplyKind.GARBLED and tries < attempts:
                reply = await recorder.read(unit_id, block.start, block.count)
                tries += 1
            if reply.kind is ReplyKind.OK:
                image.update(zip(range(block.start, block.end), reply.registers, strict=True))
                continue
            if reply.kind is ReplyKind.EXCEPTION:
                readable = False
                note = f"registers {block.start}..{block.end - 1} not readable ({reply.detail})"
            else:
                readable = None
                note = f"registers {block.start}..{block.end - 1}: {reply.kind.value} ({reply.detail})"
            break
        if readable:
            checks.append(check_profile(rmap, image))
        else:
            checks.append(ProfileCheck(rmap.name, readable, rmap.channels, 0, note=note))
    return choose_profile(checks)


async def scan_bus(
    transport: ScanTransport,
    settings: ScanSettings | None = None,
    profiles: Sequence[RegisterMap] = (),
    *,
    progress: Progress | None = None,
) -> BusScanResult:
    """Sweep the id range, re-ask garbled ids, guess each responder's profile, and judge conflicts.

    Raises `ScanError` when the bus itself fails (port lost, connection gone twice in a row).
    """
    s = settings or ScanSettings()
    started = time.monotonic()
    rec = _Recorder(transport)
    answered = 0
    total = len(s.unit_ids)
    for done, uid in enumerate(s.unit_ids, start=1):
        reply = await rec.read(uid, s.probe_address, s.probe_count)
        tries = 1
        while reply.kind is ReplyKind.GARBLED and tries < s.attempts:
            reply = await rec.read(uid, s.probe_address, s.probe_count)
            tries += 1
        if any(r.kind in _HEARD for r in rec.histories[uid]):
            answered += 1
        if progress is not None:
            progress(done, total, answered)

    def responding(uid: int) -> bool:
        return any(r.kind in (ReplyKind.OK, ReplyKind.EXCEPTION) for r in rec.histories[uid])

    guesses: dict[int, ProfileGuess] = {}
    if s.guess_profiles and profiles:
        for uid in s.unit_ids:
            if responding(uid) and not repeatedly_garbled(rec.histories[uid]):
                guesses[uid] = await _guess(rec, uid, profiles, s.attempts)

    # Late bytes can land on any id, even outside the range (e.g. after the last request): judge them all.
    scanned = {uid: rec.histories.get(uid, []) for uid in s.unit_ids}
    for uid, history in rec.histories.items():
        scanned.setdefault(uid, history)
    verdicts = analyse_conflicts(scanned)
    result = BusScanResult(transport.target, s.first_id, s.last_id, requests=rec.requests)
    for uid in sorted(scanned):
        history = scanned[uid]
        kinds = [r.kind for r in history]
        if not any(k in _HEARD for k in kinds):
            continue
        status, note = verdicts.get(uid, (UnitStatus.OK, ""))
        late = kinds.count(ReplyKind.LATE)
        if status is UnitStatus.OK and not responding(uid):
            if late:
                status = UnitStatus.SLOW
                note = "answers only after the timeout: rescan with a longer --timeout"
            else:
                status = (
                    UnitStatus.GARBLED
                )  # a single garbled reply and nothing clean: not a usable responder
                note = note or "garbled reply only"
        elif status is UnitStatus.OK and late:
            note = "; ".join(
                x for x in (note, f"{late} replies came after the timeout (a longer one helps)") if x
            )
        counts = {k.value: 0 for k in ReplyKind}
        for k in kinds:
            counts[k.value] += 1
        first = history[0]
        result.findings.append(
            UnitFinding(
                unit_id=uid,
                status=status,
                replies=counts,
                exception_code=first.exception_code if first.kind is ReplyKind.EXCEPTION else None,
                guess=guesses.get(uid) if status is UnitStatus.OK else None,
                note=note,
                garbled_details=tuple(r.detail for r in history if r.kind is ReplyKind.GARBLED),
            )
        )
    clean = sum(1 for f in result.findings if f.status is UnitStatus.OK and f.unit_id in s.unit_ids)
    if total >= 8 and clean >= EVERY_ID_SHARE * total:
        result.answers_every_id = True
        result.notes.append(
            f"{clean} of {total} ids answer: most likely one device that ignores the unit id (common on "
            "Modbus TCP devices); configure it once, at the lowest id"
        )
    if any(r.kind is ReplyKind.GATEWAY for h in scanned.values() for r in h):
        result.notes.append("the TCP gateway reported ids with no device behind it (exception 0A/0B)")
    result.duration_s = time.monotonic() - started
    return result
