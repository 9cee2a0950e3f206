"""Store reports on the gateway (issue #6 parts 8 and 9): replenishment, ABC, slow movers, staff response times.

    GET /reports                                   the reports page (zh-CN / en, tablet)
    GET /api/reports/replenishment[.csv]           bins under safety stock, back-room stock, what to bring
    GET /api/reports/abc[.csv]?by=value|velocity&days=N
    GET /api/reports/slow-movers[.csv]?days=N
    GET /api/reports/staff[.csv]?from=&to=&kind=   time to acknowledge / resolve, per shift and staff member

The rules are the pure functions of `edge.retail.reports` and `edge.retail.staff`
(docs/store-workflows.md); this module only gathers their inputs from the running gateway:

- **shelf counts** from the live estimators (`gateway.bin_view`), **bins** from the config;
- **book stock** per GTIN (`edge.bookstock`); a bin's SKU is mapped to its GTIN through the catalogue (a store
  SKU alias such as a produce code has its own GTIN), so shelf and book are compared per product;
- **sales and returns** from the lanes' `sales` table (`edge.lanes`; absent until a lane ran: no sales);
- **last sale** per GTIN from the book-stock ledger (`book_stock_moves`, cause `sale`): one indexed aggregate
  instead of reading a year of sales to find out that a SKU has not sold;
- **alerts** (raised / acknowledged / resolved times, who acknowledged) from the alert log.

Access (docs/security.md): replenishment is staff work (role `staff`); ABC, slow movers and the staff report
are manager data (role `manager`). The routes live under `/api/reports/` so the API's permission table can
grant them; this module enforces nothing itself.

CSV: UTF-8 with a byte-order mark (Excel on a Chinese Windows reads a CSV without one as GBK and garbles the
中文 names), header row in the English field names of the JSON rows, CRLF rows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any, Final, Literal, Protocol
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import FileResponse, Response

from cloud_bridge.contract import parse_rfc3339, rfc3339
from edge import bookstock
from edge.config import Bin
from edge.retail.catalogue import Catalogue, normalise_gtin
from edge.retail.hours import DEFAULT_TZ, Shift, Shifts
from edge.retail.reports import (
    DAY_S,
    AbcRow,
    BinStock,
    ReplenishmentRow,
    SkuSales,
    SlowMover,
    abc_by_value,
    abc_by_velocity,
    replenishment,
    slow_movers,
    to_csv,
)
from edge.retail.staff import ResponseStats, StaffReport, response_times
from edge.store import AlertRow

WEB_DIR: Final = Path(__file__).resolve().parent / "web"

DAYS_DEFAULT: Final = 30
DAYS_MAX: Final = 366
STAFF_DAYS_DEFAULT: Final = 7
STAFF_SPAN_MAX_DAYS: Final = 366
ALL_DAY: Final = Shifts(shifts=[Shift(name="all", hours="00:00-24:00")])
"""Without `shifts:` in the store config every alert falls in one shift, `all`."""

REPLENISHMENT_COLUMNS: Final = tuple(f.name for f in dataclasses.fields(ReplenishmentRow))
ABC_COLUMNS: Final = tuple(f.name for f in dataclasses.fields(AbcRow))
SLOW_COLUMNS: Final = tuple(f.name for f in dataclasses.fields(SlowMover))
STAFF_COLUMNS: Final = ("dimension", *(f.name for f in dataclasses.fields(ResponseStats)))


class _Config(Protocol):
    @property
    def catalogue(self) -> Catalogue | None: ...


class _StoreConfig(Protocol):
    @property
    def shifts(self) -> Shifts | None: ...


class _Store(Protocol):
    async def transact(self, fn: Any, events: Sequence[Any] = ()) -> Any: ...


class ReportSource(Protocol):
    """What the reports read of the gateway (`edge.gateway.Gateway` has it)."""

    @property
    def config(self) -> _Config: ...
    @property
    def store_cfg(self) -> _StoreConfig: ...
    @property
    def store(self) -> _Store: ...
    @property
    def bins(self) -> Mapping[str, Bin]: ...

    def bin_view(self, bin_id: str) -> dict[str, Any]: ...


# --- data access (runs on the store thread, inside `GatewayStore.transact`) ------------------------------------


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
    return row is not None


def _book_stock(conn: sqlite3.Connection) -> dict[str, Decimal]:
    return bookstock.book_stock(conn) if _has_table(conn, "book_stock") else {}


def _sales_rows_since(conn: sqlite3.Connection, since_ts: float) -> list[tuple[str, str]]:
    """(kind, json) of sales and returns from `since_ts` on (a day of margin in SQL for a non-UTC offset; the
    exact cut is `sales_by_sku(since_ts=)`). Only the fetch runs on the store thread: parsing a month of sales
    there would hold up every alert and stock write behind it."""
    if not _has_table(conn, "sales"):
        return []
    rows = conn.execute(
        "SELECT kind, json FROM sales WHERE ts >= ? ORDER BY ts", (rfc3339(since_ts - DAY_S),)
    ).fetchall()
    return [(str(k), str(j)) for k, j in rows]


def sales_from_rows(rows: Sequence[tuple[str, str]], *, since_ts: float) -> dict[str, SkuSales]:
    """`edge.retail.reports.sales_by_sku` over the `sales` table's (kind, json) rows, same rules (net value and
    units per GTIN, a weighed or labelled package 1 unit, last sale not return), reading the JSON directly.

    Why not `SaleCompleted.model_validate_json` then `sales_by_sku`: every row was written by the lane from a
    validated payload, and re-validating a month of a busy store's sales took 10–16 s on the loaded 2-core
    test machine (30 000 sales; GTIN check digits, totals); the whole ABC request takes about 2 s this way.
    tests/edge/test_reports_api.py checks both give the same result."""
    value: dict[str, Decimal] = {}
    units: dict[str, int] = {}
    last: dict[str, float] = {}
    for kind, text in rows:
        data = json.loads(text)
        ts = parse_rfc3339(data["ts"]).timestamp()
        if ts < since_ts:
            continue
        sign = 1 if kind == "sale" else -1
        for item in data["items"]:
            gtin = item["gtin"]
            qty = item.get("qty")
            value[gtin] = value.get(gtin, Decimal("0.00")) + sign * Decimal(item["amount"])
            units[gtin] = units.get(gtin, 0) + sign * (qty if qty is not None else 1)
            if sign > 0:
                last[gtin] = max(last.get(gtin, ts), ts)
    return {sku: SkuSales(sku, value[sku], units[sku], last.get(sku)) for sku in sorted(value)}


def _last_sold(conn: sqlite3.Connection) -> dict[str, float]:
    """Time of the last sale per GTIN, from the book-stock ledger (one move per sold GTIN per sale)."""
    if not _has_table(conn, "book_stock_moves"):
        return {}
    rows = conn.execute(
        "SELECT gtin, MAX(ts) FROM book_stock_moves WHERE cause = ? GROUP BY gtin", (bookstock.CAUSE_SALE,)
    ).fetchall()
    return {str(g): float(ts) for g, ts in rows}


def _alerts_between(conn: sqlite3.Connection, start_ts: float, end_ts: float) -> list[AlertRow]:
    """Alerts raised in [start, end) (the alert log writes `raised_at` as RFC 3339 UTC; exact in Python)."""
    rows = conn.execute(
        "SELECT alert_id, bin_id, sku, kind, state, count, message, raised_at, updated_at, acknowledged_by,"
        " acknowledged_at, resolved_at FROM alerts WHERE raised_at >= ? AND raised_at < ?",
        (rfc3339(start_ts - DAY_S), rfc3339(end_ts + DAY_S)),
    ).fetchall()
    out = []
    for r in rows:
        row = AlertRow(*r)
        if start_ts <= parse_rfc3339(row.raised_at).timestamp() < end_ts:
            out.append(row)
    return out


# --- helpers ---------------------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    return value


def _row(obj: Any) -> dict[str, Any]:
    return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def _csv(rows: Sequence[Any], columns: Sequence[str], name: str) -> Response:
    stamp = datetime.now(UTC).strftime("%Y%m%d")
    return Response(
        content=to_csv(rows, columns=columns, bom=True).encode("utf-8"),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}-{stamp}.csv"'},
    )


def gtin_of(catalogue: Catalogue | None, sku: str) -> str:
    """A bin SKU's GTIN-14 (book stock and sales are per GTIN): catalogue (alias too), else the normalised GTIN."""
    item = catalogue.get(sku) if catalogue is not None else None
    if item is not None:
        return item.gtin
    try:
        return normalise_gtin(sku)
    except ValueError:
        return sku


