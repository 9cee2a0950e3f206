"""A sale end to end on real parts: the gateway's durable outbox (`GatewayStore`) and its `Uplink` → a real
Mosquitto → a real hub worker (`hub.service.run_hub`: ingest + uvicorn) → the HQ API over HTTP, on both
database engines.

The lane's sale is recorded in the gateway's outbox as the checkout integration would record it; the test
waits (generous ceiling, never a timed assertion) until the sale is queryable at `GET /api/sales` and the
member's points reflect it, then returns part of it and waits for the points to come back down.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud_bridge.contract import EventType, utc_now
from cloud_bridge.uplink import Uplink
from edge.store import GatewayStore, NewEvent
from hub import sales as hub_sales
from hub.config import ApiConfig, BrokerConfig, HubConfig
from hub.service import run_hub
from shelfgate.broker import Mosquitto
from tests.cloud_bridge.mqtt_helpers import running
from tests.hub.conftest import db_url, new_db_url, postgres_database  # noqa: F401 - fixtures: both engines
from tests.hub.test_sales import a_return, item, sale

pytestmark = pytest.mark.timeout(240)

WAIT_S = 60.0
"""Only turns a hang into a failure; nothing here measures speed (bench/bench_hub_sales.py does)."""
MEMBER = "M77001"


async def _eventually(what: str, check: Callable[[], Awaitable[bool]]) -> None:
    async with asyncio.timeout(WAIT_S):
        while True:  # the HQ API is the only place this progress shows: poll it
            if await check():
                break
            await asyncio.sleep(0.05)
    assert await check(), what


@contextlib.asynccontextmanager
async def _hub(url: str, broker: Mosquitto) -> AsyncIterator[httpx.AsyncClient]:
    config = HubConfig(
        hub_id="e2e-hq",
        database=url,
        broker=BrokerConfig(host=broker.host, port=broker.port, keepalive_s=10, reconnect_max_s=0.5),
        api=ApiConfig(host="127.0.0.1", port=0),
    )
    ready, ports = asyncio.Event(), list[int]()
    previous = hub_sales.current_settings()
    task = asyncio.create_task(run_hub(config, ready=ready, api_port_out=ports), name="test.hub")
    try:
        async with asyncio.timeout(WAIT_S):
            waiter = asyncio.create_task(ready.wait(), name="test.hub.ready")
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        if task.done():
            task.result()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports[0]}") as http:

            async def subscribed() -> bool:
                return bool((await http.get("/api/health")).json()["mqtt_connected"])

            await _eventually("hub ingest subscribed", subscribed)
            yield http
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        hub_sales.configure(previous)


@contextlib.asynccontextmanager
async def _gateway(path: Path, broker: Mosquitto) -> AsyncIterator[GatewayStore]:
    async with GatewayStore(path) as store:
        uplink = Uplink(
            store_id="e2e-s1",
            gateway_id="e2e-s1-gw",
            boot_id="b1",
            version="test",
            config_version="c1",
            outbox=store,
            host=broker.host,
            port=broker.port,
            heartbeat_s=3600,
        )
        async with running(uplink):
            yield store


async def _json(http: httpx.AsyncClient, path: str, **params: Any) -> Any:
    response = await http.get(path, params=params)
    response.raise_for_status()
    return response.json()


async def test_a_lane_sale_reaches_the_hub_api_with_the_members_points(
    db_url: str,  # noqa: F811 - the imported fixture, parametrised over both engines
    mosquitto: Mosquitto,
    tmp_path: Path,
) -> None:
    now = utc_now()
    completed = sale("e2e-s1-L1-0001", now - timedelta(seconds=1), item("25.00", 4), member_id=MEMBER)
    partial = a_return("e2e-s1-L1-R001", completed, now, item("25.00"))
    async with _hub(db_url, mosquitto) as http, _gateway(tmp_path / "gw.sqlite3", mosquitto) as store:
        registered = await http.post("/api/members", json={"member_id": MEMBER, "campaign_id": "e2e-2026"})
        assert registered.status_code == 201, registered.text

        await store.record(
            [NewEvent(EventType.SALE_COMPLETED.value, completed.ts, completed.model_dump(mode="json"))]
        )

        async def sale_queryable() -> bool:
            return bool(await _json(http, "/api/sales", member=MEMBER))

        await _eventually("the sale at GET /api/sales", sale_queryable)
        (listed,) = await _json(http, "/api/sales", member=MEMBER)
        member = await _json(http, f"/api/members/{MEMBER}")
        assert (listed["transaction_id"], listed["store_id"], listed["total"], listed["event_id"]) == (
            "e2e-s1-L1-0001",
            "e2e-s1",
            "100.00",
            "e2e-s1-gw:1",
        )
        assert (member["points"], member["spend_30d_cny"]) == (5 + 120, "100.00")

        await store.record(
            [NewEvent(EventType.SALE_RETURNED.value, partial.ts, partial.model_dump(mode="json"))]
        )

        async def points_reversed() -> bool:
            return bool((await _json(http, f"/api/members/{MEMBER}"))["points"] == 5 + 90)

        await _eventually("the return's points reversed", points_reversed)
        detail = await _json(http, "/api/sales/e2e-s1-L1-0001")
        ledger = await _json(http, f"/api/members/{MEMBER}/ledger")
    assert detail["sale"]["refunded"] == "25.00"
    assert [(e["cause"], e["delta"]) for e in ledger] == [("signup", 5), ("purchase", 120), ("return", -30)]
