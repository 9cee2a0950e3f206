"""Stocktake and receiving end to end: scanner simulators over real ptys → gateway → real Mosquitto → hub,
with a phone (headless Chromium) counting on the store LAN at the same time.

- Receiving: the receiving scanner reads a GS1-128 case label (01)+(30), a (02)+(37) label and an SSCC pallet
  label (booked through an uploaded delivery note); commit → book stock + `stock.received`.
- Stocktake: area R is counted by the handheld scanner (assigned to its session over the API) while the phone
  page starts and counts area T concurrently; both confirmed → book stock adjusted to the counts, one
  `stocktake.completed` each, and all of it reaches the hub.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import sqlite3
import textwrap
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Page, async_playwright, expect
from stdnum import ean

from cloud_bridge.contract import EventType
from edge import bookstock
from edge.config import load_config
from edge.gateway import Gateway
from firmware_sims.runner import SimStore
from hub.config import HubConfig
from hub.service import run_hub
from shelfgate.broker import Mosquitto
from shelfgate.demo import layout_from_config, point_config_at

pytestmark = [pytest.mark.timeout(240), pytest.mark.browser]

CATALOGUE = Path(__file__).resolve().parents[2] / "config" / "catalogue.yaml"
CHROMIUM = Path("/usr/bin/chromium")
WAIT_MS = 15_000
COLA = "06901234567892"
WATER = "06902083886417"
NOODLES = "06920202888883"
CRACKERS = "06921168509256"
PALLET = "06901234000000077" + ean.calc_check_digit("06901234000000077")

STORE_YAML = f"""\
store_id: it-st-01
data_dir: data
catalogue: {CATALOGUE}
buses:
  - {{id: tcp1, kind: tcp, host: 127.0.0.1, port: 1}}
transmitters:
  - {{id: tx1, bus: tcp1, unit_id: 7, profile: wt-int32-abcd, poll_interval_s: 0.2}}
scanners:
  - {{id: hh1, port: /dev/shelfgate/hh1, role: handheld}}
  - {{id: dock1, port: /dev/shelfgate/dock1, role: receiving}}
bridge: {{heartbeat_s: 1, batch_max_events: 50, publish_timeout_s: 3}}
bins:
"""
BINS = [("R1", COLA, 0, 350.0), ("R2", WATER, 1, 570.0), ("T1", NOODLES, 2, 120.0), ("T2", CRACKERS, 3, 92.0)]


def _store_yaml() -> str:
    out = STORE_YAML
    for bin_id, sku, channel, unit_g in BINS:
        out += textwrap.indent(
            f"- id: {bin_id}\n  sku: '{sku}'\n  name: {{zh: 商品{bin_id}, en: Item {bin_id}}}\n"
            f"  unit_weight_g: {unit_g}\n  unit_weight_spread_g: 1.0\n"
            f"  calibration: {{zero: 1000, span_g_per_unit: 0.1}}\n"
            f"  safety_stock: 2\n  max_stock: 30\n  device: tx1\n  channel: {channel}\n",
            "  ",
        )
    return out


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    """Poll until true; fail naming `what` after a generous deadline (a hang guard, not a timing claim)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for: {what}")
        await asyncio.sleep(0.2)


@dataclass
class Stack:
    sim: SimStore
    gateway: Gateway
    hub_db: Path
    http: httpx.AsyncClient

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.gateway.api_port}"

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        r = await self.http.request(method, f"{self.base}{path}", **kwargs)
        assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text}"
        return r.json()

    async def book(self) -> dict[str, Decimal]:
        return await self.gateway.store.transact(bookstock.book_stock)

    def hub_events(self, event_type: str) -> list[dict[str, Any]]:
        with sqlite3.connect(self.hub_db) as db:
            rows = db.execute("SELECT data FROM events WHERE type = ? ORDER BY seq", (event_type,)).fetchall()
        return [json.loads(r[0]) for r in rows]


