"""Checkout-lane routes of the gateway API and the cashier page `/lane` (issue #6, checkout lane).

    GET  /api/lanes                                every lane: cashier, current (or last) transaction, scale
    GET  /api/lanes/{lane}                         one lane
    POST /api/lanes/{lane}/cashier                 {cashier}: sign in (between transactions)
    POST /api/lanes/{lane}/scan                    {code}: a code typed or pasted, read as a scanner line
    POST /api/lanes/{lane}/member                  {member_id}: the sale's member
    POST /api/lanes/{lane}/lines/{n}/quantity      {qty}: a counted line's quantity (1..99 999)
    POST /api/lanes/{lane}/lines/{n}/void          void one line
    POST /api/lanes/{lane}/void                    void every line (the transaction stays open)
    POST /api/lanes/{lane}/complete                complete → `sale.completed` / `sale.returned`
    POST /api/lanes/{lane}/cancel                  abandon the open transaction
    POST /api/lanes/{lane}/returns                 {transaction_id}: open a return against a sale of this store
    POST /api/lanes/{lane}/returns/lines           {index, qty?}: take back item `index` of the original
    GET  /api/sales?lane=&limit=                   completed sales and returns recorded here, newest first
    GET  /api/sales/{transaction_id}               one sale (or return) and the returns against it
    GET  /api/book-stock?gtin=                     book stock per GTIN (units, or kg for variable-measure)

Every command answers with the lane's view after it. Refusals are 4xx with the reason in `detail`: 404 for an
unknown lane or sale, 422 for a code that is not a barcode or not in the catalogue (`unknown item`), 409 for a
command the lane's state does not allow (no cashier, empty transaction, a weighed line still waiting…). A
refused command changes nothing. The routes work with the WAN down: a completed sale waits in the outbox.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from cloud_bridge.contract import QTY_MAX, SaleCompleted
from edge.retail.errors import LaneError, UnknownItem

if TYPE_CHECKING:
    # Types only: `edge.lanes` pulls in the barcode driver (biip), loaded only when the store has lanes.
    from edge.gateway import Gateway
    from edge.lanes import Command, LaneService

LANE_PAGE = Path(__file__).resolve().parent / "web" / "lane.html"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CashierBody(_Body):
    cashier: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")


class ScanBody(_Body):
    code: str = Field(min_length=1, max_length=512, description="barcode data, AIM prefix optional")


class MemberBody(_Body):
    member_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")


class QuantityBody(_Body):
    qty: int = Field(ge=1, le=QTY_MAX)


class ReturnBody(_Body):
    transaction_id: str = Field(min_length=1, max_length=64)


class ReturnLineBody(_Body):
    index: int = Field(ge=0, description="index of the item in the original sale's `items`")
    qty: int | None = Field(default=None, ge=1, le=QTY_MAX, description="counted items: units (default 1)")


def lane_router(gateway: Gateway) -> APIRouter:
    """The lane routes bound to one gateway (404 everywhere when the store has no lanes)."""
    router = APIRouter(tags=["lanes"])

    def service() -> LaneService:
        if gateway.lanes is None:
            raise HTTPException(
                status_code=404, detail="this store runs no checkout lanes (lane scanner + catalogue)"
            )
        return gateway.lanes

    def lane_service(lane: str) -> LaneService:
        svc = service()
        if lane not in svc.lanes:
            raise HTTPException(
                status_code=404, detail=f"no lane {lane!r} (lanes: {', '.join(svc.lane_ids)})"
            )
        return svc

    def view(lane: str) -> dict[str, Any]:
        return lane_service(lane).view(lane)

    async def run(lane: str, command: Command) -> dict[str, Any]:
        svc = lane_service(lane)
        try:
            await svc.execute(lane, command)
        except UnknownItem as exc:
            raise HTTPException(status_code=422, detail=f"unknown item {exc.code}: {exc.reason}") from None
        except LaneError as exc:
            raise HTTPException(status_code=409, detail=exc.reason) from None
        return svc.view(lane)

    @router.get("/lane", include_in_schema=False)
    async def lane_page() -> FileResponse:
        return FileResponse(LANE_PAGE, media_type="text/html; charset=utf-8")

    @router.get("/api/lanes")
    async def lanes() -> list[dict[str, Any]]:
        return service().views()

    @router.get("/api/lanes/{lane}")
    async def one_lane(lane: str) -> dict[str, Any]:
        return view(lane)

    @router.post("/api/lanes/{lane}/cashier")
    async def cashier(lane: str, body: CashierBody) -> dict[str, Any]:
        return await run(lane, lambda ln, now: ln.sign_in(body.cashier, now))

    @router.post("/api/lanes/{lane}/scan")
    async def scan(lane: str, body: ScanBody) -> dict[str, Any]:
        try:
            typed = lane_service(lane).decode(body.code)
        except ValueError as exc:
            raise HTTPException(status_code=422, detail=f"not a product or member code: {exc}") from None
        return await run(lane, lambda ln, now: ln.scan(typed, now))

    @router.post("/api/lanes/{lane}/member")
    async def member(lane: str, body: MemberBody) -> dict[str, Any]:
        typed = lane_service(lane).member_scan(body.member_id)
        return await run(lane, lambda ln, now: ln.scan(typed, now))

    @router.post("/api/lanes/{lane}/lines/{line_no}/quantity")
    async def quantity(lane: str, line_no: int, body: QuantityBody) -> dict[str, Any]:
        return await run(lane, lambda ln, now: ln.set_quantity(line_no, body.qty, now))

    @router.post("/api/lanes/{lane}/lines/{line_no}/void")
    async def void_line(lane: str, line_no: int) -> dict[str, Any]:
        return await run(lane, lambda ln, now: ln.void_line(line_no, now))

    @router.post("/api/lanes/{lane}/void")
    async def void_all(lane: str) -> dict[str, Any]:
        return await run(lane, lambda ln, now: ln.void_all(now))

    @router.post("/api/lanes/{lane}/complete")
    async def complete(lane: str) -> dict[str, Any]:
        return await run(lane, lambda ln, now: ln.complete(now))

    @router.post("/api/lanes/{lane}/cancel")
    async def cancel(lane: str) -> dict[str, Any]:
        return await run(lane, lambda ln, now: ln.cancel(now))

    @router.post("/api/lanes/{lane}/returns")
    async def start_return(lane: str, body: ReturnBody) -> dict[str, Any]:
        found = await service().sale(body.transaction_id)
        if found is None:
            raise HTTPException(
                status_code=404, detail=f"no sale {body.transaction_id!r} recorded at this gateway"
            )
        original, prior = found
        if not isinstance(original, SaleCompleted):
            raise HTTPException(status_code=409, detail=f"{body.transaction_id} is a return, not a sale")
        return await run(lane, lambda ln, now: ln.start_return(original, now, prior_returns=prior))

    @router.post("/api/lanes/{lane}/returns/lines")
    async def return_line(lane: str, body: ReturnLineBody) -> dict[str, Any]:
        return await run(lane, lambda ln, now: ln.return_line(body.index, now, body.qty))

    @router.get("/api/sales")
    async def sales(
        lane: str | None = Query(default=None, description="one lane; all when absent"),
        limit: int = Query(default=50, ge=1, le=500),
    ) -> list[dict[str, Any]]:
        return await service().recent_sales(lane=lane, limit=limit)

    @router.get("/api/sales/{transaction_id}")
    async def sale(transaction_id: str) -> dict[str, Any]:
        found = await service().sale(transaction_id)
        if found is None:
            raise HTTPException(
                status_code=404, detail=f"no sale {transaction_id!r} recorded at this gateway"
            )
        payload, returns = found
        return {
            "kind": "sale" if isinstance(payload, SaleCompleted) else "return",
            "sale": payload.model_dump(mode="json"),
            "returns": [r.model_dump(mode="json") for r in returns],
        }

    @router.get("/api/book-stock")
    async def book_stock(
        gtin: Annotated[
            list[str] | None, Query(description="only these GTINs (repeat the parameter)")
        ] = None,
    ) -> dict[str, str]:
        stock = await service().book_stock(gtin)
        return {g: str(q) for g, q in stock.items()}

    return router
