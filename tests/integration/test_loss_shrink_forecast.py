"""Store signals end to end (issue #6 parts 5-7) on real parts: a Modbus TCP transmitter simulator, two UHF RFID
modules on pty null modems (a shelf zone and an exit zone), a checkout lane driven through the local API → the
gateway → a real Mosquitto → the hub's alert API.

- a tagged item carried to the exit unsold → `loss_suspected` (tag, GTIN, time) at the hub; an item of a GTIN
  just sold at the lane → no alert;
- shelf picks with no sales → `shrink_suspected` with the numbers;
- a steady pick rate → `predicted_out` with an ETA; a restock → resolved.

Windows and horizons are short through the config. Waits are generous hang guards, never timing claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge.config import load_config
from edge.gateway import Gateway
from edge.signals import message_fields
from firmware_sims.runner import SimStore
from hub.config import HubConfig
from hub.service import run_hub
from shelfgate.broker import Mosquitto
from shelfgate.demo import layout_from_config, point_config_at

pytestmark = pytest.mark.timeout(240)

PROJECT = Path(__file__).resolve().parents[2]
WAIT_S = 60.0
COLA, WATER = "06901234567892", "06902083886417"
STORE_YAML = """\
store_id: sig-001
data_dir: data
catalogue: {catalogue}
buses:
  - {{id: tcp1, kind: tcp, host: 127.0.0.1, port: 1}}
transmitters:
  - {{id: tx1, bus: tcp1, unit_id: 1, profile: wt-int32-abcd, poll_interval_s: 0.1}}
scanners:
  - {{id: scan-lane1, port: /dev/shelfgate-test-lane1, role: lane, lane: lane1}}
rfid_readers:
  - {{id: rfid-shelf, port: /dev/shelfgate-test-rfid-shelf, silence_s: 1.0,
     antennas: [{{antenna: 1, zone: shelf-a, kind: shelf}}]}}
  - {{id: rfid-exit, port: /dev/shelfgate-test-rfid-exit, silence_s: 1.0,
     antennas: [{{antenna: 1, zone: exit-1, kind: exit}}]}}
rfid_presence: {{min_reads: 3, enter_window_s: 2.0, max_window_s: 4.0}}
alerts: {{dwell_s: 0.5, hysteresis_items: 1, silent_after_s: 5}}
bridge: {{heartbeat_s: 1, batch_max_events: 50, publish_timeout_s: 3}}
api: {{host: 127.0.0.1, port: 0}}
opening_hours: {{tz: UTC, default: "00:00-24:00"}}
forecast: {{horizon_min: 2, tau_min: 30, min_picks: 2, tick_s: 0.5}}
loss: {{sold_window_min: 10}}
shrink: {{window_min: 10, grace_min: 0, put_back_min: 0, tolerance_units: 2, tolerance_pct: 0, tick_s: 0.5}}
bins:
  - {{id: F1, sku: "{cola}", name: {{zh: 可乐, en: Cola}}, unit_weight_g: 350, unit_weight_spread_g: 3,
     calibration: {{zero: 1000, span_g_per_unit: 0.1}}, safety_stock: 1, max_stock: 60, device: tx1, channel: 0}}
  - {{id: W1, sku: "{water}", name: {{zh: 水, en: Water}}, unit_weight_g: 570, unit_weight_spread_g: 4,
     calibration: {{zero: 1000, span_g_per_unit: 0.1}}, safety_stock: 1, max_stock: 60, device: tx1, channel: 1}}
