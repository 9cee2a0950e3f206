"""A simulated LLRP fixed RFID reader: the *device* side of LLRP 1.0.1 over TCP on 127.0.0.1.

Written from the LLRP 1.0.1 standard (EPCglobal, 2007; "§" below) with `struct`, independently of sllurp — the
gateway's LLRP client uses sllurp (GPLv3, an optional extra), and a simulator built on the same library would
share its bugs instead of catching them. Tests and the demo run the client against this reader::

    async with LlrpReaderSim(antennas=4, tags=[LlrpSimTag(epc, antenna=2)]) as reader:
        ... LlrpReaderClient("127.0.0.1", "dock-1", port=reader.port, antennas=[1, 2]) ...

Binary encoding (§16; every integer big-endian)::

    message   | rsvd 3 | ver 3 | type 10 | length 32 (whole message) | message id 32 | body ...   §16.1
    TLV param | rsvd 6 | type 10 | length 16 (whole parameter) | value, sub-parameters ...      §16.2
    TV param  | 1 | type 7 | value (fixed length per type: EPC-96 12 B, AntennaID 2 B, PeakRSSI 1 B) §16.2

What this reader does, message by message (the exchange a client such as sllurp walks through):

- on accept: READER_EVENT_NOTIFICATION (§13.1.5/§16.1.33) with UTCTimestamp and ConnectionAttemptEvent
  (§13.2.6.11) status Success; a second client while one is connected gets status "a client initiated
  connection already exists" (2) and is closed;
- GET_READER_CAPABILITIES (§9.1.1) → RESPONSE (§9.1.2) with LLRPStatus, GeneralDeviceCapabilities,
  LLRPCapabilities, RegulatoryCapabilities (UHFBandCapabilities: transmit power table, a fixed frequency table,
  one C1G2 RF mode) and C1G2LLRPCapabilities, honouring RequestedData;
- GET_READER_CONFIG (§12.1.1) → RESPONSE with LLRPStatus only (a simplification: no current configuration);
- SET_READER_CONFIG (§12.1.3) → RESPONSE; a KeepaliveSpec (§12.2.4, periodic) starts KEEPALIVE (§13.1.3)
  messages at that interval, which the client must answer with KEEPALIVE_ACK (§13.1.4);
- ADD / ENABLE / START / STOP / DISABLE / DELETE_ROSPEC (§10.1) → RESPONSEs with LLRPStatus; the ROSpec
  states follow §10.2.1 (Disabled → Inactive on enable → Active on START_ROSPEC or an Immediate start trigger);
- DELETE_ACCESSSPEC (§11.1.3) → RESPONSE (this reader has no AccessSpecs; ID 0 means all);
- CLOSE_CONNECTION (§12.1.5) → RESPONSE, then the reader closes the connection;
- ENABLE_EVENTS_AND_REPORTS (§13.1.6) has no response; an unknown message type gets ERROR_MESSAGE (§14.1.1)
  with M_UnsupportedMessage, a version other than 1 M_UnsupportedVersion.

While a ROSpec is Active the reader runs an inventory round every `round_s` on the ROSpec's antennas: each tag
in the field of one of them is read with its own probability, and the round's reads go out in one
RO_ACCESS_REPORT (§13.1.2) — `N` TagReportData per report when the ROReportSpec asks for N > 0 — carrying
the fields its TagReportContentSelector (§13.2.1.1) enables: EPC-96 (or EPCData for other lengths),
ROSpecID, AntennaID, PeakRSSI, ChannelIndex, First/LastSeenTimestampUTC, TagSeenCount, and C1G2 PC/CRC when
the C1G2EPCMemorySelector (§15.2.1.5.1) asks for them. A round without reads sends nothing.

Faults: `silent` (the reader hangs: no replies, no reports, no keepalives), `malformed_report_next(n)` (the
next n reports carry a TagReportData whose EPC is cut short), `undecodable_report_next(n)` (a report whose
TagReportData length is impossible), `inject(data)` (raw bytes to the client now),
`stop()` (the reader is killed: listener and connections closed) and `start()` (back on the same port).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import struct
import time
from collections.abc import Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Self

from drivers.rfid.protocol import crc16_genibus

_log = logging.getLogger(__name__)

LLRP_PORT: Final = 5084
"""IANA-registered LLRP port (§3 / §18.2)."""

LLRP_VERSION: Final = 1
"""LLRP 1.0.1 is protocol version 1 (§16.1)."""

HEADER: Final = struct.Struct("!HII")
"""Message header (§16.1): rsvd(3) ver(3) type(10) · length(32) · message id(32)."""

TLV_HEADER: Final = struct.Struct("!HH")
"""TLV parameter header (§16.2): rsvd(6) type(10) · length(16), length counting the header."""

MAX_MESSAGE_BYTES: Final = 1 << 20
"""Longest message this reader accepts; a longer length field is a broken stream, not a big message."""


class MessageType(enum.IntEnum):
    """LLRP 1.0.1 message type numbers (§16.1.1 … §16.1.41)."""

    GET_READER_CAPABILITIES = 1
    GET_READER_CONFIG = 2
    SET_READER_CONFIG = 3
    CLOSE_CONNECTION_RESPONSE = 4
    GET_READER_CAPABILITIES_RESPONSE = 11
    GET_READER_CONFIG_RESPONSE = 12
    SET_READER_CONFIG_RESPONSE = 13
    CLOSE_CONNECTION = 14
    ADD_ROSPEC = 20
    DELETE_ROSPEC = 21
    START_ROSPEC = 22
    STOP_ROSPEC = 23
    ENABLE_ROSPEC = 24
    DISABLE_ROSPEC = 25
    ADD_ROSPEC_RESPONSE = 30
    DELETE_ROSPEC_RESPONSE = 31
    START_ROSPEC_RESPONSE = 32
    STOP_ROSPEC_RESPONSE = 33
    ENABLE_ROSPEC_RESPONSE = 34
    DISABLE_ROSPEC_RESPONSE = 35
    DELETE_ACCESSSPEC = 41
    DELETE_ACCESSSPEC_RESPONSE = 51
    GET_REPORT = 60
    RO_ACCESS_REPORT = 61
    KEEPALIVE = 62
    READER_EVENT_NOTIFICATION = 63
    ENABLE_EVENTS_AND_REPORTS = 64
    KEEPALIVE_ACK = 72
    ERROR_MESSAGE = 100


class Param(enum.IntEnum):
    """LLRP 1.0.1 parameter type numbers used here (TV types < 128, TLV types >= 128; §16.2)."""

    # TV-encoded (§16.2.7.3.x, §16.3.1.3.x)
    ANTENNA_ID = 1
    FIRST_SEEN_UTC = 2
    LAST_SEEN_UTC = 4
    PEAK_RSSI = 6
    CHANNEL_INDEX = 7
    TAG_SEEN_COUNT = 8
    ROSPEC_ID = 9
    C1G2_CRC = 11
    C1G2_PC = 12
    EPC_96 = 13
    # TLV-encoded
    UTC_TIMESTAMP = 128
    GENERAL_DEVICE_CAPABILITIES = 137
    RECEIVE_SENSITIVITY_TABLE_ENTRY = 139
    PER_ANTENNA_AIR_PROTOCOL = 140
    GPIO_CAPABILITIES = 141
    LLRP_CAPABILITIES = 142
    REGULATORY_CAPABILITIES = 143
    UHF_BAND_CAPABILITIES = 144
    TRANSMIT_POWER_LEVEL_TABLE_ENTRY = 145
    FREQUENCY_INFORMATION = 146
    FIXED_FREQUENCY_TABLE = 148
    ROSPEC = 177
    RO_BOUNDARY_SPEC = 178
    ROSPEC_START_TRIGGER = 179
    AI_SPEC = 183
    KEEPALIVE_SPEC = 220
    RO_REPORT_SPEC = 237
    TAG_REPORT_CONTENT_SELECTOR = 238
    TAG_REPORT_DATA = 240
    EPC_DATA = 241
    READER_EVENT_NOTIFICATION_DATA = 246
    CONNECTION_ATTEMPT_EVENT = 256
    LLRP_STATUS = 287
    C1G2_LLRP_CAPABILITIES = 327
    UHF_C1G2_RF_MODE_TABLE = 328
    UHF_C1G2_RF_MODE_TABLE_ENTRY = 329
    C1G2_EPC_MEMORY_SELECTOR = 348


TV_VALUE_BYTES: Final[dict[int, int]] = {
    1: 2,  # AntennaID
    2: 8,  # FirstSeenTimestampUTC (µs)
    3: 8,  # FirstSeenTimestampUptime
    4: 8,  # LastSeenTimestampUTC
    5: 8,  # LastSeenTimestampUptime
    6: 1,  # PeakRSSI (signed dBm)
    7: 2,  # ChannelIndex
    8: 2,  # TagSeenCount
    9: 4,  # ROSpecID
    10: 2,  # InventoryParameterSpecID
    11: 2,  # C1G2_CRC
    12: 2,  # C1G2_PC
    13: 12,  # EPC-96
    14: 2,  # SpecIndex
    15: 2,  # ClientRequestOpSpecResult
    16: 4,  # AccessSpecID
    17: 2,  # OpSpecID
    18: 4,  # C1G2SingulationDetails
}
"""Value length of every TV parameter of LLRP 1.0.1 (§16.2.7.3, §16.3.1.3): TV parameters carry no length."""


class Status(enum.IntEnum):
    """LLRPStatus codes used here (§14.2.1)."""

    SUCCESS = 0
    FIELD_ERROR = 101
    UNSUPPORTED_MESSAGE = 109
    UNSUPPORTED_VERSION = 110
    A_INVALID = 300


class ConnectionAttempt(enum.IntEnum):
    """ConnectionAttemptEvent status (§13.2.6.11)."""

    SUCCESS = 0
    READER_CONNECTION_EXISTS = 1
    CLIENT_CONNECTION_EXISTS = 2
    OTHER_FAILURE = 3
    ANOTHER_CONNECTION_ATTEMPTED = 4


class LlrpCodecError(ValueError):
    """Bytes that cannot be an LLRP message or parameter (§16)."""


# --- encoding ------------------------------------------------------------------------------------------------


def encode_message(msg_type: int, msg_id: int, body: bytes = b"", *, version: int = LLRP_VERSION) -> bytes:
    """One message: header (§16.1) + body; the length field counts the header's 10 bytes."""
    if not 0 <= msg_type < 1 << 10 or not 0 <= version < 1 << 3 or not 0 <= msg_id < 1 << 32:
        raise LlrpCodecError("message type, version or id out of range")
    return HEADER.pack(version << 10 | msg_type, HEADER.size + len(body), msg_id) + body