@asynccontextmanager
async def running_stack(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[Stack]:
    cfg_file = tmp_path / "store.yaml"
    cfg_file.write_text(_store_yaml(), encoding="utf-8")
    base = load_config(cfg_file)
    layout = layout_from_config(base, seed=3, initial_counts={b[0]: 5 for b in BINS})
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
        # `point_config_at` builds a LoadedConfig without the catalogue (shelfgate/demo.py); keep the loaded one.
        cfg = dataclasses.replace(cfg, catalogue=base.catalogue)
        hub_cfg = HubConfig.model_validate(
            {
                "hub_id": "it-hub",
                "database": str(tmp_path / "hub.db"),
                "broker": {"host": mosquitto.host, "port": mosquitto.port, "client_id": "it-hub"},
                "api": {"host": "127.0.0.1", "port": 0},
                "heartbeat_s": 1.0,
            }
        )
        gw_ready, hub_ready = asyncio.Event(), asyncio.Event()
        gateway = Gateway(cfg, on_ready=lambda _g: gw_ready.set())
        gw_task = asyncio.create_task(gateway.run(), name="it.gateway")
        hub_task = asyncio.create_task(run_hub(hub_cfg, ready=hub_ready, api_port_out=[]), name="it.hub")
        try:
            async with asyncio.timeout(60):
                await asyncio.gather(gw_ready.wait(), hub_ready.wait())
            async with httpx.AsyncClient(timeout=10) as http:
                yield Stack(sim, gateway, tmp_path / "hub.db", http)
        finally:
            for t in (gw_task, hub_task):
                t.cancel()
            for r in await asyncio.gather(gw_task, hub_task, return_exceptions=True):
                if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                    raise r


async def _scanner_online(s: Stack, scanner_id: str) -> bool:
    devices = await s.call("GET", "/api/devices?family=scanner")
    return any(d["device_id"] == scanner_id and d["online"] for d in devices)


async def _phone_counts_area_t(page: Page, url: str) -> None:
    """The phone page starts area T and counts it by typing codes (one with a number)."""
    await page.goto(url)
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    await page.fill("#staff", "zhao.min")
    await page.fill("#area", "T")
    await page.click("#start")
    await expect(page.locator("#s-area")).to_have_text("T", timeout=WAIT_MS)
    await page.fill("#code", NOODLES[1:])
    await page.fill("#qty", "19")
    await page.press("#code", "Enter")
    row = page.locator(f'#progress-body tr[data-sku="{NOODLES}"]')
    await expect(row.locator(".counted")).to_have_text("19", timeout=WAIT_MS)
    for n in range(1, 4):  # crackers one by one, each a separate count with its own scan id
        await page.fill("#code", CRACKERS[1:])
        await page.press("#code", "Enter")
        cell = page.locator(f'#progress-body tr[data-sku="{CRACKERS}"] .counted')
        await expect(cell).to_have_text(str(n), timeout=WAIT_MS)
    await page.fill("#code", CRACKERS)
    await page.fill("#qty", "9")
    await page.click("#count")
    await expect(page.locator(f'#progress-body tr[data-sku="{CRACKERS}"] .counted')).to_have_text(
        "12", timeout=WAIT_MS
    )


@pytest.fixture
def chromium() -> Path:
    """Debian's Chromium. Never a downloaded browser: scripts/test installs the package when it is missing."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install the Debian package `chromium` (scripts/test does)")
    return CHROMIUM


async def test_receiving_then_concurrent_stocktakes_reach_the_hub(
    tmp_path: Path, mosquitto: Mosquitto, chromium: Path
) -> None:
    async with running_stack(tmp_path, mosquitto) as s:
        for scanner_id in ("hh1", "dock1"):
            await eventually(functools.partial(_scanner_online, s, scanner_id), 30, f"{scanner_id} online")

        # 1. Receiving: a receipt (the store's only receiving scanner follows it), three kinds of labels.
        receipt = await s.call("POST", "/api/receipts", json={"by": "wang.wei"})
        rid = receipt["receipt_id"]
        assert receipt["scanners"] == ["dock1"]
        await s.sim.scanners["dock1"].scan(f"01{CRACKERS}3012", "]C1")  # GS1-128 (01)+(30): 12 packs

        async def crackers_booked() -> bool:
            view = await s.call("GET", f"/api/receipts/{rid}")
            return {t["gtin"]: t["qty"] for t in view["totals"]} == {CRACKERS: 12}

        await eventually(crackers_booked, 20, "the receiving scanner's case label booked")
        # A (02)+(37) case label and an SSCC pallet label are not product scans to the barcode driver; a
        # receiving scanner passes their text on and the desk books them (the pallet through the note).
        await s.sim.scanners["dock1"].scan(f"02{NOODLES}3720", "]C1")
        note = f"sscc,gtin,qty\n{PALLET},{COLA},10\n{PALLET},{WATER},6\n"
        await s.call(
            "PUT",
            f"/api/receipts/{rid}/delivery-note?name=dn-7.csv",
            content=note.encode(),
            headers={"Content-Type": "text/csv"},
        )
        await s.sim.scanners["dock1"].scan(f"00{PALLET}", "]C1")

        async def dock_labels_booked() -> bool:
            view = await s.call("GET", f"/api/receipts/{rid}")
            totals = {t["gtin"]: t["qty"] for t in view["totals"]}
            return totals == {CRACKERS: 12, NOODLES: 20, COLA: 10, WATER: 6}

        await eventually(dock_labels_booked, 20, "the dock's (02)+(37) and SSCC labels booked")
        r = await s.http.post(
            f"{s.base}/api/receipts/{rid}/scans", json={"scan_id": str(uuid.uuid4()), "code": f"00{PALLET}"}
        )
        assert r.status_code == 422
        assert "already received" in r.json()["detail"]
        await s.call("POST", f"/api/receipts/{rid}/commit", json={"by": "wang.wei"})
        assert await s.book() == {COLA: 10, WATER: 6, NOODLES: 20, CRACKERS: 12}

        # 2. Two areas at once: R by the handheld scanner, T by the phone.
        session_r = await s.call("POST", "/api/stocktakes", json={"area": "R", "by": "li.na"})
        rsid = session_r["session_id"]
        assert [(p["sku"], p["expected"]) for p in session_r["progress"]] == [(COLA, 10), (WATER, 6)]
        await s.call("PUT", "/api/stocktakes/scanners/hh1", json={"session_id": rsid})

        async def handheld_counts() -> None:
            for _ in range(9):
                await s.sim.scanners["hh1"].scan(COLA[1:], "]E0")
            for _ in range(6):
                await s.sim.scanners["hh1"].scan(WATER[1:], "]E0")

        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=str(chromium), headless=True, args=["--no-sandbox"]
            )
            try:
                context = await browser.new_context(locale="zh-CN", viewport={"width": 390, "height": 844})
                page = await context.new_page()
                page.on("dialog", lambda d: asyncio.ensure_future(d.accept()))
                await asyncio.gather(handheld_counts(), _phone_counts_area_t(page, f"{s.base}/stocktake"))

                async def r_counted() -> bool:
                    view = await s.call("GET", f"/api/stocktakes/{rsid}")
                    return {p["sku"]: p["counted"] for p in view["progress"]} == {COLA: 9, WATER: 6}

                await eventually(r_counted, 30, "the handheld scanner's 15 scans counted into area R")
                tsid = next(
                    x["session_id"] for x in await s.call("GET", "/api/stocktakes") if x["area"] == "T"
                )
                t_view = await s.call("GET", f"/api/stocktakes/{tsid}")
                assert {p["sku"]: (p["expected"], p["counted"]) for p in t_view["progress"]} == {
                    NOODLES: (20, 19),
                    CRACKERS: (12, 12),
                }
                csv_text = (await s.http.get(f"{s.base}/api/stocktakes/{rsid}/variance.csv")).text
                assert f"{COLA},可口可乐 330毫升罐装,Coca-Cola 330 ml can,10,9,-1,3.00,-3.00" in csv_text

                await page.click("#confirm")  # the phone confirms T
                await expect(page.locator("#s-status")).to_have_text("已确认", timeout=WAIT_MS)
            finally:
                await browser.close()
        await s.call("POST", f"/api/stocktakes/{rsid}/confirm", json={"by": "li.na"})
        assert await s.book() == {COLA: 9, WATER: 6, NOODLES: 19, CRACKERS: 12}
        assert (await s.call("GET", "/api/stocktakes/scanners"))["scanners"] == [
            {"scanner_id": "hh1", "session_id": None}
        ]

        # 3. The hub holds the receipt and both stocktakes.

        async def hub_has_all() -> bool:
            return (
                len(s.hub_events(EventType.STOCKTAKE_COMPLETED)) == 2
                and len(s.hub_events(EventType.STOCK_RECEIVED)) == 1
            )

        await eventually(hub_has_all, 30, "stock.received and two stocktake.completed at the hub")
        done = {e["area"]: e["book_deltas"] for e in s.hub_events(EventType.STOCKTAKE_COMPLETED)}
        assert done == {"R": {COLA: -1}, "T": {NOODLES: -1}}
        (received,) = s.hub_events(EventType.STOCK_RECEIVED)
        assert received["receipt_id"] == rid
        assert {t["gtin"]: t["qty"] for t in received["totals"]} == {
            COLA: 10,
            WATER: 6,
            NOODLES: 20,
            CRACKERS: 12,
        }
