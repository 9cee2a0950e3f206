"""The HQ dashboard, driven in headless Chromium against a real hub fed by two simulated stores over MQTT.

What is real: `hub/web/hq.*` in Debian's Chromium (Playwright drives it; no downloaded browser), the whole hub
(`hub.service.run_hub`: ingest, fleet evaluator, uvicorn on a free loopback port, a SQLite file), a private
Mosquitto, and the stores' traffic — status (retained, with an MQTT will on a raw connection that the test
drops without DISCONNECT, exactly as a gateway losing power), heartbeats and event batches built with the
contract models. The offline alert threshold is configured in seconds (`fleet.offline_alert_after_s`).

The sales and members panels appear only when the hub offers those services. This hub does (a real sale
from s1 shows in the store's daily sales, and its member can be looked up); a hub that does not is played at
the browser's network seam (`page.route` answers 404 and an OpenAPI document without the members path).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, Route, ViewportSize, async_playwright, expect

from cloud_bridge.contract import (
    AlertState,
    DeviceHealth,
    Event,
    EventType,
    Heartbeat,
    SaleCompleted,
    SaleItem,
    Status,
    events_topic,
    health_topic,
    rfc3339,
    status_topic,
    utc_now,
)
from hub.config import ApiConfig, BrokerConfig, FleetConfig, HubConfig
from hub.service import run_hub
from shelfgate.broker import Mosquitto
from tests.e2e.test_board import CHROMIUM, CHROMIUM_ARGS
from tests.hub.fakes import SKU, alert_event, batch, connect_with_will, stock_event

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

LAPTOP: ViewportSize = {"width": 1366, "height": 900}
WAIT_MS = 20_000
"""Generous bound for anything the page must show: only there so a broken page fails instead of hanging."""
WAIT_S = WAIT_MS / 1000
OFFLINE_ALERT_AFTER_S = 2.0
POLL_MS = 400


@dataclass
class SimStore:
    """One store's gateway as the broker sees it: a raw connection holding the will, and a client publishing
    the birth, heartbeats and event batches (QoS 1, status retained)."""

    store_id: str
    broker: Mosquitto
    devices: list[DeviceHealth]
    version: str = "0.4.0"
    will: socket.socket | None = None
    boot: int = 0
    seq: int = 0
    published: list[str] = field(default_factory=list)

    @property
    def gateway_id(self) -> str:
        return f"{self.store_id}-gw"

    def _status(self, state: str) -> bytes:
        return Status(
            state="online" if state == "online" else "offline",
            gateway_id=self.gateway_id,
            boot_id=f"boot-{self.boot}",
            version=self.version,
            config_version="cfg-2026-11",
            ts=rfc3339(utc_now()),
        ).to_json()

    def _heartbeat(self, depth: int) -> bytes:
        return Heartbeat(
            gateway_id=self.gateway_id,
            boot_id=f"boot-{self.boot}",
            ts=rfc3339(utc_now()),
            uptime_s=321.0,
            cpu_pct=6.5,
            mem_rss_mb=61.0,
            disk_free_mb=12_000.0,
            temperature_c=49.0,
            outbox_depth=depth,
            outbox_oldest_age_s=2.5 if depth else None,
            last_seq=self.seq,
            devices=self.devices,
            active_alerts=0,
        ).to_json()

    async def connect(self, *, depth: int = 0, events: list[Any] | None = None) -> None:
        """What a gateway does on connect: register the will, publish the birth, its batches, a heartbeat."""
        self.boot += 1
        self.will = await asyncio.to_thread(
            connect_with_will,
            self.broker.host,
            self.broker.port,
            self.gateway_id,
            status_topic(self.store_id),
            self._status("offline"),
        )
        async with aiomqtt.Client(
            self.broker.host, self.broker.port, identifier=f"{self.gateway_id}-pub"
        ) as client:
            await client.publish(status_topic(self.store_id), self._status("online"), qos=1, retain=True)
            if events:
                self.seq = events[-1].seq
                await client.publish(
                    events_topic(self.store_id), batch(self.store_id, self.gateway_id, events), qos=1
                )
            await client.publish(health_topic(self.store_id), self._heartbeat(depth), qos=1)

    def lose_power(self) -> None:
        """Drop the connection without DISCONNECT: the broker publishes the retained will."""
        if self.will is not None:
            self.will.close()
            self.will = None


def _device(device_id: str, family: str, *, online: bool = True, **kinds: int) -> DeviceHealth:
    return DeviceHealth(
        device_id=device_id,
        online=online,
        last_seen_age_s=0.4 if online else 120.0,
        polls=5000,
        errors=sum(kinds.values()),
        last_error=None if online else "timeout: no reply within 0.20 s",
        family=family,
        connected=True,
        errors_by_kind=dict(kinds) if kinds else None,
    )


def sale_event(gateway_id: str, seq: int, transaction_id: str, member_id: str) -> Event:
    """A `sale.completed` of 2 × 3.50 + 1 × 18.00 CNY, completed now."""
    sale = SaleCompleted(
        transaction_id=transaction_id,
        lane="lane-1",
        cashier="c-07",
        member_id=member_id,
        items=[
            SaleItem(gtin=SKU, qty=2, unit_price=Decimal("3.50"), amount=Decimal("7.00")),
            SaleItem(gtin="06902083886417", qty=1, unit_price=Decimal("18.00"), amount=Decimal("18.00")),
        ],
        total=Decimal("25.00"),
        ts=rfc3339(utc_now()),
    )
    return Event(
        id=f"{gateway_id}:{seq}",
        seq=seq,
        type=EventType.SALE_COMPLETED,
        ts=sale.ts,
        data=sale.model_dump(mode="json"),
    )


@dataclass
class Fleet:
    url: str
    http: httpx.AsyncClient
    s1: SimStore
    s2: SimStore

    async def get(self, path: str) -> Any:
        response = await self.http.get(path)
        response.raise_for_status()
        return response.json()

    async def wait_for(self, what: str, check: Any) -> None:
        """Poll the hub API until `check()` holds; the ceiling only prevents a hang."""
        async with asyncio.timeout(WAIT_S):
            while True:  # the API is the only way to observe the hub: poll it
                if await check():
                    break
                await asyncio.sleep(0.1)
        assert await check(), what


@pytest_asyncio.fixture(loop_scope="module")
async def fleet(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[Fleet]:
    """A running hub and two connected stores: s1 with a Modbus transmitter down and three bins, s2 healthy."""
    config = HubConfig(
        hub_id="hq-e2e",
        database=f"sqlite:///{tmp_path / 'hub.sqlite3'}",
        broker=BrokerConfig(host=mosquitto.host, port=mosquitto.port, keepalive_s=10, reconnect_max_s=0.5),
        api=ApiConfig(host="127.0.0.1", port=0),
        heartbeat_s=60.0,  # one heartbeat per connect is enough: no store goes stale during a test
        fleet=FleetConfig(offline_alert_after_s=OFFLINE_ALERT_AFTER_S, evaluate_every_s=0.25),
    )
    ready = asyncio.Event()
    ports: list[int] = []
    task = asyncio.create_task(run_hub(config, ready=ready, api_port_out=ports), name="test.hq.hub")
    s1 = SimStore(
        "s1",
        mosquitto,
        [
            _device("wt-1", "modbus", timeouts=0, crc_errors=0),
            _device("wt-3", "modbus", online=False, timeouts=7, crc_errors=1),
            _device("scale-1", "scale", timeouts=0, garbage_lines=2),
        ],
    )
    s2 = SimStore("s2", mosquitto, [_device("wt-1", "modbus"), _device("rfid-1", "rfid")], version="0.4.1")
    try:
        async with asyncio.timeout(WAIT_S):
            waiter = asyncio.create_task(ready.wait(), name="test.hq.ready")
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        if task.done():
            task.result()
        url = f"http://127.0.0.1:{ports[0]}"
        async with httpx.AsyncClient(base_url=url) as http:
            running = Fleet(url, http, s1, s2)

            async def subscribed() -> bool:
                return bool((await running.get("/api/health"))["mqtt_connected"])

            await running.wait_for("hub subscribed", subscribed)
            gw1 = s1.gateway_id
            await s1.connect(
                depth=3,
                events=[
                    stock_event(gw1, 1, "A01", 12),
                    stock_event(gw1, 2, "B02", 2),
                    stock_event(gw1, 3, "C03", 0),
                    alert_event(gw1, 4, "al-c03", AlertState.RAISED, bin_id="C03", count=0),
                    sale_event(gw1, 5, "s1-lane1-000001", "m-001"),
                ],
            )
            await s2.connect(events=[stock_event(s2.gateway_id, 1, "A01", 9)])

            async def both_reported() -> bool:
                stores = {f["store_id"]: f for f in await running.get("/api/fleet")}
                return (
                    all(
                        s in stores and stores[s]["online"] is True and stores[s]["devices_total"] is not None
                        for s in ("s1", "s2")
                    )
                    and stores["s1"]["active_alerts"] == 1
                )

            await running.wait_for("both stores reported", both_reported)
            yield running
    finally:
        s1.lose_power()
        s2.lose_power()
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
    """One headless Chromium for the module; tests isolate themselves with fresh contexts."""
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


async def _open(browser: Browser, url: str, locale: str) -> tuple[BrowserContext, Page, list[str]]:
    context = await browser.new_context(locale=locale, viewport=LAPTOP)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"{url}/hq?poll_ms={POLL_MS}")
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    return context, page, errors


def _row(page: Page, store_id: str) -> Any:
    return page.locator(f'#fleet-body tr[data-store-id="{store_id}"]')


async def test_fleet_goes_offline_raises_an_hq_alert_and_switches_language(
    fleet: Fleet, browser: Browser
) -> None:
    context, page, errors = await _open(browser, fleet.url, "zh-CN")
    try:
        assert await page.evaluate("document.documentElement.lang") == "zh-CN"
        await expect(page.locator("h1")).to_have_text("门店总览")
        await expect(page.locator("#hub-line")).to_have_text("总部 hq-e2e")

        s1, s2 = _row(page, "s1"), _row(page, "s2")
        for row, version in ((s1, "0.4.0"), (s2, "0.4.1")):
            await expect(row).to_have_attribute("data-state", "online", timeout=WAIT_MS)
            await expect(row.locator(".state-badge")).to_have_text("在线")
            await expect(row.locator(".c-heartbeat")).to_have_text(re.compile(r"\d+\s*(秒|分钟)"))
            await expect(row.locator(".version")).to_have_text(version)
            await expect(row.locator(".config")).to_have_text("cfg-2026-11")
        await expect(s1.locator(".dev-count")).to_have_text("1/3 故障")
        await expect(s1.locator(".dev-list li")).to_have_text(["Modbus 变送器 · wt-3"])
        await expect(s1.locator(".depth")).to_have_text("3")
        await expect(s1.locator(".c-stock-alerts")).to_have_text("1")
        await expect(s2.locator(".dev-count")).to_have_text("全部正常 (2)")
        await expect(s2.locator(".c-stock-alerts")).to_have_text("0")
        device_alert = page.locator('#hq-alerts li[data-kind="device_down"][data-store-id="s1"]')
        await expect(device_alert.locator(".kind-badge")).to_have_text("设备故障", timeout=WAIT_MS)
        await expect(device_alert.locator(".subject")).to_have_text("Modbus 变送器 · wt-3")
        await expect(page.locator("#sum-online")).to_have_text("2")

        # s2 loses power: the broker publishes its will; the row turns offline at once, the HQ alert follows
        # once the store has been offline for the configured threshold.
        await page.evaluate("window.__sameDocument = true")
        fleet.s2.lose_power()
        await expect(s2).to_have_attribute("data-state", "offline", timeout=WAIT_MS)
        await expect(s2.locator(".state-badge")).to_have_text("离线")
        offline_alert = page.locator('#hq-alerts li[data-kind="store_offline"][data-store-id="s2"]')
        await expect(offline_alert.locator(".kind-badge")).to_have_text("门店离线", timeout=WAIT_MS)
        await expect(offline_alert.locator(".what")).to_have_text("网关发出离线遗嘱")
        await expect(s2.locator(".c-hq-alerts")).to_have_text("1")
        await expect(page.locator("#sum-offline")).to_have_text("1")
        await expect(page.locator("#fleet-body tr").first).to_have_attribute(
            "data-store-id", "s2"
        )  # problems first
        assert await page.evaluate("window.__sameDocument === true")  # live, no reload
        raised = await fleet.get("/api/hq-alerts?active=true&store_id=s2")
        assert [(a["kind"], a["detail"]["cause"]) for a in raised] == [("store_offline", "status")]
        assert raised[0]["duration_s"] >= 0

        # Filters: offline only, then with alerts (s1 has a stock alert and an HQ alert; s2 an HQ alert).
        await page.locator("#filter-offline").check()
        await expect(page.locator("#fleet-body tr")).to_have_count(1)
        await expect(page.locator("#fleet-body tr")).to_have_attribute("data-store-id", "s2")
        await page.locator("#filter-offline").uncheck()
        await page.locator("#filter-alerts").check()
        await expect(page.locator("#fleet-body tr")).to_have_count(2)
        await page.locator("#filter-alerts").uncheck()

        # English and back.
        toggle = page.locator("#lang-toggle")
        await expect(toggle).to_have_text("English")
        await toggle.click()
        assert await page.evaluate("document.documentElement.lang") == "en"
        await expect(page.locator("h1")).to_have_text("Fleet overview")
        assert await page.title() == "Fleet overview"
        await expect(toggle).to_have_text("中文")
        await expect(page.locator("#conn")).to_have_text("Live")
        await expect(s1.locator(".state-badge")).to_have_text("Online")
        await expect(s2.locator(".state-badge")).to_have_text("Offline")
        await expect(s2.locator(".offline-for")).to_have_text(re.compile(r"^offline for \d+ (sec|min)$"))
        await expect(s1.locator(".dev-count")).to_have_text("1/3 down")
        await expect(s1.locator(".dev-list li")).to_have_text(["Modbus transmitter · wt-3"])
        await expect(offline_alert.locator(".kind-badge")).to_have_text("Store offline")
        await expect(offline_alert.locator(".what")).to_have_text("the gateway's will says offline")
        await expect(page.locator("#fleet-h")).to_have_text("Stores")
        await expect(page.locator("#fleet thead th").first).to_have_text("Store")
        await page.screenshot(path="/tmp/hq-fleet-en.png", full_page=True)
        await toggle.click()
        assert await page.evaluate("document.documentElement.lang") == "zh-CN"
        await expect(page.locator("h1")).to_have_text("门店总览")
        await expect(s2.locator(".state-badge")).to_have_text("离线")

        # s2 comes back: online again, its alert resolves once (shown with the resolved ones).
        await fleet.s2.connect()
        await expect(s2).to_have_attribute("data-state", "online", timeout=WAIT_MS)
        await expect(offline_alert).to_have_count(0, timeout=WAIT_MS)
        await page.locator("#show-resolved").check()
        await expect(offline_alert).to_have_attribute("data-active", "false", timeout=WAIT_MS)
        await expect(offline_alert.locator(".when")).to_contain_text("已恢复在线")
        history = await fleet.get("/api/hq-alerts?store_id=s2")
        assert [(a["kind"], a["active"], a["resolution"]) for a in history] == [
            ("store_offline", False, "back online")
        ]
        await page.screenshot(path="/tmp/hq-fleet-zh.png", full_page=True)
        assert errors == [], errors
    finally:
        await context.close()


async def test_store_detail_shows_stock_devices_backlog_sales_and_members(
    fleet: Fleet, browser: Browser
) -> None:
    context, page, errors = await _open(browser, fleet.url, "zh-CN")
    try:
        await _row(page, "s1").locator(".store-link").click()
        await expect(page.locator("#view-store")).to_be_visible()
        await expect(page.locator("#view-fleet")).to_be_hidden()
        await expect(page.locator("#store-h")).to_have_text("门店 s1 · 网关 s1-gw", timeout=WAIT_MS)
        await expect(page.locator("#store-state")).to_have_text("在线")
        assert page.url.endswith("#/stores/s1")

        stock = page.locator("#stock-body tr")
        await expect(stock).to_have_count(3, timeout=WAIT_MS)
        expected = [("A01", "12", "ok", "正常"), ("B02", "2", "low", "低库存"), ("C03", "0", "out", "缺货")]
        for i, (bin_id, count, level, word) in enumerate(expected):
            row = stock.nth(i)
            await expect(row).to_have_attribute("data-bin-id", bin_id)
            await expect(row).to_have_attribute("data-level", level)
            await expect(row.locator(".qty")).to_have_text(count)
            await expect(row.locator(".level-badge")).to_have_text(word)
        colour = (
            await stock.nth(2).locator(".level-badge").evaluate("e => getComputedStyle(e).backgroundColor")
        )
        assert colour == "rgb(179, 38, 30)"  # --out, the board's colour for an empty bin

        await expect(page.locator("#stock-alerts li")).to_have_count(1)
        await expect(page.locator('#stock-alerts li[data-alert-id="al-c03"] .kind-badge')).to_have_text(
            "低库存"
        )

        down = page.locator('#devices-body tr[data-device-id="wt-3"]')
        await expect(down).to_have_attribute("data-online", "false")
        await expect(down.locator(".family")).to_have_text("Modbus 变送器")
        await expect(down.locator(".state-badge")).to_have_text("离线")
        await expect(down.locator(".errors")).to_have_text("8")
        await expect(down.locator(".counters")).to_have_text("crc_errors 1 · timeouts 7")
        await expect(down.locator(".last-error")).to_have_text("timeout: no reply within 0.20 s")
        scale = page.locator('#devices-body tr[data-device-id="scale-1"]')
        await expect(scale.locator(".family")).to_have_text("电子秤")
        await expect(scale.locator(".state-badge")).to_have_text("在线")
        await expect(scale.locator(".counters")).to_have_text("garbage_lines 2")

        await expect(page.locator('#backlog-facts dd[data-fact="depth"]')).to_have_text("3")
        await expect(page.locator('#backlog-facts dd[data-fact="applied-seq"]')).to_have_text("5")
        await expect(page.locator('#backlog-facts dd[data-fact="lost"]')).to_have_text("无")
        await expect(page.locator('#store-hq-alerts li[data-kind="device_down"]')).to_have_count(1)

        # The hub runs the sales service: s1's sale shows in its daily sales, as the API reports the day.
        (day,) = await fleet.get("/api/stores/s1/sales/daily")
        assert (day["sales"], day["gross"], day["net"]) == (1, "25.00", "25.00")
        sales = page.locator("#sales-panel")
        await expect(sales).to_be_visible(timeout=WAIT_MS)
        await expect(sales.locator("thead th")).to_have_text(
            ["日期", "销售笔数", "销售额（元）", "退货笔数", "退款（元）", "净额（元）"]
        )
        await expect(sales.locator("tbody tr td")).to_have_text(
            [day["day"], "1", "25.00", "0", "0.00", "25.00"]
        )

        await page.locator("#lang-toggle").click()
        await expect(page.locator("#store-h")).to_have_text("Store s1 · gateway s1-gw")
        await expect(down.locator(".family")).to_have_text("Modbus transmitter")
        await expect(stock.nth(1).locator(".level-badge")).to_have_text("Low")
        await expect(sales.locator("thead th").first).to_have_text("Day")
        await page.screenshot(path="/tmp/hq-store-en.png", full_page=True)

        # Back to the fleet: the member the sale created can be looked up.
        await page.locator("#back").click()
        await expect(page.locator("#view-fleet")).to_be_visible()
        members = page.locator("#members-panel")
        await expect(members).to_be_visible(timeout=WAIT_MS)
        member = await fleet.get("/api/members/m-001")
        await members.get_by_label("Member id").fill("m-001")
        await members.get_by_role("button", name="Look up").click()
        await expect(members.locator('dd[data-field="member_id"]')).to_have_text("m-001", timeout=WAIT_MS)
        await expect(members.locator('dd[data-field="tier"]')).to_have_text(member["tier"].capitalize())
        await expect(members.locator('dd[data-field="points"]')).to_have_text(str(member["points"]))
        await page.locator("#lang-toggle").click()
        await expect(members.locator('dd[data-field="tier"]')).to_have_text(
            {"bronze": "铜卡", "silver": "银卡", "gold": "金卡", "platinum": "白金卡"}[member["tier"]]
        )
        assert errors == [], errors
    finally:
        await context.close()


async def test_sales_and_members_panels_stay_hidden_on_a_hub_without_them(
    fleet: Fleet, browser: Browser
) -> None:
    """A hub that predates the sales and members services: its daily-sales URL answers 404 and its OpenAPI
    document has no members path (played at the browser's network seam). The rest of the page works."""
    context = await browser.new_context(locale="en-US", viewport=LAPTOP)
    page = await context.new_page()

    async def no_sales(route: Route) -> None:
        await route.fulfill(status=404, content_type="application/json", body='{"detail": "Not Found"}')

    async def openapi_without_members(route: Route) -> None:
        response = await route.fetch()
        spec = await response.json()
        spec["paths"] = {k: v for k, v in spec["paths"].items() if not k.startswith("/api/members")}
        await route.fulfill(response=response, json=spec)

    await page.route("**/api/stores/*/sales/daily*", no_sales)
    await page.route("**/openapi.json", openapi_without_members)
    try:
        await page.goto(f"{fleet.url}/hq?poll_ms={POLL_MS}#/stores/s1")
        await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
        await expect(page.locator("#stock-body tr")).to_have_count(3, timeout=WAIT_MS)
        await expect(page.locator("#sales-panel")).to_be_hidden()
        await page.locator("#back").click()
        await expect(_row(page, "s2")).to_have_attribute("data-state", "online", timeout=WAIT_MS)
        await expect(page.locator("#members-panel")).to_be_hidden()
    finally:
        await context.close()
