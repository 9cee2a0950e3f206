"""Sans-IO codec for serial/USB-CDC barcode scanners: line framing, AIM symbology ids, GS1 and member codes.

No asyncio, no ports, no clocks, no logging: bytes in, typed scans out. The scanner client (`client.py`) and
the scanner simulator (`firmware_sims.barcode`) both build on this module, so the gateway and its simulator
can never disagree about what a scan looks like on the wire.

One scan on the wire (a scanner in "serial/CDC" mode with the AIM prefix and a CR suffix enabled)::

    ] C 1 0 1 0 5 9 0 1 2 3 4 1 2 3 4 5 7 1 0 A B 1 2 GS 1 7 2 6 1 2 3 1 CR
    └─┬─┘ └─────────────────┬───────────────────────────────────────┘ └┬┘
      │     GS1 element string: (01) GTIN-14, (10) batch "AB12", GS,  │ line terminator: CR, LF or CR LF
      │     (17) expiry 2026-12-31. GS (0x1D) stands for FNC1 and     │ (configurable on every scanner)
      │     ends a variable-length field                              │
      AIM symbology identifier `]` + code character + modifier (ISO/IEC 15424): ]E0 EAN-13/UPC-A, ]E4 EAN-8,
      ]I1 ITF-14, ]C1 GS1-128, ]e0 GS1 DataBar, ]d2 GS1 DataMatrix, ]Q3 GS1 QR, ]J1 GS1 DotCode.

Scans decode to `ProductScan` (GTIN plus the AIs a shelf gateway uses: batch 10, expiry 17, serial 21, net
weight 310n kg, price 392n, and the weight or price embedded in a variable-measure in-store code with prefix
2x — a Restricted Circulation Number whose layout is set by the national GS1 member organisation, hence
`ScanConfig.rcn_region`) or to `MemberScan` (loyalty card or member QR, matched by configurable regexes and
never treated as a product). GS1 parsing is `biip`'s; EAN/UPC check digits are verified with `python-stdnum`
(GS1 General Specifications, standard check digit: mod 10 with weights 3/1 from the right).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final

from biip import ParseConfig, ParseError
from biip.gs1_digital_link_uris import GS1DigitalLinkURI
from biip.gs1_element_strings import GS1ElementString
from biip.gs1_messages import GS1Message
from biip.gtin import Gtin
from biip.rcn import Rcn
from biip.upc import Upc
from stdnum import ean
from stdnum.exceptions import InvalidChecksum, ValidationError

GS: Final = "\x1d"
"""ASCII group separator: how scanners transmit a field-separating FNC1 inside a GS1 element string."""

DEFAULT_MAX_LINE_BYTES: Final = 1024
"""Longest line the framer keeps. A GS1 DataMatrix/QR holds at most ~300 data characters in retail use; a
longer run without a terminator is a scanner in the wrong mode or line noise, not a scan."""

DEFAULT_MEMBER_PATTERNS: Final = (
    r"^MBR[0-9]{10}$",
    r"^shelfgate://member/(?P<member_id>[A-Za-z0-9_-]{1,64})$",
)
"""Loyalty card (Code 128 `MBR` + 10 digits) and member QR payload; a `member_id` group, if any, is the id."""


class RejectReason(StrEnum):
    """Why a line was not a scan; the client counts rejections per reason."""

    TOO_LONG = "too_long"
    """No terminator within the framer's maximum line length (wrong scanner mode, noise); resynced."""
    NOT_TEXT = "not_text"
    """Bytes that are not UTF-8 text, or control characters other than GS: line garbage."""
    BAD_CHECK_DIGIT = "bad_check_digit"
    """A GTIN (or the variable measure of an in-store code) whose check digit does not match."""
    MALFORMED = "malformed"
    """Text that claims a symbology or GS1 structure but does not parse as one."""
    NOT_A_PRODUCT = "not_a_product"
    """A valid barcode that carries no GTIN and is no member code (e.g. an SSCC pallet label, a Code 39)."""
    PARTIAL = "partial"
    """A half line left in the framer when the port closed (unplug, shutdown)."""


class ProtocolError(ValueError):
    """Bytes or text that cannot be a scan; `reason` classifies it for the health counters."""

    def __init__(self, message: str, reason: RejectReason = RejectReason.MALFORMED) -> None:
        super().__init__(message)
        self.reason = reason


class Terminator(StrEnum):
    """Line suffixes a scanner can be configured to send (every scanner's "suffix" setting)."""

    CR = "\r"
    LF = "\n"
    CRLF = "\r\n"


