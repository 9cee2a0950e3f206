"""`GET /metrics` of a hub worker: real Mosquitto, a real database (SQLite file and PostgreSQL), the real ingest.

A fake gateway publishes hand-built contract payloads as the uplink does; the scrape is parsed with
prometheus_client's own parser and checked against the ingest counters and the fleet the hub derived.
Staleness is judged by an injected clock, so "stale" is reached by moving that clock, not by waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiomqtt
import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from cloud_bridge.contract import events_topic, health_topic, status_topic
from hub.api import create_app
from hub.config import ApiConfig, BrokerConfig, HubConfig
from hub.db import HubDB
from hub.ingest import Ingest
from hub.metrics import METRICS_PATH, install_api_metrics, metrics_router, store_state
from shelfgate.broker import Mosquitto
from tests.hub.fakes import batch, heartbeat, status, stock_event

pytestmark = pytest.mark.timeout(120)

WAIT_S = 30.0
HEARTBEAT_S = 30.0
STALE_AFTER_HEARTBEATS = 3


class Clock:
    """Wall clock plus an offset the test moves."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset_s


Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    found = [v for lab, v in samples.get(name, []) if all(lab.get(k) == want for k, want in labels.items())]
    assert len(found) == 1, f"{name}{labels}: {found} in {samples.get(name)}"
    return found[0]


def app_with_metrics(db: HubDB, config: HubConfig, ingest: Ingest, clock: Clock) -> FastAPI:
    """The hub's own app, with `/metrics` mounted here unless `create_app` already wires it in."""
    app = create_app(db, config, ingest=ingest, clock=clock)
    if getattr(app.state, "metrics_registry", None) is None:
        registry = CollectorRegistry()
        install_api_metrics(app, registry)
        app.include_router(metrics_router(db, config, registry, ingest=ingest, clock=clock))
    return app


