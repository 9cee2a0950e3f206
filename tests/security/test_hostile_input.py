"""Hostile bodies at both HTTP APIs, over real uvicorn: each is refused with a clear 4xx and nothing is stored.

The bodies: over the body cap (1 MiB at the gateway, 16 MiB at the hub; declared by Content-Length, or
streamed chunked with none), nested 10 000 levels, invalid UTF-8 (as JSON, as text, with no Content-Type), a
lone UTF-16 surrogate, NaN, ±Infinity, duplicate member names, a 5 000-digit integer, truncated JSON and a
UTF-8 BOM. Each goes to writing routes of the gateway (acknowledge, calibration, binding, ROI edit) and of the
hub (register, redeem, sign up); the checks are app-wide. Before this, a lone surrogate or NaN in a body made
both APIs answer 500 (FastAPI echoes the input in its 422 body and cannot serialise it; an acknowledgement
`by` holding a surrogate reached SQLite); `edge/http_limits.py` and `hub/http_limits.py` now refuse them
first.

"Nothing stored" is checked on the databases themselves (every table row, read from the SQLite file) and on
the gateway's config file, before and after the whole barrage; the gateway's engine keeps writing its own
level ledger and outbox while the test runs, so those tables are left out of its snapshot.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge.api import MAX_BODY_BYTES as GATEWAY_MAX_BODY_BYTES
from httpkit.limits import MAX_JSON_DEPTH
from hub import sales as hub_sales
from hub.api import MAX_BODY_BYTES as HUB_MAX_BODY_BYTES
from hub.api import create_app
from hub.config import HubConfig
from hub.db import HubDB
from tests.hub.test_sales import MEMBER, Gateway, cst, item, sale
from tests.security.live_app import LiveApp, serving
from tests.shelfgate.installer_stack import installer_stack

pytestmark = pytest.mark.timeout(180)

ENGINE_TABLES = frozenset({"meta", "bins", "ledger", "outbox", "outbox_held"})
"""Gateway tables its engine writes by itself (seq, level ledger, events): not part of "nothing stored"."""


@dataclass(frozen=True)
class Hostile:
    """One hostile request body, the statuses that are a clear refusal, and a fragment of the reason."""

    name: str
    content: bytes | Callable[[], Iterator[bytes]]
    status: int
    reason: str
    content_type: str | None = "application/json"


def hostile_bodies(max_body_bytes: int) -> list[Hostile]:
    """The barrage for an API whose body cap is `max_body_bytes`."""
    big = b'{"by": "' + b"a" * (max_body_bytes + 1024) + b'"}'

    def chunked() -> Iterator[bytes]:
        """The oversized body streamed: no Content-Length, so only the running count can stop it."""
        for start in range(0, len(big), 256 * 1024):
            yield big[start : start + 256 * 1024]

    return [
        Hostile("oversized-declared", big, 413, "exceeds the limit"),
        Hostile("oversized-chunked", chunked, 413, "exceeds the limit"),
        Hostile("oversized-not-json", big, 413, "exceeds the limit", "text/plain"),
        Hostile("oversized-no-content-type", big, 413, "exceeds the limit", None),
        Hostile("nested-10000", b'{"by": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", 400, "nested deeper"),
        Hostile(
            "nested-just-too-deep",
            b'{"by": ' + b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH + b"}",
            400,
            f"nested deeper than {MAX_JSON_DEPTH}",
        ),
        Hostile("invalid-utf8", b'{"by": "\xff\xfe", "member_id": "M9"}', 400, "not UTF-8"),
        Hostile("invalid-utf8-no-content-type", b'{"by": "\xc3\x28"}', 400, "not UTF-8", None),
        Hostile("invalid-utf8-text", b"\xc3\x28 sscc,gtin,qty", 400, "not UTF-8", "text/csv"),
        Hostile("lone-surrogate", b'{"by": "\\ud800", "member_id": "\\udc00"}', 400, "surrogate"),
        Hostile(
            "nan", b'{"by": "x", "mass_g": NaN, "points": NaN, "birth_month": NaN}', 400, "NaN is not JSON"
        ),
        Hostile("infinity", b'{"mass_g": Infinity, "points": -Infinity}', 400, "Infinity is not JSON"),
        Hostile("out-of-range", b'{"mass_g": 1e999, "points": 1e999}', 400, "IEEE 754"),
        Hostile("duplicate-member", b'{"by": "a", "by": "b"}', 400, "duplicate member name"),
        Hostile("huge-integer", b'{"points": ' + b"9" * 5000 + b"}", 400, "4300 digits"),
        Hostile("truncated", b'{"by": "st', 400, "Unterminated string"),
        Hostile("utf8-bom", b'\xef\xbb\xbf{"by": "x"}', 400, "BOM"),
    ]


def barrage(live: LiveApp, targets: list[tuple[str, str]], max_body_bytes: int) -> int:
    """Every hostile body to every target (the oversized ones to the first two: the cap is app-wide, and
    a megabyte each is the slow part); return how many requests were refused as expected."""
    sent = 0
    with httpx.Client(base_url=live.url, timeout=60) as http:
        for i, (method, path) in enumerate(targets):
            for hostile in hostile_bodies(max_body_bytes):
                if hostile.status == 413 and i >= 2:
                    continue
                headers = {} if hostile.content_type is None else {"content-type": hostile.content_type}
                content = hostile.content() if callable(hostile.content) else hostile.content
                response = http.request(method, path, content=content, headers=headers)
                assert_refused(response, hostile, f"{method} {path}")
                sent += 1
    return sent


def assert_refused(response: httpx.Response, hostile: Hostile, where: str) -> None:
    assert response.status_code == hostile.status, f"{hostile.name} at {where}: {response.text[:300]}"
    detail = response.json()["detail"]
    assert isinstance(detail, str), detail
    assert hostile.reason in detail, f"{hostile.name} at {where}: {detail}"


def rows(db_file: Path, skip: frozenset[str] = frozenset()) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table (but `skip`), read from the SQLite file through a read-only connection."""
    with contextlib.closing(sqlite3.connect(f"file:{db_file}?mode=ro", uri=True)) as conn:
        names = [n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {
            n: sorted(conn.execute(f'SELECT * FROM "{n}"').fetchall(), key=repr)  # noqa: S608 - names from the DB
            for n in names
            if n not in skip
        }


# --- the gateway ---------------------------------------------------------------------------------------------


@dataclass
class GatewayUnderTest:
    live: LiveApp
    db_file: Path
    config_file: Path
    alert_id: str

    def state(self) -> tuple[dict[str, list[tuple[Any, ...]]], bytes, Any]:
        with httpx.Client(base_url=self.live.url, timeout=30) as http:
            calibration = http.get("/api/installer/calibration/A01").json()
        return rows(self.db_file, ENGINE_TABLES), self.config_file.read_bytes(), calibration


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayUnderTest]:
    tmp = tmp_path_factory.mktemp("gateway")
    found: dict[str, Path] = {}

    @contextlib.asynccontextmanager
    async def start() -> AsyncIterator[str]:
        async with installer_stack(tmp) as stack:
            found["data"], found["config"] = stack.data_dir, stack.config_file
            yield stack.url

    with LiveApp(start) as live:
        # The simulated plate holds far more than the config's max (it is not calibrated yet): an "over" alert.
        with httpx.Client(base_url=live.url, timeout=30) as http:
            alerts = _poll(lambda: http.get("/api/alerts").json(), "an active alert")
        yield GatewayUnderTest(live, found["data"] / "gateway.db", found["config"], alerts[0]["alert_id"])


