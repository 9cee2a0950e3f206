"""The cashier page (`/lane`) in headless Chromium against the real gateway: a barcode scanner simulator and an
MT-SICS scale simulator on pty null modems, the real lane service and SQLite store, uvicorn on 127.0.0.1.

The cashier signs in and types a code; the lane scanner scans another item, which appears live (SSE); the
cashier completes, and the sale is in the gateway's outbox. Chinese is asserted through the DOM (headless
Chromium here has no CJK font). Waits are hang guards only.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from playwright.async_api import async_playwright, expect

from cloud_bridge.contract import EventType
from edge.config import load_config
from edge.gateway import Gateway
from firmware_sims.runner import SimStore
from shelfgate.demo import layout_from_config, point_config_at
from tests.e2e.test_board import CHROMIUM, CHROMIUM_ARGS
from tests.integration.test_lane import PROJECT, STORE_YAML

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

WAIT_MS = 15_000


@asynccontextmanager
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[Gateway, SimStore]]:
    cfg_file = tmp_path / "store.yaml"
    cfg_file.write_text(STORE_YAML.format(catalogue=PROJECT / "config" / "catalogue.yaml"), encoding="utf-8")
    base = load_config(cfg_file)
    async with SimStore(layout_from_config(base, seed=5), run_scenario=False) as sim:
        cfg = point_config_at(
            base,
            dict(sim.endpoints),
            broker=("127.0.0.1", 1),
            api_port=0,
            data_dir=tmp_path / "gw",
            device_ports=sim.device_endpoints,
        )
        cfg = dataclasses.replace(cfg, catalogue=base.catalogue)
        ready = asyncio.Event()
        gw = Gateway(cfg, on_ready=lambda _g: ready.set())
        task = asyncio.create_task(gw.run(uplink=False), name="lane-page.gateway")
        try:
            async with asyncio.timeout(60):
                await ready.wait()
            yield gw, sim
        finally:
            task.cancel()
            for r in await asyncio.gather(task, return_exceptions=True):
                if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                    raise r


async def test_cashier_page_rings_up_and_completes_a_sale(tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install the Debian package `chromium` (scripts/test does)")
    async with gateway(tmp_path) as (gw, sim), async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(locale="zh-CN", viewport={"width": 1024, "height": 768})
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"http://127.0.0.1:{gw.api_port}/lane")
            await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
            await expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
            await expect(page.locator("#lane-id")).to_have_text("lane1")
            await expect(page.locator("#complete")).to_have_text("完成结账")

            # Scanning before a cashier signed in is refused, with the reason.
            await page.fill("#scan-code", "6901234567892")
            await page.press("#scan-code", "Enter")
            await expect(page.locator("#error")).to_contain_text("no cashier signed in", timeout=WAIT_MS)

            await page.fill("#cashier-id", "c7")
            await page.click("#cashier-form button[type=submit]")
            await expect(page.locator("#cashier-line")).to_have_text("收银员：c7", timeout=WAIT_MS)
            await expect(page.locator("#error")).to_be_hidden()

            # A typed code, then the lane scanner's own scan arriving live.
            await page.fill("#scan-code", "6901234567892")
            await page.press("#scan-code", "Enter")
            await expect(page.locator("#lines tr")).to_have_count(1, timeout=WAIT_MS)
            await expect(page.locator("#lines tr").first).to_contain_text("可口可乐")
            await sim.scanners["scan-lane1"].scan("6920202888883", "]E0")
            await expect(page.locator("#lines tr")).to_have_count(2, timeout=WAIT_MS)
            await expect(page.locator("#total")).to_have_text("¥7.50")

            # An unknown code is refused and shown; the sale is unchanged.
            await page.fill("#scan-code", "6900000000007")
            await page.press("#scan-code", "Enter")
            await expect(page.locator("#error")).to_contain_text("unknown item", timeout=WAIT_MS)
            await expect(page.locator("#lines tr")).to_have_count(2)

            await page.click("#lang-toggle")
            await expect(page.locator("#complete")).to_have_text("Complete")
            await page.click("#complete")
            await expect(page.locator("#tx-status")).to_have_text("sale · completed", timeout=WAIT_MS)
            await expect(page.locator("#complete")).to_be_disabled()
            assert errors == [], errors
            await context.close()
        finally:
            await browser.close()
        rows = [r for r in await gw.store.peek(100) if r.event_type == EventType.SALE_COMPLETED]
        assert [(r.data["total"], r.data["cashier"], len(r.data["items"])) for r in rows] == [
            ("7.50", "c7", 2)
        ]
