"""Sans-IO codec for serial UHF RFID modules of the Magic RF M100 / JRD-4035 family (YRM100, M5Stack UHF).

No asyncio, no ports, no clocks, no logging: bytes in, frames out, and frames back into bytes. The reader client
(`client.py`) and the module simulator (`firmware_sims.rfid`) both build on this module, so the gateway and its
simulator can never disagree about a frame.

Frame layout (M100 serial command manual; vectors in tests/vectors/rfid_llrp_and_serial_uhf.json)::

    +------+------+-----+---------+----------------+----------+------+
    | 0xBB | type | cmd | PL (BE) | params[PL]     | checksum | 0x7E |
    +------+------+-----+---------+----------------+----------+------+
      head   00 command (host → module)              low byte of the sum
             01 response (module → host)             type + cmd + PL_hi +
             02 notice   (module → host, unsolicited) PL_lo + params

    tag notice (type 02, cmd 0x22) params:
    +------+---------+-----------------+-----------+
    | RSSI | PC (BE) | EPC[2·words]    | CRC (BE)  |      words = PC bits 15..11 (EPC Gen2 §6.3.2.1.2.2)
    +------+---------+-----------------+-----------+
     int8 dBm                             CRC-16/GENIBUS over PC+EPC (EPC Gen2 §6.3.1.5 / Annex F)

    error (type 01, cmd 0xFF) params: one error code, e.g. 0x15 "inventory failed / no tag in the field"

Commands used here: single inventory 0x22 (one round), multi-poll inventory 0x27 (params: reserved 0x22 +
uint16 round count), stop multi-poll 0x28 (answered by a type-01 frame with one status byte, 0x00 = ok).

The stream decoder (`FrameDecoder`) resynchronises after garbage: bytes before a 0xBB are skipped and
counted; a frame that starts with 0xBB but fails a check (length limit, end byte, checksum) raises a
`FrameError`/`ChecksumError` after discarding only its 0xBB, so a real frame hiding inside the rejected bytes
is still found on the next call.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

from drivers.rfid.epc import EpcError, RawEpc, Sgtin96, parse_epc, sgtin_dict
from drivers.rfid.errors import ChecksumError, FrameError, ProtocolError, TagCrcError

__all__ = [
    "CMD_ERROR",
    "CMD_MULTI_INVENTORY",
    "CMD_SINGLE_INVENTORY",
    "CMD_STOP_MULTI_INVENTORY",
    "ERROR_CODES",
    "FRAME_END",
    "FRAME_HEAD",
    "MAX_PARAMS_LEN",
    "NEED_MORE",
    "ChecksumError",
    "Frame",
    "FrameDecoder",
    "FrameError",
    "FrameType",
    "NeedMore",
    "ProtocolError",
    "TagCrcError",
    "TagNotice",
    "checksum",
    "crc16_genibus",
    "decode_frame",
    "decode_m100",
    "encode_frame",
    "error_frame",
    "multi_inventory",
    "parse_error",
    "parse_tag_notice",
    "single_inventory",
    "stop_multi_inventory",
    "stop_response",
    "tag_notice_frame",
]

FRAME_HEAD: Final = 0xBB
FRAME_END: Final = 0x7E
HEADER_LEN: Final = 5
"""0xBB, type, cmd, PL_hi, PL_lo."""
OVERHEAD: Final = HEADER_LEN + 2
"""Header plus checksum and end byte: a frame is PL + 7 bytes."""
MAX_PARAMS_LEN: Final = 512
"""Longest parameter block accepted. The longest inventory frame is a notice for a 496-bit EPC
(1 + 2 + 62 + 2 = 67 bytes); memory-read replies are longer but bounded by the 255-word read limit.
A corrupted length field beyond this is rejected at once instead of stalling the stream for kilobytes."""

CMD_SINGLE_INVENTORY: Final = 0x22
CMD_MULTI_INVENTORY: Final = 0x27
CMD_STOP_MULTI_INVENTORY: Final = 0x28
CMD_ERROR: Final = 0xFF
MULTI_INVENTORY_RESERVED: Final = 0x22
"""The fixed first parameter byte of the 0x27 command in the M100 manual's examples."""

ERR_NO_TAG: Final = 0x15
ERROR_CODES: Final = {
    0x15: "inventory failed / no tag",
    0x17: "command error",
}
"""M100 error codes carried by type-01 cmd-0xFF frames (0x15 from the vector file; 0x17 as the manual lists
for an unknown command). Unknown codes are reported by number."""


