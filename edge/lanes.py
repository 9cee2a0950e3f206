"""Checkout lanes in the running gateway: the pure `edge.retail.lane.CheckoutLane` per lane, journaled in SQLite.

One `CheckoutLane` per configured lane (the distinct `lane` of the lane scanners and lane scales). Every
command — a lane scanner's scan, the lane scale's stable weight, a cashier-screen action through the local API
(`edge/lane_api.py`) — goes the same way, one at a time per lane:

1. the lane computes the events (`CheckoutLane.scan` etc.; a refused command raises and journals nothing);
2. the events are dry-run on the current state (`edge.retail.lane.apply`) — with a `TransactionCompleted` this
   builds the `SaleCompleted` / `SaleReturned`;
3. ONE SQLite transaction on the store thread (`GatewayStore.transact`) journals them (`lane_events`) and, on
   completion, also inserts the `sale.completed` / `sale.returned` outbox row, the book-stock moves
   (`edge.bookstock`) and the `sales` row kept for returns;
4. only then the in-memory lane applies them.

So a crash (kill -9, power cut) anywhere leaves either nothing of the command or all of it: on start each lane is
rebuilt by replaying its journal (`fold`), giving the same open transaction or the same completed sale, and the
sale is in the outbox exactly once — the outbox row shares the journal's transaction, and completing a
completed transaction yields no events (issue #6: "nothing is lost or doubled on restart mid-transaction").
The uplink then delivers it when the WAN is back (at least once; the hub keys sales by transaction id).

Scale readings: the scale coordinator publishes a stable weight when it changes; each one goes to the lane as
`weight(weight_g, stable=True)`. A plain-coded weighed item scanned while its goods already lie on the pan sees
no change, so right after such a scan the lane also takes the scale's *current* stable weight if it is fresh
(read within `FRESH_WEIGHT_S` and the scale online): the scale is still reading it, which is what "the first
stable weight after the scan" means for a pan that did not move.

Tables (created here, idempotently; not part of the store's migrations):

    lane_events(lane TEXT, seq INTEGER, ts REAL, type TEXT, json TEXT, PRIMARY KEY (lane, seq))
    sales(transaction_id TEXT PRIMARY KEY, kind TEXT, original_transaction_id TEXT, lane TEXT, ts TEXT,
          total TEXT, json TEXT)

On start each lane's journal is compacted (`compact`: the last transaction onward plus its sign-in) so it does
not grow with the store's history; completed sales stay in `sales`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from cloud_bridge.contract import EventType, SaleCompleted, SaleReturned
from drivers.barcode.protocol import (
    DEFAULT_MEMBER_PATTERNS,
    MemberScan,
    ProductScan,
    ProtocolError,
    ScanConfig,
    decode_scan,
)
from edge import bookstock
from edge.retail.catalogue import Catalogue
from edge.retail.errors import RetailError, UnknownItem
from edge.retail.lane import (
    CheckoutLane,
    LaneEvent,
    LaneRules,
    Line,
    Transaction,
    TransactionCompleted,
    apply,
    compact,
    event_from_json,
    event_to_json,
    stock_deltas,
)
from edge.store import PRIORITY_HIGH, GatewayStore, NewEvent

if TYPE_CHECKING:
    from edge.config import LoadedConfig
    from edge.devices.scales import ScaleCoordinator

_log = logging.getLogger(__name__)

FRESH_WEIGHT_S: Final = 2.0
"""A scale's last stable weight counts as its current reading for this long (it is polled every 0.5 s)."""

RECENT_SALES_MAX: Final = 500

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS lane_events (lane TEXT NOT NULL, seq INTEGER NOT NULL, ts REAL NOT NULL,"
    " type TEXT NOT NULL, json TEXT NOT NULL, PRIMARY KEY (lane, seq))",
    "CREATE TABLE IF NOT EXISTS sales (transaction_id TEXT PRIMARY KEY, kind TEXT NOT NULL,"
    " original_transaction_id TEXT, lane TEXT NOT NULL, ts TEXT NOT NULL, total TEXT NOT NULL,"
    " json TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS sales_original ON sales (original_transaction_id)",
)

Command = Callable[[CheckoutLane, float], list[LaneEvent]]
"""A lane command bound to its arguments: (lane, now) → events to journal."""


