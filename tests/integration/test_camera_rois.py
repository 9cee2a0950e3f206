"""The installer's ROI editor API through the real gateway and a synthetic shelf camera (`firmware_sims`).

Validation names the ROI and the field (422) and writes nothing; a preview shows the diff and writes nothing;
apply writes the overlay and an audit line, and the running camera judges the new facing (its state follows
the simulator); a re-capture by HTTP works; a gateway started again from the same config and overlay runs the
edited ROIs; a non-loopback client is refused.

Waits are generous hang guards, never timing claims.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cloud_bridge.contract import EventType
from edge.api import create_app
from edge.calibration import (
    OVERLAY_FILE,
    Binding,
    read_audit,
    update_camera_overlay,
    update_overlay,
    validate_camera_rois,
)
from edge.config import CameraRoi, ConfigError, load_config
from edge.gateway import Gateway
from firmware_sims.runner import ShelfCameraSim

pytestmark = pytest.mark.timeout(300)

SEED = 7
STORE_YAML = """\
store_id: roi-001
data_dir: data
api: {{host: 127.0.0.1, port: 0}}
alerts: {{dwell_s: 0.5, hysteresis_items: 1}}
cameras:
  - id: cam1
    source: "synthetic:{seed}"
    analysis_fps: 4
    reference: {{capture: on_start, frames: 3}}
    rois:
{rois}
bins:
  - {{id: P01, sku: "2100001", name: {{zh: 苹果, en: Apples}}, safety_stock: 1, max_stock: 4}}
  - {{id: P02, sku: "2100002", name: {{zh: 香蕉, en: Bananas}}, safety_stock: 1, max_stock: 4}}
"""
CONFIGURED = {"r0c0": "bin: P01", "r0c1": "bin: P02", "r1c0": 'sku: "2100010"'}
"""The config's ROIs; facing r1c1 of the simulated shelf is left for the installer to draw."""


def _sim() -> ShelfCameraSim:
    return ShelfCameraSim(SEED, rows=2, cols=3)


def _rect(sim: ShelfCameraSim, roi_id: str) -> list[int]:
    f = next(f for f in sim.facings if f.roi_id == roi_id)
    return [f.x, f.y, f.w, f.h]


def _write_config(tmp_path: Path, sim: ShelfCameraSim) -> Path:
    lines = [
        f"      - {{id: {roi_id}, rect: {_rect(sim, roi_id)}, {bind}}}" for roi_id, bind in CONFIGURED.items()
    ]
    path = tmp_path / "store.yaml"
    path.write_text(STORE_YAML.format(seed=SEED, rois="\n".join(lines)), encoding="utf-8")
    return path


async def _until(what: str, check: Callable[[], Awaitable[bool]], timeout_s: float = 90.0) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            while not await check():  # noqa: ASYNC110 - polls the gateway over HTTP
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


