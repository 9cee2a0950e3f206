"""Sans-IO codec for Modbus weight transmitters: register maps, word orders, block planning.

No asyncio, no ports, no clocks, no logging: bytes and register words in, typed values out. The bus client
(`client.py`) and the device simulator (`firmware_sims.modbus`) both build on this module, so the gateway and
its simulator can never disagree about a register layout.

Word orders (Modbus Application Protocol v1.1b3 §4.2 defines only 16-bit big-endian registers; 32-bit values
span two registers in a vendor-chosen order)::

    value 12.345 as IEEE-754 float32 = 0x4145851F, bytes A=41 B=45 C=85 D=1F

    ABCD  [0x4145, 0x851F]   high word first, big-endian bytes (pymodbus word_order="big")
    CDAB  [0x851F, 0x4145]   low word first (pymodbus word_order="little")
    BADC  [0x4541, 0x1F85]   bytes swapped inside each word
    DCBA  [0x1F85, 0x4541]   fully little-endian

A Modbus FC03 read returns at most 125 registers (spec §6.3), so blocks are capped there.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, NamedTuple

MAX_READ_REGISTERS: Final = 125
"""FC03 quantity limit, Modbus Application Protocol v1.1b3 §6.3."""


class ProtocolError(ValueError):
    """Register words or a frame that cannot be what the map says they are."""


class ValueType(StrEnum):
    """Register encodings the profiles may name."""

    UINT16 = "uint16"
    INT16 = "int16"
    UINT32 = "uint32"
    INT32 = "int32"
    FLOAT32 = "float32"

    @property
    def width(self) -> int:
        """Registers one value occupies."""
        return 1 if self in (ValueType.UINT16, ValueType.INT16) else 2


class WordOrder(StrEnum):
    """Byte order of a 32-bit value across two registers (see the module docstring)."""

    ABCD = "ABCD"
    CDAB = "CDAB"
    BADC = "BADC"
    DCBA = "DCBA"


_STRUCT_32: Final = {ValueType.UINT32: ">I", ValueType.INT32: ">i", ValueType.FLOAT32: ">f"}
_STRUCT_16: Final = {ValueType.UINT16: ">H", ValueType.INT16: ">h"}


def _reorder(raw: bytes, order: WordOrder) -> bytes:
    """Map between canonical ABCD bytes and the on-wire byte sequence; the mapping is its own inverse."""
    a, b, c, d = raw
    if order is WordOrder.ABCD:
        return raw
    if order is WordOrder.CDAB:
        return bytes((c, d, a, b))
    if order is WordOrder.BADC:
        return bytes((b, a, d, c))
    return bytes((d, c, b, a))


def decode_value(words: Sequence[int], value_type: ValueType, order: WordOrder = WordOrder.ABCD) -> float:
    """Decode one value from its registers (each 0..65535)."""
    if len(words) != value_type.width:
        raise ProtocolError(f"{value_type} needs {value_type.width} registers, got {len(words)}")
    for word in words:
        if not 0 <= word <= 0xFFFF:
            raise ProtocolError(f"register value {word} is not a 16-bit word")
    if value_type.width == 1:
        return float(struct.unpack(_STRUCT_16[value_type], words[0].to_bytes(2, "big"))[0])
    wire = words[0].to_bytes(2, "big") + words[1].to_bytes(2, "big")
    value: float = struct.unpack(_STRUCT_32[value_type], _reorder(wire, order))[0]
    return float(value)


def encode_value(value: float, value_type: ValueType, order: WordOrder = WordOrder.ABCD) -> list[int]:
    """Encode one value into registers; integers are rounded to nearest and must fit the type."""
    fmt = _STRUCT_16.get(value_type) or _STRUCT_32[value_type]
    packed_value: float | int = value if value_type is ValueType.FLOAT32 else round(value)
    try:
        raw = struct.pack(fmt, packed_value)
    except struct.error as exc:
        raise ProtocolError(f"{value!r} does not fit {value_type}") from exc
    if value_type.width == 2:
        raw = _reorder(raw, order)
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


@dataclass(frozen=True, slots=True)
class WeightPoint:
    """Where each channel's weight value lives: channel n at `address + n * stride`."""

    address: int
    value_type: ValueType = ValueType.INT32
    word_order: WordOrder = WordOrder.ABCD
    stride: int = 2
    scale: float = 1.0
    """Profile units per raw count (e.g. 0.01 when the transmitter reports two decimal places)."""


