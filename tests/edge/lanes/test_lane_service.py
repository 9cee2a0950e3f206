"""`edge.lanes.LaneService` on a real SQLite file: journal, rebuild, and the one-transaction sale.

The crash tests kill a child process with SIGKILL at the two points that matter — after the completing
transaction committed but before the lane applied it, and just before that transaction — and check on restart
that the sale is in the outbox exactly once (or not yet, and can still be completed once).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path

import pytest

from cloud_bridge.contract import EventType
from drivers.barcode.protocol import MemberScan, ProductScan
from edge import bookstock
from edge.lanes import LaneService, scan_from_record
from edge.retail.catalogue import Catalogue
from edge.retail.errors import LaneError, UnknownItem
from edge.store import GatewayStore
from tests.edge.retail.conftest import APPLES, COLA, NOODLES, PROJECT, price_label, weight_label

LANE = "lane1"
STORE = "s-001"


@asynccontextmanager
async def service(db: Path, catalogue: Catalogue) -> AsyncIterator[LaneService]:
    async with GatewayStore(db) as store:
        svc = LaneService(store, STORE, catalogue, [LANE])
        await svc.start()
        yield svc


def scan(code: str) -> ProductScan:
    return ProductScan(gtin=code if len(code) == 14 else "0" + code)


async def outbox_sales(svc: LaneService) -> list[tuple[str, dict[str, object]]]:
    rows = await svc.store.peek(1000)
    return [(r.event_type, r.data) for r in rows if r.event_type.startswith("sale.")]


async def basket(svc: LaneService) -> None:
    """Cashier c7 rings up 2 × cola, noodles, apples weighed at 1.234 kg, member M1001."""
    run = svc.execute
    await run(LANE, lambda ln, now: ln.sign_in("c7", now))
    await run(LANE, lambda ln, now: ln.scan(scan(COLA), now))
    await run(LANE, lambda ln, now: ln.scan(scan(COLA), now))
    await run(LANE, lambda ln, now: ln.scan(scan(NOODLES), now))
    await run(LANE, lambda ln, now: ln.scan(scan(APPLES), now))
    await run(LANE, lambda ln, now: ln.weight(1234.0, stable=True, ts=now))
    await run(LANE, lambda ln, now: ln.scan(MemberScan(member_id="M1001"), now))


EXPECTED_TOTAL = "26.30"  # 2 × 3.00 + 4.50 + 1.234 kg × 12.80 (15.7952 → 15.80)


async def test_an_open_sale_survives_a_restart_and_completes_once(
    tmp_path: Path, catalogue: Catalogue
) -> None:
    db = tmp_path / "gateway.db"
    async with service(db, catalogue) as svc:
        await basket(svc)
        before = svc.lane(LANE).open_transaction
        assert before is not None
        assert str(before.total) == EXPECTED_TOTAL
        assert await outbox_sales(svc) == []
    async with service(db, catalogue) as svc:
        after = svc.lane(LANE).open_transaction
        assert after == before  # same id, lines, weights, member
        await svc.execute(LANE, lambda ln, now: ln.complete(now))
        # Completing a completed transaction journals nothing: still one sale.
        assert await svc.execute(LANE, lambda ln, now: ln.complete(now)) == []
        sales = await outbox_sales(svc)
        assert [t for t, _ in sales] == [EventType.SALE_COMPLETED]
        data = sales[0][1]
        assert data["transaction_id"] == before.transaction_id
        assert data["total"] == EXPECTED_TOTAL
        assert data["member_id"] == "M1001"
        assert data["cashier"] == "c7"
        assert await svc.book_stock() == {
            APPLES: Decimal("-1.234"),
            COLA: Decimal("-2.000"),
            NOODLES: Decimal("-1.000"),
        }
        found = await svc.sale(before.transaction_id)
        assert found is not None
        assert str(found[0].model_dump(mode="json")["total"]) == EXPECTED_TOTAL
    async with service(db, catalogue) as svc:
        assert svc.lane(LANE).open_transaction is None
        assert len(await outbox_sales(svc)) == 1


async def test_a_failed_commit_changes_nothing(tmp_path: Path, catalogue: Catalogue) -> None:
    """The sale row cannot be written (a row with its id is already there): the journal entry, the outbox row
    and the stock moves roll back with it, and the lane is still open."""
    db = tmp_path / "gateway.db"
    async with service(db, catalogue) as svc:
        await basket(svc)
        tx = svc.lane(LANE).open_transaction
        assert tx is not None
        with contextlib.closing(sqlite3.connect(db)) as conn, conn:  # another writer on the same file
            conn.execute(
                "INSERT INTO sales (transaction_id, kind, lane, ts, total, json) VALUES (?, 'sale', ?, '', '0', '{}')",
                (tx.transaction_id, LANE),
            )
        journal_before = await svc.store.transact(
            lambda c: c.execute("SELECT COUNT(*) FROM lane_events").fetchone()
        )
        with pytest.raises(sqlite3.IntegrityError):
            await svc.execute(LANE, lambda ln, now: ln.complete(now))
        assert svc.lane(LANE).open_transaction == tx
        assert await outbox_sales(svc) == []
        assert await svc.book_stock() == {}
        journal_after = await svc.store.transact(
            lambda c: c.execute("SELECT COUNT(*) FROM lane_events").fetchone()
        )
        assert journal_after == journal_before


async def test_refused_commands_journal_nothing(tmp_path: Path, catalogue: Catalogue) -> None:
    async with service(tmp_path / "gateway.db", catalogue) as svc:
        with pytest.raises(LaneError, match="no cashier signed in"):
            await svc.execute(LANE, lambda ln, now: ln.scan(scan(COLA), now))
        await svc.execute(LANE, lambda ln, now: ln.sign_in("c7", now))
        with pytest.raises(UnknownItem):
            await svc.execute(LANE, lambda ln, now: ln.scan(scan("06900000000007"), now))
        await svc.execute(LANE, lambda ln, now: ln.scan(scan(APPLES), now))
        with pytest.raises(LaneError, match="waiting"):
            await svc.execute(LANE, lambda ln, now: ln.complete(now))
        (n,) = await svc.store.transact(lambda c: c.execute("SELECT COUNT(*) FROM lane_events").fetchone())
        assert n == 3  # sign-in, opened, the apples line


async def test_a_return_puts_stock_back_and_the_journal_compacts(
    tmp_path: Path, catalogue: Catalogue
) -> None:
    db = tmp_path / "gateway.db"
    async with service(db, catalogue) as svc:
        await basket(svc)
        await svc.execute(LANE, lambda ln, now: ln.complete(now))
        sale_id = svc.lane(LANE).state.transaction.transaction_id  # type: ignore[union-attr]
        found = await svc.sale(sale_id)
        assert found is not None
        original, prior = found
        assert prior == []
        await svc.execute(LANE, lambda ln, now: ln.start_return(original, now, prior_returns=prior))  # type: ignore[arg-type]
        await svc.execute(LANE, lambda ln, now: ln.scan(scan(COLA), now))
        await svc.execute(LANE, lambda ln, now: ln.complete(now))
        sales = await outbox_sales(svc)
        assert [t for t, _ in sales] == [EventType.SALE_COMPLETED, EventType.SALE_RETURNED]
        assert sales[1][1]["original_transaction_id"] == sale_id
        assert sales[1][1]["refund_total"] == "3.00"
        assert (await svc.book_stock([COLA]))[COLA] == Decimal("-1.000")
        found = await svc.sale(sale_id)
        assert found is not None
        assert len(found[1]) == 1
        moves = await svc.store.transact(lambda c: bookstock.moves(c, gtin=COLA))
        assert [(m.cause, m.delta) for m in moves] == [
            ("return", Decimal("1.000")),
            ("sale", Decimal("-2.000")),
        ]
        state = svc.lane(LANE).state
        (journaled,) = await svc.store.transact(
            lambda c: c.execute("SELECT COUNT(*) FROM lane_events").fetchone()
        )
    # On restart the journal keeps the last transaction and the sign-in it needs; the fold is the same.
    async with service(db, catalogue) as svc:
        assert svc.lane(LANE).state == state
        (kept,) = await svc.store.transact(lambda c: c.execute("SELECT COUNT(*) FROM lane_events").fetchone())
        assert (journaled, kept) == (12, 4)  # kept: sign-in, return opened, its line, completed


async def test_device_records_feed_the_lane_in_order(tmp_path: Path, catalogue: Catalogue) -> None:
    """Lane scanner records (as the scanner coordinator publishes them) and lane-scale views go through `run`;
    other scanners' scans and other lanes are ignored. Labels' weights and prices come back exactly."""
    async with service(tmp_path / "gateway.db", catalogue) as svc:
        await svc.execute(LANE, lambda ln, now: ln.sign_in("c7", now))
        runner = asyncio.create_task(svc.run())
        try:

            def record(code: str, **kw: object) -> dict[str, object]:
                return {
                    "type": "scan",
                    "scan": {"role": "lane", "lane": LANE, "kind": "product", "gtin": code, **kw},
                }

            svc.feed(
                {"type": "scan", "scan": {"role": "handheld", "lane": None, "kind": "product", "gtin": COLA}}
            )
            svc.feed(record("0" + weight_label("00001", 1234), net_weight_kg=1.234))
            svc.feed(record("0" + price_label("00003", 995), price=9.95))
            svc.feed(record("06900000000007"))  # unknown: refused, counted, shown
            svc.feed(
                {"type": "scan", "scan": {"role": "lane", "lane": LANE, "kind": "member", "member_id": "M9"}}
            )
            async with asyncio.timeout(10):
                await svc.drained()
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        tx = svc.lane(LANE).open_transaction
        assert tx is not None
        assert [(ln.gtin, ln.weight_kg, ln.unit_price) for ln in tx.lines] == [
            (APPLES, Decimal("1.234"), Decimal("12.80")),
            ("02200003000009", None, Decimal("9.95")),
        ]
        assert tx.member_id == "M9"
        assert svc.rejected == {"unknown_item": 1}
        assert svc.last_error[LANE] is None  # the member scan after it succeeded


def test_scan_from_record_round_trips_label_values() -> None:
    scan_ = scan_from_record({"kind": "product", "gtin": APPLES, "net_weight_kg": 0.456, "price": 13.63})
    assert isinstance(scan_, ProductScan)
    assert (scan_.net_weight_kg, scan_.price) == (Decimal("0.456"), Decimal("13.63"))


_CHILD = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from pathlib import Path
    from edge.lanes import LaneService
    from edge.retail.catalogue import load_catalogue
    from edge.store import GatewayStore

    db, catalogue_file, where = Path(sys.argv[1]), sys.argv[2], sys.argv[3]

    class CrashingStore(GatewayStore):
        async def transact(self, fn, events=()):
            if events and where == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            result = await super().transact(fn, events)
            if events and where == "after":
                os.kill(os.getpid(), signal.SIGKILL)
            return result

    async def main():
        async with CrashingStore(db) as store:
            svc = LaneService(store, "s-001", load_catalogue(catalogue_file), ["lane1"])
            await svc.start()
            await svc.execute("lane1", lambda ln, now: ln.complete(now))

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("where", ["before", "after"])
async def test_kill_9_around_the_completing_commit(tmp_path: Path, catalogue: Catalogue, where: str) -> None:
    db = tmp_path / "gateway.db"
    async with service(db, catalogue) as svc:
        await basket(svc)
        tx_id = svc.lane(LANE).open_transaction.transaction_id  # type: ignore[union-attr]
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CHILD, str(db), str(PROJECT / "config" / "catalogue.yaml"), where, cwd=PROJECT
    )
    async with asyncio.timeout(60):
        assert await child.wait() == -signal.SIGKILL
    async with service(db, catalogue) as svc:
        lane = svc.lane(LANE)
        if where == "before":
            assert lane.open_transaction is not None
            assert await outbox_sales(svc) == []
            await svc.execute(LANE, lambda ln, now: ln.complete(now))
        assert lane.open_transaction is None
        assert lane.last_payload is not None
        assert lane.last_payload.transaction_id == tx_id
        assert await svc.execute(LANE, lambda ln, now: ln.complete(now)) == []
        sales = await outbox_sales(svc)
        assert [(t, d["transaction_id"]) for t, d in sales] == [(EventType.SALE_COMPLETED, tx_id)]
        assert (await svc.book_stock([COLA]))[COLA] == Decimal("-2.000")
