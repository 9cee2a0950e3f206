"""Local API security (issue #5 part 4): users, roles, sessions, login rate limit, CSRF and the audit log.

What is real: the gateway's FastAPI app (`edge.api.create_app`) on uvicorn on 127.0.0.1 (`ApiServer`), a real
SQLite store and audit database, the store config loaded by `edge.config.load_config`, and the users file
written by the real CLI (`shelfgate users add … --password-stdin`) with argon2id hashes. The gateway runtime
behind the app is `tests/e2e/board_gateway.BoardGateway` (its docstring says what it stands in for).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import sqlite3
import stat
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from cloud_bridge.contract import Command, CommandResult, command_result_topic
from edge.api import ApiServer, create_app
from edge.audit import AUDIT_DB, audit_command, audit_for
from edge.auth import Auth, AuthMiddleware, UserStore, required_grant
from edge.config import ConfigError, load_config
from edge.store import GatewayStore
from shelfgate.broker import Mosquitto
from shelfgate.cli import main as cli_main
from tests.e2e.board_gateway import BoardGateway
from tests.security.test_mqtt_hostile import ISSUED, STORE, Hq, running_gateway
from tests.shelfgate.installer_stack import installer_stack

pytestmark = pytest.mark.asyncio(loop_scope="module")

PASSWORDS = {
    "alice": ("staff", "alice-staff-pw-1"),
    "mona": ("manager", "mona-manager-pw-1"),
    "ivan": ("installer", "ivan-installer-pw-1"),
    "root": ("admin", "root-admin-pw-1"),
}
MAX_ATTEMPTS = 10

STORE_YAML = """\
    store_id: sh-auth-01
    data_dir: data
    api:
      host: 127.0.0.1
      users_file: users.json
      login_max_attempts_per_min: {max_attempts}
    buses:
      - {{id: tcp1, kind: tcp, host: 127.0.0.1, port: 5020}}
    transmitters:
      - {{id: tx1, bus: tcp1, unit_id: 1, profile: wt-int32-abcd}}
    bins:
      - id: A01
        sku: "06901234567892"
        name: {{zh: 可口可乐 330毫升罐装, en: "Coca-Cola 330 ml can"}}
        unit_weight_g: 350
        safety_stock: 4
        max_stock: 12
        device: tx1
        channel: 0
    """


@contextlib.contextmanager
def _stdin(text: str) -> Iterator[None]:
    saved = sys.stdin
    sys.stdin = io.StringIO(text)
    try:
        yield
    finally:
        sys.stdin = saved


def add_users(users_file: Path, passwords: dict[str, tuple[str, str]]) -> None:
    """Create the accounts through the real CLI, as an installer would on site."""
    for name, (role, password) in passwords.items():
        with _stdin(password + "\n"):
            code = cli_main(
                ["users", "--file", str(users_file), "add", name, "--role", role, "--password-stdin"]
            )
        assert code == 0, name


@dataclass
class Live:
    """A running gateway API with auth on."""

    app: FastAPI
    gw: BoardGateway
    url: str
    users_file: Path
    data_dir: Path

    @property
    def auth(self) -> Auth:
        auth: Auth = self.app.state.auth
        return auth


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def live(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Live]:
    """One gateway for the module: four users (one per role), an active alert on A01."""
    tmp = tmp_path_factory.mktemp("auth")
    add_users(tmp / "users.json", PASSWORDS)
    (tmp / "store.yaml").write_text(
        textwrap.dedent(STORE_YAML).format(max_attempts=MAX_ATTEMPTS), encoding="utf-8"
    )
    config = load_config(tmp / "store.yaml")
    async with GatewayStore(config.store.data_dir / "gateway.db") as store:
        gw = BoardGateway(config, store)
        await gw.set_count("A01", 0, publish=False)
        app = create_app(gw)  # type: ignore[arg-type]  # BoardGateway stands in for Gateway
        server = ApiServer(app, "127.0.0.1", 0)
        task = asyncio.create_task(server.serve())
        try:
            port = await server.started(60)
            yield Live(app, gw, f"http://127.0.0.1:{port}", tmp / "users.json", config.store.data_dir)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def tokens(live: Live) -> dict[str, str]:
    """One bearer token per user for the module (argon2 verification is deliberately slow)."""
    async with client(live) as c:
        return {name: (await login(c, name))["token"] for name in PASSWORDS}


@contextlib.asynccontextmanager
async def client(live: Live) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live.url, timeout=60, follow_redirects=False) as c:
        yield c


async def login(c: httpx.AsyncClient, name: str) -> dict[str, str]:
    """Log in (the client keeps the cookies) and return the login answer."""
    r = await c.post("/api/auth/login", json={"username": name, "password": PASSWORDS[name][1]})
    assert r.status_code == 200, r.text
    body: dict[str, str] = r.json()
    return body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- every route is closed ---------------------------------------------------------------------------------

PUBLIC_ROUTES = {("GET", "/api/health"), ("POST", "/api/auth/login"), ("GET", "/login")}


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", path)


def http_routes(routes: Iterable[Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(method, path) of every HTTP route, through included routers (FastAPI ≥ 0.165 keeps an included router
    as one `_IncludedRouter` entry of `app.routes`, not as its flattened routes)."""
    for route in routes:
        original = getattr(route, "original_router", None)
        if original is not None:
            context_prefix = getattr(getattr(route, "include_context", None), "prefix", "")
            yield from http_routes(original.routes, prefix + context_prefix)
            continue
        for method in sorted(
            getattr(route, "methods", None) or ()
        ):  # a Mount (/static) has none: page shells
            yield method, prefix + route.path