@dataclass
class Worker:
    ingest: Ingest
    http: httpx.AsyncClient
    clock: Clock

    async def scrape(self) -> Samples:
        response = await self.http.get("/metrics")
        assert response.status_code == 200
        return parse(response.text)

    async def wait_messages(self, count: int) -> None:
        deadline = asyncio.get_running_loop().time() + WAIT_S
        while self.ingest.counters.messages < count:
            assert asyncio.get_running_loop().time() < deadline, f"{count} messages handled"
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running_worker(db_url: str, broker: Mosquitto) -> AsyncIterator[Worker]:
    config = HubConfig(
        hub_id="metrics-hq",
        database=db_url,
        broker=BrokerConfig(host=broker.host, port=broker.port, keepalive_s=10, reconnect_max_s=0.5),
        api=ApiConfig(host="127.0.0.1", port=0),
        heartbeat_s=HEARTBEAT_S,
        stale_after_heartbeats=STALE_AFTER_HEARTBEATS,
    )
    clock = Clock()
    async with HubDB(config.database) as db:
        ingest = Ingest(config, db)
        task = asyncio.create_task(ingest.run(), name="test.hub.ingest")
        try:
            async with asyncio.timeout(WAIT_S):
                await ingest.wait_subscribed()
            transport = httpx.ASGITransport(app=app_with_metrics(db, config, ingest, clock))
            async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as http:
                yield Worker(ingest, http, clock)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_hub_metrics_follow_ingest_and_fleet(db_url: str, mosquitto: Mosquitto) -> None:
    async with running_worker(db_url, mosquitto) as worker:
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="fake-gws") as gw:
            await gw.publish(status_topic("s1"), status("s1-gw", "online"), qos=1, retain=True)
            events = [stock_event("s1-gw", seq, "A01", 10 - seq) for seq in (1, 2, 3)]
            await gw.publish(events_topic("s1"), batch("s1", "s1-gw", events), qos=1)
            await gw.publish(
                health_topic("s1"), heartbeat("s1-gw", outbox_depth=4, last_seq=3, devices_offline=1), qos=1
            )
            await gw.publish(status_topic("s2"), status("s2-gw", "offline"), qos=1, retain=True)
            await gw.publish(status_topic("s3"), status("s3-gw", "online"), qos=1, retain=True)
            await gw.publish(events_topic("s1"), b"{not json", qos=1)
        await worker.wait_messages(6)

        for _ in range(2):
            assert (await worker.http.get("/api/fleet")).status_code == 200
        assert (await worker.http.get("/api/stores/s1/stock")).status_code == 200
        assert (await worker.http.get("/api/stores/nowhere/stock")).status_code == 404

        m = await worker.scrape()
        counters = worker.ingest.counters.as_dict()

        (info_labels, _), *_ = m["shelfgate_hub_info"]
        assert info_labels["hub_id"] == "metrics-hq"
        assert value(m, "shelfgate_hub_ingest_connected") == 1.0
        assert value(m, "shelfgate_hub_database_up") == 1.0
        # Every IngestCounters field is exported; nothing more arrives after wait_messages(6).
        for key, count in counters.items():
            assert value(m, f"shelfgate_hub_ingest_{key}_total") == count, key
        assert counters["messages"] == 6
        assert counters["quarantined"] == 1
        assert counters["batches"] == 1
        assert counters["events_applied"] == 3

        # The fleet: s1 online with a fresh heartbeat, s2's will says offline, s3 never sent a heartbeat.
        assert value(m, "shelfgate_hub_stores", state="online") == 1
        assert value(m, "shelfgate_hub_stores", state="offline") == 1
        assert value(m, "shelfgate_hub_stores", state="stale") == 1
        assert value(m, "shelfgate_hub_store_up", store_id="s1") == 1.0
        assert value(m, "shelfgate_hub_store_up", store_id="s2") == 0.0
        assert value(m, "shelfgate_hub_store_outbox_depth", store_id="s1") == 4
        assert value(m, "shelfgate_hub_store_outbox_oldest_age_seconds", store_id="s1") == 1.5
        assert value(m, "shelfgate_hub_store_devices_offline", store_id="s1") == 1
        assert value(m, "shelfgate_hub_store_missing_events", store_id="s1") == 0
        age = value(m, "shelfgate_hub_store_heartbeat_age_seconds", store_id="s1")
        assert 0 <= age <= STALE_AFTER_HEARTBEATS * HEARTBEAT_S
        assert not [
            lab for lab, _ in m["shelfgate_hub_store_heartbeat_age_seconds"] if lab["store_id"] == "s3"
        ]

        # API latency by route template; the 404 for an unknown store is labelled by its template too.
        hist = "shelfgate_hub_api_request_duration_seconds_count"
        assert value(m, hist, method="GET", route="/api/fleet", code="200") == 2
        assert value(m, hist, method="GET", route="/api/stores/{store_id}/stock", code="200") == 1
        assert value(m, hist, method="GET", route="/api/stores/{store_id}/stock", code="404") == 1
        assert value(m, "process_resident_memory_bytes") > 0

        # Time passes without heartbeats: s1 goes stale; the offline store stays offline.
        worker.clock.offset_s = STALE_AFTER_HEARTBEATS * HEARTBEAT_S + 60
        later = await worker.scrape()
        assert value(later, "shelfgate_hub_stores", state="online") == 0
        assert value(later, "shelfgate_hub_stores", state="stale") == 2
        assert value(later, "shelfgate_hub_stores", state="offline") == 1
        assert value(later, "shelfgate_hub_store_up", store_id="s1") == 0.0
        assert value(later, hist, method="GET", route=METRICS_PATH, code="200") == 1


def test_store_state_rule() -> None:
    """The three states partition the fleet the way `GET /api/fleet` judges staleness."""

    @dataclass
    class Record:
        online: bool | None
        last_heartbeat_at: float | None

    assert store_state(Record(False, 99.0), now=100.0, stale_after_s=10) == "offline"  # type: ignore[arg-type]
    assert store_state(Record(True, None), now=100.0, stale_after_s=10) == "stale"  # type: ignore[arg-type]
    assert store_state(Record(None, 95.0), now=100.0, stale_after_s=10) == "online"  # type: ignore[arg-type]
    assert store_state(Record(True, 89.0), now=100.0, stale_after_s=10) == "stale"  # type: ignore[arg-type]
    assert store_state(Record(True, 90.0), now=100.0, stale_after_s=10) == "online"  # type: ignore[arg-type]
