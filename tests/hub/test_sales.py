"""Sales, returns, members and points through `HubDB.apply_batch` with real `EventBatch` payloads, on both
engines (SQLite file and PostgreSQL).

The numbers are docs/loyalty.md's worked examples, now through the database: each batch is built with the
contract models, serialised, and parsed by `hub.parse` exactly as ingest would; assertions read the tables
and `SalesService` (the API's reads). Times are Shanghai local unless they say Z.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from cloud_bridge.contract import (
    Event,
    EventBatch,
    EventType,
    SaleCompleted,
    SaleItem,
    SaleReturned,
    events_topic,
    line_amount,
    rfc3339,
)
from hub import sales as hub_sales
from hub.config import HubConfigError, parse_hub_config
from hub.db import HubDB
from hub.loyalty import DEFAULT_RULES
from hub.parse import BatchMessage, parse_message
from hub.sales_api import SalesService

GTIN_A = "07032069804988"  # tests/vectors/gs1_barcodes.json (biip test-suite)
GTIN_B = "05901234123457"
GTIN_WEIGHED = "02302148210869"
MEMBER = "M00042"
CST = timedelta(hours=8)


def cst(text: str) -> datetime:
    """A China Standard Time wall-clock reading as an aware UTC datetime."""
    return (datetime.fromisoformat(text) - CST).replace(tzinfo=UTC)


def item(price: str, qty: int = 1, gtin: str = GTIN_A) -> SaleItem:
    unit_price = Decimal(price)
    return SaleItem(gtin=gtin, qty=qty, unit_price=unit_price, amount=line_amount(unit_price, qty))


def weighed(price_per_kg: str, weight_kg: str, gtin: str = GTIN_WEIGHED) -> SaleItem:
    unit_price, weight = Decimal(price_per_kg), Decimal(weight_kg)
    return SaleItem(
        gtin=gtin, weight_kg=weight, unit_price=unit_price, amount=line_amount(unit_price, weight)
    )


def sale(
    transaction_id: str, at: datetime, *items: SaleItem, member_id: str | None = MEMBER, lane: str = "L1"
) -> SaleCompleted:
    return SaleCompleted(
        transaction_id=transaction_id,
        lane=lane,
        cashier="c1",
        member_id=member_id,
        items=list(items),
        total=sum((i.amount for i in items), Decimal("0.00")),
        ts=rfc3339(at),
    )


def a_return(transaction_id: str, of: SaleCompleted | str, at: datetime, *items: SaleItem) -> SaleReturned:
    return SaleReturned(
        transaction_id=transaction_id,
        original_transaction_id=of if isinstance(of, str) else of.transaction_id,
        lane="L2",
        cashier="c2",
        items=list(items),
        refund_total=sum((i.amount for i in items), Decimal("0.00")),
        ts=rfc3339(at),
    )


@dataclass
class Gateway:
    """One store's gateway as the hub sees it: contiguous seqs, each call one `events` batch."""

    store_id: str
    seq: int = 0
    sent: list[Event] = field(default_factory=list)

    @property
    def gateway_id(self) -> str:
        return f"{self.store_id}-gw"

    def event(self, data: SaleCompleted | SaleReturned) -> Event:
        self.seq += 1
        kind = EventType.SALE_COMPLETED if isinstance(data, SaleCompleted) else EventType.SALE_RETURNED
        event = Event(
            id=f"{self.gateway_id}:{self.seq}",
            seq=self.seq,
            type=kind,
            ts=data.ts,
            data=data.model_dump(mode="json"),
        )
        self.sent.append(event)
        return event

    def batch(self, *data: SaleCompleted | SaleReturned) -> BatchMessage:
        return self.message([self.event(d) for d in data])

    def message(self, events: list[Event]) -> BatchMessage:
        payload = EventBatch(
            store_id=self.store_id,
            gateway_id=self.gateway_id,
            first_seq=events[0].seq,
            last_seq=events[-1].seq,
            events=events,
        ).to_json()
        parsed = parse_message(events_topic(self.store_id), payload)
        assert isinstance(parsed, BatchMessage)
        return parsed


