"""Receiving: inbound scans (a GTIN, a GS1-128 with a count, an SSCC pallet label) → `stock.received` lines.

What a receiving scan can be (GS1 General Specifications §3.2, §3.3.1, §3.6.6–3.6.7):

============================  =================================================================================
label                         booked as
============================  =================================================================================
EAN/UPC/ITF-14 or (01) alone  1 × that GTIN
(01) GTIN + (30) count        count × GTIN (AI 30: "variable count of items", up to 8 digits)
(02) GTIN + (37) count        count × GTIN (AI 02: GTIN of the trade items *contained* in a logistic unit; it
                              must go with AI 37, their count)
(00) SSCC alone               the lines the delivery note lists for that SSCC (a pallet received whole)
(00) SSCC + (02)/(37)         the label's own content; the SSCC is remembered so the pallet is booked once
============================  =================================================================================

A pallet (SSCC) is received once: a second scan of the same SSCC — in this receipt or, via `already_received`,
an earlier one — is refused, not added. Scans are idempotent by scan id (a replayed scan adds nothing).
GTINs must be in the catalogue when one is given (goods that the store cannot sell or count should be caught at
the door). SSCC check digits are verified (GS1 mod 10 over 17 digits), GTINs' too.

Why the raw text and not the barcode driver's `ProductScan`: the driver classifies an SSCC-only label and an
(02)+(37) label as "not a product" (they identify no trade item by AI 01), so a receiving scanner's wiring
passes the line text (`ProductScan.raw`, or the rejected line) to `parse_receiving_scan`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from biip import ParseConfig, ParseError
from biip.gs1_messages import GS1Message
from stdnum import ean

from cloud_bridge.contract import rfc3339
from drivers.barcode.protocol import GS, split_symbology
from edge.retail._files import Unreadable, csv_header, csv_rows, read_text
from edge.retail.catalogue import Catalogue, normalise_gtin
from edge.retail.errors import FileError, FileIssue, ReceivingError

COUNT_MAX: Final = 99_999_999
"""AI 30 and AI 37 carry up to 8 digits."""


def check_sscc(value: str) -> str:
    """18 digits with a valid GS1 check digit; `ReceivingError` otherwise."""
    digits = value.strip()
    if not (digits.isascii() and digits.isdigit() and len(digits) == 18):
        raise ReceivingError(f"SSCC must be 18 digits, got {value!r}")
    expected = ean.calc_check_digit(digits[:17])
    if digits[17] != expected:
        raise ReceivingError(f"SSCC {digits} has a wrong check digit (expected {expected})")
    return digits


@dataclass(frozen=True, slots=True)
class ReceivingScan:
    """One parsed receiving label."""

    kind: Literal["goods", "pallet"]
    gtin: str | None
    """GTIN-14 of the goods (None for a pallet to resolve through the delivery note)."""
    qty: int
    sscc: str | None = None
    raw: str = ""


def parse_receiving_scan(text: str, *, separator_chars: Sequence[str] = (GS,)) -> ReceivingScan:
    """Parse one scanner line (AIM prefix optional, GS = FNC1, or HRI with parentheses); `ReceivingError`."""
    raw = text.strip("\r\n")
    _, data = split_symbology(raw)
    if not data:
        raise ReceivingError("empty scan")
    if data.isascii() and data.isdigit() and len(data) in (8, 12, 13, 14):
        try:
            return ReceivingScan("goods", normalise_gtin(data), 1, raw=raw)
        except ValueError as exc:
            raise ReceivingError(str(exc)) from exc
    config = ParseConfig(separator_chars=list(separator_chars))
    try:
        message = (
            GS1Message.parse_hri(data, config=config)
            if data.startswith("(")
            else GS1Message.parse(data, config=config)
        )
    except (ParseError, ValueError) as exc:  # biip raises ParseError; ValueError guards odd input
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReceivingError(f"not a GS1 label: {first}") from exc
    fields: dict[str, str] = {}
    for element in message.element_strings:
        ai = element.ai.ai
        if ai in fields:
            raise ReceivingError(f"AI ({ai}) appears twice in {message.as_hri()}")
        fields[ai] = element.value
    sscc = check_sscc(fields["00"]) if "00" in fields else None
    if "01" in fields and "02" in fields:
        raise ReceivingError(f"{message.as_hri()}: AI (01) and (02) together")
    if "30" in fields and "37" in fields:
        raise ReceivingError(f"{message.as_hri()}: AI (30) and (37) together")
    gtin_text = fields.get("01") or fields.get("02")
    if gtin_text is None:
        if "30" in fields or "37" in fields:
            raise ReceivingError(f"{message.as_hri()}: a count without a GTIN")
        if sscc is None:
            raise ReceivingError(f"{message.as_hri()} carries neither a GTIN nor an SSCC")
        return ReceivingScan("pallet", None, 0, sscc=sscc, raw=raw)
    try:
        gtin = normalise_gtin(gtin_text)
    except ValueError as exc:
        raise ReceivingError(str(exc)) from exc
    count_text = fields.get("30") or fields.get("37")
    if "02" in fields and "37" not in fields:
        raise ReceivingError(
            f"{message.as_hri()}: AI (02) must come with AI (37), the count of contained items"
        )
    qty = int(count_text) if count_text is not None else 1
    if not 1 <= qty <= COUNT_MAX:
        raise ReceivingError(f"{message.as_hri()}: count must be 1..{COUNT_MAX}, got {qty}")
    return ReceivingScan("goods", gtin, qty, sscc=sscc, raw=raw)


# --- delivery notes ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeliveryLine:
    """One line of a delivery note: `qty` × `gtin` on pallet `sscc` (`line` is its line in the file)."""

    sscc: str
    gtin: str
    qty: int
    line: int | None = None


@dataclass(frozen=True, slots=True)
class DeliveryNote:
    """A supplier's delivery note: the content of each SSCC."""

    lines: tuple[DeliveryLine, ...]
    source: str = ""

    def for_sscc(self, sscc: str) -> list[DeliveryLine]:
        """The lines of one pallet ([] if the note does not list it)."""
        return [line for line in self.lines if line.sscc == sscc]

    @property
    def ssccs(self) -> frozenset[str]:
        """Every SSCC on the note."""
        return frozenset(line.sscc for line in self.lines)


