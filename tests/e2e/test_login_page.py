"""The login page and the board under auth, in headless Chromium against the real app, uvicorn and SQLite.

A zh-CN staff member opens the board without a session, is sent to the login page, logs in, sees the active
alert and acknowledges it (the page sends the CSRF header through /static/auth.js); a manager then finds the
acknowledgement, with the staff member's name and before → after, in the audit log.
"""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Browser, async_playwright, expect

from edge.api import ApiServer, create_app
from edge.config import load_config
from edge.store import GatewayStore
from tests.e2e.board_gateway import BoardGateway
from tests.e2e.test_board import CHROMIUM, CHROMIUM_ARGS, PHONE, STORE_YAML, WAIT_MS
from tests.security.test_local_auth import add_users

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

USERS = {"xiaoli": ("staff", "xiaoli-pw-2026"), "mgr": ("manager", "manager-pw-2026")}


@pytest_asyncio.fixture(loop_scope="module")
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, BoardGateway]]:
    """The board's store with `api.users_file`, one raised alert, served on 127.0.0.1."""
    add_users(tmp_path / "users.json", USERS)
    yaml = textwrap.dedent(STORE_YAML) + "api: {users_file: users.json}\n"
    (tmp_path / "store.yaml").write_text(yaml, encoding="utf-8")
    config = load_config(tmp_path / "store.yaml")
    async with GatewayStore(config.store.data_dir / "gateway.db") as store:
        gw = BoardGateway(config, store)
        await gw.set_count("A01", 0, publish=False)
        await gw.raise_alert("A01", "out", raised_ago_s=60, publish=False)
        server = ApiServer(create_app(gw), "127.0.0.1", 0)  # type: ignore[arg-type]  # stand-in gateway
        task = asyncio.create_task(server.serve())
        try:
            port = await server.started(60)
            yield f"http://127.0.0.1:{port}", gw
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest_asyncio.fixture(loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install the Debian package `chromium` (scripts/test does)")
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


async def test_board_redirects_to_login_and_staff_acknowledges(
    served: tuple[str, BoardGateway], browser: Browser
) -> None:
    url, gw = served
    [alert] = gw.rules.active()
    context = await browser.new_context(locale="zh-CN", viewport=PHONE)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        await page.goto(f"{url}/board")
        await expect(page).to_have_url(f"{url}/login?next=%2Fboard", timeout=WAIT_MS)
        await expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
        await expect(page.locator("h1")).to_have_text("登录")

        await page.fill("#username", "xiaoli")
        await page.fill("#password", "wrong-password")
        await page.click("#submit")
        await expect(page.locator("#error")).to_have_text("用户名或密码错误", timeout=WAIT_MS)

        await page.fill("#password", USERS["xiaoli"][1])
        await page.click("#submit")
        await expect(page).to_have_url(f"{url}/board", timeout=WAIT_MS)
        await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
        card = page.locator(f'#alerts li.card[data-alert-id="{alert.alert_id}"]')
        await expect(card).to_be_visible(timeout=WAIT_MS)
        await expect(page.locator("#sg-logout")).to_have_text("退出登录")

        # Logged in, the board does not ask for a name: the gateway records the session's user.
        await card.get_by_role("button", name="确认告警：可口可乐 330毫升罐装").click()
        await expect(card).to_have_attribute("data-state", "acknowledged", timeout=WAIT_MS)
        await expect(page.locator("#staff-dialog")).to_be_hidden()
        await expect(card.locator(".acked")).to_have_text(" · xiaoli 已确认")
        assert errors == [], errors
    finally:
        await context.close()

    assert gw.acks == [(alert.alert_id, "xiaoli")]
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        r = await c.post("/api/auth/login", json={"username": "mgr", "password": USERS["mgr"][1]})
        token = r.json()["token"]
        c.cookies.clear()
        audit = await c.get(
            "/api/audit", params={"action": "alert.acknowledge"}, headers={"Authorization": f"Bearer {token}"}
        )
    [row] = audit.json()
    assert (row["user"], row["role"], row["target"]) == ("xiaoli", "staff", alert.alert_id)
    assert (row["before"]["state"], row["after"]["state"]) == ("raised", "acknowledged")