@contextlib.contextmanager
def settings(auto_create_members: bool = True) -> Iterator[None]:
    """The sale effects' process-wide settings for one test, restored afterwards."""
    previous = hub_sales.configure(hub_sales.SalesSettings(DEFAULT_RULES, auto_create_members))
    try:
        yield
    finally:
        hub_sales.configure(previous)


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[HubDB]:
    with settings():
        async with HubDB(db_url) as opened:
            yield opened


def service(db: HubDB, at: datetime) -> SalesService:
    """The API's sales and member operations with the clock stopped at `at`."""
    return SalesService(db, DEFAULT_RULES, clock=at.timestamp)


async def ledger(db: HubDB, member_id: str = MEMBER) -> list[tuple[str, str, int, int]]:
    rows = await db.query(
        "SELECT cause, ref, delta, debt_delta FROM points_ledger WHERE member_id = :m ORDER BY id",
        {"m": member_id},
    )
    return [(str(r[0]), str(r[1]), int(r[2]), int(r[3])) for r in rows]


async def member_row(db: HubDB, member_id: str = MEMBER) -> tuple[int, int, str, int, int]:
    """(balance, debt, cached tier, cached 30-day spend fen, cached 365-day spend fen)."""
    (row,) = await db.query(
        "SELECT balance, debt, tier, spend_30d_fen, spend_365d_fen FROM members WHERE member_id = :m",
        {"m": member_id},
    )
    return int(row[0]), int(row[1]), str(row[2]), int(row[3]), int(row[4])


async def quarantine_reasons(db: HubDB) -> list[str]:
    return [item.reason for item in await db.quarantined()]


# --- a sale ---------------------------------------------------------------------------------------------


async def test_a_member_sale_is_recorded_with_its_lines_points_and_tier(db: HubDB) -> None:
    gw = Gateway("s1")
    completed = sale("s1-L1-0001", cst("2026-03-01 10:00"), item("25.00", 4), weighed("39.80", "0.455"))
    result = await db.apply_batch(gw.batch(completed), 1.0)

    assert (result.applied, result.duplicates) == (1, 0)
    now = service(db, cst("2026-03-01 12:00"))
    (record,) = await now.sales(hub_sales.SalesFilter())
    assert (record.transaction_id, record.event_id, record.store_id, record.member_id) == (
        "s1-L1-0001",
        "s1-gw:1",
        "s1",
        MEMBER,
    )
    assert (record.total, record.refunded, record.ts, record.local_date) == (
        "118.11",
        "0.00",
        "2026-03-01T02:00:00.000Z",
        "2026-03-01",
    )
    assert [(line.gtin, line.qty, line.weight_kg, line.unit_price, line.amount) for line in record.items] == [
        (GTIN_A, 4, None, "25.00", "100.00"),
        (GTIN_WEIGHED, None, "0.455", "39.80", "18.11"),
    ]
    assert await db.query(
        "SELECT kind, line_no, gtin, qty, weight_g, unit_price_fen, amount_fen FROM sale_items ORDER BY line_no"
    ) == [("sale", 1, GTIN_A, 4, None, 2500, 10000), ("sale", 2, GTIN_WEIGHED, None, 455, 3980, 1811)]
    # 1.2 × 118.11 = 141.732 → 141; the member did not exist: created by the sale (auto_create).
    assert await ledger(db) == [("purchase", "s1-L1-0001", 141, 0)]
    member = await now.member(MEMBER)
    assert member is not None
    assert (member.points, member.points_owed, member.tier, member.spend_30d_cny) == (
        141,
        0,
        "bronze",
        "118.11",
    )
    assert (member.source, member.registered, member.birth_month) == ("sale", False, None)
    assert await member_row(db) == (141, 0, "bronze", 11811, 11811)