DELIVERY_COLUMNS: Final = ("sscc", "gtin", "qty")


def parse_delivery_note(text: str, *, source: str = "<text>") -> DeliveryNote:
    """A delivery note from CSV text with columns `sscc,gtin,qty` (one row per GTIN per pallet).

    Errors (`DeliveryNoteError`, a `FileError`) name the row and line; a (sscc, gtin)
    pair listed twice is an error (which quantity would be right?).
    """
    header = csv_header(text)
    if sorted(header) != sorted(DELIVERY_COLUMNS):
        raise DeliveryNoteError(
            source, [FileIssue("header", 1, f"columns must be {list(DELIVERY_COLUMNS)}, got {header}")]
        )
    issues: list[FileIssue] = []
    lines: list[DeliveryLine] = []
    first_at: dict[tuple[str, str], int] = {}
    for n, (line, cells) in enumerate(csv_rows(text), start=1):
        where = f"row {n} (sscc {cells.get('sscc') or '?'})"
        if "__extra__" in cells:
            issues.append(FileIssue(where, line, f"more cells than columns: {cells['__extra__']!r}"))
            continue
        try:
            sscc = check_sscc(cells["sscc"])
        except ReceivingError as exc:
            issues.append(FileIssue(f"{where}.sscc", line, str(exc)))
            continue
        try:
            gtin = normalise_gtin(cells["gtin"])
        except ValueError as exc:
            issues.append(FileIssue(f"{where}.gtin", line, str(exc)))
            continue
        qty_text = cells["qty"]
        if not (qty_text.isascii() and qty_text.isdigit()) or not 1 <= int(qty_text) <= COUNT_MAX:
            issues.append(
                FileIssue(
                    f"{where}.qty", line, f"qty must be a whole number 1..{COUNT_MAX}, got {qty_text!r}"
                )
            )
            continue
        first = first_at.setdefault((sscc, gtin), line)
        if first != line:
            issues.append(
                FileIssue(where, line, f"sscc {sscc} lists gtin {gtin} twice (first on line {first})")
            )
            continue
        lines.append(DeliveryLine(sscc, gtin, int(qty_text), line))
    if issues:
        raise DeliveryNoteError(source, issues)
    if not lines:
        raise DeliveryNoteError(source, [FileIssue("", None, "no delivery lines")])
    return DeliveryNote(tuple(lines), source)


