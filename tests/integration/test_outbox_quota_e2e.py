"""Outbox quotas end to end on real parts: Mosquitto, a gateway store + uplink, a hub worker (SQLite).

The broker goes down; the store writes thousands of level updates for a few bins, some alerts and some sales;
the levels quota is hit and raised once; the broker comes back; the hub then has every alert and sale exactly
once, a gap-free seq with nothing recorded lost, and the same stock per bin as the gateway; the alarm clears
once (docs/reliability.md, "Outbox quotas").
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path

import pytest

from cloud_bridge.contract import (
    AlertData,
    AlertKind,
    AlertState,
    Command,
    CommandResult,
    EventType,
    Heartbeat,
    SaleCompleted,
    SaleItem,
    StockChanged,
    line_amount,
    rfc3339,
    utc_now,
)
from cloud_bridge.resend import RESEND_COMMAND
from cloud_bridge.uplink import UnknownCommandError, Uplink
from edge.commands import handle_resend
from edge.outbox_quota import OutboxQuota, row_bytes
from edge.store import PRIORITY_HIGH, PRIORITY_LEVEL, GatewayStore, NewEvent
from shelfgate.broker import Mosquitto
from tests.cloud_bridge.mqtt_helpers import running
from tests.hub.workers import WAIT_S, worker

pytestmark = pytest.mark.timeout(180)

STORE, GW = "q1", "q1-gw"
SKU = "06901234567892"
BINS = ("A01", "A02", "A03")
LEVEL_UPDATES = 3000
ALERTS = 30
SALES = 12


def _level(bin_id: str, count: int) -> NewEvent:
    data = StockChanged(
        bin_id=bin_id,
        sku=SKU,
        count=count,
        delta=-1,
        cause="pick",
        weight_g=count * 250.0,
        safety_stock=3,
        max_stock=5000,
    )
    return NewEvent(
        EventType.STOCK_CHANGED.value, rfc3339(utc_now()), data.model_dump(mode="json"), PRIORITY_LEVEL
    )


def _alert(i: int) -> NewEvent:
    data = AlertData(
        alert_id=f"al-{i}",
        bin_id=BINS[i % 3],
        sku=SKU,
        kind=AlertKind.LOW,
        state=AlertState.RAISED,
        count=1,
        raised_at=rfc3339(utc_now()),
    )
    return NewEvent(EventType.ALERT_RAISED.value, data.raised_at, data.model_dump(mode="json"), PRIORITY_HIGH)


def _sale(i: int) -> NewEvent:
    price = Decimal("3.50")
    item = SaleItem(gtin=SKU.rjust(14, "0"), qty=2, unit_price=price, amount=line_amount(price, 2))
    ts = rfc3339(utc_now())
    sale = SaleCompleted(
        transaction_id=f"{STORE}-T{i:04d}", lane="lane1", cashier="c1", items=[item], total=item.amount, ts=ts
    )
    return NewEvent(EventType.SALE_COMPLETED.value, ts, sale.model_dump(mode="json"), PRIORITY_HIGH)


async def _eventually(what: str, check: Callable[[], Awaitable[bool]]) -> None:
    """Poll `check`; the ceiling only stops a hang."""
    try:
        async with asyncio.timeout(WAIT_S):
            while True:
                if await check():
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def _quota_logs(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "edge.outbox_quota" and r.levelno == level]


async def test_outage_hits_the_levels_quota_and_the_hub_gets_every_sale_and_alert_once(
    mosquitto: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    sample = _level("A01", 1000)
    one_level = row_bytes(sample.event_type, sample.ts, json.dumps(sample.data, separators=(",", ":")))
    quota = OutboxQuota(critical_bytes=64 << 20, levels_bytes=200 * one_level)
    hub_db = tmp_path / "hub.sqlite3"
    heartbeats: list[Heartbeat] = []

    async with GatewayStore(tmp_path / "gw.db", quota=quota) as store:

        async def heartbeat() -> Heartbeat:
            """What `Gateway.heartbeat` reports about the outbox (the rest is fixed)."""
            depth, oldest = await store.depth()
            beat = Heartbeat(
                gateway_id=GW,
                boot_id="b1",
                ts=rfc3339(utc_now()),
                uptime_s=1.0,
                cpu_pct=1.0,
                mem_rss_mb=50.0,
                disk_free_mb=1000.0,
                temperature_c=None,
                outbox_depth=depth,
                outbox_oldest_age_s=oldest,
                last_seq=await store.last_seq(),
                devices=[],
                active_alerts=0,
                outbox_alarm=store.outbox_alarm,
            )
            heartbeats.append(beat)
            return beat

        async def on_command(name: str, command: Command) -> CommandResult:
            if name == RESEND_COMMAND:
                return await handle_resend(store, command)
            raise UnknownCommandError(name)

        uplink = Uplink(
            store_id=STORE,
            gateway_id=GW,
            boot_id="b1",
            version="test",
            config_version="c1",
            outbox=store,
            host=mosquitto.host,
            port=mosquitto.port,
            heartbeat_s=0.3,
            heartbeat=heartbeat,
            on_command=on_command,
            backoff_base_s=0.1,
            backoff_cap_s=0.5,
        )
        settings = {
            "share_group": None,
            "gap_timeout_s": 0.5,
            "gap_check_s": 0.1,
            "resend_min_interval_s": 0.2,
        }
        async with worker("w1", f"sqlite:///{hub_db}", mosquitto, **settings) as hub, running(uplink):
            await _eventually("uplink connected", lambda: _true(uplink.connected))
            mosquitto.stop()  # the outage
            await _eventually("uplink noticed the outage", lambda: _true(not uplink.connected))

            counts = dict.fromkeys(BINS, LEVEL_UPDATES)
            for i in range(LEVEL_UPDATES):
                b = BINS[i % len(BINS)]
                counts[b] -= 1
                batch = [_level(b, counts[b])]
                if i % (LEVEL_UPDATES // ALERTS) == 0:
                    batch.append(_alert(i // (LEVEL_UPDATES // ALERTS)))
                if i % (LEVEL_UPDATES // SALES) == 7:
                    batch.append(_sale(i // (LEVEL_UPDATES // SALES)))
                await store.record(batch)
            during = store.outbox_usage()
            outage_beat = await heartbeat()
            last_seq_during = await store.last_seq()

            mosquitto.start()  # the broker is back

            async def caught_up() -> bool:
                if store.outbox_usage().held or await store.depth() != (0, None):
                    return False
                record = await hub.db.store(STORE)
                return record is not None and record.applied_seq == await store.last_seq()

            await _eventually("the hub applied everything the gateway wrote", caught_up)
            final_last_seq = await store.last_seq()
            record = await hub.db.store(STORE)
            hub_stock = {s.bin_id: s.count for s in await hub.db.stock(STORE)}
            after = store.outbox_usage()
            quarantined = hub.count("quarantined")

    # The quota was hit, once, and said so locally and in the heartbeat.
    assert during.alarm is not None
    assert "levels" in during.alarm
    assert during.held == len(BINS)
    assert during.coalesced > LEVEL_UPDATES // 2
    assert outage_beat.outbox_alarm == during.alarm
    assert len(_quota_logs(caplog, logging.WARNING)) == 1
    assert after.alarm is None
    assert len(_quota_logs(caplog, logging.INFO)) == 1
    assert final_last_seq == last_seq_during + len(BINS), "held updates got fresh seqs when released"
    # The hub: gap-free, nothing lost, every alert and sale exactly once, same stock as the gateway.
    assert record is not None
    assert record.applied_seq == final_last_seq
    assert record.lost_ranges == ()
    assert record.missing_ranges == ()
    assert quarantined == 0, "heartbeats with outbox_alarm and every event were accepted"
    conn = sqlite3.connect(hub_db)
    try:
        seqs = [
            s for (s,) in conn.execute("SELECT seq FROM events WHERE store_id = ? ORDER BY seq", (STORE,))
        ]
        rows = conn.execute("SELECT type, data FROM events WHERE store_id = ?", (STORE,)).fetchall()
    finally:
        conn.close()
    assert seqs == list(range(1, final_last_seq + 1))
    alert_ids = sorted(json.loads(d)["alert_id"] for t, d in rows if t == EventType.ALERT_RAISED.value)
    assert alert_ids == sorted(f"al-{i}" for i in range(ALERTS))
    sale_ids = sorted(json.loads(d)["transaction_id"] for t, d in rows if t == EventType.SALE_COMPLETED.value)
    assert sale_ids == sorted(f"{STORE}-T{i:04d}" for i in range(SALES))
    assert hub_stock == counts


async def _true(value: bool) -> bool:
    return value