class UnknownLane(KeyError):
    """No lane with that id in this store."""


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the lane and sales tables (and book stock's) if missing."""
    for statement in _SCHEMA:
        conn.execute(statement)
    bookstock.ensure_schema(conn)


def _load_journals(conn: sqlite3.Connection, lanes: Sequence[str]) -> dict[str, list[LaneEvent]]:
    """Each lane's journal, compacted in place (rows outside `compact`'s result are deleted)."""
    out: dict[str, list[LaneEvent]] = {}
    ensure_schema(conn)
    for lane in lanes:
        rows = conn.execute(
            "SELECT seq, json FROM lane_events WHERE lane = ? ORDER BY seq", (lane,)
        ).fetchall()
        events = [event_from_json(text) for _, text in rows]
        kept = compact(events, lane)
        kept_ids = {id(e) for e in kept}
        dropped = [seq for (seq, _), e in zip(rows, events, strict=True) if id(e) not in kept_ids]
        conn.executemany("DELETE FROM lane_events WHERE lane = ? AND seq = ?", [(lane, s) for s in dropped])
        out[lane] = kept
    return out


def _journal(
    conn: sqlite3.Connection,
    lane: str,
    events: Sequence[LaneEvent],
    payload: SaleCompleted | SaleReturned | None,
    catalogue: Catalogue,
) -> None:
    """Inside the store's transaction: append the lane events; with a completed sale, its row and stock moves."""
    (last,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM lane_events WHERE lane = ?", (lane,)).fetchone()
    conn.executemany(
        "INSERT INTO lane_events (lane, seq, ts, type, json) VALUES (?, ?, ?, ?, ?)",
        [(lane, int(last) + i, e.ts, e.type, event_to_json(e)) for i, e in enumerate(events, start=1)],
    )
    if payload is None:
        return
    is_sale = isinstance(payload, SaleCompleted)
    total = payload.total if isinstance(payload, SaleCompleted) else payload.refund_total
    conn.execute(
        "INSERT INTO sales (transaction_id, kind, original_transaction_id, lane, ts, total, json)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            payload.transaction_id,
            "sale" if is_sale else "return",
            None if isinstance(payload, SaleCompleted) else payload.original_transaction_id,
            payload.lane,
            payload.ts,
            str(total),
            payload.model_dump_json(),
        ),
    )
    bookstock.apply_deltas(
        conn,
        stock_deltas(payload, catalogue),
        cause=bookstock.CAUSE_SALE if is_sale else bookstock.CAUSE_RETURN,
        ref=payload.transaction_id,
        ts=events[-1].ts,
    )


def _money(value: Decimal | None) -> str | None:
    return None if value is None else f"{value:.2f}"


def _line_view(line: Line) -> dict[str, Any]:
    return {
        "line_no": line.line_no,
        "code": line.code,
        "gtin": line.gtin,
        "name": {"zh": line.name_zh, "en": line.name_en},
        "measure": line.measure,
        "unit_price": _money(line.unit_price),
        "qty": line.qty,
        "weight_kg": None if line.weight_kg is None else str(line.weight_kg),
        "amount": _money(line.amount),
        "price_embedded": line.price_embedded,
        "voided": line.voided,
        "pending": line.pending,
        "original_index": line.original_index,
    }


def transaction_view(tx: Transaction) -> dict[str, Any]:
    """A transaction as the cashier screen shows it (money as decimal strings, CNY)."""
    return {
        "transaction_id": tx.transaction_id,
        "number": tx.number,
        "kind": tx.kind,
        "status": tx.status,
        "cashier": tx.cashier,
        "member_id": tx.member_id,
        "original_transaction_id": None if tx.original is None else tx.original.transaction_id,
        "lines": [_line_view(line) for line in tx.lines],
        "total": _money(tx.total),
        "waiting_for_weight": tx.pending_line is not None,
        "payload": None if tx.payload is None else tx.payload.model_dump(mode="json"),
    }


def scan_from_record(record: Mapping[str, Any]) -> ProductScan | MemberScan:
    """The typed scan back from a scanner coordinator's record (`edge.devices.scanners.scan_record`).

    Weights and prices travel as floats there; a scale label's 3-decimal kg and 2-decimal CNY round-trip
    exactly through `repr` (shortest repr of a double reproduces the decimal it was made from).
    """
    if record.get("kind") == "member":
        return MemberScan(member_id=str(record["member_id"]))
    weight = record.get("net_weight_kg")
    price = record.get("price")
    return ProductScan(
        gtin=str(record["gtin"]),
        net_weight_kg=None if weight is None else Decimal(repr(float(weight))),
        price=None if price is None else Decimal(repr(float(price))),
        symbology=record.get("symbology"),
        raw=str(record.get("raw", "")),
    )


class LaneService:
    """Every checkout lane of the store; `start()` after the store opened, `run()` under the gateway's TaskGroup.

    Device inputs arrive through `feed` (synchronous, from the coordinators' publish path) and are processed in
    order by `run`; API commands call `execute` directly. Both go through one lock per lane.
    """

    def __init__(
        self,
        store: GatewayStore,
        store_id: str,
        catalogue: Catalogue,
        lanes: Sequence[str],
        *,
        lane_scales: Mapping[str, str] | None = None,
        scales: ScaleCoordinator | None = None,
        scan_config: ScanConfig | None = None,
        rules: LaneRules | None = None,
        publish: Callable[[dict[str, Any]], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.store_id = store_id
        self.catalogue = catalogue
        self.lane_ids = list(dict.fromkeys(lanes))
        self.lane_scales = dict(lane_scales or {})
        self.scales = scales
        self.scan_config = scan_config or ScanConfig()
        self.rules = rules or LaneRules()
        self._publish = publish
        self._clock = clock
        self.lanes: dict[str, CheckoutLane] = {}
        self._locks = {lane: asyncio.Lock() for lane in self.lane_ids}
        self._inputs: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(maxsize=1000)
        self.last_error: dict[str, dict[str, Any] | None] = dict.fromkeys(self.lane_ids)
        self.rejected: dict[str, int] = {}
        """Device inputs the lane refused, by reason kind (`unknown_item`, `lane`, `dropped`: the input queue of
        1000 was full — a lane scans a few items a minute, so only a wedged database gets there)."""

    # --- lifecycle ---

    async def start(self) -> None:
        """Create the tables and rebuild every lane from its journal."""
        journals = await self.store.transact(lambda conn: _load_journals(conn, self.lane_ids))
        for lane in self.lane_ids:
            self.lanes[lane] = CheckoutLane(
                self.store_id, lane, self.catalogue, self.rules, journal=journals.get(lane, [])
            )
            tx = self.lanes[lane].open_transaction
            if tx is not None:
                _log.info(
                    "lane %s: transaction %s still open after restart (%d lines)",
                    lane,
                    tx.transaction_id,
                    len(tx.lines),
                )

    async def run(self) -> None:
        """Process device inputs in arrival order until cancelled."""
        while True:
            kind, item = await self._inputs.get()
            try:
                if kind == "scan":
                    await self._device_scan(item)
                elif kind == "scale":
                    await self._device_weight(item)
            except RetailError as exc:
                self._refused(item.get("lane"), exc)
            except UnknownLane:
                # feed() admits only configured lanes; kept so that one bad item cannot stop every lane
                self.rejected["unknown_lane"] = self.rejected.get("unknown_lane", 0) + 1
            finally:
                self._inputs.task_done()

    async def drained(self) -> None:
        """Wait until every device input queued so far has been processed (tests, orderly shutdown)."""
        await self._inputs.join()

    # --- device feed ---

    def feed(self, item: dict[str, Any]) -> None:
        """A published device item (`{"type": "scan"|"scale", …}`); lane scans and lane-scale weights are queued."""
        kind = item.get("type")
        if kind == "scan":
            record = item.get("scan") or {}
            if record.get("role") != "lane" or record.get("lane") not in self._locks:
                return
            self._queue("scan", record)
        elif kind == "scale":
            view = item.get("scale") or {}
            if view.get("lane") not in self._locks:
                return
            self._queue("scale", view)

    def _queue(self, kind: str, item: dict[str, Any]) -> None:
        try:
            self._inputs.put_nowait((kind, item))
        except asyncio.QueueFull:
            self.rejected["dropped"] = self.rejected.get("dropped", 0) + 1

    async def _device_scan(self, record: dict[str, Any]) -> None:
        scan = scan_from_record(record)
        await self.execute(str(record["lane"]), lambda lane, now: lane.scan(scan, now))

    async def _device_weight(self, view: dict[str, Any]) -> None:
        weight = view.get("weight")
        if weight is None or view.get("out_of_range") is not None:
            return
        grams = float(weight["weight_g"])
        await self.execute(str(view["lane"]), lambda lane, now: lane.weight(grams, stable=True, ts=now))

    def _refused(self, lane: object, exc: RetailError) -> None:
        kind = "unknown_item" if isinstance(exc, UnknownItem) else "lane"
        self.rejected[kind] = self.rejected.get(kind, 0) + 1
        if isinstance(lane, str) and lane in self.last_error:
            self.last_error[lane] = {"kind": kind, "message": str(exc), "ts": self._clock()}
            self._notify(lane)

    # --- commands ---

    def lane(self, lane_id: str) -> CheckoutLane:
        """The running lane; `UnknownLane` if the store has none of that id."""
        lane = self.lanes.get(lane_id)
        if lane is None:
            raise UnknownLane(lane_id)
        return lane

    async def execute(self, lane_id: str, command: Command) -> list[LaneEvent]:
        """Run one command on a lane: compute, journal (one transaction with any sale), apply, notify.

        Raises `UnknownLane`, or the lane's `LaneError` / `UnknownItem` (nothing journaled). Returns the events.
        """
        lane = self.lane(lane_id)
        async with self._locks[lane_id]:
            events = command(lane, self._clock())
            if not events:
                return []
            await self._commit(lane, events)
            self.last_error[lane_id] = None
            tx = lane.open_transaction
            if tx is not None and tx.pending_line is not None:
                await self._fresh_weight(lane)
        self._notify(lane_id)
        return events

    async def _commit(self, lane: CheckoutLane, events: list[LaneEvent]) -> None:
        state = lane.state
        for event in events:
            state = apply(state, event)  # dry run: the same fold the lane applies after the commit
        payload = None
        outbox: list[NewEvent] = []
        if any(isinstance(e, TransactionCompleted) for e in events):
            payload = state.transaction.payload if state.transaction is not None else None
            if payload is not None:
                kind = (
                    EventType.SALE_COMPLETED
                    if isinstance(payload, SaleCompleted)
                    else EventType.SALE_RETURNED
                )
                outbox.append(NewEvent(kind, payload.ts, payload.model_dump(mode="json"), PRIORITY_HIGH))
        catalogue = self.catalogue
        await self.store.transact(
            lambda conn: _journal(conn, lane.lane, events, payload, catalogue), events=outbox
        )
        lane.apply(events)
        if payload is not None:
            _log.info("lane %s: %s %s", lane.lane, outbox[0].event_type, payload.transaction_id)

    async def _fresh_weight(self, lane: CheckoutLane) -> None:
        """After a scan left a weighed line waiting: the pan's current stable weight, if the scale reads one."""
        scale_id = self.lane_scales.get(lane.lane)
        if scale_id is None or self.scales is None:
            return
        view = self.scales.view(scale_id)
        weight = view.get("weight")
        if not view.get("online") or weight is None or view.get("out_of_range") is not None:
            return
        if weight.get("age_s") is None or weight["age_s"] > FRESH_WEIGHT_S:
            return
        try:
            events = lane.weight(float(weight["weight_g"]), stable=True, ts=self._clock())
        except RetailError:  # the scan is committed; a weight the lane cannot take just waits for the next
            return
        if events:
            await self._commit(lane, events)

    # --- API helpers ---

    def decode(self, code: str) -> ProductScan | MemberScan:
        """A code typed at the cashier screen, read as a scanner line (AIM prefix optional); `ValueError`."""
        try:
            return decode_scan(code.strip(), self.scan_config)
        except ProtocolError as exc:
            raise ValueError(str(exc)) from exc

    @staticmethod
    def member_scan(member_id: str) -> MemberScan:
        """A member number entered at the cashier screen, as the scan it stands for."""
        return MemberScan(member_id=member_id)

    async def sale(
        self, transaction_id: str
    ) -> tuple[SaleCompleted | SaleReturned, list[SaleReturned]] | None:
        """A completed sale (or return) and the returns recorded against it; None if unknown here."""
        return await self.store.transact(lambda conn: _sale(conn, transaction_id))

    async def recent_sales(self, *, lane: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Completed sales and returns, newest first (their wire payloads, plus `kind`)."""
        return await self.store.transact(lambda conn: _recent(conn, lane, min(limit, RECENT_SALES_MAX)))

    async def book_stock(self, gtins: list[str] | None = None) -> dict[str, Decimal]:
        """Book stock per GTIN (`edge.bookstock.book_stock`)."""
        return await self.store.transact(lambda conn: bookstock.book_stock(conn, gtins))

    def view(self, lane_id: str) -> dict[str, Any]:
        """A lane for the cashier screen: cashier, the current (or last) transaction, scale, last refusal."""
        lane = self.lane(lane_id)
        state = lane.state
        scale_id = self.lane_scales.get(lane_id)
        scale = None
        if scale_id is not None and self.scales is not None:
            scale = self.scales.view(scale_id)
        return {
            "lane": lane_id,
            "cashier": state.cashier,
            "scale": scale,
            "scale_clear": state.scale_clear,
            "transaction": None if state.transaction is None else transaction_view(state.transaction),
            "last_error": self.last_error.get(lane_id),
        }

    def views(self) -> list[dict[str, Any]]:
        """Every lane, in config order."""
        return [self.view(lane) for lane in self.lane_ids]

    def _notify(self, lane_id: str) -> None:
        if self._publish is not None:
            self._publish({"type": "lane", "lane": self.view(lane_id)})


def lane_service_for(
    config: LoadedConfig,
    store: GatewayStore,
    scales: ScaleCoordinator | None,
    publish: Callable[[dict[str, Any]], None] | None,
) -> LaneService | None:
    """The store's lanes (distinct `lane` of its lane scanners and lane scales), or None without any.

    Lanes price from the catalogue (config key `catalogue:`): a store with lanes but no catalogue runs without
    them and says so once (the config check requires the catalogue only for bins' SKUs).
    """
    s = config.store
    lane_ids = [sc.lane for sc in s.scanners if sc.lane is not None] + [sc.lane for sc in s.scales if sc.lane]
    if not lane_ids:
        return None
    if config.catalogue is None:
        _log.warning(
            "checkout lanes %s are not run: the store config has no `catalogue:`", sorted(set(lane_ids))
        )
        return None
    patterns = s.barcodes.member_patterns
    scan_config = ScanConfig(
        member_patterns=tuple(patterns) if patterns is not None else DEFAULT_MEMBER_PATTERNS,
        rcn_region=s.barcodes.rcn_region,
    )
    return LaneService(
        store,
        s.store_id,
        config.catalogue,
        lane_ids,
        lane_scales={sc.lane: sc.id for sc in s.scales if sc.lane is not None},
        scales=scales,
        scan_config=scan_config,
        publish=publish,
    )


def _sale(
    conn: sqlite3.Connection, transaction_id: str
) -> tuple[SaleCompleted | SaleReturned, list[SaleReturned]] | None:
    row = conn.execute("SELECT kind, json FROM sales WHERE transaction_id = ?", (transaction_id,)).fetchone()
    if row is None:
        return None
    kind, text = row
    payload: SaleCompleted | SaleReturned = (
        SaleCompleted.model_validate_json(text) if kind == "sale" else SaleReturned.model_validate_json(text)
    )
    returns = [
        SaleReturned.model_validate_json(r[0])
        for r in conn.execute(
            "SELECT json FROM sales WHERE original_transaction_id = ? ORDER BY ts, transaction_id",
            (transaction_id,),
        )
    ]
    return payload, returns


def _recent(conn: sqlite3.Connection, lane: str | None, limit: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT kind, json FROM sales WHERE (? IS NULL OR lane = ?) ORDER BY ts DESC, transaction_id DESC LIMIT ?",
        (lane, lane, limit),
    ).fetchall()
    return [{"kind": kind, **json.loads(text)} for kind, text in rows]


__all__ = [
    "FRESH_WEIGHT_S",
    "LaneService",
    "UnknownLane",
    "ensure_schema",
    "scan_from_record",
    "transaction_view",
]