def tlv(param_type: int, *parts: bytes) -> bytes:
    """A TLV parameter (§16.2): type in the low 10 bits, length counting the 4-byte header."""
    if not 128 <= param_type < 1 << 10:
        raise LlrpCodecError(f"TLV parameter type {param_type} outside 128..1023")
    body = b"".join(parts)
    return TLV_HEADER.pack(param_type, TLV_HEADER.size + len(body)) + body


def tv(param_type: int, value: bytes) -> bytes:
    """A TV parameter (§16.2): one byte 1|type(7), then a value of the type's fixed length."""
    if TV_VALUE_BYTES.get(param_type) != len(value):
        raise LlrpCodecError(f"TV parameter {param_type} takes {TV_VALUE_BYTES.get(param_type)} bytes")
    return bytes((0x80 | param_type,)) + value


def llrp_status(code: int = Status.SUCCESS, description: str = "") -> bytes:
    """LLRPStatus (§14.2.2): StatusCode u16, ErrorDescription as UTF-8 with a u16 byte count."""
    text = description.encode("utf-8")
    return tlv(Param.LLRP_STATUS, struct.pack("!HH", code, len(text)), text)


def reader_event_connection(msg_id: int, utc_us: int, status: int = ConnectionAttempt.SUCCESS) -> bytes:
    """READER_EVENT_NOTIFICATION with a UTCTimestamp and a ConnectionAttemptEvent (§13.1.5, §13.2.6)."""
    data = tlv(
        Param.READER_EVENT_NOTIFICATION_DATA,
        tlv(Param.UTC_TIMESTAMP, struct.pack("!Q", utc_us)),
        tlv(Param.CONNECTION_ATTEMPT_EVENT, struct.pack("!H", status)),
    )
    return encode_message(MessageType.READER_EVENT_NOTIFICATION, msg_id, data)


