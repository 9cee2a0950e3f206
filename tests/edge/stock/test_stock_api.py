"""`edge.stock_api.stock_router` over HTTP (httpx's ASGI transport, the real app routes and services on a real
SQLite store): every refusal is a 4xx naming its reason."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest_asyncio
from fastapi import FastAPI

from edge.config import Scanner
from edge.retail.catalogue import Catalogue
from edge.stock_api import stock_router
from edge.stocktakes import StockDesk
from edge.store import GatewayStore

from .conftest import COLA, GS, NOODLES, seed_book, sscc, store_bins


@dataclass
class _Gateway:
    stock: StockDesk


@pytest_asyncio.fixture
async def client(store: GatewayStore, catalogue: Catalogue) -> AsyncIterator[httpx.AsyncClient]:
    scanners = [Scanner(id="hh1", port="/dev/hh1", role="handheld")]
    desk = StockDesk(store, store_bins(), catalogue, scanners)
    await desk.start()
    await seed_book(store, {COLA: 5})
    app = FastAPI()
    app.include_router(stock_router(_Gateway(desk)))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        yield c


async def test_stocktake_routes_answer_with_reasons(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/stocktakes", json={"area": "A", "by": "li.na"})
    assert r.status_code == 201
    sid = r.json()["session_id"]
    assert (await client.post("/api/stocktakes", json={"area": "A01"})).status_code == 409
    r = await client.post("/api/stocktakes", json={"area": "Q"})
    assert (r.status_code, "matches no bin" in r.json()["detail"]) == (422, True)
    assert (await client.get("/api/stocktakes/st-missing")).status_code == 404
    r = await client.post(f"/api/stocktakes/{sid}/counts", json={"scan_id": "1", "code": COLA, "gtin": COLA})
    assert r.status_code == 422  # exactly one of code / gtin
    r = await client.post(f"/api/stocktakes/{sid}/counts", json={"scan_id": "1", "code": "hello"})
    assert (r.status_code, "cannot count" in r.json()["detail"]) == (422, True)
    r = await client.post(f"/api/stocktakes/{sid}/counts", json={"scan_id": "1", "gtin": COLA, "qty": 4})
    assert r.status_code == 200
    assert {p["sku"]: p["counted"] for p in r.json()["progress"]}[COLA] == 4
    r = await client.post(
        f"/api/stocktakes/{sid}/counts", json={"scan_id": "2", "code": f"00{sscc('0' * 17)}"}
    )
    assert (r.status_code, "pallet" in r.json()["detail"]) == (422, True)
    r = await client.put("/api/stocktakes/scanners/nope", json={"session_id": sid})
    assert r.status_code == 404
    r = await client.put("/api/stocktakes/scanners/hh1", json={"session_id": sid})
    assert r.json()["scanners"] == [{"scanner_id": "hh1", "session_id": sid}]
    csv_response = await client.get(f"/api/stocktakes/{sid}/variance.csv")
    assert csv_response.headers["content-type"].startswith("text/csv")
    assert f"{COLA},可口可乐 330毫升罐装,Coca-Cola 330 ml can,5,4,-1,3.00,-3.00" in csv_response.text
    assert (await client.post(f"/api/stocktakes/{sid}/confirm", json={"by": "li.na"})).status_code == 200
    r = await client.post(f"/api/stocktakes/{sid}/cancel")
    assert (r.status_code, r.json()["detail"]) == (409, f"session {sid} is confirmed")


async def test_receipt_routes_answer_with_reasons(client: httpx.AsyncClient) -> None:
    rid = (await client.post("/api/receipts", json={})).json()["receipt_id"]
    r = await client.post(f"/api/receipts/{rid}/commit")
    assert (r.status_code, "nothing received" in r.json()["detail"]) == (409, True)
    bad = "sscc,gtin\n1,2\n"
    r = await client.put(
        f"/api/receipts/{rid}/delivery-note", content=bad, headers={"Content-Type": "text/csv"}
    )
    assert r.status_code == 422
    assert r.json()["detail"]["issues"] == [
        "line 1: header: columns must be ['sscc', 'gtin', 'qty'], got ['sscc', 'gtin']"
    ]
    r = await client.post(f"/api/receipts/{rid}/scans", json={"scan_id": "a", "code": f"02{NOODLES}{GS}"})
    assert (r.status_code, "AI (37)" in r.json()["detail"]) == (422, True)
    r = await client.post(f"/api/receipts/{rid}/scans", json={"scan_id": "b", "code": f"02{NOODLES}3724"})
    assert {t["gtin"]: t["qty"] for t in r.json()["totals"]} == {NOODLES: 24}
    assert (
        await client.post("/api/receipts/rc-nope/scans", json={"scan_id": "c", "code": COLA})
    ).status_code == 404
    assert (await client.post(f"/api/receipts/{rid}/commit")).json()["status"] == "committed"
