"""Weight and camera together through the real gateway: a simulated Modbus TCP weight shelf (`SimStore`) and
the synthetic shelf camera (`ShelfCameraSim`) watching the same bin.

Bin A01 holds items whose mass varies so much (σ 60 g on 350 g) that the weight alone cannot count them:
every level is `ambiguous`. The camera (ROI with `units: 4`) settles each one once it has seen the facing
after the change — `resolved_by: camera` in the ambiguous alert's resolve message; a foreign item on the
plate with the facing unchanged raises `misplaced`, and taking it off clears it; while a shopper stands in
front of the facing the change stays ambiguous, and is settled once the view is clear. A second test restarts
the gateway in front of an emptied facing: the stored (stocked) reference is loaded and the facing is `empty`.
A third feeds a `misplaced` alert to the hub's parser and database.

Waits are generous hang guards, never timing claims.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import httpx
import pytest

from cloud_bridge.contract import (
    AlertData,
    AlertKind,
    AlertState,
    Event,
    EventBatch,
    EventType,
    events_topic,
    rfc3339,
)
from drivers.camera import Image, SyntheticSource
from edge.config import LoadedConfig, load_config
from edge.gateway import Gateway
from firmware_sims.runner import ShelfCameraSim, SimStore
from firmware_sims.shelf import Shelf
from hub.db import HubDB
from hub.parse import BatchMessage, parse_message
from shelfgate.demo import layout_from_config, point_config_at

pytestmark = pytest.mark.timeout(240)

SEED = 7
UNIT_G = 350.0
STORE_YAML = """\
store_id: fu-001
data_dir: data
buses: [{{id: tcp1, kind: tcp, host: 127.0.0.1, port: 1}}]
transmitters: [{{id: tx1, bus: tcp1, unit_id: 1, profile: wt-int32-abcd, poll_interval_s: 0.1}}]
alerts: {{dwell_s: 0.2, hysteresis_items: 1}}
cameras:
  - id: cam1
    source: "synthetic:{seed}"
    analysis_fps: 4
    frame_size: {{width: 1280, height: 720}}
    reference: {{capture: on_start, frames: 3}}
    rois:
{rois}
bins:
  - {{id: A01, sku: "06901234567892", name: {{zh: 苹果, en: Apples}}, unit_weight_g: {unit},
     unit_weight_spread_g: 60, calibration: {{zero: 1000, span_g_per_unit: 0.1}}, safety_stock: 1,
     max_stock: 4, device: tx1, channel: 0}}