@dataclass(frozen=True, slots=True)
class ContentSelector:
    """What each TagReportData carries (TagReportContentSelector §13.2.1.1 + C1G2EPCMemorySelector)."""

    rospec_id: bool = False
    antenna_id: bool = True
    channel_index: bool = False
    peak_rssi: bool = True
    first_seen: bool = True
    last_seen: bool = False
    tag_seen_count: bool = False
    crc: bool = False
    pc_bits: bool = False

    @classmethod
    def from_flags(cls, flags: int, memory_flags: int = 0) -> ContentSelector:
        """From the selector's 16 flag bits (MSB first: ROSpecID, SpecIndex, InventoryParameterSpecID,
        AntennaID, ChannelIndex, PeakRSSI, FirstSeenTimestamp, LastSeenTimestamp, TagSeenCount, AccessSpecID)
        and the C1G2EPCMemorySelector byte (EnableCRC, EnablePCBits)."""
        return cls(
            rospec_id=bool(flags & 1 << 15),
            antenna_id=bool(flags & 1 << 12),
            channel_index=bool(flags & 1 << 11),
            peak_rssi=bool(flags & 1 << 10),
            first_seen=bool(flags & 1 << 9),
            last_seen=bool(flags & 1 << 8),
            tag_seen_count=bool(flags & 1 << 7),
            crc=bool(memory_flags & 0x80),
            pc_bits=bool(memory_flags & 0x40),
        )


@dataclass(frozen=True, slots=True)
class TagObservation:
    """One tag as a reader reports it in a TagReportData."""

    epc: str
    antenna: int
    rssi_dbm: int
    first_seen_us: int
    last_seen_us: int | None = None
    seen_count: int = 1
    rospec_id: int = 1
    channel_index: int = 1


