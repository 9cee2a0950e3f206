"""The whole hub against a real Mosquitto, a real database (SQLite file and PostgreSQL) and the real uvicorn port.

A fake gateway publishes hand-built contract payloads exactly as the uplink does (QoS 1, status retained);
the assertions read the HQ API over HTTP. Waiting is by polling the API with a generous ceiling that only
guards against hangs — nothing here asserts how fast the hub is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest

from cloud_bridge.contract import AlertState, events_topic, health_topic, status_topic
from hub.config import ApiConfig, BrokerConfig, HubConfig, sqlite_file
from hub.db import HubDB
from hub.service import main, run_hub
from shelfgate.broker import Mosquitto
from tests.hub.fakes import alert_event, batch, batch_dict, connect_with_will, heartbeat, status, stock_event

GW = "s1-gw"
WAIT_S = 30.0


@dataclass
class RunningHub:
    config: HubConfig
    http: httpx.AsyncClient

    async def get(self, path: str) -> Any:
        response = await self.http.get(path)
        response.raise_for_status()
        return response.json()

    async def counters(self) -> dict[str, int]:
        health = await self.get("/api/health")
        counters: dict[str, int] = health["counters"]
        return counters

    async def wait_for(self, what: str, check: Callable[[], Awaitable[bool]]) -> None:
        """Poll until `check()` holds; the ceiling only prevents a hang."""
        async with asyncio.timeout(WAIT_S):
            while True:  # the API is the only way to observe progress: poll it
                if await check():
                    break
                await asyncio.sleep(0.05)
        assert await check(), what

    async def wait_messages(self, count: int) -> None:
        # `handled`, not `messages`: the latter moves on arrival, before the apply commits — reading the API
        # right after it raced the commit (seen on PostgreSQL, where the apply is slower).
        async def done() -> bool:
            return (await self.counters())["handled"] >= count

        await self.wait_for(f"{count} messages handled", done)

    async def events_rows(self) -> list[tuple[Any, ...]]:
        """Read the hub's own database through a second connection, as an operator would."""
        async with HubDB(self.config.database) as db:
            return await db.query("SELECT id, seq FROM events ORDER BY seq")


def _config(db_url: str, broker: Mosquitto) -> HubConfig:
    return HubConfig(
        hub_id="test-hq",
        database=db_url,
        broker=BrokerConfig(host=broker.host, port=broker.port, keepalive_s=10, reconnect_max_s=0.5),
        api=ApiConfig(host="127.0.0.1", port=0),
        heartbeat_s=0.2,
        stale_after_heartbeats=2,
    )


@contextlib.asynccontextmanager
async def _running(config: HubConfig) -> AsyncIterator[RunningHub]:
    ready = asyncio.Event()
    ports: list[int] = []
    task = asyncio.create_task(run_hub(config, ready=ready, api_port_out=ports), name="test.hub")
    try:
        async with asyncio.timeout(WAIT_S):
            waiter = asyncio.create_task(ready.wait(), name="test.hub.ready")
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        if task.done():
            task.result()  # surface the start error
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports[0]}") as http:
            hub = RunningHub(config, http)

            async def connected() -> bool:
                return bool((await hub.get("/api/health"))["mqtt_connected"])

            await hub.wait_for("ingest subscribed", connected)
            yield hub
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def hub(db_url: str, mosquitto: Mosquitto) -> AsyncIterator[RunningHub]:
    async with _running(_config(db_url, mosquitto)) as running:
        yield running


@contextlib.asynccontextmanager
async def _gateway(broker: Mosquitto, client_id: str = "fake-gw") -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client(broker.host, broker.port, identifier=client_id) as client:
        yield client