@asynccontextmanager
async def _running(path: Path, sim: ShelfCameraSim) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient]]:
    cfg = load_config(path)
    ready = asyncio.Event()
    gateway = Gateway(cfg, on_ready=lambda _g: ready.set(), camera_sources={"cam1": sim.source("sim-cam1")})
    task = asyncio.create_task(gateway.run(uplink=False))
    try:
        async with asyncio.timeout(30):
            await ready.wait()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.api_port}", timeout=60) as client:
            yield gateway, client
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def _rois(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/api/cameras/cam1/rois")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _states(view: dict[str, Any]) -> dict[str, str]:
    return {r["id"]: r["state"] for r in view["rois"]}


def _edit(rois: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the page sends: the listed ROIs' own fields only."""
    return [{k: v for k, v in r.items() if k in {"id", "rect", "polygon", "sku", "bin"}} for r in rois]


async def _rejected(client: httpx.AsyncClient, rois: list[dict[str, Any]]) -> list[dict[str, Any]]:
    r = await client.put("/api/cameras/cam1/rois", json={"rois": rois, "installer": "Li Wei"})
    assert r.status_code == 422, r.text
    detail: list[dict[str, Any]] = r.json()["detail"]
    return detail


async def test_validate_preview_apply_recapture_and_restart(tmp_path: Path) -> None:
    sim = _sim()
    path = _write_config(tmp_path, sim)
    data_dir = tmp_path / "data"
    overlay = data_dir / OVERLAY_FILE
    new_roi = {"id": "r1c1", "rect": _rect(sim, "r1c1"), "sku": "2100011"}

    async with _running(path, sim) as (gateway, client):

        async def all_ok() -> bool:
            view = await _rois(client)
            return view["has_reference"] and set(_states(view).values()) == {"ok"}

        await _until("every configured facing judged ok", all_ok)
        view = await _rois(client)
        assert view["frame_size"] == {"width": sim.width, "height": sim.height}
        assert [r["id"] for r in view["rois"]] == list(CONFIGURED)
        current = _edit(view["rois"])

        # --- validation: each error names the ROI and the field; nothing is written --------------------
        detail = await _rejected(client, [*current, {**new_roi, "id": "r0c0"}])
        assert [(d["index"], d["roi"], d["field"]) for d in detail] == [(3, "r0c0", "id")]
        assert "duplicate ROI id" in detail[0]["message"]

        outside = {**new_roi, "rect": [sim.width - 10, 10, 50, 50]}
        detail = await _rejected(client, [*current, outside])
        assert [(d["index"], d["roi"], d["field"]) for d in detail] == [(3, "r1c1", "rect")]
        assert f"outside the {sim.width}×{sim.height} frame" in detail[0]["message"]

        detail = await _rejected(client, [*current, {**new_roi, "bin": "NOPE"}])
        assert [(d["roi"], d["field"]) for d in detail] == [("r1c1", "bin")]
        assert "unknown bin 'NOPE'" in detail[0]["message"]

        detail = await _rejected(client, [*current, {**new_roi, "bin": "P01", "sku": "999"}])
        assert [(d["roi"], d["field"]) for d in detail] == [("r1c1", "sku")]
        assert "differs from bin 'P01'" in detail[0]["message"]

        detail = await _rejected(client, [*current, {"id": "r1c1", "sku": "2100011"}])
        assert [(d["roi"], d["field"]) for d in detail] == [("r1c1", "rect")]
        assert "exactly one of `rect` or `polygon`" in detail[0]["message"]

        detail = await _rejected(client, [*current, {**new_roi, "rect": [10, 10, 0, 40]}])
        assert [(d["roi"], d["field"]) for d in detail] == [("r1c1", "rect")]

        without_p01 = [r for r in current if r["id"] != "r0c0"]  # P01 is camera-only: it must stay watched
        detail = await _rejected(client, without_p01)
        assert [d["field"] for d in detail] == ["bin"]
        assert "bin 'P01' has no `device` and no camera ROI names it" in detail[0]["message"]
        assert not overlay.exists()
        assert read_audit(data_dir) == []

        # --- preview: the diff, nothing written ----------------------------------------------------------
        edited = [*current, new_roi]
        r = await client.post("/api/cameras/cam1/rois/preview", json={"rois": edited})
        assert r.status_code == 200, r.text
        preview = r.json()
        assert preview["changed"] is True
        assert {d["id"]: d["change"] for d in preview["diff"]} == {
            "r0c0": "unchanged",
            "r0c1": "unchanged",
            "r1c0": "unchanged",
            "r1c1": "added",
        }
        assert not overlay.exists()

        # --- apply: overlay, audit, live monitor with the new facing -------------------------------------
        r = await client.put("/api/cameras/cam1/rois", json={"rois": edited, "installer": "Li Wei"})
        assert r.status_code == 200, r.text
        applied = r.json()
        assert applied["recaptured"] == ["r1c1"]
        assert applied["warning"] is None
        doc = yaml.safe_load(overlay.read_text(encoding="utf-8"))
        assert [roi["id"] for roi in doc["cameras"]["cam1"]["rois"]] == ["r0c0", "r0c1", "r1c0", "r1c1"]
        assert doc["cameras"]["cam1"]["rois"][3] == new_roi
        audit = [e for e in read_audit(data_dir) if e.get("kind") == "camera_rois"]
        assert len(audit) == 1
        assert audit[0]["camera_id"] == "cam1"
        assert audit[0]["installer"] == "Li Wei"
        assert audit[0]["changes"] == {"r1c1": "added"}
        assert [x["id"] for x in audit[0]["before"]] == ["r0c0", "r0c1", "r1c0"]

        async def new_facing_ok() -> bool:
            return _states(await _rois(client)).get("r1c1") == "ok"

        await _until("the drawn facing judged ok", new_facing_ok)

        sim.set_state("r1c1", "empty")

        async def new_facing_empty() -> bool:
            return _states(await _rois(client)).get("r1c1") == "empty"

        await _until("the drawn facing judged empty", new_facing_empty)
        facing_events = [
            row.data
            for row in await gateway.store.ledger(0, 100_000)
            if row.event_type == EventType.FACING_CHANGED and row.data["roi_id"] == "r1c1"
        ]
        assert any(e["state"] == "empty" and e["sku"] == "2100011" for e in facing_events)
        sim.set_state("r1c1", "ok")

        # --- re-capture the reference over HTTP: all, or some facings ------------------------------------
        r = await client.post("/api/cameras/cam1/reference", json={"roi_ids": ["nope"]})
        assert r.status_code == 422
        assert "nope" in r.json()["detail"]
        r = await client.post(
            "/api/cameras/cam1/reference", json={"roi_ids": ["r1c1"], "installer": "Li Wei"}
        )
        assert r.status_code == 200, r.text
        r = await client.post("/api/cameras/cam1/reference", json={})
        assert r.status_code == 200, r.text
        assert r.json()["has_reference"] is True
        kinds = [e["kind"] for e in read_audit(data_dir)]
        assert kinds.count("camera_reference") == 2
        await _until("every facing judged ok after the re-capture", all_ok)

        # --- no auth yet: other clients are refused ------------------------------------------------------
        transport = httpx.ASGITransport(app=create_app(gateway), client=("192.0.2.10", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as remote:
            assert (await remote.get("/api/cameras/cam1/rois")).status_code == 403
            put = await remote.put("/api/cameras/cam1/rois", json={"rois": edited})
            assert put.status_code == 403
            assert (await remote.post("/api/cameras/cam1/reference", json={})).status_code == 403

    # --- restart from the same config + overlay: the drawn ROI runs again ----------------------------------
    sim2 = _sim()
    async with _running(path, sim2) as (_gateway2, client2):
        view = await _rois(client2)
        assert [r["id"] for r in view["rois"]] == ["r0c0", "r0c1", "r1c0", "r1c1"]

        async def r1c1_ok_again() -> bool:
            return _states(await _rois(client2)).get("r1c1") == "ok"

        await _until("the drawn facing judged after the restart", r1c1_ok_again)


def test_overlay_roi_errors_name_the_overlay(tmp_path: Path) -> None:
    """A hand-broken overlay fails the load with the camera, ROI and field, like the store config."""
    sim = _sim()
    path = _write_config(tmp_path, sim)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    rois = [{"id": "r0c1", "rect": _rect(sim, "r0c1"), "bin": "P02"}]  # P01 left unwatched
    (data_dir / OVERLAY_FILE).write_text(
        yaml.safe_dump({"cameras": {"cam1": {"rois": rois}}}), encoding="utf-8"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "bin 'P01' has no `device`" in str(caught.value)
    assert OVERLAY_FILE in str(caught.value)

    (data_dir / OVERLAY_FILE).write_text(
        yaml.safe_dump({"cameras": {"nocam": {"rois": rois}}}), encoding="utf-8"
    )
    with pytest.raises(ConfigError, match="no camera 'nocam'"):
        load_config(path)

    ok = [*rois, {"id": "r0c0", "rect": _rect(sim, "r0c0"), "bin": "P01"}]
    (data_dir / OVERLAY_FILE).write_text(
        yaml.safe_dump({"cameras": {"cam1": {"rois": ok}}}), encoding="utf-8"
    )
    loaded = load_config(path)
    assert [r.id for r in loaded.store.cameras[0].rois] == ["r0c1", "r0c0"]
    assert [b.id for b in loaded.store.bins] == ["P01", "P02"]


def test_camera_overlay_keeps_bins_and_bins_keep_cameras(tmp_path: Path) -> None:
    """Both parts of the overlay are written and merged together; a ROI is checked against the bound SKU."""
    sim = _sim()
    path = _write_config(tmp_path, sim)
    data_dir = tmp_path / "data"
    store = load_config(path).store
    update_overlay(data_dir, "P01", binding=Binding(sku="2100099"))
    drawn = [
        CameraRoi(id="r0c0", rect=tuple(_rect(sim, "r0c0")), bin="P01"),
        CameraRoi(id="r0c1", rect=tuple(_rect(sim, "r0c1")), bin="P02"),
        CameraRoi(id="new", rect=(10, 10, 40, 40), sku="2100077"),
    ]
    update_camera_overlay(data_dir, "cam1", drawn)
    update_overlay(data_dir, "P02", binding=Binding(sku="2100098"))  # a later bin edit keeps the cameras part
    loaded = load_config(path).store
    assert {b.id: b.sku for b in loaded.bins} == {"P01": "2100099", "P02": "2100098"}
    assert [r.id for r in loaded.cameras[0].rois] == ["r0c0", "r0c1", "new"]
    assert loaded.cameras[0].rois[2].sku == "2100077"
    assert store.cameras[0].rois[0].id == "r0c0"

    # Checked against the store as bound: a ROI naming P01 with its old SKU is a conflict.
    _, issues = validate_camera_rois(
        loaded, "cam1", [{"id": "r0c0", "rect": _rect(sim, "r0c0"), "bin": "P01", "sku": "2100001"}]
    )
    assert [(i.roi_id, i.field) for i in issues] == [("r0c0", "sku"), (None, "bin")]
    assert "bin 'P02' has no `device`" in issues[1].message