def _plain(qty: Decimal) -> Decimal:
    """Book stock as written for people: `5`, not the ledger's `5.000`; kg keep their grams (`1.25`)."""
    return qty.quantize(Decimal(1)) if qty == qty.to_integral_value() else qty.normalize()


def _whole_units(qty: Decimal) -> int:
    """Book stock of counted goods is whole units; a fraction (never expected) is rounded down: never promise
    goods that are not there."""
    return int(qty.to_integral_value(rounding=ROUND_FLOOR))


def _parse_when(text: str, zone: ZoneInfo, *, end: bool) -> float:
    """`YYYY-MM-DD` (a local store day: its start, or for `to` its end) or an RFC 3339 timestamp → epoch s."""
    try:
        day = date.fromisoformat(text)
    except ValueError:
        pass
    else:
        if end:
            day += timedelta(days=1)
        return datetime.combine(day, dtime(0), tzinfo=zone).timestamp()
    try:
        return parse_rfc3339(text).timestamp()
    except ValueError as exc:
        raise HTTPException(
            status_code=422, detail=f"expected YYYY-MM-DD or an RFC 3339 timestamp, got {text!r}"
        ) from exc


# --- the reports (pure over their inputs, so the API and its tests share them) -------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ReplenishmentReport:
    """The refill list in urgency order, plus what it was computed from."""

    rows: list[ReplenishmentRow]
    generated_at: str
    unknown_bins: list[str]
    """Bins whose count is unknown: not listed, their SKU's back room is uncertain."""