async def test_every_route_but_health_answers_401_without_a_valid_token(live: Live) -> None:
    """Iterates the app's own route table, so a route added later cannot slip through unguarded."""
    checked = 0
    async with client(live) as c:
        for method, template in http_routes(live.app.routes):
            path = _concrete(template)
            if (method, template) in PUBLIC_ROUTES or method == "HEAD":
                continue
            for headers in ({}, bearer("not-a-real-token"), {"Cookie": "sg_session=forged"}):
                r = await c.request(method, path, headers=headers)
                if path == "/metrics":
                    # Loopback scrapers need no token (docs/security.md); this client is on loopback, so the
                    # route runs (BoardGateway has no sample counters: any answer but auth's is fine here).
                    # Off loopback: test_metrics_off_loopback_needs_a_manager_token.
                    assert r.status_code not in (303, 401, 403), r.status_code
                elif path.startswith("/api/") or method != "GET":
                    assert r.status_code == 401, (method, path, headers, r.status_code)
                else:
                    assert r.status_code == 303, (method, path, r.status_code)
                    assert r.headers["location"].startswith("/login?next="), r.headers
                checked += 1
        assert (await c.get("/api/health")).status_code == 200
    assert checked > 3 * 60, checked  # the gateway has dozens of routes; an empty walk proves nothing


# --- roles ---------------------------------------------------------------------------------------------------


async def test_roles_allow_and_refuse(live: Live, tokens: dict[str, str]) -> None:
    """Staff cannot calibrate or see camera pixels, the installer can; only manager/admin read the audit log."""
    async with client(live) as c:
        cal = "/api/installer/calibration/A01"
        snapshot = "/api/cameras/cam1/snapshot"
        assert (await c.post(cal, headers=bearer(tokens["alice"]))).status_code == 403
        assert (await c.post(cal, headers=bearer(tokens["mona"]))).status_code == 403
        assert (await c.delete(cal, headers=bearer(tokens["ivan"]))).status_code not in (401, 403)
        assert (await c.get(snapshot, headers=bearer(tokens["alice"]))).status_code == 403
        assert (await c.get(snapshot, headers=bearer(tokens["mona"]))).status_code == 403
        assert (await c.get(snapshot, headers=bearer(tokens["ivan"]))).status_code == 404  # no such camera
        assert (await c.get("/api/audit", headers=bearer(tokens["alice"]))).status_code == 403
        assert (await c.get("/api/audit", headers=bearer(tokens["ivan"]))).status_code == 403
        assert (await c.get("/api/audit", headers=bearer(tokens["mona"]))).status_code == 200
        assert (await c.get("/api/audit", headers=bearer(tokens["root"]))).status_code == 200
        assert (await c.get("/api/stock", headers=bearer(tokens["alice"]))).status_code == 200
        me = (await c.get("/api/auth/me", headers=bearer(tokens["ivan"]))).json()
        assert (me["user"], me["role"]) == ("ivan", "installer")


