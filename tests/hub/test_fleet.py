"""Fleet health and HQ alerts on a real hub database (SQLite file and PostgreSQL, via tests/hub/conftest.py).

Statuses and heartbeats go through the real intake path — contract models → wire bytes → `parse_message` →
`HubDB.record_status` / `record_heartbeat` — with the hub receive time taken from an injected clock, so
"5 minutes offline" is a clock step, never a sleep. The monitor under test reads the same clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import pytest

from cloud_bridge.contract import DeviceHealth, Heartbeat, Status, health_topic, rfc3339, status_topic
from hub.api import create_app
from hub.config import FleetConfig, HubConfig
from hub.db import HubDB
from hub.fleet import FLEET_SCHEMA_VERSION, FleetMonitor
from hub.models import HqAlert
from hub.parse import HeartbeatMessage, StatusMessage, parse_message

T0 = 1_790_000_000.0
HEARTBEAT_S = 30.0


class Clock:
    """The hub's time, stepped by the test."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def at(self, offset_s: float) -> None:
        self.now = T0 + offset_s


def _config(db_url: str, **fleet: Any) -> HubConfig:
    return HubConfig(
        hub_id="fleet-test",
        database=db_url,
        heartbeat_s=HEARTBEAT_S,
        stale_after_heartbeats=3,
        fleet=FleetConfig(**fleet),
    )


def device(
    device_id: str,
    *,
    online: bool = True,
    family: str | None = "modbus",
    errors_by_kind: dict[str, int] | None = None,
    last_error: str | None = None,
) -> DeviceHealth:
    """One device of a heartbeat, with the optional fields a current gateway sends."""
    return DeviceHealth(
        device_id=device_id,
        online=online,
        last_seen_age_s=0.3 if online else 95.0,
        polls=1000,
        errors=sum((errors_by_kind or {}).values()),
        last_error=last_error,
        family=family,
        connected=True,
        errors_by_kind=errors_by_kind,
    )


class FakeGateway:
    """Publishes as one store's uplink would, straight into the hub's intake (no broker: the broker path is
    tests/hub/test_service.py and tests/e2e/test_hq_dashboard.py)."""

    def __init__(self, db: HubDB, clock: Clock, store_id: str = "s1") -> None:
        self.db = db
        self.clock = clock
        self.store_id = store_id
        self.gateway_id = f"{store_id}-gw"

    async def status(self, state: str, *, version: str = "0.3.0") -> None:
        payload = Status(
            state="online" if state == "online" else "offline",
            gateway_id=self.gateway_id,
            boot_id="boot-1",
            version=version,
            config_version="cfg-9",
            ts=rfc3339(self.clock.now),
        ).to_json()
        message = parse_message(status_topic(self.store_id), payload)
        assert isinstance(message, StatusMessage)
        await self.db.record_status(message, self.clock.now)

    async def heartbeat(
        self,
        *,
        depth: int = 0,
        oldest_s: float | None = None,
        devices: Sequence[DeviceHealth] = (),
        last_seq: int = 0,
        outbox_alarm: str | None = None,
        uptime_s: float = 100.0,
    ) -> None:
        payload = Heartbeat(
            gateway_id=self.gateway_id,
            boot_id="boot-1",
            ts=rfc3339(self.clock.now),  # gateway clock = hub clock here; samples are keyed by it
            uptime_s=uptime_s,
            cpu_pct=4.0,
            mem_rss_mb=50.0,
            disk_free_mb=800.0,
            temperature_c=48.5,
            outbox_depth=depth,
            outbox_oldest_age_s=oldest_s if depth else None,
            last_seq=last_seq,
            devices=list(devices),
            active_alerts=0,
            outbox_alarm=outbox_alarm,
        ).to_json()
        message = parse_message(health_topic(self.store_id), payload)
        assert isinstance(message, HeartbeatMessage)
        await self.db.record_heartbeat(message, self.clock.now)


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[HubDB]:
    async with HubDB(db_url) as opened:
        yield opened


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def gw(db: HubDB, clock: Clock) -> FakeGateway:
    return FakeGateway(db, clock)


def _monitor(db: HubDB, clock: Clock, **fleet: Any) -> FleetMonitor:
    return FleetMonitor(db, _config(db.url, **fleet), clock=clock, listening_since=lambda: T0 - 3600)


async def _kinds(monitor: FleetMonitor, active: bool | None = None) -> list[tuple[str, str | None, bool]]:
    return [(a.kind, a.subject, a.active) for a in await monitor.hq_alerts(active=active)]


