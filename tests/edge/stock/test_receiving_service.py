"""`edge.receiving_service.ReceivingService` on a real SQLite gateway database: GTIN with a count, GS1-128 AI
30/37, SSCC pallets through a delivery note; commit → book stock + `stock.received` in one transaction."""

from __future__ import annotations

from decimal import Decimal

import pytest

from cloud_bridge.contract import EventType, StockReceived
from edge.receiving_service import ReceivingService
from edge.retail.catalogue import Catalogue
from edge.retail.errors import ReceivingError
from edge.retail.receiving import DeliveryNoteError
from edge.stocktakes import ReceiptConflict, ReceiptNotFound
from edge.store import GatewayStore

from .conftest import COLA, CRACKERS, GS, NOODLES, WATER, book, outbox, seed_book, sscc

PALLET_1 = sscc("06901234" + "000000001")
PALLET_2 = sscc("06901234" + "000000002")
NOTE = f"sscc,gtin,qty\r\n{PALLET_1},{COLA},48\r\n{PALLET_1},{WATER},24\r\n{PALLET_2},{NOODLES},30\r\n"


def service(store: GatewayStore, catalogue: Catalogue) -> ReceivingService:
    return ReceivingService(
        store, catalogue, receiving_scanners=["dock1"], boot_id="boot1", clock=lambda: 5000.0
    )


async def test_a_delivery_books_every_label_kind_and_commits_once(
    store: GatewayStore, catalogue: Catalogue
) -> None:
    await seed_book(store, {COLA: 3})
    svc = service(store, catalogue)
    await svc.open()
    view = await svc.start(by="wang.wei")
    rid = str(view["receipt_id"])
    assert view["scanners"] == ["dock1"]  # the store's only receiving scanner follows the new receipt
    await svc.scan(rid, CRACKERS[1:], scan_id="s1", qty=12)  # a plain EAN-13 with a count typed on the page
    await svc.scan(rid, f"]C101{CRACKERS}306", scan_id="s2")  # GS1-128 (01)+(30): 6 more
    await svc.scan(rid, f"]C102{NOODLES}3710{GS}00{PALLET_2}", scan_id="s3")  # (02)+(37) on pallet 2
    with pytest.raises(ReceivingError, match="no delivery note"):
        await svc.scan(rid, f"00{PALLET_1}", scan_id="s4")
    await svc.load_note(rid, NOTE, "dn-0001.csv")
    view = await svc.scan(rid, f"]C100{PALLET_1}", scan_id="s4")  # the pallet label alone: the note's lines
    await svc.scan(rid, f"]C100{PALLET_1}", scan_id="s4")  # the same scan id again adds nothing
    with pytest.raises(ReceivingError, match="already received"):
        await svc.scan(rid, f"00{PALLET_1}", scan_id="s5")
    with pytest.raises(ReceivingError, match="AI \\(02\\) must come with AI \\(37\\)"):
        await svc.scan(rid, f"02{NOODLES}", scan_id="s6")
    with pytest.raises(ReceivingError, match="contradicts"):
        await svc.scan(rid, f"01{CRACKERS}306", scan_id="s7", qty=5)
    assert {t["gtin"]: t["qty"] for t in view["totals"]} == {CRACKERS: 18, NOODLES: 10, COLA: 48, WATER: 24}
    assert view["pallets_received"] == sorted([PALLET_1, PALLET_2])

    done = await svc.commit(rid, by="wang.wei")
    assert done["status"] == "committed"
    assert done["scanners"] == []
    assert await book(store) == {
        COLA: Decimal(51),
        WATER: Decimal(24),
        NOODLES: Decimal(10),
        CRACKERS: Decimal(18),
    }
    events = await outbox(store)
    assert [t for t, _ in events] == [EventType.STOCK_RECEIVED]
    payload = StockReceived.model_validate(events[0][1])
    assert payload.receipt_id == rid
    assert payload.delivery_note == "dn-0001.csv"
    assert {(t.gtin, t.qty) for t in payload.totals} == {
        (COLA, 48),
        (WATER, 24),
        (NOODLES, 10),
        (CRACKERS, 18),
    }
    assert sorted((ln.gtin, ln.qty, ln.sscc) for ln in payload.lines if ln.sscc) == sorted(
        [(COLA, 48, PALLET_1), (WATER, 24, PALLET_1), (NOODLES, 10, PALLET_2)]
    )
    with pytest.raises(ReceiptConflict, match="committed"):
        await svc.commit(rid)

    # A pallet is received once across receipts; a cancelled receipt frees its pallets.
    second = str((await svc.start())["receipt_id"])
    await svc.load_note(second, NOTE, "dn-0001.csv")
    with pytest.raises(ReceivingError, match="already received"):
        await svc.scan(second, f"00{PALLET_1}", scan_id="t1")
    with pytest.raises(ReceiptConflict, match="nothing received"):
        await svc.commit(second)
    await svc.cancel(second)
    assert [t for t, _ in await outbox(store)] == [EventType.STOCK_RECEIVED]


