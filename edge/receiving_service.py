"""Receiving (goods in) in the running gateway: receipts, delivery notes, commit → book stock + `stock.received`.

The rules are `edge.retail.receiving` (pure); this module journals them:

- A **receipt** is one delivery being booked. Scans come from a `role: receiving` scanner (the receipt it is
  assigned to; a store with one receiving scanner assigns it to each new receipt) or from the page
  (`POST /api/receipts/{id}/scans`, the page's UUID as scan id). Each accepted scan is journaled with the
  lines it booked (`receipt_scans`), so a restart rebuilds the receipt exactly, whatever the catalogue or
  delivery note say by then.
- A **delivery note** (CSV `sscc,gtin,qty`) is uploaded per receipt; an SSCC-only pallet label then books
  that pallet's lines. A pallet is booked once across receipts: SSCCs of every receipt not cancelled are
  `already_received`.
- A plain GTIN typed or scanned may carry a count from the page (`qty`: "12 of these"); a GS1-128 label's
  own count (AI 30/37) is used as printed.
- **Commit** adds the receipt's totals to book stock (cause `received`, ref = receipt id: idempotent) and
  appends `stock.received`, in one transaction with the receipt's status change.

The barcode driver hands the gateway only lines it classifies as products, so a receiving scanner's GTIN and
(01)+(30) labels arrive here, but an SSCC-only or (02)+(37) label is rejected by the driver as "not a product"
before the gateway sees its text; such labels are booked through the page until the driver passes rejected
lines' text on (`scanner_line` already takes a record of kind `rejected` with its `raw` text;
docs/store-workflows.md, "Stocktake and receiving in the gateway").
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from cloud_bridge.contract import EventType, StockReceived, rfc3339
from edge import bookstock
from edge.retail.catalogue import Catalogue
from edge.retail.errors import ReceivingError
from edge.retail.receiving import (
    DeliveryNote,
    DeliveryNoteError,
    Receipt,
    ReceivedLine,
    parse_delivery_note,
    parse_receiving_scan,
)
from edge.stocktakes import ReceiptConflict, ReceiptNotFound
from edge.store import PRIORITY_HIGH, GatewayStore, NewEvent

Publish = Callable[[dict[str, Any]], None]

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS receipts (receipt_id TEXT PRIMARY KEY, status TEXT NOT NULL,"
    " started_ts REAL NOT NULL, started_by TEXT, closed_ts REAL, closed_by TEXT, note_name TEXT, note_csv TEXT)",
    "CREATE TABLE IF NOT EXISTS receipt_scans (receipt_id TEXT NOT NULL, scan_id TEXT NOT NULL, raw TEXT NOT NULL,"
    " sscc TEXT, lines TEXT NOT NULL, ts REAL NOT NULL, source TEXT, PRIMARY KEY (receipt_id, scan_id))",
    "CREATE TABLE IF NOT EXISTS receiving_scanners (scanner_id TEXT PRIMARY KEY, receipt_id TEXT NOT NULL)",
)


@dataclass(slots=True)
class _Open:
    receipt: Receipt
    status: str = "open"
    started_ts: float = 0.0
    started_by: str | None = None
    closed_ts: float | None = None
    closed_by: str | None = None
    note: DeliveryNote | None = None
    note_name: str | None = None
    scans: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class ScannerCounters:
    """What happened to receiving-scanner lines (shown on the page)."""

    booked: int = 0
    unassigned: int = 0
    refused: int = 0
    last_error: str | None = None


class ReceivingService:
    """Receipts of one store (see the module docstring)."""

    def __init__(
        self,
        store: GatewayStore,
        catalogue: Catalogue | None,
        *,
        receiving_scanners: Iterable[str] = (),
        publish: Publish | None = None,
        boot_id: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.catalogue = catalogue
        self.receiving_scanners = tuple(receiving_scanners)
        self._publish = publish
        self._boot_id = boot_id or uuid.uuid4().hex[:12]
        self._clock = clock
        self.receipts: dict[str, _Open] = {}
        self.assignments: dict[str, str] = {}
        self.counters = ScannerCounters()
        self._lines = 0
        self._lock = asyncio.Lock()
        self._ready = asyncio.Event()

    async def open(self) -> None:
        """Create the tables if missing and rebuild every receipt from its journaled scans."""
        receipts, scans, scanners = await self.store.transact(_load)
        for receipt_id, status, started_ts, started_by, closed_ts, closed_by, note_name, note_csv in receipts:
            note = parse_delivery_note(note_csv, source=note_name or "") if note_csv else None
            self.receipts[receipt_id] = _Open(
                Receipt(receipt_id), status, started_ts, started_by, closed_ts, closed_by, note, note_name
            )
        for receipt_id, scan_id, raw, sscc, lines_json, ts, source in scans:
            entry = self.receipts[receipt_id]
            lines = [ReceivedLine(g, int(q), scan_id, s) for g, q, s in json.loads(lines_json)]
            _book(entry.receipt, scan_id, sscc, lines)
            entry.scans.append(_scan_view(scan_id, raw, lines, ts, source))
        self.assignments = {
            s: r for s, r in scanners if r in self.receipts and self.receipts[r].status == "open"
        }
        self._ready.set()

    async def _wait_ready(self) -> None:
        async with asyncio.timeout(30):
            await self._ready.wait()

    def _get(self, receipt_id: str) -> _Open:
        entry = self.receipts.get(receipt_id)
        if entry is None:
            raise ReceiptNotFound(f"no receipt {receipt_id!r}")
        return entry

    def _open_receipt(self, receipt_id: str) -> _Open:
        entry = self._get(receipt_id)
        if entry.status != "open":
            raise ReceiptConflict(f"receipt {receipt_id} is {entry.status}")
        return entry

    def _received_elsewhere(self, receipt_id: str) -> set[str]:
        """SSCCs booked by other receipts that still count (open or committed)."""
        return {
            sscc
            for rid, entry in self.receipts.items()
            if rid != receipt_id and entry.status != "cancelled"
            for sscc in entry.receipt.ssccs
        }

    # --- receipts ------------------------------------------------------------------------------------------

    async def start(self, by: str | None = None, scanner: str | None = None) -> dict[str, Any]:
        """Open a receipt; the receiving scanner (given, or the store's only one) is assigned to it."""
        await self._wait_ready()
        if scanner is None and len(self.receiving_scanners) == 1:
            scanner = self.receiving_scanners[0]
        if scanner is not None and scanner not in self.receiving_scanners:
            raise ReceiptNotFound(f"no receiving scanner {scanner!r}")
        async with self._lock:
            now = self._clock()
            receipt_id = f"rc-{uuid.uuid4().hex[:12]}"

            def write(conn: sqlite3.Connection) -> None:
                conn.execute(
                    "INSERT INTO receipts (receipt_id, status, started_ts, started_by) VALUES (?, 'open', ?, ?)",
                    (receipt_id, now, by),
                )
                if scanner is not None:
                    _assign(conn, scanner, receipt_id)

            await self.store.transact(write)
            self.receipts[receipt_id] = _Open(Receipt(receipt_id), started_ts=now, started_by=by)
            if scanner is not None:
                self.assignments[scanner] = receipt_id
        self._changed(receipt_id)
        return self.view(receipt_id)

    async def load_note(self, receipt_id: str, text: str, name: str = "delivery-note.csv") -> dict[str, Any]:
        """Attach a delivery note (CSV `sscc,gtin,qty`); `DeliveryNoteError` lists every bad row."""
        await self._wait_ready()
        note = parse_delivery_note(text, source=name)
        async with self._lock:
            entry = self._open_receipt(receipt_id)
            await self.store.transact(
                lambda conn: conn.execute(
                    "UPDATE receipts SET note_name = ?, note_csv = ? WHERE receipt_id = ?",
                    (name, text, receipt_id),
                )
            )
            entry.note, entry.note_name = note, name
        self._changed(receipt_id)
        return self.view(receipt_id)

    async def scan(
        self,
        receipt_id: str,
        code: str,
        *,
        scan_id: str,
        qty: int | None = None,
        source: str = "page",
    ) -> dict[str, Any]:
        """Book one scan (idempotent by scan id); `ReceivingError` with the reason if refused."""
        await self._wait_ready()
        parsed = parse_receiving_scan(code)
        if qty is not None:
            if parsed.kind != "goods":
                raise ReceivingError("a pallet (SSCC) label books the delivery note's quantities; no qty")
            if parsed.qty not in (1, qty):
                raise ReceivingError(f"the label carries a count of {parsed.qty}; qty {qty} contradicts it")
            if not 1 <= qty <= 99_999_999:
                raise ReceivingError(f"qty must be 1..99999999, got {qty}")
            parsed = replace(parsed, qty=qty)
        async with self._lock:
            entry = self._open_receipt(receipt_id)
            if scan_id in entry.receipt.scan_ids:
                return self.view(receipt_id)
            trial = Receipt(receipt_id, [], set(entry.receipt.scan_ids), set(entry.receipt.ssccs))
            new = trial.receive(
                scan_id,
                parsed,
                note=entry.note,
                catalogue=self.catalogue,
                already_received=self._received_elsewhere(receipt_id),
            )
            now = self._clock()
            lines_json = json.dumps([[line.gtin, line.qty, line.sscc] for line in new])

            def write(conn: sqlite3.Connection) -> None:
                conn.execute(
                    "INSERT OR IGNORE INTO receipt_scans (receipt_id, scan_id, raw, sscc, lines, ts, source)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (receipt_id, scan_id, parsed.raw, parsed.sscc, lines_json, now, source),
                )

            await self.store.transact(write)
            _book(entry.receipt, scan_id, parsed.sscc, new)
            entry.scans.append(_scan_view(scan_id, parsed.raw, new, now, source))
        self._changed(receipt_id)
        return self.view(receipt_id)

    async def commit(self, receipt_id: str, by: str | None = None) -> dict[str, Any]:
        """Book the receipt: totals added to book stock and `stock.received` appended, one transaction."""
        await self._wait_ready()
        async with self._lock:
            entry = self._open_receipt(receipt_id)
            if not entry.receipt.lines:
                raise ReceiptConflict(f"receipt {receipt_id} has nothing received yet")
            now = self._clock()
            data = StockReceived.model_validate(
                {**entry.receipt.payload(now), "by": by, "delivery_note": entry.note_name}
            )
            event = NewEvent(
                EventType.STOCK_RECEIVED, rfc3339(now), data.model_dump(mode="json"), PRIORITY_HIGH
            )
            totals = entry.receipt.totals()

            def write(conn: sqlite3.Connection) -> None:
                bookstock.ensure_schema(conn)
                bookstock.apply_deltas(conn, totals, cause=bookstock.CAUSE_RECEIVED, ref=receipt_id, ts=now)
                _close(conn, receipt_id, "committed", now, by)

            await self.store.transact(write, [event])
            self._closed(entry, "committed", now, by)
        self._changed(receipt_id)
        return self.view(receipt_id)

    async def cancel(self, receipt_id: str, by: str | None = None) -> dict[str, Any]:
        """Drop the receipt: nothing is booked, its pallets may be received again."""
        await self._wait_ready()
        async with self._lock:
            entry = self._open_receipt(receipt_id)
            now = self._clock()
            await self.store.transact(lambda conn: _close(conn, receipt_id, "cancelled", now, by))
            self._closed(entry, "cancelled", now, by)
        self._changed(receipt_id)
        return self.view(receipt_id)

    def _closed(self, entry: _Open, status: str, now: float, by: str | None) -> None:
        entry.status, entry.closed_ts, entry.closed_by = status, now, by
        rid = entry.receipt.receipt_id
        self.assignments = {k: v for k, v in self.assignments.items() if v != rid}

    # --- scanners ----------------------------------------------------------------------------------------------

    async def assign(self, scanner_id: str, receipt_id: str | None) -> dict[str, Any]:
        """Bind a receiving scanner to an open receipt (None: unbind); journaled."""
        await self._wait_ready()
        if scanner_id not in self.receiving_scanners:
            raise ReceiptNotFound(
                f"no receiving scanner {scanner_id!r} (configured: {', '.join(self.receiving_scanners) or 'none'})"
            )
        async with self._lock:
            if receipt_id is not None:
                self._open_receipt(receipt_id)

            def write(conn: sqlite3.Connection) -> None:
                conn.execute("DELETE FROM receiving_scanners WHERE scanner_id = ?", (scanner_id,))
                if receipt_id is not None:
                    _assign(conn, scanner_id, receipt_id)

            await self.store.transact(write)
            if receipt_id is None:
                self.assignments.pop(scanner_id, None)
            else:
                self.assignments[scanner_id] = receipt_id
        return self.scanners_view()

    def scanners_view(self) -> dict[str, Any]:
        """Receiving scanners, the receipt each books into, and what happened to their lines."""
        c = self.counters
        return {
            "scanners": [
                {"scanner_id": s, "receipt_id": self.assignments.get(s)} for s in self.receiving_scanners
            ],
            "counters": {
                "booked": c.booked,
                "unassigned": c.unassigned,
                "refused": c.refused,
                "last_error": c.last_error,
            },
        }

    async def scanner_line(self, record: Mapping[str, Any]) -> None:
        """A line of a `role: receiving` scanner (`scan_record` shape, `raw` = the line's text): booked into its
        receipt; bad input counted, never raised."""
        scanner_id = str(record.get("device", ""))
        # `rejected`: a line the driver refused as "not a product" (an SSCC label), passed on with its text.
        if record.get("kind") not in ("product", "rejected"):
            return
        self._lines += 1
        scan_id = f"{scanner_id}:{self._boot_id}:{self._lines}"
        receipt_id = self.assignments.get(scanner_id)
        if receipt_id is None:
            self.counters.unassigned += 1
            self.counters.last_error = f"scanner {scanner_id} is assigned to no open receipt"
            return
        try:
            await self.scan(
                receipt_id,
                str(record.get("raw") or record.get("gtin") or ""),
                scan_id=scan_id,
                source=scanner_id,
            )
        except ReceivingError as exc:
            self.counters.refused += 1
            self.counters.last_error = f"{scanner_id}: {exc}"
            return
        self.counters.booked += 1

    # --- views ---------------------------------------------------------------------------------------------

    def summaries(self) -> list[dict[str, Any]]:
        """Every receipt, newest first, without its scans."""
        ordered = sorted(self.receipts.values(), key=lambda e: e.started_ts, reverse=True)
        return [self._summary(e) for e in ordered]

    def _summary(self, entry: _Open) -> dict[str, Any]:
        r = entry.receipt
        return {
            "receipt_id": r.receipt_id,
            "status": entry.status,
            "started_at": rfc3339(entry.started_ts),
            "started_by": entry.started_by,
            "closed_at": None if entry.closed_ts is None else rfc3339(entry.closed_ts),
            "closed_by": entry.closed_by,
            "delivery_note": entry.note_name,
            "note_pallets": sorted(entry.note.ssccs) if entry.note is not None else [],
            "pallets_received": sorted(r.ssccs),
            "units": sum(r.totals().values()),
            "scanners": sorted(k for k, v in self.assignments.items() if v == r.receipt_id),
        }

    def view(self, receipt_id: str) -> dict[str, Any]:
        """A receipt with totals per GTIN (names from the catalogue) and its scans, newest first."""
        entry = self._get(receipt_id)
        totals = []
        for gtin, qty in sorted(entry.receipt.totals().items()):
            item = self.catalogue.get(gtin) if self.catalogue is not None else None
            totals.append(
                {"gtin": gtin, "qty": qty, "name": {"zh": item.name.zh, "en": item.name.en} if item else None}
            )
        return {**self._summary(entry), "totals": totals, "scans": list(reversed(entry.scans))}

    def _changed(self, receipt_id: str) -> None:
        if self._publish is not None:
            self._publish({"type": "receipt", "receipt": self._summary(self._get(receipt_id))})


def _book(receipt: Receipt, scan_id: str, sscc: str | None, lines: list[ReceivedLine]) -> None:
    """Apply an accepted scan's lines to a receipt (what `Receipt.receive` did, replayed from the journal)."""
    receipt.scan_ids.add(scan_id)
    if sscc is not None:
        receipt.ssccs.add(sscc)
    receipt.lines.extend(lines)


def _scan_view(
    scan_id: str, raw: str, lines: list[ReceivedLine], ts: float, source: str | None
) -> dict[str, Any]:
    return {
        "scan_id": scan_id,
        "raw": raw,
        "lines": [{"gtin": line.gtin, "qty": line.qty, "sscc": line.sscc} for line in lines],
        "ts": rfc3339(ts),
        "source": source or "",
    }


# --- SQL (store thread, inside GatewayStore.transact) ----------------------------------------------------


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the receiving tables if missing (idempotent)."""
    for statement in _SCHEMA:
        conn.execute(statement)


def _load(conn: sqlite3.Connection) -> tuple[list[Any], list[Any], list[Any]]:
    ensure_schema(conn)
    bookstock.ensure_schema(conn)
    receipts = conn.execute(
        "SELECT receipt_id, status, started_ts, started_by, closed_ts, closed_by, note_name, note_csv FROM receipts"
    ).fetchall()
    scans = conn.execute(
        "SELECT receipt_id, scan_id, raw, sscc, lines, ts, source FROM receipt_scans ORDER BY ts, rowid"
    ).fetchall()
    scanners = conn.execute("SELECT scanner_id, receipt_id FROM receiving_scanners").fetchall()
    return receipts, scans, scanners


def _assign(conn: sqlite3.Connection, scanner_id: str, receipt_id: str) -> None:
    conn.execute(
        "INSERT INTO receiving_scanners (scanner_id, receipt_id) VALUES (?, ?)"
        " ON CONFLICT(scanner_id) DO UPDATE SET receipt_id = excluded.receipt_id",
        (scanner_id, receipt_id),
    )


def _close(conn: sqlite3.Connection, receipt_id: str, status: str, now: float, by: str | None) -> None:
    changed = conn.execute(
        "UPDATE receipts SET status = ?, closed_ts = ?, closed_by = ? WHERE receipt_id = ? AND status = 'open'",
        (status, now, by, receipt_id),
    ).rowcount
    if changed != 1:
        raise ReceiptConflict(f"receipt {receipt_id} is no longer open")
    conn.execute("DELETE FROM receiving_scanners WHERE receipt_id = ?", (receipt_id,))


__all__ = [
    "DeliveryNoteError",
    "ReceiptConflict",
    "ReceiptNotFound",
    "ReceivingService",
    "ensure_schema",
]