"""
WATCHED = "r0c0"


class BlockableCamera:
    """The simulator's frames, with a shopper standing in front of `WATCHED` while `blocked` (the frame-source
    seam; the analyser sees an ordinary frame with a person-sized blob over the facing and the shelf)."""

    def __init__(self, sim: ShelfCameraSim) -> None:
        self.sim = sim
        self.blocked = False
        self.frames_blocked = 0
        f = next(f for f in sim.facings if f.roi_id == WATCHED)
        self._box = (max(0, f.x - 40), max(0, f.y - 60), f.x + f.w + 40, sim.height)

    def render(self, index: int) -> Image:
        image = self.sim.render(index)
        if self.blocked:
            x0, y0, x1, y1 = self._box
            cv2.rectangle(image, (x0, y0), (x1, y1), (70, 40, 150), thickness=-1)
            cv2.circle(image, ((x0 + x1) // 2, max(40, y0 - 10)), 45, (105, 140, 198), thickness=-1)
            self.frames_blocked += 1
        return image

    def source(self) -> SyntheticSource:
        return SyntheticSource(self.render, name="sim-cam1-blockable")


def _store_yaml(sim: ShelfCameraSim) -> str:
    lines = []
    for f in sim.facings:
        bind = "bin: A01, units: 4" if f.roi_id == WATCHED else f'sku: "{f.sku}"'
        lines.append(f"      - {{id: {f.roi_id}, rect: [{f.x}, {f.y}, {f.w}, {f.h}], {bind}}}")
    return STORE_YAML.format(seed=SEED, rois="\n".join(lines), unit=UNIT_G)


async def _until(what: str, check: Callable[[], Awaitable[bool] | bool], timeout_s: float = 60.0) -> None:
    async def poll() -> bool:
        got = check()
        return await got if not isinstance(got, bool) else got

    try:
        async with asyncio.timeout(timeout_s):
            while not await poll():  # noqa: ASYNC110 - polls the gateway's state and SQLite
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


@dataclass
class Rig:
    gateway: Gateway
    store: SimStore
    camera: BlockableCamera

    @property
    def shelf(self) -> Shelf:
        return self.store.shelves["A01"]

    async def alerts(self, kind: AlertKind) -> list[Any]:
        return [a for a in await self.gateway.store.alerts(limit=1000) if a.kind == kind]

    async def stock_events(self) -> list[dict[str, Any]]:
        rows = await self.gateway.store.ledger(0, 100_000)
        return [r.data for r in rows if r.event_type == "stock.changed"]

    def count(self) -> int | None:
        return self.gateway.estimators["A01"].count

    def settled(self, count: int) -> bool:
        est = self.gateway.estimators["A01"]
        return est.count == count and not est.uncertain


def _config(tmp_path: Path, sim: ShelfCameraSim) -> LoadedConfig:
    path = tmp_path / "store.yaml"
    path.write_text(_store_yaml(sim), encoding="utf-8")
    return load_config(path)


@asynccontextmanager
async def _running(tmp_path: Path) -> AsyncIterator[Rig]:
    sim = ShelfCameraSim(SEED, rows=2, cols=3)
    camera = BlockableCamera(sim)
    base = _config(tmp_path, sim)
    layout = layout_from_config(base, seed=5, initial_counts={"A01": 4})
    async with SimStore(layout, run_scenario=False) as store:
        cfg = point_config_at(
            base, dict(store.endpoints), broker=("127.0.0.1", 1), api_port=0, data_dir=tmp_path / "data"
        )
        ready = asyncio.Event()
        gateway = Gateway(cfg, on_ready=lambda _g: ready.set(), camera_sources={"cam1": camera.source()})
        task = asyncio.create_task(gateway.run(uplink=False))
        try:
            async with asyncio.timeout(30):
                await ready.wait()
            yield Rig(gateway, store, camera)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


def _foreign(shelf: Shelf, t: float, mass_g: float) -> None:
    """Put (or, negative, take) a mass that is none of the bin's items on the plate. `Shelf` has no public
    call for goods from elsewhere; `_move` is the physics every pick/put goes through (same settling)."""
    shelf._move(t, mass_g)


async def test_camera_settles_ambiguous_levels_flags_misplaced_goods_and_waits_while_blocked(
    tmp_path: Path,
) -> None:
    async with _running(tmp_path) as rig:
        gw = rig.gateway
        assert gw.fusion is not None
        # 1. The first level (4 items of σ 60 g) is ambiguous by weight; the camera sees the facing full.
        await _until("the first level settled by the camera as 4", lambda: rig.settled(4))
        assert gw.fusion.resolved >= 1

        # 2. A shopper stands in front of the facing; two items are taken (the facing shows two units):
        #    ambiguous by weight, and the blocked camera does not answer ...
        rig.camera.blocked = True
        await _until("frames with the shopper", lambda: rig.camera.frames_blocked >= 4)
        resolved_before = gw.fusion.resolved
        ambiguous_before = len(await rig.alerts(AlertKind.AMBIGUOUS))
        rig.store.pick("A01", 2)
        rig.camera.sim.set_state(WATCHED, "low")
        await _until("the ambiguity pending", lambda: gw.fusion is not None and gw.fusion.pending == ["A01"])
        blocked_at = rig.camera.frames_blocked
        await _until("12 more blocked frames", lambda: rig.camera.frames_blocked >= blocked_at + 12)
        assert gw.fusion.pending == ["A01"], "occluded: the camera does not answer"
        assert gw.fusion.resolved == resolved_before
        assert gw.estimators["A01"].uncertain
        assert any(a.state == "raised" for a in await rig.alerts(AlertKind.AMBIGUOUS))
        # ... until the shopper leaves: then it sees two units and settles the count as 2.
        rig.camera.blocked = False
        await _until("the pick settled by the camera as 2", lambda: rig.settled(2))
        assert rig.shelf.count == 2

        async def ambiguous_resolved_by_camera() -> bool:
            rows = await rig.alerts(AlertKind.AMBIGUOUS)
            return len(rows) > ambiguous_before and all(r.state == "resolved" for r in rows)

        await _until("the ambiguous alert resolved", ambiguous_resolved_by_camera)
        latest = (await rig.alerts(AlertKind.AMBIGUOUS))[0]
        assert "count confirmed at 2 (resolved_by: camera)" in latest.message, latest.message
        stock = await rig.stock_events()
        assert stock[-1]["count"] == 2
        assert stock[-1]["cause"] == "reconcile"

        # 3. A foreign item (150 g: 0.43 of an item) put on the plate; the facing is unchanged → misplaced.
        await asyncio.sleep(1.0)  # frames of the settled facing, for "before"
        _foreign(rig.shelf, rig.store.now(), 150.0)

        async def misplaced_raised() -> bool:
            return any(a.state == "raised" for a in await rig.alerts(AlertKind.MISPLACED))

        await _until("a misplaced alert", misplaced_raised)
        (mis,) = await rig.alerts(AlertKind.MISPLACED)
        assert "put on the plate while the camera saw the facing unchanged" in mis.message, mis.message
        await _until("the count kept at 2", lambda: rig.settled(2))

        # ... and taken off again: the count stays, the alert clears.
        await asyncio.sleep(1.0)
        _foreign(rig.shelf, rig.store.now(), -150.0)

        async def misplaced_resolved() -> bool:
            return all(a.state == "resolved" for a in await rig.alerts(AlertKind.MISPLACED))

        await _until("the misplaced alert resolved", misplaced_resolved)
        assert rig.settled(2)

        # 4. The last two items taken: zero items weigh nothing, whatever their spread — the weight counts it
        #    itself (the camera has nothing to settle).
        resolved_before = gw.fusion.resolved
        rig.store.pick("A01", 2)
        rig.camera.sim.set_state(WATCHED, "empty")
        await _until("the weight counting 0", lambda: rig.settled(0))
        assert gw.fusion.resolved == resolved_before
        assert rig.shelf.count == 0


async def _running_camera_only(tmp_path: Path, sim: ShelfCameraSim) -> tuple[Gateway, asyncio.Task[None]]:
    path = tmp_path / "store.yaml"
    rois = "\n".join(
        f"      - {{id: {f.roi_id}, rect: [{f.x}, {f.y}, {f.w}, {f.h}], "
        + ("bin: P01}" if f.roi_id == WATCHED else f'sku: "{f.sku}"}}')
        for f in sim.facings
    )
    path.write_text(
        f"""\