async def test_an_anonymous_sale_and_its_return_touch_no_member(db: HubDB) -> None:
    gw = Gateway("s1")
    completed = sale("s1-L1-0002", cst("2026-03-01 10:00"), item("12.50", 3), member_id=None)
    await db.apply_batch(
        gw.batch(completed, a_return("s1-L2-R01", completed, cst("2026-03-02 09:00"), item("12.50"))), 1.0
    )

    detail = await service(db, cst("2026-03-02 10:00")).sale("s1-L1-0002")
    assert detail is not None
    assert (detail.sale.member_id, detail.sale.total, detail.sale.refunded) == (None, "37.50", "12.50")
    assert [(r.transaction_id, r.refund, r.local_date, r.store_id) for r in detail.returns] == [
        ("s1-L2-R01", "12.50", "2026-03-02", "s1")
    ]
    assert await db.query("SELECT COUNT(*) FROM members") == [(0,)]
    assert await db.query("SELECT COUNT(*) FROM points_ledger") == [(0,)]


# --- idempotency ----------------------------------------------------------------------------------------


async def test_a_redelivered_batch_and_the_same_sale_in_a_new_event_change_nothing(db: HubDB) -> None:
    gw = Gateway("s1")
    completed = sale("s1-L1-0003", cst("2026-03-01 10:00"), item("25.00", 4))
    message = gw.batch(completed)
    first = await db.apply_batch(message, 1.0)
    redelivered = await db.apply_batch(message, 2.0)  # the broker's at-least-once: same event id
    copied = await db.apply_batch(gw.batch(completed), 3.0)  # the same sale under a new seq (event id)

    assert (first.applied, redelivered.duplicates, copied.applied) == (1, 1, 1)
    assert await db.query("SELECT transaction_id, event_id FROM sales") == [("s1-L1-0003", "s1-gw:1")]
    assert await db.query("SELECT COUNT(*) FROM sale_items") == [(1,)]
    assert await ledger(db) == [("purchase", "s1-L1-0003", 120, 0)]
    assert (await member_row(db))[0] == 120
    assert await quarantine_reasons(db) == []
    store = await db.store("s1")
    assert store is not None
    assert store.applied_seq == 2  # the copy's event is applied (it never blocks the store), with no effect


async def test_a_different_sale_reusing_a_transaction_id_is_quarantined_and_the_first_stands(
    db: HubDB,
) -> None:
    gw = Gateway("s1")
    await db.apply_batch(gw.batch(sale("s1-L1-0004", cst("2026-03-01 10:00"), item("25.00", 4))), 1.0)
    impostor = sale("s1-L1-0004", cst("2026-03-01 11:00"), item("99.00", 9))
    after = sale("s1-L1-0005", cst("2026-03-01 12:00"), item("10.00"))
    result = await db.apply_batch(gw.batch(impostor, after), 2.0)

    assert result.applied == 2
    assert await db.query("SELECT transaction_id, total_fen FROM sales ORDER BY transaction_id") == [
        ("s1-L1-0004", 10000),
        ("s1-L1-0005", 1000),
    ]
    assert await ledger(db) == [("purchase", "s1-L1-0004", 120, 0), ("purchase", "s1-L1-0005", 12, 0)]
    (reason,) = await quarantine_reasons(db)
    assert reason == (
        "sale s1-L1-0004: transaction id already recorded from event s1-gw:1 with a different sale;"
        " the first one stands, this one is not applied"
    )
    (kept,) = await db.quarantined()
    assert kept.topic == "shelfgate/v1/stores/s1/events"
    assert '"id":"s1-gw:2"' in kept.payload
    assert '"total":"891.00"' in kept.payload


# --- returns --------------------------------------------------------------------------------------------