"""
INITIAL = {"F1": 6, "W1": 20}


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, seen: dict[str, Any] | None = None
) -> None:
    """Poll until `check()` is true; fail naming `what` after WAIT_S (a hang guard)."""
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for: {what}; last seen: {seen}")
        await asyncio.sleep(0.2)


@dataclasses.dataclass
class Stack:
    sim: SimStore
    gateway: Gateway
    gw: httpx.AsyncClient
    hub: httpx.AsyncClient
    hub_db: Path

    async def get(self, client: httpx.AsyncClient, path: str) -> Any:
        r = await client.get(path)
        r.raise_for_status()
        return r.json()

    async def counts(self) -> dict[str, int | None]:
        return {b["bin_id"]: b["count"] for b in await self.get(self.gw, "/api/stock")}

    async def zones(self) -> dict[str, dict[str, Any]]:
        return {z["zone"]: z for z in await self.get(self.gw, "/api/rfid/zones")}

    async def hub_alerts(self, kind: str) -> list[dict[str, Any]]:
        alerts = await self.get(self.hub, "/api/stores/sig-001/alerts")
        return [a for a in alerts if a["kind"] == kind]

    def hub_raised(self, kind: str) -> list[dict[str, Any]]:
        """`alert.raised` payloads of a kind as the hub stored the events (the alert rows keep only the latest
        state; a raise may be resolved before a poll sees it)."""
        with contextlib.closing(sqlite3.connect(self.hub_db)) as db:
            rows = db.execute("SELECT data FROM events WHERE type = 'alert.raised' ORDER BY seq").fetchall()
        return [d for d in (json.loads(r[0]) for r in rows) if d["kind"] == kind]

    async def post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        r = await self.gw.post(path, json=body)
        assert r.status_code == 200, r.text
        return dict(r.json())


@asynccontextmanager
async def running(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[Stack]:
    cfg_file = tmp_path / "store.yaml"
    cfg_file.write_text(
        STORE_YAML.format(catalogue=PROJECT / "config" / "catalogue.yaml", cola=COLA, water=WATER),
        encoding="utf-8",
    )
    base = load_config(cfg_file)
    layout = layout_from_config(base, seed=5, initial_counts=INITIAL)
    async with SimStore(layout, run_scenario=False) as sim:
        cfg = point_config_at(
            base,
            dict(sim.endpoints),
            broker=(mosquitto.host, mosquitto.port),
            api_port=0,
            data_dir=tmp_path / "gw",
            heartbeat_s=1.0,
            device_ports=sim.device_endpoints,
        )
        cfg = dataclasses.replace(cfg, catalogue=base.catalogue)  # point_config_at does not carry it over
        hub_cfg = HubConfig.model_validate(
            {
                "hub_id": "sig-hub",
                "database": str(tmp_path / "hub.db"),
                "broker": {"host": mosquitto.host, "port": mosquitto.port, "reconnect_max_s": 0.5},
                "api": {"host": "127.0.0.1", "port": 0},
            }
        )
        gw_ready, hub_ready, hub_port = asyncio.Event(), asyncio.Event(), list[int]()
        gateway = Gateway(cfg, on_ready=lambda _g: gw_ready.set())
        tasks = [
            asyncio.create_task(gateway.run(), name="sig.gateway"),
            asyncio.create_task(run_hub(hub_cfg, ready=hub_ready, api_port_out=hub_port), name="sig.hub"),
        ]
        try:
            async with asyncio.timeout(WAIT_S):
                await asyncio.gather(gw_ready.wait(), hub_ready.wait())
            async with (
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.api_port}", timeout=10) as gw,
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{hub_port[0]}", timeout=10) as hub,
            ):
                yield Stack(sim, gateway, gw, hub, tmp_path / "hub.db")
        finally:
            for t in tasks:
                t.cancel()
            for r in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                    raise r


async def test_loss_shrink_and_forecast_alerts_reach_the_hub(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with running(tmp_path, mosquitto) as s:
        seen: dict[str, Any] = {}

        async def initial_counts() -> bool:
            seen["counts"] = await s.counts()
            return bool(seen["counts"] == INITIAL)

        await eventually(initial_counts, f"initial counts {INITIAL}", seen)

        # --- forecast + shrink: three single picks of cola at a steady pace, three of water ------------------
        for n in range(1, 4):
            s.sim.pick("F1", 1)
            s.sim.pick("W1", 1)

            async def counted(n: int = n) -> bool:
                seen["counts"] = await s.counts()
                return bool(seen["counts"] == {"F1": INITIAL["F1"] - n, "W1": INITIAL["W1"] - n})

            await eventually(counted, f"pick {n} counted", seen)

        async def predicted_out_at_hub() -> bool:
            seen["predicted"] = s.hub_raised("predicted_out")
            return any(a["bin_id"] == "F1" for a in seen["predicted"])

        await eventually(predicted_out_at_hub, "predicted_out for F1 at the hub", seen)
        (raised,) = [a for a in seen["predicted"] if a["bin_id"] == "F1"]
        fields = message_fields(raised["message"])
        assert raised["count"] == 3
        assert fields["count"] == "3"
        assert 0 < float(fields["eta_min"]) < 2  # under the horizon
        assert fields["eta_at"].endswith("Z")

        async def shrink_at_hub() -> bool:
            seen["shrink"] = await s.hub_alerts("shrink_suspected")
            seen["signals"] = s.gateway.signals.view()
            return any(a["sku"] == WATER for a in seen["shrink"])

        await eventually(shrink_at_hub, "shrink_suspected for water at the hub", seen)
        (shrink,) = [a for a in seen["shrink"] if a["sku"] == WATER]
        assert shrink["bin_id"] == "W1"
        assert shrink["count"] == 3
        numbers = message_fields(shrink["message"])
        assert {
            k: numbers[k] for k in ("picks", "put_backs", "restocked", "sold", "unexplained", "tolerance")
        } == {
            "picks": "3",
            "put_backs": "0",
            "restocked": "0",
            "sold": "0",
            "unexplained": "3",
            "tolerance": "2",
        }

        # A restock of cola: the count jumps, the rate does not → time to empty far past 1.5 × the horizon.
        s.sim.put("F1", 40)

        async def predicted_out_resolved() -> bool:
            seen["predicted"] = await s.hub_alerts("predicted_out")
            return [a["state"] for a in seen["predicted"] if a["bin_id"] == "F1"] == ["resolved"]

        await eventually(predicted_out_resolved, "predicted_out for F1 resolved at the hub", seen)
        assert [a["alert_id"] for a in seen["predicted"] if a["bin_id"] == "F1"] == [raised["alert_id"]]

        # --- loss: a water tag carried to the exit, unsold --------------------------------------------------
        async def shelf_stocked() -> bool:
            seen["zones"] = await s.zones()
            return bool(seen["zones"]["shelf-a"]["total"] == len(s.sim.layout.rfid_readers[0].tags))

        await eventually(shelf_stocked, "every shelf tag present in shelf-a", seen)
        tags = seen["zones"]["shelf-a"]["tags"]
        water_epc = next(t["epc"] for t in tags if t["gtin"] == WATER)
        cola_epc = next(t["epc"] for t in tags if t["gtin"] == COLA)
        s.sim.rfid["rfid-shelf"].remove(water_epc)
        s.sim.rfid["rfid-exit"].add(water_epc)

        async def loss_at_hub() -> bool:
            seen["loss"] = await s.hub_alerts("loss_suspected")
            return len(seen["loss"]) == 1

        await eventually(loss_at_hub, f"loss_suspected for {water_epc} at the hub", seen)
        (loss,) = seen["loss"]
        assert (loss["bin_id"], loss["sku"], loss["state"]) == ("exit-1", WATER, "raised")
        lf = message_fields(loss["message"])
        assert (lf["epc"], lf["gtin"], lf["zone"], lf["sold"]) == (water_epc, WATER, "exit-1", "0")
        assert lf["at"].endswith("Z")

        # Staff acknowledge it like any alert; the acknowledgement reaches the hub.
        ack = await s.post(f"/api/alerts/{loss['alert_id']}/ack", {"by": "li.na"})
        assert (ack["state"], ack["acknowledged_by"]) == ("acknowledged", "li.na")

        async def acknowledged_at_hub() -> bool:
            seen["loss"] = await s.hub_alerts("loss_suspected")
            return [a["state"] for a in seen["loss"]] == ["acknowledged"]

        await eventually(acknowledged_at_hub, "the loss alert acknowledged at the hub", seen)

        # --- no loss: a cola sold at the lane, then a cola tag leaves ----------------------------------------
        await s.post("/api/lanes/lane1/cashier", {"cashier": "c7"})
        await s.post("/api/lanes/lane1/scan", {"code": COLA[1:]})
        await s.post("/api/lanes/lane1/complete")
        s.sim.rfid["rfid-shelf"].remove(cola_epc)
        s.sim.rfid["rfid-exit"].add(cola_epc)

        async def cola_exit_handled() -> bool:
            seen["signals"] = await s.get(s.gw, "/api/signals")
            return bool(seen["signals"]["loss"]["exits_seen"] == 2)

        await eventually(cola_exit_handled, f"the exit of {cola_epc} handled", seen)
        assert seen["signals"]["loss"]["covered_by_sales"] == 1
        assert seen["signals"]["loss"]["active_epcs"] == [water_epc]
        zones = await s.zones()
        assert zones["exit-1"]["counts"] == {WATER: 1, COLA: 1}  # shelf-zone stock of tagged goods, per GTIN
        assert zones["shelf-a"]["counts"] == {WATER: 2, COLA: 2}

        async def outbox_drained() -> bool:
            seen["depth"], _ = await s.gateway.store.depth()
            return bool(seen["depth"] == 0)

        await eventually(outbox_drained, "the outbox delivered to the hub", seen)
        hub_loss = await s.hub_alerts("loss_suspected")
        assert [message_fields(a["message"])["epc"] for a in hub_loss] == [water_epc]
        gw_loss = [a for a in await s.get(s.gw, "/api/alerts") if a["kind"] == "loss_suspected"]
        assert [message_fields(a["message"])["epc"] for a in gw_loss] == [water_epc]
        assert gw_loss[0]["name"] == {
            "zh": "农夫山泉 550毫升",
            "en": "Nongfu Spring 550 ml",
        }  # from the catalogue