async def test_receipts_replay_from_the_journal_and_scanner_lines_are_booked(
    store: GatewayStore, catalogue: Catalogue
) -> None:
    svc = service(store, catalogue)
    await svc.open()
    rid = str((await svc.start())["receipt_id"])
    line = {"device": "dock1", "role": "receiving", "kind": "product"}
    await svc.scanner_line({**line, "raw": f"]C101{COLA}3024"})
    await svc.scanner_line({**line, "raw": "]E0" + "4006381333931"})  # a real EAN, not in the catalogue
    await svc.scanner_line({**line, "device": "dock2", "raw": f"]E0{COLA[1:]}"})
    assert (svc.counters.booked, svc.counters.refused, svc.counters.unassigned) == (1, 1, 1)
    assert svc.counters.last_error == "scanner dock2 is assigned to no open receipt"
    await svc.load_note(rid, NOTE, "dn.csv")
    # An SSCC label's line, as it would come once the driver passes on the text of lines it rejects.
    await svc.scanner_line({**line, "kind": "rejected", "raw": f"]C100{PALLET_2}"})
    await svc.scanner_line({**line, "kind": "member", "raw": "MBR0000000042"})  # not goods: ignored
    assert (svc.counters.booked, svc.counters.refused, svc.counters.unassigned) == (2, 1, 1)
    before = svc.view(rid)

    again = service(store, catalogue)
    await again.open()
    after = again.view(rid)
    assert after["totals"] == before["totals"]
    assert {t["gtin"]: t["qty"] for t in after["totals"]} == {COLA: 24, NOODLES: 30}
    assert after["scanners"] == ["dock1"]
    with pytest.raises(ReceivingError, match="already received"):  # the replayed receipt remembers its pallet
        await again.scan(rid, f"00{PALLET_2}", scan_id="p2")
    with pytest.raises(ReceivingError, match="already received"):
        await again.scan(rid, f"00{PALLET_2}", scan_id="p2-again")
    await again.commit(rid)
    assert await book(store) == {COLA: Decimal(24), NOODLES: Decimal(30)}


async def test_bad_delivery_notes_and_unknown_ids_are_refused_with_reasons(
    store: GatewayStore, catalogue: Catalogue
) -> None:
    svc = service(store, catalogue)
    await svc.open()
    rid = str((await svc.start())["receipt_id"])
    bad = f"sscc,gtin,qty\n{PALLET_1},{COLA},0\n123,{COLA},5\n"
    with pytest.raises(DeliveryNoteError) as info:
        await svc.load_note(rid, bad, "bad.csv")
    assert [issue.line for issue in info.value.issues] == [2, 3]
    with pytest.raises(ReceiptNotFound):
        await svc.scan("rc-nope", COLA, scan_id="x")
    with pytest.raises(ReceiptNotFound, match="receiving scanner"):
        await svc.assign("hh1", rid)
