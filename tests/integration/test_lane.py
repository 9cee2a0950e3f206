"""A checkout lane end to end on real parts: a barcode scanner simulator and an MT-SICS scale simulator on pty
null modems → the gateway's lane (journal, outbox, book stock) → a real Mosquitto → the hub → the HQ sales API.

The WAN goes down in the middle of the sale (the broker stops): the lane completes locally, the sale waits in
the outbox and reaches the hub exactly once when the broker is back. Then part of it is returned at the lane.
Waits are generous hang guards, never timing claims.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud_bridge.contract import EventType
from drivers.barcode.protocol import MemberScan, decode_scan
from edge.config import load_config
from edge.gateway import Gateway
from firmware_sims.runner import SimStore
from hub.config import HubConfig
from hub.service import run_hub
from shelfgate.broker import Mosquitto
from shelfgate.demo import layout_from_config, point_config_at

pytestmark = pytest.mark.timeout(240)

PROJECT = Path(__file__).resolve().parents[2]
WAIT_S = 60.0
STORE_YAML = """\
store_id: lane-001
data_dir: data
catalogue: {catalogue}
scales:
  - {{id: scale1, port: /dev/shelfgate-test-scale1, lane: lane1, poll_interval_s: 0.2, request_timeout_s: 0.5}}
scanners:
  - {{id: scan-lane1, port: /dev/shelfgate-test-lane1, role: lane, lane: lane1}}
api: {{host: 127.0.0.1, port: 0}}
bins: []
"""
COLA, NOODLES, APPLES = "6901234567892", "6920202888883", "2200001000001"  # as the scanner reads them
PORK = "2200003000009"  # 29.90 CNY/kg, plain code (no weight in it)
MEMBER_CODE = "MBR0000001001"


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll until `check()` is true; fail naming `what` after WAIT_S (a hang guard)."""
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for: {what}")
        await asyncio.sleep(0.1)


@dataclasses.dataclass
class Stack:
    sim: SimStore
    gateway: Gateway
    gw: httpx.AsyncClient
    hub: httpx.AsyncClient

    async def lane(self) -> dict[str, Any]:
        r = await self.gw.get("/api/lanes/lane1")
        r.raise_for_status()
        return dict(r.json())

    async def post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        r = await self.gw.post(path, json=body)
        assert r.status_code == 200, r.text
        return dict(r.json())


@asynccontextmanager
async def running(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[Stack]:
    cfg_file = tmp_path / "store.yaml"
    cfg_file.write_text(STORE_YAML.format(catalogue=PROJECT / "config" / "catalogue.yaml"), encoding="utf-8")
    base = load_config(cfg_file)
    assert base.catalogue is not None
    layout = layout_from_config(base, seed=3)
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
                "hub_id": "lane-hub",
                "database": str(tmp_path / "hub.db"),
                "broker": {"host": mosquitto.host, "port": mosquitto.port, "reconnect_max_s": 0.5},
                "api": {"host": "127.0.0.1", "port": 0},
            }
        )
        gw_ready, hub_ready, hub_port = asyncio.Event(), asyncio.Event(), list[int]()
        gateway = Gateway(cfg, on_ready=lambda _g: gw_ready.set())
        tasks = [
            asyncio.create_task(gateway.run(), name="lane.gateway"),
            asyncio.create_task(run_hub(hub_cfg, ready=hub_ready, api_port_out=hub_port), name="lane.hub"),
        ]
        try:
            async with asyncio.timeout(WAIT_S):
                await asyncio.gather(gw_ready.wait(), hub_ready.wait())
            async with (
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.api_port}", timeout=10) as gw,
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{hub_port[0]}", timeout=10) as hub,
            ):
                yield Stack(sim, gateway, gw, hub)
        finally:
            for t in tasks:
                t.cancel()
            for r in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                    raise r


