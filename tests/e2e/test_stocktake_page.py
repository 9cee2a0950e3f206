"""The stocktake/receiving page (`/stocktake`) on a phone, driven in headless Chromium against the real app.

What is real: `edge/web/stocktake.*` in Debian's Chromium, `edge.api.create_app` on uvicorn (127.0.0.1, port 0),
`edge.stocktakes.StockDesk` on a real SQLite `GatewayStore` (book stock, outbox), the store config and the
project's catalogue. What is not: the gateway runtime behind `create_app` (`BoardGateway`, see
tests/e2e/board_gateway.py) — the handheld-scanner path through the real runtime is
tests/integration/test_stocktake.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, ViewportSize, async_playwright, expect
from stdnum import ean

from cloud_bridge.contract import EventType, StockReceived, StocktakeCompleted
from edge import bookstock
from edge.api import ApiServer, create_app
from edge.config import load_config
from edge.stocktakes import StockDesk
from edge.store import GatewayStore
from tests.e2e.board_gateway import BoardGateway

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
PHONE: ViewportSize = {"width": 390, "height": 844}
WAIT_MS = 10_000
"""Generous bound for anything the page must show: only there so a broken page fails instead of hanging."""
CATALOGUE = Path(__file__).resolve().parents[2] / "config" / "catalogue.yaml"

COLA = "06901234567892"
WATER = "06902083886417"
NOODLES = "06920202888883"
CRACKERS = "06921168509256"
PALLET = "06901234000000001" + ean.calc_check_digit("06901234000000001")

STORE_YAML = f"""\
    store_id: sh-test-02
    data_dir: data
    catalogue: {CATALOGUE}
    buses:
      - {{id: tcp1, kind: tcp, host: 127.0.0.1, port: 5020}}
    transmitters:
      - {{id: tx1, bus: tcp1, unit_id: 1, profile: wt-int32-abcd}}
    scanners:
      - {{id: hh1, port: /dev/shelfgate/hh1, role: handheld}}
    bins:
      - {{id: A01, sku: "{COLA}", name: {{zh: 可口可乐, en: Cola}}, unit_weight_g: 350, safety_stock: 4,
          max_stock: 12, device: tx1, channel: 0}}
      - {{id: A02, sku: "{WATER}", name: {{zh: 农夫山泉, en: Water}}, unit_weight_g: 570, safety_stock: 4,
          max_stock: 12, device: tx1, channel: 1}}
      - {{id: B01, sku: "{NOODLES}", name: {{zh: 牛肉面, en: Noodles}}, unit_weight_g: 120, safety_stock: 4,
          max_stock: 24, device: tx1, channel: 2}}
    """


@dataclass
class Live:
    """A running page backend."""

    desk: StockDesk
    store: GatewayStore
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stocktake"

    async def book(self) -> dict[str, Decimal]:
        return await self.store.transact(bookstock.book_stock)

    async def outbox(self) -> list[tuple[str, dict[str, Any]]]:
        return [(r.event_type, r.data) for r in await self.store.peek(100)]


@pytest_asyncio.fixture(loop_scope="module")
async def live(tmp_path: Path) -> AsyncIterator[Live]:
    cfg_file = tmp_path / "store.yaml"
    cfg_file.write_text(textwrap.dedent(STORE_YAML), encoding="utf-8")
    config = load_config(cfg_file)
    async with GatewayStore(config.store.data_dir / "gateway.db") as store:
        gw = BoardGateway(config, store)
        desk = StockDesk(
            store, gw.bins, config.catalogue, config.store.scanners, publish=gw.alerts_stream.publish
        )
        gw.stock = desk  # type: ignore[attr-defined]  # what Gateway.__init__ builds
        await desk.start()

        def seed(conn: Any) -> None:
            bookstock.apply_deltas(conn, {COLA: 10, WATER: 4}, cause="adjustment", ref="seed", ts=1.0)

        await store.transact(seed)
        server = ApiServer(create_app(gw), "127.0.0.1", 0)  # type: ignore[arg-type]  # BoardGateway stands in
        task = asyncio.create_task(server.serve(), name="api")
        try:
            yield Live(desk, store, await server.started())
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
    context = await browser.new_context(locale=locale, viewport=PHONE, has_touch=True)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda d: asyncio.ensure_future(d.accept()))  # "confirm?" prompts: staff say yes
    await page.goto(url)
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    return context, page, errors


def _row(page: Page, sku: str) -> Any:
    return page.locator(f'#progress-body tr[data-sku="{sku}"]')


async def test_zh_phone_counts_an_area_sees_live_progress_and_confirms(live: Live, browser: Browser) -> None:
    context, page, errors = await _open(browser, live.url, "zh-CN")
    try:
        await expect(page.locator("h1")).to_have_text("盘点与收货")
        await page.fill("#staff", "li.na")
        await page.fill("#area", "A")
        await page.click("#start")
        await expect(page.locator("#s-area")).to_have_text("A", timeout=WAIT_MS)
        await expect(page.locator("#s-status")).to_have_text("进行中")
        await expect(_row(page, COLA).locator(".expected")).to_have_text("10")
        await expect(_row(page, COLA)).to_contain_text("可口可乐 330毫升罐装")

        # Typed codes (EAN-13), one with a number; then a GS1-128 HRI with AI 30.
        for _ in range(3):
            await page.fill("#code", COLA[1:])
            await page.press("#code", "Enter")
            await expect(_row(page, COLA).locator(".counted")).not_to_have_text("0", timeout=WAIT_MS)
        await expect(_row(page, COLA).locator(".counted")).to_have_text("3", timeout=WAIT_MS)
        await page.fill("#code", f"(01){COLA}(30)6")
        await page.click("#count")
        await expect(_row(page, COLA).locator(".counted")).to_have_text("9", timeout=WAIT_MS)
        await page.fill("#code", WATER)
        await page.fill("#qty", "5")
        await page.click("#count")
        await expect(_row(page, WATER).locator(".counted")).to_have_text("5", timeout=WAIT_MS)

        # A count from elsewhere (a handheld scanner's path into the same service) shows up live.
        session_id = next(iter(live.desk.stocktakes.board.sessions))
        await live.desk.stocktakes.count(session_id, NOODLES, scan_id="hh1:x:1", source="hh1")
        await expect(_row(page, NOODLES).locator(".counted")).to_have_text("1", timeout=WAIT_MS)
        await expect(_row(page, NOODLES).locator(".expected")).to_have_text("0")

        # A refused code is explained, not counted.
        await page.fill("#code", "12345")
        await page.click("#count")
        await expect(page.locator("#toast")).to_contain_text("操作失败", timeout=WAIT_MS)

        await page.click("#show-variance")
        cola = page.locator(f'#variance-body tr[data-sku="{COLA}"]')
        await expect(cola.locator(".variance")).to_have_text("-1", timeout=WAIT_MS)
        await expect(cola.locator(".value")).to_have_text("-3.00")
        await expect(page.locator("#variance-total")).to_have_text("短缺 1 件 · 盈余 2 件 · 金额差异 3.50 元")
        assert await page.get_attribute("#csv", "href") == f"/api/stocktakes/{session_id}/variance.csv"

        await page.click("#confirm")
        await expect(page.locator("#s-status")).to_have_text("已确认", timeout=WAIT_MS)
        assert await live.book() == {COLA: Decimal(9), WATER: Decimal(5), NOODLES: Decimal(1)}
        events = [(t, d) for t, d in await live.outbox() if t == EventType.STOCKTAKE_COMPLETED]
        assert len(events) == 1
        payload = StocktakeCompleted.model_validate(events[0][1])
        assert (payload.session_id, payload.by) == (session_id, "li.na")
        assert payload.book_deltas == {COLA: -1, WATER: 1, NOODLES: 1}
        widths = await page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1], "no horizontal scrolling on a phone"
        assert errors == [], errors
    finally:
        await context.close()


async def test_en_phone_receives_a_delivery_with_a_note_and_commits(
    live: Live, browser: Browser, tmp_path: Path
) -> None:
    context, page, errors = await _open(browser, live.url + "#receiving", "en-US")
    try:
        await expect(page.locator("#tab-receiving")).to_have_text("Receiving")
        await page.click("#rc-start")
        await expect(page.locator("#r-status")).to_have_text("open", timeout=WAIT_MS)
        note = tmp_path / "dn-42.csv"
        note.write_text(f"sscc,gtin,qty\n{PALLET},{COLA},48\n{PALLET},{WATER},24\n", encoding="utf-8")
        await page.set_input_files("#rc-note", str(note))
        await expect(page.locator("#r-note")).to_have_text("Loaded dn-42.csv (1 pallets)", timeout=WAIT_MS)
        await page.fill("#rc-code", f"(00){PALLET}")
        await page.press("#rc-code", "Enter")
        await expect(page.locator(f'#rc-totals-body tr[data-gtin="{COLA}"] .qty')).to_have_text(
            "48", timeout=WAIT_MS
        )
        await page.fill("#rc-code", f"(02){CRACKERS}(37)12")
        await page.press("#rc-code", "Enter")
        await expect(page.locator(f'#rc-totals-body tr[data-gtin="{CRACKERS}"] .qty')).to_have_text(
            "12", timeout=WAIT_MS
        )
        await page.fill("#rc-code", f"(00){PALLET}")  # the same pallet again: refused with the reason
        await page.press("#rc-code", "Enter")
        await expect(page.locator("#toast")).to_contain_text("already received", timeout=WAIT_MS)
        before = await live.book()
        await page.click("#rc-commit")
        await expect(page.locator("#r-status")).to_have_text("committed", timeout=WAIT_MS)
        after = await live.book()
        assert after[COLA] - before.get(COLA, Decimal(0)) == 48
        assert after[WATER] - before.get(WATER, Decimal(0)) == 24
        assert after[CRACKERS] - before.get(CRACKERS, Decimal(0)) == 12
        received = [
            StockReceived.model_validate(d) for t, d in await live.outbox() if t == EventType.STOCK_RECEIVED
        ]
        assert [(r.delivery_note, sorted((x.gtin, x.qty) for x in r.totals)) for r in received] == [
            ("dn-42.csv", sorted([(COLA, 48), (WATER, 24), (CRACKERS, 12)]))
        ]
        widths = await page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1], "no horizontal scrolling on a phone"
        assert errors == [], errors
    finally:
        await context.close()