async def test_partial_returns_of_a_double11_sale_reverse_exactly_what_it_earned(db: HubDB) -> None:
    """docs/loyalty.md example 8: 10 × 100.00 on Double 11 → +1 200 +50; return 1 → −170; the other 9 → −1 080."""
    gw = Gateway("s1")
    completed = sale("s1-L1-1111", cst("2026-11-11 00:30"), item("100.00", 10))
    await db.apply_batch(gw.batch(completed), 1.0)
    assert await member_row(db) == (1250, 0, "silver", 100000, 100000)

    await db.apply_batch(
        gw.batch(a_return("s1-L2-R11", completed, cst("2026-11-12 09:00"), item("100.00"))), 2.0
    )
    assert (await ledger(db))[-1] == ("return", "s1-L2-R11", -170, 0)
    # The refund lowers the spend on the sale's date: 900.00 left in both windows.
    assert await member_row(db) == (1080, 0, "silver", 90000, 90000)
    detail = await service(db, cst("2026-11-12 10:00")).sale("s1-L1-1111")
    assert detail is not None
    assert detail.sale.refunded == "100.00"

    await db.apply_batch(
        gw.batch(a_return("s1-L2-R12", completed, cst("2026-11-13 09:00"), item("100.00", 9))), 3.0
    )
    assert await ledger(db) == [
        ("purchase", "s1-L1-1111", 1200, 0),
        ("double11", "s1-L1-1111", 50, 0),
        ("return", "s1-L2-R11", -170, 0),
        ("return", "s1-L2-R12", -1080, 0),
    ]
    assert await member_row(db) == (0, 0, "bronze", 0, 0)
    member = await service(db, cst("2026-11-13 10:00")).member(MEMBER)
    assert member is not None
    assert (member.points, member.tier, member.spend_30d_cny, member.spend_365d_cny) == (
        0,
        "bronze",
        "0.00",
        "0.00",
    )


async def test_a_full_return_restores_points_spend_and_tier(db: HubDB) -> None:
    gw = Gateway("s1")
    completed = sale("s1-L1-0600", cst("2026-03-01 10:00"), item("300.00", 2))
    await db.apply_batch(gw.batch(completed), 1.0)
    assert await member_row(db) == (720, 0, "silver", 60000, 60000)

    full = a_return("s1-L2-R60", completed, cst("2026-03-05 10:00"), item("300.00", 2))
    await db.apply_batch(gw.batch(full), 2.0)

    assert await ledger(db) == [("purchase", "s1-L1-0600", 720, 0), ("return", "s1-L2-R60", -720, 0)]
    assert await member_row(db) == (0, 0, "bronze", 0, 0)
    as_of_before = await service(db, cst("2026-03-04 10:00")).member(MEMBER)
    assert as_of_before is not None
    assert (
        as_of_before.tier == "silver"
    )  # a tier "as of" before the return ignores it (docs/loyalty.md ex. 6)


async def test_a_return_that_does_not_fit_its_sale_is_quarantined_and_the_store_moves_on(db: HubDB) -> None:
    gw = Gateway("s1")
    completed = sale("s1-L1-0700", cst("2026-03-01 10:00"), item("25.00", 2))
    too_many = a_return("s1-L2-R70", completed, cst("2026-03-02 10:00"), item("25.00", 3))
    later = sale("s1-L1-0701", cst("2026-03-02 11:00"), item("10.00"))
    result = await db.apply_batch(gw.batch(completed, too_many, later), 1.0)

    assert result.applied == 3
    (reason,) = await quarantine_reasons(db)
    assert reason.startswith(
        "return refused: return s1-L2-R70: 3 × 07032069804988 at 25.00 CNY returned in total"
    )
    assert await db.query("SELECT COUNT(*) FROM sale_returns") == [(0,)]
    assert await ledger(db) == [("purchase", "s1-L1-0700", 60, 0), ("purchase", "s1-L1-0701", 12, 0)]
    store = await db.store("s1")
    assert store is not None
    assert store.applied_seq == 3