async def test_stock_and_alerts_are_applied_and_served(hub: RunningHub, mosquitto: Mosquitto) -> None:
    async with _gateway(mosquitto) as gw:
        await gw.publish(status_topic("s1"), status(GW, "online"), qos=1, retain=True)
        events = [
            stock_event(GW, 1, "A01", 12),
            stock_event(GW, 2, "B02", 2),
            alert_event(GW, 3, "al-1", AlertState.RAISED, bin_id="B02", count=2),
        ]
        await gw.publish(events_topic("s1"), batch("s1", GW, events), qos=1)
    await hub.wait_messages(2)

    stock = await hub.get("/api/stores/s1/stock")
    assert stock == [
        {
            "bin_id": "A01",
            "sku": "06901234567892",
            "count": 12,
            "weight_g": 3000.0,
            "safety_stock": 3,
            "max_stock": 20,
            "updated_ts": events[0].ts,
        },
        {
            "bin_id": "B02",
            "sku": "06901234567892",
            "count": 2,
            "weight_g": 500.0,
            "safety_stock": 3,
            "max_stock": 20,
            "updated_ts": events[1].ts,
        },
    ]
    active = await hub.get("/api/stores/s1/alerts?active=true")
    assert [(a["alert_id"], a["bin_id"], a["kind"], a["state"], a["count"]) for a in active] == [
        ("al-1", "B02", "low", "raised", 2)
    ]
    assert await hub.get("/api/stores/s1/alerts?active=false") == []
    fleet = await hub.get("/api/fleet")
    assert [
        (f["store_id"], f["gateway_id"], f["online"], f["active_alerts"], f["contiguous_seq"]) for f in fleet
    ] == [("s1", GW, True, 1, 3)]
    assert (await hub.counters())["events_applied"] == 3


async def test_the_same_batch_twice_is_applied_once(hub: RunningHub, mosquitto: Mosquitto) -> None:
    payload = batch("s1", GW, [stock_event(GW, 1, "A01", 9), stock_event(GW, 2, "A01", 8)])
    async with _gateway(mosquitto) as gw:
        await gw.publish(events_topic("s1"), payload, qos=1)
        await gw.publish(events_topic("s1"), payload, qos=1)
    await hub.wait_messages(2)

    counters = await hub.counters()
    assert (counters["batches"], counters["events_applied"], counters["duplicates"]) == (2, 2, 2)
    assert await hub.events_rows() == [(f"{GW}:1", 1), (f"{GW}:2", 2)]
    assert [s["count"] for s in await hub.get("/api/stores/s1/stock")] == [8]


async def test_out_of_order_batches_converge(hub: RunningHub, mosquitto: Mosquitto) -> None:
    first = batch("s1", GW, [stock_event(GW, 1, "A01", 10), alert_event(GW, 2, "al-1", AlertState.RAISED)])
    second = batch("s1", GW, [alert_event(GW, 3, "al-1", AlertState.ACKNOWLEDGED, by="mei")])
    third = batch("s1", GW, [stock_event(GW, 4, "A01", 6), alert_event(GW, 5, "al-1", AlertState.RESOLVED)])
    async with _gateway(mosquitto) as gw:
        for payload in (third, first, second):
            await gw.publish(events_topic("s1"), payload, qos=1)
    await hub.wait_messages(3)

    assert [(s["bin_id"], s["count"]) for s in await hub.get("/api/stores/s1/stock")] == [("A01", 6)]
    alerts = await hub.get("/api/stores/s1/alerts")
    assert [(a["state"], a["acknowledged_by"]) for a in alerts] == [("resolved", "mei")]
    assert await hub.get("/api/stores/s1/alerts?active=true") == []
    (entry,) = await hub.get("/api/fleet")
    assert (entry["contiguous_seq"], entry["missing_ranges"], entry["active_alerts"]) == (5, [], 0)


async def test_malformed_payloads_are_quarantined_and_ingest_carries_on(
    hub: RunningHub, mosquitto: Mosquitto
) -> None:
    good = [stock_event(GW, 1, "A01", 5)]
    wrong_store = batch("s2", GW, good)  # published under s1's root
    miscounted = batch_dict("s1", GW, good)
    miscounted["last_seq"] = 2
    gapped = batch_dict("s1", GW, [stock_event(GW, 1, "A01", 5), stock_event(GW, 2, "A01", 4)])
    gapped["events"][1].update(seq=3, id=f"{GW}:3")
    bad_schema = batch_dict("s1", GW, good)
    bad_schema["events"][0]["data"]["count"] = "many"
    sent = [
        (events_topic("s1"), b"\xff not json at all"),
        (events_topic("s1"), wrong_store),
        (events_topic("s1"), json.dumps(miscounted).encode()),
        (events_topic("s1"), json.dumps(gapped).encode()),
        (events_topic("s1"), json.dumps(bad_schema).encode()),
        (health_topic("s1"), b'{"schema": "shelfgate.health/1"}'),
    ]
    async with _gateway(mosquitto) as gw:
        for topic, payload in sent:
            await gw.publish(topic, payload, qos=1)
        await gw.publish(events_topic("s1"), batch("s1", GW, good), qos=1)
    await hub.wait_messages(len(sent) + 1)

    counters = await hub.counters()
    assert (counters["quarantined"], counters["events_applied"]) == (6, 1)
    quarantined = await hub.get("/api/quarantine")
    codes = [q["reason"].split(":", 1)[0] for q in reversed(quarantined)]
    assert codes == ["bad-json", "store-mismatch", "seq-count", "seq-gap", "schema", "schema"]
    assert quarantined[-1]["payload_encoding"] == "hex"
    assert quarantined[-1]["payload"] == b"\xff not json at all".hex()
    assert "events[0].data" in quarantined[1]["reason"]
    assert [s["count"] for s in await hub.get("/api/stores/s1/stock")] == [5]
    assert await hub.events_rows() == [(f"{GW}:1", 1)]


