"""The staff alert board, driven in headless Chromium against the real API app, uvicorn and SQLite store.

What is real: `edge/web/board.*` in Debian's Chromium (Playwright drives it; no downloaded browser),
`edge.api.create_app` served by `edge.api.ApiServer` (uvicorn, port 0 on 127.0.0.1), `edge.store.GatewayStore`
on a SQLite file, the store config loaded by `edge.config.load_config`. What is not (yet): the gateway runtime
behind `create_app` — see `tests/e2e/board_gateway.py` for what `BoardGateway` stands in for.
"""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from fastapi import FastAPI
from playwright.async_api import Browser, BrowserContext, Page, ViewportSize, async_playwright, expect

from edge.api import ApiServer, create_app
from edge.config import load_config
from edge.store import GatewayStore
from tests.e2e.board_gateway import BoardGateway

# One event loop for the module so one Chromium serves every test; each test gets its own context and server.
pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PHONE: ViewportSize = {"width": 390, "height": 844}
WAIT_MS = 10_000
"""Generous bound for anything the page must show: only there so a broken page fails instead of hanging."""

STORE_YAML = """\
    store_id: sh-test-01
    data_dir: data
    buses:
      - {id: tcp1, kind: tcp, host: 127.0.0.1, port: 5020}
    transmitters:
      - {id: tx1, bus: tcp1, unit_id: 1, profile: wt-int32-abcd}
    bins:
      - id: A01
        sku: "06901234567892"
        name: {zh: 可口可乐 330毫升罐装, en: "Coca-Cola 330 ml can"}
        unit_weight_g: 350
        safety_stock: 4
        max_stock: 12
        device: tx1
        channel: 0
        location: "A区 1层"
      - id: A02
        sku: "06902083886417"
        name: {zh: 农夫山泉 550毫升, en: "Nongfu Spring 550 ml"}
        unit_weight_g: 570
        safety_stock: 4
        max_stock: 12
        device: tx1
        channel: 1
        location: "A区 1层"
      - id: A03
        sku: "06920202888883"
        name: {zh: 康师傅红烧牛肉面, en: "Master Kong beef noodles"}
        unit_weight_g: 120
        safety_stock: 6
        max_stock: 24
        device: tx1
        channel: 2
        location: "A区 2层"
      - id: B01
        sku: "06921168509256"
        name: {zh: 旺旺雪饼 84克, en: "Want Want rice crackers 84 g"}
        unit_weight_g: 92
        safety_stock: 6
        max_stock: 24
        device: tx1
        channel: 3
        location: "B区 1层"
    """
START_COUNTS = {"A01": 0, "A02": 2, "A03": 10, "B01": 30}


class LiveApi:
    """The real app on real uvicorn; `stop()`/`start()` keep the port, like a gateway restart."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.port = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """Base URL of the board server."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen on 127.0.0.1 (a free port the first time, the same one after)."""
        server = ApiServer(self.app, "127.0.0.1", self.port)
        self._task = asyncio.create_task(server.serve(), name="api")
        self.port = await server.started()

    async def stop(self) -> None:
        """Shut the server down (open streams are cut, as in a restart)."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None


@dataclass
class Board:
    """A running board backend: the gateway seam, its store and the HTTP server."""

    gateway: BoardGateway
    store: GatewayStore
    api: LiveApi

    @property
    def url(self) -> str:
        """The board page."""
        return f"{self.api.url}/board"


@pytest_asyncio.fixture(loop_scope="module")
async def board(tmp_path: Path) -> AsyncIterator[Board]:
    """A store with four bins, two active alerts (out on A01 5 min ago, low on A02 2 min ago), served live."""
    cfg_file = tmp_path / "store.yaml"
    cfg_file.write_text(textwrap.dedent(STORE_YAML), encoding="utf-8")
    config = load_config(cfg_file)
    async with GatewayStore(config.store.data_dir / "gateway.db") as store:
        gw = BoardGateway(config, store)
        for bin_id, count in START_COUNTS.items():
            await gw.set_count(bin_id, count, publish=False)
        await gw.raise_alert("A02", "low", raised_ago_s=120, publish=False)
        await gw.raise_alert("A01", "out", raised_ago_s=300, publish=False)
        api = LiveApi(create_app(gw))  # type: ignore[arg-type]  # BoardGateway stands in for Gateway
        await api.start()
        try:
            yield Board(gw, store, api)
        finally:
            await api.stop()


@pytest.fixture(scope="module")
def chromium() -> Path:
    """Debian's Chromium. Never a downloaded browser: scripts/test installs the package when it is missing."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install the Debian package `chromium` (scripts/test does)")
    return CHROMIUM


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    """One headless Chromium for the module; tests isolate themselves with fresh contexts."""
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


