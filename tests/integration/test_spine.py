"""The spine end to end: simulators (RTU over a pty, Modbus TCP) → gateway → real Mosquitto → hub.

Ground truth comes from the simulator's own log of picks and puts; the test asserts the gateway and the hub
end with exactly that stock, the alerts it implies were raised and resolved at both ends, and that a broker
restart in the middle loses no event (the hub holds every seq from 1 to the gateway's last, once).
"""

from __future__ import annotations

import asyncio
import sqlite3
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge.config import LoadedConfig, load_config
from edge.gateway import Gateway
from firmware_sims.runner import SimStore
from hub.config import HubConfig
from hub.service import run_hub
from shelfgate.broker import Mosquitto
from shelfgate.demo import layout_from_config, point_config_at

pytestmark = pytest.mark.timeout(240)

STORE_YAML = """\
store_id: it-001
data_dir: data
buses:
  - {id: rtu1, kind: rtu, port: /dev/null, baudrate: 19200, timeout_s: 0.3}
  - {id: tcp1, kind: tcp, host: 127.0.0.1, port: 1}
transmitters:
  - {id: tx1, bus: rtu1, unit_id: 1, profile: wt-float32-cdab, poll_interval_s: 0.1}
  - {id: tx2, bus: tcp1, unit_id: 7, profile: wt-int32-abcd, poll_interval_s: 0.1}
alerts: {dwell_s: 0.5, hysteresis_items: 1, silent_after_s: 5}
bridge: {heartbeat_s: 1, batch_max_events: 50, publish_timeout_s: 3}
bins:
"""

BINS = [
    # id, device, channel, unit g, spread g, zero, span, safety, max, initial
    ("R1", "tx1", 0, 350.0, 3.0, 1000.0, 0.05, 4, 12, 6),
    ("R2", "tx1", 3, 120.0, 2.0, 1111.0, 0.05, 4, 12, 8),
    ("T1", "tx2", 0, 570.0, 4.0, 1000.0, 0.1, 4, 10, 5),
    ("T2", "tx2", 5, 92.0, 1.5, 1185.0, 0.1, 5, 20, 12),
]
INITIAL = {b[0]: b[9] for b in BINS}


def _store_yaml() -> str:
    out = STORE_YAML
    for bid, dev, ch, unit, spread, zero, span, safety, mx, _ in BINS:
        out += textwrap.indent(
            f"- id: {bid}\n  sku: '0690000000{ch:03d}{len(bid)}'\n  name: {{zh: 商品{bid}, en: Item {bid}}}\n"
            f"  unit_weight_g: {unit}\n  unit_weight_spread_g: {spread}\n"
            f"  calibration: {{zero: {zero}, span_g_per_unit: {span}}}\n"
            f"  safety_stock: {safety}\n  max_stock: {mx}\n  device: {dev}\n  channel: {ch}\n",
            "  ",
        )
    return out


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout_s: float, what: str, seen: dict[str, Any] | None = None
) -> None:
    """Poll until `check()` is true; fail naming `what` (and what was last `seen`) after timeout_s.

    A hang guard, not a timing claim: the timeouts are generous for a loaded 2-core CI machine.
    """
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        if await check():
            return
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for: {what}; last seen: {seen}")
        await asyncio.sleep(0.2)


class Stack:
    """Handles to the running pieces."""

    def __init__(
        self, sim: SimStore, gateway: Gateway, hub_url: str, hub_db: Path, broker: Mosquitto
    ) -> None:
        self.sim = sim
        self.gateway = gateway
        self.hub_url = hub_url
        self.hub_db = hub_db
        self.broker = broker
        self.http = httpx.AsyncClient(timeout=5)

    async def gw(self, path: str) -> Any:
        r = await self.http.get(f"http://127.0.0.1:{self.gateway.api_port}{path}")
        r.raise_for_status()
        return r.json()

    async def hub(self, path: str) -> Any:
        r = await self.http.get(f"{self.hub_url}{path}")
        r.raise_for_status()
        return r.json()

    async def gateway_counts(self) -> dict[str, int | None]:
        return {b["bin_id"]: b["count"] for b in await self.gw("/api/stock")}

    async def hub_counts(self) -> dict[str, int]:
        return {b["bin_id"]: b["count"] for b in await self.hub("/api/stores/it-001/stock")}