async def _only(monitor: FleetMonitor) -> HqAlert:
    alerts = await monitor.hq_alerts()
    assert len(alerts) == 1, alerts
    return alerts[0]


async def test_health_states_and_stale_after_three_missed_heartbeats(
    db: HubDB, clock: Clock, gw: FakeGateway
) -> None:
    monitor = _monitor(db, clock)
    await gw.status("online", version="0.3.1")
    await gw.heartbeat(
        depth=7,
        oldest_s=4.0,
        last_seq=12,
        devices=[
            device("wt-1"),
            device("ble-2", online=False, family="ble", last_error="decryption failed"),
        ],
    )

    clock.at(3 * HEARTBEAT_S)  # exactly 3 periods: not yet missed
    (entry,) = await monitor.fleet()
    assert (entry.state, entry.stale, entry.online, entry.heartbeat_age_s) == ("online", False, True, 90.0)
    assert (entry.version, entry.config_version, entry.outbox_depth, entry.outbox_oldest_age_s) == (
        "0.3.1",
        "cfg-9",
        7,
        4.0,
    )
    assert (entry.devices_total, entry.devices_offline) == (2, 1)
    assert [(d.device_id, d.family, d.last_error) for d in entry.devices_down] == [
        ("ble-2", "ble", "decryption failed")
    ]
    assert (entry.offline_since, entry.offline_for_s) == (None, None)

    clock.at(3 * HEARTBEAT_S + 0.01)  # the third heartbeat is missed
    (entry,) = await monitor.fleet()
    assert (entry.state, entry.stale) == ("stale", True)

    await gw.heartbeat()  # heard again
    (entry,) = await monitor.fleet()
    assert (entry.state, entry.heartbeat_age_s, entry.devices_down) == ("online", 0.0, [])

    clock.at(100)
    await gw.status("offline")  # the will
    clock.at(160)
    (entry,) = await monitor.fleet()
    assert (entry.state, entry.online, entry.offline_since, entry.offline_for_s) == (
        "offline",
        False,
        rfc3339(T0 + 100),
        60.0,
    )


async def test_offline_alert_is_raised_once_and_resolved_once(
    db: HubDB, clock: Clock, gw: FakeGateway
) -> None:
    monitor = _monitor(db, clock)
    await gw.status("online")
    await gw.heartbeat()
    clock.at(10)
    await gw.status("offline")

    clock.at(10 + 299.9)  # offline for just under 5 minutes
    assert (await monitor.evaluate()).changes == ()
    assert await monitor.hq_alerts() == []

    clock.at(10 + 300)
    raised = await monitor.evaluate()
    assert [(c.kind, c.raised) for c in raised.changes] == [("store_offline", True)]
    for later in (400, 500, 700):  # still offline: evaluated again and again, raised once
        clock.at(later)
        assert (await monitor.evaluate()).changes == ()
    alert = await _only(monitor)
    assert (alert.store_id, alert.kind, alert.subject, alert.active) == ("s1", "store_offline", None, True)
    assert alert.detail == {"cause": "status", "since": rfc3339(T0 + 10)}
    assert alert.raised_at == rfc3339(T0 + 310)
    assert alert.duration_s == 390.0
    (entry,) = await monitor.fleet()
    assert entry.hq_alerts_active == 1

    clock.at(800)  # the gateway is back: birth, then its connect heartbeat
    await gw.status("online")
    await gw.heartbeat()
    resolved = await monitor.evaluate()
    assert [(c.kind, c.raised) for c in resolved.changes] == [("store_offline", False)]
    for later in (801, 900, 2000):
        clock.at(later)
        await gw.heartbeat()
        assert (await monitor.evaluate()).changes == ()
    alert = await _only(monitor)
    assert (alert.active, alert.resolved_at, alert.resolution, alert.duration_s) == (
        False,
        rfc3339(T0 + 800),
        "back online",
        490.0,
    )
    assert await monitor.hq_alerts(active=True) == []
    assert [a.alert_id for a in await monitor.hq_alerts(active=False)] == [alert.alert_id]

    clock.at(3000)  # a second outage is a second episode
    await gw.status("offline")
    clock.at(3300)
    await monitor.evaluate()
    assert await _kinds(monitor) == [("store_offline", None, True), ("store_offline", None, False)]