async def test_fleet_goes_offline_when_the_will_fires(hub: RunningHub, mosquitto: Mosquitto) -> None:
    will = status(GW, "offline")
    sock = await asyncio.to_thread(
        connect_with_will, mosquitto.host, mosquitto.port, GW, status_topic("s1"), will
    )
    try:
        async with _gateway(mosquitto, "fake-gw-birth") as gw:
            await gw.publish(status_topic("s1"), status(GW, "online", version="0.2.0"), qos=1, retain=True)
        await hub.wait_messages(1)
        (entry,) = await hub.get("/api/fleet")
        assert (entry["online"], entry["version"], entry["config_version"]) == (True, "0.2.0", "cfg-7")
    finally:
        sock.close()  # no DISCONNECT: the broker publishes the retained will

    async def offline() -> bool:
        return (await hub.get("/api/fleet"))[0]["online"] is False

    await hub.wait_for("store offline", offline)
    (entry,) = await hub.get("/api/fleet")
    assert entry["status_ts"] is not None


async def test_a_hub_started_later_sees_the_retained_status(db_url: str, mosquitto: Mosquitto) -> None:
    async with _gateway(mosquitto) as gw:
        await gw.publish(status_topic("s7"), status("s7-gw", "offline"), qos=1, retain=True)
    async with _running(_config(db_url, mosquitto)) as hub:
        await hub.wait_messages(1)
        fleet = await hub.get("/api/fleet")
    assert [(f["store_id"], f["gateway_id"], f["online"]) for f in fleet] == [("s7", "s7-gw", False)]


async def test_stale_after_missed_heartbeats(hub: RunningHub, mosquitto: Mosquitto) -> None:
    stale_after_s = hub.config.stale_after_s

    async def entry() -> dict[str, Any]:
        fleet = await hub.get("/api/fleet")
        assert len(fleet) == 1
        found: dict[str, Any] = fleet[0]
        return found

    async with _gateway(mosquitto) as gw:

        async def beating() -> None:
            while True:
                await gw.publish(
                    health_topic("s1"), heartbeat(GW, outbox_depth=4, last_seq=17, devices_offline=1)
                )
                await asyncio.sleep(hub.config.heartbeat_s / 2)

        beat = asyncio.create_task(beating(), name="test.gw.heartbeat")
        try:

            async def fresh() -> bool:
                fleet = await hub.get("/api/fleet")
                return bool(fleet) and fleet[0]["stale"] is False

            await hub.wait_for("fresh while heartbeating", fresh)
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
    seen = await entry()
    assert (seen["outbox_depth"], seen["outbox_oldest_age_s"], seen["last_seq"], seen["devices_offline"]) == (
        4,
        1.5,
        17,
        1,
    )

    async def stale() -> bool:
        return bool((await entry())["stale"])

    await hub.wait_for("stale after silence", stale)
    silent = await entry()
    assert silent["heartbeat_age_s"] > stale_after_s
    assert silent["online"] is None  # no status was ever published


async def test_a_seq_gap_shows_in_missing_ranges_until_filled(hub: RunningHub, mosquitto: Mosquitto) -> None:
    async with _gateway(mosquitto) as gw:
        await gw.publish(events_topic("s1"), batch("s1", GW, [stock_event(GW, 1, "A01", 9)]), qos=1)
        later = [stock_event(GW, 4, "A01", 6), stock_event(GW, 5, "A01", 5)]
        await gw.publish(events_topic("s1"), batch("s1", GW, later), qos=1)
        await hub.wait_messages(2)
        (gapped,) = await hub.get("/api/fleet")
        missing = [stock_event(GW, 2, "A01", 8), stock_event(GW, 3, "A01", 7)]
        await gw.publish(events_topic("s1"), batch("s1", GW, missing), qos=1)
        await hub.wait_messages(3)
    assert (gapped["received_seq"], gapped["contiguous_seq"]) == (5, 1)
    assert gapped["missing_ranges"] == [{"first_seq": 2, "last_seq": 3}]
    (filled,) = await hub.get("/api/fleet")
    assert (filled["contiguous_seq"], filled["missing_ranges"]) == (5, [])
    assert [s["count"] for s in await hub.get("/api/stores/s1/stock")] == [5]


