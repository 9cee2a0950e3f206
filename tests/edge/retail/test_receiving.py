"""Receiving: GS1-128 with AI 30/37, SSCC pallets against a delivery note, idempotent receipts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.retail.catalogue import Catalogue
from edge.retail.errors import FileError, ReceivingError
from edge.retail.receiving import (
    DeliveryNoteError,
    Receipt,
    ReceivingScan,
    check_sscc,
    load_delivery_note,
    parse_delivery_note,
    parse_receiving_scan,
)

from .conftest import COLA, NOODLES, PROJECT, WATER

GS = "\x1d"
VECTORS = json.loads((PROJECT / "tests" / "vectors" / "gs1_barcodes.json").read_text(encoding="utf-8"))
SSCC_VECTORS = [v for v in VECTORS["vectors"] if v["note"].startswith("SSCC")]
PALLET = "373400306809981733"  # biip's test SSCC (tests/vectors/gs1_barcodes.json)
PALLET_2 = "157035381410375177"


@pytest.mark.parametrize("vector", SSCC_VECTORS, ids=lambda v: v["input"])
def test_sscc_vectors_parse_as_pallets(vector: dict[str, object]) -> None:
    """Vectors from jodal/biip tests (source field in the vector file)."""
    scan = parse_receiving_scan("]C1" + str(vector["input"]))
    assert scan.kind == "pallet"
    assert scan.sscc == vector["input"][2:]  # type: ignore[index]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("]E06901234567892", ReceivingScan("goods", COLA, 1)),
        ("06901234567892", ReceivingScan("goods", COLA, 1)),
        ("]C101" + COLA, ReceivingScan("goods", COLA, 1)),
        # (01) + (30) variable count: 24 cans.
        ("]C101" + COLA + "3024", ReceivingScan("goods", COLA, 24)),
        # (02) content GTIN + (37) count of contained items: a carton of 12 waters.
        ("]C102" + WATER + "3712", ReceivingScan("goods", WATER, 12)),
        # HRI form as some handhelds send it.
        ("(02)" + NOODLES + "(37)36", ReceivingScan("goods", NOODLES, 36)),
        # A pallet label describing its own content: booked from the label, SSCC remembered.
        ("]C100" + PALLET + "02" + WATER + "37120" + GS, ReceivingScan("goods", WATER, 120, sscc=PALLET)),
    ],
)
def test_goods_labels(text: str, expected: ReceivingScan) -> None:
    scan = parse_receiving_scan(text + "\r\n")
    assert (scan.kind, scan.gtin, scan.qty, scan.sscc) == (
        expected.kind,
        expected.gtin,
        expected.qty,
        expected.sscc,
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("]C102" + WATER, "AI \\(02\\) must come with AI \\(37\\)"),
        ("]C1" + "3712", "a count without a GTIN"),
        ("]C101" + COLA + "300", "count must be 1..99999999"),
        ("]C101" + COLA + "3012" + GS + "3712", "AI \\(30\\) and \\(37\\) together"),
        ("]C10107032069804988" + "0206901234567892" + "3701", "AI \\(01\\) and \\(02\\) together"),
        ("]C100373400306809981734", "wrong check digit \\(expected 3\\)"),
        ("]C110ABC", "neither a GTIN nor an SSCC"),
        ("]E06901234567893", "wrong check digit"),
        ("]C1zz", "not a GS1 label"),
        ("]C1", "empty scan"),
    ],
)
def test_bad_labels_are_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(ReceivingError, match=message):
        parse_receiving_scan(text)


NOTE = f"""\
sscc,gtin,qty
{PALLET},{COLA},240
{PALLET},6902083886417,120
{PALLET_2},{NOODLES},48
"""


def test_pallets_resolve_through_the_delivery_note(tmp_path: Path, catalogue: Catalogue) -> None:
    (tmp_path / "dn.csv").write_text("\ufeff" + NOTE, encoding="utf-8")
    note = load_delivery_note(tmp_path / "dn.csv")
    assert note.ssccs == {PALLET, PALLET_2}
    receipt = Receipt("rcv-1")
    lines = receipt.receive("scan-1", parse_receiving_scan("]C100" + PALLET), note=note, catalogue=catalogue)
    assert [(ln.gtin, ln.qty, ln.sscc) for ln in lines] == [(COLA, 240, PALLET), (WATER, 120, PALLET)]
    assert receipt.receive("scan-1", parse_receiving_scan("]C100" + PALLET), note=note) == []  # replay
    with pytest.raises(ReceivingError, match=f"pallet {PALLET} was already received"):
        receipt.receive("scan-2", parse_receiving_scan("]C100" + PALLET), note=note)
    receipt.receive("scan-3", parse_receiving_scan("]C101" + COLA + "3024"), catalogue=catalogue)
    assert receipt.totals() == {COLA: 264, WATER: 120}
    payload = receipt.payload(0.0)
    assert payload["receipt_id"] == "rcv-1"
    assert payload["totals"] == [{"gtin": COLA, "qty": 264}, {"gtin": WATER, "qty": 120}]
    assert payload["lines"][0] == {"gtin": COLA, "qty": 240, "sscc": PALLET}
    assert payload["lines"][2] == {"gtin": COLA, "qty": 24}
    assert payload["ts"] == "1970-01-01T00:00:00.000Z"
    # A later receipt is told which pallets were already booked.
    with pytest.raises(ReceivingError, match="already received"):
        Receipt("rcv-2").receive(
            "x", parse_receiving_scan("]C100" + PALLET), note=note, already_received={PALLET}
        )


def test_pallet_refusals(catalogue: Catalogue) -> None:
    note = parse_delivery_note(NOTE, source="dn-7.csv")
    receipt = Receipt("rcv")
    with pytest.raises(ReceivingError, match="no delivery note loaded"):
        receipt.receive("1", parse_receiving_scan("]C100" + PALLET))
    other = "0" * 17 + check_sscc("0" * 17 + "0")[-1]
    with pytest.raises(ReceivingError, match=f"pallet {other} is not on delivery note dn-7.csv"):
        receipt.receive("2", parse_receiving_scan("]C100" + other), note=note)
    with pytest.raises(ReceivingError, match="not in the catalogue: 07032069804988"):
        receipt.receive("3", parse_receiving_scan("]C10107032069804988"), catalogue=catalogue)
    assert receipt.lines == []  # nothing refused was booked
    assert receipt.scan_ids == set()


def test_delivery_note_errors_name_row_and_line() -> None:
    text = (
        "sscc,gtin,qty\n"
        f"{PALLET},{COLA},0\n"
        f"{PALLET[:-1]}4,{COLA},1\n"
        f"{PALLET},{COLA},5\n"
        f"{PALLET},6901234567892,6\n"
        f"{PALLET},123,1\n"
    )
    with pytest.raises(DeliveryNoteError) as exc:
        parse_delivery_note(text, source="dn.csv")
    assert isinstance(exc.value, FileError)
    assert [(i.path, i.line) for i in exc.value.issues] == [
        (f"row 1 (sscc {PALLET}).qty", 2),
        (f"row 2 (sscc {PALLET[:-1]}4).sscc", 3),
        (f"row 4 (sscc {PALLET})", 5),
        (f"row 5 (sscc {PALLET}).gtin", 6),
    ]
    assert f"sscc {PALLET} lists gtin {COLA} twice (first on line 4)" in str(exc.value)
    with pytest.raises(DeliveryNoteError, match="columns must be"):
        parse_delivery_note("pallet,gtin,qty\n")
    with pytest.raises(DeliveryNoteError, match="no delivery lines"):
        parse_delivery_note("sscc,gtin,qty\n")