store_id: fu-002
data_dir: data
api: {{host: 127.0.0.1, port: 0}}
cameras:
  - id: cam1
    source: "synthetic:{SEED}"
    analysis_fps: 4
    reference: {{capture: on_start, frames: 3}}
    rois:
{rois}
bins:
  - {{id: P01, sku: "2100001", name: {{zh: 苹果, en: Apples}}, safety_stock: 1, max_stock: 4}}
""",
        encoding="utf-8",
    )
    ready = asyncio.Event()
    gateway = Gateway(
        load_config(path), on_ready=lambda _g: ready.set(), camera_sources={"cam1": sim.source()}
    )
    task = asyncio.create_task(gateway.run(uplink=False))
    async with asyncio.timeout(30):
        await ready.wait()
    return gateway, task


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def _facings(gateway: Gateway) -> dict[str, str]:
    assert gateway.cameras is not None
    return {s.roi_id: s.state for s in gateway.cameras.board.statuses()}


def _camera_detail(gateway: Gateway) -> dict[str, Any]:
    assert gateway.cameras is not None
    (view,) = gateway.cameras.health(0.0)
    return dict(view.detail)


async def test_a_restart_in_front_of_an_emptied_facing_keeps_the_stocked_reference(tmp_path: Path) -> None:
    sim = ShelfCameraSim(SEED, rows=2, cols=3)
    refs = tmp_path / "data" / "camera-references"
    gateway, task = await _running_camera_only(tmp_path, sim)
    try:
        await _until("every facing ok", lambda: set(_facings(gateway).values()) == {"ok"})
        assert _camera_detail(gateway)["reference_origin"] == "captured"
        assert sorted(p.name for p in refs.iterdir()) == ["cam1.json", "cam1.npy"]
    finally:
        await _stop(task)
    stocked_digest = hashlib.sha256((refs / "cam1.npy").read_bytes()).hexdigest()

    sim.set_state(WATCHED, "empty")  # the shelf emptied while the gateway was down
    gateway, task = await _running_camera_only(tmp_path, sim)
    try:
        await _until("the emptied facing judged empty", lambda: _facings(gateway).get(WATCHED) == "empty")
        assert _camera_detail(gateway)["reference_origin"] == "stored"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.api_port}", timeout=10) as client:
            view = (await client.get("/api/cameras/cam1/rois")).json()
        assert view["reference_origin"] == "stored"
        assert view["reference_captured_at"].endswith("Z")
        assert {k: v for k, v in _facings(gateway).items() if k != WATCHED} == dict.fromkeys(
            [f.roi_id for f in sim.facings if f.roi_id != WATCHED], "ok"
        )
        assert hashlib.sha256((refs / "cam1.npy").read_bytes()).hexdigest() == stocked_digest, "not re-taken"
        # Re-capture on demand overwrites the stored reference (this shelf, emptied facing and all).
        assert gateway.cameras is not None
        await gateway.cameras.capture_reference("cam1")
        assert hashlib.sha256((refs / "cam1.npy").read_bytes()).hexdigest() != stocked_digest
        assert _camera_detail(gateway)["reference_origin"] == "captured"
        await _until(
            "the facing ok against the new reference", lambda: _facings(gateway).get(WATCHED) == "ok"
        )
    finally:
        await _stop(task)


async def test_the_hub_stores_a_misplaced_alert_and_old_kinds_still_parse(tmp_path: Path) -> None:
    """`misplaced` is a new `AlertKind` member: the hub's parser and database take it (real SQLite file)."""
    events = [
        Event(
            id=f"gw1:{seq}",
            seq=seq,
            type=EventType.ALERT_RAISED,
            ts=rfc3339(1_790_000_000.0 + seq),
            data=AlertData(
                alert_id=f"A01:{kind}:{seq}",
                bin_id="A01",
                sku="06901234567892",
                kind=kind,
                state=AlertState.RAISED,
                count=2,
                message="m",
                raised_at=rfc3339(1_790_000_000.0 + seq),
            ).model_dump(mode="json"),
        )
        for seq, kind in ((1, AlertKind.AMBIGUOUS), (2, AlertKind.MISPLACED))
    ]
    payload = EventBatch(store_id="s1", gateway_id="gw1", first_seq=1, last_seq=2, events=events).to_json()
    parsed = parse_message(events_topic("s1"), payload)
    assert isinstance(parsed, BatchMessage)
    async with HubDB(f"sqlite:///{tmp_path / 'hub.sqlite3'}") as db:
        await db.apply_batch(parsed, 1.0)
        kinds = sorted(str(a.kind) for a in await db.alerts("s1"))
    assert kinds == ["ambiguous", "misplaced"]
