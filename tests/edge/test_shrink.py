"""Shrink signal (edge/shrink.py): the window arithmetic, the alert lifecycle, and sales read from real SQLite."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from cloud_bridge.contract import AlertKind, AlertState
from edge.config import Bin, LocalizedName, ShrinkRules
from edge.inventory.events import CountChanged
from edge.shrink import ShrinkWatch, window_numbers
from edge.signals import SignalAlerts, message_fields, units_sold
from tests.edge.signal_fixtures import insert_sale, sales_db

T0 = 1_800_000_000.0
SKU = "06901234567892"
CFG = ShrinkRules(window_min=60, grace_min=5, put_back_min=10, tolerance_units=2, tolerance_pct=10)


def _bin(bin_id: str, sku: str = SKU) -> Bin:
    return Bin(
        id=bin_id, sku=sku, name=LocalizedName(zh="水", en="Water"), unit_weight_g=500, safety_stock=2,
        max_stock=50, device="tx1", channel=0,
    )  # fmt: skip


def _move(bin_id: str, ts: float, delta: int, count: int = 10) -> CountChanged:
    return CountChanged(bin_id, ts, delta, count, count * 500.0, "pick" if delta < 0 else "put")


def test_put_back_offsets_a_pick_but_a_late_restock_does_not() -> None:
    moves = [(T0, -3), (T0 + 60, 1), (T0 + 1200, 20)]  # 3 picked, 1 back within 10 min, restock 20 min later
    n = window_numbers(moves, 0, sku=SKU, now=T0 + 1800, cfg=CFG)
    assert n.picks == 3
    assert n.put_backs == 1
    assert n.restocked == 20  # the 2 still-picked units are > 10 min old: the whole put is a restock
    assert n.unexplained == 2


def test_grace_leaves_recent_picks_out_and_sales_explain_older_ones() -> None:
    moves = [(T0, -2), (T0 + 100, -2), (T0 + 1700, -4)]  # the last pick is inside the 5 min grace
    n = window_numbers(moves, 3, sku=SKU, now=T0 + 1800, cfg=CFG)
    assert n.picks == 4
    assert n.sold == 3
    assert n.unexplained == 1
    assert n.tolerance == 2


def test_tolerance_is_the_larger_of_units_and_percent() -> None:
    moves = [(T0 + i, -1) for i in range(50)]
    n = window_numbers(moves, 0, sku=SKU, now=T0 + 1800, cfg=CFG)
    assert n.picks == 50
    assert n.tolerance == 5  # 10 % of 50 > 2 units


def test_raise_with_the_numbers_then_resolve_when_sales_explain_it(tmp_path: Path) -> None:
    alerts = SignalAlerts()
    watch = ShrinkWatch(CFG, {"b1": _bin("b1"), "b2": _bin("b2")}, alerts)
    for i in range(3):
        watch.observe(_move("b1", T0 + i * 60, -1))
        watch.observe(_move("b2", T0 + i * 60 + 30, -1))
    watch.observe(CountChanged("b1", T0 + 400, 0, 7, 3500.0, "reconcile"))  # not a move
    now = T0 + 1200
    db = sales_db(tmp_path / "sales.db")
    insert_sale(db, "t1", T0 + 500, {SKU: 2})
    since, until = watch.sales_window(now)
    (raised,) = watch.evaluate(now, units_sold(db, since, until))
    assert raised.kind is AlertKind.SHRINK_SUSPECTED
    assert raised.state is AlertState.RAISED
    assert raised.bin_id == "b1"
    assert raised.count == 4
    fields = message_fields(raised.message)
    assert fields == {
        "sku": SKU, "bins": "b1,b2", "window_min": "60", "picks": "6", "put_backs": "0", "restocked": "0",
        "sold": "2", "unexplained": "4", "tolerance": "2",
    }  # fmt: skip
    assert watch.evaluate(now + 60, units_sold(db, since, until + 60)) == []  # still short: raised once
    insert_sale(db, "t2", now + 90, {SKU: 3})
    since, until = watch.sales_window(now + 120)
    (resolved,) = watch.evaluate(now + 120, units_sold(db, since, until))
    assert resolved.state is AlertState.RESOLVED
    assert resolved.alert_id == raised.alert_id
    assert message_fields(resolved.message)["unexplained"] == "1"


def test_units_sold_counts_sales_in_the_window_not_returns(tmp_path: Path) -> None:
    db = sales_db(tmp_path / "sales.db")
    insert_sale(db, "t1", T0, {SKU: 2, "06900000000014": 1})
    insert_sale(db, "t2", T0 + 100, {SKU: 1})
    insert_sale(db, "r1", T0 + 150, {SKU: 1}, kind="return")
    insert_sale(db, "t3", T0 + 1000, {SKU: 5})
    assert units_sold(db, T0, T0 + 200) == {SKU: 3, "06900000000014": 1}
    assert units_sold(sqlite3.connect(tmp_path / "empty.db"), T0, T0 + 200) == {}


def test_a_restored_alert_waits_for_a_whole_window_before_it_can_resolve() -> None:
    alerts = SignalAlerts()
    watch = ShrinkWatch(CFG, {"b1": _bin("b1")}, alerts)
    raised = alerts.raise_alert(
        AlertKind.SHRINK_SUSPECTED,
        SKU,
        bin_id="b1",
        sku=SKU,
        ts=T0 - 100,
        count=4,
        message="shrink_suspected",
    )
    assert raised is not None
    watch.restored(SKU, T0)
    assert watch.evaluate(T0 + 60, {}) == []  # empty history after the restart: not evidence of recovery
    assert alerts.is_active(AlertKind.SHRINK_SUSPECTED, SKU)
    (resolved,) = watch.evaluate(T0 + CFG.window_min * 60, {})
    assert resolved.alert_id == raised.alert_id