@dataclass(frozen=True, slots=True)
class StatusPoint:
    """One uint16 status word per channel at `address + n * stride`, with named bit positions."""

    address: int
    stride: int = 1
    stable_bit: int | None = None
    overload_bit: int | None = None
    fault_bit: int | None = None


@dataclass(frozen=True, slots=True)
class RegisterMap:
    """A transmitter model's holding-register layout (a profile data file in config/profiles/)."""

    name: str
    channels: int
    weight: WeightPoint
    status: StatusPoint | None = None
    description: str = ""

    def weight_span(self, channel: int) -> tuple[int, int]:
        """(first register, count) of one channel's weight value."""
        self._check_channel(channel)
        return self.weight.address + channel * self.weight.stride, self.weight.value_type.width

    def status_span(self, channel: int) -> tuple[int, int] | None:
        """(first register, 1) of one channel's status word, or None when the map has no status."""
        self._check_channel(channel)
        if self.status is None:
            return None
        return self.status.address + channel * self.status.stride, 1

    def _check_channel(self, channel: int) -> None:
        if not 0 <= channel < self.channels:
            raise ProtocolError(f"channel {channel} outside 0..{self.channels - 1} of profile {self.name}")


class ChannelReading(NamedTuple):
    """One channel's decoded sample. `value` is in profile units (raw counts × scale).

    A NamedTuple rather than a frozen dataclass: every channel of every transmitter makes one ten times a
    second, and a frozen dataclass costs ~2.5 µs to build here against ~1 µs (bench/bench_pipeline.py).
    """

    channel: int
    value: float
    stable: bool | None = None
    """The transmitter's own stability flag; None when the profile has no such bit."""
    overload: bool = False
    fault: bool = False


@dataclass(frozen=True, slots=True)
class Block:
    """One FC03 read: `count` holding registers from `start`."""

    start: int
    count: int

    @property
    def end(self) -> int:
        """One past the last register."""
        return self.start + self.count


_F32: Final = struct.Struct(">f")
_U32: Final = struct.Struct(">I")


def _bswap16(w: int) -> int:
    return ((w & 0xFF) << 8) | (w >> 8)


def _word_decoder(value_type: ValueType, order: WordOrder) -> Callable[[Sequence[int], int], float]:
    """A decoder of one value at index i of a block's words, with the word order resolved once.

    Same results as `decode_value` (a property test holds them equal) at a fraction of the cost: the poll
    path decodes every channel of every transmitter 10 times a second.
    """
    if value_type is ValueType.UINT16:
        return lambda w, i: float(w[i])
    if value_type is ValueType.INT16:
        return lambda w, i: float(w[i] - 0x10000 if w[i] & 0x8000 else w[i])

    u32: Callable[[Sequence[int], int], int]
    if order is WordOrder.ABCD:
        u32 = lambda w, i: (w[i] << 16) | w[i + 1]  # noqa: E731 - one tiny decoder per word order
    elif order is WordOrder.CDAB:
        u32 = lambda w, i: (w[i + 1] << 16) | w[i]  # noqa: E731
    elif order is WordOrder.BADC:
        u32 = lambda w, i: (_bswap16(w[i]) << 16) | _bswap16(w[i + 1])  # noqa: E731
    else:
        u32 = lambda w, i: (_bswap16(w[i + 1]) << 16) | _bswap16(w[i])  # noqa: E731

    if value_type is ValueType.UINT32:
        return lambda w, i: float(u32(w, i))
    if value_type is ValueType.INT32:

        def i32(w: Sequence[int], i: int) -> float:
            u = u32(w, i)
            return float(u - 0x100000000 if u & 0x80000000 else u)

        return i32
    return lambda w, i: float(_F32.unpack(_U32.pack(u32(w, i)))[0])


@dataclass(frozen=True, slots=True)
class _ChannelSlot:
    channel: int
    block: int
    offset: int
    status_block: int
    status_offset: int


