"""The HQ dashboard's commissioning column and store record, in headless Chromium against the real hub of
tests/e2e/test_hq_dashboard.py (its fixtures: two simulated stores over a private Mosquitto).

Store s2's gateway sends a `commissioning` event (built with the contract model, published as a gateway's
uplink would); the fleet table must then say s2 is commissioned and s1 is not, and s2's page must show the
record, in both languages.
"""

from __future__ import annotations

import aiomqtt
import pytest
from playwright.async_api import Browser, expect

from cloud_bridge.contract import Commissioning, Event, EventType, events_topic, rfc3339, utc_now
from tests.e2e.test_hq_dashboard import WAIT_MS, Fleet, _open, _row
from tests.e2e.test_hq_dashboard import browser as browser  # noqa: PLC0414 - re-exported fixture
from tests.e2e.test_hq_dashboard import chromium as chromium  # noqa: PLC0414 - re-exported fixture
from tests.e2e.test_hq_dashboard import fleet as fleet  # noqa: PLC0414 - re-exported fixture
from tests.hub.fakes import batch

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]


def s2_record() -> Commissioning:
    now = rfc3339(utc_now())
    return Commissioning.model_validate(
        {
            "store_id": "s2",
            "gateway_id": "s2-gw",
            "generated_at": now,
            "installers": ["li.wei"],
            "devices": [{"id": "wt-1", "family": "modbus", "online": True}],
            "calibrations": {
                "A01": {
                    "before": {"zero": 0.0, "span_g_per_unit": 1.0},
                    "after": {"zero": 1000.0, "span_g_per_unit": 0.05, "calibrated_at": now},
                    "check": {
                        "mass_g": 1750.0,
                        "measured_g": 1750.8,
                        "error_g": 0.8,
                        "error_pct": 0.0457,
                        "tolerance_g": 5.0,
                        "ok": True,
                    },
                    "installer": "li.wei",
                    "ts": now,
                },
                "B02": {
                    "before": {"zero": 0.0, "span_g_per_unit": 1.0},
                    "after": {"zero": 990.0, "span_g_per_unit": 0.05, "calibrated_at": now},
                    "check": {
                        "mass_g": 700.0,
                        "measured_g": 712.0,
                        "error_g": 12.0,
                        "error_pct": 1.7143,
                        "tolerance_g": 5.0,
                        "ok": False,
                    },
                    "forced": True,
                    "installer": "li.wei",
                    "ts": now,
                },
            },
            "bindings": {
                "A01": {
                    "before": {"sku": "06901234567892", "unit_weight_g": 350.0},
                    "after": {"sku": "07032069804988", "unit_weight_g": 355.0},
                    "installer": "li.wei",
                    "ts": now,
                }
            },
            "tests": {
                "A01": {
                    "state": "passed",
                    "count_before": 6,
                    "count_after": 5,
                    "installer": "li.wei",
                    "ts": now,
                }
            },
        }
    )


async def test_commissioned_column_and_store_record(fleet: Fleet, browser: Browser) -> None:
    record = s2_record()
    gw = fleet.s2.gateway_id
    seq = fleet.s2.seq + 1
    event = Event(
        id=f"{gw}:{seq}",
        seq=seq,
        type=EventType.COMMISSIONING,
        ts=record.generated_at,
        data=record.model_dump(mode="json"),
    )
    broker = fleet.s2.broker
    async with aiomqtt.Client(broker.host, broker.port, identifier=f"{gw}-cm") as client:
        await client.publish(events_topic("s2"), batch("s2", gw, [event]), qos=1)
    fleet.s2.seq = seq

    async def s2_commissioned() -> bool:
        rows = {r["store_id"]: r for r in await fleet.get("/api/fleet")}
        return bool(rows["s2"]["commissioned"])

    await fleet.wait_for("s2 commissioned at the hub", s2_commissioned)

    context, page, errors = await _open(browser, fleet.url, "zh-CN")
    try:
        s2 = _row(page, "s2").locator(".c-commissioned")
        await expect(s2).to_have_attribute("data-commissioned", "yes", timeout=WAIT_MS)
        await expect(s2.locator(".cm-badge")).to_have_text("已调试")
        await expect(s2.locator(".cm-figures")).to_have_text("校准 2 · 绑定 1 · 取货测试 1/1")
        await expect(s2.locator(".cm-failed")).to_have_text("1 次校准复核超差")
        s1 = _row(page, "s1").locator(".c-commissioned")
        await expect(s1).to_have_attribute("data-commissioned", "no")
        await expect(s1.locator(".cm-badge")).to_have_text("未调试")

        await _row(page, "s2").locator(".store-link").click()
        panel = page.locator("#commissioning-panel")
        await expect(panel.locator('dd[data-fact="cm-installers"]')).to_have_text("li.wei", timeout=WAIT_MS)
        await expect(panel.locator('dd[data-fact="cm-calibrations"]')).to_have_text("2")
        await expect(panel.locator('dd[data-fact="cm-failed"]')).to_have_text("1")
        await expect(panel.locator('dd[data-fact="cm-tests"]')).to_have_text("1 / 1")
        a01 = panel.locator('#commissioning-body tr[data-bin="A01"]')
        await expect(a01.locator(".bind")).to_have_text("07032069804988")
        await expect(a01.locator(".test")).to_have_text("通过")
        b02 = panel.locator('#commissioning-body tr[data-bin="B02"]')
        await expect(b02.locator(".cal")).to_have_text("超差（误差 12 g） · 强制应用")
        await expect(page.locator("#commissioning-none")).to_be_hidden()

        await page.locator("#lang-toggle").click()
        await expect(panel.locator("h3")).to_have_text("Commissioning record")
        await expect(b02.locator(".cal")).to_have_text("out of tolerance (error 12 g) · forced")
        await expect(a01.locator(".test")).to_have_text("passed")

        # s1 never sent a record: its page says so.
        await page.goto(f"{fleet.url}/hq#/stores/s1")
        await expect(page.locator("#commissioning-none")).to_be_visible(timeout=WAIT_MS)
        await expect(page.locator("#commissioning-bins")).to_be_hidden()
        assert errors == [], errors
    finally:
        await context.close()