async def test_a_return_that_overtakes_its_sale_is_held_and_applied_when_the_sale_arrives(db: HubDB) -> None:
    """A cross-store return: store s2 takes back goods sold at s1 while s1's gateway was offline."""
    seller, returner = Gateway("s1"), Gateway("s2")
    completed = sale("s1-L1-0800", cst("2026-03-01 10:00"), item("50.00", 2))
    early = a_return("s2-L1-R80", completed, cst("2026-03-02 10:00"), item("50.00"))
    await db.apply_batch(returner.batch(early), 1.0)

    (held,) = await service(db, cst("2026-03-02 11:00")).held_returns()
    assert (held.transaction_id, held.original_transaction_id, held.store_id, held.event_id, held.refund) == (
        "s2-L1-R80",
        "s1-L1-0800",
        "s2",
        "s2-gw:1",
        "50.00",
    )
    assert held.reason == "original sale s1-L1-0800 not received yet"
    store = await db.store("s2")
    assert store is not None
    assert store.applied_seq == 1  # held in its own table, not in the store's order
    assert await db.query("SELECT COUNT(*) FROM members") == [(0,)]

    await db.apply_batch(seller.batch(completed), 2.0)

    assert await service(db, cst("2026-03-02 11:00")).held_returns() == []
    assert await ledger(db) == [("purchase", "s1-L1-0800", 120, 0), ("return", "s2-L1-R80", -60, 0)]
    detail = await service(db, cst("2026-03-02 11:00")).sale("s1-L1-0800")
    assert detail is not None
    assert detail.sale.refunded == "50.00"
    assert [(r.transaction_id, r.store_id, r.event_id) for r in detail.returns] == [
        ("s2-L1-R80", "s2", "s2-gw:1")
    ]
    assert await member_row(db) == (60, 0, "bronze", 5000, 5000)


async def test_a_return_of_already_redeemed_points_leaves_points_owed_that_later_earnings_pay(
    db: HubDB,
) -> None:
    """docs/loyalty.md example 10, with the redemption and check-in from the API."""
    gw = Gateway("s1")
    completed = sale("s1-L1-0900", cst("2026-03-01 10:00"), item("100.00"))
    await db.apply_batch(gw.batch(completed), 1.0)
    await service(db, cst("2026-03-01 12:00")).redeem(MEMBER, 100, "mall-77")
    await db.apply_batch(
        gw.batch(a_return("s1-L2-R90", completed, cst("2026-03-01 15:00"), item("100.00"))), 2.0
    )
    assert await member_row(db) == (0, 100, "bronze", 0, 0)

    change = await service(db, cst("2026-03-02 08:00")).checkin(MEMBER)

    assert [(e.cause, e.delta, e.debt_delta) for e in change.entries] == [
        ("checkin", 1, 0),
        ("debt_recovery", -1, -1),
    ]
    assert (change.member.points, change.member.points_owed) == (0, 99)
    assert await ledger(db) == [
        ("purchase", "s1-L1-0900", 120, 0),
        ("redeem", "mall-77", -100, 0),
        ("return", "s1-L2-R90", -20, 100),
        ("checkin", "2026-03-02", 1, 0),
        ("debt_recovery", "checkin:2026-03-02", -1, -1),
    ]


# --- tiers ------------------------------------------------------------------------------------------------


async def test_the_tier_changes_at_the_thresholds_and_leaves_with_the_window(db: HubDB) -> None:
    gw = Gateway("s1")
    steps = [
        ("2026-03-01 10:00", "499.99", "bronze"),
        ("2026-03-02 10:00", "0.01", "silver"),  # 500.00: Silver from here (inclusive)
        ("2026-03-03 10:00", "1499.99", "silver"),  # 1 999.99
        ("2026-03-04 10:00", "0.01", "gold"),  # 2 000.00
        ("2026-03-05 10:00", "6000.00", "gold"),  # 8 000.00 in 30 days, no Platinum: still Gold
    ]
    for number, (when, price, tier) in enumerate(steps):
        await db.apply_batch(gw.batch(sale(f"s1-L1-T{number}", cst(when), item(price))), float(number))
        assert (await member_row(db))[2] == tier, (when, price)

    # The 30-day window is whole local days: on 30 March it is 1–30 March, on 31 March 2–31 March.
    tiers = [
        (await service(db, cst(when)).member(MEMBER))
        for when in ("2026-03-30 23:59:59", "2026-03-31 00:00", "2026-04-03 00:00", "2026-04-04 00:00")
    ]
    assert [(m.tier, m.spend_30d_cny) for m in tiers if m is not None] == [
        ("gold", "8000.00"),
        ("gold", "7500.01"),
        ("gold", "6000.00"),
        ("bronze", "0.00"),
    ]