@dataclass(frozen=True, slots=True)
class PollPlan:
    """The block reads that cover a set of channels, and how to cut readings back out of them."""

    register_map: RegisterMap
    channels: tuple[int, ...]
    blocks: tuple[Block, ...]
    _slots: tuple[_ChannelSlot, ...] = field(default=(), repr=False)
    _decode_word: Callable[[Sequence[int], int], float] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # Where each channel's weight and status words sit inside the blocks, computed once per plan.
        def locate(address: int, width: int) -> tuple[int, int]:
            for n, b in enumerate(self.blocks):
                if b.start <= address and address + width <= b.end:
                    return n, address - b.start
            raise ProtocolError(f"registers {address}..{address + width - 1} are in no block of the plan")

        slots = []
        for ch in self.channels:
            blk, off = locate(*self.register_map.weight_span(ch))
            st = self.register_map.status_span(ch)
            sblk, soff = locate(*st) if st is not None else (-1, -1)
            slots.append(_ChannelSlot(ch, blk, off, sblk, soff))
        wp = self.register_map.weight
        object.__setattr__(self, "_slots", tuple(slots))
        object.__setattr__(self, "_decode_word", _word_decoder(wp.value_type, wp.word_order))

    @property
    def registers_read(self) -> int:
        """Total registers transferred per cycle (gaps read through included)."""
        return sum(b.count for b in self.blocks)

    def decode(self, block_words: Sequence[Sequence[int]]) -> list[ChannelReading]:
        """Turn the words returned for each block (same order as `blocks`) into channel readings."""
        if len(block_words) != len(self.blocks):
            raise ProtocolError(f"expected {len(self.blocks)} blocks, got {len(block_words)}")
        for block, words in zip(self.blocks, block_words, strict=True):
            if len(words) != block.count:
                raise ProtocolError(
                    f"block @{block.start} expected {block.count} registers, got {len(words)}"
                )
        decode_word = self._decode_word
        assert decode_word is not None  # noqa: S101 - set in __post_init__
        scale = self.register_map.weight.scale
        sp = self.register_map.status
        out = []
        for s in self._slots:
            value = decode_word(block_words[s.block], s.offset) * scale
            if sp is None or s.status_block < 0:
                out.append(ChannelReading(s.channel, value))
                continue
            word = block_words[s.status_block][s.status_offset]
            out.append(
                ChannelReading(
                    s.channel,
                    value,
                    None if sp.stable_bit is None else bool(word >> sp.stable_bit & 1),
                    sp.overload_bit is not None and bool(word >> sp.overload_bit & 1),
                    sp.fault_bit is not None and bool(word >> sp.fault_bit & 1),
                )
            )
        return out


def decode_channel(register_map: RegisterMap, channel: int, image: Mapping[int, int]) -> ChannelReading:
    """Decode one channel from a register image (address → word)."""
    start, width = register_map.weight_span(channel)
    try:
        words = [image[a] for a in range(start, start + width)]
    except KeyError as exc:
        raise ProtocolError(f"register {exc.args[0]} missing for channel {channel}") from exc
    wp = register_map.weight
    value = decode_value(words, wp.value_type, wp.word_order) * wp.scale
    status_span = register_map.status_span(channel)
    if status_span is None or register_map.status is None:
        return ChannelReading(channel=channel, value=value)
    try:
        word = image[status_span[0]]
    except KeyError as exc:
        raise ProtocolError(f"status register {status_span[0]} missing for channel {channel}") from exc
    sp = register_map.status

    def bit(n: int | None) -> bool | None:
        return None if n is None else bool(word >> n & 1)

    return ChannelReading(
        channel=channel,
        value=value,
        stable=bit(sp.stable_bit),
        overload=bool(bit(sp.overload_bit)),
        fault=bool(bit(sp.fault_bit)),
    )


