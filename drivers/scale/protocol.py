"""Sans-IO codecs for retail scales on a serial line: Mettler Toledo MT-SICS and NCI/ECR.

No asyncio, no ports, no clocks, no logging: bytes in, typed replies out, and back. The scale client
(`client.py`) and the scale simulator (`firmware_sims.scale`) both build on this module, so the gateway and
its simulator can never disagree about a line layout.

MT-SICS (Mettler Toledo Standard Interface Command Set reference manual, level 0/1 commands)::

    host → scale   S<CR><LF>                         command id [arguments] CR LF, commands upper case
    scale → host   S<SP>S<SP><SP><SP><SP>100.00<SP>g<CR><LF>
                   │    │    └ value, right-aligned (the padding width varies by model) then unit
                   │    └ status: S stable · D dynamic · A done · I not executable · L logical error
                   │              + overload · - underload
                   └ reply id: the command's id, except SI/SIR replies carry "S" and @ replies carry "I4"
    general errors, a whole line:   ES syntax · ET transmission · EL logical

    Fields are separated by one or more spaces (split on whitespace, never on columns); strings may be
    quoted ("0123456789"), and a quoted string may contain spaces.

NCI / Avery Weigh-Tronix ECR protocol (Avery Weigh-Tronix 7821 manual p.25; status bits per the Ohaus
Aviator 7000 NCI section)::

    host → scale   W<CR>
    scale → host   <LF>  1.25lb<CR><LF>hh<CR><ETX>       weight (right-aligned), unit, status bytes
                   S<CR> → <LF>hh<CR><ETX>    Z<CR> → <LF>hh<CR><ETX>    unknown → <LF>?<CR><ETX>

    status byte 1   b0 motion · b1 at zero · b2 RAM error · b3 EEPROM error · b4 b5 always 1 · b6 b7 0
    status byte 2   b0 under capacity · b1 over capacity · b2 ROM error · b3 faulty calibration · b4 b5 1
    (an optional third byte, range/net flags on some models, is validated and otherwise ignored)

Decoders are fed bytes in any chunking and hand out one complete reply at a time: `NEED_MORE` until a line
(frame) is complete, `ProtocolError` for a malformed one — which is already dropped, so the next call
continues with the next line (resynchronisation at the line terminator). A line longer than the limit is
dropped up to the next terminator with one `ProtocolError`, so a babbling line cannot grow the buffer.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final

MAX_LINE_BYTES: Final = 256
"""Longest MT-SICS line accepted (terminator included); real replies stay well under 100 bytes."""

MAX_NCI_FRAME_BYTES: Final = 64
"""Longest NCI frame accepted (ETX included); a weight frame is 15-17 bytes."""

CR: Final = b"\r"
LF: Final = b"\n"
ETX: Final = b"\x03"


class ProtocolError(ValueError):
    """Bytes or text that cannot be a line/frame of the scale protocol."""


class NeedMore(enum.Enum):
    """The buffer holds no complete line or frame yet."""

    NEED_MORE = "need more"


NEED_MORE: Final = NeedMore.NEED_MORE


# --- framing ------------------------------------------------------------------------------------------------


class LineFramer:
    """Cuts a byte stream into lines ending in one terminator byte, with a length limit.

    Pure buffer logic shared by every decoder here: MT-SICS lines end in LF (the CR before it is checked by
    the MT-SICS decoder), NCI commands end in CR, NCI replies end in ETX.
    """

    def __init__(self, end: bytes, max_bytes: int) -> None:
        if len(end) != 1:
            raise ValueError("the terminator is one byte")
        if max_bytes < 2:
            raise ValueError("max_bytes must leave room for content and terminator")
        self.end = end
        self.max_bytes = max_bytes
        self._buffer = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        self._buffer += data

    @property
    def _too_long(self) -> str:
        # One message whether the limit is hit before or after the terminator arrives, so the result does
        # not depend on how the bytes were chunked.
        return f"line longer than {self.max_bytes} bytes; dropped up to the next line end"

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a line."""
        return len(self._buffer)

    def next_line(self) -> bytes | NeedMore:
        """The next line's content without its terminator, or NEED_MORE.

        Raises `ProtocolError` once for an over-long line; its bytes are dropped up to the next terminator.
        """
        buf = self._buffer
        idx = buf.find(self.end)
        if self._discarding:
            if idx < 0:
                buf.clear()
                return NEED_MORE
            del buf[: idx + 1]
            self._discarding = False
            idx = buf.find(self.end)
        if idx < 0:
            if len(buf) >= self.max_bytes:
                buf.clear()
                self._discarding = True
                raise ProtocolError(self._too_long)
            return NEED_MORE
        if idx + 1 > self.max_bytes:
            del buf[: idx + 1]
            raise ProtocolError(self._too_long)
        line = bytes(buf[:idx])
        del buf[: idx + 1]
        return line


