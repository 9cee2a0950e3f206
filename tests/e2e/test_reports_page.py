"""The reports page (`/reports`) on a tablet, driven in headless Chromium against the real app.

What is real: `edge/web/reports.*` in Debian's Chromium, `edge.api.create_app` on uvicorn (127.0.0.1, port 0),
a real SQLite `GatewayStore` with book stock moved through `edge.bookstock`. What is not: the gateway runtime
behind `create_app` (`BoardGateway`, tests/e2e/board_gateway.py: shelf counts are set, not weighed). The
report numbers themselves are checked exactly in tests/edge/test_reports_api.py; here: the page shows them,
in both languages, follows the shelves live, and downloads the CSV.
"""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, ViewportSize, async_playwright, expect

from cloud_bridge.contract import rfc3339
from edge import bookstock
from edge.api import ApiServer, create_app
from edge.config import load_config
from edge.store import AlertRow, GatewayStore
from tests.e2e.board_gateway import BoardGateway

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
TABLET: ViewportSize = {"width": 820, "height": 1180}
WAIT_MS = 10_000
"""Generous bound for anything the page must show: only there so a broken page fails instead of hanging."""
CATALOGUE = Path(__file__).resolve().parents[2] / "config" / "catalogue.yaml"

COLA = "06901234567892"
WATER = "06902083886417"

STORE_YAML = f"""\
    store_id: sh-test-03
    data_dir: data
    catalogue: {CATALOGUE}
    buses:
      - {{id: tcp1, kind: tcp, host: 127.0.0.1, port: 5020}}
    transmitters:
      - {{id: tx1, bus: tcp1, unit_id: 1, profile: wt-int32-abcd}}
    bins:
      - {{id: A01, sku: "{COLA}", name: {{zh: 可口可乐, en: Cola}}, location: aisle 1, unit_weight_g: 350,
          safety_stock: 4, max_stock: 12, device: tx1, channel: 0}}
      - {{id: B03, sku: "{COLA}", name: {{zh: 可口可乐, en: Cola}}, location: aisle 2, unit_weight_g: 350,
          safety_stock: 4, max_stock: 12, device: tx1, channel: 1}}
      - {{id: C01, sku: "{COLA}", name: {{zh: 可口可乐, en: Cola}}, location: end cap, unit_weight_g: 350,
          safety_stock: 4, max_stock: 12, device: tx1, channel: 2}}
      - {{id: A02, sku: "{WATER}", name: {{zh: 农夫山泉, en: Water}}, location: aisle 1, unit_weight_g: 570,
          safety_stock: 4, max_stock: 12, device: tx1, channel: 3}}
    """