async def test_unknown_store_is_a_clear_404(hub: RunningHub) -> None:
    for path in ("/api/stores/nope/stock", "/api/stores/nope/alerts"):
        response = await hub.http.get(path)
        assert response.status_code == 404
        assert response.json() == {"detail": "unknown store 'nope': the hub has no data from it"}


async def test_ingest_reconnects_after_a_broker_restart(hub: RunningHub, mosquitto: Mosquitto) -> None:
    mosquitto.stop()

    async def disconnected() -> bool:
        return not (await hub.get("/api/health"))["mqtt_connected"]

    await hub.wait_for("ingest noticed the broker is gone", disconnected)
    mosquitto.start()

    async def connected() -> bool:
        return bool((await hub.get("/api/health"))["mqtt_connected"])

    await hub.wait_for("ingest back", connected)
    async with _gateway(mosquitto) as gw:
        await gw.publish(events_topic("s1"), batch("s1", GW, [stock_event(GW, 1, "A01", 3)]), qos=1)
    await hub.wait_messages(1)
    assert [s["count"] for s in await hub.get("/api/stores/s1/stock")] == [3]
    assert (await hub.counters())["connects"] >= 2


def test_main_rejects_bad_config(tmp_path: Path) -> None:
    path = tmp_path / "hub.yaml"
    path.write_text("hub_id: hq1\n", encoding="utf-8")
    assert main(["--config", str(path)]) == 2


def test_main_serves_until_sigterm(tmp_path: Path, mosquitto: Mosquitto, db_url: str) -> None:
    """The real process root: logs its URL, answers, and exits 0 on SIGTERM (uvicorn's handlers are off)."""
    path = tmp_path / "hub.yaml"
    database = "data/hub.db" if sqlite_file(db_url) is not None else db_url  # a bare relative path, or a URL
    path.write_text(
        f"hub_id: proc\ndatabase: '{database}'\nbroker: {{port: {mosquitto.port}}}\napi: {{port: 0}}\n",
        encoding="utf-8",
    )
    code = "import sys; from hub.service import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--config", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert proc.stderr is not None
        url = None
        url_line = ""
        for line in proc.stderr:
            found = re.search(r"serving (http://127\.0\.0\.1:\d+)", line)
            if found:
                url, url_line = found.group(1), line
                break
        assert url is not None, "the hub never logged its URL"
        health = httpx.get(f"{url}/api/health", timeout=10).json()
        assert (health["status"], health["hub_id"]) == ("ok", "proc")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT_S) == 0
        assert "hub proc stopped" in proc.stderr.read()
        if sqlite_file(db_url) is not None:
            assert (tmp_path / "data" / "hub.db").exists()
        else:
            assert db_url.split("?", maxsplit=1)[0].rsplit("/", 1)[-1] in url_line
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


async def test_the_hub_stops_whenever_it_is_cancelled(db_url: str, mosquitto: Mosquitto) -> None:
    """Regression: a cancel landing as the SUBACK arrives was swallowed by 3.11's wait_for inside aiomqtt and
    the hub never stopped. Cancel at many points of start-up; each run must end cancelled (the ceiling only
    turns a hang into a failure). The race is timing-dependent, so this sweep is a smoke test; the
    deterministic check of the mechanism is `test_ingest.py::test_a_swallowed_cancel_is_reraised`."""
    for attempt, delay_s in enumerate(n * 0.003 for n in range(25)):  # sweeps across connect + SUBACK
        ready = asyncio.Event()
        config = _config(db_url, mosquitto)
        task = asyncio.create_task(run_hub(config, ready=ready), name=f"test.hub{attempt}")
        await ready.wait()
        await asyncio.sleep(delay_s)
        task.cancel()
        async with asyncio.timeout(WAIT_S):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert task.cancelled(), attempt