# --- framing -------------------------------------------------------------------------------------------------


class LineFramer:
    """Split a scanner's byte stream into lines at CR and/or LF.

    Feed bytes as they arrive, then call `next_line()` until it returns None ("need more bytes"). CR, LF and
    CR LF all end a line; the empty "line" between CR and LF (and any blank line) is skipped. A line longer
    than `max_line_bytes` raises `ProtocolError(TOO_LONG)` once, and the framer discards bytes up to the next
    terminator (resync) so the following scan decodes normally.
    """

    __slots__ = ("_buf", "_discarding", "max_line_bytes")

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be positive")
        self.max_line_bytes = max_line_bytes
        self._buf = bytearray()
        self._discarding = False

    @property
    def pending_bytes(self) -> int:
        """Bytes of an unfinished line held (0 while discarding an overlong one)."""
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        self._buf += data

    def next_line(self) -> bytes | None:
        """The next complete non-empty line without its terminator, or None when more bytes are needed."""
        while True:
            cut = _first_terminator(self._buf)
            if cut < 0:
                if len(self._buf) > self.max_line_bytes:
                    was_discarding = self._discarding
                    self._buf.clear()
                    self._discarding = True
                    if not was_discarding:
                        raise ProtocolError(
                            f"no line terminator within {self.max_line_bytes} bytes; resyncing at the next one",
                            RejectReason.TOO_LONG,
                        )
                return None
            line = bytes(self._buf[:cut])
            del self._buf[: cut + 1]
            if self._discarding:
                self._discarding = False
                continue
            if not line:
                continue
            if len(line) > self.max_line_bytes:
                raise ProtocolError(
                    f"line of {len(line)} bytes exceeds {self.max_line_bytes}", RejectReason.TOO_LONG
                )
            return line

    def reset(self) -> int:
        """Forget any half line (the port closed); return how many bytes were dropped."""
        dropped = len(self._buf)
        self._buf.clear()
        self._discarding = False
        return dropped


def _first_terminator(buf: bytearray) -> int:
    cr, lf = buf.find(b"\r"), buf.find(b"\n")
    if cr < 0:
        return lf
    if lf < 0:
        return cr
    return min(cr, lf)


# --- symbology identifiers -----------------------------------------------------------------------------------

_AIM_RE: Final = re.compile(r"^\][A-Za-z][0-9A-Za-z]")

SYMBOLOGY_NAMES: Final[dict[str, str]] = {
    "]E0": "EAN-13",
    "]E3": "EAN-13+add-on",
    "]E4": "EAN-8",
    "]I1": "ITF-14",
    "]C1": "GS1-128",
    "]e0": "GS1 DataBar",
    "]d2": "GS1 DataMatrix",
    "]Q3": "GS1 QR",
    "]J1": "GS1 DotCode",
    "]C0": "Code 128",
    "]A0": "Code 39",
    "]d1": "DataMatrix",
    "]Q1": "QR",
}
"""AIM symbology identifiers (ISO/IEC 15424, as listed for GS1 symbologies in the GS1 General Specs)."""

_GTIN_SYMBOLOGIES: Final = frozenset({"]E0", "]E3", "]E4", "]I1"})
"""Symbologies whose data is a bare GTIN (EAN/UPC, ITF-14)."""
_GS1_SYMBOLOGIES: Final = frozenset({"]C1", "]e0", "]d2", "]Q3", "]J1"})
"""Symbologies whose data is a GS1 element string (FNC1 in first position)."""


def split_symbology(text: str) -> tuple[str | None, str]:
    """(AIM symbology identifier or None, data): `"]E05901234123457"` → `("]E0", "5901234123457")`."""
    if _AIM_RE.match(text):
        return text[:3], text[3:]
    return None, text


def symbology_name(symbology_id: str | None) -> str | None:
    """Readable name of an AIM identifier; an unknown identifier names itself."""
    if symbology_id is None:
        return None
    return SYMBOLOGY_NAMES.get(symbology_id, symbology_id)


# --- typed scans ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProductScan:
    """A product barcode, decoded.

    `gtin` is always the 14-digit form (GS1 recommends storing GTINs right-justified in 14 digits, so
    an EAN-13, a UPC-A and the same item in a GS1-128 compare equal). For a variable-measure in-store code
    it is the code as scanned (measure included); `net_weight_kg`/`price` carry the embedded measure.
    """

    gtin: str
    batch: str | None = None
    expiry: dt.date | None = None
    serial: str | None = None
    net_weight_kg: Decimal | None = None
    price: Decimal | None = None
    symbology: str | None = None
    raw: str = ""