def tag_report_data(obs: TagObservation, selector: ContentSelector, *, truncate_epc: bool = False) -> bytes:
    """One TagReportData (§13.2.3, §16.2.7.3), sub-parameters in the order §16.2.7.3 lists them."""
    epc = bytes.fromhex(obs.epc)
    if truncate_epc:
        # A reader bug / a torn buffer: an EPCData that claims 96 bits but carries 5 bytes.
        parts = [tlv(Param.EPC_DATA, struct.pack("!H", 96), epc[:5])]
    elif len(epc) == 12:
        parts = [tv(Param.EPC_96, epc)]
    else:
        parts = [tlv(Param.EPC_DATA, struct.pack("!H", len(epc) * 8), epc)]
    if selector.rospec_id:
        parts.append(tv(Param.ROSPEC_ID, struct.pack("!I", obs.rospec_id)))
    if selector.antenna_id:
        parts.append(tv(Param.ANTENNA_ID, struct.pack("!H", obs.antenna)))
    if selector.peak_rssi:
        parts.append(tv(Param.PEAK_RSSI, struct.pack("!b", obs.rssi_dbm)))
    if selector.channel_index:
        parts.append(tv(Param.CHANNEL_INDEX, struct.pack("!H", obs.channel_index)))
    if selector.first_seen:
        parts.append(tv(Param.FIRST_SEEN_UTC, struct.pack("!Q", obs.first_seen_us)))
    if selector.last_seen:
        last = obs.first_seen_us if obs.last_seen_us is None else obs.last_seen_us
        parts.append(tv(Param.LAST_SEEN_UTC, struct.pack("!Q", last)))
    if selector.tag_seen_count:
        parts.append(tv(Param.TAG_SEEN_COUNT, struct.pack("!H", min(obs.seen_count, 0xFFFF))))
    pc = (len(epc) // 2) << 11  # Gen2 §6.3.2.1.2.2: PC bits 15-11 = EPC length in words
    if selector.pc_bits:
        parts.append(tv(Param.C1G2_PC, struct.pack("!H", pc)))
    if selector.crc:
        parts.append(tv(Param.C1G2_CRC, struct.pack("!H", crc16_genibus(pc.to_bytes(2, "big") + epc))))
    return tlv(Param.TAG_REPORT_DATA, *parts)


def ro_access_report(msg_id: int, tag_data: Iterable[bytes]) -> bytes:
    """RO_ACCESS_REPORT (§13.1.2, §16.1.30) from encoded TagReportData parameters."""
    return encode_message(MessageType.RO_ACCESS_REPORT, msg_id, b"".join(tag_data))


# --- decoding (the reader's side: client messages) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """One decoded message header and its raw body."""

    version: int
    msg_type: int
    msg_id: int
    body: bytes


def decode_header(data: bytes) -> tuple[int, int, int, int]:
    """(version, type, length, message id) of the 10-byte header at the start of `data` (§16.1)."""
    if len(data) < HEADER.size:
        raise LlrpCodecError(f"an LLRP header is {HEADER.size} bytes, got {len(data)}")
    word, length, msg_id = HEADER.unpack_from(data)
    if word >> 13:
        raise LlrpCodecError("reserved header bits set")
    if length < HEADER.size or length > MAX_MESSAGE_BYTES:
        raise LlrpCodecError(f"message length {length} outside {HEADER.size}..{MAX_MESSAGE_BYTES}")
    return (word >> 10) & 0x7, word & 0x3FF, length, msg_id


class MessageFramer:
    """Cuts a TCP byte stream into messages by their length field.

    LLRP has no sync marker (§16.1), so a bad header means the stream is lost: `next_message` raises
    `LlrpCodecError` and the connection has to be closed.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        self._buffer += data

    def next_message(self) -> Message | None:
        """The next complete message, or None until more bytes arrive."""
        if len(self._buffer) < HEADER.size:
            return None
        version, msg_type, length, msg_id = decode_header(bytes(self._buffer[: HEADER.size]))
        if len(self._buffer) < length:
            return None
        body = bytes(self._buffer[HEADER.size : length])
        del self._buffer[:length]
        return Message(version, msg_type, msg_id, body)


def iter_params(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, value) of each TLV or TV parameter in `data`, in order (§16.2); bad lengths raise."""
    pos = 0
    while pos < len(data):
        first = data[pos]
        if first & 0x80:
            ptype = first & 0x7F
            size = TV_VALUE_BYTES.get(ptype)
            if size is None:
                raise LlrpCodecError(f"unknown TV parameter type {ptype}")
            if pos + 1 + size > len(data):
                raise LlrpCodecError(f"TV parameter {ptype} cut short")
            yield ptype, data[pos + 1 : pos + 1 + size]
            pos += 1 + size
            continue
        if pos + TLV_HEADER.size > len(data):
            raise LlrpCodecError("TLV header cut short")
        word, length = TLV_HEADER.unpack_from(data, pos)
        if length < TLV_HEADER.size or pos + length > len(data):
            raise LlrpCodecError(f"TLV parameter {word & 0x3FF} claims {length} bytes")
        yield word & 0x3FF, data[pos + TLV_HEADER.size : pos + length]
        pos += length


def find_param(data: bytes, param_type: int) -> bytes | None:
    """The value of the first parameter of `param_type` in `data`, or None."""
    for ptype, value in iter_params(data):
        if ptype == param_type:
            return value
    return None


@dataclass(slots=True)
class RoSpec:
    """What this reader keeps of an added ROSpec (§10.2.1)."""

    rospec_id: int
    antennas: tuple[int, ...]
    immediate_start: bool
    report_n: int
    selector: ContentSelector
    state: str = "disabled"
    """disabled → inactive (ENABLE_ROSPEC) → active (START_ROSPEC or an Immediate start trigger)."""


def parse_rospec(value: bytes) -> RoSpec:
    """The fields this reader honours from a ROSpec parameter's value (§16.2.4.1)."""
    if len(value) < 6:
        raise LlrpCodecError("ROSpec too short")
    rospec_id, _priority, current_state = struct.unpack_from("!IBB", value)
    if rospec_id == 0:
        raise LlrpCodecError("ROSpecID 0 is reserved")
    if current_state != 0:
        raise LlrpCodecError("a ROSpec must be added in the Disabled state")
    antennas: list[int] = []
    immediate = False
    report_n = 0
    selector = ContentSelector()
    for ptype, sub in iter_params(value[6:]):
        if ptype == Param.RO_BOUNDARY_SPEC:
            trigger = find_param(sub, Param.ROSPEC_START_TRIGGER)
            immediate = trigger is not None and len(trigger) >= 1 and trigger[0] == 1
        elif ptype == Param.AI_SPEC:
            (count,) = struct.unpack_from("!H", sub)
            antennas.extend(struct.unpack_from(f"!{count}H", sub, 2))
        elif ptype == Param.RO_REPORT_SPEC:
            _trigger, report_n = struct.unpack_from("!BH", sub)
            content = find_param(sub[3:], Param.TAG_REPORT_CONTENT_SELECTOR)
            if content is not None:
                (flags,) = struct.unpack_from("!H", content)
                memory = find_param(content[2:], Param.C1G2_EPC_MEMORY_SELECTOR)
                selector = ContentSelector.from_flags(flags, memory[0] if memory else 0)
    if not antennas:
        raise LlrpCodecError("ROSpec without an AISpec")
    return RoSpec(rospec_id, tuple(antennas), immediate, report_n, selector)


# --- the reader ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class LlrpSimTag:
    """One tag in the field of one antenna."""

    epc: str
    antenna: int = 1
    rssi_dbm: int = -55
    read_probability: float | None = None
    """Chance a round reads this tag; None = the reader's default."""
    seen_count: int = 0


@dataclass(slots=True)
class _Session:
    writer: asyncio.StreamWriter
    rospecs: dict[int, RoSpec] = field(default_factory=dict)
    keepalive_s: float = 0.0
    next_msg_id: int = 1
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    keepalive_task: asyncio.Task[None] | None = None
    inventory_task: asyncio.Task[None] | None = None


class LlrpReaderSim:
    """`async with LlrpReaderSim(antennas=2, tags=[...]) as reader:` — listens on 127.0.0.1:`reader.port`."""

    def __init__(
        self,
        *,
        port: int = 0,
        antennas: int = 4,
        tags: Iterable[LlrpSimTag] = (),
        read_probability: float = 0.65,
        round_s: float = 0.05,
        rssi_jitter_db: int = 3,
        seed: int = 0,
    ) -> None:
        if not 0 <= read_probability <= 1:
            raise ValueError("read_probability must be in [0, 1]")
        if round_s <= 0:
            raise ValueError("round_s must be > 0")
        if not 1 <= antennas <= 0xFFFF:
            raise ValueError("antennas must be in 1..65535")
        self.host = "127.0.0.1"
        self.port = port
        self.antennas = antennas
        self.read_probability = read_probability
        self.round_s = round_s
        self.rssi_jitter_db = rssi_jitter_db
        self.tags: dict[str, LlrpSimTag] = {}
        for tag in tags:
            self.add(tag)
        self.silent = False
        """The reader hangs: it neither answers nor reports nor sends keepalives."""
        self.messages_seen: list[str] = []
        """Names (or numbers) of every client message, in order."""
        self.connections = 0
        self.reports_sent = 0
        self.keepalive_acks = 0
        self._rng = random.Random(seed)
        self._malformed_reports = 0
        self._undecodable_reports = 0
        self._server: asyncio.Server | None = None
        self._session: _Session | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    # --- population and faults -----------------------------------------------------------------------------

    def add(self, tag: LlrpSimTag) -> None:
        """Put a tag into an antenna's field."""
        tag.epc = tag.epc.upper()
        self.tags[tag.epc] = tag

    def remove(self, epc: str) -> None:
        """Take a tag out of the field."""
        self.tags.pop(epc.upper(), None)

    def malformed_report_next(self, reports: int = 1) -> None:
        """The next `reports` RO_ACCESS_REPORTs carry one TagReportData with a truncated EPC first."""
        self._malformed_reports += reports

    def undecodable_report_next(self, reports: int = 1) -> None:
        """The next `reports` rounds also send an RO_ACCESS_REPORT whose TagReportData header claims 2 bytes
        (less than its own 4-byte header): well framed, but no decoder can make sense of it."""
        self._undecodable_reports += reports

    def inject(self, data: bytes) -> None:
        """Write raw bytes to the connected client now (line noise on a TCP stream breaks its framing)."""
        if self._session is not None:
            self._session.writer.write(data)

    @property
    def client_connected(self) -> bool:
        """True while a client holds the connection."""
        return self._session is not None

    @property
    def inventory_running(self) -> bool:
        """True while an active ROSpec runs inventory rounds."""
        s = self._session
        return s is not None and any(r.state == "active" for r in s.rospecs.values())

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Listen (again) — on the same port after a `stop()`, so a client can reconnect."""
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Kill the reader: stop listening, drop the connection, end every task."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        if handlers:
            await asyncio.wait(handlers)
        if server is not None:
            await server.wait_closed()

    # --- connection ----------------------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # noqa: S101 - start_server runs us in a task
        task.set_name(f"llrp_sim[{self.port}].connection")
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self._handlers.discard(task)
            with contextlib.suppress(OSError):
                writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        utc_us = time.time_ns() // 1000
        if self._session is not None:
            writer.write(reader_event_connection(0, utc_us, ConnectionAttempt.CLIENT_CONNECTION_EXISTS))
            with contextlib.suppress(OSError):
                await writer.drain()
            return
        session = _Session(writer)
        self._session = session
        try:
            self._send(session, reader_event_connection(0, utc_us))
            framer = MessageFramer()
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                framer.feed(data)
                while (msg := framer.next_message()) is not None:
                    if not self._on_message(session, msg):
                        await writer.drain()
                        return
        except (LlrpCodecError, ConnectionError) as exc:
            _log.info("llrp sim: closing the connection: %s", exc)
        finally:
            self._session = None
            for task in list(session.tasks):
                task.cancel()
            if session.tasks:
                await asyncio.wait(session.tasks)

    def _send(self, session: _Session, data: bytes) -> None:
        if not self.silent:
            session.writer.write(data)

    def _reply(self, session: _Session, msg_type: MessageType, msg: Message, body: bytes) -> None:
        # A response carries the message id of its request (§16.1).
        self._send(session, encode_message(msg_type, msg.msg_id, body))

    def _spawn(self, session: _Session, name: str, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=f"llrp_sim[{self.port}].{name}")
        session.tasks.add(task)
        task.add_done_callback(session.tasks.discard)
        return task

    # --- messages ------------------------------------------------------------------------------------------

    def _on_message(self, session: _Session, msg: Message) -> bool:
        """Handle one client message; False ends the connection."""
        try:
            name = MessageType(msg.msg_type).name
        except ValueError:
            name = str(msg.msg_type)
        self.messages_seen.append(name)
        if msg.msg_type == MessageType.KEEPALIVE_ACK:
            self.keepalive_acks += 1
            return True
        if self.silent:
            return True
        if msg.version != LLRP_VERSION:
            status = llrp_status(Status.UNSUPPORTED_VERSION, f"version {msg.version} not supported")
            self._reply(session, MessageType.ERROR_MESSAGE, msg, status)
            return True
        try:
            return self._dispatch(session, msg)
        except (LlrpCodecError, struct.error) as exc:
            response = _RESPONSE_TO.get(msg.msg_type, MessageType.ERROR_MESSAGE)
            self._reply(session, response, msg, llrp_status(Status.FIELD_ERROR, str(exc)))
            return True

    def _dispatch(self, session: _Session, msg: Message) -> bool:
        t = msg.msg_type
        ok = llrp_status()
        if t == MessageType.GET_READER_CAPABILITIES:
            requested = msg.body[0] if msg.body else 0
            self._reply(
                session, MessageType.GET_READER_CAPABILITIES_RESPONSE, msg, ok + self._capabilities(requested)
            )
        elif t == MessageType.GET_READER_CONFIG:
            self._reply(session, MessageType.GET_READER_CONFIG_RESPONSE, msg, ok)
        elif t == MessageType.SET_READER_CONFIG:
            keepalive = find_param(msg.body[1:], Param.KEEPALIVE_SPEC)
            if keepalive is not None:
                trigger, interval_ms = struct.unpack_from("!BI", keepalive)
                session.keepalive_s = interval_ms / 1000 if trigger == 1 and interval_ms > 0 else 0.0
                if session.keepalive_task is not None:
                    session.keepalive_task.cancel()
                    session.keepalive_task = None
                if session.keepalive_s > 0:
                    session.keepalive_task = self._spawn(session, "keepalive", self._keepalive(session))
            self._reply(session, MessageType.SET_READER_CONFIG_RESPONSE, msg, ok)
        elif t == MessageType.ENABLE_EVENTS_AND_REPORTS:
            pass  # no response (§13.1.6); this reader never holds events
        elif t == MessageType.DELETE_ACCESSSPEC:
            (spec_id,) = struct.unpack_from("!I", msg.body)
            status = ok if spec_id == 0 else llrp_status(Status.A_INVALID, f"no AccessSpec {spec_id}")
            self._reply(session, MessageType.DELETE_ACCESSSPEC_RESPONSE, msg, status)
        elif t == MessageType.ADD_ROSPEC:
            value = find_param(msg.body, Param.ROSPEC)
            if value is None:
                raise LlrpCodecError("ADD_ROSPEC without a ROSpec")
            spec = parse_rospec(value)
            if spec.rospec_id in session.rospecs:
                status = llrp_status(Status.A_INVALID, f"ROSpec {spec.rospec_id} exists")
            else:
                session.rospecs[spec.rospec_id] = spec
                status = ok
            self._reply(session, MessageType.ADD_ROSPEC_RESPONSE, msg, status)
        elif t in _ROSPEC_COMMANDS:
            (rospec_id,) = struct.unpack_from("!I", msg.body)
            self._reply(session, _RESPONSE_TO[t], msg, self._rospec_command(session, t, rospec_id))
        elif t == MessageType.GET_REPORT:
            self._send(session, ro_access_report(self._next_id(session), []))
        elif t == MessageType.CLOSE_CONNECTION:
            self._reply(session, MessageType.CLOSE_CONNECTION_RESPONSE, msg, ok)
            return False
        else:
            status = llrp_status(Status.UNSUPPORTED_MESSAGE, f"message type {t} not supported")
            self._reply(session, MessageType.ERROR_MESSAGE, msg, status)
        return True

    def _rospec_command(self, session: _Session, msg_type: int, rospec_id: int) -> bytes:
        targets = list(session.rospecs) if rospec_id == 0 else [rospec_id]
        if any(t not in session.rospecs for t in targets):
            return llrp_status(Status.A_INVALID, f"no ROSpec {rospec_id}")
        for rid in targets:
            spec = session.rospecs[rid]
            if msg_type == MessageType.DELETE_ROSPEC:
                del session.rospecs[rid]
            elif msg_type == MessageType.ENABLE_ROSPEC and spec.state == "disabled":
                spec.state = "active" if spec.immediate_start else "inactive"
            elif msg_type == MessageType.START_ROSPEC:
                if spec.state == "disabled":
                    return llrp_status(Status.A_INVALID, f"ROSpec {rid} is disabled")
                spec.state = "active"
            elif msg_type == MessageType.STOP_ROSPEC and spec.state == "active":
                spec.state = "inactive"
            elif msg_type == MessageType.DISABLE_ROSPEC:
                spec.state = "disabled"
        running = session.inventory_task is not None and not session.inventory_task.done()
        if self.inventory_running and not running:
            session.inventory_task = self._spawn(session, "inventory", self._inventory(session))
        return llrp_status()

    def _next_id(self, session: _Session) -> int:
        msg_id = session.next_msg_id
        session.next_msg_id = msg_id % 0xFFFFFFFF + 1
        return msg_id

    # --- capabilities --------------------------------------------------------------------------------------

    def _capabilities(self, requested: int) -> bytes:
        """GET_READER_CAPABILITIES_RESPONSE parameters for RequestedData (0 all, 1 general, 2 LLRP,
        3 regulatory, 4 air protocol; §9.1.1)."""
        out = b""
        if requested in (0, 1):
            per_antenna = b"".join(
                tlv(Param.PER_ANTENNA_AIR_PROTOCOL, struct.pack("!HHB", ant, 1, 1))  # EPCGlobalClass1Gen2
                for ant in range(1, self.antennas + 1)
            )
            firmware = b"shelfgate-sim-1.0"
            out += tlv(
                Param.GENERAL_DEVICE_CAPABILITIES,
                # MaxNumberOfAntennaSupported, flags (bit 14 HasUTCClockCapability), manufacturer, model
                struct.pack("!HHIIH", self.antennas, 1 << 14, 0, 1, len(firmware)),
                firmware,
                tlv(Param.RECEIVE_SENSITIVITY_TABLE_ENTRY, struct.pack("!Hh", 1, 0)),
                per_antenna,
                tlv(Param.GPIO_CAPABILITIES, struct.pack("!HH", 0, 0)),
            )
        if requested in (0, 2):
            out += tlv(Param.LLRP_CAPABILITIES, struct.pack("!BBHIIIII", 0, 7, 0, 1, 1, 1, 0, 0))
        if requested in (0, 3):
            power_table = b"".join(
                tlv(Param.TRANSMIT_POWER_LEVEL_TABLE_ENTRY, struct.pack("!Hh", index, 1000 + 100 * index))
                for index in range(1, 21)  # 10.1 .. 30.0 dBm in 0.01 dBm units
            )
            channels_khz = (865_700, 866_300, 866_900, 867_500)  # ETSI EN 302 208 high-power channels
            frequencies = tlv(
                Param.FREQUENCY_INFORMATION,
                b"\x00",  # not hopping
                tlv(
                    Param.FIXED_FREQUENCY_TABLE,
                    struct.pack(f"!H{len(channels_khz)}I", len(channels_khz), *channels_khz),
                ),
            )
            mode = tlv(
                Param.UHF_C1G2_RF_MODE_TABLE,
                tlv(
                    Param.UHF_C1G2_RF_MODE_TABLE_ENTRY,
                    # ModeIdentifier, DR|conformance, M2, PR-ASK, spectral mask, BDR, PIE, Tari min/max/step
                    struct.pack("!IBBBBIIIII", 1, 0x80, 1, 0, 2, 250_000, 2000, 25_000, 25_000, 0),
                ),
            )
            out += tlv(
                Param.REGULATORY_CAPABILITIES,
                struct.pack("!HH", 276, 2),  # Germany, ETSI EN 302 208
                tlv(Param.UHF_BAND_CAPABILITIES, power_table, frequencies, mode),
            )
        if requested in (0, 4):
            out += tlv(Param.C1G2_LLRP_CAPABILITIES, struct.pack("!BH", 0, 2))
        return out

    # --- background behaviour ------------------------------------------------------------------------------

    async def _keepalive(self, session: _Session) -> None:
        while True:
            await asyncio.sleep(session.keepalive_s)
            self._send(session, encode_message(MessageType.KEEPALIVE, self._next_id(session)))

    async def _inventory(self, session: _Session) -> None:
        while self._session is session and self.inventory_running:
            await asyncio.sleep(self.round_s)
            if self.silent:
                continue
            for spec in [s for s in session.rospecs.values() if s.state == "active"]:
                self._one_round(session, spec)
            try:
                await session.writer.drain()  # a client that stops reading slows the reader down
            except ConnectionError:
                return

    def _one_round(self, session: _Session, spec: RoSpec) -> None:
        now_us = time.time_ns() // 1000
        antennas = set(spec.antennas)
        reads: list[bytes] = []
        if self._malformed_reports > 0:
            self._malformed_reports -= 1
            junk = TagObservation("300000000000000000000000", spec.antennas[0], -70, now_us)
            reads.append(tag_report_data(junk, spec.selector, truncate_epc=True))
        for tag in list(self.tags.values()):
            if 0 not in antennas and tag.antenna not in antennas:
                continue
            p = self.read_probability if tag.read_probability is None else tag.read_probability
            if self._rng.random() >= p:
                continue
            tag.seen_count += 1
            jitter = self._rng.randint(-self.rssi_jitter_db, self.rssi_jitter_db)
            obs = TagObservation(
                tag.epc,
                tag.antenna,
                max(-128, min(127, tag.rssi_dbm + jitter)),
                now_us,
                seen_count=1,
                rospec_id=spec.rospec_id,
            )
            reads.append(tag_report_data(obs, spec.selector))
        if self._undecodable_reports > 0:
            self._undecodable_reports -= 1
            bad = TLV_HEADER.pack(Param.TAG_REPORT_DATA, 2)
            self._send(session, encode_message(MessageType.RO_ACCESS_REPORT, self._next_id(session), bad))
        chunk = spec.report_n if spec.report_n > 0 else max(len(reads), 1)
        for start in range(0, len(reads), chunk):
            self._send(session, ro_access_report(self._next_id(session), reads[start : start + chunk]))
            self.reports_sent += 1


_ROSPEC_COMMANDS: Final = frozenset(
    {
        MessageType.DELETE_ROSPEC,
        MessageType.START_ROSPEC,
        MessageType.STOP_ROSPEC,
        MessageType.ENABLE_ROSPEC,
        MessageType.DISABLE_ROSPEC,
    }
)

_RESPONSE_TO: Final[dict[int, MessageType]] = {
    MessageType.GET_READER_CAPABILITIES: MessageType.GET_READER_CAPABILITIES_RESPONSE,
    MessageType.GET_READER_CONFIG: MessageType.GET_READER_CONFIG_RESPONSE,
    MessageType.SET_READER_CONFIG: MessageType.SET_READER_CONFIG_RESPONSE,
    MessageType.CLOSE_CONNECTION: MessageType.CLOSE_CONNECTION_RESPONSE,
    MessageType.ADD_ROSPEC: MessageType.ADD_ROSPEC_RESPONSE,
    MessageType.DELETE_ROSPEC: MessageType.DELETE_ROSPEC_RESPONSE,
    MessageType.START_ROSPEC: MessageType.START_ROSPEC_RESPONSE,
    MessageType.STOP_ROSPEC: MessageType.STOP_ROSPEC_RESPONSE,
    MessageType.ENABLE_ROSPEC: MessageType.ENABLE_ROSPEC_RESPONSE,
    MessageType.DISABLE_ROSPEC: MessageType.DISABLE_ROSPEC_RESPONSE,
    MessageType.DELETE_ACCESSSPEC: MessageType.DELETE_ACCESSSPEC_RESPONSE,
}