async def test_platinum_takes_precedence_and_needs_strictly_more_than_50000(db: HubDB) -> None:
    gw = Gateway("s1")
    await db.apply_batch(gw.batch(sale("s1-L1-P1", cst("2026-06-01 10:00"), item("50000.01"))), 1.0)
    await db.apply_batch(
        gw.batch(sale("s1-L1-P2", cst("2026-06-01 10:00"), item("50000.00"), member_id="M00043")), 2.0
    )

    later = service(db, cst("2026-08-01 10:00"))  # nothing in the last 30 days
    over, exactly = await later.member(MEMBER), await later.member("M00043")
    assert over is not None
    assert exactly is not None
    assert (over.tier, over.spend_30d_cny, over.spend_365d_cny) == ("platinum", "0.00", "50000.01")
    assert (exactly.tier, exactly.spend_365d_cny) == ("bronze", "50000.00")
    assert (await member_row(db))[2] == "platinum"
    assert (await member_row(db, "M00043"))[2] == "gold"  # as of its own sale day: 50 000 in 30 days


async def test_platinum_birthday_month_doubles_purchase_points_from_the_next_sale(db: HubDB) -> None:
    """docs/loyalty.md examples 3 and 4: the sale that lifts a member into Platinum is not doubled."""
    await service(db, cst("2026-01-01 10:00")).register(MEMBER, birth_month=11)
    gw = Gateway("s1")
    await db.apply_batch(gw.batch(sale("s1-L1-B1", cst("2026-11-03 10:00"), item("50000.01"))), 1.0)
    await db.apply_batch(gw.batch(sale("s1-L1-B2", cst("2026-11-03 11:00"), item("10.00"))), 2.0)
    await db.apply_batch(gw.batch(sale("s1-L1-B3", cst("2026-11-11 09:00"), item("500.00", 2))), 3.0)
    await db.apply_batch(gw.batch(sale("s1-L1-B4", cst("2026-12-01 09:00"), item("100.00"))), 4.0)

    assert await ledger(db) == [
        ("purchase", "s1-L1-B1", 60000, 0),
        ("purchase", "s1-L1-B2", 12, 0),
        ("platinum_birthday", "s1-L1-B2", 12, 0),
        ("purchase", "s1-L1-B3", 1200, 0),
        ("platinum_birthday", "s1-L1-B3", 1200, 0),
        ("double11", "s1-L1-B3", 50, 0),
        ("purchase", "s1-L1-B4", 120, 0),
    ]
    balance, _debt, tier, _short, _long = await member_row(db)
    assert (balance, tier) == (62594, "platinum")


async def test_double11_bonus_needs_one_purchase_of_at_least_1000_on_the_local_day(db: HubDB) -> None:
    gw = Gateway("s1")
    cases = [
        ("M1", "2026-11-11 00:30", "500.00", 2, [("purchase", 1200), ("double11", 50)]),
        ("M2", "2026-11-11 23:59", "999.99", 1, [("purchase", 1199)]),
        ("M3", "2026-11-10 23:59:59", "500.00", 2, [("purchase", 1200)]),
        ("M4", "2026-11-12 00:00", "500.00", 2, [("purchase", 1200)]),
    ]
    for number, (member_id, at, price, qty, _expected) in enumerate(cases):
        completed = sale(f"s1-L1-D{number}", cst(at), item(price, qty), member_id=member_id)
        await db.apply_batch(gw.batch(completed), float(number))
    for member_id, _at, _price, _qty, expected in cases:
        assert [(cause, delta) for cause, _ref, delta, _debt in await ledger(db, member_id)] == expected, (
            member_id
        )


