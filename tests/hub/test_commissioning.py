"""`commissioning` events through `HubDB.apply_batch` on both engines (SQLite file and PostgreSQL): the hub keeps
the latest record per store whatever order the records arrive in, a redelivered batch changes nothing, and
the fleet view and `GET /api/stores/{id}/commissioning` show it. Batches are built with the contract models,
serialised, and parsed by `hub.parse` exactly as ingest does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from cloud_bridge.contract import Commissioning, Event, EventBatch, EventType, StockChanged, events_topic
from hub.api import create_app
from hub.commissioning import COMMISSIONING_SCHEMA_VERSION
from hub.config import HubConfig
from hub.db import HubDB
from hub.fleet import FleetMonitor
from hub.parse import BatchMessage, parse_message

T1 = "2026-11-23T10:00:00.000Z"
T2 = "2026-11-23T10:05:00.000Z"


def record(
    generated_at: str, *, ok: bool = True, bins: tuple[str, ...] = ("A01",), test: str = "passed"
) -> Commissioning:
    cal = {
        "before": {"zero": 0.0, "span_g_per_unit": 1.0},
        "after": {"zero": 1000.0, "span_g_per_unit": 0.05, "calibrated_at": generated_at},
        "check": {
            "mass_g": 700.0,
            "measured_g": 700.4 if ok else 712.0,
            "error_g": 0.4 if ok else 12.0,
            "error_pct": 0.0571 if ok else 1.7143,
            "tolerance_g": 5.0,
            "ok": ok,
        },
        "forced": not ok,
        "installer": "li.wei",
        "ts": generated_at,
    }
    return Commissioning.model_validate(
        {
            "store_id": "s1",
            "gateway_id": "s1-gw",
            "generated_at": generated_at,
            "installers": ["li.wei"],
            "devices": [{"id": "tx1", "family": "modbus", "online": True}],
            "calibrations": dict.fromkeys(bins, cal),
            "bindings": {
                bins[0]: {
                    "before": {"sku": "06901234567892", "unit_weight_g": 350.0},
                    "after": {"sku": "07032069804988", "unit_weight_g": 355.0},
                    "installer": "li.wei",
                    "ts": generated_at,
                }
            },
            "tests": {
                bins[0]: {
                    "state": test,
                    "count_before": 6,
                    "count_after": 5 if test == "passed" else 4,
                    "installer": "li.wei",
                    "ts": generated_at,
                }
            },
        }
    )


@dataclass
class Gw:
    """One store's gateway as the hub sees it: contiguous seqs, each call one `events` batch."""

    store_id: str = "s1"
    seq: int = 0

    def event(self, data: Commissioning) -> Event:
        self.seq += 1
        return Event(
            id=f"{self.store_id}-gw:{self.seq}",
            seq=self.seq,
            type=EventType.COMMISSIONING,
            ts=data.generated_at,
            data=data.model_dump(mode="json"),
        )

    def message(self, events: list[Event]) -> BatchMessage:
        payload = EventBatch(
            store_id=self.store_id,
            gateway_id=f"{self.store_id}-gw",
            first_seq=events[0].seq,
            last_seq=events[-1].seq,
            events=events,
        ).to_json()
        parsed = parse_message(events_topic(self.store_id), payload)
        assert isinstance(parsed, BatchMessage)
        return parsed


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[HubDB]:
    async with HubDB(db_url) as opened:
        yield opened


def config(db_url: str) -> HubConfig:
    return HubConfig(hub_id="commissioning-test", database=db_url)


async def stored(db: HubDB) -> list[tuple[Any, ...]]:
    return await db.query(
        "SELECT store_id, generated_at, event_id, calibrations, failed_checks, bindings, tests, tests_passed"
        " FROM commissioning ORDER BY store_id"
    )


async def test_the_effect_creates_its_table_and_keeps_the_record(db: HubDB) -> None:
    """No monitor has run `ensure_schema`: the first commissioning event brings its own table."""
    gw = Gw()
    result = await db.apply_batch(gw.message([gw.event(record(T1, ok=False, test="failed"))]), 1.0)
    assert result.applied == 1
    assert await stored(db) == [("s1", T1, "s1-gw:1", 1, 1, 1, 1, 0)]
    versions = await db.query("SELECT MAX(version) FROM commissioning_schema_version")
    assert versions == [(COMMISSIONING_SCHEMA_VERSION,)]


