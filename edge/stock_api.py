"""Stocktake (盘点) and receiving routes and the staff page that uses them (`/stocktake`).

A thin layer over `edge.stocktakes.StocktakeService` and `edge.receiving_service.ReceivingService` (the gateway
owns both as `gateway.stocktakes` / `gateway.receiving`): no SQL and no rules here. Refusals are 4xx with the
reason in `detail`: 404 for an unknown session/receipt/scanner, 409 for a state clash (an area overlapping an
open session, a closed session, an empty receipt), 422 for bad input (a code that is no product, a bin outside
the area; a delivery note's `detail` lists every bad row with its line).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field, model_validator

from edge.retail.errors import FileError, ReceivingError, StocktakeError
from edge.stocktakes import NotFound, ReceiptConflict, ReceiptNotFound, StocktakeConflict

if TYPE_CHECKING:
    from edge.receiving_service import ReceivingService
    from edge.stocktakes import StocktakeService

WEB_DIR = Path(__file__).resolve().parent / "web"
NOTE_MAX_BYTES = 1024 * 1024
"""A delivery note is a few hundred rows; anything near this is not one (the API's body cap is the same)."""

T = TypeVar("T")


class StockServices(Protocol):
    """The two services (`edge.stocktakes.StockDesk`)."""

    @property
    def stocktakes(self) -> StocktakeService: ...

    @property
    def receiving(self) -> ReceivingService: ...


class HasStock(Protocol):
    """What the routes need of the gateway: its `stock` desk (read per request, so a stand-in gateway without
    one still builds the app)."""

    @property
    def stock(self) -> StockServices: ...


_Staff = Field(default=None, min_length=1, max_length=64, description="staff id of who does it")


class StartStocktake(BaseModel):
    """Body of POST /api/stocktakes."""

    area: str = Field(
        min_length=1, max_length=64, description="bin id prefix (`A`), a bin location, or a label"
    )
    bins: list[str] | None = Field(default=None, description="the area's bins, when not named by `area`")
    by: str | None = _Staff


class CountBody(BaseModel):
    """Body of POST /api/stocktakes/{id}/counts: `code` (typed or scanned) or `gtin`, and a unique `scan_id`."""

    scan_id: str = Field(min_length=1, max_length=128, description="unique per count: the page's UUID")
    code: str | None = Field(default=None, min_length=1, max_length=200)
    gtin: str | None = Field(default=None, min_length=1, max_length=200)
    qty: int | None = Field(default=None, ge=1, le=99_999)
    bin_id: str | None = None
    by: str | None = _Staff

    @model_validator(mode="after")
    def _one_code(self) -> CountBody:
        if (self.code is None) == (self.gtin is None):
            raise ValueError("give exactly one of `code` or `gtin`")
        return self


class ByBody(BaseModel):
    """Body of confirm/cancel/commit: who does it (optional)."""

    by: str | None = _Staff


class AssignScanner(BaseModel):
    """Body of PUT /api/stocktakes/scanners/{id}: the session to count into (null: none)."""

    session_id: str | None = None


class StartReceipt(BaseModel):
    """Body of POST /api/receipts."""

    by: str | None = _Staff
    scanner: str | None = Field(
        default=None, description="receiving scanner to assign (default: the only one)"
    )


class ReceiveBody(BaseModel):
    """Body of POST /api/receipts/{id}/scans."""

    scan_id: str = Field(min_length=1, max_length=128)
    code: str = Field(min_length=1, max_length=200, description="GTIN, GS1 element string or HRI, or an SSCC")
    qty: int | None = Field(default=None, ge=1, le=99_999_999, description="count for a plain GTIN")


class AssignReceivingScanner(BaseModel):
    """Body of PUT /api/receipts/scanners/{id}."""

    receipt_id: str | None = None


async def _call(fn: Callable[[], Awaitable[T]]) -> T:
    """Run a service call, mapping its refusals to HTTP statuses with the reason."""
    try:
        return await fn()
    except (NotFound, ReceiptNotFound) as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    except (StocktakeConflict, ReceiptConflict) as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from exc
    except FileError as exc:
        raise HTTPException(
            status_code=422,
            detail={"message": f"{exc.file.name}: bad delivery note", "issues": [str(i) for i in exc.issues]},
        ) from exc
    except (StocktakeError, ReceivingError) as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from exc


async def _now(value: T) -> T:
    return value


def stock_router(gateway: HasStock) -> APIRouter:
    """The stocktake and receiving routes bound to one gateway (`app.include_router(stock_router(gw))`)."""
    router = APIRouter()

    @router.get("/stocktake", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(WEB_DIR / "stocktake.html", media_type="text/html; charset=utf-8")

    # --- stocktake -----------------------------------------------------------------------------------------

    @router.get("/api/stocktakes")
    async def sessions() -> list[dict[str, Any]]:
        return gateway.stock.stocktakes.sessions()

    @router.post("/api/stocktakes", status_code=201)
    async def start(body: StartStocktake) -> dict[str, Any]:
        return await _call(lambda: gateway.stock.stocktakes.start(body.area, body.bins, body.by))

    @router.get("/api/stocktakes/scanners")
    async def scanners() -> dict[str, Any]:
        return gateway.stock.stocktakes.scanners_view()

    @router.put("/api/stocktakes/scanners/{scanner_id}")
    async def assign(scanner_id: str, body: AssignScanner) -> dict[str, Any]:
        return await _call(lambda: gateway.stock.stocktakes.assign_saved(scanner_id, body.session_id))

    @router.get("/api/stocktakes/{session_id}")
    async def session(session_id: str) -> dict[str, Any]:
        return await _call(lambda: _now(gateway.stock.stocktakes.view(session_id)))

    @router.post("/api/stocktakes/{session_id}/counts")
    async def count(session_id: str, body: CountBody) -> dict[str, Any]:
        code = body.code if body.code is not None else body.gtin
        assert code is not None  # noqa: S101 - the model validator guarantees one of them
        return await _call(
            lambda: gateway.stock.stocktakes.count(
                session_id, code, scan_id=body.scan_id, qty=body.qty, bin_id=body.bin_id, by=body.by
            )
        )

    @router.post("/api/stocktakes/{session_id}/counts/{scan_id}/void")
    async def void(session_id: str, scan_id: str) -> dict[str, Any]:
        return await _call(lambda: gateway.stock.stocktakes.void(session_id, scan_id))

    @router.get("/api/stocktakes/{session_id}/variance")
    async def variance(session_id: str) -> dict[str, Any]:
        return await _call(lambda: _now(gateway.stock.stocktakes.variance_json(session_id)))

    @router.get("/api/stocktakes/{session_id}/variance.csv", response_class=Response)
    async def variance_csv(session_id: str) -> Response:
        text = await _call(lambda: _now(gateway.stock.stocktakes.variance_csv(session_id)))
        return Response(
            content=text.encode("utf-8"),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="variance-{session_id}.csv"'},
        )

    @router.post("/api/stocktakes/{session_id}/confirm")
    async def confirm(session_id: str, body: ByBody | None = None) -> dict[str, Any]:
        by = body.by if body is not None else None
        return await _call(lambda: gateway.stock.stocktakes.confirm(session_id, by))

    @router.post("/api/stocktakes/{session_id}/cancel")
    async def cancel(session_id: str, body: ByBody | None = None) -> dict[str, Any]:
        by = body.by if body is not None else None
        return await _call(lambda: gateway.stock.stocktakes.cancel(session_id, by))

    # --- receiving -----------------------------------------------------------------------------------------

    @router.get("/api/receipts")
    async def receipts() -> list[dict[str, Any]]:
        return gateway.stock.receiving.summaries()

    @router.post("/api/receipts", status_code=201)
    async def start_receipt(body: StartReceipt | None = None) -> dict[str, Any]:
        body = body or StartReceipt()
        return await _call(lambda: gateway.stock.receiving.start(body.by, body.scanner))

    @router.get("/api/receipts/scanners")
    async def receiving_scanners() -> dict[str, Any]:
        return gateway.stock.receiving.scanners_view()

    @router.put("/api/receipts/scanners/{scanner_id}")
    async def assign_receiving(scanner_id: str, body: AssignReceivingScanner) -> dict[str, Any]:
        return await _call(lambda: gateway.stock.receiving.assign(scanner_id, body.receipt_id))

    @router.get("/api/receipts/{receipt_id}")
    async def receipt(receipt_id: str) -> dict[str, Any]:
        return await _call(lambda: _now(gateway.stock.receiving.view(receipt_id)))

    @router.post("/api/receipts/{receipt_id}/scans")
    async def receive(receipt_id: str, body: ReceiveBody) -> dict[str, Any]:
        return await _call(
            lambda: gateway.stock.receiving.scan(receipt_id, body.code, scan_id=body.scan_id, qty=body.qty)
        )

    @router.put("/api/receipts/{receipt_id}/delivery-note")
    async def delivery_note(
        receipt_id: str, request: Request, name: str = "delivery-note.csv"
    ) -> dict[str, Any]:
        """The delivery note as the request body (CSV `sscc,gtin,qty`, UTF-8; an Excel BOM is fine)."""
        raw = await request.body()
        if len(raw) > NOTE_MAX_BYTES:
            raise HTTPException(status_code=413, detail=f"a delivery note is at most {NOTE_MAX_BYTES} bytes")
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise HTTPException(
                status_code=422, detail=f"the delivery note is not UTF-8 text: {exc}"
            ) from exc
        return await _call(lambda: gateway.stock.receiving.load_note(receipt_id, text, name[:200]))

    @router.post("/api/receipts/{receipt_id}/commit")
    async def commit(receipt_id: str, body: ByBody | None = None) -> dict[str, Any]:
        by = body.by if body is not None else None
        return await _call(lambda: gateway.stock.receiving.commit(receipt_id, by))

    @router.post("/api/receipts/{receipt_id}/cancel")
    async def cancel_receipt(receipt_id: str, body: ByBody | None = None) -> dict[str, Any]:
        by = body.by if body is not None else None
        return await _call(lambda: gateway.stock.receiving.cancel(receipt_id, by))

    return router


__all__ = ["HasStock", "StockServices", "stock_router"]