async def test_one_batch_with_several_sales_of_a_member_plans_them_in_order(db: HubDB) -> None:
    """The effect writes a run of sales at once; the second sale of the run still sees the first one (here:
    the sale that lifts a November-born member into Platinum, then one that is doubled), and the same sale
    twice in one batch is recorded once."""
    await service(db, cst("2026-01-01 10:00")).register(MEMBER, birth_month=11)
    lift = sale("s1-L1-N1", cst("2026-11-03 10:00"), item("50000.01"))
    doubled = sale("s1-L1-N2", cst("2026-11-03 11:00"), item("10.00"))
    result = await db.apply_batch(Gateway("s1").batch(lift, doubled, doubled), 1.0)

    assert result.applied == 3
    assert await ledger(db) == [
        ("purchase", "s1-L1-N1", 60000, 0),
        ("purchase", "s1-L1-N2", 12, 0),
        ("platinum_birthday", "s1-L1-N2", 12, 0),
    ]
    assert await member_row(db) == (60024, 0, "platinum", 5001001, 5001001)
    assert await db.query("SELECT COUNT(*) FROM sales") == [(2,)]


async def test_a_late_sale_never_moves_the_cached_tier_back_in_time(db: HubDB) -> None:
    gw = Gateway("s1")
    await db.apply_batch(gw.batch(sale("s1-L1-L1", cst("2026-03-10 10:00"), item("300.00"))), 1.0)
    late = sale("s1-L1-L0", cst("2026-03-01 10:00"), item("300.00"))  # a lane that was offline for days
    await db.apply_batch(gw.batch(late), 2.0)

    assert await member_row(db) == (720, 0, "silver", 60000, 60000)  # as of 10 March: both sales
    (row,) = await db.query("SELECT tier_ts FROM members")
    assert row == ("2026-03-10T02:00:00.000Z",)


# --- members -------------------------------------------------------------------------------------------


async def test_without_auto_create_a_sale_earns_nothing_but_its_spend_counts_once_registered(
    db_url: str,
) -> None:
    with settings(auto_create_members=False):
        async with HubDB(db_url) as db:
            gw = Gateway("s1")
            await db.apply_batch(gw.batch(sale("s1-L1-A1", cst("2026-03-01 10:00"), item("600.00"))), 1.0)
            assert await db.query("SELECT COUNT(*) FROM members") == [(0,)]
            assert await db.query("SELECT member_id FROM sales") == [(MEMBER,)]

            change, created = await service(db, cst("2026-03-02 10:00")).register(MEMBER, birth_month=4)
            await db.apply_batch(gw.batch(sale("s1-L1-A2", cst("2026-03-03 10:00"), item("10.00"))), 2.0)
            member = await service(db, cst("2026-03-03 11:00")).member(MEMBER)
    assert created
    assert (change.member.tier, change.member.points, change.member.source) == ("silver", 0, "api")
    assert member is not None
    assert (member.points, member.tier, member.spend_30d_cny) == (12, "silver", "610.00")


async def test_registering_claims_a_member_a_sale_created(db: HubDB) -> None:
    gw = Gateway("s1")
    await db.apply_batch(gw.batch(sale("s1-L1-C1", cst("2026-03-01 10:00"), item("100.00"))), 1.0)
    now = service(db, cst("2026-03-02 10:00"))

    change, created = await now.register(MEMBER, birth_month=7, campaign_id="spring-2026")

    assert not created
    assert (change.member.source, change.member.registered, change.member.birth_month) == ("sale", True, 7)
    assert (change.member.points, [(e.cause, e.ref, e.delta) for e in change.entries]) == (
        125,
        [("signup", "spring-2026", 5)],
    )
    with pytest.raises(hub_sales.MemberAlreadyRegisteredError, match="already registered"):
        await now.register(MEMBER)


# --- concurrency (two workers, one database) --------------------------------------------------------------