@dataclass
class Live:
    """A running page backend."""

    gw: BoardGateway
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/reports"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def live(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Live]:
    tmp = tmp_path_factory.mktemp("reports-page")
    cfg_file = tmp / "store.yaml"
    cfg_file.write_text(textwrap.dedent(STORE_YAML), encoding="utf-8")
    config = load_config(cfg_file)
    async with GatewayStore(config.store.data_dir / "gateway.db") as store:
        gw = BoardGateway(config, store)

        def seed(conn: Any) -> None:
            bookstock.ensure_schema(conn)
            bookstock.apply_deltas(conn, {COLA: 30, WATER: 20}, cause="received", ref="r-1", ts=1.0)

        await store.transact(seed)
        for bin_id, count in {"A01": 2, "B03": 3, "C01": 10, "A02": 8}.items():
            await gw.set_count(bin_id, count, publish=False)
        raised = time.time() - 3600
        acked = AlertRow(
            alert_id="a1",
            bin_id="A01",
            sku=COLA,
            kind="low",
            state="resolved",
            count=2,
            message="low",
            raised_at=rfc3339(raised),
            updated_at=rfc3339(raised + 600),
            acknowledged_by="li.na",
            acknowledged_at=rfc3339(raised + 90),
            resolved_at=rfc3339(raised + 600),
        )
        await store.record(alerts=[acked])
        server = ApiServer(create_app(gw), "127.0.0.1", 0)  # type: ignore[arg-type]  # BoardGateway stands in
        task = asyncio.create_task(server.serve(), name="api")
        try:
            yield Live(gw, await server.started())
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest.fixture(scope="module")
def chromium() -> Path:
    """Debian's Chromium. Never a downloaded browser: scripts/test installs the package when it is missing."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install the Debian package `chromium` (scripts/test does)")
    return CHROMIUM


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


async def _open(browser: Browser, url: str, locale: str) -> tuple[BrowserContext, Page, list[str]]:
    context = await browser.new_context(locale=locale, viewport=TABLET, has_touch=True, accept_downloads=True)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(url)
    return context, page, errors


def _bin(page: Page, bin_id: str) -> Any:
    return page.locator(f'#replenishment-body tr[data-bin="{bin_id}"]')


async def test_zh_replenishment_back_room_then_en_and_csv(
    live: Live, browser: Browser, tmp_path: Path
) -> None:
    context, page, errors = await _open(browser, live.url, "zh-CN")
    try:
        await expect(page.locator("h1")).to_have_text("门店报表")
        await expect(page.locator("#tab-replenishment")).to_have_text("补货清单")
        # Cola: book 30 − shelves (2 + 3 + 10) = 15 in the back room; A01 (2 of 12) brings 10, B03 the other 5.
        a01 = _bin(page, "A01")
        await expect(a01.locator(".back-room")).to_have_text("15", timeout=WAIT_MS)
        await expect(a01.locator(".bring")).to_have_text("10")
        await expect(a01.locator(".short")).to_have_text("0")
        await expect(a01.locator(".product")).to_have_text("可口可乐")
        await expect(_bin(page, "B03").locator(".bring")).to_have_text("5")
        await expect(_bin(page, "B03").locator(".short")).to_have_text("4")
        await expect(page.locator("#replenishment-body tr")).to_have_count(
            2
        )  # water (8) and C01 (10) are fine
        await expect(page.locator("#replenishment-body tr").first).to_have_attribute("data-bin", "A01")

        # The shelf is refilled (a count change on the stream): A01 leaves the list, B03 gets the back room.
        await live.gw.set_count("A01", 5)
        await expect(page.locator("#replenishment-body tr")).to_have_count(1, timeout=WAIT_MS)
        await expect(_bin(page, "B03").locator(".back-room")).to_have_text("12")
        await expect(_bin(page, "B03").locator(".bring")).to_have_text("9")

        await page.click("#lang-toggle")
        await expect(page.locator("h1")).to_have_text("Store reports")
        await expect(page.locator("#tab-replenishment")).to_have_text("Replenishment")
        await expect(page.locator("#pane-replenishment th").nth(5)).to_have_text("Back room")
        await expect(_bin(page, "B03").locator(".product")).to_have_text("Cola")
        assert await page.evaluate("document.documentElement.lang") == "en"

        async with page.expect_download() as info:
            await page.click("#csv-replenishment")
        download = await info.value
        target = tmp_path / "replenishment.csv"
        await download.save_as(target)
        raw = target.read_bytes()
        assert raw.startswith(b"\xef\xbb\xbf"), "UTF-8 BOM for Excel"
        lines = raw.decode("utf-8-sig").split("\r\n")
        assert lines[0].startswith(
            "bin_id,sku,name_zh,name_en,location,shelf_count,safety_stock,max_stock,need,"
        )
        assert lines[1] == f"B03,{COLA},可口可乐,Cola,aisle 2,3,4,12,9,12,9,0,false"
        assert lines[2:] == [""]

        # The manager tabs render in the same language (no sales: every product is class C).
        await page.click("#tab-abc")
        await expect(page.locator(f'#abc-body tr[data-sku="{COLA}"] .class')).to_have_text(
            "C", timeout=WAIT_MS
        )
        assert await page.get_attribute("#csv-abc", "href") == "/api/reports/abc.csv?by=value&days=30"
        await expect(page.locator(f'#abc-body tr[data-sku="{COLA}"] .metric')).to_have_text("0.00")
        await page.click("#tab-staff")
        # No `shifts:` in this store: one shift, `all`. Acknowledged after 1:30, resolved after 10:00.
        shift = page.locator('#staff-shift-body tr[data-group="all"]')
        await expect(shift.locator(".ack-median")).to_have_text("1:30", timeout=WAIT_MS)
        await expect(shift.locator(".resolve-p90")).to_have_text("10:00")
        await expect(page.locator('#staff-member-body tr[data-group="li.na"] .acked')).to_have_text("1")
        await expect(page.locator("#pane-staff h2").first).to_have_text("Per shift")
        widths = await page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1], "no horizontal scrolling of the page"
        assert errors == [], errors
    finally:
        await context.close()
