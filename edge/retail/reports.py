"""Store reports: the replenishment list, ABC classes by value and by velocity, slow movers — and CSV output.

**Replenishment** (DOMAIN.md: "replenishment suggestions come from shelf vs back-room stock"): a bin is listed
when its shelf count is below its safety stock (the `low` alert's rule, `count < safety_stock`). Per SKU the
back room holds `book − Σ shelf` (book stock is what the store owns, shelf stock what the sensors count on
every bin of that SKU; never below 0). Each listed bin needs `max_stock − count` to be full; the SKU's back
room is shared among its listed bins emptiest first (lowest count/max, then bin id), so `bring` never adds up
to more than the back room holds, and `short` (need − bring) is what must be ordered. A bin whose count is
unknown is not listed and its SKU's back room is marked uncertain (its shelf stock is not known).

**ABC** (classic Pareto classification, 80/15/5): SKUs are ranked by the metric, highest first (ties by SKU);
each SKU's class depends on the cumulative share of the SKUs ranked *before* it — A while that is < 80 %, B
while < 95 %, C after. So the A class is the smallest top set reaching 80 % of the total (the SKU that
crosses 80 % is A), B the next up to 95 %, C the tail. A SKU with no sales is C; with a zero total everything
is C. Every SKU gets exactly one class. Two metrics: **value** (net revenue, CNY: sales minus returns) and
**velocity** (net units sold: a counted line's qty, a weighed or labelled package 1).

**Slow movers**: SKUs with book stock > 0 and no sale in the last N days (never sold counts as slow), oldest
first.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Literal

from cloud_bridge.contract import SaleCompleted, SaleReturned, parse_rfc3339, rfc3339
from edge.retail.catalogue import Catalogue

DAY_S: Final = 86_400.0
ABC_A: Final = Decimal("0.80")
ABC_B: Final = Decimal("0.95")


def _names(catalogue: Catalogue | None, sku: str) -> tuple[str, str]:
    item = catalogue.get(sku) if catalogue is not None else None
    return (item.name.zh, item.name.en) if item is not None else ("", "")


# --- replenishment -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BinStock:
    """A bin's configuration and current shelf count (None: unknown)."""

    bin_id: str
    sku: str
    shelf_count: int | None
    safety_stock: int
    max_stock: int
    location: str = ""
    name_zh: str = ""
    name_en: str = ""


@dataclass(frozen=True, slots=True)
class ReplenishmentRow:
    """One bin to refill."""

    bin_id: str
    sku: str
    name_zh: str
    name_en: str
    location: str
    shelf_count: int
    safety_stock: int
    max_stock: int
    need: int
    """max_stock − shelf_count: what makes the bin full."""
    back_room: int
    """The SKU's back-room stock (book − all shelves), before this list takes from it."""
    bring: int
    """What to bring from the back room to this bin."""
    short: int
    """need − bring: not in the back room — order it."""
    back_room_uncertain: bool = False


def replenishment(bins: Sequence[BinStock], book: Mapping[str, int]) -> list[ReplenishmentRow]:
    """The refill list: bins under safety stock with the back-room quantity to bring (see the module docstring)."""
    shelf: dict[str, int] = {}
    uncertain: set[str] = set()
    for b in bins:
        if b.shelf_count is None:
            uncertain.add(b.sku)
        else:
            shelf[b.sku] = shelf.get(b.sku, 0) + b.shelf_count
    back_room = {sku: max(book.get(sku, 0) - shelf.get(sku, 0), 0) for sku in {b.sku for b in bins}}
    low = [b for b in bins if b.shelf_count is not None and b.shelf_count < b.safety_stock]
    low.sort(key=lambda b: (b.sku, (b.shelf_count or 0) / b.max_stock, b.bin_id))
    left = dict(back_room)
    rows = []
    for b in low:
        assert b.shelf_count is not None  # noqa: S101 - filtered above
        need = max(b.max_stock - b.shelf_count, 0)
        bring = min(need, left[b.sku])
        left[b.sku] -= bring
        rows.append(
            ReplenishmentRow(
                b.bin_id,
                b.sku,
                b.name_zh,
                b.name_en,
                b.location,
                b.shelf_count,
                b.safety_stock,
                b.max_stock,
                need,
                back_room[b.sku],
                bring,
                need - bring,
                b.sku in uncertain,
            )
        )
    rows.sort(key=lambda r: (r.location, r.bin_id))
    return rows


# --- sales aggregates ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SkuSales:
    """Net sales of one SKU over a period."""

    sku: str
    value: Decimal
    """Net revenue, CNY (sales − refunds)."""
    units: int
    """Net units (a weighed or labelled package is 1)."""
    last_sold_ts: float | None
    """Time of the last sale (not return) of the SKU."""


def sales_by_sku(
    sales: Iterable[SaleCompleted], returns: Iterable[SaleReturned] = (), *, since_ts: float | None = None
) -> dict[str, SkuSales]:
    """Aggregate sales and returns per GTIN (those before `since_ts` left out)."""
    value: dict[str, Decimal] = {}
    units: dict[str, int] = {}
    last: dict[str, float] = {}
    signed: list[tuple[SaleCompleted | SaleReturned, int]] = [
        *((s, 1) for s in sales),
        *((r, -1) for r in returns),
    ]
    for payload, sign in signed:
        ts = parse_rfc3339(payload.ts).timestamp()
        if since_ts is not None and ts < since_ts:
            continue
        for item in payload.items:
            value[item.gtin] = value.get(item.gtin, Decimal("0.00")) + sign * item.amount
            units[item.gtin] = units.get(item.gtin, 0) + sign * (item.qty if item.qty is not None else 1)
            if sign > 0:
                last[item.gtin] = max(last.get(item.gtin, ts), ts)
    return {sku: SkuSales(sku, value[sku], units[sku], last.get(sku)) for sku in sorted(value)}