@dataclass(frozen=True, slots=True)
class MemberScan:
    """A loyalty card or member QR code: identifies a person, never a product."""

    member_id: str
    raw: str = ""


Scan = ProductScan | MemberScan


@dataclass(frozen=True, slots=True)
class ScanConfig:
    """How to read this store's scans; frozen, built once at start.

    `rcn_region` is the ISO country code (e.g. "se", "no", "de") whose GS1 member organisation defines the
    layout of in-store variable-measure codes (prefix 20-29); without it those codes still decode, but their
    embedded weight/price is not extracted.
    """

    member_patterns: tuple[str, ...] = DEFAULT_MEMBER_PATTERNS
    rcn_region: str | None = None
    rcn_verify_variable_measure: bool = True
    separator_chars: tuple[str, ...] = (GS,)
    _compiled: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)
    _biip: ParseConfig = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        compiled = []
        for pattern in self.member_patterns:
            try:
                compiled.append(re.compile(pattern))
            except re.error as exc:
                raise ValueError(f"member pattern {pattern!r} is not a valid regex: {exc}") from exc
        object.__setattr__(self, "_compiled", tuple(compiled))
        object.__setattr__(
            self,
            "_biip",
            ParseConfig(
                rcn_region=self.rcn_region,
                rcn_verify_variable_measure=self.rcn_verify_variable_measure,
                separator_chars=self.separator_chars,
            ),
        )

    def match_member(self, text: str) -> str | None:
        """The member id if `text` is a member code, else None."""
        for pattern in self._compiled:
            m = pattern.match(text)
            if m is None:
                continue
            groups = m.groupdict()
            if groups.get("member_id"):
                return groups["member_id"]
            if m.groups() and m.group(1):
                return m.group(1)
            return m.group(0)
        return None


DEFAULT_CONFIG: Final = ScanConfig()


# --- decoding ------------------------------------------------------------------------------------------------