async def test_a_silent_store_counts_as_offline_but_not_while_the_hub_was_deaf(
    db: HubDB, clock: Clock, gw: FakeGateway
) -> None:
    listening: list[float | None] = [None]
    monitor = FleetMonitor(db, _config(db.url), clock=clock, listening_since=lambda: listening[0])
    await gw.status("online")
    await gw.heartbeat()  # and then nothing: status still says online

    clock.at(1000)
    not_judged = await monitor.evaluate()
    assert (not_judged.judged, not_judged.changes) == (False, ())  # ingest not subscribed: no verdicts

    listening[0] = T0 + 900  # the hub (re)subscribed at +900: silence counts from there
    assert (await monitor.evaluate()).changes == ()
    clock.at(900 + 299)
    assert (await monitor.evaluate()).changes == ()
    clock.at(900 + 300)
    await monitor.evaluate()
    alert = await _only(monitor)
    assert (alert.kind, alert.detail) == ("store_offline", {"cause": "silent", "since": rfc3339(T0 + 900)})

    clock.at(1300)
    await gw.heartbeat()
    await monitor.evaluate()
    assert await _kinds(monitor) == [("store_offline", None, False)]


async def test_a_rising_backlog_raises_once_and_resolves_when_it_drains(
    db: HubDB, clock: Clock, gw: FakeGateway
) -> None:
    monitor = _monitor(db, clock, backlog_rising_heartbeats=3, backlog_min_depth=50)
    await gw.status("online")

    async def beat(at: float, depth: int) -> list[tuple[str, bool]]:
        clock.at(at)
        await gw.heartbeat(depth=depth, oldest_s=5.0)
        return [(c.kind, c.raised) for c in (await monitor.evaluate()).changes]

    assert await beat(0, 1) == []
    assert await beat(30, 2) == []
    assert await beat(60, 3) == []
    assert await beat(90, 4) == []  # rose 3 times, but a burst of 4 is no backlog
    assert await beat(120, 3) == []
    assert await beat(150, 40) == []
    assert await beat(180, 60) == []
    assert await beat(210, 80) == [("backlog_growing", True)]  # 3 → 40 → 60 → 80 ≥ 50
    alert = await _only(monitor)
    assert alert.detail == {
        "cause": "rising",
        "from_depth": 3,
        "outbox_depth": 80,
        "outbox_oldest_age_s": 5.0,
    }
    assert await beat(240, 95) == []  # still rising: the same episode
    (entry,) = await monitor.fleet()
    assert entry.backlog_growing is True
    detail = await monitor.store_detail("s1")
    assert detail is not None
    assert detail.backlog.growing is True
    assert [s.outbox_depth for s in detail.backlog.samples] == [40, 60, 80, 95]  # kept: n + 1 samples

    assert await beat(270, 90) == [("backlog_growing", False)]  # the drain caught up
    assert await beat(300, 0) == []
    alert = await _only(monitor)
    assert (alert.active, alert.resolution) == (False, "draining")
    (entry,) = await monitor.fleet()
    assert entry.backlog_growing is False


async def test_an_outbox_that_does_not_drain_is_a_growing_backlog(
    db: HubDB, clock: Clock, gw: FakeGateway
) -> None:
    monitor = _monitor(db, clock, backlog_max_age_s=600)
    await gw.status("online")

    async def beat(at: float, depth: int, oldest_s: float | None) -> list[tuple[str, bool]]:
        clock.at(at)
        await gw.heartbeat(depth=depth, oldest_s=oldest_s)
        return [(c.kind, c.raised) for c in (await monitor.evaluate()).changes]

    assert await beat(0, 0, None) == []
    # Back from an hour offline: the first heartbeat shows an old backlog, then it drains — no alert.
    assert await beat(3600, 12, 3600.0) == []
    assert await beat(3630, 2, 12.0) == []
    # Stuck: the same oldest event two heartbeats running, older than 600 s.
    assert await beat(4230, 3, 610.0) == []
    assert await beat(4260, 3, 640.0) == [("backlog_growing", True)]
    assert await beat(4290, 3, 670.0) == []
    alert = await _only(monitor)
    assert (alert.detail["cause"], alert.detail["outbox_oldest_age_s"]) == ("stuck", 640.0)
    assert await beat(4320, 0, None) == [("backlog_growing", False)]
    assert (await _only(monitor)).resolution == "outbox empty"