def plan_blocks(
    spans: Iterable[tuple[int, int]], *, max_gap: int = 8, max_block: int = MAX_READ_REGISTERS
) -> tuple[Block, ...]:
    """Coalesce register spans into as few FC03 reads as the limits allow.

    Two spans join one block when the unused registers between them number at most `max_gap`: reading a few
    unused registers costs 2 bytes each on the wire, far less than a separate request (8-byte request + 5-byte
    response header + turnaround + t3.5, DOMAIN.md "Modbus RTU timing").
    """
    if max_block < 1 or max_block > MAX_READ_REGISTERS:
        raise ValueError(f"max_block must be 1..{MAX_READ_REGISTERS}")
    ordered = sorted({(s, c) for s, c in spans if c > 0})
    blocks: list[Block] = []
    cur_start = cur_end = -1
    for start, count in ordered:
        end = start + count
        if count > max_block:
            raise ValueError(f"span @{start}+{count} exceeds max_block {max_block}")
        if cur_start >= 0 and start - cur_end <= max_gap and max(end, cur_end) - cur_start <= max_block:
            cur_end = max(cur_end, end)
            continue
        new_start = start
        if cur_start >= 0:
            blocks.append(Block(cur_start, cur_end - cur_start))
            if end <= cur_end:  # an overlapping span already read in full by the block just closed
                cur_start = -1
                continue
            new_start = max(start, cur_end)  # read only what the closed block did not cover
        cur_start, cur_end = new_start, end
    if cur_start >= 0:
        blocks.append(Block(cur_start, cur_end - cur_start))
    return tuple(blocks)


def plan_poll(
    register_map: RegisterMap,
    channels: Iterable[int],
    *,
    max_gap: int = 8,
    max_block: int = MAX_READ_REGISTERS,
) -> PollPlan:
    """Plan the block reads for the channels a device's bins use."""
    chans = tuple(sorted(set(channels)))
    spans: list[tuple[int, int]] = []
    for ch in chans:
        spans.append(register_map.weight_span(ch))
        st = register_map.status_span(ch)
        if st is not None:
            spans.append(st)
    return PollPlan(register_map, chans, plan_blocks(spans, max_gap=max_gap, max_block=max_block))


def register_image(register_map: RegisterMap, readings: Iterable[ChannelReading]) -> dict[int, int]:
    """Device side: the register words that present these readings (used by the simulator)."""
    image: dict[int, int] = {}
    wp = register_map.weight
    for r in readings:
        start, _ = register_map.weight_span(r.channel)
        raw = r.value / wp.scale
        for i, w in enumerate(encode_value(raw, wp.value_type, wp.word_order)):
            image[start + i] = w
        span = register_map.status_span(r.channel)
        if span is not None and register_map.status is not None:
            sp = register_map.status
            word = 0
            for bit_no, flag in (
                (sp.stable_bit, r.stable),
                (sp.overload_bit, r.overload),
                (sp.fault_bit, r.fault),
            ):
                if bit_no is not None and flag:
                    word |= 1 << bit_no
            image[span[0]] = word
    return image


# --- RTU framing, for the byte-level test vectors and the simulator's fault injection -----------------


def crc16_modbus(data: bytes) -> int:
    """CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF), Modbus over Serial Line v1.02 §6.2.2."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def rtu_frame(pdu_with_unit: bytes) -> bytes:
    """Append the CRC, low byte first (Modbus over Serial Line v1.02 §2.5.1.2)."""
    crc = crc16_modbus(pdu_with_unit)
    return pdu_with_unit + bytes((crc & 0xFF, crc >> 8))


def rtu_check(frame: bytes) -> bytes:
    """Verify an RTU frame's CRC and return it without the CRC; raise ProtocolError if it is wrong."""
    if len(frame) < 4:
        raise ProtocolError(f"RTU frame of {len(frame)} bytes is shorter than the 4-byte minimum")
    body, crc = frame[:-2], frame[-2] | frame[-1] << 8
    if crc16_modbus(body) != crc:
        raise ProtocolError(f"CRC mismatch: frame carries {crc:04x}, computed {crc16_modbus(body):04x}")
    return body


def t35_s(baudrate: int, bits_per_char: int = 10) -> float:
    """Inter-frame silence t3.5 in seconds (Modbus over Serial Line v1.02 §2.5.1.1).

    Above 19200 baud the spec fixes it at 1.75 ms.

    `bits_per_char` is 10 for 8N1 (start + 8 data + stop), 11 with a parity bit or two stop bits.
    """
    if baudrate > 19200:
        return 0.00175
    return 3.5 * bits_per_char / baudrate