def replenishment_report(
    bins: Sequence[Bin],
    counts: Mapping[str, int | None],
    book: Mapping[str, Decimal],
    catalogue: Catalogue | None,
    *,
    now: float,
) -> ReplenishmentReport:
    """Bins under safety stock, most urgent first: the emptiest (count / max) first, then by bin id.

    Variable-measure SKUs are booked in kg and shelved in packages, so their back room cannot be computed: it
    is reported as 0 and uncertain (bring what the back room has; `short` is then an upper bound)."""
    variable = {
        gtin_of(catalogue, b.sku)
        for b in bins
        if catalogue is not None and (item := catalogue.get(b.sku)) is not None and item.variable_measure
    }
    stock = [
        BinStock(
            bin_id=b.id,
            sku=gtin_of(catalogue, b.sku),
            shelf_count=counts.get(b.id),
            safety_stock=b.safety_stock,
            max_stock=b.max_stock,
            location=b.location,
            name_zh=b.name.zh,
            name_en=b.name.en,
        )
        for b in bins
    ]
    whole = {g: _whole_units(q) for g, q in book.items() if g not in variable}
    rows = [
        dataclasses.replace(r, back_room_uncertain=True) if r.sku in variable else r
        for r in replenishment(stock, whole)
    ]
    rows.sort(key=lambda r: (r.shelf_count / r.max_stock, r.bin_id))
    return ReplenishmentReport(
        rows=rows,
        generated_at=rfc3339(now),
        unknown_bins=sorted(b.id for b in bins if counts.get(b.id) is None),
    )


def staff_report(alerts: Sequence[AlertRow], shifts: Shifts | None, kinds: Sequence[str] = ()) -> StaffReport:
    """Response times of `alerts` (of `kinds` only, when given) per shift and per staff member."""
    chosen = [a for a in alerts if not kinds or a.kind in kinds]
    return response_times(chosen, shifts or ALL_DAY)


def _staff_rows(report: StaffReport) -> list[dict[str, Any]]:
    return [{"dimension": "shift", **_row(s)} for s in report.by_shift] + [
        {"dimension": "staff", **_row(s)} for s in report.by_staff
    ]


# --- routes ----------------------------------------------------------------------------------------------------

Metric = Literal["value", "velocity"]