def _poll(read: Callable[[], list[Any]], what: str) -> list[Any]:
    """Hang guard: poll until `read` returns a non-empty list."""
    deadline = time.monotonic() + 60
    while not (value := read()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)
    return value


def gateway_targets(alert_id: str) -> list[tuple[str, str]]:
    return [
        ("POST", f"/api/alerts/{alert_id}/ack"),
        ("POST", "/api/installer/calibration/A01"),
        ("POST", "/api/installer/calibration/A01/loaded"),
        ("POST", "/api/installer/binding/A01"),
        ("PUT", "/api/cameras/cam1/rois"),
    ]


def test_the_gateway_refuses_every_hostile_body_and_stores_nothing(gateway: GatewayUnderTest) -> None:
    before = gateway.state()
    assert barrage(gateway.live, gateway_targets(gateway.alert_id), GATEWAY_MAX_BODY_BYTES) == 5 * 13 + 2 * 4
    assert gateway.state() == before
    with httpx.Client(base_url=gateway.live.url, timeout=30) as http:
        alert = next(a for a in http.get("/api/alerts").json() if a["alert_id"] == gateway.alert_id)
        assert alert["state"] == "raised"
        assert alert["acknowledged_by"] is None
        # A raw upload without a Content-Type is no JSON and is left to its route (an unknown receipt here).
        note = http.put("/api/receipts/r-unknown/delivery-note", content=b"sscc,gtin,qty\n")
        assert note.status_code in (404, 422), note.text
        assert "delivery" in note.text or "receipt" in note.text, note.text
        # The guard refuses only what is hostile: a plain acknowledgement still goes through.
        ok = http.post(f"/api/alerts/{gateway.alert_id}/ack", json={"by": "夜班 staff"})
        assert ok.status_code == 200, ok.text
        assert ok.json()["acknowledged_by"] == "夜班 staff"