def line_to_text(line: bytes) -> str:
    """A framed line as text; control characters other than GS mean line garbage (`NOT_TEXT`)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"not UTF-8 text: {line[:32]!r}", RejectReason.NOT_TEXT) from exc
    for ch in text:
        if (ord(ch) < 0x20 and ch != GS) or ord(ch) == 0x7F:
            raise ProtocolError(f"control character {ord(ch):#04x} in {text[:32]!r}", RejectReason.NOT_TEXT)
    return text


def decode_scan(line: bytes | str, config: ScanConfig = DEFAULT_CONFIG) -> Scan:
    """Decode one framed line (AIM prefix optional) into a product or member scan; ProtocolError otherwise."""
    raw = line_to_text(line) if isinstance(line, bytes) else line
    symbology_id, data = split_symbology(raw)
    if not data:
        raise ProtocolError(f"{raw!r} carries no data", RejectReason.MALFORMED)
    member_id = config.match_member(data)
    if member_id is not None:
        return MemberScan(member_id=member_id, raw=raw)
    name = symbology_name(symbology_id)
    if symbology_id == "]E0" and len(data) in (6, 7, 8):
        return _product_from_gtin(_expand_upc_e(data), config, "UPC-E", raw)
    if symbology_id in _GTIN_SYMBOLOGIES:
        digits = data[:13] if symbology_id == "]E3" and len(data) in (15, 18) else data
        return _product_from_gtin(digits, config, name, raw)
    if symbology_id in _GS1_SYMBOLOGIES:
        return _product_from_elements(_parse_element_string(data, config), config, name, raw)
    if symbology_id is not None:
        raise ProtocolError(
            f"{name} code {data[:32]!r} is neither a product nor a member", RejectReason.NOT_A_PRODUCT
        )
    # No AIM prefix (the scanner is not configured to send one): infer from the data's shape.
    if data.startswith("("):
        return _product_from_elements(_parse_hri(data, config), config, name, raw)
    if data.startswith(("https://", "http://")):
        return _product_from_elements(_parse_digital_link(data, config), config, name, raw)
    if data.isascii() and data.isdigit() and len(data) in (8, 12, 13, 14):
        # EAN-8, UPC-A, EAN-13, ITF-14: the lengths a retail scanner sends for linear product codes.
        return _product_from_gtin(data, config, name, raw)
    if data.isascii() and data.isdigit() and len(data) == 6:
        return _product_from_gtin(_expand_upc_e(data), config, "UPC-E", raw)
    return _product_from_elements(_parse_element_string(data, config), config, name, raw)


def decode_gs1(
    text: str,
    *,
    rcn_region: str | None = None,
    rcn_verify_variable_measure: bool = True,
    separator_chars: Sequence[str] = (GS,),
) -> dict[str, Any]:
    """`shelfgate decode gs1 VALUE`: a GS1 element string (GS = FNC1) or HRI `(01)…(10)…` → JSON-ready dict.

    Keys: gtin (14 digits), batch, expiry (ISO date), serial, net_weight_kg, price, hri — absent fields are
    omitted. A leading AIM identifier is accepted and ignored. Raises `ProtocolError` with a one-line reason.
    """
    config = ScanConfig(
        member_patterns=(),
        rcn_region=rcn_region,
        rcn_verify_variable_measure=rcn_verify_variable_measure,
        separator_chars=tuple(separator_chars),
    )
    symbology_id, data = split_symbology(text.strip("\r\n"))
    if not data:
        raise ProtocolError("empty GS1 value")
    if symbology_id in _GTIN_SYMBOLOGIES:
        # A bare EAN/UPC/ITF-14 read: the same as the element string (01) + its GTIN-14.
        data = "01" + _check_gtin(data[:13] if symbology_id == "]E3" and len(data) in (15, 18) else data)
    try:
        message = _parse_hri(data, config) if data.startswith("(") else _parse_element_string(data, config)
    except ProtocolError as exc:
        if data.isascii() and data.isdigit() and len(data) in (8, 12, 13, 14):
            raise ProtocolError(f"{exc} (a bare EAN/UPC needs its AIM prefix, e.g. ]E0{data})") from exc
        raise
    fields = _gs1_fields(message.element_strings, config)
    out: dict[str, Any] = {}
    if fields.gtin is not None:
        out["gtin"] = fields.gtin
    if fields.batch is not None:
        out["batch"] = fields.batch
    if fields.expiry is not None:
        out["expiry"] = fields.expiry.isoformat()
    if fields.serial is not None:
        out["serial"] = fields.serial
    if fields.net_weight_kg is not None:
        out["net_weight_kg"] = float(fields.net_weight_kg)
    if fields.price is not None:
        out["price"] = float(fields.price)
    out["hri"] = message.as_hri()
    return out


def encode_scan(data: str, symbology_id: str | None = None, terminator: Terminator = Terminator.CR) -> bytes:
    """The bytes a scanner sends for one scan: optional AIM identifier, data, terminator (simulator side)."""
    if symbology_id is not None and not (len(symbology_id) == 3 and _AIM_RE.match(symbology_id)):
        raise ValueError(f"{symbology_id!r} is not an AIM symbology identifier like ']E0'")
    if "\r" in data or "\n" in data:
        raise ValueError("scan data cannot contain CR or LF: they end the line")
    return ((symbology_id or "") + data + terminator.value).encode("utf-8")


def decode_stream(data: bytes, config: ScanConfig = DEFAULT_CONFIG) -> list[Scan | ProtocolError]:
    """Frame and decode a whole byte string; rejections are returned in place, not raised (tests, tools)."""
    framer = LineFramer()
    framer.feed(data)
    out: list[Scan | ProtocolError] = []
    while True:
        try:
            line = framer.next_line()
            if line is None:
                return out
            out.append(decode_scan(line, config))
        except ProtocolError as exc:
            out.append(exc)


# --- internals -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Gs1Fields:
    gtin: str | None = None
    batch: str | None = None
    expiry: dt.date | None = None
    serial: str | None = None
    net_weight_kg: Decimal | None = None
    price: Decimal | None = None


def _check_gtin(digits: str) -> str:
    """Verify a GTIN's check digit with python-stdnum; return it as GTIN-14."""
    if not (digits.isascii() and digits.isdigit()) or len(digits) not in (8, 12, 13, 14):
        raise ProtocolError(f"{digits[:32]!r} is not an 8/12/13/14-digit GTIN", RejectReason.MALFORMED)
    try:
        ean.validate(digits)
    except InvalidChecksum as exc:
        raise ProtocolError(
            f"GTIN {digits} has a bad check digit (expected {ean.calc_check_digit(digits[:-1])})",
            RejectReason.BAD_CHECK_DIGIT,
        ) from exc
    except ValidationError as exc:
        raise ProtocolError(f"GTIN {digits}: {exc}", RejectReason.MALFORMED) from exc
    return digits.zfill(14)


