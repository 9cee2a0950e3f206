"""Stocktake: sessions per area, idempotent count merge, progress, variance report + CSV, adjustments."""

from __future__ import annotations

import csv
import io
import random
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.retail.catalogue import Catalogue
from edge.retail.errors import StocktakeError
from edge.retail.reports import to_csv
from edge.retail.stocktake import (
    Adjustment,
    CountLog,
    CountScan,
    ExpectedStock,
    StocktakeBoard,
    variance_totals,
)

from .conftest import APPLES, COLA, NOODLES, WATER

AISLE_A = [ExpectedStock("A01", COLA, 10), ExpectedStock("A02", WATER, 8), ExpectedStock("A03", NOODLES, 20)]
AISLE_C = [ExpectedStock("C05", COLA, 6), ExpectedStock("C06", WATER, 4)]


def test_a_stocktake_with_a_deliberate_variance(catalogue: Catalogue) -> None:
    board = StocktakeBoard()
    board.start("st-1", "aisle A", AISLE_A, ts=100.0)
    for i in range(9):  # one can of cola missing
        board.record("st-1", CountScan(f"h1:{i}", COLA))
    board.record("st-1", CountScan("h1:w", WATER, qty=8))  # a number typed on the phone page
    board.record("st-1", CountScan("h1:n", NOODLES, qty=21))  # one noodle cup more than the book says
    board.record("st-1", CountScan("h1:n", NOODLES, qty=21))  # the same scan again (a retry): no change
    progress = {p.sku: (p.expected, p.counted, p.remaining) for p in board.get("st-1").progress(catalogue)}
    assert progress == {COLA: (10, 9, 1), WATER: (8, 8, 0), NOODLES: (20, 21, 0)}
    done = board.confirm("st-1", catalogue)
    report = {r.sku: (r.expected, r.counted, r.variance, r.value_variance) for r in done.report}
    assert report == {
        COLA: (10, 9, -1, Decimal("-3.00")),
        WATER: (8, 8, 0, Decimal("0.00")),
        NOODLES: (20, 21, 1, Decimal("4.50")),
    }
    assert variance_totals(done.report) == (1, 1, Decimal("1.50"))
    assert done.book_deltas == {COLA: -1, NOODLES: 1}
    assert done.adjustments == (
        Adjustment(COLA, "A01", 10, 9),
        Adjustment(WATER, "A02", 8, 8),
        Adjustment(NOODLES, "A03", 20, 21),
    )
    with pytest.raises(StocktakeError, match="st-1 is confirmed"):
        board.confirm("st-1", catalogue)  # applied once
    with pytest.raises(StocktakeError, match="confirmed"):
        board.record("st-1", CountScan("late", COLA))


def test_variance_csv(catalogue: Catalogue) -> None:
    board = StocktakeBoard()
    board.start("st-1", "aisle A", AISLE_A)
    board.record("st-1", CountScan("s1", COLA, qty=12))
    text = to_csv(board.get("st-1").variance(catalogue), bom=True)
    assert text.startswith(
        "\ufeffsku,name_zh,name_en,expected,counted,variance,unit_price,value_variance\r\n"
    )
    rows = list(csv.DictReader(io.StringIO(text.removeprefix("\ufeff"))))
    assert rows[0] == {
        "sku": COLA,
        "name_zh": "可口可乐 330毫升罐装",
        "name_en": "Coca-Cola 330 ml can",
        "expected": "10",
        "counted": "12",
        "variance": "2",
        "unit_price": "3.00",
        "value_variance": "6.00",
    }
    assert [r["variance"] for r in rows] == ["2", "-8", "-20"]


def test_concurrent_sessions_may_not_share_a_bin() -> None:
    board = StocktakeBoard()
    board.start("st-a", "aisle A", AISLE_A)
    board.start("st-c", "aisle C", AISLE_C)  # another area at the same time
    with pytest.raises(
        StocktakeError, match=r"overlaps open session st-a \(area aisle A\) on bins \['A02'\]"
    ):
        board.start("st-x", "mixed", [ExpectedStock("A02", WATER, 8), ExpectedStock("B01", COLA, 1)])
    with pytest.raises(StocktakeError, match="session st-a exists"):
        board.start("st-a", "again", AISLE_C)
    board.cancel("st-a")
    board.start("st-x", "mixed", [ExpectedStock("A02", WATER, 8)])  # free again once st-a is closed
    assert [s.session_id for s in board.open_sessions()] == ["st-c", "st-x"]
    assert board.session_for_bin("C05") is board.get("st-c")
    assert board.session_for_bin("A01") is None


