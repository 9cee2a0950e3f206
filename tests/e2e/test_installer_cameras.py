"""The installer page's camera section in headless Chromium against a real gateway with a synthetic camera.

Real: Debian's Chromium (Playwright, no downloaded browser), `edge.gateway.Gateway` with its engine, API, camera
coordinator and SQLite store, and `firmware_sims.runner.ShelfCameraSim` injected at the camera seam. The test
draws a new ROI by dragging the mouse over facing r1c1 of the snapshot, binds it to a SKU, sees a bad binding
refused with the ROI and field named, previews the diff, applies it, and sees the new facing listed with a
judged state and written to the overlay; then it re-captures the reference from the page.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from playwright.async_api import async_playwright, expect

from edge.calibration import OVERLAY_FILE, read_audit
from tests.e2e.test_board import CHROMIUM, CHROMIUM_ARGS
from tests.integration.test_camera_rois import _rect, _running, _sim, _write_config

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

WAIT_MS = 90_000
"""Generous bound for what the page must show (frames analysed on a loaded 2-core machine)."""
VIEWPORT = {"width": 1280, "height": 1000}
INSET_PX = 4
"""The drawn rectangle sits this many frame pixels inside the facing (a hand-drawn outline, not a copy)."""


async def test_draw_bind_apply_and_capture_reference(tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install the Debian package `chromium` (scripts/test does)")
    sim = _sim()
    path = _write_config(tmp_path, sim)
    data_dir = tmp_path / "data"
    async with _running(path, sim) as (gateway, _client), async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(locale="en-US", viewport=VIEWPORT)  # type: ignore[arg-type]
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"http://127.0.0.1:{gateway.api_port}/installer")
            await page.fill("#installer-name", "Li Wei")
            section = page.locator("#cameras")
            await expect(section).to_be_visible(timeout=WAIT_MS)
            await expect(page.locator("#cam-ref")).to_have_attribute(
                "data-has-reference", "true", timeout=WAIT_MS
            )
            rows = page.locator("#cam-rois-body tr")
            await expect(rows).to_have_count(3)
            await expect(page.locator('#cam-rois-body tr[data-roi="r0c0"]')).to_have_attribute(
                "data-state", "ok", timeout=WAIT_MS
            )
            svg = page.locator("#cam-svg")
            await expect(svg).to_have_attribute("viewBox", f"0 0 {sim.width} {sim.height}", timeout=WAIT_MS)
            await page.wait_for_function(
                "document.getElementById('cam-img').naturalWidth > 0", timeout=WAIT_MS
            )

            # --- draw: drag over facing r1c1 of the snapshot ------------------------------------------------
            box = await svg.bounding_box()
            assert box is not None
            scale = box["width"] / sim.width
            x, y, w, h = _rect(sim, "r1c1")
            x0, y0 = box["x"] + (x + INSET_PX) * scale, box["y"] + (y + INSET_PX) * scale
            x1, y1 = box["x"] + (x + w - INSET_PX) * scale, box["y"] + (y + h - INSET_PX) * scale
            await page.mouse.move(x0, y0)
            await page.mouse.down()
            await page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=5)
            await page.mouse.move(x1, y1, steps=5)
            await page.mouse.up()
            drawn = page.locator('#cam-rois-body tr[data-roi="roi4"]')
            await expect(drawn).to_have_attribute("data-state", "new")
            await expect(page.locator('#cam-svg rect.roi[data-roi="roi4"]')).to_have_count(1)

            # --- bind: a SKU that contradicts the chosen bin is refused, naming ROI and field ---------------
            await drawn.locator("input.roi-sku").fill("2100011")
            await drawn.locator("select.roi-bin").select_option("P01")
            await page.click("#cam-preview")
            await expect(page.locator("#cam-result")).to_have_attribute(
                "data-state", "error", timeout=WAIT_MS
            )
            await expect(page.locator("#cam-result")).to_contain_text("roi4.sku")
            await drawn.locator("select.roi-bin").select_option("")

            # --- preview the diff, then apply -----------------------------------------------------------------
            await page.click("#cam-preview")
            added = page.locator('#cam-diff tbody tr[data-change="added"]')
            await expect(added).to_have_count(1, timeout=WAIT_MS)
            await expect(added).to_contain_text("roi4")
            await expect(added).to_contain_text("2100011")
            assert not (data_dir / OVERLAY_FILE).exists()  # nothing written by a preview
            await page.click("#cam-apply")
            await expect(page.locator("#cam-result")).to_contain_text("Applied 1 change", timeout=WAIT_MS)
            await expect(page.locator("#cam-result")).to_contain_text("roi4")
            await expect(drawn).to_have_attribute("data-state", "ok", timeout=WAIT_MS)
            await expect(drawn.locator("td.score")).not_to_have_text("—")

            doc = yaml.safe_load((data_dir / OVERLAY_FILE).read_text(encoding="utf-8"))
            written = {r["id"]: r for r in doc["cameras"]["cam1"]["rois"]}
            assert set(written) == {"r0c0", "r0c1", "r1c0", "roi4"}
            assert written["roi4"]["sku"] == "2100011"
            assert "bin" not in written["roi4"]
            want = [x + INSET_PX, y + INSET_PX, w - 2 * INSET_PX, h - 2 * INSET_PX]
            assert written["roi4"]["rect"] == pytest.approx(
                want, abs=2
            )  # one screen pixel ≈ 1.3 frame pixels
            audit = [e for e in read_audit(data_dir) if e.get("kind") == "camera_rois"]
            assert [(e["installer"], e["changes"]) for e in audit] == [("Li Wei", {"roi4": "added"})]

            # The live camera judges the drawn facing: empty it in the simulator, the page shows it.
            sim.set_state("r1c1", "empty")
            await expect(drawn).to_have_attribute("data-state", "empty", timeout=WAIT_MS)
            sim.set_state("r1c1", "ok")
            await expect(drawn).to_have_attribute("data-state", "ok", timeout=WAIT_MS)

            # --- capture the reference from the page ------------------------------------------------------------
            await page.click("#cam-capture")
            await expect(page.locator("#cam-result")).to_contain_text("Reference captured", timeout=WAIT_MS)
            await expect(page.locator("#cam-ref")).to_have_attribute("data-has-reference", "true")
            await expect(drawn).to_have_attribute("data-state", "ok", timeout=WAIT_MS)
            assert [e["kind"] for e in read_audit(data_dir)].count("camera_reference") == 1

            # --- the language switch -----------------------------------------------------------------------------
            await page.click("#lang-toggle")
            await expect(page.locator("#cameras-h")).to_have_text("摄像头区域")
            await expect(page.locator("#cam-capture")).to_have_text("拍摄参考图")
            assert errors == [], errors
            await context.close()
        finally:
            await browser.close()
