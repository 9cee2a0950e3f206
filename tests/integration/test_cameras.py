"""Cameras through the real gateway: a synthetic shelf camera (`firmware_sims`) injected at the camera seam.

A camera-only facing runs empty → `facing.changed` in the outbox and one out-of-stock alert on its bin; a
restock resolves it once; shoppers walking past raise nothing; the snapshot is a JPEG for 127.0.0.1 only; no
outbox row, heartbeat or API answer carries pixels; the hub stores a `facing.changed` batch.

Waits are generous hang guards, never timing claims.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud_bridge.contract import (
    AlertKind,
    AlertState,
    Event,
    EventType,
    FacingChanged,
    events_topic,
)
from edge.api import create_app
from edge.config import Alerts, Bin, LocalizedName, load_config
from edge.gateway import Gateway
from edge.inventory import AlertRules, Ambiguous
from edge.vision import FacingStateChanged
from firmware_sims.runner import ShelfCameraSim

pytestmark = pytest.mark.timeout(240)

SEED = 7
STORE_YAML = """\
store_id: cam-001
data_dir: data
api: {{host: 127.0.0.1, port: 0}}
alerts: {{dwell_s: 0.5, hysteresis_items: 1}}
cameras:
  - id: cam1
    source: "synthetic:{seed}"
    analysis_fps: 4
    frame_size: {{width: 1280, height: 720}}
    reference: {{capture: on_start, frames: 3}}
    rois:
{rois}
bins:
  - {{id: P01, sku: "2100001", name: {{zh: 苹果, en: Apples}}, safety_stock: 1, max_stock: 4}}
  - {{id: P02, sku: "2100002", name: {{zh: 香蕉, en: Bananas}}, safety_stock: 1, max_stock: 4}}