async def test_a_device_down_raises_per_device_and_resolves_when_it_is_back(
    db: HubDB, clock: Clock, gw: FakeGateway
) -> None:
    monitor = _monitor(db, clock)
    await gw.status("online")
    faults = {"timeouts": 7, "crc_errors": 1, "bus_unavailable": 0}
    down = device("wt-3", online=False, errors_by_kind=faults, last_error="timeout: no reply within 0.20 s")
    await gw.heartbeat(devices=[device("wt-1"), down, device("scale-1", family="scale")])
    changes = (await monitor.evaluate()).changes
    assert [(c.kind, c.subject, c.raised) for c in changes] == [("device_down", "wt-3", True)]
    clock.at(30)
    await gw.heartbeat(devices=[device("wt-1"), down, device("scale-1", family="scale")])
    assert (await monitor.evaluate()).changes == ()
    alert = await _only(monitor)
    assert alert.detail["family"] == "modbus"
    assert alert.detail["errors_by_kind"] == faults
    assert alert.message == "device wt-3 (modbus) offline: timeout: no reply within 0.20 s"

    detail = await monitor.store_detail("s1")
    assert detail is not None
    assert [(d.device_id, d.family, d.online, d.errors) for d in detail.devices] == [
        ("wt-1", "modbus", True, 0),
        ("wt-3", "modbus", False, 8),
        ("scale-1", "scale", True, 0),
    ]
    assert detail.devices[1].errors_by_kind == faults
    assert detail.gateway is not None
    assert detail.gateway.temperature_c == 48.5
    assert [a.kind for a in detail.hq_alerts] == ["device_down"]

    clock.at(60)
    await gw.heartbeat(devices=[device("wt-1"), device("wt-3"), device("scale-1", family="scale")])
    changes = (await monitor.evaluate()).changes
    assert [(c.kind, c.subject, c.raised) for c in changes] == [("device_down", "wt-3", False)]
    assert (await _only(monitor)).resolution == "back online"

    clock.at(90)  # down again (a new episode), then taken out of the config
    await gw.heartbeat(devices=[device("wt-1"), device("wt-3", online=False)])
    await monitor.evaluate()
    clock.at(120)
    await gw.heartbeat(devices=[device("wt-1")])
    await monitor.evaluate()
    alerts = await monitor.hq_alerts()
    assert [(a.subject, a.active, a.resolution) for a in alerts] == [
        ("wt-3", False, "no longer reported"),
        ("wt-3", False, "back online"),
    ]


async def test_a_starting_gateway_s_not_yet_polled_devices_are_not_down(
    db: HubDB, clock: Clock, gw: FakeGateway
) -> None:
    """The first heartbeat comes before the first poll: `device_down` for every device would be noise at HQ."""
    monitor = _monitor(db, clock)
    await gw.status("online")
    never_heard = device("wt-2", online=False).model_copy(update={"last_seen_age_s": None, "polls": 0})
    lost = device("wt-3", online=False)  # heard from, then lost: down even while starting
    await gw.heartbeat(devices=[device("wt-1"), never_heard, lost], uptime_s=2.0)
    changes = (await monitor.evaluate()).changes
    assert [(c.kind, c.subject, c.raised) for c in changes] == [("device_down", "wt-3", True)]
    clock.at(90)  # past the grace and still never heard from: now it is down
    await gw.heartbeat(devices=[device("wt-1"), never_heard, lost], uptime_s=92.0)
    changes = (await monitor.evaluate()).changes
    assert [(c.kind, c.subject, c.raised) for c in changes] == [("device_down", "wt-2", True)]


async def test_an_outbox_quota_alarm_raises_once_and_resolves_when_the_heartbeat_drops_it(
    db: HubDB, clock: Clock, gw: FakeGateway
) -> None:
    monitor = _monitor(db, clock)
    await gw.status("online")
    alarm = "levels quota hit: 64.1 of 64.0 MiB unsent; level updates coalesce"
    await gw.heartbeat(depth=900, oldest_s=60, outbox_alarm=alarm)
    changes = (await monitor.evaluate()).changes
    assert [(c.kind, c.raised) for c in changes] == [("outbox_quota", True)]
    clock.at(30)
    await gw.heartbeat(depth=900, oldest_s=90, outbox_alarm=alarm)
    assert [c.kind for c in (await monitor.evaluate()).changes] == []  # one alarm, not one per heartbeat
    alert = await _only(monitor)
    assert alert.message == f"outbox quota hit: {alarm}"
    assert alert.detail == {"alarm": alarm}
    clock.at(60)
    await gw.heartbeat(depth=0)
    changes = (await monitor.evaluate()).changes
    assert [(c.kind, c.raised) for c in changes] == [("outbox_quota", False)]
    assert (await _only(monitor)).resolution == "back under quota"


