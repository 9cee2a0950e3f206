"""Commissioning end to end: installer API on a real gateway → outbox → real Mosquitto → a real hub worker.

The gateway is the installer test stack's store (tests/shelfgate/installer_stack.py: one bin on a simulated
Modbus TCP transmitter whose true calibration differs from the config), here with its uplink on. An installer
calibrates the bin through the wizard's API with a known mass, then binds it to another product; the hub's
`GET /api/stores/{id}/commissioning` must then hold that record and `/api/fleet` must say commissioned.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge.config import load_config
from edge.gateway import Gateway
from firmware_sims.runner import SimStore
from hub.config import HubConfig
from hub.service import run_hub
from shelfgate.broker import Mosquitto
from shelfgate.demo import layout_from_config, point_config_at
from tests.shelfgate.installer_stack import STORE_YAML, TRUE_CAL, eventually

pytestmark = pytest.mark.timeout(240)

STORE_ID = "inst-001"
NEW_SKU = "07032069804988"  # tests/vectors/gs1_barcodes.json (biip test-suite)


@dataclasses.dataclass
class Stack:
    sim: SimStore
    gateway: Gateway
    gw_url: str
    hub_url: str
    http: httpx.AsyncClient

    async def gw(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        r = await self.http.request(method, self.gw_url + path, json=body)
        r.raise_for_status()
        return r.json()

    async def hub(self, path: str) -> httpx.Response:
        return await self.http.get(self.hub_url + path)


@asynccontextmanager
async def running_stack(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[Stack]:
    cfg_file = tmp_path / "store.yaml"
    cfg_file.write_text(STORE_YAML, encoding="utf-8")
    base = load_config(cfg_file)
    true_store = base.store.model_copy(
        update={"bins": [b.model_copy(update={"calibration": TRUE_CAL}) for b in base.store.bins]}
    )
    layout = layout_from_config(
        dataclasses.replace(base, store=true_store), seed=11, initial_counts={"A01": 6}
    )
    async with SimStore(layout, run_scenario=False) as sim:
        cfg = point_config_at(
            base,
            dict(sim.endpoints),
            broker=(mosquitto.host, mosquitto.port),
            api_port=0,
            data_dir=tmp_path / "gw",
            heartbeat_s=1.0,
        )
        hub_cfg = HubConfig.model_validate(
            {
                "hub_id": "cm-hub",
                "database": str(tmp_path / "hub.db"),
                "broker": {"host": mosquitto.host, "port": mosquitto.port, "client_id": "cm-hub"},
                "api": {"host": "127.0.0.1", "port": 0},
                "heartbeat_s": 1.0,
            }
        )
        gw_ready, hub_ready = asyncio.Event(), asyncio.Event()
        hub_port: list[int] = []
        gateway = Gateway(cfg, on_ready=lambda _g: gw_ready.set())
        gw_task = asyncio.create_task(gateway.run(), name="cm.gateway")
        hub_task = asyncio.create_task(
            run_hub(hub_cfg, ready=hub_ready, api_port_out=hub_port), name="cm.hub"
        )
        try:
            async with asyncio.timeout(30):
                await asyncio.gather(gw_ready.wait(), hub_ready.wait())
            async with httpx.AsyncClient(timeout=10) as http:
                yield Stack(
                    sim,
                    gateway,
                    f"http://127.0.0.1:{gateway.api_port}",
                    f"http://127.0.0.1:{hub_port[0]}",
                    http,
                )
        finally:
            for t in (gw_task, hub_task):
                t.cancel()
            for t in (gw_task, hub_task):
                with suppress(asyncio.CancelledError):
                    await t


async def test_installer_work_reaches_the_hub(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with running_stack(tmp_path, mosquitto) as s:
        # The hub knows the store (birth, heartbeats) but has no record: not commissioned.
        async def store_listed() -> bool:
            r = await s.hub("/api/fleet")
            return any(e["store_id"] == STORE_ID for e in r.json())

        await eventually(store_listed, 60, "the store in the hub's fleet")
        assert (await s.hub(f"/api/stores/{STORE_ID}/commissioning")).status_code == 404

        # 1. Calibrate A01 through the wizard's API with a known mass.
        base = "/api/installer/calibration/A01"
        await s.gw("POST", base, {"installer": "li.wei"})
        s.sim.pick("A01", s.sim.shelves["A01"].count)
        await s.gw("POST", base + "/empty")

        async def at_step(step: str) -> bool:
            status = await s.gw("GET", base)
            assert status["step"] != "failed", status
            return bool(status["step"] == step)

        await eventually(lambda: at_step("load"), 60, "the wizard's zero")
        s.sim.put("A01", 5)
        mass_g = sum(s.sim.shelves["A01"].item_masses_g)
        await s.gw("POST", base + "/loaded", {"mass_g": round(mass_g, 3)})
        await eventually(lambda: at_step("checked"), 60, "the wizard's check weighing")
        applied = await s.gw("POST", base + "/apply", {"force": True})
        assert applied["step"] == "applied"

        # 2. Bind it to another product.
        await s.gw(
            "POST",
            "/api/installer/binding/A01",
            {"sku": NEW_SKU, "unit_weight_g": 350.0, "installer": "zhang.min"},
        )
        local = await s.gw("GET", "/api/installer/commissioning")
        assert local["bindings"]["A01"]["after"]["sku"] == NEW_SKU

        # 3. The hub holds the record with both, and the fleet says commissioned.
        seen: dict[str, Any] = {}

        async def hub_has_both() -> bool:
            r = await s.hub(f"/api/stores/{STORE_ID}/commissioning")
            if r.status_code != 200:
                return False
            seen.update(r.json())
            return "A01" in seen["calibrations"] and "A01" in seen["bindings"]

        await eventually(hub_has_both, 60, "the commissioning record at the hub")
        assert seen["store_id"] == STORE_ID
        assert seen["gateway_id"] == s.gateway.gateway_id
        assert seen["installers"] == ["li.wei", "zhang.min"]
        cal = seen["calibrations"]["A01"]
        assert cal["installer"] == "li.wei"
        assert cal["before"]["span_g_per_unit"] == 1.0
        assert cal["after"]["span_g_per_unit"] == pytest.approx(TRUE_CAL.span_g_per_unit, rel=2e-3)
        assert cal["check"]["mass_g"] == pytest.approx(mass_g, abs=1e-3)
        assert seen["bindings"]["A01"]["after"] == {"sku": NEW_SKU, "unit_weight_g": 350.0}
        assert [d["id"] for d in seen["devices"]] == ["tx1"]

        fleet = {e["store_id"]: e for e in (await s.hub("/api/fleet")).json()}
        row = fleet[STORE_ID]
        assert row["commissioned"] is True
        assert row["commissioned_at"] == seen["generated_at"]
        assert (row["calibrations"], row["bindings"]) == (1, 1)
        assert row["failed_checks"] == (0 if cal["check"]["ok"] else 1)
        detail = (await s.hub(f"/api/stores/{STORE_ID}")).json()
        assert detail["store"]["commissioned"] is True
