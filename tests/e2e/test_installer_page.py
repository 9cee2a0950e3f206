"""The installer page in headless Chromium against a real gateway fed by simulated transmitters.

Real: Debian's Chromium (Playwright, no downloaded browser), `edge.gateway.Gateway` with its engine, API,
installer routes and SQLite store, and a `SimStore` whose load cell disagrees with the config
(tests/shelfgate/installer_stack.py). The test calibrates the simulated plate through the page, binds the bin by
a typed GTIN (seeing the before → after diff first), runs the pick test with `SimStore.pick` and sees the count
drop by exactly one, then reads the commissioning record.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import async_playwright, expect

from tests.e2e.test_board import CHROMIUM, CHROMIUM_ARGS
from tests.shelfgate.installer_stack import TRUE_CAL, installer_stack

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

WAIT_MS = 60_000
"""Generous bound for what the page must show (stable readings on a loaded 2-core machine)."""
TABLET = {"width": 1024, "height": 768}
NEW_GTIN = "6902083886417"
"""Typed as the 13 digits printed under the barcode; bound as its GTIN-14."""


async def test_calibrate_bind_and_pick_test_through_the_page(tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install the Debian package `chromium` (scripts/test does)")
    async with installer_stack(tmp_path, initial_count=6) as stack, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(locale="en-US", viewport=TABLET)  # type: ignore[arg-type]
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"{stack.url}/installer")
            await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
            await expect(page.locator('#devices-body tr[data-device="tx1"]')).to_have_attribute(
                "data-online", "true", timeout=WAIT_MS
            )
            await page.fill("#installer-name", "Li Wei")
            await page.locator('#bins-body tr[data-bin="A01"] button.select').click()

            # --- calibration: empty → zero → known mass → span → check → diff → write -------------------
            cal = page.locator("#cal")
            await page.click("#cal-start")
            await expect(cal).to_have_attribute("data-step", "empty", timeout=WAIT_MS)
            stack.empty_plate()
            await page.click("#cal-empty")
            await expect(cal).to_have_attribute("data-step", "load", timeout=WAIT_MS)
            mass_g = stack.place("A01", 4)
            await page.fill("#cal-mass", f"{mass_g:.3f}")
            await page.click("#cal-loaded")
            await expect(cal).to_have_attribute("data-step", "checked", timeout=WAIT_MS)
            await expect(page.locator("#cal-check")).to_have_attribute("data-ok", "true")
            diff = page.locator("#cal-diff tbody tr")
            await expect(diff.nth(1)).to_contain_text("span_g_per_unit")
            await expect(diff.nth(1).locator("td.changed")).to_have_count(1)  # before → after shown first
            assert stack.gateway.bins["A01"].calibration.span_g_per_unit == 1.0  # nothing written yet
            await page.click("#cal-apply")
            await expect(page.locator("#cal-result")).to_contain_text("Written", timeout=WAIT_MS)
            span = stack.gateway.bins["A01"].calibration.span_g_per_unit
            assert span == pytest.approx(TRUE_CAL.span_g_per_unit, rel=2e-3)
            count_cell = page.locator('#bins-body tr[data-bin="A01"] td.c')
            await expect(count_cell).to_have_text("4", timeout=WAIT_MS)  # live, from the stream

            # --- bind by a typed GTIN: preview the diff, then confirm ---------------------------------------
            await page.fill("#bind-gtin", NEW_GTIN)
            await page.click("#bind-preview")
            bind_diff = page.locator("#bind-diff tbody tr").first
            await expect(bind_diff.locator("td").nth(0)).to_have_text("06901234567892")
            await expect(bind_diff.locator("td").nth(1)).to_have_text("0" + NEW_GTIN)
            await page.click("#bind-apply")
            await expect(page.locator("#bind-result")).to_contain_text("0" + NEW_GTIN, timeout=WAIT_MS)
            assert stack.gateway.bins["A01"].sku == "0" + NEW_GTIN

            # --- pick test: take one item → exactly one less ------------------------------------------------
            result = page.locator("#test-result")
            await page.click("#test-start")
            await expect(result).to_have_attribute("data-state", "waiting", timeout=WAIT_MS)
            stack.sim.pick("A01", 1)
            await expect(result).to_have_attribute("data-state", "passed", timeout=WAIT_MS)
            await expect(result).to_contain_text("4 → 3")
            await expect(count_cell).to_have_text("3", timeout=WAIT_MS)

            # --- the language switch ---------------------------------------------------------------------
            await page.click("#lang-toggle")
            await expect(page.locator("h1")).to_have_text("安装调试")
            assert errors == [], errors
            await context.close()
        finally:
            await browser.close()

        record = await stack.get("/api/installer/commissioning")
        assert record["store_id"] == "inst-001"
        assert record["calibrations"]["A01"]["check"]["ok"] is True
        assert record["bindings"]["A01"]["after"]["sku"] == "0" + NEW_GTIN
        assert record["tests"]["A01"]["state"] == "passed"
        assert record["installers"] == ["Li Wei"]
        assert [d["device_id"] for d in record["devices"]] == ["tx1"]
        assert (stack.data_dir / "commissioning.json").is_file()
