"""The members and points API over HTTP (httpx against the FastAPI app), on both engines.

The app is `hub.api.create_app` over a real database, with the hub's clock injected so local days (check-in,
Double 11) are chosen by the test; sales arrive through `HubDB.apply_batch` as ingest would apply them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import pytest

from hub import sales as hub_sales
from hub.api import create_app
from hub.config import HubConfig
from hub.db import HubDB
from tests.hub.test_sales import MEMBER, Gateway, a_return, cst, item, sale


@dataclass
class Clock:
    """The hub's clock, moved by the test."""

    now: datetime

    def __call__(self) -> float:
        return self.now.timestamp()


@dataclass
class Api:
    http: httpx.AsyncClient
    db: HubDB
    clock: Clock

    async def json(self, method: str, path: str, expect: int = 200, **kwargs: Any) -> Any:
        response = await self.http.request(method, path, **kwargs)
        assert response.status_code == expect, response.text
        return response.json()


@pytest.fixture
async def api(db_url: str) -> AsyncIterator[Api]:
    clock = Clock(cst("2026-11-10 09:00"))
    previous = hub_sales.current_settings()
    try:
        async with HubDB(db_url) as db:
            app = create_app(db, HubConfig(hub_id="test-hq", database=db_url), clock=clock)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as http:
                yield Api(http, db, clock)
    finally:
        hub_sales.configure(previous)


async def test_register_then_read_the_member(api: Api) -> None:
    created = await api.json(
        "POST",
        "/api/members",
        201,
        json={"member_id": MEMBER, "birth_month": 11, "campaign_id": "welcome-2026"},
    )
    assert created["created"] is True
    assert [(e["cause"], e["ref"], e["delta"]) for e in created["entries"]] == [("signup", "welcome-2026", 5)]

    member = await api.json("GET", f"/api/members/{MEMBER}")
    assert member == {
        "member_id": MEMBER,
        "tier": "bronze",
        "points": 5,
        "points_owed": 0,
        "spend_30d_cny": "0.00",
        "spend_365d_cny": "0.00",
        "tier_as_of": "2026-11-10",
        "birth_month": 11,
        "registered": True,
        "source": "api",
        "created_at": "2026-11-10T01:00:00.000Z",
    }
    again = await api.json("POST", "/api/members", 409, json={"member_id": MEMBER})
    assert again == {"detail": f"member '{MEMBER}' is already registered"}


async def test_a_member_a_sale_created_is_claimed_by_registering(api: Api) -> None:
    await api.db.apply_batch(
        Gateway("s1").batch(sale("s1-L1-0001", cst("2026-11-10 08:00"), item("100.00"))), 1.0
    )
    claimed = await api.json("POST", "/api/members", 200, json={"member_id": MEMBER, "birth_month": 3})
    assert (claimed["member"]["source"], claimed["member"]["registered"], claimed["member"]["points"]) == (
        "sale",
        True,
        120,
    )


async def test_checkin_once_per_local_day_a_repeat_returns_the_first_result(api: Api) -> None:
    await api.json("POST", "/api/members", 201, json={"member_id": MEMBER})
    first = await api.json("POST", f"/api/members/{MEMBER}/checkin")
    api.clock.now = cst("2026-11-10 23:59:59")
    repeat = await api.json("POST", f"/api/members/{MEMBER}/checkin")
    api.clock.now = cst("2026-11-11 00:00")  # 2026-11-10T16:00Z: a new day in Shanghai
    next_day = await api.json("POST", f"/api/members/{MEMBER}/checkin")

    assert (first["created"], [(e["ref"], e["delta"]) for e in first["entries"]]) == (
        True,
        [("2026-11-10", 1)],
    )
    assert (repeat["created"], repeat["entries"], repeat["member"]["points"]) == (False, first["entries"], 1)
    assert (next_day["created"], [(e["ref"], e["delta"]) for e in next_day["entries"]]) == (
        True,
        [("2026-11-11", 1)],
    )
    assert next_day["member"]["points"] == 2


async def test_signup_once_per_campaign(api: Api) -> None:
    await api.json("POST", "/api/members", 201, json={"member_id": MEMBER})
    first = await api.json("POST", f"/api/members/{MEMBER}/signup", json={"campaign_id": "spring-2026"})
    repeat = await api.json("POST", f"/api/members/{MEMBER}/signup", json={"campaign_id": "spring-2026"})
    other = await api.json("POST", f"/api/members/{MEMBER}/signup", json={"campaign_id": "double11-2026"})

    assert (first["created"], first["member"]["points"]) == (True, 5)
    assert (repeat["created"], repeat["entries"], repeat["member"]["points"]) == (False, first["entries"], 5)
    assert (other["created"], other["member"]["points"]) == (True, 10)