def load_delivery_note(path: str | Path) -> DeliveryNote:
    """Read a delivery-note CSV file (UTF-8, an Excel BOM is fine)."""
    file = Path(path)
    try:
        text = read_text(file)
    except Unreadable as exc:
        raise DeliveryNoteError(file, exc.issues) from exc
    return parse_delivery_note(text, source=str(file))


class DeliveryNoteError(FileError, ReceivingError):
    """A delivery-note file that cannot be used; carries every issue with its line."""


# --- a receipt -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReceivedLine:
    """One booked line: `qty` × `gtin` added to book stock (from pallet `sscc` when it came on one)."""

    gtin: str
    qty: int
    scan_id: str
    sscc: str | None = None


@dataclass(slots=True)
class Receipt:
    """One receiving session (a delivery): scans in, `stock.received` lines out; idempotent by scan id."""

    receipt_id: str
    lines: list[ReceivedLine] = field(default_factory=list)
    scan_ids: set[str] = field(default_factory=set)
    ssccs: set[str] = field(default_factory=set)

    def receive(
        self,
        scan_id: str,
        scan: ReceivingScan,
        *,
        note: DeliveryNote | None = None,
        catalogue: Catalogue | None = None,
        already_received: Collection[str] = (),
    ) -> list[ReceivedLine]:
        """Book one scan; returns the new lines ([] for a scan id already booked). `ReceivingError` if refused.

        `already_received`: SSCCs booked by earlier receipts (the wiring keeps them), so a pallet is booked once.
        """
        if scan_id in self.scan_ids:
            return []
        if scan.sscc is not None and (scan.sscc in self.ssccs or scan.sscc in already_received):
            raise ReceivingError(f"pallet {scan.sscc} was already received")
        if scan.kind == "pallet":
            assert scan.sscc is not None  # noqa: S101 - a pallet scan always has its SSCC
            if note is None:
                raise ReceivingError(f"pallet {scan.sscc}: no delivery note loaded")
            content = note.for_sscc(scan.sscc)
            if not content:
                raise ReceivingError(
                    f"pallet {scan.sscc} is not on delivery note {note.source or '(unnamed)'}"
                )
            new = [ReceivedLine(d.gtin, d.qty, scan_id, scan.sscc) for d in content]
        else:
            assert scan.gtin is not None  # noqa: S101 - a goods scan always has its GTIN
            new = [ReceivedLine(scan.gtin, scan.qty, scan_id, scan.sscc)]
        if catalogue is not None:
            unknown = sorted({line.gtin for line in new if catalogue.get(line.gtin) is None})
            if unknown:
                raise ReceivingError(f"not in the catalogue: {', '.join(unknown)}")
        self.scan_ids.add(scan_id)
        if scan.sscc is not None:
            self.ssccs.add(scan.sscc)
        self.lines.extend(new)
        return new

    def totals(self) -> dict[str, int]:
        """Units received per GTIN (what book stock gains)."""
        out: dict[str, int] = {}
        for line in self.lines:
            out[line.gtin] = out.get(line.gtin, 0) + line.qty
        return out

    def payload(self, ts: float) -> dict[str, Any]:
        """The proposed `stock.received` event data: receipt id, per-scan lines, per-GTIN totals, time."""
        return {
            "receipt_id": self.receipt_id,
            "lines": [
                {"gtin": line.gtin, "qty": line.qty, **({"sscc": line.sscc} if line.sscc else {})}
                for line in self.lines
            ],
            "totals": [{"gtin": g, "qty": q} for g, q in sorted(self.totals().items())],
            "ts": rfc3339(ts),
        }


__all__ = [
    "DeliveryLine",
    "DeliveryNote",
    "DeliveryNoteError",
    "Receipt",
    "ReceivedLine",
    "ReceivingScan",
    "check_sscc",
    "load_delivery_note",
    "parse_delivery_note",
    "parse_receiving_scan",
]
