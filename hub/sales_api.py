"""The HQ API for sales, members and points (issue #4 parts 3–5, 9): `SalesService` and its FastAPI router.

`SalesService` runs `hub.sales`' transaction functions on the hub database's threads (one transaction per
call); the router maps its outcomes to HTTP. Every route has pydantic request and response models, so the
OpenAPI document (`/openapi.json`, `/docs`) describes it; docs/hub-api.md lists them.

Decisions the API makes (docs/hub-api.md):

- Money is CNY text with two decimals ("48.11"), as on the wire; points are integers.
- `POST …/checkin` a second time on the same local day and `POST …/signup` for a campaign already joined
  answer 200 with the entries of the first time and ``"created": false`` — a retry from a phone with a bad
  connection must not look like an error. `POST …/redeem` with a redemption id already used for the same
  points is such a retry too; for other points it is a 409.
- A redemption above the balance is a 409 with the balance in the message; nothing changes.
- Days are calendar days in the loyalty time zone (`loyalty.timezone`, Asia/Shanghai by default).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import date, timedelta
from typing import Annotated, Any, Final, TypeVar

from fastapi import APIRouter, HTTPException, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field

from hub import sales as hub_sales
from hub.config import HubConfig
from hub.db import HubDB, Tx
from hub.loyalty import InsufficientPointsError, LoyaltyError, LoyaltyRules
from hub.models import DailySales, HeldReturn, LedgerItem, MemberView, PointsChange, SaleDetail, SaleRecord

T = TypeVar("T")

ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
"""Member, store and transaction ids: the contract's identifier (docs/wire-contract.md)."""
REF_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
"""Campaign and redemption ids: a ledger ref (hub/loyalty.py)."""
GTIN_PATTERN: Final = r"^[0-9]{14}$"

MemberId = Annotated[str, Field(pattern=ID_PATTERN, examples=["M00042"])]


