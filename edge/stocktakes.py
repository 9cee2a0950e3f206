"""Stocktake (盘点) in the running gateway: sessions per area, counts journaled in SQLite, confirm → book stock.

The rules are `edge.retail.stocktake` (pure); this module gives them a place to live:

- **Areas.** An area is a set of bins of the store config: `bins` given explicitly, or every bin whose id
  starts with the area name (`A` → A01…A10), or whose `location` equals it. Sessions for different areas run
  at once; two open sessions may share neither a bin (`StocktakeBoard`) nor a SKU — expected stock is the
  SKU's *book* stock (store-wide, `edge.bookstock`), so two sessions counting one SKU would both correct the
  same number.
- **Expected** = book stock per GTIN of the area's SKUs when the session starts (a SKU alias of the store
  config resolves through the catalogue to its GTIN; a GTIN never moved counts as 0). A SKU with several
  bins in the area has its book stock attributed to its first bin: the book knows no split between bins.
  Book stock covers the back room too, so a session counts *all* of its SKUs' goods; the session lists
  SKUs that also have bins outside the area (`elsewhere`) so staff count those places as well.
- **Counts** come from the phone page (`POST /api/stocktakes/{id}/counts`, the page's UUID as scan id) and from
  handheld scanners (`role: handheld`) assigned to a session (scan id `{scanner}:{boot}:{n}`: unique per
  line). Each count is journaled (`stocktake_counts`) before it is applied in memory, so a restart replays
  every session exactly (`CountLog` is a two-phase set: replays and retries add nothing).
- **Confirm** applies `book_deltas` to book stock (cause `stocktake`, ref = session id: idempotent) and
  appends `stocktake.completed` to the outbox — one SQLite transaction with the session's status change.
  Variable-measure SKUs are reported but not adjusted: book stock holds them in kg, a count in packages.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

from cloud_bridge.contract import EventType, StocktakeAdjustment, StocktakeCompleted, StocktakeLine, rfc3339
from edge import bookstock
from edge.config import Bin, Scanner
from edge.retail.catalogue import Catalogue, normalise_gtin
from edge.retail.errors import ReceivingError, StocktakeError
from edge.retail.reports import to_csv
from edge.retail.stocktake import (
    CountLog,
    CountScan,
    ExpectedStock,
    StocktakeBoard,
    StocktakeSession,
    VarianceRow,
    variance_totals,
)
from edge.store import PRIORITY_HIGH, GatewayStore, NewEvent

Publish = Callable[[dict[str, Any]], None]

_log = logging.getLogger(__name__)

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS stocktake_sessions (session_id TEXT PRIMARY KEY, area TEXT NOT NULL,"
    " expected TEXT NOT NULL, started_ts REAL NOT NULL, started_by TEXT, status TEXT NOT NULL,"
    " closed_ts REAL, closed_by TEXT)",
    "CREATE TABLE IF NOT EXISTS stocktake_counts (session_id TEXT NOT NULL, scan_id TEXT NOT NULL,"
    " sku TEXT NOT NULL, qty INTEGER NOT NULL, bin_id TEXT, ts REAL NOT NULL, by TEXT, source TEXT,"
    " PRIMARY KEY (session_id, scan_id))",
    "CREATE TABLE IF NOT EXISTS stocktake_voids (session_id TEXT NOT NULL, scan_id TEXT NOT NULL,"
    " ts REAL NOT NULL, PRIMARY KEY (session_id, scan_id))",
    "CREATE TABLE IF NOT EXISTS stocktake_scanners (scanner_id TEXT PRIMARY KEY, session_id TEXT NOT NULL)",
)

VARIANCE_COLUMNS: Final = (
    "sku",
    "name_zh",
    "name_en",
    "expected",
    "counted",
    "variance",
    "unit_price",
    "value_variance",
)


class StocktakeConflict(StocktakeError):
    """The request clashes with the state (an area overlapping an open session, a closed session): HTTP 409."""


class NotFound(StocktakeError):
    """No such session or scanner: HTTP 404."""


class ReceiptConflict(ReceivingError):
    """The request clashes with a receipt's state (closed, empty on commit): HTTP 409."""