class FrameType(IntEnum):
    """The frame type byte."""

    COMMAND = 0x00
    RESPONSE = 0x01
    NOTICE = 0x02


_TYPE_NAMES: Final = {
    FrameType.COMMAND: "command",
    FrameType.RESPONSE: "response",
    FrameType.NOTICE: "notice",
}


class NeedMore:
    """The decoder's answer when the buffered bytes end inside a frame (distinct from malformed)."""

    _instance: NeedMore | None = None

    def __new__(cls) -> NeedMore:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_MORE"


NEED_MORE: Final = NeedMore()


def checksum(body: bytes) -> int:
    """The M100 checksum: low byte of the sum of type, cmd, both PL bytes and every param byte."""
    return sum(body) & 0xFF


def crc16_genibus(data: bytes) -> int:
    """CRC-16/GENIBUS (a.k.a. CRC-16/EPC-C1G2): poly 0x1021, init 0xFFFF, not reflected, xorout 0xFFFF.

    EPC UHF Gen2 air interface §6.3.1.5: the tag backscatters StoredCRC = this CRC over PC + EPC, so a reader
    module that forwards it lets us detect a reply garbled on the air or in the module.
    """
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc ^ 0xFFFF


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame; `params` excludes the length, checksum and delimiters."""

    frame_type: int
    command: int
    params: bytes = b""

    def encode(self) -> bytes:
        """The frame's bytes on the wire."""
        return encode_frame(self.frame_type, self.command, self.params)


def encode_frame(frame_type: int, command: int, params: bytes = b"") -> bytes:
    """Build a frame: head, type, cmd, PL (big-endian), params, checksum, end."""
    if not 0 <= frame_type <= 0xFF or not 0 <= command <= 0xFF:
        raise ProtocolError(f"type {frame_type} / command {command} do not fit a byte")
    if len(params) > MAX_PARAMS_LEN:
        raise ProtocolError(f"{len(params)} parameter bytes exceed the {MAX_PARAMS_LEN}-byte limit")
    body = bytes((frame_type, command)) + len(params).to_bytes(2, "big") + params
    return bytes((FRAME_HEAD,)) + body + bytes((checksum(body), FRAME_END))


def _check_at(buf: bytes | bytearray, start: int, max_params_len: int) -> Frame | NeedMore:
    """Validate the frame whose 0xBB is at `start`; NEED_MORE if it runs past the buffer."""
    available = len(buf) - start
    if available >= 2 and buf[start + 1] not in _TYPE_NAMES:
        raise FrameError(f"unknown frame type 0x{buf[start + 1]:02x}")
    if available < HEADER_LEN:
        return NEED_MORE
    params_len = int.from_bytes(buf[start + 3 : start + 5], "big")
    if params_len > max_params_len:
        raise FrameError(f"parameter length {params_len} exceeds the {max_params_len}-byte limit")
    total = params_len + OVERHEAD
    if available < total:
        return NEED_MORE
    end = start + total
    if buf[end - 1] != FRAME_END:
        raise FrameError(f"frame of {total} bytes does not end with 0x7e (got 0x{buf[end - 1]:02x})")
    body = bytes(buf[start + 1 : end - 2])
    if checksum(body) != buf[end - 2]:
        raise ChecksumError(f"checksum 0x{buf[end - 2]:02x} != computed 0x{checksum(body):02x}")
    return Frame(body[0], body[1], body[4:])


def decode_frame(data: bytes, *, max_params_len: int = MAX_PARAMS_LEN) -> Frame:
    """Decode exactly one complete frame (no leading garbage, nothing after it)."""
    if not data or data[0] != FRAME_HEAD:
        raise FrameError("a frame starts with 0xbb")
    result = _check_at(data, 0, max_params_len)
    if isinstance(result, NeedMore):
        raise FrameError(f"truncated frame: {len(data)} bytes")
    if len(result.params) + OVERHEAD != len(data):
        raise FrameError(f"{len(data) - len(result.params) - OVERHEAD} bytes after the frame end")
    return result