class SalesService:
    """Sales and member operations over an open `HubDB`: each call is one transaction on a DB thread."""

    def __init__(self, db: HubDB, rules: LoyaltyRules, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.rules = rules
        self._clock = clock

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        # One write transaction on a DB thread.
        return await self.db.run(fn, *args)

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.db.run(fn, *args, write=False)

    def today(self) -> date:
        """The local date now, in the loyalty time zone."""
        return hub_sales.local_day(self._clock(), self.rules)

    # --- reads ---

    async def sales(self, where: hub_sales.SalesFilter) -> list[SaleRecord]:
        """Sales matching the filter, newest first."""
        return await self._read(hub_sales.sales, where)

    async def sale(self, transaction_id: str) -> SaleDetail | None:
        """One sale with its returns."""
        return await self._read(hub_sales.sale_detail, transaction_id)

    async def daily(self, store_id: str, first: date, last: date) -> list[DailySales]:
        """A store's daily totals."""
        return await self._read(hub_sales.daily_sales, store_id, first, last)

    async def held_returns(self, limit: int = 100) -> list[HeldReturn]:
        """Returns waiting for their sale."""
        return await self._read(hub_sales.held_returns, limit)

    async def member(self, member_id: str) -> MemberView | None:
        """A member with the tier as of now."""
        return await self._read(hub_sales.member_view, self.rules, member_id, self._clock())

    async def ledger(
        self, member_id: str, *, limit: int = 1000, after_id: int = 0
    ) -> list[LedgerItem] | None:
        """The member's ledger, oldest first; None if unknown."""

        def run(tx: Tx) -> list[LedgerItem] | None:
            return hub_sales.ledger(tx, member_id, limit=limit, after_id=after_id)

        return await self._read(run)

    # --- member actions ---

    async def register(
        self, member_id: str, *, birth_month: int | None = None, campaign_id: str | None = None
    ) -> tuple[PointsChange, bool]:
        """Register a member; (outcome, whether the member row is new)."""

        def run(tx: Tx) -> tuple[PointsChange, bool]:
            return hub_sales.register_member(
                tx, self.rules, member_id, birth_month=birth_month, campaign_id=campaign_id, now=self._clock()
            )

        return await self._write(run)

    async def signup(self, member_id: str, campaign_id: str) -> PointsChange:
        """Campaign sign-up points (once per campaign)."""
        return await self._write(hub_sales.signup, self.rules, member_id, campaign_id, self._clock())

    async def checkin(self, member_id: str) -> PointsChange:
        """The daily check-in point (once per local day)."""
        return await self._write(hub_sales.checkin, self.rules, member_id, self._clock())

    async def redeem(self, member_id: str, points: int, redemption_id: str) -> PointsChange:
        """Spend points; never below zero."""

        def run(tx: Tx) -> PointsChange:
            return hub_sales.redeem(
                tx, self.rules, member_id, points=points, redemption_id=redemption_id, now=self._clock()
            )

        return await self._write(run)


# --- request and response models ------------------------------------------------------------------------------


class _Request(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RegisterMember(_Request):
    """`POST /api/members`."""

    member_id: MemberId
    birth_month: int | None = Field(
        default=None, ge=1, le=12, description="only the month is kept (Platinum birthday-month bonus)"
    )
    campaign_id: str | None = Field(
        default=None, pattern=REF_PATTERN, description="sign the new member up for this campaign"
    )


class SignUp(_Request):
    """`POST /api/members/{member_id}/signup`."""

    campaign_id: str = Field(pattern=REF_PATTERN, examples=["double11-2026"])


class Redeem(_Request):
    """`POST /api/members/{member_id}/redeem`."""

    points: int = Field(ge=1, le=1_000_000_000)
    redemption_id: str = Field(
        pattern=REF_PATTERN,
        description="the points mall's order id: a retry with the same id changes nothing",
    )


class ErrorDetail(BaseModel):
    """What a 4xx answer carries (FastAPI's `HTTPException` body)."""

    detail: str


_NOT_FOUND: Final[dict[int | str, dict[str, Any]]] = {404: {"model": ErrorDetail, "description": "unknown"}}
_CONFLICT: Final[dict[int | str, dict[str, Any]]] = {
    404: {"model": ErrorDetail, "description": "unknown member"},
    409: {"model": ErrorDetail, "description": "refused: nothing changed"},
}


def _http(exc: Exception) -> HTTPException:
    """One translation of the sales errors to HTTP (STYLE.md rule 10)."""
    if isinstance(exc, hub_sales.MemberNotFoundError):
        return HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc))
    if isinstance(
        exc,
        InsufficientPointsError | hub_sales.RedemptionConflictError | hub_sales.MemberAlreadyRegisteredError,
    ):
        return HTTPException(status.HTTP_409_CONFLICT, detail=str(exc))
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc))


