"""The demo's cashier: rings up what the simulated shoppers took, through the lane's real devices and API.

`shelfgate demo` runs one `DemoCashier` per checkout lane that has a lane scanner simulator. Every ~20–40 s a
customer reaches the till with the goods the store scenario's shoppers have picked off the weighed shelves since
the last checkout (the scenario's ground-truth log), so sales explain the picks — the shrink signal stays quiet
and book stock follows the shelves. Now and then the customer shows a member code first, or buys loose produce
weighed on the lane scale. The cashier:

1. scans each item on the lane scanner simulator (EAN-13, or a GS1 DataMatrix for a GTIN-14 that has no
   EAN-13 form) — the gateway reads it over the pty exactly as from a real scanner;
2. for produce, scans the item's plain in-store code and puts the goods on the scale simulator's pan: the
   lane prices the line by the first stable weight (docs/store-workflows.md, "Checkout lane");
3. completes the transaction through the local API (`POST /api/lanes/{lane}/complete`), the cashier screen's
   own route, and empties the pan.

So the sale travels the real path — lane journal, outbox, broker, hub — and shows on the cashier page
(`/lane`), the HQ sales views and the member's points. Before the first customer the cashier books an opening
delivery (`POST /api/receipts`): each shelf's starting count plus a back-room stock, so book stock starts at
what the store holds instead of going negative with the first sale.

A checkout that cannot finish (the lane refuses a command, the gateway is restarting) is cancelled and logged;
the cashier never takes the demo down. The picks it could not sell are sold with the next customer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import httpx

from edge.retail.catalogue import Catalogue
from firmware_sims.layout import SimCode
from firmware_sims.runner import SimStore

_log = logging.getLogger("shelfgate.demo.cashier")

BACK_ROOM_UNITS: Final = 24
"""Units per SKU the opening delivery books on top of what the shelves hold (the back room's stock)."""
SETTLE_S: Final = 15.0
"""How long a checkout waits for the lane to show every scan (a hang guard; a scan takes well under 1 s)."""


@dataclass(frozen=True, slots=True)
class Basket:
    """One customer's goods: GTIN-14 → units (counted goods), produce GTIN-14 → grams, an optional member code."""

    units: Mapping[str, int]
    produce_g: Mapping[str, float]
    member: SimCode | None = None

    def __bool__(self) -> bool:
        return bool(self.units or self.produce_g)


def scan_code(gtin: str) -> tuple[str, str]:
    """What a pack's barcode reads for a GTIN-14: its EAN-13 (`]E0`) when it has one, else a GS1 DataMatrix
    holding AI (01) (`]d2`; GS1 General Specifications §5.5)."""
    if gtin.startswith("0"):
        return gtin[1:], "]E0"
    return f"01{gtin}", "]d2"


class DemoCashier:
    """Works one checkout lane of a running `SimStore` against the gateway's local API (`api_base`)."""

    def __init__(
        self,
        sim: SimStore,
        catalogue: Catalogue,
        api_base: str,
        *,
        lane: str,
        scanner_id: str,
        scale_id: str | None,
        bin_skus: Mapping[str, str],
        cashier: str = "demo-cashier",
        every_s: tuple[float, float] = (20.0, 40.0),
        first_after_s: tuple[float, float] = (3.0, 8.0),
        member_share: float = 0.4,
        produce_share: float = 0.4,
        max_units: int = 12,
        headers: Mapping[str, str] | None = None,
        seed: int = 1,
    ) -> None:
        self.sim = sim
        self.catalogue = catalogue
        self.api_base = api_base
        self.lane = lane
        self.scanner_id = scanner_id
        self.scale_id = scale_id
        self.cashier = cashier
        self.every_s = every_s
        self.first_after_s = first_after_s
        self.member_share = member_share
        self.produce_share = produce_share
        self.max_units = max_units
        self.headers = dict(headers or {})
        self._rng = random.Random(seed)  # a story, not security
        self._gtin_of_bin = {
            b: item.gtin for b, sku in bin_skus.items() if (item := catalogue.get(sku)) is not None
        }
        self._members = [c for c in sim.layout.codes if c.member]
        self._produce = sorted(
            i.gtin for i in catalogue.items if i.variable_measure and i.gtin.startswith("0")
        )
        self._cursor = 0
        """How much of the scenario's log has been rung up (or booked by the opening delivery)."""
        self._owed: Counter[str] = Counter()
        """GTIN → picked units not sold yet (over `max_units` for one customer, or a checkout that failed)."""
        self.sales: list[dict[str, Any]] = []
        """Completed transactions as the lane answered them (tests read it)."""

    # --- the customer -------------------------------------------------------------------------------------

    def next_basket(self) -> Basket:
        """What the next customer brings: the shelf picks since the last checkout (up to `max_units`), maybe a
        member card, maybe weighed produce (always, when nothing was picked and the lane has a scale)."""
        log = self.sim.scenario.log
        for change in log[self._cursor :]:
            gtin = self._gtin_of_bin.get(change.bin_id)
            if change.delta < 0 and gtin is not None:
                self._owed[gtin] += -change.delta
        self._cursor = len(log)
        units: dict[str, int] = {}
        room = self.max_units
        for gtin in sorted(self._owed):
            take = min(self._owed[gtin], room)
            if take > 0:
                units[gtin] = take
                room -= take
        produce: dict[str, float] = {}
        if (
            self.scale_id is not None
            and self._produce
            and (not units or self._rng.random() < self.produce_share)
        ):
            produce[self._rng.choice(self._produce)] = round(self._rng.uniform(250.0, 1800.0), 1)
        member = (
            self._rng.choice(self._members)
            if self._members and self._rng.random() < self.member_share
            else None
        )
        return Basket(units, produce, member)

    # --- the till ---------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Book the opening delivery, sign in, then serve customers until cancelled."""
        async with httpx.AsyncClient(base_url=self.api_base, headers=self.headers, timeout=10) as http:
            await self._forever(http, self.opening_delivery, "book the opening delivery")
            await self._forever(http, self.sign_in, "sign in")
            await asyncio.sleep(self._rng.uniform(*self.first_after_s))
            while True:
                basket = self.next_basket()
                if basket:
                    try:
                        await self.checkout(http, basket)
                    except (httpx.HTTPError, LaneRefused, TimeoutError) as exc:
                        # The picks stay owed (`_sold` did not run): the next customer brings them.
                        _log.warning("demo cashier on %s: checkout abandoned: %s", self.lane, exc)
                        with contextlib.suppress(httpx.HTTPError):
                            await http.post(f"/api/lanes/{self.lane}/cancel")
                        await self._empty_pan()
                await asyncio.sleep(self._rng.uniform(*self.every_s))

    async def _forever(
        self,
        http: httpx.AsyncClient,
        step: Callable[[httpx.AsyncClient], Awaitable[None]],
        what: str,
    ) -> None:
        """Retry a start-up step until it succeeds (the gateway may still be opening its devices)."""
        while True:
            try:
                await step(http)
            except (httpx.HTTPError, LaneRefused) as exc:
                _log.warning("demo cashier on %s: cannot %s yet: %s", self.lane, what, exc)
                await asyncio.sleep(2.0)
            else:
                return

    async def opening_delivery(self, http: httpx.AsyncClient) -> None:
        """Book each weighed SKU's starting shelf count plus `BACK_ROOM_UNITS` as one committed receipt."""
        start: Counter[str] = Counter()
        for b in self.sim.layout.bins:
            gtin = self._gtin_of_bin.get(b.bin_id)
            if gtin is not None:
                start[gtin] += b.initial_count
        if not start:
            return
        receipt = await _ok(await http.post("/api/receipts", json={"by": self.cashier}))
        rid = receipt["receipt_id"]
        for gtin, n in sorted(start.items()):
            body = {"scan_id": f"demo-opening-{gtin}", "code": gtin, "qty": n + BACK_ROOM_UNITS}
            await _ok(await http.post(f"/api/receipts/{rid}/scans", json=body))
        await _ok(await http.post(f"/api/receipts/{rid}/commit", json={"by": self.cashier}))
        _log.info("demo cashier: opening delivery %s booked (%d SKUs)", rid, len(start))

    async def sign_in(self, http: httpx.AsyncClient) -> None:
        """Take the lane; a transaction left open by an earlier run is cancelled first."""
        view = await _ok(await http.get(f"/api/lanes/{self.lane}"))
        tx = view.get("transaction")
        if tx is not None and tx.get("status") == "open":
            await _ok(await http.post(f"/api/lanes/{self.lane}/cancel"))
        if view.get("cashier") != self.cashier:
            await _ok(await http.post(f"/api/lanes/{self.lane}/cashier", json={"cashier": self.cashier}))

    async def checkout(self, http: httpx.AsyncClient, basket: Basket) -> dict[str, Any]:
        """Ring up one basket on the lane's devices, complete it through the API; the lane's answer."""
        scanner = self.sim.scanners[self.scanner_id]
        expect_member = basket.member is not None
        if basket.member is not None:
            await scanner.scan(basket.member.data, basket.member.symbology)
            await asyncio.sleep(0.3)
        for gtin, n in basket.units.items():
            code, symbology = scan_code(gtin)
            for _ in range(n):
                await scanner.scan(code, symbology)
                await asyncio.sleep(0.3)  # a cashier's rhythm; also keeps each scan its own line on the wire
        for gtin, grams in basket.produce_g.items():
            code, symbology = scan_code(gtin)
            await scanner.scan(code, symbology)
            await self._settle(http, basket, expect_member, weighed=False)
            assert self.scale_id is not None  # noqa: S101 - produce is only chosen for a lane with a scale
            self.sim.scales[self.scale_id].put(grams)
        tx = await self._settle(http, basket, expect_member, weighed=True)
        done = await _ok(await http.post(f"/api/lanes/{self.lane}/complete"))
        sale = done["transaction"]
        await self._empty_pan()
        self._sold(basket)
        self.sales.append(sale)
        _log.info(
            "demo cashier: sale %s on %s, %d lines, %s CNY%s",
            sale["transaction_id"],
            self.lane,
            len(tx["lines"]),
            sale["total"],
            f", member {sale['member_id']}" if sale.get("member_id") else "",
        )
        return dict(sale)

    async def _settle(
        self, http: httpx.AsyncClient, basket: Basket, member: bool, *, weighed: bool
    ) -> dict[str, Any]:
        """Wait until the open transaction shows every counted scan (and, when `weighed`, every produce line
        priced; otherwise the produce line waiting for the scale)."""
        want_units = Counter(basket.units)
        async with asyncio.timeout(SETTLE_S):
            while True:
                view = await _ok(await http.get(f"/api/lanes/{self.lane}"))
                tx = view.get("transaction")
                if tx is not None and tx.get("status") == "open":
                    lines = [ln for ln in tx["lines"] if not ln.get("voided")]
                    units: Counter[str] = Counter()
                    for ln in lines:
                        if ln.get("qty") is not None:
                            units[ln["gtin"]] += ln["qty"]  # a repeat scan may merge or add a line
                    produce = {ln["gtin"] for ln in lines if ln["gtin"] in basket.produce_g}
                    ready = (
                        units == want_units
                        and (not member or tx.get("member_id") is not None)
                        and produce == set(basket.produce_g)
                        and bool(tx.get("waiting_for_weight")) is (not weighed and bool(basket.produce_g))
                    )
                    if ready:
                        return dict(tx)
                await asyncio.sleep(0.2)

    async def _empty_pan(self) -> None:
        if self.scale_id is not None:
            self.sim.scales[self.scale_id].put(0.0)

    def _sold(self, basket: Basket) -> None:
        for gtin, n in basket.units.items():
            self._owed[gtin] -= n
            if self._owed[gtin] <= 0:
                del self._owed[gtin]


class LaneRefused(Exception):
    """The gateway refused a command (4xx): the reason is its `detail`."""


async def _ok(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail")
        except ValueError:
            detail = response.text
        raise LaneRefused(
            f"{response.request.method} {response.request.url.path}: {response.status_code} {detail}"
        )
    return response.json()


def demo_cashiers(
    sim: SimStore, catalogue: Catalogue | None, api_base: str, *, bin_skus: Mapping[str, str], seed: int = 1
) -> list[DemoCashier]:
    """One cashier per lane scanner of the simulated store (with the lane's scale, if it has one)."""
    if catalogue is None:
        return []
    # httpx logs every request at INFO: a cashier polling its lane would drown the demo's own log lines.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    scales = {s.lane: s.device_id for s in sim.layout.scales if s.lane is not None}
    out: list[DemoCashier] = []
    for i, sc in enumerate(s for s in sim.layout.scanners if s.role == "lane" and s.lane is not None):
        assert sc.lane is not None  # noqa: S101 - filtered above
        out.append(
            DemoCashier(
                sim,
                catalogue,
                api_base,
                lane=sc.lane,
                scanner_id=sc.device_id,
                scale_id=scales.get(sc.lane),
                bin_skus=bin_skus,
                cashier=f"demo-{sc.lane}",
                seed=seed * 1000 + i,
            )
        )
    return out
