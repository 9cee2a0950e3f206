"""Stocktake (盘点): count an area's goods by scanning, compare with what was expected, confirm the adjustments.

Model:

- A **session** covers one **area**: a set of bins, each with the SKU and the quantity expected there when the
  session started (`ExpectedStock`; the wiring snapshots it — for a shelf area the book stock attributed to
  those bins). Sessions for different areas run at the same time; two open sessions may not share a bin
  (`StocktakeBoard.start` raises), since one bin counted twice would be adjusted twice.
- **Counts** are scans: an id, a GTIN, a quantity (a handheld scan is 1; a phone page may enter a number; a GS1
  code with AI 30/37 carries one), optionally the bin being counted. They are kept as a set keyed by scan id
  plus a set of voided ids (a two-phase set): adding the same scan twice changes nothing, a scan id reused for
  a different count is an error, and merging two count logs (phone + handheld, or a replay) is a union — so
  merging is idempotent, commutative and associative, and order of arrival never matters.
- **Progress** is per SKU: counted vs expected. The **variance report** is per SKU: expected, counted,
  variance = counted − expected, and value variance = variance × catalogue price (blank for a variable-measure
  SKU, whose packages have no fixed price). Rows are sorted by SKU; CSV via `edge.retail.reports.to_csv`.
- **Confirming** yields the adjustments: per SKU the book delta (counted − expected), split per bin where the
  counts say which bin (a scan with a bin, or a SKU with exactly one bin in the area); counts of a SKU with
  several bins in the area and no bin given stay one SKU-level row (`bin_id` None). A found SKU that was not
  expected in the area is a row with expected 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Literal

from edge.retail.catalogue import Catalogue
from edge.retail.errors import StocktakeError


@dataclass(frozen=True, slots=True)
class ExpectedStock:
    """What one bin of the area should hold when the session starts."""

    bin_id: str
    sku: str
    qty: int


@dataclass(frozen=True, slots=True)
class CountScan:
    """One counting scan. `scan_id` must be unique per count (the scanner line's journal id, a phone UUID)."""

    scan_id: str
    sku: str
    qty: int = 1
    bin_id: str | None = None
    ts: float = 0.0
    by: str | None = None
    """Staff id of whoever counted (optional)."""

    def __post_init__(self) -> None:
        if not self.scan_id:
            raise StocktakeError("a count scan needs an id")
        if not 1 <= self.qty <= 99_999:
            raise StocktakeError(f"scan {self.scan_id}: qty must be 1..99999, got {self.qty}")


@dataclass(frozen=True, slots=True)
class CountLog:
    """Counts as a two-phase set: scans by id, and ids voided. Immutable; every operation returns a new log."""

    scans: Mapping[str, CountScan] = field(default_factory=dict)
    voided: frozenset[str] = frozenset()

    def add(self, scan: CountScan) -> CountLog:
        """The log with `scan` (unchanged if already there); `StocktakeError` if the id holds another count."""
        known = self.scans.get(scan.scan_id)
        if known is not None:
            if known != scan:
                raise StocktakeError(f"scan id {scan.scan_id} already holds a different count")
            return self
        return CountLog({**self.scans, scan.scan_id: scan}, self.voided)

    def void(self, scan_id: str) -> CountLog:
        """The log with `scan_id` voided (a voided id stays voided, even if its scan arrives later)."""
        return CountLog(self.scans, self.voided | {scan_id})

    def merge(self, other: CountLog) -> CountLog:
        """Union of two logs; `StocktakeError` if they disagree about a scan id."""
        merged = dict(self.scans)
        for scan_id, scan in other.scans.items():
            known = merged.get(scan_id)
            if known is not None and known != scan:
                raise StocktakeError(f"scan id {scan_id} holds different counts in the two logs")
            merged[scan_id] = scan
        return CountLog(merged, self.voided | other.voided)

    def live(self) -> list[CountScan]:
        """Scans not voided, in id order (deterministic whatever the arrival order)."""
        return [self.scans[k] for k in sorted(self.scans) if k not in self.voided]

    def counted_by_sku(self) -> dict[str, int]:
        """Total counted per SKU."""
        out: dict[str, int] = {}
        for scan in self.live():
            out[scan.sku] = out.get(scan.sku, 0) + scan.qty
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CountLog):
            return NotImplemented
        return dict(self.scans) == dict(other.scans) and self.voided == other.voided

    def __hash__(self) -> int:
        return hash((frozenset(self.scans.items()), self.voided))


@dataclass(frozen=True, slots=True)
class ProgressRow:
    """Live progress of one SKU: counted so far vs expected."""

    sku: str
    name_zh: str
    name_en: str
    expected: int
    counted: int

    @property
    def remaining(self) -> int:
        """Expected units not yet counted (0 once reached or exceeded)."""
        return max(self.expected - self.counted, 0)