def _printable(text: str) -> str:
    for ch in text:
        if not (" " <= ch <= "~" or ch == "\t"):
            raise ProtocolError(f"non-printable character {ch!r} in line")
    return text


def _ascii_text(raw: bytes) -> str:
    for byte in raw:
        if not (0x20 <= byte <= 0x7E or byte == 0x09):
            raise ProtocolError(f"non-printable byte 0x{byte:02x} in line")
    return raw.decode("ascii")


# --- MT-SICS ------------------------------------------------------------------------------------------------

MT_STATUSES: Final = frozenset({"S", "D", "A", "I", "L", "+", "-"})
"""Reply status tokens (MT-SICS reference manual, "Format of responses")."""

MT_ERROR_LINES: Final = {"ES": "syntax", "ET": "transmission", "EL": "logical"}
"""General error replies, each a whole line (MT-SICS reference manual, "Error messages")."""

MT_WEIGHT_REPLY_IDS: Final = frozenset({"S", "T", "TA", "TI"})
"""Reply ids that carry `<value> <unit>` when their status is S, D or A (S/SI/SIR, T, TA, TI)."""

_CMD_RE: Final = re.compile(r"(?:@|[A-Z][A-Z0-9]{0,7})\Z")
_NUMBER_RE: Final = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)\Z")
_UNIT_RE: Final = re.compile(r"[A-Za-z%][A-Za-z0-9%/]{0,7}\Z")
_WS: Final = " \t"


def _tokens(text: str) -> list[str]:
    """Split an MT-SICS line on runs of whitespace; a double-quoted string is one token, quotes stripped."""
    tokens: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in _WS:
            i += 1
            continue
        if ch == '"':
            end = text.find('"', i + 1)
            if end < 0:
                raise ProtocolError("unterminated quoted string")
            tokens.append(text[i + 1 : end])
            i = end + 1
            if i < n and text[i] not in _WS:
                raise ProtocolError("text directly after a quoted string")
            continue
        j = i
        while j < n and text[j] not in _WS and text[j] != '"':
            j += 1
        if j < n and text[j] == '"':
            raise ProtocolError("quote inside a field")
        tokens.append(text[i:j])
        i = j
    return tokens


