"""`edge.stocktakes.StocktakeService` on a real SQLite gateway database: sessions per area, journaled counts,
confirm → book stock + `stocktake.completed` in one transaction, replay after a restart."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

import pytest

from cloud_bridge.contract import EventType, StocktakeCompleted
from edge.retail.catalogue import Catalogue
from edge.retail.errors import StocktakeError
from edge.stocktakes import NotFound, StocktakeConflict, StocktakeService
from edge.store import GatewayStore

from .conftest import COLA, CRACKERS, GS, NOODLES, WATER, book, outbox, seed_book, store_bins


def service(store: GatewayStore, catalogue: Catalogue, clock_s: float = 1000.0) -> StocktakeService:
    published: list[dict[str, object]] = []
    svc = StocktakeService(
        store,
        store_bins(),
        catalogue,
        handheld_scanners=["hh1", "hh2"],
        publish=published.append,
        boot_id="boot1",
        clock=lambda: clock_s,
    )
    svc.published = published  # type: ignore[attr-defined]
    return svc


def progress(view: dict[str, object]) -> dict[str, tuple[int, int]]:
    rows = view["progress"]
    assert isinstance(rows, list)
    return {r["sku"]: (r["expected"], r["counted"]) for r in rows}


async def test_count_confirm_adjusts_book_stock_and_emits_one_event(
    store: GatewayStore, catalogue: Catalogue
) -> None:
    await seed_book(store, {COLA: 10, WATER: 5, NOODLES: 7})
    svc = service(store, catalogue)
    await svc.open()
    view = await svc.start("A", by="li.na")
    sid = str(view["session_id"])
    assert view["bins"] == ["A01", "A02"]
    assert progress(view) == {COLA: (10, 0), WATER: (5, 0)}
    assert view["elsewhere"] == [COLA]  # C01 holds cola too: staff must count it there as well

    for n in range(8):  # eight cans scanned one by one, by EAN-13 (the GTIN-14 without its leading zero)
        await svc.count(sid, COLA[1:], scan_id=f"p{n}")
    await svc.count(sid, f"]C101{COLA}30{2}", scan_id="gs1")  # a GS1-128 case label, AI 30 count 2 → 10 cans
    view = await svc.count(sid, WATER, scan_id="w", qty=6)  # typed with a number on the page
    await svc.count(sid, WATER, scan_id="w", qty=6)  # a retry of the same request adds nothing
    with pytest.raises(StocktakeError, match="different count"):
        await svc.count(sid, WATER, scan_id="w", qty=7)
    view = await svc.count(sid, NOODLES, scan_id="found")  # noodles found in aisle A: expected there 0
    assert progress(view) == {COLA: (10, 10), WATER: (5, 6), NOODLES: (0, 1)}
    view = await svc.void(sid, "p0")  # a wrong scan voided
    assert progress(view)[COLA] == (10, 9)

    variance = svc.variance_json(sid)
    rows = {r["sku"]: r for r in variance["rows"]}
    assert (rows[COLA]["variance"], rows[COLA]["value_variance"]) == (-1, "-3.00")
    assert (rows[WATER]["variance"], rows[WATER]["value_variance"]) == (1, "2.00")
    assert (variance["units_short"], variance["units_over"], variance["value_variance"]) == (1, 2, "3.50")

    done = await svc.confirm(sid, by="li.na")
    assert done["status"] == "confirmed"
    assert await book(store) == {COLA: Decimal(9), WATER: Decimal(6), NOODLES: Decimal(8)}
    events = await outbox(store)
    assert [t for t, _ in events] == [EventType.STOCKTAKE_COMPLETED]
    payload = StocktakeCompleted.model_validate(events[0][1])
    assert payload.session_id == sid
    assert payload.book_deltas == {COLA: -1, WATER: 1, NOODLES: 1}
    assert payload.value_variance == Decimal("3.50")
    assert payload.by == "li.na"
    with pytest.raises(StocktakeConflict, match="confirmed"):
        await svc.confirm(sid)
    with pytest.raises(StocktakeConflict):
        await svc.count(sid, COLA, scan_id="late")
    assert [t for t, _ in await outbox(store)] == [EventType.STOCKTAKE_COMPLETED]  # applied once


async def test_sessions_for_different_areas_run_at_once_but_never_share_a_bin_or_sku(
    store: GatewayStore, catalogue: Catalogue
) -> None:
    svc = service(store, catalogue)
    await svc.open()
    a = await svc.start("A")
    b = await svc.start("aisle B")  # by location
    assert b["bins"] == ["B01", "B02", "B03"]
    assert progress(b) == {NOODLES: (0, 0), CRACKERS: (0, 0)}  # never moved: book stock unknown → 0
    with pytest.raises(StocktakeConflict, match="A01"):
        await svc.start("A0")
    with pytest.raises(StocktakeConflict, match="one session counts each SKU"):
        await svc.start("C")  # C01 is cola, which session A counts
    with pytest.raises(StocktakeError, match="matches no bin"):
        await svc.start("Z")
    with pytest.raises(StocktakeError, match="unknown bins: X9"):
        await svc.start("mine", ["A01", "X9"])
    with pytest.raises(StocktakeError, match="not in area"):
        await svc.count(str(a["session_id"]), COLA, scan_id="x", bin_id="B01")
    with pytest.raises(NotFound):
        svc.view("st-nope")
    # Crackers have two bins in area B: an unplaced count is one SKU-level adjustment.
    await svc.count(str(b["session_id"]), CRACKERS, scan_id="c1", qty=3)
    sid_b = str(b["session_id"])
    payload = svc.completed_payload(svc.board.sessions[sid_b], 2000.0, None)
    assert [(x.sku, x.bin_id, x.delta) for x in payload.adjustments] == [
        (NOODLES, "B01", 0),
        (CRACKERS, None, 3),
    ]
    await svc.cancel(str(a["session_id"]))
    assert (await svc.start("C"))["bins"] == ["C01"]  # cola is free again once A is closed
    assert await outbox(store) == []  # cancelling emits nothing
    assert await book(store) == {}


async def test_a_restart_replays_sessions_counts_voids_and_scanner_assignments(
    store: GatewayStore, catalogue: Catalogue
) -> None:
    await seed_book(store, {COLA: 4})
    svc = service(store, catalogue)
    await svc.open()
    sid = str((await svc.start("A"))["session_id"])
    await svc.assign_saved("hh1", sid)
    for n in range(3):
        await svc.handheld_scan(
            {"device": "hh1", "role": "handheld", "kind": "product", "raw": f"]E0{COLA[1:]}"}
        )
        assert n + 1 == svc.handheld.counted
    await svc.count(sid, WATER, scan_id="page-1", qty=2)
    await svc.void(sid, "page-1")
    before = svc.view(sid)

    again = service(store, catalogue)
    await again.open()
    after = again.view(sid)
    assert progress(after) == progress(before) == {COLA: (4, 3), WATER: (0, 0)}
    assert after["scanners"] == ["hh1"]
    assert again.assignments == {"hh1": sid}
    # The replayed session goes on counting and keeps its ids: a retried page count is still a no-op.
    await again.count(sid, WATER, scan_id="page-1", qty=2)
    assert progress(again.view(sid))[WATER] == (0, 0)


async def test_handheld_scans_count_only_into_the_assigned_session(
    store: GatewayStore, catalogue: Catalogue
) -> None:
    svc = service(store, catalogue)
    await svc.open()
    a = str((await svc.start("A"))["session_id"])
    b = str((await svc.start("B"))["session_id"])
    scan = {"device": "hh1", "role": "handheld", "kind": "product", "raw": f"]E0{COLA[1:]}"}
    await svc.handheld_scan(scan)
    assert svc.handheld.unassigned == 1
    assert "no open session" in str(svc.handheld.last_error)
    svc.assign("hh1", a)
    svc.assign("hh2", b)
    await svc.handheld_scan(scan)
    await svc.handheld_scan({**scan, "device": "hh2", "raw": f"]E0{NOODLES[1:]}"})
    await svc.handheld_scan({**scan, "device": "hh2", "raw": "]E0not-a-code"})
    assert (svc.handheld.counted, svc.handheld.refused) == (2, 1)
    assert progress(svc.view(a))[COLA] == (0, 1)
    assert progress(svc.view(b))[NOODLES] == (0, 1)
    with pytest.raises(NotFound, match="handheld"):
        svc.assign("lane-scanner", a)
    await svc.confirm(a)
    assert svc.assignments == {"hh2": b}  # a closed session releases its scanner
    published = svc.published  # type: ignore[attr-defined]
    assert published[-1]["type"] == "stocktake"


async def test_variance_csv_has_a_bom_and_one_row_per_sku(store: GatewayStore, catalogue: Catalogue) -> None:
    await seed_book(store, {COLA: 10, NOODLES: 20})
    svc = service(store, catalogue)
    await svc.open()
    sid = str((await svc.start("x", ["A01", "B01"]))["session_id"])
    await svc.count(sid, COLA, scan_id="1", qty=9)
    await svc.count(sid, f"01{NOODLES}3021{GS}10LOT7", scan_id="2")  # AI 30 = 21, FNC1, then a batch (10)
    text = svc.variance_csv(sid)
    assert text.startswith("\ufeff")
    rows = list(csv.DictReader(io.StringIO(text.removeprefix("\ufeff"))))
    assert [(r["sku"], r["expected"], r["counted"], r["variance"], r["value_variance"]) for r in rows] == [
        (COLA, "10", "9", "-1", "-3.00"),
        (NOODLES, "20", "21", "1", "4.50"),
    ]
    assert rows[0]["name_zh"] == "可口可乐 330毫升罐装"
