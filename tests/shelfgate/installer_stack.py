"""A real gateway (engine, API, installer routes) fed by a `SimStore` whose load cell disagrees with the config.

The store config says `calibration: {zero: 0, span_g_per_unit: 1}`; the simulated transmitter really reports
`value = 1000 + grams / 0.05` (`TRUE_CAL`). Until someone calibrates, the gateway's grams are nonsense; after a
good calibration it counts the plate exactly. Used by the CLI test (through a pty) and the installer page test.

With `scan_bind=True` the store also has a product catalogue (`CATALOGUE_YAML`) and a handheld barcode scanner
on a real pty (`firmware_sims` scanner simulator, `InstallerStack.scan`) for binding by scan. The cans on the
simulated plate weigh `UNIT_G` (the sim draws each from the config's weight and spread), which is what the
catalogue says of `SHELF_GTIN` too — but within a few grams of the configured cola, so the bin still counts
them before it is re-bound.
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
from firmware_sims.barcode import BarcodeScannerSim
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


SHELF_GTIN = "06902083886417"
"""What is really on the plate (the catalogue's "Sprite 330 ml can", 352 g ± 3 g)."""
SHELF_ITEM_G = 352.0
UNKNOWN_GTIN = "6920202888883"
"""A valid EAN-13 the stack's catalogue does not hold."""
HANDHELD = "hand1"

CATALOGUE_YAML = f"""\
currency: CNY
items:
  - gtin: "06901234567892"
    name: {{zh: 可乐 330毫升, en: Cola 330 ml}}
    price: "3.00"
    unit_weight_g: {UNIT_G}
    unit_weight_spread_g: 2.0
    category: beverages
  - gtin: "{SHELF_GTIN}"
    name: {{zh: 雪碧 330毫升罐装, en: Sprite 330 ml can}}
    price: "3.20"
    unit_weight_g: {SHELF_ITEM_G}
    unit_weight_spread_g: 3.0
    category: beverages
  - gtin: "02200001000001"
    name: {{zh: 富士苹果, en: Fuji apples}}
    price: "12.80"
    category: produce
    variable_measure: true
"""

SCAN_BIND_YAML = f"""\
catalogue: catalogue.yaml
scanners:
  - {{id: {HANDHELD}, port: /dev/shelfgate/hand1, role: handheld}}
  - {{id: lane-sc, port: /dev/shelfgate/lane1, role: lane, lane: lane1}}
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

    async def scan(self, code: str, scanner: str = HANDHELD) -> None:
        """Scan `code` (EAN-13 symbology) with a simulated scanner: bytes on its pty, read by the gateway."""
        sim: BarcodeScannerSim = self.sim.scanners[scanner]
        await sim.scan(code, "]E0")


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
async def installer_stack(
    tmp_path: Path, *, initial_count: int = 6, scan_bind: bool = False
) -> AsyncIterator[InstallerStack]:
    cfg_file = tmp_path / "store.yaml"
    text = STORE_YAML
    if scan_bind:
        (tmp_path / "catalogue.yaml").write_text(CATALOGUE_YAML, encoding="utf-8")
        text += SCAN_BIND_YAML
    cfg_file.write_text(text, encoding="utf-8")
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
            base,
            dict(sim.endpoints),
            broker=("127.0.0.1", 1),
            api_port=0,
            data_dir=data_dir,
            device_ports=sim.device_endpoints,
        )
        cfg = dataclasses.replace(cfg, catalogue=base.catalogue)  # point_config_at leaves it out
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