@asynccontextmanager
async def running_stack(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[Stack]:
    cfg_file = tmp_path / "store.yaml"
    cfg_file.write_text(_store_yaml(), encoding="utf-8")
    base: LoadedConfig = load_config(cfg_file)
    layout = layout_from_config(base, seed=7, initial_counts=INITIAL)
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
                "hub_id": "it-hub",
                "database": str(tmp_path / "hub.db"),
                "broker": {"host": mosquitto.host, "port": mosquitto.port, "client_id": "it-hub"},
                "api": {"host": "127.0.0.1", "port": 0},
                "heartbeat_s": 1.0,
            }
        )
        gw_ready = asyncio.Event()
        gateway = Gateway(cfg, on_ready=lambda _g: gw_ready.set())
        hub_ready = asyncio.Event()
        hub_port: list[int] = []
        gw_task = asyncio.create_task(gateway.run(), name="it.gateway")
        hub_task = asyncio.create_task(
            run_hub(hub_cfg, ready=hub_ready, api_port_out=hub_port), name="it.hub"
        )
        try:
            await asyncio.wait_for(asyncio.gather(gw_ready.wait(), hub_ready.wait()), 30)
            stack = Stack(sim, gateway, f"http://127.0.0.1:{hub_port[0]}", tmp_path / "hub.db", mosquitto)
            try:
                yield stack
            finally:
                await stack.http.aclose()
        finally:
            for t in (gw_task, hub_task):
                t.cancel()
            results = await asyncio.gather(gw_task, hub_task, return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                    raise r


async def test_spine_exact_stock_alerts_and_broker_restart(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with running_stack(tmp_path, mosquitto) as s:
        # 1. The gateway counts every bin from its first stable level (absolute reconciliation).
        async def initial_counts_known() -> bool:
            return await s.gateway_counts() == INITIAL

        await eventually(initial_counts_known, 30, f"initial counts {INITIAL}")

        # 2. Picks and puts on all four bins, on both buses; R1 and T1 go below safety stock.
        async def step(*moves: tuple[str, int]) -> None:
            """Move items (negative = pick), then let the plates settle before the next person comes."""
            for bin_id, delta in moves:
                if delta < 0:
                    s.sim.pick(bin_id, -delta)
                else:
                    s.sim.put(bin_id, delta)
            await asyncio.sleep(1.8)

        await step(("R1", -1), ("T1", -2), ("T2", -1))
        await step(("R1", -2), ("R2", +1))

        # 3. The broker goes away mid-run; the gateway keeps counting into its outbox.
        s.broker.stop()
        await step(("R2", -3), ("T2", -2))
        await step(("T2", +1))
        s.broker.start()

        truth = dict(s.sim.scenario.true_counts)
        assert truth == {"R1": 3, "R2": 6, "T1": 3, "T2": 10}

        async def gateway_matches() -> bool:
            return await s.gateway_counts() == truth

        await eventually(gateway_matches, 30, f"gateway stock == ground truth {truth}")

        async def low_alerts_raised() -> bool:
            alerts = await s.gw("/api/alerts?active=true")
            return {(a["bin_id"], a["kind"]) for a in alerts} >= {("R1", "low"), ("T1", "low")}

        await eventually(low_alerts_raised, 15, "low alerts for R1 and T1")
        gw_alerts = {(a["bin_id"], a["kind"]) for a in await s.gw("/api/alerts?active=true")}
        assert ("R2", "low") not in gw_alerts
        assert ("T2", "low") not in gw_alerts

        # 4. Staff acknowledge R1's alert, then restock both bins; the low alerts resolve.
        r1_alert = next(a for a in await s.gw("/api/alerts?active=true") if a["bin_id"] == "R1")
        ack = await s.http.post(
            f"http://127.0.0.1:{s.gateway.api_port}/api/alerts/{r1_alert['alert_id']}/ack",
            json={"by": "li.na"},
        )
        assert ack.status_code == 200
        assert ack.json()["state"] == "acknowledged"
        assert ack.json()["acknowledged_by"] == "li.na"
        await step(("R1", +9), ("T1", +7))
        truth = dict(s.sim.scenario.true_counts)
        assert truth["R1"] == 12
        assert truth["T1"] == 10

        async def resolved() -> bool:
            active = {(a["bin_id"], a["kind"]) for a in await s.gw("/api/alerts?active=true")}
            return not active & {("R1", "low"), ("T1", "low")} and await s.gateway_counts() == truth

        await eventually(resolved, 20, "R1/T1 low alerts resolved after restock")

        # 5. The hub converges to the same stock and alert states, and holds every seq exactly once.
        seen: dict[str, Any] = {}

        async def hub_matches() -> bool:
            seen["fleet"] = await s.hub("/api/fleet")
            seen["outbox_depth"], _ = await s.gateway.store.depth()
            seen["hub_counts"] = await s.hub_counts() if seen["fleet"] else {}
            return bool(seen["fleet"]) and seen["outbox_depth"] == 0 and seen["hub_counts"] == truth

        await eventually(hub_matches, 30, f"hub stock == gateway stock {truth} with an empty outbox", seen)
        last_seq = await s.gateway.store.last_seq()
        with sqlite3.connect(s.hub_db) as db:
            seqs = [r[0] for r in db.execute("SELECT seq FROM events WHERE store_id='it-001' ORDER BY seq")]
        assert seqs == list(range(1, last_seq + 1)), "hub must hold every seq once, no gap, no double"

        hub_alerts = await s.hub("/api/stores/it-001/alerts?active=false")
        by_key = {(a["bin_id"], a["kind"]): a["state"] for a in hub_alerts}
        assert by_key[("R1", "low")] == "resolved"
        assert by_key[("T1", "low")] == "resolved"
        fleet = {f["store_id"]: f for f in await s.hub("/api/fleet")}
        assert fleet["it-001"]["online"] is True
        assert fleet["it-001"]["received_seq"] == last_seq
        assert fleet["it-001"]["missing_ranges"] == []