class ReceiptNotFound(ReceivingError):
    """No such receipt or receiving scanner: HTTP 404."""


@dataclass(slots=True)
class HandheldCounters:
    """What happened to handheld scans (the page shows them so staff see a scanner that counts nowhere)."""

    counted: int = 0
    unassigned: int = 0
    """Scans from a handheld scanner assigned to no open session (not counted)."""
    refused: int = 0
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "counted": self.counted,
            "unassigned": self.unassigned,
            "refused": self.refused,
            "last_error": self.last_error,
        }


@dataclass(slots=True)
class _Meta:
    started_by: str | None = None
    closed_ts: float | None = None
    closed_by: str | None = None
    sources: dict[str, str] = field(default_factory=dict)
    """scan id → where it came from (`page`, a scanner id)."""


class StocktakeService:
    """Sessions of one store; every method that changes something journals it first (one transaction)."""

    def __init__(
        self,
        store: GatewayStore,
        bins: Mapping[str, Bin],
        catalogue: Catalogue | None,
        *,
        handheld_scanners: Iterable[str] = (),
        publish: Publish | None = None,
        boot_id: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.bins = bins
        self.catalogue = catalogue
        self.handheld_scanners = tuple(handheld_scanners)
        self._publish = publish
        self._boot_id = boot_id or uuid.uuid4().hex[:12]
        self._clock = clock
        self.board = StocktakeBoard()
        self._meta: dict[str, _Meta] = {}
        self.assignments: dict[str, str] = {}
        """handheld scanner id → session id."""
        self.handheld = HandheldCounters()
        self._lines = 0
        self._lock = asyncio.Lock()
        self._ready = asyncio.Event()

    # --- lifecycle -------------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the tables if missing and replay every session from them."""
        sessions, counts, voids, scanners = await self.store.transact(_load)
        for row in sessions:
            session_id, area, expected_json, started_ts, started_by, status, closed_ts, closed_by = row
            expected = tuple(ExpectedStock(b, s, int(q)) for b, s, q in json.loads(expected_json))
            self.board.sessions[session_id] = StocktakeSession(session_id, area, expected, started_ts)
            self._meta[session_id] = _Meta(started_by, closed_ts, closed_by)
        for session_id, scan_id, sku, qty, bin_id, ts, by, source in counts:
            session = self.board.sessions[session_id]
            scan = CountScan(scan_id, sku, int(qty), bin_id, ts, by)
            self.board.sessions[session_id] = session.merge(CountLog({scan_id: scan}))
            self._meta[session_id].sources[scan_id] = source or ""
        for session_id, scan_id in voids:
            self.board.sessions[session_id] = self.board.sessions[session_id].void(scan_id)
        for row in sessions:
            session_id, status = row[0], row[5]
            if status != "open":
                done = self.board.sessions[session_id]
                self.board.sessions[session_id] = StocktakeSession(
                    done.session_id, done.area, done.expected, done.started_ts, done.counts, status
                )
        self.assignments = {
            scanner: session
            for scanner, session in scanners
            if session in self.board.sessions and self.board.sessions[session].status == "open"
        }
        self._ready.set()

    async def _wait_ready(self) -> None:
        async with asyncio.timeout(30):
            await self._ready.wait()

    # --- areas -------------------------------------------------------------------------------------------------

    def area_bins(self, area: str, bins: Sequence[str] | None = None) -> list[str]:
        """The bins of an area (see the module docstring); `StocktakeError` naming the problem."""
        if bins:
            unknown = [b for b in bins if b not in self.bins]
            if unknown:
                raise StocktakeError(f"unknown bins: {', '.join(unknown)}")
            return sorted(set(bins))
        found = sorted(b for b in self.bins if b.startswith(area))
        if not found:
            found = sorted(b.id for b in self.bins.values() if b.location == area)
        if not found:
            raise StocktakeError(
                f"area {area!r} matches no bin: give `bins`, a bin id prefix such as 'A', or a bin location"
            )
        return found

    def gtin_of(self, sku: str) -> str:
        """A bin SKU's GTIN-14 (book stock is kept per GTIN): catalogue alias, else the normalised GTIN."""
        item = self.catalogue.get(sku) if self.catalogue is not None else None
        if item is not None:
            return item.gtin
        try:
            return normalise_gtin(sku)
        except ValueError:
            return sku

    def _variable_measure(self, sku: str) -> bool:
        item = self.catalogue.get(sku) if self.catalogue is not None else None
        return bool(item is not None and item.variable_measure)

    # --- sessions ------------------------------------------------------------------------------------------

    async def start(
        self, area: str, bins: Sequence[str] | None = None, by: str | None = None
    ) -> dict[str, Any]:
        """Open a session for an area, its expected stock snapshotted from book stock now."""
        await self._wait_ready()
        area = area.strip()
        if not area:
            raise StocktakeError("an area is needed")
        async with self._lock:
            bin_ids = self.area_bins(area, bins)
            skus = {self.bins[b].sku for b in bin_ids}
            for other in self.board.open_sessions():
                shared = sorted(other.bins & set(bin_ids))
                if shared:
                    raise StocktakeConflict(
                        f"bins {', '.join(shared)} are being counted in session {other.session_id} "
                        f"(area {other.area}); confirm or cancel it first"
                    )
                clash = sorted(skus & {e.sku for e in other.expected})
                if clash:
                    raise StocktakeConflict(
                        f"SKUs {', '.join(clash)} are being counted in session {other.session_id} "
                        f"(area {other.area}): book stock is per SKU, so one session counts each SKU"
                    )
            gtins = sorted({self.gtin_of(s) for s in skus})
            book = await self.store.transact(lambda conn: _book(conn, gtins))
            expected: list[ExpectedStock] = []
            attributed: set[str] = set()
            for bin_id in bin_ids:
                sku = self.bins[bin_id].sku
                qty = 0
                if sku not in attributed and not self._variable_measure(sku):
                    qty = int(book.get(self.gtin_of(sku), Decimal(0)))
                    attributed.add(sku)
                expected.append(ExpectedStock(bin_id, sku, qty))
            now = self._clock()
            session_id = f"st-{uuid.uuid4().hex[:12]}"
            StocktakeSession(session_id, area, tuple(expected), now)  # validates before anything is written
            payload = json.dumps([[e.bin_id, e.sku, e.qty] for e in expected])

            def write(conn: sqlite3.Connection) -> None:
                conn.execute(
                    "INSERT INTO stocktake_sessions (session_id, area, expected, started_ts, started_by, status)"
                    " VALUES (?, ?, ?, ?, ?, 'open')",
                    (session_id, area, payload, now, by),
                )

            await self.store.transact(write)
            self.board.start(session_id, area, expected, ts=now)
            self._meta[session_id] = _Meta(by)
        self._changed(session_id)
        return self.view(session_id)

    def _session(self, session_id: str) -> StocktakeSession:
        session = self.board.sessions.get(session_id)
        if session is None:
            raise NotFound(f"no stocktake session {session_id!r}")
        return session

    def _open_session(self, session_id: str) -> StocktakeSession:
        session = self._session(session_id)
        if session.status != "open":
            raise StocktakeConflict(f"session {session_id} is {session.status}")
        return session

    def resolve(self, session: StocktakeSession, code: str) -> tuple[str, int]:
        """A typed or scanned code → (the SKU it counts as in this session, quantity it carries).

        GS1 codes with AI 30/37 carry a count; a pallet (SSCC) is not a count. The SKU is the bin SKU of the
        area whose GTIN matches (so a store alias counts as itself); goods not expected here count under their
        GTIN-14 (a found item, expected 0).
        """
        text = code.strip()
        if not text:
            raise StocktakeError("empty code")
        by_sku = {e.sku for e in session.expected}
        if text in by_sku:
            return text, 1
        from edge.retail.receiving import parse_receiving_scan  # noqa: PLC0415 - lazy: biip only when counting

        try:
            parsed = parse_receiving_scan(text)
        except ReceivingError as exc:
            raise StocktakeError(f"cannot count {text!r}: {exc}") from exc
        if parsed.gtin is None:
            raise StocktakeError(f"{text!r} is a pallet label (SSCC): count the goods on it")
        for sku in sorted(by_sku):
            if self.gtin_of(sku) == parsed.gtin:
                return sku, parsed.qty
        if self.catalogue is not None and self.catalogue.get(parsed.gtin) is None:
            raise StocktakeError(f"{parsed.gtin} is not in the catalogue")
        return parsed.gtin, parsed.qty

    async def count(
        self,
        session_id: str,
        code: str,
        *,
        scan_id: str,
        qty: int | None = None,
        bin_id: str | None = None,
        by: str | None = None,
        source: str = "page",
    ) -> dict[str, Any]:
        """Record one count (idempotent by scan id); `qty` overrides the code's own quantity (page entry)."""
        await self._wait_ready()
        async with self._lock:
            session = self._open_session(session_id)
            sku, code_qty = self.resolve(session, code)
            scan = CountScan(scan_id, sku, qty if qty is not None else code_qty, bin_id, self._clock(), by)
            updated = session.record(scan)  # validates: bin in the area, scan id not reused differently
            if updated.counts != session.counts:

                def write(conn: sqlite3.Connection) -> None:
                    conn.execute(
                        "INSERT OR IGNORE INTO stocktake_counts (session_id, scan_id, sku, qty, bin_id, ts, by,"
                        " source) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (session_id, scan.scan_id, scan.sku, scan.qty, scan.bin_id, scan.ts, by, source),
                    )

                await self.store.transact(write)
                self.board.sessions[session_id] = updated
                self._meta[session_id].sources[scan_id] = source
        self._changed(session_id)
        return self.view(session_id)

    async def void(self, session_id: str, scan_id: str) -> dict[str, Any]:
        """Void one count (a wrong scan); a void wins over its scan whatever the order."""
        await self._wait_ready()
        async with self._lock:
            session = self._open_session(session_id)
            now = self._clock()
            await self.store.transact(
                lambda conn: conn.execute(
                    "INSERT OR IGNORE INTO stocktake_voids (session_id, scan_id, ts) VALUES (?, ?, ?)",
                    (session_id, scan_id, now),
                )
            )
            self.board.sessions[session_id] = session.void(scan_id)
        self._changed(session_id)
        return self.view(session_id)

    async def confirm(self, session_id: str, by: str | None = None) -> dict[str, Any]:
        """Close the session: book stock adjusted and `stocktake.completed` appended, in one transaction."""
        await self._wait_ready()
        async with self._lock:
            session = self._open_session(session_id)
            now = self._clock()
            payload = self.completed_payload(session, now, by)
            deltas = {self.gtin_of(sku): d for sku, d in payload.book_deltas.items()}
            event = NewEvent(
                EventType.STOCKTAKE_COMPLETED, rfc3339(now), payload.model_dump(mode="json"), PRIORITY_HIGH
            )

            def write(conn: sqlite3.Connection) -> None:
                bookstock.ensure_schema(conn)
                bookstock.apply_deltas(conn, deltas, cause=bookstock.CAUSE_STOCKTAKE, ref=session_id, ts=now)
                _close(conn, session_id, "confirmed", now, by)

            await self.store.transact(write, [event])
            self.board.confirm(session_id, self.catalogue)
            self._closed(session_id, now, by)
        self._changed(session_id)
        return self.view(session_id)

    async def cancel(self, session_id: str, by: str | None = None) -> dict[str, Any]:
        """Close the session without adjusting anything."""
        await self._wait_ready()
        async with self._lock:
            self._open_session(session_id)
            now = self._clock()
            await self.store.transact(lambda conn: _close(conn, session_id, "cancelled", now, by))
            self.board.cancel(session_id)
            self._closed(session_id, now, by)
        self._changed(session_id)
        return self.view(session_id)

    def _closed(self, session_id: str, now: float, by: str | None) -> None:
        meta = self._meta[session_id]
        meta.closed_ts, meta.closed_by = now, by
        self.assignments = {k: v for k, v in self.assignments.items() if v != session_id}

    def completed_payload(self, session: StocktakeSession, now: float, by: str | None) -> StocktakeCompleted:
        """The `stocktake.completed` data for confirming `session` now."""
        rows = session.variance(self.catalogue)
        short, over, value = variance_totals(rows)
        deltas = {sku: d for sku, d in session.book_deltas().items() if not self._variable_measure(sku)}
        return StocktakeCompleted(
            session_id=session.session_id,
            area=session.area,
            bins=sorted(session.bins),
            started_at=rfc3339(session.started_ts),
            confirmed_at=rfc3339(now),
            by=by,
            counts=len(session.counts.live()),
            lines=[
                StocktakeLine(
                    sku=r.sku,
                    expected=r.expected,
                    counted=r.counted,
                    variance=r.variance,
                    unit_price=r.unit_price,
                    value_variance=r.value_variance,
                )
                for r in rows
            ],
            adjustments=[
                StocktakeAdjustment(
                    sku=a.sku, bin_id=a.bin_id, expected=a.expected, counted=a.counted, delta=a.delta
                )
                for a in session.adjustments()
            ],
            book_deltas=deltas,
            units_short=short,
            units_over=over,
            value_variance=value,
        )

    # --- handheld scanners -----------------------------------------------------------------------------------

    def assign(self, scanner_id: str, session_id: str | None) -> None:
        """Bind a handheld scanner to a session (None: unbind); persisted by `assign_saved`."""
        if scanner_id not in self.handheld_scanners:
            raise NotFound(
                f"no handheld scanner {scanner_id!r} (configured: {', '.join(self.handheld_scanners) or 'none'})"
            )
        if session_id is None:
            self.assignments.pop(scanner_id, None)
            return
        self._open_session(session_id)
        self.assignments[scanner_id] = session_id

    async def assign_saved(self, scanner_id: str, session_id: str | None) -> dict[str, Any]:
        """`assign`, journaled so a restart keeps the scanner on its session."""
        await self._wait_ready()
        async with self._lock:
            self.assign(scanner_id, session_id)

            def write(conn: sqlite3.Connection) -> None:
                conn.execute("DELETE FROM stocktake_scanners WHERE scanner_id = ?", (scanner_id,))
                if session_id is not None:
                    conn.execute(
                        "INSERT INTO stocktake_scanners (scanner_id, session_id) VALUES (?, ?)",
                        (scanner_id, session_id),
                    )

            await self.store.transact(write)
        if session_id is not None:
            self._changed(session_id)
        return self.scanners_view()

    def scanners_view(self) -> dict[str, Any]:
        """Handheld scanners, the session each counts into, and what happened to their scans."""
        return {
            "scanners": [
                {"scanner_id": s, "session_id": self.assignments.get(s)} for s in self.handheld_scanners
            ],
            "counters": self.handheld.as_dict(),
        }

    async def handheld_scan(self, record: Mapping[str, Any]) -> None:
        """A classified scan of a `role: handheld` scanner (`edge.devices.scanners.scan_record`).

        Counted into the session the scanner is assigned to; bad input is counted and skipped, never raised —
        the scanner cannot show an error, so the page shows the counters and the last error.
        """
        scanner_id = str(record.get("device", ""))
        if record.get("kind") != "product":
            return
        self._lines += 1
        scan_id = f"{scanner_id}:{self._boot_id}:{self._lines}"
        session_id = self.assignments.get(scanner_id)
        if session_id is None:
            self.handheld.unassigned += 1
            self.handheld.last_error = f"scanner {scanner_id} is assigned to no open session"
            return
        code = str(record.get("raw") or record.get("gtin") or "")
        try:
            await self.count(session_id, code, scan_id=scan_id, source=scanner_id)
        except StocktakeError as exc:
            self.handheld.refused += 1
            self.handheld.last_error = f"{scanner_id}: {exc}"
            return
        self.handheld.counted += 1

    # --- views ---------------------------------------------------------------------------------------------

    def sessions(self) -> list[dict[str, Any]]:
        """Every session, newest first, without the per-SKU detail."""
        ordered = sorted(self.board.sessions.values(), key=lambda s: s.started_ts, reverse=True)
        return [self.summary(s) for s in ordered]

    def summary(self, session: StocktakeSession) -> dict[str, Any]:
        """One session's header and totals."""
        meta = self._meta.get(session.session_id, _Meta())
        expected = sum(session.expected_by_sku().values())
        counted = sum(session.counts.counted_by_sku().values())
        return {
            "session_id": session.session_id,
            "area": session.area,
            "bins": sorted(session.bins),
            "status": session.status,
            "started_at": rfc3339(session.started_ts),
            "started_by": meta.started_by,
            "closed_at": None if meta.closed_ts is None else rfc3339(meta.closed_ts),
            "closed_by": meta.closed_by,
            "expected_units": expected,
            "counted_units": counted,
            "counts": len(session.counts.live()),
            "scanners": sorted(k for k, v in self.assignments.items() if v == session.session_id),
        }

    def view(self, session_id: str) -> dict[str, Any]:
        """A session with live progress per SKU, its recent counts and its variance totals."""
        session = self._session(session_id)
        meta = self._meta.get(session_id, _Meta())
        progress = [
            {
                "sku": p.sku,
                "name": {"zh": p.name_zh, "en": p.name_en},
                "expected": p.expected,
                "counted": p.counted,
                "remaining": p.remaining,
                "bins": sorted(e.bin_id for e in session.expected if e.sku == p.sku),
                "variable_measure": self._variable_measure(p.sku),
            }
            for p in session.progress(self.catalogue)
        ]
        in_area = set(session.bins)
        elsewhere = sorted(
            {b.sku for b in self.bins.values() if b.id not in in_area and b.sku in session.expected_by_sku()}
        )
        recent = sorted(session.counts.live(), key=lambda s: s.ts, reverse=True)[:20]
        short, over, value = variance_totals(session.variance(self.catalogue))
        return {
            **self.summary(session),
            "progress": progress,
            "elsewhere": elsewhere,
            "recent": [
                {
                    "scan_id": s.scan_id,
                    "sku": s.sku,
                    "qty": s.qty,
                    "bin_id": s.bin_id,
                    "ts": rfc3339(s.ts),
                    "source": meta.sources.get(s.scan_id, ""),
                }
                for s in recent
            ],
            "variance_totals": {"units_short": short, "units_over": over, "value_variance": str(value)},
        }

    def variance(self, session_id: str) -> list[VarianceRow]:
        """The variance report (per SKU, sorted)."""
        return self._session(session_id).variance(self.catalogue)

    def variance_json(self, session_id: str) -> dict[str, Any]:
        """The variance report with totals, JSON-ready (money as decimal strings)."""
        rows = self.variance(session_id)
        short, over, value = variance_totals(rows)
        return {
            "session_id": session_id,
            "rows": [
                {
                    "sku": r.sku,
                    "name": {"zh": r.name_zh, "en": r.name_en},
                    "expected": r.expected,
                    "counted": r.counted,
                    "variance": r.variance,
                    "unit_price": None if r.unit_price is None else str(r.unit_price),
                    "value_variance": None if r.value_variance is None else str(r.value_variance),
                }
                for r in rows
            ],
            "units_short": short,
            "units_over": over,
            "value_variance": str(value),
        }

    def variance_csv(self, session_id: str) -> str:
        """The variance report as CSV with a BOM (Excel on a Chinese Windows reads 中文 names right)."""
        return to_csv(self.variance(session_id), columns=VARIANCE_COLUMNS, bom=True)

    def _changed(self, session_id: str) -> None:
        if self._publish is not None:
            self._publish({"type": "stocktake", "session": self.summary(self._session(session_id))})


class StockDesk:
    """The store's stock workflows — stocktake and receiving — and the feed of their scanners' scans.

    `feed(item)` takes every device item the gateway publishes (synchronously, from the coordinators) and
    queues the scans of `role: handheld` and `role: receiving` scanners; `run()` hands them to the services
    one at a time, in arrival order. Overflow (the queue holds `QUEUE_SIZE` scans, far beyond what a person
    scans while a database write is slow) is counted in `dropped`, never blocks the scanner.
    """

    QUEUE_SIZE: Final = 1024

    def __init__(
        self,
        store: GatewayStore,
        bins: Mapping[str, Bin],
        catalogue: Catalogue | None,
        scanners: Iterable[Scanner],
        *,
        publish: Publish | None = None,
        boot_id: str = "",
    ) -> None:
        from edge.receiving_service import ReceivingService  # noqa: PLC0415 - lazy: biip only when used

        scanners = list(scanners)
        self.stocktakes = StocktakeService(
            store,
            bins,
            catalogue,
            handheld_scanners=[sc.id for sc in scanners if sc.role == "handheld"],
            publish=publish,
            boot_id=boot_id,
        )
        self.receiving = ReceivingService(
            store,
            catalogue,
            receiving_scanners=[sc.id for sc in scanners if sc.role == "receiving"],
            publish=publish,
            boot_id=boot_id,
        )
        self._inputs: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self.QUEUE_SIZE)
        self.dropped = 0
        self.failed = 0

    async def start(self) -> None:
        """Create the tables and replay both journals (before the API or a scanner can reach them)."""
        await self.stocktakes.open()
        await self.receiving.open()

    def feed(self, item: Mapping[str, Any]) -> None:
        """A published device item; scans of handheld and receiving scanners are queued, the rest ignored."""
        if item.get("type") != "scan":
            return
        record = item.get("scan") or {}
        if record.get("role") not in ("handheld", "receiving"):
            return
        try:
            self._inputs.put_nowait(dict(record))
        except asyncio.QueueFull:
            self.dropped += 1

    async def run(self) -> None:
        """Deliver queued scans until cancelled; a failure on one scan is logged and counted, not fatal."""
        while True:
            record = await self._inputs.get()
            try:
                if record.get("role") == "handheld":
                    await self.stocktakes.handheld_scan(record)
                else:
                    await self.receiving.scanner_line(record)
            except Exception:  # noqa: BLE001 - one bad scan must not stop the gateway's shelf monitoring
                self.failed += 1
                _log.exception("stock scans: could not handle a scan of %s", record.get("device"))