@dataclass(frozen=True, slots=True)
class VarianceRow:
    """One SKU in the variance report."""

    sku: str
    name_zh: str
    name_en: str
    expected: int
    counted: int
    variance: int
    """counted − expected: negative is a shortfall (shrink), positive a surplus."""
    unit_price: Decimal | None
    value_variance: Decimal | None
    """variance × unit price (CNY); None for a variable-measure SKU or one missing from the catalogue."""


@dataclass(frozen=True, slots=True)
class Adjustment:
    """A stock change to apply on confirmation: `delta` = counted − expected, for a bin or (bin None) a SKU."""

    sku: str
    bin_id: str | None
    expected: int
    counted: int

    @property
    def delta(self) -> int:
        """counted − expected."""
        return self.counted - self.expected


Status = Literal["open", "confirmed", "cancelled"]


@dataclass(frozen=True, slots=True)
class StocktakeSession:
    """One area's stocktake; immutable (`record`, `void`, `merge` return a new session)."""

    session_id: str
    area: str
    expected: tuple[ExpectedStock, ...]
    started_ts: float = 0.0
    counts: CountLog = field(default_factory=CountLog)
    status: Status = "open"

    def __post_init__(self) -> None:
        bins = [e.bin_id for e in self.expected]
        if len(set(bins)) != len(bins):
            raise StocktakeError(f"session {self.session_id}: a bin is listed twice in the area")
        if not bins:
            raise StocktakeError(f"session {self.session_id}: the area has no bin")

    @property
    def bins(self) -> frozenset[str]:
        """The bins of the area."""
        return frozenset(e.bin_id for e in self.expected)

    def ensure_open(self) -> None:
        """`StocktakeError` unless the session is still counting."""
        if self.status != "open":
            raise StocktakeError(f"session {self.session_id} is {self.status}")

    def record(self, scan: CountScan) -> StocktakeSession:
        """The session with one more count; a bin outside the area is refused."""
        self.ensure_open()
        if scan.bin_id is not None and scan.bin_id not in self.bins:
            raise StocktakeError(f"bin {scan.bin_id} is not in area {self.area}")
        return replace(self, counts=self.counts.add(scan))

    def void(self, scan_id: str) -> StocktakeSession:
        """The session with one count voided."""
        self.ensure_open()
        return replace(self, counts=self.counts.void(scan_id))

    def merge(self, counts: CountLog) -> StocktakeSession:
        """The session with another device's counts merged in."""
        self.ensure_open()
        for scan in counts.scans.values():
            if scan.bin_id is not None and scan.bin_id not in self.bins:
                raise StocktakeError(f"bin {scan.bin_id} is not in area {self.area}")
        return replace(self, counts=self.counts.merge(counts))

    def expected_by_sku(self) -> dict[str, int]:
        """Expected units per SKU over the area."""
        out: dict[str, int] = {}
        for e in self.expected:
            out[e.sku] = out.get(e.sku, 0) + e.qty
        return out

    def progress(self, catalogue: Catalogue | None = None) -> list[ProgressRow]:
        """Counted vs expected per SKU (expected SKUs and found ones), sorted by SKU."""
        expected = self.expected_by_sku()
        counted = self.counts.counted_by_sku()
        rows = []
        for sku in sorted(expected.keys() | counted.keys()):
            zh, en = _names(catalogue, sku)
            rows.append(ProgressRow(sku, zh, en, expected.get(sku, 0), counted.get(sku, 0)))
        return rows

    def variance(self, catalogue: Catalogue | None = None) -> list[VarianceRow]:
        """The variance report, one row per SKU, sorted by SKU."""
        rows = []
        for p in self.progress(catalogue):
            item = catalogue.get(p.sku) if catalogue is not None else None
            price = item.price if item is not None and not item.variable_measure else None
            variance = p.counted - p.expected
            value = (price * variance).quantize(Decimal("0.01")) if price is not None else None
            rows.append(
                VarianceRow(p.sku, p.name_zh, p.name_en, p.expected, p.counted, variance, price, value)
            )
        return rows

    def adjustments(self) -> list[Adjustment]:
        """Per-bin (where the counts tell the bin) or per-SKU changes; sorted by (SKU, bin)."""
        bins_of: dict[str, list[str]] = {}
        expected_at: dict[tuple[str, str], int] = {}
        for e in self.expected:
            bins_of.setdefault(e.sku, []).append(e.bin_id)
            expected_at[(e.sku, e.bin_id)] = e.qty
        counted_at: dict[tuple[str, str | None], int] = {}
        for scan in self.counts.live():
            bin_id = scan.bin_id
            if bin_id is None and len(bins_of.get(scan.sku, [])) == 1:
                bin_id = bins_of[scan.sku][0]
            counted_at[(scan.sku, bin_id)] = counted_at.get((scan.sku, bin_id), 0) + scan.qty
        out: list[Adjustment] = []
        for sku in sorted(set(bins_of) | {sku for sku, _ in counted_at}):
            unplaced = counted_at.get((sku, None))
            if unplaced is not None:
                # Some counts of this SKU name no bin and it has several bins here: one SKU-level adjustment
                # over the whole area, since the split between its bins is unknown.
                counted = sum(n for (s, _), n in counted_at.items() if s == sku)
                expected = sum(expected_at.get((sku, b), 0) for b in bins_of.get(sku, []))
                out.append(Adjustment(sku, None, expected, counted))
                continue
            places = sorted(set(bins_of.get(sku, [])) | {b for (s, b) in counted_at if s == sku and b})
            for bin_id in places:
                out.append(
                    Adjustment(
                        sku, bin_id, expected_at.get((sku, bin_id), 0), counted_at.get((sku, bin_id), 0)
                    )
                )
        return out

    def book_deltas(self) -> dict[str, int]:
        """Per SKU: counted − expected over the area (what confirming changes in the book stock); zeros left out."""
        out: dict[str, int] = {}
        for adj in self.adjustments():
            out[adj.sku] = out.get(adj.sku, 0) + adj.delta
        return {sku: d for sku, d in out.items() if d != 0}


