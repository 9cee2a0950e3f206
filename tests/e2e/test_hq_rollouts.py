"""The HQ dashboard's config-rollout panel in headless Chromium, against the real hub of
tests/e2e/test_hq_dashboard.py (its fixtures: two simulated stores over a private Mosquitto).

HQ starts a rollout to s1 and s2 through the API; the two stores answer on `cmd-result` as gateways do (s1
applied, s2 rejected with the problem in its file, built with the contract models). The panel must show the
rollout settling, each store's outcome and s2's error with its line, in both languages.
"""

from __future__ import annotations

import aiomqtt
import pytest
from playwright.async_api import Browser, expect

from cloud_bridge.config_push import ConfigResult
from cloud_bridge.contract import CommandResult, command_result_topic
from tests.e2e.test_hq_dashboard import WAIT_MS, Fleet, _open
from tests.e2e.test_hq_dashboard import browser as browser  # noqa: PLC0414 - re-exported fixture
from tests.e2e.test_hq_dashboard import chromium as chromium  # noqa: PLC0414 - re-exported fixture
from tests.e2e.test_hq_dashboard import fleet as fleet  # noqa: PLC0414 - re-exported fixture

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

PROBLEM = "line 12: bins[0].safety_stock: Input should be greater than or equal to 0"


async def test_rollout_progress_per_store(fleet: Fleet, browser: Browser) -> None:
    response = await fleet.http.post(
        "/api/config-rollouts",
        json={"stores": ["s1", "s2"], "config_yaml": "store_id: {{store_id}}\n", "note": "summer thresholds"},
    )
    assert response.status_code == 201, response.text
    created = response.json()
    ids = {t["store_id"]: t["command_id"] for t in created["targets"]}

    context, page, errors = await _open(browser, fleet.url, "zh-CN")
    try:
        panel = page.locator("#rollouts-panel")
        item = panel.locator(f'li[data-rollout="{created["rollout_id"]}"]')
        await expect(item.locator(".rollout-progress")).to_have_text("0 / 2 已完成", timeout=WAIT_MS)
        await expect(item.locator('tr[data-store="s1"] .ro-state')).to_have_text("进行中")
        await expect(item.locator(".rollout-note")).to_have_text("summer thresholds")

        answers = {
            "s1": CommandResult(
                id=ids["s1"],
                ok=True,
                result=ConfigResult(outcome="applied", config_version="abc123", restarted=True).model_dump(),
            ),
            "s2": CommandResult(
                id=ids["s2"],
                ok=False,
                error=f"invalid config: 1 error(s): {PROBLEM}",
                result=ConfigResult(outcome="rejected", errors=[PROBLEM]).model_dump(),
            ),
        }
        broker = fleet.s1.broker
        async with aiomqtt.Client(broker.host, broker.port, identifier="rollout-answers") as client:
            for store_id, answer in answers.items():
                payload = answer.model_dump_json(exclude_none=True)
                await client.publish(command_result_topic(store_id), payload, qos=1)

        await expect(item.locator(".rollout-progress")).to_have_text("2 / 2 已完成", timeout=WAIT_MS)
        await expect(item.locator(".rollout-progress")).to_have_attribute("data-done", "true")
        await expect(item.locator('tr[data-store="s1"] .ro-state')).to_have_text("已生效")
        await expect(item.locator('tr[data-store="s1"] .ro-detail')).to_have_text("配置版本 abc123")
        await expect(item.locator('tr[data-store="s2"] .ro-state')).to_have_text("已拒绝")
        await expect(item.locator('tr[data-store="s2"] .ro-detail')).to_have_text(PROBLEM)

        await page.locator("#lang-toggle").click()
        await expect(panel.locator("h2")).to_have_text("Config rollouts")
        await expect(item.locator(".rollout-progress")).to_have_text("2 / 2 settled")
        await expect(item.locator('tr[data-store="s2"] .ro-state')).to_have_text("rejected")
        await expect(item.locator('tr[data-store="s1"] .ro-detail')).to_have_text("config version abc123")
        assert errors == [], errors
    finally:
        await context.close()