async def test_redeem_never_below_zero_and_a_retry_changes_nothing(api: Api) -> None:
    await api.db.apply_batch(
        Gateway("s1").batch(sale("s1-L1-0002", cst("2026-11-10 08:00"), item("100.00"))), 1.0
    )
    path = f"/api/members/{MEMBER}/redeem"

    refused = await api.json("POST", path, 409, json={"points": 121, "redemption_id": "mall-1"})
    assert refused == {
        "detail": f"member {MEMBER}: cannot redeem 121 points, the balance is 120"
        " (a redemption never takes the balance below zero)"
    }
    assert (await api.json("GET", f"/api/members/{MEMBER}"))["points"] == 120

    spent = await api.json("POST", path, json={"points": 120, "redemption_id": "mall-2"})
    retry = await api.json("POST", path, json={"points": 120, "redemption_id": "mall-2"})
    conflict = await api.json("POST", path, 409, json={"points": 5, "redemption_id": "mall-2"})

    assert (
        spent["created"],
        spent["member"]["points"],
        [(e["cause"], e["delta"]) for e in spent["entries"]],
    ) == (
        True,
        0,
        [("redeem", -120)],
    )
    assert (retry["created"], retry["entries"], retry["member"]["points"]) == (False, spent["entries"], 0)
    assert conflict == {"detail": "redemption 'mall-2' was already made for 120 points, not 5"}
    ledger = await api.json("GET", f"/api/members/{MEMBER}/ledger")
    assert [(e["cause"], e["ref"], e["delta"], e["sale_id"]) for e in ledger] == [
        ("purchase", "s1-L1-0002", 120, "s1-L1-0002"),
        ("redeem", "mall-2", -120, None),
    ]


async def test_the_ledger_pages_in_the_order_the_balance_changed(api: Api) -> None:
    gw = Gateway("s1")
    completed = sale("s1-L1-0003", cst("2026-11-11 00:30"), item("500.00", 2))
    await api.db.apply_batch(gw.batch(completed), 1.0)
    await api.db.apply_batch(
        gw.batch(a_return("s1-L2-R03", completed, cst("2026-11-11 09:00"), item("500.00"))), 2.0
    )

    everything = await api.json("GET", f"/api/members/{MEMBER}/ledger")
    first_page = await api.json("GET", f"/api/members/{MEMBER}/ledger", params={"limit": 2})
    rest = await api.json("GET", f"/api/members/{MEMBER}/ledger", params={"after_id": first_page[-1]["id"]})

    assert [(e["cause"], e["delta"]) for e in everything] == [
        ("purchase", 1200),
        ("double11", 50),
        ("return", -650),
    ]
    assert first_page + rest == everything
    assert everything[2]["detail"] == (
        "refund 500.00 of 1000.00 CNY: reverses 650 points (double11 50, purchase 600)"
    )
    assert everything[2]["ts"] == "2026-11-11T01:00:00.000Z"


async def test_unknown_members_are_404_everywhere(api: Api) -> None:
    detail = {"detail": "unknown member 'M404': register it with POST /api/members first"}
    assert await api.json("GET", "/api/members/M404", 404) == detail
    assert await api.json("GET", "/api/members/M404/ledger", 404) == detail
    assert await api.json("POST", "/api/members/M404/checkin", 404) == detail
    assert await api.json("POST", "/api/members/M404/signup", 404, json={"campaign_id": "c1"}) == detail
    assert (
        await api.json("POST", "/api/members/M404/redeem", 404, json={"points": 1, "redemption_id": "r1"})
        == detail
    )


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/members", {"member_id": "has space"}),
        ("/api/members", {"member_id": MEMBER, "birth_month": 13}),
        ("/api/members", {"member_id": MEMBER, "extra": 1}),
        (f"/api/members/{MEMBER}/redeem", {"points": 0, "redemption_id": "r1"}),
        (f"/api/members/{MEMBER}/redeem", {"points": 1, "redemption_id": "-starts-with-dash"}),
        (f"/api/members/{MEMBER}/signup", {"campaign_id": ""}),
    ],
)
async def test_bad_requests_are_422_and_change_nothing(api: Api, path: str, body: dict[str, Any]) -> None:
    await api.json("POST", path, 422, json=body)
    assert await api.db.query("SELECT COUNT(*) FROM points_ledger") == [(0,)]
    assert await api.db.query("SELECT COUNT(*) FROM members WHERE member_id <> :m", {"m": MEMBER}) == [(0,)]