async def _open(browser: Browser, url: str, locale: str) -> tuple[BrowserContext, Page]:
    context = await browser.new_context(locale=locale, viewport=PHONE, device_scale_factor=2, has_touch=True)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(url)
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    assert errors == [], errors
    return context, page


async def _alert_kinds(page: Page) -> list[str | None]:
    cards = page.locator("#alerts li.card:not(.leaving)")
    return [await cards.nth(i).get_attribute("data-kind") for i in range(await cards.count())]


async def _no_horizontal_scroll(page: Page) -> None:
    widths = await page.evaluate(
        "() => [document.documentElement.scrollWidth, window.innerWidth]",
    )
    assert widths[0] <= widths[1], f"page is {widths[0]} px wide in a {widths[1]} px viewport"


async def test_zh_board_shows_live_alerts_and_acknowledges(board: Board, browser: Browser) -> None:
    """zh-CN phone: Chinese labels, urgency order, live alert, acknowledge with a name, resolved fades out."""
    context, page = await _open(browser, board.url, "zh-CN")
    try:
        assert await page.evaluate("document.documentElement.lang") == "zh-CN"
        await expect(page.locator("h1")).to_have_text("货架告警")
        await expect(page.locator("#conn")).to_have_text("实时")
        await expect(page.locator("#alert-count")).to_have_text("2")
        assert await _alert_kinds(page) == ["out", "low"]  # out before low, whatever the age

        out_id = next(a for a in board.gateway.rules.active() if a.kind == "out").alert_id
        out_card = page.locator(f'li.card[data-alert-id="{out_id}"]')
        await expect(out_card.locator(".kind")).to_have_text("缺货")
        await expect(out_card.locator(".state")).to_have_text("待处理")
        await expect(out_card.locator(".name")).to_have_text("可口可乐 330毫升罐装")
        await expect(out_card.locator(".where")).to_have_text("A区 1层 · A01")
        await expect(out_card.locator(".qty")).to_have_text("现有 0 · 安全库存 4")
        await expect(out_card.locator(".raised")).to_have_text("5分钟前发出")
        await expect(page.locator('#stock-body tr[data-bin-id="A02"] .level-badge')).to_have_text("低库存")
        await expect(page.locator('#stock-body tr[data-bin-id="B01"] .level-badge')).to_have_text("超储")

        # A new alert arrives over SSE and is placed by urgency, without a reload.
        await page.evaluate("window.__sameDocument = true")
        fault = await board.gateway.raise_alert("A03", "sensor_fault", raised_ago_s=5)
        fault_card = page.locator(f'li.card[data-alert-id="{fault.alert_id}"]')
        await expect(fault_card.locator(".kind")).to_have_text("传感器故障", timeout=WAIT_MS)
        await expect(fault_card.locator(".raised")).to_have_text("刚刚发出")
        await expect(page.locator("#alert-count")).to_have_text("3")
        assert await _alert_kinds(page) == ["out", "low", "sensor_fault"]
        assert await page.evaluate("window.__sameDocument === true")

        # Acknowledge: the page asks for the staff name once, POSTs, and the card shows who acknowledged.
        await out_card.get_by_role("button", name="确认告警：可口可乐 330毫升罐装").click()
        dialog = page.locator("#staff-dialog")
        await expect(dialog).to_be_visible()
        await expect(dialog.locator("h2")).to_have_text("请输入您的姓名")
        await dialog.get_by_role("textbox", name="姓名").fill("王芳")
        await dialog.get_by_role("button", name="确定").click()
        await expect(out_card).to_have_attribute("data-state", "acknowledged", timeout=WAIT_MS)
        await expect(out_card.locator(".state")).to_have_text("已确认")
        await expect(out_card.locator(".acked")).to_have_text(" · 王芳 已确认")
        await expect(out_card.get_by_role("button")).to_be_hidden()
        assert board.gateway.acks == [(out_id, "王芳")]
        stored = await board.store.alert(out_id)
        assert stored is not None
        assert (stored.state, stored.acknowledged_by) == ("acknowledged", "王芳")

        # The name is remembered: the second acknowledgement does not ask again.
        low_id = next(a for a in board.gateway.rules.active() if a.kind == "low").alert_id
        low_card = page.locator(f'li.card[data-alert-id="{low_id}"]')
        await low_card.get_by_role("button").click()
        await expect(low_card).to_have_attribute("data-state", "acknowledged", timeout=WAIT_MS)
        await expect(dialog).to_be_hidden()
        assert board.gateway.acks[-1] == (low_id, "王芳")
        await expect(page.locator("#staff-line")).to_have_text("当前员工：王芳")

        # Resolved: the card leaves the active list.
        await board.gateway.resolve(low_id)
        await expect(low_card).to_have_count(0, timeout=WAIT_MS)
        await expect(page.locator("#alert-count")).to_have_text("2")

        # Stock changes stream in too.
        await board.gateway.set_count("A03", 0)
        a03 = page.locator('#stock-body tr[data-bin-id="A03"]')
        await expect(a03).to_have_attribute("data-level", "out", timeout=WAIT_MS)
        await expect(a03.locator(".level-badge")).to_have_text("缺货")
        await expect(a03.locator(".qty-count")).to_have_text("0")

        await _no_horizontal_scroll(page)
        await page.screenshot(path="/tmp/board-zh.png", full_page=True)
    finally:
        await context.close()