# --- Modbus TCP (MBAP) framing, for the bus client's TCP transport -----------------------------------------
#
#   ADU = MBAP header (7 bytes) + PDU     Modbus Messaging on TCP/IP Implementation Guide v1.0b §3.1.3
#
#   +----------------+-------------+--------------+---------+----------------------------+
#   | transaction id | protocol id | length       | unit id | PDU: function code + data  |
#   | 2 bytes        | 2 bytes = 0 | 2 bytes      | 1 byte  | ≤ 253 bytes (MAP §4.1)     |
#   +----------------+-------------+--------------+---------+----------------------------+
#                                   counts unit id + PDU
#
#   FC03 request PDU:   03 | start (2) | quantity (2)                       (MAP v1.1b3 §6.3)
#   FC03 response PDU:  03 | byte count = 2N | N registers, big-endian
#   exception PDU:      83 | exception code                                 (MAP v1.1b3 §7)

MBAP_HEADER_BYTES: Final = 7
MBAP_MAX_LENGTH: Final = 254
"""Largest valid length field: unit id (1) + a maximal PDU (253 bytes)."""


class MbapFrame(NamedTuple):
    """One Modbus TCP ADU, split: its transaction id, unit id and PDU bytes."""

    transaction_id: int
    unit_id: int
    pdu: bytes


_MBAP_READ: Final = struct.Struct(">HHHBBHH")


def mbap_read_request(transaction_id: int, unit_id: int, block: Block) -> bytes:
    """The FC03 request ADU for one block (12 bytes: header with length 6, then 03 start quantity)."""
    if not 0 <= transaction_id <= 0xFFFF or not 0 <= unit_id <= 0xFF:
        raise ProtocolError(f"transaction id {transaction_id} or unit id {unit_id} out of range")
    if not 1 <= block.count <= MAX_READ_REGISTERS or not 0 <= block.start <= 0xFFFF:
        raise ProtocolError(f"cannot read {block}: quantity 1..{MAX_READ_REGISTERS}, start 0..65535")
    return _MBAP_READ.pack(transaction_id, 0, 6, unit_id, 3, block.start, block.count)


class MbapDecoder:
    """Splits a TCP byte stream into MBAP frames; bytes may arrive in any chunking.

    `feed(data)` returns the frames completed by `data` (an empty list means "need more bytes"). A header
    that cannot be Modbus TCP (protocol id ≠ 0, length outside 2..254) is garbage: the buffer is dropped —
    a stream offers no frame boundary to resynchronise on — and `errors` / `last_error` say so; the frames
    completed before it are still returned.
    """

    __slots__ = ("_buf", "errors", "last_error")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.errors = 0
        self.last_error: str | None = None

    def feed(self, data: bytes) -> list[MbapFrame]:
        """Add bytes; return every frame now complete, in order."""
        buf = self._buf
        buf += data
        out: list[MbapFrame] = []
        while len(buf) >= MBAP_HEADER_BYTES:
            length = (buf[4] << 8) | buf[5]
            if buf[2] or buf[3] or not 2 <= length <= MBAP_MAX_LENGTH:
                self.errors += 1
                self.last_error = f"not an MBAP header: {bytes(buf[:MBAP_HEADER_BYTES]).hex()}"
                buf.clear()
                break
            end = 6 + length
            if len(buf) < end:
                break
            out.append(MbapFrame((buf[0] << 8) | buf[1], buf[6], bytes(buf[MBAP_HEADER_BYTES:end])))
            del buf[:end]
        return out

    @property
    def pending(self) -> int:
        """Bytes held back waiting for the rest of a frame."""
        return len(self._buf)


def exception_code(pdu: bytes) -> int | None:
    """The code of an exception response PDU (function | 0x80, code), or None for any other PDU."""
    if len(pdu) == 2 and pdu[0] & 0x80:
        return pdu[1]
    return None


def fc03_registers(pdu: bytes, count: int) -> list[int]:
    """The registers of an FC03 response PDU that should carry `count` of them; ProtocolError otherwise."""
    if len(pdu) < 2 or pdu[0] != 3:
        raise ProtocolError(f"not an FC03 response: {pdu[:8].hex()}")
    if pdu[1] != 2 * count or len(pdu) != 2 + 2 * count:
        raise ProtocolError(f"asked for {count} registers, reply carries {pdu[1]} bytes in {len(pdu) - 2}")
    return list(struct.unpack(f">{count}H", pdu[2:]))