def sales_router(
    db: HubDB,
    config: HubConfig,
    *,
    clock: Callable[[], float] = time.time,
    known_store: Callable[[str], Awaitable[None]] | None = None,
) -> APIRouter:
    """The sales, members and points routes over an open `HubDB`. `known_store(store_id)` (an async
    callable raising 404) guards the per-store route the way the other store routes are guarded."""
    service = SalesService(db, config.loyalty, clock=clock)
    router = APIRouter(tags=["sales and members"])

    @router.get("/api/sales", summary="Sales, newest first")
    async def list_sales(
        store: Annotated[str | None, Query(pattern=ID_PATTERN, description="store id")] = None,
        day: Annotated[date | None, Query(description="local date (loyalty time zone), YYYY-MM-DD")] = None,
        sku: Annotated[str | None, Query(pattern=GTIN_PATTERN, description="GTIN-14 of a line")] = None,
        member: Annotated[str | None, Query(pattern=ID_PATTERN, description="member id")] = None,
        limit: Annotated[int, Query(ge=1, le=hub_sales.SALES_LIMIT_MAX)] = 100,
    ) -> list[SaleRecord]:
        return await service.sales(
            hub_sales.SalesFilter(store_id=store, day=day, gtin=sku, member_id=member, limit=limit)
        )

    @router.get("/api/sales/{transaction_id}", summary="One sale and its returns", responses=_NOT_FOUND)
    async def one_sale(transaction_id: str) -> SaleDetail:
        found = await service.sale(transaction_id)
        if found is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"unknown sale {transaction_id!r}")
        return found

    @router.get("/api/returns/held", summary="Returns waiting for their original sale")
    async def waiting_returns(limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[HeldReturn]:
        return await service.held_returns(limit)

    @router.get(
        "/api/stores/{store_id}/sales/daily",
        summary="A store's sales and refunds per local day",
        responses=_NOT_FOUND,
    )
    async def daily(
        store_id: str,
        first: Annotated[
            date | None, Query(alias="from", description="first local day (default: 29 days before `to`)")
        ] = None,
        last: Annotated[date | None, Query(alias="to", description="last local day (default: today)")] = None,
    ) -> list[DailySales]:
        if known_store is not None:
            await known_store(store_id)
        last = last or service.today()
        first = first or last - timedelta(days=29)
        if first > last:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"from {first} is after to {last}"
            )
        if (last - first).days + 1 > hub_sales.DAILY_RANGE_MAX_DAYS:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                detail=f"at most {hub_sales.DAILY_RANGE_MAX_DAYS} days per request, asked {(last - first).days + 1}",
            )
        return await service.daily(store_id, first, last)

    @router.post(
        "/api/members",
        summary="Register a member (optionally signing up for a campaign)",
        status_code=status.HTTP_201_CREATED,
        responses={
            200: {"model": PointsChange, "description": "a member a sale had created is now registered"},
            409: {"model": ErrorDetail, "description": "already registered"},
        },
    )
    async def register(body: RegisterMember, response: Response) -> PointsChange:
        try:
            change, created = await service.register(
                body.member_id, birth_month=body.birth_month, campaign_id=body.campaign_id
            )
        except (LoyaltyError, hub_sales.MemberNotFoundError) as exc:
            raise _http(exc) from exc
        if not created:
            response.status_code = status.HTTP_200_OK
        return change

    @router.get("/api/members/{member_id}", summary="A member: tier and points", responses=_NOT_FOUND)
    async def member(member_id: str) -> MemberView:
        found = await service.member(member_id)
        if found is None:
            raise _http(hub_sales.MemberNotFoundError(member_id))
        return found

    @router.get(
        "/api/members/{member_id}/ledger",
        summary="Every change of the member's points, in the order applied",
        responses=_NOT_FOUND,
    )
    async def ledger(
        member_id: str,
        limit: Annotated[int, Query(ge=1, le=hub_sales.LEDGER_LIMIT_MAX)] = 1000,
        after_id: Annotated[int, Query(ge=0, description="entries after this ledger id (paging)")] = 0,
    ) -> list[LedgerItem]:
        found = await service.ledger(member_id, limit=limit, after_id=after_id)
        if found is None:
            raise _http(hub_sales.MemberNotFoundError(member_id))
        return found

    @router.post("/api/members/{member_id}/redeem", summary="Redeem points", responses=_CONFLICT)
    async def redeem(member_id: str, body: Redeem) -> PointsChange:
        try:
            return await service.redeem(member_id, body.points, body.redemption_id)
        except (LoyaltyError, hub_sales.MemberNotFoundError) as exc:
            raise _http(exc) from exc

    @router.post(
        "/api/members/{member_id}/checkin",
        summary="Daily check-in (once per local day)",
        responses=_NOT_FOUND,
    )
    async def checkin(member_id: str) -> PointsChange:
        try:
            return await service.checkin(member_id)
        except (LoyaltyError, hub_sales.MemberNotFoundError) as exc:
            raise _http(exc) from exc

    @router.post(
        "/api/members/{member_id}/signup",
        summary="Campaign sign-up (once per campaign)",
        responses=_NOT_FOUND,
    )
    async def signup(member_id: str, body: SignUp) -> PointsChange:
        try:
            return await service.signup(member_id, body.campaign_id)
        except (LoyaltyError, hub_sales.MemberNotFoundError) as exc:
            raise _http(exc) from exc

    return router