def reports_router(gateway: ReportSource) -> APIRouter:
    """The report routes and the `/reports` page, bound to one gateway (`app.include_router(...)`)."""
    router = APIRouter(tags=["reports"])

    def catalogue() -> Catalogue | None:
        return gateway.config.catalogue

    def shifts() -> Shifts | None:
        return getattr(gateway.store_cfg, "shifts", None)

    def zone() -> ZoneInfo:
        s = shifts()
        return ZoneInfo(s.tz if s is not None else DEFAULT_TZ)

    async def replenishment_data() -> ReplenishmentReport:
        book: dict[str, Decimal] = await gateway.store.transact(_book_stock)
        counts = {bin_id: gateway.bin_view(bin_id)["count"] for bin_id in gateway.bins}
        return replenishment_report(list(gateway.bins.values()), counts, book, catalogue(), now=time.time())

    async def abc_data(by: Metric, days: int) -> tuple[float, list[AbcRow]]:
        now = time.time()
        since = now - days * DAY_S

        def read(conn: sqlite3.Connection) -> tuple[list[tuple[str, str]], dict[str, Decimal]]:
            return _sales_rows_since(conn, since), _book_stock(conn)

        rows, book = await gateway.store.transact(read)

        per_sku = await asyncio.to_thread(sales_from_rows, rows, since_ts=since)
        cat = catalogue()
        stocked = {gtin_of(cat, b.sku) for b in gateway.bins.values()} | {g for g, q in book.items() if q > 0}
        rank = abc_by_value if by == "value" else abc_by_velocity
        return since, rank(per_sku, skus=stocked, catalogue=cat)

    async def slow_data(days: int) -> tuple[float, list[SlowMover]]:
        now = time.time()

        def read(conn: sqlite3.Connection) -> tuple[dict[str, float], dict[str, Decimal]]:
            return _last_sold(conn), _book_stock(conn)

        last, book = await gateway.store.transact(read)
        plain = {g: _plain(q) for g, q in book.items()}
        return now, slow_movers(dict(last), plain, now=now, days=days, catalogue=catalogue())

    async def staff_data(
        start: str | None, end: str | None, kinds: Sequence[str]
    ) -> tuple[float, float, StaffReport]:
        z = zone()
        end_ts = _parse_when(end, z, end=True) if end else time.time()
        start_ts = _parse_when(start, z, end=False) if start else end_ts - STAFF_DAYS_DEFAULT * DAY_S
        if start_ts >= end_ts:
            raise HTTPException(status_code=422, detail="`from` must be before `to`")
        if end_ts - start_ts > STAFF_SPAN_MAX_DAYS * DAY_S:
            raise HTTPException(status_code=422, detail=f"at most {STAFF_SPAN_MAX_DAYS} days per report")
        alerts: list[AlertRow] = await gateway.store.transact(
            lambda conn: _alerts_between(conn, start_ts, end_ts)
        )
        return start_ts, end_ts, staff_report(alerts, shifts(), kinds)

    days_q = Query(default=DAYS_DEFAULT, ge=1, le=DAYS_MAX, description="the last N days")
    by_q = Query(default="value", description="rank by net revenue (CNY) or by net units sold")
    from_q = Query(
        default=None, alias="from", description="YYYY-MM-DD (local day) or RFC 3339; default 7 days ago"
    )
    to_q = Query(
        default=None, alias="to", description="YYYY-MM-DD (local day, inclusive) or RFC 3339; default now"
    )
    kind_q = Query(default=None, description="only alerts of these kinds (repeat the parameter)")

    @router.get("/reports", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(WEB_DIR / "reports.html", media_type="text/html; charset=utf-8")

    @router.get("/api/reports/replenishment")
    async def replenishment_json() -> dict[str, Any]:
        report = await replenishment_data()
        return {
            "generated_at": report.generated_at,
            "unknown_bins": report.unknown_bins,
            "rows": [_row(r) for r in report.rows],
        }

    @router.get("/api/reports/replenishment.csv", response_class=Response)
    async def replenishment_csv() -> Response:
        report = await replenishment_data()
        return _csv(report.rows, REPLENISHMENT_COLUMNS, "replenishment")

    @router.get("/api/reports/abc")
    async def abc_json(by: Metric = by_q, days: int = days_q) -> dict[str, Any]:
        since, rows = await abc_data(by, days)
        total = sum((r.metric for r in rows), Decimal(0))
        return {
            "by": by,
            "days": days,
            "since": rfc3339(since),
            "total": _jsonable(total),
            "classes": {c: sum(1 for r in rows if r.abc_class == c) for c in ("A", "B", "C")},
            "rows": [_row(r) for r in rows],
        }

    @router.get("/api/reports/abc.csv", response_class=Response)
    async def abc_csv(by: Metric = by_q, days: int = days_q) -> Response:
        _, rows = await abc_data(by, days)
        return _csv(rows, ABC_COLUMNS, f"abc-{by}")

    @router.get("/api/reports/slow-movers")
    async def slow_json(days: int = days_q) -> dict[str, Any]:
        now, rows = await slow_data(days)
        return {"days": days, "generated_at": rfc3339(now), "rows": [_row(r) for r in rows]}

    @router.get("/api/reports/slow-movers.csv", response_class=Response)
    async def slow_csv(days: int = days_q) -> Response:
        _, rows = await slow_data(days)
        return _csv(rows, SLOW_COLUMNS, "slow-movers")

    @router.get("/api/reports/staff")
    async def staff_json(
        start: str | None = from_q, end: str | None = to_q, kind: list[str] | None = kind_q
    ) -> dict[str, Any]:
        start_ts, end_ts, report = await staff_data(start, end, kind or [])
        return {
            "from": rfc3339(start_ts),
            "to": rfc3339(end_ts),
            "shifts": [s.name for s in (shifts() or ALL_DAY).shifts],
            "by_shift": [_row(s) for s in report.by_shift],
            "by_staff": [_row(s) for s in report.by_staff],
        }

    @router.get("/api/reports/staff.csv", response_class=Response)
    async def staff_csv(
        start: str | None = from_q, end: str | None = to_q, kind: list[str] | None = kind_q
    ) -> Response:
        _, _, report = await staff_data(start, end, kind or [])
        return _csv(_staff_rows(report), STAFF_COLUMNS, "staff-response")

    return router


__all__ = [
    "ReplenishmentReport",
    "ReportSource",
    "gtin_of",
    "replenishment_report",
    "reports_router",
    "sales_from_rows",
    "staff_report",
]