@dataclass(frozen=True, slots=True)
class MtResponse:
    """One MT-SICS reply line, fields as sent (quotes stripped).

    A general error line (`ES`, `ET`, `EL`) has `cmd` set to that token and an empty `status`. For weight
    replies (`MT_WEIGHT_REPLY_IDS` with status S, D or A) `args` is exactly `(value, unit)`.
    """

    cmd: str
    status: str
    args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.status == "":
            if self.cmd not in MT_ERROR_LINES or self.args:
                raise ProtocolError(f"{self.cmd!r} reply has no status")
            return
        if not _CMD_RE.match(self.cmd):
            raise ProtocolError(f"{self.cmd!r} is not an MT-SICS command id")
        if self.status not in MT_STATUSES:
            raise ProtocolError(f"{self.status!r} is not an MT-SICS status")
        if self.carries_weight:
            if len(self.args) != 2:
                raise ProtocolError(f"{self.cmd} {self.status} reply needs <value> <unit>, got {self.args}")
            if not _NUMBER_RE.match(self.args[0]):
                raise ProtocolError(f"weight value {self.args[0]!r} is not a number")
            if not _UNIT_RE.match(self.args[1]):
                raise ProtocolError(f"unit {self.args[1]!r} is not a unit")
        for arg in self.args:
            if '"' in arg or any(not 0x20 <= ord(c) <= 0x7E for c in arg):
                raise ProtocolError(f"field {arg!r} holds a quote or a non-printable character")

    @property
    def carries_weight(self) -> bool:
        """True for S/SI/SIR, T, TA, TI replies that report a value and a unit."""
        return self.cmd in MT_WEIGHT_REPLY_IDS and self.status in {"S", "D", "A"}

    @property
    def value(self) -> float | None:
        """The weight value of a weight reply, else None."""
        return float(self.args[0]) if self.carries_weight else None

    @property
    def unit(self) -> str | None:
        """The unit of a weight reply, else None."""
        return self.args[1] if self.carries_weight else None

    @property
    def stable(self) -> bool | None:
        """True for a stable weight (status S), False for a dynamic one (D), None for anything else."""
        if not self.carries_weight:
            return None
        if self.status == "S":
            return True
        if self.status == "D":
            return False
        return None

    @property
    def error(self) -> str | None:
        """'syntax', 'transmission' or 'logical' for a general error line, else None."""
        return MT_ERROR_LINES[self.cmd] if self.status == "" else None


@dataclass(frozen=True, slots=True)
class MtCommand:
    """One MT-SICS command line as the scale receives it."""

    cmd: str
    args: tuple[str, ...] = ()


def parse_mtsics_response(text: str) -> MtResponse:
    """Parse one reply line without its CR LF."""
    tokens = _tokens(_printable(text))
    if not tokens:
        raise ProtocolError("empty line")
    head = tokens[0]
    if head in MT_ERROR_LINES:
        if len(tokens) != 1:
            raise ProtocolError(f"{head} error line with extra fields")
        return MtResponse(head, "")
    if not _CMD_RE.match(head):
        raise ProtocolError(f"{head[:16]!r} is not an MT-SICS reply id")
    if len(tokens) < 2:
        raise ProtocolError(f"reply {head} has no status")
    return MtResponse(head, tokens[1], tuple(tokens[2:]))


def parse_mtsics_command(text: str) -> MtCommand:
    """Parse one command line without its CR LF (the simulator's side)."""
    tokens = _tokens(_printable(text))
    if not tokens:
        raise ProtocolError("empty command line")
    if not _CMD_RE.match(tokens[0]):
        raise ProtocolError(f"{tokens[0][:16]!r} is not an MT-SICS command")
    return MtCommand(tokens[0], tuple(tokens[1:]))


def _quote(arg: str, *, force: bool) -> str:
    if '"' in arg or any(not 0x20 <= ord(c) <= 0x7E for c in arg):
        raise ProtocolError(f"field {arg!r} cannot be sent: quote or non-printable character")
    if force or arg == "" or any(c in _WS for c in arg):
        return f'"{arg}"'
    return arg


def encode_mtsics_command(cmd: str, *args: str) -> bytes:
    """`S` → b'S\\r\\n'; arguments with spaces are quoted."""
    if not _CMD_RE.match(cmd):
        raise ProtocolError(f"{cmd!r} is not an MT-SICS command")
    return " ".join([cmd, *(_quote(a, force=False) for a in args)]).encode("ascii") + b"\r\n"


def encode_mtsics_response(resp: MtResponse, *, value_width: int = 10, quote_strings: bool = False) -> bytes:
    """One reply line with CR LF; a weight value is right-aligned in `value_width` columns like real balances.

    `quote_strings` quotes every non-weight field, as real devices do for identification strings
    (`I4 A "0123456789"`).
    """
    if resp.status == "":
        return resp.cmd.encode("ascii") + b"\r\n"
    fields = [resp.cmd, resp.status]
    if resp.carries_weight:
        fields += [resp.args[0].rjust(value_width), resp.args[1]]
    else:
        fields += [_quote(a, force=quote_strings) for a in resp.args]
    return " ".join(fields).encode("ascii") + b"\r\n"