async def test_a_lane_sale_reaches_the_hub_once_through_a_wan_outage(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    member = decode_scan("]C0" + MEMBER_CODE)
    assert isinstance(member, MemberScan)
    async with running(tmp_path, mosquitto) as s:
        scanner, scale = s.sim.scanners["scan-lane1"], s.sim.scales["scale1"]
        scale.put(0.0)

        async def scale_reads_zero() -> bool:
            view = (await s.lane())["scale"]
            return bool(view["online"] and view["weight"] is not None and view["weight"]["weight_g"] == 0)

        await eventually(scale_reads_zero, "the lane scale online, reading an empty pan")
        await s.post("/api/lanes/lane1/cashier", {"cashier": "c7"})

        # Two counted items (the second cola merges into line 1), then apples on a plain code: waits for the scale.
        for code in (COLA, COLA, NOODLES, APPLES):
            await scanner.scan(code, "]E0")

        async def apples_waiting() -> bool:
            tx = (await s.lane())["transaction"]
            return tx is not None and len(tx["lines"]) == 3 and tx["waiting_for_weight"]

        await eventually(apples_waiting, "three lines, the apples waiting for the scale")

        # The WAN goes down mid-sale: nothing at the lane notices.
        mosquitto.stop()
        scale.put(1234.0)

        async def apples_weighed() -> bool:
            tx = (await s.lane())["transaction"]
            return not tx["waiting_for_weight"]

        await eventually(apples_weighed, "the apples priced by the scale's stable weight")
        await scanner.scan(MEMBER_CODE, "]C0")

        async def member_known() -> bool:
            return bool((await s.lane())["transaction"]["member_id"] == member.member_id)

        await eventually(member_known, "the member scan on the sale")
        tx = (await s.lane())["transaction"]
        assert [(ln["gtin"], ln["qty"], ln["weight_kg"], ln["amount"]) for ln in tx["lines"]] == [
            ("06901234567892", 2, None, "6.00"),
            ("06920202888883", 1, None, "4.50"),
            ("02200001000001", None, "1.234", "15.80"),
        ]
        done = await s.post("/api/lanes/lane1/complete")
        sale_id = done["transaction"]["transaction_id"]
        assert done["transaction"]["status"] == "completed"
        assert done["transaction"]["total"] == "26.30"

        # Recorded locally with the WAN down; book stock moved.
        local = (await s.gw.get(f"/api/sales/{sale_id}")).json()
        assert local["sale"]["total"] == "26.30"
        stock = (await s.gw.get("/api/book-stock")).json()
        assert stock == {"02200001000001": "-1.234", "06901234567892": "-2.000", "06920202888883": "-1.000"}
        assert (await s.hub.get(f"/api/sales/{sale_id}")).status_code == 404
        # Completing again (a cashier screen retrying) answers the same sale and records nothing more.
        again = await s.post("/api/lanes/lane1/complete")
        assert again["transaction"]["transaction_id"] == sale_id
        # Refused commands say why.
        r = await s.gw.post("/api/lanes/lane1/void")
        assert r.status_code == 409
        assert r.json()["detail"] == "no open transaction"
        r = await s.gw.post("/api/lanes/lane1/scan", json={"code": "6900000000007"})
        assert r.status_code == 422
        assert "unknown item" in r.json()["detail"]

        # The WAN is back: the sale reaches the hub.
        mosquitto.start()

        async def at_hub() -> bool:
            return (await s.hub.get(f"/api/sales/{sale_id}")).status_code == 200

        await eventually(at_hub, "the sale at the hub after the broker restarted")
        hub_sale = (await s.hub.get(f"/api/sales/{sale_id}")).json()["sale"]
        assert (hub_sale["total"], hub_sale["member_id"], hub_sale["lane"], hub_sale["cashier"]) == (
            "26.30",
            member.member_id,
            "lane1",
            "c7",
        )
        listed = (await s.hub.get("/api/sales", params={"store": "lane-001"})).json()
        assert [x["transaction_id"] for x in listed] == [sale_id]
        ledger = await s.gateway.store.ledger()
        assert [r.data["transaction_id"] for r in ledger if r.event_type == EventType.SALE_COMPLETED] == [
            sale_id
        ]

        # A return of one cola at the lane: scanned, completed, refunded at the hub.
        scale.put(0.0)
        await s.post("/api/lanes/lane1/returns", {"transaction_id": sale_id})
        await scanner.scan(COLA, "]E0")

        async def cola_back() -> bool:
            tx = (await s.lane())["transaction"]
            return tx["kind"] == "return" and len(tx["lines"]) == 1

        await eventually(cola_back, "the returned cola on the return transaction")
        refund = await s.post("/api/lanes/lane1/complete")
        assert refund["transaction"]["total"] == "3.00"

        async def refunded_at_hub() -> bool:
            detail = (await s.hub.get(f"/api/sales/{sale_id}")).json()
            return len(detail["returns"]) == 1

        await eventually(refunded_at_hub, "the return at the hub")
        detail = (await s.hub.get(f"/api/sales/{sale_id}")).json()
        assert detail["returns"][0]["refund"] == "3.00"
        assert detail["sale"]["refunded"] == "3.00"
        stock = (await s.gw.get("/api/book-stock", params={"gtin": "06901234567892"})).json()
        assert stock == {"06901234567892": "-1.000"}

        # Pork already on the pan when its plain code is scanned: the scale's current stable weight prices it.
        # First the lane must have seen the pan empty since the apples (require_zero_between_weighings); the
        # return above can finish before the scale settles at zero.
        async def pan_cleared() -> bool:
            return bool((await s.lane())["scale_clear"])

        await eventually(pan_cleared, "the lane seeing the emptied pan")
        scale.put(456.0)

        async def pan_reads_pork() -> bool:
            weight = (await s.lane())["scale"]["weight"]
            return weight is not None and weight["weight_g"] == 456.0

        await eventually(pan_reads_pork, "the scale reading the pork")
        await s.post("/api/lanes/lane1/scan", {"code": PORK})
        tx = (await s.lane())["transaction"]
        assert [(ln["gtin"], ln["weight_kg"], ln["amount"]) for ln in tx["lines"]] == [
            ("02200003000009", "0.456", "13.63")
        ]
        await s.post("/api/lanes/lane1/cancel")