def _names(catalogue: Catalogue | None, sku: str) -> tuple[str, str]:
    item = catalogue.get(sku) if catalogue is not None else None
    return (item.name.zh, item.name.en) if item is not None else ("", "")


@dataclass(frozen=True, slots=True)
class Confirmation:
    """What confirming a session yields: the adjustments to apply and the final report."""

    session: StocktakeSession
    adjustments: tuple[Adjustment, ...]
    book_deltas: Mapping[str, int]
    report: tuple[VarianceRow, ...]


@dataclass(slots=True)
class StocktakeBoard:
    """The open (and finished) sessions of a store; enforces that open sessions never share a bin."""

    sessions: dict[str, StocktakeSession] = field(default_factory=dict)

    def open_sessions(self) -> list[StocktakeSession]:
        """Sessions still counting, by id."""
        return [s for k, s in sorted(self.sessions.items()) if s.status == "open"]

    def start(
        self, session_id: str, area: str, expected: Iterable[ExpectedStock], *, ts: float = 0.0
    ) -> StocktakeSession:
        """Open a session; `StocktakeError` if the id exists or a bin is in another open session."""
        if session_id in self.sessions:
            raise StocktakeError(f"session {session_id} exists")
        session = StocktakeSession(session_id, area, tuple(expected), started_ts=ts)
        for other in self.open_sessions():
            shared = session.bins & other.bins
            if shared:
                raise StocktakeError(
                    f"area {area} overlaps open session {other.session_id} (area {other.area}) on bins"
                    f" {sorted(shared)}"
                )
        self.sessions[session_id] = session
        return session

    def get(self, session_id: str) -> StocktakeSession:
        """One session; `StocktakeError` if unknown."""
        try:
            return self.sessions[session_id]
        except KeyError:
            raise StocktakeError(f"no session {session_id}") from None

    def record(self, session_id: str, scan: CountScan) -> StocktakeSession:
        """Add a count to an open session."""
        session = self.get(session_id).record(scan)
        self.sessions[session_id] = session
        return session

    def session_for_bin(self, bin_id: str) -> StocktakeSession | None:
        """The open session counting `bin_id`, if any (routes a handheld scan that names a bin)."""
        return next((s for s in self.open_sessions() if bin_id in s.bins), None)

    def confirm(self, session_id: str, catalogue: Catalogue | None = None) -> Confirmation:
        """Close a session and return what to apply; confirming twice is an error (applied once)."""
        session = self.get(session_id)
        session.ensure_open()
        done = replace(session, status="confirmed")
        self.sessions[session_id] = done
        return Confirmation(
            done, tuple(done.adjustments()), done.book_deltas(), tuple(done.variance(catalogue))
        )

    def cancel(self, session_id: str) -> StocktakeSession:
        """Close a session without adjusting anything."""
        session = self.get(session_id)
        session.ensure_open()
        done = replace(session, status="cancelled")
        self.sessions[session_id] = done
        return done


def variance_totals(rows: Sequence[VarianceRow]) -> tuple[int, int, Decimal]:
    """(units short, units over, net value variance CNY) over a report."""
    short = -sum(r.variance for r in rows if r.variance < 0)
    over = sum(r.variance for r in rows if r.variance > 0)
    value = sum((r.value_variance for r in rows if r.value_variance is not None), Decimal("0.00"))
    return short, over, value


__all__ = [
    "Adjustment",
    "Confirmation",
    "CountLog",
    "CountScan",
    "ExpectedStock",
    "ProgressRow",
    "StocktakeBoard",
    "StocktakeSession",
    "VarianceRow",
    "variance_totals",
]