"""
BINDINGS = {"r0c0": "P01", "r0c1": "P02"}
"""ROI → camera-only bin; the other facings are bound to a SKU only."""


def _store_yaml(sim: ShelfCameraSim) -> str:
    lines = []
    for f in sim.facings:
        bind = f"bin: {BINDINGS[f.roi_id]}" if f.roi_id in BINDINGS else f'sku: "{f.sku}"'
        lines.append(f"      - {{id: {f.roi_id}, rect: [{f.x}, {f.y}, {f.w}, {f.h}], {bind}}}")
    return STORE_YAML.format(seed=SEED, rois="\n".join(lines))


async def _until(what: str, check: Callable[[], Awaitable[bool]], timeout_s: float = 60.0) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            while not await check():  # noqa: ASYNC110 - polls the gateway over HTTP and SQLite
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


@asynccontextmanager
async def _running(tmp_path: Path) -> AsyncIterator[tuple[Gateway, ShelfCameraSim, httpx.AsyncClient]]:
    sim = ShelfCameraSim(SEED, rows=2, cols=3)
    path = tmp_path / "store.yaml"
    path.write_text(_store_yaml(sim), encoding="utf-8")
    cfg = load_config(path)
    ready = asyncio.Event()
    gateway = Gateway(cfg, on_ready=lambda _g: ready.set(), camera_sources={"cam1": sim.source("sim-cam1")})
    task = asyncio.create_task(gateway.run(uplink=False))
    try:
        async with asyncio.timeout(30):
            await ready.wait()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.api_port}", timeout=10) as client:
            yield gateway, sim, client
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def _ledger(gateway: Gateway) -> list[tuple[str, dict[str, Any]]]:
    return [(row.event_type, row.data) for row in await gateway.store.ledger(0, 100_000)]


async def _camera(client: httpx.AsyncClient) -> dict[str, Any]:
    devices = (await client.get("/api/devices", params={"family": "camera"})).json()
    assert len(devices) == 1
    camera: dict[str, Any] = devices[0]
    return camera


def _no_pixels(value: Any, where: str = "") -> None:
    """Fail on anything that could hold an image: bytes-likes, long numeric arrays, long strings."""
    assert not isinstance(value, bytes | bytearray | memoryview), f"{where}: binary data"
    if isinstance(value, dict):
        for k, v in value.items():
            _no_pixels(v, f"{where}.{k}")
    elif isinstance(value, list | tuple):
        numbers = sum(1 for v in value if isinstance(v, int | float))
        assert numbers <= 16, f"{where}: a list of {numbers} numbers"
        for i, v in enumerate(value):
            _no_pixels(v, f"{where}[{i}]")
    elif isinstance(value, str):
        assert len(value) < 512, f"{where}: a {len(value)}-character string"
        assert "/9j/" not in value, f"{where}: looks like base64 JPEG"
    else:
        assert value is None or isinstance(value, bool | int | float), f"{where}: {type(value).__name__}"


async def test_camera_only_facing_empties_alerts_once_and_restocks_once(tmp_path: Path) -> None:
    async with _running(tmp_path) as (gateway, sim, client):
        # The reference is captured from the first frames; every facing is then judged `ok`.
        async def all_ok() -> bool:
            cam = await _camera(client)
            return cam["has_reference"] and {f["state"] for f in cam["facings"]} == {"ok"}

        await _until("every facing judged ok", all_ok)
        camera = await _camera(client)
        assert camera["online"] is True
        assert camera["family"] == "camera"
        assert camera["frames"] > 0
        assert camera["reconnects"] == 0
        assert camera["errors"] == 0
        assert camera["source"] == "synthetic:7"
        assert len(camera["facings"]) == len(sim.facings)

        # Shoppers walk past a stocked shelf: the gate holds those frames back, nothing is raised.
        analysed = camera["frames_analysed"]
        sim.walk_past(10)

        async def walked() -> bool:
            return (
                sim.frames_with_shopper >= 10 and (await _camera(client))["frames_analysed"] >= analysed + 16
            )

        await _until("shoppers to pass and the camera to see the clear shelf again", walked)
        assert sim.frames_shopper_on_facing >= 3, "the shoppers crossed the facings"
        assert await gateway.store.alerts(active_only=False) == []
        facing_states = [d["state"] for t, d in await _ledger(gateway) if t == EventType.FACING_CHANGED]
        assert "empty" not in facing_states
        assert "low" not in facing_states

        # The apples run out: facing.changed (empty) and one out-of-stock alert on P01.
        sim.set_state("r0c0", "empty")

        async def out_raised() -> bool:
            return any(a.bin_id == "P01" and a.kind == "out" for a in await gateway.store.alerts())

        await _until("an out-of-stock alert on P01", out_raised)
        empty = [
            d for t, d in await _ledger(gateway) if t == EventType.FACING_CHANGED and d["state"] == "empty"
        ]
        assert len(empty) == 1
        assert empty[0]["camera_id"] == "cam1"
        assert empty[0]["roi_id"] == "r0c0"
        assert empty[0]["bin_id"] == "P01"
        assert empty[0]["sku"] == "2100001"
        assert empty[0]["score"] < 0.16
        FacingChanged.model_validate(empty[0])
        stock = {b["bin_id"]: b for b in (await client.get("/api/stock")).json()}
        assert (stock["P01"]["level"], stock["P01"]["facing"], stock["P01"]["count"]) == (
            "out",
            "empty",
            None,
        )
        assert stock["P02"]["level"] == "ok"

        # A shopper passes the empty facing: no second alert, no flapping.
        sim.walk_past(6)
        analysed = (await _camera(client))["frames_analysed"]

        async def passed_again() -> bool:
            return bool((await _camera(client))["frames_analysed"] >= analysed + 14)

        await _until("the second shopper to pass", passed_again)

        # Restocked: resolved once.
        sim.set_state("r0c0", "ok")

        async def out_resolved() -> bool:
            return not any(a.bin_id == "P01" for a in await gateway.store.alerts(active_only=True))

        await _until("P01's alerts resolved", out_resolved)
        ledger = await _ledger(gateway)
        out_events = [
            (t, d["state"]) for t, d in ledger if t.startswith("alert.") and d["kind"] == AlertKind.OUT
        ]
        assert out_events == [
            (EventType.ALERT_RAISED, AlertState.RAISED),
            (EventType.ALERT_RESOLVED, AlertState.RESOLVED),
        ]
        assert {d["bin_id"] for t, d in ledger if t.startswith("alert.")} == {"P01"}
        r0c0 = [d["state"] for t, d in ledger if t == EventType.FACING_CHANGED and d["roi_id"] == "r0c0"]
        assert r0c0[-2:] == ["empty", "ok"]

        # Privacy: the outbox, the heartbeat and every API answer carry ids and numbers, never pixels.
        for event_type, data in ledger:
            _no_pixels(data, event_type)
        heartbeat = json.loads((await gateway.heartbeat()).to_json())
        _no_pixels(heartbeat, "heartbeat")
        assert any(d["family"] == "camera" for d in heartbeat["devices"])
        for url in ("/api/devices", "/api/stock", "/api/alerts?active=false", "/api/cameras", "/api/health"):
            answer = await client.get(url)
            assert answer.status_code == 200, url
            _no_pixels(answer.json(), url)
        _only_database_and_reference(tmp_path / "data")


async def test_snapshot_is_a_jpeg_for_loopback_clients_only(tmp_path: Path) -> None:
    async with _running(tmp_path) as (gateway, _sim, client):

        async def has_frame() -> bool:
            return bool((await _camera(client))["frames"] > 0)

        await _until("a first frame", has_frame)
        snap = await client.get("/api/cameras/cam1/snapshot.jpg")
        assert snap.status_code == 200
        assert snap.headers["content-type"] == "image/jpeg"
        assert snap.headers["cache-control"] == "no-store"
        assert snap.content[:3] == b"\xff\xd8\xff"
        assert (await client.get("/api/cameras/nope/snapshot.jpg")).status_code == 404

        # The same app seen from a non-loopback client (in-process ASGI: no network involved) refuses it.
        transport = httpx.ASGITransport(app=create_app(gateway), client=("192.0.2.10", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as remote:
            refused = await remote.get("/api/cameras/cam1/snapshot.jpg")
            assert refused.status_code == 403
            assert "loopback" in refused.json()["detail"]
            assert refused.content[:3] != b"\xff\xd8\xff"
        _only_database_and_reference(tmp_path / "data")


def _only_database_and_reference(data_dir: Path) -> None:
    """The data folder holds the database and the camera's reference (docs/cameras.md, "Privacy") — no
    snapshot, frame or video file."""
    written = sorted(p.name for p in data_dir.iterdir())
    assert all(name.startswith("gateway.db") or name == "camera-references" for name in written), written
    refs = data_dir / "camera-references"
    if refs.exists():
        assert sorted(p.name for p in refs.iterdir()) == ["cam1.json", "cam1.npy"]


async def test_hub_stores_facing_changed_as_applied(tmp_path: Path) -> None:
    """The hub has no effect for `facing.changed` yet: the event is stored and marked applied, in order."""
    from hub.db import EFFECTS, HubDB
    from hub.parse import BatchMessage, parse_message
    from tests.hub.fakes import batch

    assert EventType.FACING_CHANGED.value not in EFFECTS
    data = FacingChanged(
        camera_id="cam1", roi_id="r0c0", sku="2100001", bin_id="P01", state="empty", score=0.02
    ).model_dump(mode="json")
    events = [
        Event(
            id="cam-001-gw:1", seq=1, type=EventType.FACING_CHANGED, ts="2026-11-23T10:00:00.000Z", data=data
        ),
        Event(
            id="cam-001-gw:2",
            seq=2,
            type=EventType.FACING_CHANGED,
            ts="2026-11-23T10:00:05.000Z",
            data={**data, "state": "ok", "score": 0.97},
        ),
    ]
    assert isinstance(events[0].typed_data(), FacingChanged)
    message = parse_message(events_topic("cam-001"), batch("cam-001", "cam-001-gw", events))
    assert isinstance(message, BatchMessage)
    async with HubDB(f"sqlite:///{tmp_path / 'hub.sqlite3'}") as db:
        result = await db.apply_batch(message, 1.0)
        assert (result.applied, result.duplicates, result.pending) == (2, 0, 0)
        again = await db.apply_batch(message, 2.0)
        assert (again.applied, again.duplicates) == (0, 2)


def _bin(bin_id: str) -> Bin:
    return Bin(
        id=bin_id, sku="2100001", name=LocalizedName(zh="苹果", en="Apples"), safety_stock=1, max_stock=4
    )


def test_facing_rules_dwell_and_unknown() -> None:
    """`AlertRules.facing`: empty raises out and low after the dwell; unknown cancels a pending raise."""
    rules = AlertRules([_bin("P01")], Alerts(dwell_s=2.0))
    assert rules.facing("P01", "empty", 100.0) == []
    assert rules.facing("P01", "unknown", 101.0) == []  # camera lost the view: the pending raise is cancelled
    assert rules.tick(110.0) == []
    assert rules.facing("P01", "empty", 120.0) == []
    raised = rules.tick(122.0)
    assert sorted((t.kind, t.state) for t in raised) == [
        (AlertKind.LOW, AlertState.RAISED),
        (AlertKind.OUT, AlertState.RAISED),
    ]
    assert all(t.count is None for t in raised)
    assert rules.facing("P01", "low", 130.0) == []
    assert [(t.kind, t.state) for t in rules.tick(132.0)] == [(AlertKind.OUT, AlertState.RESOLVED)]
    assert rules.facing("P01", "unknown", 140.0) == []
    assert rules.tick(200.0) == [], "unknown neither raises nor resolves"
    assert [a.kind for a in rules.active()] == [AlertKind.LOW]
    rules.facing("P01", "ok", 210.0)
    resolved = rules.tick(212.0)
    assert [(t.kind, t.state) for t in resolved] == [(AlertKind.LOW, AlertState.RESOLVED)]
    assert "camera sees the facing ok" in resolved[0].message
    assert rules.facing("nope", "empty", 1.0) == []


def test_an_ambiguous_weight_change_carries_the_cameras_hint(tmp_path: Path) -> None:
    """A weighed bin with a camera: the ambiguous detail gets what the camera sees (the count is untouched)."""
    path = tmp_path / "store.yaml"
    path.write_text(
        """\