def _expand_upc_e(data: str) -> str:
    """UPC-E (6 digits, or 7/8 with number system and check digit) → the UPC-A it zero-suppresses."""
    try:
        return Upc.parse(data).as_upc_a()
    except (ParseError, ValueError) as exc:  # biip raises ParseError; ValueError guards odd input
        reason = RejectReason.BAD_CHECK_DIGIT if "check digit" in str(exc) else RejectReason.MALFORMED
        raise ProtocolError(f"not a UPC-E: {_one_line(exc)}", reason) from exc


def _variable_measure(gtin: Gtin | None) -> tuple[Decimal | None, Decimal | None]:
    if isinstance(gtin, Rcn):
        return gtin.weight, gtin.price
    return None, None


def _parse_gtin(digits: str, config: ScanConfig) -> Gtin:
    _check_gtin(digits)
    try:
        return Gtin.parse(digits, config=config._biip)
    except (ParseError, ValueError) as exc:  # biip raises ParseError; ValueError guards odd input
        # The GTIN check digit passed above, so this is the variable-measure check digit of an in-store code.
        reason = RejectReason.BAD_CHECK_DIGIT if "check digit" in str(exc) else RejectReason.MALFORMED
        raise ProtocolError(_one_line(exc), reason) from exc


def _product_from_gtin(digits: str, config: ScanConfig, name: str | None, raw: str) -> ProductScan:
    gtin = _parse_gtin(digits, config)
    weight, price = _variable_measure(gtin)
    return ProductScan(
        gtin=gtin.as_gtin_14(),
        net_weight_kg=weight,
        price=price,
        symbology=name or _gtin_name(digits),
        raw=raw,
    )


def _gtin_name(digits: str) -> str:
    return {8: "EAN-8", 12: "UPC-A", 13: "EAN-13", 14: "ITF-14"}.get(len(digits), "GTIN")


def _one_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _parse_element_string(data: str, config: ScanConfig) -> GS1Message:
    try:
        return GS1Message.parse(data, config=config._biip)
    except (ParseError, ValueError) as exc:  # biip raises ParseError; ValueError guards odd input
        raise ProtocolError(f"not a GS1 element string: {_one_line(exc)}", RejectReason.MALFORMED) from exc


def _parse_hri(data: str, config: ScanConfig) -> GS1Message:
    try:
        return GS1Message.parse_hri(data, config=config._biip)
    except (ParseError, ValueError) as exc:  # biip raises ParseError; ValueError guards odd input
        raise ProtocolError(f"not GS1 HRI: {_one_line(exc)}", RejectReason.MALFORMED) from exc


def _parse_digital_link(data: str, config: ScanConfig) -> GS1Message:
    try:
        uri = GS1DigitalLinkURI.parse(data, config=config._biip)
    except (ParseError, ValueError) as exc:  # biip raises ParseError; ValueError guards odd input
        raise ProtocolError(f"not a GS1 Digital Link URI: {_one_line(exc)}", RejectReason.MALFORMED) from exc
    return GS1Message.from_element_strings(uri.element_strings)


def _gs1_fields(elements: Iterable[GS1ElementString], config: ScanConfig) -> _Gs1Fields:
    gtin = batch = serial = None
    expiry = None
    weight = price = None
    rcn_weight = rcn_price = None
    for element in elements:
        ai = element.ai.ai
        if ai == "01":
            parsed = _parse_gtin(element.value, config)
            gtin = parsed.as_gtin_14()
            rcn_weight, rcn_price = _variable_measure(parsed)
        elif ai == "10":
            batch = element.value
        elif ai == "17":
            expiry = element.date
        elif ai == "21":
            serial = element.value
        elif ai.startswith("310") and element.decimal is not None:
            weight = element.decimal
        elif ai.startswith("392") and element.decimal is not None:
            price = element.decimal
    return _Gs1Fields(
        gtin=gtin,
        batch=batch,
        expiry=expiry,
        serial=serial,
        net_weight_kg=weight if weight is not None else rcn_weight,
        price=price if price is not None else rcn_price,
    )


def _product_from_elements(
    message: GS1Message, config: ScanConfig, name: str | None, raw: str
) -> ProductScan:
    fields = _gs1_fields(message.element_strings, config)
    if fields.gtin is None:
        raise ProtocolError(
            f"GS1 data {message.as_hri()} carries no GTIN (AI 01)", RejectReason.NOT_A_PRODUCT
        )
    return ProductScan(
        gtin=fields.gtin,
        batch=fields.batch,
        expiry=fields.expiry,
        serial=fields.serial,
        net_weight_kg=fields.net_weight_kg,
        price=fields.price,
        symbology=name,
        raw=raw,
    )
