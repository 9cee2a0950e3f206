"""Sales queries, daily totals and the OpenAPI document over HTTP (httpx against the FastAPI app), on both
engines. Sales arrive through `HubDB.apply_batch` as ingest applies them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from hub import sales as hub_sales
from hub.api import create_app
from hub.config import HubConfig
from hub.db import HubDB
from tests.hub.test_members_api import Api, Clock
from tests.hub.test_sales import GTIN_B, GTIN_WEIGHED, Gateway, a_return, cst, item, sale, weighed


@pytest.fixture
async def api(db_url: str) -> AsyncIterator[Api]:
    clock = Clock(cst("2026-11-12 12:00"))
    previous = hub_sales.current_settings()
    try:
        async with HubDB(db_url) as db:
            app = create_app(db, HubConfig(hub_id="test-hq", database=db_url), clock=clock)
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://hub.test"
            ) as http:
                yield Api(http, db, clock)
    finally:
        hub_sales.configure(previous)


async def _fill(api: Api) -> None:
    """Two stores over the Shanghai midnight of 10→11 November (16:00Z), one return the next day."""
    s1, s2 = Gateway("s1"), Gateway("s2")
    late_on_10th = sale("s1-L1-0001", cst("2026-11-10 23:30"), item("20.00", 2), member_id="M1")
    early_on_11th = sale(
        "s1-L2-0002",
        cst("2026-11-11 00:30"),
        item("5.00"),
        weighed("39.80", "0.455"),
        member_id=None,
        lane="L2",
    )
    other_store = sale("s2-L1-0001", cst("2026-11-11 10:00"), item("7.50", 2, gtin=GTIN_B), member_id="M2")
    await api.db.apply_batch(s1.batch(late_on_10th, early_on_11th), 1.0)
    await api.db.apply_batch(s2.batch(other_store), 2.0)
    await api.db.apply_batch(
        s1.batch(a_return("s1-L1-R001", late_on_10th, cst("2026-11-12 09:00"), item("20.00"))), 3.0
    )


def _ids(sales: list[dict[str, Any]]) -> list[str]:
    return [s["transaction_id"] for s in sales]


async def test_sales_are_listed_newest_first_and_filtered(api: Api) -> None:
    await _fill(api)

    everything = await api.json("GET", "/api/sales")
    assert _ids(everything) == ["s2-L1-0001", "s1-L2-0002", "s1-L1-0001"]
    newest = everything[2]
    assert (newest["total"], newest["refunded"], newest["local_date"], newest["ts"]) == (
        "40.00",
        "20.00",
        "2026-11-10",
        "2026-11-10T15:30:00.000Z",
    )
    assert _ids(await api.json("GET", "/api/sales", params={"store": "s1"})) == ["s1-L2-0002", "s1-L1-0001"]
    assert _ids(await api.json("GET", "/api/sales", params={"day": "2026-11-11"})) == [
        "s2-L1-0001",
        "s1-L2-0002",
    ]
    assert _ids(await api.json("GET", "/api/sales", params={"sku": GTIN_WEIGHED})) == ["s1-L2-0002"]
    assert _ids(await api.json("GET", "/api/sales", params={"member": "M2"})) == ["s2-L1-0001"]
    assert _ids(
        await api.json("GET", "/api/sales", params={"store": "s1", "day": "2026-11-11", "sku": GTIN_WEIGHED})
    ) == ["s1-L2-0002"]
    assert _ids(await api.json("GET", "/api/sales", params={"limit": 1})) == ["s2-L1-0001"]
    assert await api.json("GET", "/api/sales", params={"store": "s9"}) == []
    await api.json("GET", "/api/sales", 422, params={"sku": "123"})
    await api.json("GET", "/api/sales", 422, params={"day": "11/11/2026"})
    await api.json("GET", "/api/sales", 422, params={"limit": 0})


async def test_one_sale_with_its_returns(api: Api) -> None:
    await _fill(api)
    detail = await api.json("GET", "/api/sales/s1-L1-0001")
    assert detail["sale"]["items"] == [
        {"gtin": "07032069804988", "qty": 2, "weight_kg": None, "unit_price": "20.00", "amount": "40.00"}
    ]
    assert [(r["transaction_id"], r["refund"], r["local_date"], r["lane"]) for r in detail["returns"]] == [
        ("s1-L1-R001", "20.00", "2026-11-12", "L2")
    ]
    assert await api.json("GET", "/api/sales/nope", 404) == {"detail": "unknown sale 'nope'"}


async def test_daily_totals_per_store_in_shanghai_days(api: Api) -> None:
    await _fill(api)
    days = await api.json(
        "GET", "/api/stores/s1/sales/daily", params={"from": "2026-11-09", "to": "2026-11-12"}
    )
    assert days == [
        {
            "store_id": "s1",
            "day": "2026-11-10",
            "sales": 1,
            "gross": "40.00",
            "returns": 0,
            "refunds": "0.00",
            "net": "40.00",
        },
        {
            "store_id": "s1",
            "day": "2026-11-11",
            "sales": 1,
            "gross": "23.11",
            "returns": 0,
            "refunds": "0.00",
            "net": "23.11",
        },
        {
            "store_id": "s1",
            "day": "2026-11-12",
            "sales": 0,
            "gross": "0.00",
            "returns": 1,
            "refunds": "20.00",
            "net": "-20.00",
        },
    ]
    # Without from/to: the 30 local days up to today (the hub's clock says 12 November).
    assert await api.json("GET", "/api/stores/s1/sales/daily") == days
    assert await api.json("GET", "/api/stores/s2/sales/daily", params={"from": "2026-11-12"}) == []
    assert await api.json("GET", "/api/stores/s9/sales/daily", 404) == {
        "detail": "unknown store 's9': the hub has no data from it"
    }
    refused = await api.json(
        "GET", "/api/stores/s1/sales/daily", 422, params={"from": "2026-11-12", "to": "2026-11-01"}
    )
    assert refused == {"detail": "from 2026-11-12 is after to 2026-11-01"}
    await api.json(
        "GET", "/api/stores/s1/sales/daily", 422, params={"from": "2025-01-01", "to": "2026-11-12"}
    )


async def test_the_openapi_document_describes_every_sales_and_member_route(api: Api) -> None:
    spec = await api.json("GET", "/openapi.json")
    paths = spec["paths"]
    schemas = spec["components"]["schemas"]

    def response_ref(path: str, method: str, code: str = "200") -> str:
        content = paths[path][method]["responses"][code]["content"]["application/json"]["schema"]
        return str(content.get("$ref") or content["items"]["$ref"])

    def body_ref(path: str) -> str:
        return str(paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"])

    assert response_ref("/api/sales", "get").endswith("/SaleRecord")
    assert response_ref("/api/sales/{transaction_id}", "get").endswith("/SaleDetail")
    assert response_ref("/api/stores/{store_id}/sales/daily", "get").endswith("/DailySales")
    assert response_ref("/api/returns/held", "get").endswith("/HeldReturn")
    assert response_ref("/api/members", "post", "201").endswith("/PointsChange")
    assert body_ref("/api/members").endswith("/RegisterMember")
    assert response_ref("/api/members/{member_id}", "get").endswith("/MemberView")
    assert response_ref("/api/members/{member_id}/ledger", "get").endswith("/LedgerItem")
    assert body_ref("/api/members/{member_id}/redeem").endswith("/Redeem")
    assert body_ref("/api/members/{member_id}/signup").endswith("/SignUp")
    assert response_ref("/api/members/{member_id}/redeem", "post", "409").endswith("/ErrorDetail")
    assert response_ref("/api/members/{member_id}/checkin", "post").endswith("/PointsChange")
    assert schemas["SaleRecord"]["properties"]["total"]["pattern"] == r"^-?[0-9]+\.[0-9]{2}$"
    assert {"member_id", "tier", "points"} <= set(schemas["MemberView"]["required"])
    assert [p["name"] for p in paths["/api/stores/{store_id}/sales/daily"]["get"]["parameters"]] == [
        "store_id",
        "from",
        "to",
    ]