CATALOGUE = 'currency: CNY\nitems:\n  - {gtin: "06901234567892", name: {zh: 可乐, en: Cola}, price: "3.50", category: drinks}\n'
CONFIG = "store_id: s1\nbins: []\n"


async def test_new_rollout_form_prefills_submits_and_follows(fleet: Fleet, browser: Browser) -> None:
    # What HQ pushed to s1 before: a catalogue (the form starts from it); no config yet.
    earlier = await fleet.http.post(
        "/api/config-rollouts", json={"stores": ["s1"], "catalogue_text": CATALOGUE}
    )
    assert earlier.status_code == 201, earlier.text

    context, page, errors = await _open(browser, fleet.url, "zh-CN")
    try:
        panel = page.locator("#rollouts-panel")
        await expect(panel).to_be_visible(timeout=WAIT_MS)
        await panel.locator("#ro-new summary").click()
        await expect(panel.locator("#ro-new summary")).to_have_text("新建配置下发")
        # Submitting with nothing chosen is refused on the page, naming what is missing.
        await panel.locator("#ro-submit").click()
        await expect(panel.locator("#ro-form-error")).to_have_text("请至少选择一家门店")

        await panel.locator('#ro-store-list input[value="s1"]').check()
        await expect(panel.locator("#ro-form-error")).to_be_hidden()
        await expect(panel.locator("#ro-catalogue")).to_have_value(CATALOGUE, timeout=WAIT_MS)
        await expect(panel.locator("#ro-config")).to_have_value("")
        await expect(panel.locator("#ro-config-hint")).to_contain_text("还没有下发过配置")
        await panel.locator("#ro-config").fill(CONFIG)
        await panel.locator("#ro-note").fill("夏季阈值")
        await panel.locator("#ro-submit").click()

        item = panel.locator("li.rollout").first
        await expect(item.locator(".rollout-note")).to_have_text("夏季阈值", timeout=WAIT_MS)
        await expect(item.locator('tr[data-store="s1"] .ro-state')).to_have_text("进行中")
        await expect(panel.locator("#ro-form-error")).to_be_hidden()
        rollout_id = await item.get_attribute("data-rollout")
        assert rollout_id is not None
        created = (await fleet.http.get(f"/api/config-rollouts/{rollout_id}")).json()
        target = created["targets"][0]
        assert target["pushed"] == ["config", "catalogue"]
        assert created["note"] == "夏季阈值"

        # The store answers as a gateway does; the panel follows to applied without a reload.
        answer = CommandResult(
            id=target["command_id"],
            ok=True,
            result=ConfigResult(
                outcome="applied",
                config_version="cfg777",
                catalogue_version="cat888",
                restarted=True,
                watch_s=300,  # the store watches its error rate for five minutes from now
            ).model_dump(),
        )
        broker = fleet.s1.broker
        async with aiomqtt.Client(broker.host, broker.port, identifier="rollout-form-answer") as client:
            await client.publish(command_result_topic("s1"), answer.model_dump_json(exclude_none=True), qos=1)
        await expect(item.locator('tr[data-store="s1"] .ro-state')).to_have_text("已生效", timeout=WAIT_MS)
        await expect(item.locator('tr[data-store="s1"] .ro-detail')).to_have_text(
            "配置版本 cfg777 · 目录版本 cat888 · 观察设备错误率中"
        )
        await expect(item.locator(".rollout-progress")).to_have_text("1 / 1 已完成")

        # The store's last push is now this one, config included: the next form starts from it.
        last = (await fleet.http.get("/api/stores/s1/config")).json()
        assert last["config"]["text"] == CONFIG
        assert last["config"]["version"] == "cfg777"
        await page.locator("#lang-toggle").click()
        await expect(panel.locator("#ro-new summary")).to_have_text("New rollout")
        await expect(panel.locator("#ro-catalogue-hint")).to_contain_text("Loaded what was last pushed")
        await expect(item.locator('tr[data-store="s1"] .ro-state')).to_have_text("applied")
        assert errors == [], errors
    finally:
        await context.close()