# --- ABC -----------------------------------------------------------------------------------------------------

AbcClass = Literal["A", "B", "C"]


@dataclass(frozen=True, slots=True)
class AbcRow:
    """One SKU's rank and class by one metric."""

    rank: int
    sku: str
    name_zh: str
    name_en: str
    metric: Decimal
    share: Decimal
    """metric / total (0..1, 4 places)."""
    cumulative_share: Decimal
    """Share of this SKU and every SKU ranked above it (0..1, 4 places)."""
    abc_class: AbcClass


def abc_classes(
    metric: Mapping[str, Decimal | int],
    *,
    skus: Iterable[str] = (),
    catalogue: Catalogue | None = None,
    a_share: Decimal = ABC_A,
    b_share: Decimal = ABC_B,
) -> list[AbcRow]:
    """ABC classes of every SKU in `metric` and `skus` (SKUs without a metric count 0); negative metrics
    (more returned than sold in the period) count 0. Rows in rank order."""
    if not Decimal(0) < a_share <= b_share <= Decimal(1):
        raise ValueError("need 0 < a_share ≤ b_share ≤ 1")
    values = {sku: max(Decimal(metric.get(sku, 0)), Decimal(0)) for sku in {*metric, *skus}}
    total = sum(values.values(), Decimal(0))
    ranked = sorted(values.items(), key=lambda kv: (-kv[1], kv[0]))
    rows = []
    before = Decimal(0)
    four = Decimal("0.0001")
    for rank, (sku, value) in enumerate(ranked, start=1):
        share = value / total if total > 0 else Decimal(0)
        cls: AbcClass
        if value <= 0:
            cls = "C"
        elif before < a_share:
            cls = "A"
        elif before < b_share:
            cls = "B"
        else:
            cls = "C"
        before += share
        zh, en = _names(catalogue, sku)
        rows.append(AbcRow(rank, sku, zh, en, value, share.quantize(four), before.quantize(four), cls))
    return rows


def abc_by_value(
    sales: Mapping[str, SkuSales], *, skus: Iterable[str] = (), catalogue: Catalogue | None = None
) -> list[AbcRow]:
    """ABC by net revenue."""
    return abc_classes({k: v.value for k, v in sales.items()}, skus=skus, catalogue=catalogue)


def abc_by_velocity(
    sales: Mapping[str, SkuSales], *, skus: Iterable[str] = (), catalogue: Catalogue | None = None
) -> list[AbcRow]:
    """ABC by net units sold."""
    return abc_classes({k: v.units for k, v in sales.items()}, skus=skus, catalogue=catalogue)


# --- slow movers ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SlowMover:
    """A SKU in stock that has not sold for `days_since` days (None: never sold)."""

    sku: str
    name_zh: str
    name_en: str
    book_qty: Decimal
    last_sold: str | None
    days_since: int | None


def slow_movers(
    last_sold_ts: Mapping[str, float | None],
    book: Mapping[str, int | Decimal],
    *,
    now: float,
    days: int,
    catalogue: Catalogue | None = None,
) -> list[SlowMover]:
    """SKUs with book stock > 0 and no sale in the last `days` days; never-sold first, then oldest sale."""
    if days < 1:
        raise ValueError("days must be ≥ 1")
    cutoff = now - days * DAY_S
    rows = []
    for sku, qty in book.items():
        if qty <= 0:
            continue
        last = last_sold_ts.get(sku)
        if last is not None and last >= cutoff:
            continue
        zh, en = _names(catalogue, sku)
        since = None if last is None else math.floor((now - last) / DAY_S)
        rows.append(SlowMover(sku, zh, en, Decimal(qty), None if last is None else rfc3339(last), since))
    rows.sort(key=lambda r: (r.days_since is not None, -(r.days_since or 0), r.sku))
    return rows


# --- CSV -----------------------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, float):
        return repr(round(value, 3))
    return str(value)


def to_csv(rows: Sequence[Any], *, columns: Sequence[str] | None = None, bom: bool = False) -> str:
    """Dataclass rows (or dicts) → CSV text with a header row; Decimal in plain notation, None empty.

    `bom=True` prefixes a UTF-8 byte-order mark: Excel on a Chinese Windows opens a CSV without one as GBK and
    garbles the 中文 names.
    """
    if columns is None:
        if not rows:
            raise ValueError("columns are needed for an empty report")
        first = rows[0]
        columns = (
            [f.name for f in dataclasses.fields(first)] if dataclasses.is_dataclass(first) else list(first)
        )
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        get = row.get if isinstance(row, Mapping) else (lambda name, r=row: getattr(r, name))
        writer.writerow([_cell(get(name)) for name in columns])
    return ("\ufeff" if bom else "") + out.getvalue()


__all__ = [
    "AbcRow",
    "BinStock",
    "ReplenishmentRow",
    "SkuSales",
    "SlowMover",
    "abc_by_value",
    "abc_by_velocity",
    "abc_classes",
    "replenishment",
    "sales_by_sku",
    "slow_movers",
    "to_csv",
]