def mtsics_weight_reply(cmd: str, status: str, value: float, unit: str, *, decimals: int = 2) -> MtResponse:
    """A weight reply with the value rendered to the scale's display resolution."""
    return MtResponse(cmd, status, (f"{value:.{decimals}f}", unit))


class _MtSicsLines:
    def __init__(self, max_line_bytes: int) -> None:
        self._framer = LineFramer(LF, max_line_bytes)

    def feed(self, data: bytes) -> None:
        """Append bytes received from the line."""
        self._framer.feed(data)

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete line held."""
        return self._framer.buffered

    def _next_text(self) -> str | NeedMore:
        raw = self._framer.next_line()
        if raw is NEED_MORE:
            return NEED_MORE
        assert isinstance(raw, bytes)  # noqa: S101 - narrowing for mypy
        if not raw.endswith(CR):
            raise ProtocolError("line ends in LF without CR")
        return _ascii_text(raw[:-1])


class MtSicsDecoder(_MtSicsLines):
    """Scale → host bytes in, `MtResponse`s out (the client's side)."""

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        super().__init__(max_line_bytes)

    def next_response(self) -> MtResponse | NeedMore:
        """The next reply, NEED_MORE, or `ProtocolError` for a malformed line (already dropped)."""
        text = self._next_text()
        if text is NEED_MORE:
            return NEED_MORE
        assert isinstance(text, str)  # noqa: S101 - narrowing for mypy
        return parse_mtsics_response(text)


class MtSicsCommandDecoder(_MtSicsLines):
    """Host → scale bytes in, `MtCommand`s out (the simulator's side)."""

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        super().__init__(max_line_bytes)

    def next_command(self) -> MtCommand | NeedMore:
        """The next command, NEED_MORE, or `ProtocolError` for a malformed line (already dropped)."""
        text = self._next_text()
        if text is NEED_MORE:
            return NEED_MORE
        assert isinstance(text, str)  # noqa: S101 - narrowing for mypy
        return parse_mtsics_command(text)


# --- NCI / ECR ----------------------------------------------------------------------------------------------

NCI_BAD_COMMAND: Final = "bad command"

_NCI_WEIGHT_RE: Final = re.compile(
    r" *(?:(?P<sign>[+-]) *)?(?P<num>\d+(?:\.\d*)?|\.\d+) *(?P<unit>[A-Za-z]{1,3})\Z"
)
_NCI_BLANK_RE: Final = re.compile(r" *(?P<blank>[\^_-]+) *(?P<unit>[A-Za-z]{1,3})?\Z")
"""Over/under capacity displays (`^^^^^^`, `------`, `______`): no weight, only status."""


@dataclass(frozen=True, slots=True)
class NciStatus:
    """The two NCI status bytes as named flags (bit layout in the module docstring)."""

    motion: bool = False
    at_zero: bool = False
    ram_error: bool = False
    eeprom_error: bool = False
    under_capacity: bool = False
    over_capacity: bool = False
    rom_error: bool = False
    faulty_calibration: bool = False

    def to_bytes(self) -> bytes:
        """The two status bytes, bits 4 and 5 set as the protocol requires."""
        b1 = 0x30 | self.motion | self.at_zero << 1 | self.ram_error << 2 | self.eeprom_error << 3
        b2 = 0x30 | self.under_capacity | self.over_capacity << 1 | self.rom_error << 2
        b2 |= self.faulty_calibration << 3
        return bytes((b1, b2))

    @classmethod
    def from_bytes(cls, data: bytes) -> NciStatus:
        """Decode two (or three) status bytes; any byte without the fixed bits is a `ProtocolError`."""
        if len(data) not in (2, 3):
            raise ProtocolError(f"NCI status is 2 or 3 bytes, got {len(data)}")
        for byte in data:
            if byte & 0xF0 != 0x30:
                raise ProtocolError(f"NCI status byte 0x{byte:02x} lacks the fixed bits 0011xxxx")
        b1, b2 = data[0], data[1]
        return cls(
            motion=bool(b1 & 1),
            at_zero=bool(b1 & 2),
            ram_error=bool(b1 & 4),
            eeprom_error=bool(b1 & 8),
            under_capacity=bool(b2 & 1),
            over_capacity=bool(b2 & 2),
            rom_error=bool(b2 & 4),
            faulty_calibration=bool(b2 & 8),
        )

    def as_dict(self) -> dict[str, bool]:
        """Flag name → value, in protocol order."""
        return {name: bool(getattr(self, name)) for name in self.__slots__}

    @property
    def fault(self) -> bool:
        """A RAM, EEPROM, ROM or calibration fault: the scale needs service."""
        return self.ram_error or self.eeprom_error or self.rom_error or self.faulty_calibration


@dataclass(frozen=True, slots=True)
class NciReply:
    """One NCI reply frame: a weight frame (weight may be None on over/under capacity), a status-only frame
    (S, Z), or the bad-command frame (`error` set, `status` None)."""

    status: NciStatus | None
    weight: float | None = None
    unit: str | None = None
    error: str | None = None

    @property
    def stable(self) -> bool:
        """Not in motion (the status says so); False when there is no status."""
        return self.status is not None and not self.status.motion


def parse_nci_frame(frame: bytes) -> NciReply:
    """Parse one frame's bytes up to, not including, the ETX."""
    if not frame.startswith(LF):
        raise ProtocolError("NCI frame does not start with LF")
    if not frame.endswith(CR) or len(frame) < 3:
        raise ProtocolError("NCI frame does not end with CR ETX")
    inner = frame[1:-1]
    if inner == b"?":
        return NciReply(status=None, error=NCI_BAD_COMMAND)
    parts = inner.split(b"\r\n")
    if len(parts) == 1:
        return NciReply(status=NciStatus.from_bytes(parts[0]))
    if len(parts) != 2:
        raise ProtocolError("NCI frame has more than two records")
    status = NciStatus.from_bytes(parts[1])
    text = _ascii_text(parts[0])
    if (m := _NCI_WEIGHT_RE.match(text)) is not None:
        value = float(m["num"])
        return NciReply(status=status, weight=-value if m["sign"] == "-" else value, unit=m["unit"])
    if (m := _NCI_BLANK_RE.match(text)) is not None:
        return NciReply(status=status, weight=None, unit=m["unit"])
    raise ProtocolError(f"NCI weight field {text[:16]!r} is not <value><unit>")


def encode_nci_command(cmd: str) -> bytes:
    """`W` → b'W\\r'."""
    if not re.fullmatch(r"[A-Z]{1,4}", cmd):
        raise ProtocolError(f"{cmd!r} is not an NCI command")
    return cmd.encode("ascii") + CR


def encode_nci_reply(reply: NciReply, *, decimals: int = 2, width: int = 7) -> bytes:
    """One reply frame; a weight is right-aligned in `width` columns (the manual's `xxxx.xx`)."""
    if reply.error is not None:
        return LF + b"?" + CR + ETX
    if reply.status is None:
        raise ProtocolError("an NCI reply needs a status or an error")
    status = reply.status.to_bytes()
    if reply.unit is None and reply.weight is None:
        return LF + status + CR + ETX
    unit = reply.unit or ""
    if not re.fullmatch(r"[A-Za-z]{1,3}", unit):
        raise ProtocolError(f"NCI unit {unit!r} is not 1-3 letters")
    field = "^" * width if reply.weight is None else f"{reply.weight:.{decimals}f}".rjust(width)
    return LF + field.encode("ascii") + unit.encode("ascii") + CR + LF + status + CR + ETX


class NciDecoder:
    """Scale → host bytes in, `NciReply`s out (frames end in ETX)."""

    def __init__(self, max_frame_bytes: int = MAX_NCI_FRAME_BYTES) -> None:
        self._framer = LineFramer(ETX, max_frame_bytes)

    def feed(self, data: bytes) -> None:
        """Append bytes received from the line."""
        self._framer.feed(data)

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held."""
        return self._framer.buffered

    def next_reply(self) -> NciReply | NeedMore:
        """The next reply, NEED_MORE, or `ProtocolError` for a malformed frame (already dropped)."""
        raw = self._framer.next_line()
        if raw is NEED_MORE:
            return NEED_MORE
        assert isinstance(raw, bytes)  # noqa: S101 - narrowing for mypy
        return parse_nci_frame(raw)


class NciCommandDecoder:
    """Host → scale bytes in, command letters out (commands end in CR; a stray LF before one is ignored)."""

    def __init__(self, max_line_bytes: int = 16) -> None:
        self._framer = LineFramer(CR, max_line_bytes)

    def feed(self, data: bytes) -> None:
        """Append bytes received from the line."""
        self._framer.feed(data)

    def next_command(self) -> str | NeedMore:
        """The next command (`W`, `S`, `Z`, or any other letters — the scale answers those with `?`)."""
        raw = self._framer.next_line()
        if raw is NEED_MORE:
            return NEED_MORE
        assert isinstance(raw, bytes)  # noqa: S101 - narrowing for mypy
        text = _ascii_text(raw.lstrip(LF)).strip()
        if not text:
            raise ProtocolError("empty NCI command")
        return text


# --- units and the `shelfgate decode` entry points ---------------------------------------------------------

GRAMS_PER_UNIT: Final = {
    "g": 1.0,
    "kg": 1000.0,
    "mg": 0.001,
    "ct": 0.2,
    "lb": 453.59237,
    "oz": 28.349523125,
}
"""Exact definitions (the pound and ounce per the 1959 international yard and pound agreement)."""


def to_grams(value: float, unit: str) -> float | None:
    """The value in grams, or None for a unit that is not a mass (e.g. a counting or percent mode)."""
    factor = GRAMS_PER_UNIT.get(unit)
    return None if factor is None else value * factor


def decode_mtsics(line: str) -> dict[str, float | str | bool | None]:
    """`shelfgate decode mtsics LINE` → {weight, unit, stable, status}.

    `status` is the reply's status token (S, D, A, I, L, +, -) or the general error (ES, ET, EL); a trailing
    CR LF (real or typed as `\\r\\n`) is ignored.
    """
    text = line
    for suffix in ("\\r\\n", "\r\n", "\n", "\r"):
        if text.endswith(suffix):
            text = text[: -len(suffix)]
            break
    if "\r" in text or "\n" in text:
        raise ProtocolError("one MT-SICS line, please")
    if not text.isascii():
        raise ProtocolError("MT-SICS lines are ASCII")
    resp = parse_mtsics_response(text)
    return {
        "weight": resp.value,
        "unit": resp.unit,
        "stable": resp.stable is True,
        "status": resp.status or resp.cmd,
    }


def decode_nci(frame_hex: str) -> dict[str, float | str | bool | dict[str, bool] | None]:
    """`shelfgate decode nci HEX` → {weight, unit, stable, status: {flag: bool}} for one whole frame.

    The bad-command frame (`<LF>?<CR><ETX>`) carries neither weight nor status, so it is reported as a
    `ProtocolError` naming it.
    """
    try:
        raw = bytes.fromhex(frame_hex.strip())
    except ValueError as exc:
        raise ProtocolError(f"not hex: {exc}") from None
    if not raw.endswith(ETX):
        raise ProtocolError("NCI frame does not end with ETX")
    body = raw[:-1]
    if ETX in body:
        raise ProtocolError("more than one NCI frame")
    reply = parse_nci_frame(body)
    if reply.status is None:
        raise ProtocolError(f"the scale answered '?' ({reply.error})")
    return {
        "weight": reply.weight,
        "unit": reply.unit,
        "stable": reply.stable,
        "status": reply.status.as_dict(),
    }
