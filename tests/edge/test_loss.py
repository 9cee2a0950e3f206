"""RFID loss signal (edge/loss.py): exit-zone tags against sales read from real SQLite."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from cloud_bridge.contract import AlertKind, AlertState
from edge.config import LossRules, StoreConfig
from edge.inventory.alerts import AlertTransition
from edge.lanes import ensure_schema
from edge.loss import LossWatch
from edge.signals import SignalAlerts, StoreSignals, message_fields, units_sold
from edge.store import GatewayStore
from tests.edge.signal_fixtures import insert_sale, sales_db

T0 = 1_800_000_000.0
GTIN = "06901234567892"


def _watch() -> tuple[LossWatch, SignalAlerts]:
    alerts = SignalAlerts()
    return LossWatch(LossRules(sold_window_min=15, expire_h=1), alerts), alerts


def test_unsold_tag_at_the_exit_raises_once_with_tag_gtin_and_time() -> None:
    watch, _ = _watch()
    t = watch.exit_seen("EPC1", GTIN, "exit", T0, sold=0)
    assert t is not None
    assert t.kind is AlertKind.LOSS_SUSPECTED
    assert t.state is AlertState.RAISED
    assert (t.bin_id, t.sku) == ("exit", GTIN)
    assert message_fields(t.message) == {
        "epc": "EPC1", "gtin": GTIN, "zone": "exit", "at": "2027-01-15T08:00:00.000Z", "sold": "0", "exits": "1",
        "window_min": "15",
    }  # fmt: skip
    assert watch.exit_seen("EPC1", GTIN, "exit", T0 + 5, sold=0) is None  # flicker at the door: one exit


def test_sales_cover_as_many_exits_as_units_sold(tmp_path: Path) -> None:
    db = sales_db(tmp_path / "gw.db")
    insert_sale(db, "t1", T0 - 60, {GTIN: 2})
    insert_sale(db, "t0", T0 - 3600, {GTIN: 5})  # too long ago to cover anything
    watch, _ = _watch()
    results = []
    for i, epc in enumerate(["A", "B", "C"]):
        since, until = watch.sales_window(T0 + i)
        results.append(watch.exit_seen(epc, GTIN, "exit", T0 + i, units_sold(db, since, until).get(GTIN, 0)))
    assert results[0] is None
    assert results[1] is None
    third = results[2]
    assert third is not None
    assert message_fields(third.message)["epc"] == "C"
    assert message_fields(third.message)["sold"] == "2"
    assert message_fields(third.message)["exits"] == "3"
    assert (watch.covered, watch.raised) == (2, 1)


def test_tag_back_on_a_shelf_resolves_and_old_alerts_expire() -> None:
    watch, alerts = _watch()
    a = watch.exit_seen("A", GTIN, "exit", T0, sold=0)
    b = watch.exit_seen("B", GTIN, "exit", T0 + 10, sold=0)
    assert a is not None
    assert b is not None
    assert watch.shelf_seen("X", "shelf-a", T0 + 20) is None
    back = watch.shelf_seen("A", "shelf-a", T0 + 20)
    assert back is not None
    assert back.state is AlertState.RESOLVED
    assert back.alert_id == a.alert_id
    assert watch.expire(T0 + 3000) == []
    (expired,) = watch.expire(T0 + 3700)
    assert expired.alert_id == b.alert_id
    assert alerts.active_count() == 0


async def test_store_signals_feed_sales_lookup_ack_and_restore(tmp_path: Path) -> None:
    """The wired path on a real `GatewayStore`: RFID items in, the lanes' `sales` table read, alerts out."""
    cfg = StoreConfig.model_validate({"store_id": "s1", "loss": {"sold_window_min": 15}})
    async with GatewayStore(tmp_path / "gw.db") as store:
        await store.transact(ensure_schema)
        await store.transact(lambda conn: insert_sale(conn, "t1", time.time() - 60, {GTIN: 1}))
        signals = StoreSignals(cfg, store, {})
        got: list[AlertTransition] = []
        persisted = asyncio.Event()

        async def persist(transitions: list[AlertTransition]) -> None:
            got.extend(transitions)
            persisted.set()

        task = asyncio.create_task(signals.run(persist))
        try:
            for epc in ("A", "B"):
                signals.feed({"type": "rfid", "event": "enter", "zone": "exit", "zone_kind": "exit", "epc": epc,
                              "gtin": GTIN})  # fmt: skip
            signals.feed({"type": "rfid", "event": "leave", "zone": "exit", "zone_kind": "exit", "epc": "A"})
            signals.feed({"type": "scan", "code": "x"})
            async with asyncio.timeout(30):  # hang guard; A and B are handled in order, B's alert comes last
                await persisted.wait()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    (raised,) = got
    assert message_fields(raised.message)["epc"] == "B"  # A was covered by the one unit sold
    assert signals.view()["loss"]["covered_by_sales"] == 1
    ack = signals.acknowledge(raised.alert_id, "clerk1")
    assert ack is not None
    assert ack.state is AlertState.ACKNOWLEDGED
    assert signals.acknowledge(raised.alert_id, "clerk1") is None

    low = AlertTransition("b1:low:1", "b1", GTIN, AlertKind.LOW, AlertState.RAISED, T0, 1, "low", T0)
    again = StoreSignals(cfg, store, {})
    assert again.restore([ack, low]) == [low]  # the rules get theirs back; the loss alert is adopted
    assert again.alerts.is_active(AlertKind.LOSS_SUSPECTED, "B")
    back = again.loss.shelf_seen("B", "shelf-a", time.time())
    assert back is not None
    assert back.alert_id == raised.alert_id


async def test_unreadable_sales_leave_the_exit_undecided_not_alerted(tmp_path: Path) -> None:
    """A `sales` table SQLite cannot query (here: not the lanes' schema) → no alert either way, counted."""
    cfg = StoreConfig.model_validate({"store_id": "s1"})
    async with GatewayStore(tmp_path / "gw.db") as store:
        await store.transact(lambda conn: conn.execute("CREATE TABLE sales (x TEXT)"))
        signals = StoreSignals(cfg, store, {})
        got: list[AlertTransition] = []

        async def persist(transitions: list[AlertTransition]) -> None:
            got.extend(transitions)

        task = asyncio.create_task(signals.run(persist))
        try:
            signals.feed({"type": "rfid", "event": "enter", "zone": "exit", "zone_kind": "exit", "epc": "A",
                          "gtin": GTIN})  # fmt: skip
            async with asyncio.timeout(30):  # hang guard
                while signals.loss.undecided == 0:  # noqa: ASYNC110 - polling a counter, no event to wait on
                    await asyncio.sleep(0.05)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert got == []
    assert signals.sales_errors >= 1
    assert signals.view()["loss"]["undecided"] == 1
