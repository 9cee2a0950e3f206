"""The demo's cashier (`shelfgate.demo_cashier`) on real parts: it rings up exactly the shelf picks, through the
lane scanner and scale simulators over ptys, completes through the local API, and the sales reach the hub.

The stack is test_mixed_day's (Modbus shelves, lane scanner + scale, real Mosquitto, hub on SQLite); the shelf
picks are the test's own (`sim.pick`), so what the cashier must sell is known exactly.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest

from shelfgate.broker import Mosquitto
from shelfgate.demo_cashier import BACK_ROOM_UNITS, DemoCashier
from tests.integration.test_mixed_day import (
    BINS,
    COLA,
    CRACKERS,
    INITIAL_ON_SHELF,
    STORE,
    WATER,
    eventually,
    running,
)

pytestmark = pytest.mark.timeout(240)


async def test_the_demo_cashier_sells_what_shoppers_picked_and_the_hub_sees_it(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async with running(tmp_path, mosquitto) as s:
        assert s.gateway.config.catalogue is not None
        s.sim.scales["scale1"].put(0.0)
        s.sim.pick("A1", 2)  # cola
        s.sim.pick("B2", 1)  # crackers
        s.sim.pick("A2", 1)  # water
        cashier = DemoCashier(
            s.sim,
            s.gateway.config.catalogue,
            str(s.gw.base_url),
            lane="lane1",
            scanner_id="scan-lane1",
            scale_id="scale1",
            bin_skus={b[0]: b[1] for b in BINS},
            every_s=(0.2, 0.4),
            first_after_s=(0.0, 0.1),
            member_share=1.0,
            produce_share=1.0,
            max_units=3,  # four units picked: two customers
        )
        task = asyncio.create_task(cashier.run(), name="test.cashier")
        try:

            async def two_sales() -> bool:
                assert not task.done(), task
                return len(cashier.sales) >= 2

            await eventually(two_sales, "two demo sales completed at the lane")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        sold: Counter[str] = Counter()
        for sale in cashier.sales[:2]:
            lines = sale["payload"]["items"]
            assert sale["member_id"] is not None, sale
            assert [ln["gtin"][:3] for ln in lines if ln["weight_kg"] is not None] == ["022"], sale
            for ln in lines:
                if ln["qty"] is not None:
                    sold[ln["gtin"]] += ln["qty"]
        assert sold == Counter({COLA: 2, CRACKERS: 1, WATER: 1}), "exactly the picks, each once"
        assert [sum(ln["qty"] or 0 for ln in x["payload"]["items"]) for x in cashier.sales[:2]] == [3, 1]

        # Book stock: the opening delivery (shelf + back room) less what was sold.
        book = {g: q for g, q in (await s.book()).items() if not g.startswith("022")}
        assert book == {sku: Decimal(INITIAL_ON_SHELF + BACK_ROOM_UNITS - sold[sku]) for _, sku, _, _ in BINS}

        # The hub: both sales, same totals, the shelves untouched by the till.
        ids = {x["transaction_id"]: x["total"] for x in cashier.sales}

        async def at_hub() -> bool:
            listed = await s.get(s.hub, "/api/sales", store=STORE)
            return {x["transaction_id"]: x["total"] for x in listed} == ids

        await eventually(at_hub, "the cashier's sales at the hub")
        assert s.sim.scenario.true_counts == {"A1": 3, "A2": 4, "B1": 5, "B2": 4}