# --- SQL (store thread, inside GatewayStore.transact) ----------------------------------------------------


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the stocktake tables if missing (idempotent)."""
    for statement in _SCHEMA:
        conn.execute(statement)


def _load(conn: sqlite3.Connection) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
    ensure_schema(conn)
    bookstock.ensure_schema(conn)
    sessions = conn.execute(
        "SELECT session_id, area, expected, started_ts, started_by, status, closed_ts, closed_by"
        " FROM stocktake_sessions ORDER BY started_ts"
    ).fetchall()
    counts = conn.execute(
        "SELECT session_id, scan_id, sku, qty, bin_id, ts, by, source FROM stocktake_counts"
    ).fetchall()
    voids = conn.execute("SELECT session_id, scan_id FROM stocktake_voids").fetchall()
    scanners = conn.execute("SELECT scanner_id, session_id FROM stocktake_scanners").fetchall()
    return sessions, counts, voids, scanners


def _book(conn: sqlite3.Connection, gtins: list[str]) -> dict[str, Decimal]:
    bookstock.ensure_schema(conn)
    return bookstock.book_stock(conn, gtins)


def _close(conn: sqlite3.Connection, session_id: str, status: str, now: float, by: str | None) -> None:
    changed = conn.execute(
        "UPDATE stocktake_sessions SET status = ?, closed_ts = ?, closed_by = ? WHERE session_id = ?"
        " AND status = 'open'",
        (status, now, by, session_id),
    ).rowcount
    if changed != 1:
        raise StocktakeConflict(f"session {session_id} is no longer open")
    conn.execute("DELETE FROM stocktake_scanners WHERE session_id = ?", (session_id,))


__all__ = [
    "VARIANCE_COLUMNS",
    "HandheldCounters",
    "NotFound",
    "ReceiptConflict",
    "ReceiptNotFound",
    "StockDesk",
    "StocktakeConflict",
    "StocktakeService",
    "ensure_schema",
]
