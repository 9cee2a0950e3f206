"""A real gateway (engine, API, installer routes) fed by a `SimStore` whose load cell disagrees with the config.

The store config says `calibration: {zero: 0, span_g_per_unit: 1}`; the simulated transmitter really reports
`value = 1000 + grams / 0.05` (`TRUE_CAL`). Until someone calibrates, the gateway's grams are nonsense; after a
good calibration it counts the plate exactly. Used by the CLI test (through a pty) and the installer page test.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import httpx

from edge.config import Calibration, load_config
from edge.gateway import Gateway
from firmware_sims.runner import SimStore
from shelfgate.demo import layout_from_config, point_config_at

TRUE_CAL = Calibration(zero=1000.0, span_g_per_unit=0.05)
TARE_G = 30.0
UNIT_G = 350.0

STORE_YAML = f"""\
store_id: inst-001
data_dir: gw
buses:
  - {{id: tcp1, kind: tcp, host: 127.0.0.1, port: 1}}
transmitters:
  - {{id: tx1, bus: tcp1, unit_id: 3, profile: wt-float32-cdab, poll_interval_s: 0.1}}
alerts: {{dwell_s: 0.5, hysteresis_items: 1, silent_after_s: 5}}
bins:
  - id: A01  # cola, left plate
    sku: "06901234567892"
    name: {{zh: 可乐, en: Cola}}
    unit_weight_g: {UNIT_G}
    unit_weight_spread_g: 2.0
    tare_g: {TARE_G}
    calibration: {{zero: 0, span_g_per_unit: 1}}
    safety_stock: 2
    max_stock: 12
    device: tx1
    channel: 0
"""


@dataclasses.dataclass
class InstallerStack:
    """Handles to the running pieces."""

    sim: SimStore
    gateway: Gateway
    url: str
    data_dir: Path
    config_file: Path

    async def status(self, path: str) -> int:
        async with httpx.AsyncClient(timeout=5) as c:
            return (await c.get(self.url + path)).status_code

    async def get(self, path: str) -> Any:
        async with httpx.AsyncClient(timeout=5) as c:
            r = await c.get(self.url + path)
            r.raise_for_status()
            return r.json()

    def empty_plate(self, bin_id: str = "A01") -> None:
        """Take every item off the simulated plate (the tray stays: the sim's gross load always has it)."""
        self.sim.pick(bin_id, self.sim.shelves[bin_id].count)

    def place(self, bin_id: str, n: int) -> float:
        """Put `n` items on the (empty) plate; return their exact total mass in grams, the known mass."""
        self.sim.put(bin_id, n)
        return sum(self.sim.shelves[bin_id].item_masses_g)


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    """Poll an async predicate until true; fail naming `what`. A hang guard, not a timing claim."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        if await check():
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.2)


@asynccontextmanager
async def installer_stack(tmp_path: Path, *, initial_count: int = 6) -> AsyncIterator[InstallerStack]:
    cfg_file = tmp_path / "store.yaml"
    cfg_file.write_text(STORE_YAML, encoding="utf-8")
    base = load_config(cfg_file)
    true_store = base.store.model_copy(
        update={"bins": [b.model_copy(update={"calibration": TRUE_CAL}) for b in base.store.bins]}
    )
    layout = layout_from_config(
        dataclasses.replace(base, store=true_store), seed=11, initial_counts={"A01": initial_count}
    )
    async with SimStore(layout, run_scenario=False) as sim:
        data_dir = tmp_path / "gw"
        cfg = point_config_at(
            base, dict(sim.endpoints), broker=("127.0.0.1", 1), api_port=0, data_dir=data_dir
        )
        ready = asyncio.Event()
        gateway = Gateway(cfg, on_ready=lambda _g: ready.set())
        task = asyncio.create_task(gateway.run(uplink=False), name="test.gateway")
        try:
            async with asyncio.timeout(30):
                await ready.wait()
            yield InstallerStack(sim, gateway, f"http://127.0.0.1:{gateway.api_port}", data_dir, cfg_file)
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