async def test_language_toggle_switches_labels_and_is_remembered(board: Board, browser: Browser) -> None:
    """中文 → English switches every label and `lang`, survives a reload; en-US starts in English."""
    context, page = await _open(browser, board.url, "zh-CN")
    try:
        toggle = page.locator("#lang-toggle")
        await expect(toggle).to_have_text("English")
        await toggle.click()
        assert await page.evaluate("document.documentElement.lang") == "en"
        await expect(page.locator("h1")).to_have_text("Shelf alerts")
        await expect(toggle).to_have_text("中文")
        await expect(page.locator("#conn")).to_have_text("Live")
        await expect(page.locator("#alerts-h")).to_contain_text("Active alerts")
        await expect(page.locator("#stock-h")).to_have_text("Shelf stock")
        out_card = page.locator('li.card[data-kind="out"]')
        await expect(out_card.locator(".kind")).to_have_text("Out of stock")
        await expect(out_card.locator(".state")).to_have_text("Open")
        await expect(out_card.locator(".name")).to_have_text("Coca-Cola 330 ml can")
        await expect(out_card.locator(".qty")).to_have_text("0 on shelf · safety stock 4")
        await expect(out_card.locator(".raised")).to_have_text("raised 5 minutes ago")
        await expect(out_card.get_by_role("button")).to_have_text("Acknowledge")
        await expect(page.locator('#stock-body tr[data-bin-id="A02"] .level-badge')).to_have_text("Low")
        assert await page.title() == "Shelf alerts"

        await page.reload()
        await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
        await expect(page.locator("h1")).to_have_text("Shelf alerts")
        await _no_horizontal_scroll(page)
        await page.screenshot(path="/tmp/board-en.png", full_page=True)

        await toggle.click()
        await expect(page.locator("h1")).to_have_text("货架告警")
        assert await page.evaluate("document.documentElement.lang") == "zh-CN"
    finally:
        await context.close()

    context, page = await _open(browser, board.url, "en-US")
    try:
        await expect(page.locator("h1")).to_have_text("Shelf alerts")
    finally:
        await context.close()


async def test_reconnect_refetches_what_the_stream_missed(board: Board, browser: Browser) -> None:
    """Gateway restart: the indicator shows reconnecting, then live; the page re-reads alerts and stock."""
    context, page = await _open(browser, board.url, "zh-CN")
    try:
        await expect(page.locator("#alert-count")).to_have_text("2")
        out_id = next(a for a in board.gateway.rules.active() if a.kind == "out").alert_id

        await board.api.stop()
        await expect(page.locator("#conn")).to_have_attribute("data-state", "reconnecting", timeout=WAIT_MS)
        await expect(page.locator("#conn")).to_have_text("重新连接中…")

        # While the page is cut off: A01 refilled (alert resolved), B01 ran out (new alert). Nobody listens.
        await board.gateway.set_count("A01", 8)
        await board.gateway.resolve(out_id)
        await board.gateway.set_count("B01", 0)
        new = await board.gateway.raise_alert("B01", "out", raised_ago_s=1)

        await board.api.start()
        await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
        await expect(page.locator(f'li.card[data-alert-id="{out_id}"]')).to_have_count(0, timeout=WAIT_MS)
        new_card = page.locator(f'li.card[data-alert-id="{new.alert_id}"]')
        await expect(new_card.locator(".name")).to_have_text("旺旺雪饼 84克", timeout=WAIT_MS)
        assert await _alert_kinds(page) == ["out", "low"]
        await expect(page.locator('#stock-body tr[data-bin-id="A01"]')).to_have_attribute("data-level", "ok")
        await expect(page.locator('#stock-body tr[data-bin-id="B01"]')).to_have_attribute("data-level", "out")
    finally:
        await context.close()