async def test_metrics_off_loopback_needs_a_manager_token(live: Live, tokens: dict[str, str]) -> None:
    """The middleware itself, with a store-LAN peer address (tests may only open 127.0.0.1 sockets)."""
    reached: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    guard = AuthMiddleware(inner, live.auth)

    async def status(client_ip: str, token: str | None) -> int:
        headers = [] if token is None else [(b"authorization", f"Bearer {token}".encode())]
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/metrics",
            "headers": headers,
            "client": (client_ip, 5),
        }
        sent: list[MutableMapping[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        await guard(scope, receive, send)
        code: int = sent[0]["status"]
        return code

    assert await status("192.168.1.20", None) == 401
    assert await status("192.168.1.20", tokens["alice"]) == 403
    assert await status("192.168.1.20", tokens["mona"]) == 200
    assert await status("127.0.0.1", None) == 200
    assert reached == ["/metrics", "/metrics"]


async def test_unlisted_routes_fall_to_the_default_rule() -> None:
    """A router nobody listed: staff may read, writes need a manager."""
    assert required_grant("GET", "/api/new-thing/abc") == "staff"
    assert required_grant("POST", "/api/new-thing/abc") == "manager"
    assert required_grant("GET", "/api/reports/staff") == "manager"  # staff performance is not for staff
    assert required_grant("GET", "/api/reports/staff.csv") == "manager"
    assert required_grant("GET", "/api/reports/abc") == "manager"
    assert required_grant("GET", "/api/reports/replenishment.csv") == "staff"  # the restocking work list
    assert required_grant("GET", "/reports") == "staff"
    assert required_grant("DELETE", "/api/anything/new") == "manager"
    assert required_grant("GET", "/api/cameras/c1/snapshot") == "installer"
    assert required_grant("PUT", "/api/users/bob") == "admin"
    assert required_grant("GET", "/api/health") == "public"


# --- sessions, rate limit, CSRF ------------------------------------------------------------------------------


async def test_login_rate_limit_answers_429_with_retry_after(live: Live) -> None:
    async with client(live) as c:
        codes = []
        for _ in range(MAX_ATTEMPTS + 1):
            r = await c.post("/api/auth/login", json={"username": "mallory", "password": "guess-guess"})
            codes.append(r.status_code)
        assert codes == [401] * MAX_ATTEMPTS + [429], codes
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        # Per (ip, name): another user from the same address can still log in.
        await login(c, "root")


async def test_logout_and_expiry_end_a_session(live: Live) -> None:
    async with client(live) as c:
        token = (await login(c, "alice"))["token"]
        c.cookies.clear()
        assert (await c.get("/api/auth/me", headers=bearer(token))).status_code == 200
        assert (await c.post("/api/auth/logout", headers=bearer(token))).status_code == 200
        assert (await c.get("/api/auth/me", headers=bearer(token))).status_code == 401

        token = (await login(c, "alice"))["token"]
        c.cookies.clear()
        assert (await c.get("/api/stock", headers=bearer(token))).status_code == 200
        ttl_s = live.auth.session_ttl_s
        live.auth.clock = lambda: time.time() + ttl_s + 1
        try:
            assert (await c.get("/api/stock", headers=bearer(token))).status_code == 401
        finally:
            live.auth.clock = time.time


async def test_cookie_writes_need_the_csrf_header_and_the_ack_is_audited(
    live: Live, tokens: dict[str, str]
) -> None:
    alert = await live.gw.raise_alert("A01", "out", publish=False)
    ack = f"/api/alerts/{alert.alert_id}/ack"
    async with client(live) as c:
        answer = await login(c, "alice")
        assert c.cookies.get("sg_session") == answer["token"]
        assert c.cookies.get("sg_csrf") == answer["csrf_token"]
        refused = await c.post(ack, json={"by": "someone else"})
        assert refused.status_code == 403
        assert "CSRF" in refused.text
        wrong = await c.post(ack, headers={"X-CSRF-Token": "x" * 43})
        assert wrong.status_code == 403
        assert live.gw.acks == []  # refused before the route ran
        done = await c.post(ack, json={"by": "someone else"}, headers={"X-CSRF-Token": answer["csrf_token"]})
        assert done.status_code == 200, done.text
        assert done.json()["acknowledged_by"] == "alice"  # the session's user, not what the body claims

    token = tokens["mona"]
    async with client(live) as c:
        r = await c.get("/api/audit", params={"action": "alert", "user": "alice"}, headers=bearer(token))
        assert r.status_code == 200
        rows = [row for row in r.json() if row["target"] == alert.alert_id]
        assert len(rows) == 1, r.json()
        row = rows[0]
        assert (row["user"], row["role"], row["action"]) == ("alice", "staff", "alert.acknowledge")
        assert row["before"]["state"] == "raised"
        assert row["after"]["state"] == "acknowledged"
        assert row["after"]["acknowledged_by"] == "alice"
        assert row["source_ip"] == "127.0.0.1"
        future = await c.get("/api/audit", params={"since": "2999-01-01T00:00:00Z"}, headers=bearer(token))
        assert future.json() == []


async def test_secrets_never_reach_the_users_file_or_the_audit_log(
    live: Live, tokens: dict[str, str]
) -> None:
    users_text = live.users_file.read_text(encoding="utf-8")
    assert stat.S_IMODE(live.users_file.stat().st_mode) == 0o600
    hashes = re.findall(r'"password_hash": "([^"]+)"', users_text)
    assert len(hashes) == len(PASSWORDS)
    assert all(h.startswith("$argon2id$") for h in hashes)
    audit_db = live.data_dir / AUDIT_DB
    assert stat.S_IMODE(audit_db.stat().st_mode) == 0o600
    with contextlib.closing(sqlite3.connect(audit_db)) as db:
        dump = "\n".join(db.iterdump())
    assert "auth.login" in dump
    for _, password in PASSWORDS.values():
        assert password not in users_text
        assert password not in dump
    for token in tokens.values():
        assert token not in dump


async def test_hub_commands_are_audited_as_hub(tmp_path: Path) -> None:
    """What `Gateway._audited_command` writes: user `hub`, a pushed file summarised, secrets masked."""
    pushed = "store_id: x\n" * 100
    command = Command(
        id="c-1", issued_at="2026-11-23T00:00:00Z", args={"config": pushed, "api_token": "s3cr3t"}
    )
    result = CommandResult(id="c-1", ok=True, result={"version": "abc123"})
    await audit_command(tmp_path, "config", command, result, {"config_version": "old"})
    [row] = audit_for(tmp_path).query(user="hub")
    assert row["action"] == "command.config"
    assert row["before"] == {"config_version": "old"}
    assert row["after"]["args"]["config"]["chars"] == len(pushed)
    assert row["after"]["args"]["api_token"] == "***"  # noqa: S105 — the mask, not a password
    assert row["after"]["result"] == {"version": "abc123"}


# --- config ----------------------------------------------------------------------------------------------


async def test_a_lan_facing_api_without_users_is_a_config_error(tmp_path: Path) -> None:
    text = textwrap.dedent(STORE_YAML).format(max_attempts=5)
    text = text.replace("  host: 127.0.0.1\n  users_file: users.json\n", "  host: 0.0.0.0\n")
    (tmp_path / "store.yaml").write_text(text, encoding="utf-8")
    host_line = text.splitlines().index("  host: 0.0.0.0") + 1
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "store.yaml")
    [issue] = caught.value.issues
    assert (issue.path, issue.line) == ("api.host", host_line)
    assert "shelfgate users add" in issue.message

    missing = textwrap.dedent(STORE_YAML).format(max_attempts=5)
    (tmp_path / "store.yaml").write_text(missing, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "store.yaml")
    assert [i.path for i in caught.value.issues] == ["api.users_file"]

    add_users(tmp_path / "users.json", {"a": ("admin", "admin-pw-123")})
    (tmp_path / "store.yaml").write_text(
        text.replace("host: 0.0.0.0", "host: 0.0.0.0\n  users_file: users.json")
    )
    assert load_config(tmp_path / "store.yaml").store.api.users_file == (tmp_path / "users.json").resolve()


async def test_a_real_gateway_audits_a_hub_command_once(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """`Gateway._audited_command` on a real gateway and broker: a replayed `resend` runs once, audited once."""
    command = Command(id="r-audit", issued_at=ISSUED, args={"ranges": [{"first_seq": 1, "last_seq": 1}]})
    async with running_gateway(tmp_path, mosquitto) as gateway:
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="audit-hq") as mqtt:
            hq = Hq(mqtt)
            await mqtt.subscribe(command_result_topic(STORE), qos=1)
            reader = asyncio.create_task(hq.read())
            try:
                for _ in range(2):
                    await hq.send(STORE, "resend", command.model_dump_json().encode())
                results = await hq.until_marker()
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
        assert [r.id for _, r in results] == ["r-audit", "r-audit"]
        rows = audit_for(gateway.store_cfg.data_dir).query(user="hub")
    assert [(r["action"], r["role"], r["target"]) for r in rows] == [("command.resend", "hub", "resend")]
    assert rows[0]["after"]["command_id"] == "r-audit"
    assert rows[0]["after"]["ok"] is True
    assert rows[0]["before"]["config_version"] == gateway.config.version


async def test_cli_changes_apply_without_a_restart(live: Live, capsys: pytest.CaptureFixture[str]) -> None:
    """`users remove` ends the user's sessions and `users passwd` changes the password, on the next request."""
    add_users(live.users_file, {"temp": ("staff", "temp-password-1")})
    async with client(live) as c:
        r = await c.post("/api/auth/login", json={"username": "temp", "password": "temp-password-1"})
        token = r.json()["token"]
        c.cookies.clear()
        assert (await c.get("/api/auth/me", headers=bearer(token))).status_code == 200
        with _stdin("temp-password-2\n"):
            assert (
                cli_main(["users", "--file", str(live.users_file), "passwd", "temp", "--password-stdin"]) == 0
            )
        old = await c.post("/api/auth/login", json={"username": "temp", "password": "temp-password-1"})
        assert old.status_code == 401
        capsys.readouterr()
        assert cli_main(["users", "--file", str(live.users_file), "list"]) == 0
        listed = capsys.readouterr().out
        assert "temp\tstaff" in listed
        assert "argon2" not in listed
        assert cli_main(["users", "--file", str(live.users_file), "remove", "temp"]) == 0
        assert (await c.get("/api/auth/me", headers=bearer(token))).status_code == 401


async def test_a_broken_users_file_lets_no_one_in(tmp_path: Path) -> None:
    broken = tmp_path / "users.json"
    broken.write_text('{"users": [{"name": "x"', encoding="utf-8")
    assert UserStore(broken).users() == {}


async def test_an_installer_binding_on_a_real_gateway_is_in_the_audit_log(tmp_path: Path) -> None:
    """The installer's trail is mirrored (edge/installer.py → `audit_installer`) with before → after; this
    gateway runs without users (loopback developer mode), so the actor is `anonymous`."""
    async with installer_stack(tmp_path) as stack:
        async with httpx.AsyncClient(base_url=stack.url, timeout=60) as c:
            r = await c.post(
                "/api/installer/binding/A01", json={"sku": "06901234567892", "unit_weight_g": 351.0}
            )
        assert r.status_code == 200, r.text
        rows = audit_for(stack.data_dir).query(action="installer")
    assert [(row["action"], row["target"], row["user"]) for row in rows] == [
        ("installer.binding", "A01", "anonymous")
    ]
    assert rows[0]["before"] != rows[0]["after"]["value"]
    assert "351" in str(rows[0]["after"]["value"])