def test_bin_attribution_of_counts() -> None:
    board = StocktakeBoard()
    area = [ExpectedStock("A01", COLA, 10), ExpectedStock("B03", COLA, 5), ExpectedStock("A02", WATER, 8)]
    board.start("st", "front", area)
    board.record("st", CountScan("1", COLA, qty=9, bin_id="A01"))
    board.record("st", CountScan("2", COLA, qty=5, bin_id="B03"))
    board.record("st", CountScan("3", WATER, qty=7))  # one bin of water in the area: it is A02
    board.record("st", CountScan("4", APPLES, qty=2))  # found goods not expected here
    with pytest.raises(StocktakeError, match="bin Z9 is not in area front"):
        board.record("st", CountScan("5", COLA, bin_id="Z9"))
    assert board.get("st").adjustments() == [
        Adjustment(APPLES, None, 0, 2),
        Adjustment(COLA, "A01", 10, 9),
        Adjustment(COLA, "B03", 5, 5),
        Adjustment(WATER, "A02", 8, 7),
    ]
    # A cola count without a bin, with two cola bins here: the split is unknown, one SKU-level row.
    board.record("st", CountScan("6", COLA, qty=1))
    session = board.get("st")
    assert [a for a in session.adjustments() if a.sku == COLA] == [Adjustment(COLA, None, 15, 15)]
    assert session.book_deltas() == {APPLES: 2, WATER: -1}


def test_voids_and_conflicting_ids() -> None:
    log = CountLog().add(CountScan("a", COLA, qty=2)).add(CountScan("b", COLA))
    with pytest.raises(StocktakeError, match="scan id a already holds a different count"):
        log.add(CountScan("a", COLA, qty=3))
    assert log.void("a").counted_by_sku() == {COLA: 1}
    # A void that arrives before its scan still wins (a two-phase set).
    assert CountLog().void("z").add(CountScan("z", COLA)).counted_by_sku() == {}
    with pytest.raises(StocktakeError, match=r"qty must be 1\.\.99999"):
        CountScan("q", COLA, qty=0)
    with pytest.raises(StocktakeError, match="different counts"):
        log.merge(CountLog().add(CountScan("b", WATER)))


def test_session_shape_errors() -> None:
    board = StocktakeBoard()
    with pytest.raises(StocktakeError, match="listed twice"):
        board.start("s", "a", [ExpectedStock("A01", COLA, 1), ExpectedStock("A01", COLA, 1)])
    with pytest.raises(StocktakeError, match="no bin"):
        board.start("s", "a", [])
    with pytest.raises(StocktakeError, match="no session nope"):
        board.get("nope")


def test_variable_measure_skus_have_no_value_variance(catalogue: Catalogue) -> None:
    board = StocktakeBoard()
    board.start("s", "produce", [ExpectedStock("F01", APPLES, 4)])
    board.record("s", CountScan("1", APPLES, qty=3))
    [row] = board.get("s").variance(catalogue)
    assert (row.variance, row.unit_price, row.value_variance) == (-1, None, None)


# --- properties ----------------------------------------------------------------------------------------------

scans = st.builds(
    CountScan,
    scan_id=st.sampled_from([f"s{i}" for i in range(12)]),
    sku=st.sampled_from([COLA, WATER]),
    qty=st.integers(1, 4),
    bin_id=st.sampled_from([None, "A01", "A02"]),
)


def _log(items: list[CountScan], voids: set[str]) -> CountLog:
    log = CountLog()
    for scan in items:
        if scan.scan_id not in log.scans:
            log = log.add(scan)
    for scan_id in voids:
        log = log.void(scan_id)
    return log


logs = st.builds(
    _log,
    st.lists(scans, max_size=10),
    st.sets(st.sampled_from([f"s{i}" for i in range(12)]), max_size=3),
)


def _consistent(*many: CountLog) -> bool:
    seen: dict[str, CountScan] = {}
    for log in many:
        for k, v in log.scans.items():
            if seen.setdefault(k, v) != v:
                return False
    return True


@given(logs, logs, logs)
def test_merge_is_idempotent_commutative_and_associative(a: CountLog, b: CountLog, c: CountLog) -> None:
    assert a.merge(a) == a
    if not _consistent(a, b, c):
        with pytest.raises(StocktakeError):
            a.merge(b).merge(c) if _consistent(a, b) else a.merge(b)
        return
    assert a.merge(b) == b.merge(a)
    assert a.merge(b).merge(c) == a.merge(b.merge(c))
    assert a.merge(b).counted_by_sku() == b.merge(a).counted_by_sku()


@given(st.lists(scans, max_size=15), st.randoms())
def test_arrival_order_and_duplicates_do_not_change_the_counts(
    items: list[CountScan], rnd: random.Random
) -> None:
    unique: dict[str, CountScan] = {}
    for scan in items:
        unique.setdefault(scan.scan_id, scan)
    stream = list(unique.values()) * 2  # everything delivered twice
    rnd.shuffle(stream)
    log = CountLog()
    for scan in stream:
        log = log.add(scan)
    direct = CountLog()
    for scan in unique.values():
        direct = direct.add(scan)
    assert log == direct
    assert sum(log.counted_by_sku().values()) == sum(s.qty for s in unique.values())