class FrameDecoder:
    """Stream decoder, h11-style: `receive_data(bytes)`, then call `next_event()` until it returns NEED_MORE.

    `next_event()` returns a `Frame`, returns `NEED_MORE`, or raises a `FrameError` (the offending 0xBB has
    already been dropped, so calling again continues with the rest of the stream). Non-0xBB bytes between
    frames are skipped silently and counted in `skipped_bytes`.
    """

    def __init__(self, *, max_params_len: int = MAX_PARAMS_LEN) -> None:
        if not 0 <= max_params_len <= MAX_PARAMS_LEN:
            raise ValueError(f"max_params_len must be 0..{MAX_PARAMS_LEN}")
        self.max_params_len = max_params_len
        self._buf = bytearray()
        self.skipped_bytes = 0
        """Bytes discarded while hunting for a frame head (garbage, rejected frame heads)."""

    def receive_data(self, data: bytes) -> None:
        """Append bytes read from the line."""
        self._buf += data

    @property
    def pending(self) -> int:
        """Bytes buffered but not yet consumed (a partial frame, or bytes not yet examined)."""
        return len(self._buf)

    def next_event(self) -> Frame | NeedMore:
        """The next complete frame, or NEED_MORE; raises `FrameError` for a rejected frame head."""
        buf = self._buf
        head = buf.find(FRAME_HEAD)
        if head < 0:
            self.skipped_bytes += len(buf)
            buf.clear()
            return NEED_MORE
        if head:
            self.skipped_bytes += head
            del buf[:head]
        try:
            result = _check_at(buf, 0, self.max_params_len)
        except FrameError:
            self.skipped_bytes += 1
            del buf[:1]
            raise
        if isinstance(result, Frame):
            del buf[: len(result.params) + OVERHEAD]
        return result

    def discard_partial(self) -> int:
        """Give up on a buffered partial frame (the line went idle mid-frame); returns the bytes dropped.

        Only the head byte is dropped: if the "frame" was a corrupted length field swallowing real frames,
        the next `next_event()` still finds them.
        """
        if not self._buf:
            return 0
        del self._buf[:1]
        self.skipped_bytes += 1
        return 1


# --- commands (host side) -------------------------------------------------------------------------------------


def single_inventory() -> bytes:
    """0x22: one inventory round; the module answers with tag notices, or error 0x15 when no tag replied."""
    return encode_frame(FrameType.COMMAND, CMD_SINGLE_INVENTORY)


def multi_inventory(rounds: int = 0xFFFF) -> bytes:
    """0x27: run `rounds` inventory rounds back to back, reporting every read as a notice."""
    if not 1 <= rounds <= 0xFFFF:
        raise ProtocolError(f"round count {rounds} outside 1..65535")
    return encode_frame(
        FrameType.COMMAND, CMD_MULTI_INVENTORY, bytes((MULTI_INVENTORY_RESERVED,)) + rounds.to_bytes(2, "big")
    )


def stop_multi_inventory() -> bytes:
    """0x28: stop a running multi-poll inventory; the module answers `stop_response()`."""
    return encode_frame(FrameType.COMMAND, CMD_STOP_MULTI_INVENTORY)


# --- module side (the simulator) -------------------------------------------------------------------------------


def stop_response(status: int = 0) -> bytes:
    """The module's reply to 0x28: one status byte, 0x00 = stopped."""
    return encode_frame(FrameType.RESPONSE, CMD_STOP_MULTI_INVENTORY, bytes((status,)))


def error_frame(code: int) -> bytes:
    """A type-01 cmd-0xFF error frame carrying one error code."""
    return encode_frame(FrameType.RESPONSE, CMD_ERROR, bytes((code,)))


