"""The installer page in headless Chromium against a real gateway fed by simulated transmitters.

Real: Debian's Chromium (Playwright, no downloaded browser), `edge.gateway.Gateway` with its engine, API,
installer routes and SQLite store, and a `SimStore` whose load cell disagrees with the config
(tests/shelfgate/installer_stack.py), with a product catalogue and a simulated handheld barcode scanner on a real
pty (`firmware_sims.barcode`, read by the gateway's own scanner driver). The test calibrates the simulated plate
through the page, then binds the bin by scanning: the wizard waits for the handheld, a scan of a GTIN the
catalogue does not know is refused on the page, the scan of the product on the plate shows its catalogue name
and unit weight and the before → after diff; the installer confirms, runs the pick test with `SimStore.pick` and
sees the count drop by exactly one, then the commissioning record names the bound item.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import async_playwright, expect

from tests.e2e.test_board import CHROMIUM, CHROMIUM_ARGS
from tests.shelfgate.installer_stack import (
    HANDHELD,
    SHELF_GTIN,
    SHELF_ITEM_G,
    TRUE_CAL,
    UNKNOWN_GTIN,
    eventually,
    installer_stack,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

WAIT_MS = 60_000
"""Generous bound for what the page must show (stable readings on a loaded 2-core machine)."""
TABLET = {"width": 1024, "height": 768}
EAN13 = SHELF_GTIN[1:]
"""What the can's barcode encodes (an EAN-13); bound as its GTIN-14."""


async def test_calibrate_bind_by_scan_and_pick_test_through_the_page(tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install the Debian package `chromium` (scripts/test does)")
    async with installer_stack(tmp_path, initial_count=6, scan_bind=True) as stack, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(locale="en-US", viewport=TABLET)  # type: ignore[arg-type]
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"{stack.url}/installer")
            await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
            for device in ("tx1", HANDHELD):
                await expect(page.locator(f'#devices-body tr[data-device="{device}"]')).to_have_attribute(
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

            # --- bind by scan: the wizard waits for the handheld; unknown → refused; known → item + diff ------
            bind = page.locator("#bind")
            await expect(page.locator("#bind-scanner option")).to_have_count(
                2
            )  # any handheld, hand1 (no lane)
            await page.fill("#bind-gtin", UNKNOWN_GTIN)  # the typed fallback refuses it too
            await page.click("#bind-preview")
            await expect(page.locator("#bind-result")).to_contain_text(
                "not in the catalogue", timeout=WAIT_MS
            )
            await page.click("#bind-scan")
            await expect(bind).to_have_attribute("data-state", "waiting", timeout=WAIT_MS)
            await stack.scan(UNKNOWN_GTIN)
            refused = page.locator("#bind-refused")
            await expect(refused).to_be_visible(timeout=WAIT_MS)
            await expect(refused).to_contain_text("binding refused")
            await expect(refused).to_contain_text("not in the catalogue")
            await expect(refused).to_have_attribute("data-gtin", "0" + UNKNOWN_GTIN)
            await expect(bind).to_have_attribute("data-state", "waiting")  # still waiting for the right one
            await stack.scan(EAN13)
            await expect(bind).to_have_attribute("data-state", "review", timeout=WAIT_MS)
            await expect(page.locator("#bind-item")).to_have_attribute("data-gtin", SHELF_GTIN)
            await expect(page.locator("#bind-name-en")).to_have_text("Sprite 330 ml can")
            await expect(page.locator("#bind-name-zh")).to_have_text("雪碧 330毫升罐装")  # DOM, no CJK font
            await expect(page.locator("#bind-item-weight")).to_have_text(f"{SHELF_ITEM_G:g}")
            await expect(page.locator("#bind-price")).to_have_text("3.20")
            rows = page.locator("#bind-diff tbody tr")
            await expect(rows.nth(0).locator("td").nth(0)).to_have_text("06901234567892")
            await expect(rows.nth(0).locator("td").nth(1)).to_have_text(SHELF_GTIN)
            await expect(rows.nth(1).locator("td.changed")).to_have_text(f"{SHELF_ITEM_G:g}")
            assert stack.gateway.bins["A01"].sku == "06901234567892"  # nothing bound before confirming
            await page.click("#bind-apply")
            await expect(page.locator("#bind-result")).to_contain_text(SHELF_GTIN, timeout=WAIT_MS)
            await expect(page.locator("#bind-result")).to_contain_text("Sprite 330 ml can")
            bound = stack.gateway.bins["A01"]
            assert (bound.sku, bound.unit_weight_g, bound.unit_weight_spread_g) == (
                SHELF_GTIN,
                SHELF_ITEM_G,
                3.0,
            )

            async def counted_again() -> bool:
                # A new unit weight restarts the count: the first stable level is counted absolutely.
                est = stack.gateway.estimators["A01"]
                return est.count == 4 and not est.uncertain

            await eventually(counted_again, WAIT_MS / 1000, "bin A01 counted again with the catalogue weight")

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
        binding = record["bindings"]["A01"]
        assert binding["after"] == {
            "sku": SHELF_GTIN,
            "unit_weight_g": SHELF_ITEM_G,
            "unit_weight_spread_g": 3.0,
        }
        assert binding["item"]["name"] == {"zh": "雪碧 330毫升罐装", "en": "Sprite 330 ml can"}
        assert binding["source"] == f"scan:{HANDHELD}"
        assert record["tests"]["A01"]["state"] == "passed"
        assert record["installers"] == ["Li Wei"]
        assert [d["device_id"] for d in record["devices"]] == ["tx1", HANDHELD, "lane-sc"]
        assert (stack.data_dir / "commissioning.json").is_file()