async def test_latest_generated_at_wins_in_either_order(db: HubDB) -> None:
    # In seq order: the newer record replaces the older one.
    gw = Gw("s1")
    await db.apply_batch(gw.message([gw.event(record(T1, ok=False))]), 1.0)
    await db.apply_batch(gw.message([gw.event(record(T2, bins=("A01", "A02")))]), 2.0)
    # Out of order (a record generated earlier arrives later, e.g. a replay from a second gateway's clock):
    # the stored newer one stays.
    other = Gw("s2")
    newer = record(T2, bins=("A01", "A02")).model_copy(update={"store_id": "s2"})
    older = record(T1, ok=False).model_copy(update={"store_id": "s2"})
    await db.apply_batch(other.message([other.event(newer), other.event(older)]), 3.0)
    assert await stored(db) == [
        ("s1", T2, "s1-gw:2", 2, 0, 1, 1, 1),
        ("s2", T2, "s2-gw:1", 2, 0, 1, 1, 1),
    ]


async def test_redelivery_is_a_no_op(db: HubDB) -> None:
    gw = Gw()
    first = gw.message([gw.event(record(T1, ok=False))])
    second = gw.message([gw.event(record(T2))])
    await db.apply_batch(first, 1.0)
    await db.apply_batch(second, 2.0)
    before = await stored(db)
    again = await db.apply_batch(first, 3.0)  # the broker redelivers the older batch
    assert again.applied == 0
    again = await db.apply_batch(second, 4.0)
    assert again.applied == 0
    assert await stored(db) == before == [("s1", T2, "s1-gw:2", 1, 0, 1, 1, 1)]


async def test_fleet_and_api_show_commissioned(db: HubDB, db_url: str) -> None:
    cfg = config(db_url)
    monitor = FleetMonitor(db, cfg)
    await monitor.ensure_schema()
    # Store s2 is known to the hub (it sent a stock event) but never commissioned.
    stock = StockChanged(
        bin_id="A01",
        sku="06901234567892",
        count=6,
        delta=6,
        cause="initial",
        weight_g=2100.0,
        safety_stock=2,
        max_stock=12,
    )
    quiet = Gw("s2")
    quiet.seq = 1
    event = Event(
        id="s2-gw:1", seq=1, type=EventType.STOCK_CHANGED, ts=T1, data=stock.model_dump(mode="json")
    )
    await db.apply_batch(quiet.message([event]), 1.0)
    gw = Gw("s1")
    await db.apply_batch(gw.message([gw.event(record(T2, ok=False, bins=("A01", "A02")))]), 2.0)

    fleet = {e.store_id: e for e in await monitor.fleet()}
    s1, s2 = fleet["s1"], fleet["s2"]
    assert (s1.commissioned, s1.commissioned_at) == (True, T2)
    assert (s1.calibrations, s1.failed_checks, s1.bindings, s1.pick_tests, s1.pick_tests_passed) == (
        2,
        2,
        1,
        1,
        1,
    )
    assert (s2.commissioned, s2.commissioned_at, s2.calibrations) == (False, None, 0)
    detail = await monitor.store_detail("s1")
    assert detail is not None
    assert detail.store.commissioned is True

    app = create_app(db, cfg, fleet=monitor)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub") as client:
        got = await client.get("/api/stores/s1/commissioning")
        assert got.status_code == 200
        assert Commissioning.model_validate(got.json()) == record(T2, ok=False, bins=("A01", "A02"))
        missing = await client.get("/api/stores/s2/commissioning")
        assert missing.status_code == 404
        assert "no commissioning record" in missing.json()["detail"]
        rows = {r["store_id"]: r for r in (await client.get("/api/fleet")).json()}
        assert rows["s1"]["commissioned"] is True
        assert rows["s1"]["failed_checks"] == 2
        assert rows["s2"]["commissioned"] is False