# --- the hub -------------------------------------------------------------------------------------------------


@dataclass
class HubUnderTest:
    live: LiveApp
    db_file: Path


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubUnderTest]:
    db_file = tmp_path_factory.mktemp("hub") / "hub.sqlite3"
    url = f"sqlite:///{db_file}"

    @contextlib.asynccontextmanager
    async def start() -> AsyncIterator[str]:
        previous = hub_sales.current_settings()
        try:
            async with HubDB(url) as db:
                store = Gateway("s1")
                await db.apply_batch(
                    store.batch(sale("s1-L1-0001", cst("2026-11-10 23:30"), item("20.00"))), 1.0
                )
                async with serving(create_app(db, HubConfig(hub_id="hostile-hq", database=url))) as base:
                    yield base
        finally:
            hub_sales.configure(previous)

    with LiveApp(start) as live:
        yield HubUnderTest(live, db_file)


def test_the_hub_refuses_every_hostile_body_and_stores_nothing(hub: HubUnderTest) -> None:
    targets = [
        ("POST", "/api/members"),
        ("POST", f"/api/members/{MEMBER}/redeem"),
        ("POST", f"/api/members/{MEMBER}/signup"),
    ]
    before = rows(hub.db_file)
    assert barrage(hub.live, targets, HUB_MAX_BODY_BYTES) == 3 * 13 + 2 * 4
    assert rows(hub.db_file) == before
    with httpx.Client(base_url=hub.live.url, timeout=30) as http:
        ok = http.post("/api/members", json={"member_id": "M77", "birth_month": 11})
        assert ok.status_code == 201, ok.text
    assert rows(hub.db_file) != before  # the snapshot does see a write when there is one


def test_the_apis_document_their_refusals(gateway: GatewayUnderTest, hub: HubUnderTest) -> None:
    """Every operation declares the 4XX answer (a JSON object with `detail`) that the refusals above carry."""
    for live in (gateway.live, hub.live):
        with httpx.Client(base_url=live.url, timeout=30) as http:
            paths = http.get("/openapi.json").json()["paths"]
        operations = [op for item in paths.values() for op in item.values() if isinstance(op, dict)]
        assert operations
        for operation in operations:
            schema = operation["responses"]["4XX"]["content"]["application/json"]["schema"]
            assert schema["required"] == ["detail"]


def test_a_rollout_to_all_stores_missing_one_store_config_is_refused(hub: HubUnderTest) -> None:
    """Found by the fuzzer: `stores: "all"` with per-store `configs` lacking a known store was a KeyError (500)."""
    before = rows(hub.db_file)
    with httpx.Client(base_url=hub.live.url, timeout=30) as http:
        response = http.post("/api/config-rollouts", json={"stores": "all", "configs": {}})
    assert response.status_code == 422, response.text
    assert "no entry in configs for store(s) ['s1']" in response.json()["detail"]
    after = rows(hub.db_file)  # the rollout tables are created on first use: compare what holds rows
    assert after.get("config_rollouts") == []
    assert {n: r for n, r in after.items() if r and n != "config_rollout_schema_version"} == {
        n: r for n, r in before.items() if r
    }
