"""Outbox quotas on a real SQLite file: level updates coalesce per bin, sales and alerts are all kept, seq stays
gap-free, and the alarm is raised once and cleared once (edge/outbox_quota.py)."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from cloud_bridge.resend import SeqSpan
from edge.metrics import _quota_families
from edge.outbox_quota import (
    CRITICAL,
    LEVELS,
    OutboxQuota,
    QuotaState,
    coalesce_key,
    merge_level,
    row_bytes,
)
from edge.store import PRIORITY_HIGH, PRIORITY_LEVEL, GatewayStore, NewEvent

TS = "2026-11-23T10:00:00.000Z"
QUOTA_LOG = "edge.outbox_quota"


def _level(bin_id: str, count: int, delta: int, cause: str = "pick") -> NewEvent:
    data = {
        "bin_id": bin_id,
        "sku": "06901234567892",
        "count": count,
        "delta": delta,
        "cause": cause,
        "weight_g": 100.0 * count,
        "safety_stock": 2,
        "max_stock": 40,
    }
    return NewEvent("stock.changed", TS, data, PRIORITY_LEVEL)


def _alert(i: int) -> NewEvent:
    data = {"alert_id": f"al-{i}", "bin_id": "A01", "sku": "06901234567892", "kind": "low", "state": "raised"}
    return NewEvent("alert.raised", TS, data | {"raised_at": TS}, PRIORITY_HIGH)


def _sale(i: int) -> NewEvent:
    data = {"transaction_id": f"S-{i}", "lane": "lane1", "cashier": "c1", "total": "3.50", "ts": TS}
    return NewEvent("sale.completed", TS, data, PRIORITY_HIGH)


def _one_level_bytes() -> int:
    e = _level("A01", 10, -1)
    return row_bytes(e.event_type, e.ts, _text(e.data))


def _text(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


async def _drain(store: GatewayStore) -> list[tuple[int, str, dict[str, Any]]]:
    """What the uplink does when the broker is back: peek, publish (here: collect), ack — until empty."""
    sent: list[tuple[int, str, dict[str, Any]]] = []
    while rows := await store.peek(50):
        sent.extend((r.seq, r.event_type, r.data) for r in rows)
        await store.ack_through(rows[-1].seq)
    return sent


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == QUOTA_LOG and r.levelno == logging.WARNING]


def _infos(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == QUOTA_LOG and r.levelno == logging.INFO]


# --- pure rules ------------------------------------------------------------------------------------------------


def test_coalesce_keys_are_per_bin_per_facing_and_per_record() -> None:
    assert coalesce_key("stock.changed", {"bin_id": "A01"}) == "stock.changed:A01"
    assert coalesce_key("stock.changed", {"bin_id": "A02"}) != coalesce_key(
        "stock.changed", {"bin_id": "A01"}
    )
    assert coalesce_key(
        "facing.changed", {"camera_id": "c1", "roi_id": "r1", "bin_id": None}
    ) != coalesce_key("facing.changed", {"camera_id": "c1", "roi_id": "r2", "bin_id": None})
    assert coalesce_key("commissioning", {"store_id": "s"}) == coalesce_key(
        "commissioning", {"store_id": "s"}
    )


def test_merged_stock_update_keeps_the_newest_count_and_sums_the_deltas() -> None:
    older = _level("A01", 9, -1).data
    newer = _level("A01", 7, -2).data
    assert merge_level("stock.changed", older, newer) == newer | {"delta": -3}
    put = _level("A01", 12, 5, cause="put").data
    assert merge_level("stock.changed", newer, put) == put | {"delta": 3, "cause": "reconcile"}
    assert merge_level("facing.changed", {"state": "low"}, {"state": "ok"}) == {"state": "ok"}


def test_alarm_is_raised_once_and_cleared_once_below_the_clear_mark(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=QUOTA_LOG)
    state = QuotaState(OutboxQuota(critical_bytes=1000, levels_bytes=1000))
    state.add(LEVELS, 999)
    state.evaluate()
    assert state.alarm is None
    assert not state.shedding
    for _ in range(5):  # at and above the quota: one warning, however often it is evaluated
        state.add(LEVELS, 1)
        state.evaluate()
    assert state.alarm is not None
    assert "levels" in state.alarm
    assert state.shedding
    state.add(LEVELS, -50)  # below the quota but above the clear mark (90 %): still hit, no flapping
    state.evaluate()
    assert state.alarm is not None
    assert not state.would_clear()
    state.add(LEVELS, -100)
    assert state.would_clear()
    state.evaluate()
    assert state.alarm is None
    assert not state.shedding
    assert len(_warnings(caplog)) == 1
    assert len(_infos(caplog)) == 1
    state.add(CRITICAL, 1000)
    state.evaluate()
    assert state.alarm is not None
    assert "critical" in state.alarm
    assert "never dropped" in state.alarm
    assert len(_warnings(caplog)) == 2
    assert state.alarms_raised == 2


def test_quota_must_be_positive() -> None:
    with pytest.raises(ValueError, match="> 0"):
        OutboxQuota(critical_bytes=0, levels_bytes=1)


# --- the store -------------------------------------------------------------------------------------------------


async def test_levels_coalesce_per_bin_at_the_quota_and_sales_and_alerts_all_get_seqs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=QUOTA_LOG)
    quota = OutboxQuota(critical_bytes=10**9, levels_bytes=20 * _one_level_bytes())
    bins = ["A01", "A02", "A03"]
    count = dict.fromkeys(bins, 1000)
    async with GatewayStore(tmp_path / "gw.db", quota=quota) as store:
        for i in range(300):  # the broker is down: nothing is acknowledged
            b = bins[i % 3]
            count[b] -= 1
            batch = [_level(b, count[b], -1)]
            if i % 50 == 0:
                batch.append(_alert(i))
            if i % 70 == 0:
                batch.append(_sale(i))
            await store.record(batch)
        usage = store.outbox_usage()
        alarm = store.outbox_alarm
        last_before_drain = await store.last_seq()
        sent = await _drain(store)
        after = store.outbox_usage()
    assert alarm is not None
    assert "levels" in alarm
    assert usage.held == 3
    assert usage.coalesced > 200
    assert len(_warnings(caplog)) == 1, "one alarm, not one per held update"
    assert after.alarm is None
    assert after.held == 0
    assert len(_infos(caplog)) == 1
    seqs = [s for s, _, _ in sent]
    assert seqs == list(range(1, len(seqs) + 1)), "seq gap-free"
    assert len(seqs) == last_before_drain + 3, "the three held updates got fresh seqs at release"
    assert sorted(d["alert_id"] for _, t, d in sent if t == "alert.raised") == sorted(
        f"al-{i}" for i in range(0, 300, 50)
    )
    assert sorted(d["transaction_id"] for _, t, d in sent if t == "sale.completed") == sorted(
        f"S-{i}" for i in range(0, 300, 70)
    )
    latest: dict[str, int] = {}
    delta_sum: dict[str, int] = dict.fromkeys(bins, 0)
    for _, t, d in sent:
        if t == "stock.changed":
            latest[d["bin_id"]] = d["count"]  # applied by seq, as the hub does
            delta_sum[d["bin_id"]] += d["delta"]
    assert latest == count, "the last update per bin carries the gateway's count"
    assert delta_sum == {b: count[b] - 1000 for b in bins}, "deltas still add up to the change"


async def test_critical_quota_keeps_every_sale_and_holds_levels(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=QUOTA_LOG)
    quota = OutboxQuota(critical_bytes=4000, levels_bytes=10**9)
    async with GatewayStore(tmp_path / "gw.db", quota=quota) as store:
        seqs = []
        for i in range(60):
            seqs += await store.record([_sale(i), _level("A01", 100 - i, -1)])
        usage = store.outbox_usage()
        sent = await _drain(store)
    assert usage.critical_bytes > quota.critical_bytes, "sales are never refused at the critical quota"
    assert usage.held == 1
    assert store.outbox_alarm is None
    assert len(_warnings(caplog)) == 1
    assert "critical" in _warnings(caplog)[0]
    assert [d["transaction_id"] for _, t, d in sent if t == "sale.completed"] == [f"S-{i}" for i in range(60)]
    levels = [d for _, t, d in sent if t == "stock.changed"]
    assert levels[-1]["count"] == 41
    assert len(levels) < 60, "levels were coalesced while the critical quota was hit"


async def test_quota_state_survives_a_restart(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=QUOTA_LOG)
    quota = OutboxQuota(critical_bytes=10**9, levels_bytes=10 * _one_level_bytes())
    path = tmp_path / "gw.db"
    async with GatewayStore(path, quota=quota) as store:
        for i in range(40):
            await store.record([_level(f"B{i % 4}", 500 - i, -1), _alert(i)])
        before = store.outbox_usage()
    async with GatewayStore(path, quota=quota) as store:
        reopened = store.outbox_usage()
        await store.record([_level("B0", 1, -1)])
        sent = await _drain(store)
    assert before.held == 4
    assert reopened.held == 4
    assert (reopened.critical_bytes, reopened.levels_bytes) == (before.critical_bytes, before.levels_bytes)
    assert reopened.alarm is not None, "the alarm is raised again at open while the quota is still hit"
    b0 = [d["count"] for _, t, d in sent if t == "stock.changed" and d["bin_id"] == "B0"]
    assert b0[-1] == 1, "an update after the restart coalesced into the persisted held row"
    assert [s for s, _, _ in sent] == list(range(1, len(sent) + 1))


async def test_counters_match_the_database_after_writes_acks_resends_and_a_rollback(tmp_path: Path) -> None:
    quota = OutboxQuota(critical_bytes=10**9, levels_bytes=10**9)
    path = tmp_path / "gw.db"
    async with GatewayStore(path, quota=quota) as store:
        for i in range(30):
            await store.record([_level("A01", 30 - i, -1), _alert(i)])
        rows = await store.peek(25)
        await store.ack_through(rows[-1].seq)
        await store.resend([SeqSpan(first_seq=3, last_seq=9)])

        def boom(conn: sqlite3.Connection) -> None:
            raise RuntimeError("lane refused")

        with pytest.raises(RuntimeError):
            await store.transact(boom, [_sale(1), _level("A01", 1, -1)])
        live = store.outbox_usage()
    async with GatewayStore(path, quota=quota) as store:  # recounted from the tables at open
        counted = store.outbox_usage()
    assert (live.critical_bytes, live.levels_bytes) == (counted.critical_bytes, counted.levels_bytes)
    assert live.critical_bytes > 0
    assert live.levels_bytes > 0


async def test_held_updates_are_released_at_open_once_the_quota_no_longer_applies(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    small = OutboxQuota(critical_bytes=10**9, levels_bytes=5 * _one_level_bytes())
    async with GatewayStore(path, quota=small) as store:
        for i in range(20):
            await store.record([_level(f"C{i % 2}", 100 - i, -1)])
        held = store.outbox_usage().held
        last_seq = await store.last_seq()
    async with GatewayStore(path, quota=OutboxQuota()) as store:  # the operator raised the quota
        usage = store.outbox_usage()
        sent = await _drain(store)
    assert held == 2
    assert usage.held == 0
    assert usage.alarm is None
    assert [s for s, _, _ in sent] == list(range(1, last_seq + 3))
    assert {d["bin_id"]: d["count"] for _, _, d in sent} == {"C0": 82, "C1": 81}


async def test_metrics_show_the_alarm_and_the_use_of_each_quota(tmp_path: Path) -> None:
    quota = OutboxQuota(critical_bytes=10**9, levels_bytes=3 * _one_level_bytes())
    async with GatewayStore(tmp_path / "gw.db", quota=quota) as store:
        clear = {m.name: m for m in _quota_families(store.outbox_usage())}
        for i in range(10):
            await store.record([_level("A01", 50 - i, -1), _alert(i)])
        hit = {m.name: m for m in _quota_families(store.outbox_usage())}
        usage = store.outbox_usage()
    assert clear["shelfgate_outbox_quota_alarm"].samples[0].value == 0
    assert hit["shelfgate_outbox_quota_alarm"].samples[0].value == 1
    assert hit["shelfgate_outbox_held"].samples[0].value == 1
    by_class = {s.labels["class"]: s.value for s in hit["shelfgate_outbox_unsent_bytes"].samples}
    assert by_class == {"critical": usage.critical_bytes, "levels": usage.levels_bytes}
    assert by_class["levels"] >= quota.levels_bytes