async def test_two_workers_raise_and_resolve_an_episode_once(db_url: str, clock: Clock) -> None:
    """Two workers (own connections, own monitors) evaluating at the same moment: the database decides."""
    async with HubDB(db_url) as db_a, HubDB(db_url) as db_b:
        gw = FakeGateway(db_a, clock)
        await gw.status("online")
        await gw.heartbeat(devices=[device("wt-9", online=False)])
        clock.at(5)
        await gw.status("offline")
        clock.at(400)
        first, second = _monitor(db_a, clock), _monitor(db_b, clock)
        results = await asyncio.gather(*(m.evaluate() for m in (first, second, first, second)))
        raised = sorted((c.kind, c.subject) for r in results for c in r.changes)
        assert raised == [("device_down", "wt-9"), ("store_offline", "")]
        assert sorted(await _kinds(second)) == [("device_down", "wt-9", True), ("store_offline", None, True)]

        clock.at(500)
        await gw.status("online")
        await gw.heartbeat(devices=[device("wt-9")])
        results = await asyncio.gather(*(m.evaluate() for m in (second, first, second, first)))
        resolved = sorted((c.kind, c.raised) for r in results for c in r.changes)
        assert resolved == [("device_down", False), ("store_offline", False)]
        rows = await db_b.query("SELECT kind, resolved_at FROM hq_alerts ORDER BY kind")
        assert rows == [("device_down", T0 + 500), ("store_offline", T0 + 500)]


async def test_fleet_tables_have_their_own_idempotent_migrations(db_url: str) -> None:
    async with HubDB(db_url) as db:
        core = await db.query("SELECT MAX(version) FROM schema_version")
        for _ in range(2):
            await FleetMonitor(db, _config(db_url)).ensure_schema()
        assert await db.query("SELECT version FROM fleet_schema_version") == [(FLEET_SCHEMA_VERSION,)]
        assert await db.query("SELECT MAX(version) FROM schema_version") == core
    async with HubDB(db_url) as reopened:  # a second worker starting later finds it done
        await FleetMonitor(reopened, _config(db_url)).ensure_schema()
        assert await reopened.query("SELECT COUNT(*) FROM fleet_schema_version") == [(1,)]


async def test_the_api_serves_fleet_store_detail_and_hq_alerts(
    db: HubDB, clock: Clock, gw: FakeGateway
) -> None:
    config = _config(db.url)
    monitor = FleetMonitor(db, config, clock=clock, listening_since=lambda: T0)
    app = create_app(db, config, clock=clock, fleet=monitor)
    await gw.status("online")
    await gw.heartbeat(depth=2, oldest_s=1.0, devices=[device("rfid-1", online=False, family="rfid")])
    other = FakeGateway(db, clock, "s2")
    await other.status("offline")
    clock.at(301)
    await gw.heartbeat(depth=2, oldest_s=1.0, devices=[device("rfid-1", online=False, family="rfid")])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as http:
        fleet = (await http.get("/api/fleet")).json()
        assert [(f["store_id"], f["state"], f["hq_alerts_active"]) for f in fleet] == [
            ("s1", "online", 1),
            ("s2", "offline", 1),
        ]
        s1 = fleet[0]
        assert s1["devices_down"] == [{"device_id": "rfid-1", "family": "rfid", "last_error": None}]
        assert (s1["outbox_depth"], s1["contiguous_seq"], s1["lost_ranges"]) == (2, 0, [])  # old fields stay

        detail = (await http.get("/api/stores/s1")).json()
        assert detail["store"]["store_id"] == "s1"
        assert [d["family"] for d in detail["devices"]] == ["rfid"]
        assert detail["backlog"]["outbox_depth"] == 2
        assert [a["kind"] for a in detail["hq_alerts"]] == ["device_down"]
        missing = await http.get("/api/stores/nope")
        assert missing.status_code == 404
        assert missing.json() == {"detail": "unknown store 'nope': the hub has no data from it"}

        active = (await http.get("/api/hq-alerts", params={"active": "true"})).json()
        assert sorted((a["store_id"], a["kind"]) for a in active) == [
            ("s1", "device_down"),
            ("s2", "store_offline"),
        ]
        assert (await http.get("/api/hq-alerts", params={"active": "false"})).json() == []
        only_s2 = (await http.get("/api/hq-alerts", params={"store_id": "s2"})).json()
        assert [a["kind"] for a in only_s2] == ["store_offline"]

        paths = (await http.get("/openapi.json")).json()["paths"]
        assert {"/api/fleet", "/api/stores/{store_id}", "/api/hq-alerts"} <= set(paths)
        root = await http.get("/")
        assert (root.status_code, root.headers["location"]) == (307, "/hq")
        page = await http.get("/hq")
        assert page.status_code == 200
        assert 'src="/hq/static/hq.js"' in page.text
        assert (await http.get("/hq/static/hq.css")).status_code == 200