store_id: s1
buses: [{id: tcp1, kind: tcp, host: 127.0.0.1, port: 5020}]
transmitters: [{id: tx1, bus: tcp1, unit_id: 1, profile: wt-int32-abcd}]
cameras:
  - {id: cam1, source: "synthetic:7", rois: [{id: f1, rect: [0, 0, 100, 100], bin: A01}]}
bins:
  - {id: A01, sku: "06901234567892", name: {zh: 可乐, en: Cola}, unit_weight_g: 350, safety_stock: 4,
     max_stock: 12, device: tx1, channel: 0}
""",
        encoding="utf-8",
    )
    sim = ShelfCameraSim(SEED, rows=1, cols=1)
    gateway = Gateway(load_config(path), camera_sources={"cam1": sim.source()})
    assert gateway.cameras is not None
    ambiguous = Ambiguous("A01", 10.0, -520.0, "step of -520 g is not a whole number of items")
    assert gateway._with_facing_hint("A01", ambiguous) == ambiguous.reason, "no hint while unknown"
    gateway.cameras.board.apply(
        FacingStateChanged("cam1", "f1", "06901234567892", "A01", "low", 0.4, 11.0, "judged")
    )
    assert gateway._with_facing_hint("A01", ambiguous) == f"{ambiguous.reason}; camera sees the facing low"
    assert gateway.bin_view("A01")["facing"] == "low"