def tag_notice_frame(epc: bytes, rssi_dbm: int, *, pc: int | None = None, crc: int | None = None) -> bytes:
    """A tag notice for `epc`; PC defaults to the Gen2 length bits for the EPC, CRC to the correct one."""
    if len(epc) % 2 or len(epc) > 62:
        raise ProtocolError(f"an EPC is 0..31 16-bit words, got {len(epc)} bytes")
    if not -128 <= rssi_dbm <= 127:
        raise ProtocolError(f"RSSI {rssi_dbm} dBm does not fit an int8")
    if pc is None:
        pc = (len(epc) // 2) << 11
    pc_epc = pc.to_bytes(2, "big") + epc
    if crc is None:
        crc = crc16_genibus(pc_epc)
    params = rssi_dbm.to_bytes(1, "big", signed=True) + pc_epc + crc.to_bytes(2, "big")
    return encode_frame(FrameType.NOTICE, CMD_SINGLE_INVENTORY, params)


# --- frame contents ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TagNotice:
    """One tag read reported by the module."""

    rssi_dbm: int
    pc: int
    epc: bytes
    crc: int | None
    """The tag's StoredCRC as forwarded by the module (verified), or None if the module omits it."""

    @property
    def epc_hex(self) -> str:
        """The EPC as upper-case hex, the form EPC tools and the Tag Data Standard print."""
        return self.epc.hex().upper()


def parse_tag_notice(frame: Frame, *, require_crc: bool = True) -> TagNotice:
    """Cut RSSI, PC, EPC and CRC out of a tag notice; raises `TagCrcError` when the Gen2 CRC is wrong.

    `require_crc` (the default, as the M100 always forwards the CRC) matters for safety: without it a bit flip
    in the PC's length bits makes "EPC + CRC" read as a one-word-longer EPC without CRC, and the garbled read
    would pass. Set it False only for a module configured not to forward the CRC.
    """
    if frame.frame_type != FrameType.NOTICE or frame.command != CMD_SINGLE_INVENTORY:
        raise FrameError(f"not a tag notice: type 0x{frame.frame_type:02x} cmd 0x{frame.command:02x}")
    p = frame.params
    if len(p) < 3:
        raise FrameError(f"tag notice with {len(p)} parameter bytes, need at least RSSI + PC")
    rssi_dbm = int.from_bytes(p[0:1], "big", signed=True)
    pc = int.from_bytes(p[1:3], "big")
    epc_len = (pc >> 11) * 2
    if len(p) == 3 + epc_len and not require_crc:
        crc = None
    elif len(p) == 5 + epc_len:
        crc = int.from_bytes(p[-2:], "big")
        computed = crc16_genibus(p[1:-2])
        if crc != computed:
            raise TagCrcError(f"tag CRC {crc:04x} != computed {computed:04x} over PC+EPC")
    else:
        carried = len(p) - 5 if require_crc else len(p) - 3
        raise FrameError(f"PC 0x{pc:04x} announces a {epc_len}-byte EPC, notice carries {carried} bytes")
    return TagNotice(rssi_dbm=rssi_dbm, pc=pc, epc=bytes(p[3 : 3 + epc_len]), crc=crc)


def parse_error(frame: Frame) -> int:
    """The error code of a type-01 cmd-0xFF frame."""
    if frame.command != CMD_ERROR or len(frame.params) != 1:
        raise FrameError(f"not an error frame: cmd 0x{frame.command:02x}, {len(frame.params)} params")
    return frame.params[0]


def error_name(code: int) -> str:
    """Human words for an error code."""
    return ERROR_CODES.get(code, f"error 0x{code:02x}")


def decode_m100(frame_hex: str) -> dict[str, Any]:
    """`shelfgate decode m100 HEX`: one complete frame → a JSON-ready dict; `ProtocolError` if malformed.

    Keys (always all present, None where they do not apply): type, command, params, rssi_dbm, pc, epc,
    epc_bits, epc_crc, sgtin (the SGTIN-96 decode of the EPC, when it is one), error_code, error, rounds.
    """
    try:
        raw = bytes.fromhex(frame_hex.strip())
    except ValueError as exc:
        raise ProtocolError(f"not hex: {frame_hex!r}") from exc
    frame = decode_frame(raw)
    out: dict[str, Any] = {
        "type": _TYPE_NAMES[FrameType(frame.frame_type)],
        "command": frame.command,
        "params": frame.params.hex(),
        "rssi_dbm": None,
        "pc": None,
        "epc": None,
        "epc_bits": None,
        "epc_crc": None,
        "sgtin": None,
        "error_code": None,
        "error": None,
        "rounds": None,
    }
    if frame.frame_type == FrameType.NOTICE and frame.command == CMD_SINGLE_INVENTORY:
        notice = parse_tag_notice(frame)
        out.update(
            rssi_dbm=notice.rssi_dbm,
            pc=f"{notice.pc:04x}",
            epc=notice.epc.hex(),
            epc_bits=len(notice.epc) * 8,
            epc_crc=None if notice.crc is None else f"{notice.crc:04x}",
        )
        try:
            identity: Sgtin96 | RawEpc = parse_epc(notice.epc)
        except EpcError:
            identity = RawEpc(notice.epc_hex)
        if isinstance(identity, Sgtin96):
            out["sgtin"] = sgtin_dict(identity)
    elif frame.frame_type == FrameType.RESPONSE and frame.command == CMD_ERROR:
        code = parse_error(frame)
        out.update(error_code=code, error=error_name(code))
    elif frame.command == CMD_MULTI_INVENTORY and len(frame.params) == 3:
        out["rounds"] = int.from_bytes(frame.params[1:3], "big")
    return out