async def test_two_workers_applying_one_members_sales_from_two_stores_lose_no_points(db_url: str) -> None:
    """Each worker has its own connection(s); on PostgreSQL the member row lock serialises the two stores'
    transactions, on SQLite the write lock does. Every point must land exactly once."""
    per_store = 15
    with settings():
        async with HubDB(db_url) as one, HubDB(db_url) as two:
            stores = (Gateway("s1"), Gateway("s2"))

            async def feed(db: HubDB, gw: Gateway) -> None:
                for n in range(per_store):
                    at = cst("2026-03-01 10:00") + timedelta(minutes=n)
                    await db.apply_batch(gw.batch(sale(f"{gw.store_id}-L1-{n:04d}", at, item("10.00"))), 1.0)

            await asyncio.gather(feed(one, stores[0]), feed(two, stores[1]))
            balance = (await member_row(one))[0]
            rows = await ledger(one)
    assert balance == 2 * per_store * 12
    assert len(rows) == 2 * per_store


async def test_a_return_and_its_sale_applied_at_once_by_two_workers_always_meet(db_url: str) -> None:
    """The return (store s2) and its sale (store s1) race in two transactions; whichever commits second must
    see the other, so nothing stays held (the `sale_refs` rendezvous)."""
    pairs = 12
    with settings():
        async with HubDB(db_url) as one, HubDB(db_url) as two:
            seller, returner = Gateway("s1"), Gateway("s2")
            for n in range(pairs):
                completed = sale(
                    f"s1-L1-R{n:03d}", cst("2026-03-01 10:00"), item("20.00", 2), member_id=f"M{n:03d}"
                )
                back = a_return(f"s2-L1-R{n:03d}", completed, cst("2026-03-01 11:00"), item("20.00"))
                await asyncio.gather(
                    one.apply_batch(seller.batch(completed), 1.0), two.apply_batch(returner.batch(back), 1.0)
                )
            held = await one.query("SELECT COUNT(*) FROM held_returns")
            refunded = await one.query("SELECT COUNT(*) FROM sales WHERE refunded_fen = 2000")
            balances = await one.query("SELECT DISTINCT balance FROM members")
    assert held == [(0,)]
    assert refunded == [(pairs,)]
    assert balances == [(24,)]  # 48 earned for 40.00, 24 taken back for 20.00


# --- configuration ------------------------------------------------------------------------------------------


def test_the_hub_config_carries_the_points_rules_and_member_intake() -> None:
    config = parse_hub_config(
        {
            "hub_id": "hq",
            "database": "hub.sqlite3",
            "members": {"auto_create": False},
            "loyalty": {"points_per_cny": 2, "double11_bonus_points": 80},
        }
    )
    settings = hub_sales.SalesSettings.from_config(config)
    assert settings.auto_create_members is False
    assert (settings.rules.points_per_cny, settings.rules.double11_bonus_points) == (Decimal(2), 80)
    assert parse_hub_config({"hub_id": "hq", "database": "hub.sqlite3"}).loyalty == DEFAULT_RULES
    with pytest.raises(HubConfigError, match=r"loyalty: .*silver_min_spend_30d_cny must be below"):
        parse_hub_config(
            {"hub_id": "hq", "database": "hub.sqlite3", "loyalty": {"silver_min_spend_30d_cny": "3000.00"}}
        )


async def test_the_effects_apply_the_configured_rules(db_url: str) -> None:
    config = parse_hub_config({"hub_id": "hq", "database": db_url, "loyalty": {"points_per_cny": 2}})
    previous = hub_sales.configure(hub_sales.SalesSettings.from_config(config))
    try:
        async with HubDB(db_url) as db:
            await db.apply_batch(
                Gateway("s1").batch(sale("s1-L1-K1", cst("2026-03-01 10:00"), item("10.00"))), 1.0
            )
            entries = await ledger(db)
    finally:
        hub_sales.configure(previous)
    assert entries == [("purchase", "s1-L1-K1", 20, 0)]
