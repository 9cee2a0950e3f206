"""Replenishment list, ABC by value and velocity, slow movers, CSV output."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud_bridge.contract import SaleCompleted, SaleItem, SaleReturned, line_amount, rfc3339
from edge.retail.catalogue import Catalogue
from edge.retail.reports import (
    DAY_S,
    BinStock,
    abc_by_value,
    abc_by_velocity,
    abc_classes,
    replenishment,
    sales_by_sku,
    slow_movers,
    to_csv,
)

from .conftest import APPLES, COLA, NOODLES, WATER

NOW = 1_794_556_800.0


def test_replenishment_shares_the_back_room_emptiest_bin_first() -> None:
    bins = [
        BinStock("A01", COLA, 2, 4, 12, "aisle A, shelf 1"),
        BinStock("B03", COLA, 3, 4, 12, "aisle B, shelf 1"),
        BinStock("C05", COLA, 10, 4, 12, "aisle C, shelf 2"),
        BinStock("A02", WATER, 4, 4, 12, "aisle A, shelf 1"),  # at safety stock: not below it
        BinStock("A03", NOODLES, 0, 6, 24, "aisle A, shelf 1"),
        BinStock("B05", NOODLES, None, 6, 24, "aisle B, shelf 2"),  # count unknown
    ]
    rows = replenishment(bins, {COLA: 30, WATER: 50, NOODLES: 10})
    got = [
        (r.bin_id, r.shelf_count, r.need, r.back_room, r.bring, r.short, r.back_room_uncertain) for r in rows
    ]
    assert got == [
        # cola: shelf 2 + 3 + 10 = 15, back room 30 − 15 = 15; A01 (2/12) first: 10, then B03 gets 5 of 9.
        ("A01", 2, 10, 15, 10, 0, False),
        ("A03", 0, 24, 10, 10, 14, True),
        ("B03", 3, 9, 15, 5, 4, False),
    ]


def test_back_room_is_never_negative() -> None:
    [row] = replenishment([BinStock("A01", COLA, 1, 4, 12)], {COLA: 0})
    assert (row.back_room, row.bring, row.short) == (0, 0, 11)


def sale(tid: str, ts: float, *lines: tuple[str, int | None, str | None, str]) -> SaleCompleted:
    items = []
    for gtin, qty, weight, price in lines:
        measure = qty if qty is not None else Decimal(weight or "0")
        items.append(
            SaleItem(
                gtin=gtin,
                qty=qty,
                weight_kg=weight,
                unit_price=Decimal(price),
                amount=line_amount(Decimal(price), measure),
            )
        )
    return SaleCompleted(
        transaction_id=tid,
        lane="lane1",
        cashier="c1",
        items=items,
        total=sum((i.amount for i in items), Decimal("0.00")),
        ts=rfc3339(ts),
    )


def test_sales_aggregate_net_of_returns() -> None:
    s1 = sale("t1", NOW - 3 * DAY_S, (COLA, 4, None, "3.00"), (APPLES, None, "1.234", "12.80"))
    s2 = sale("t2", NOW - DAY_S, (COLA, 1, None, "3.00"))
    ret = SaleReturned(
        transaction_id="r1",
        original_transaction_id="t1",
        lane="lane1",
        cashier="c1",
        items=[s1.items[0].model_copy(update={"qty": 2, "amount": Decimal("6.00")})],
        refund_total=Decimal("6.00"),
        ts=rfc3339(NOW),
    )
    agg = sales_by_sku([s1, s2], [ret])
    assert agg[COLA].value == Decimal("9.00")
    assert agg[COLA].units == 3
    assert agg[COLA].last_sold_ts == NOW - DAY_S  # a return is not a sale
    assert (agg[APPLES].value, agg[APPLES].units) == (Decimal("15.80"), 1)
    assert sales_by_sku([s1, s2], since_ts=NOW - 2 * DAY_S)[COLA].units == 1


def test_abc_classic_80_15_5_example(catalogue: Catalogue) -> None:
    metric = {"a": 500, "b": 300, "c": 100, "d": 60, "e": 30, "f": 10}
    rows = abc_classes(metric, skus=["g"])
    assert [(r.sku, r.abc_class, r.cumulative_share) for r in rows] == [
        ("a", "A", Decimal("0.5000")),
        ("b", "A", Decimal("0.8000")),
        ("c", "B", Decimal("0.9000")),  # 80 % reached before c: B
        ("d", "B", Decimal("0.9600")),  # the SKU crossing 95 % is still B
        ("e", "C", Decimal("0.9900")),
        ("f", "C", Decimal("1.0000")),
        ("g", "C", Decimal("1.0000")),  # never sold
    ]
    s = sale("t1", NOW, (COLA, 10, None, "3.00"), (NOODLES, 1, None, "4.50"))
    agg = sales_by_sku([s])
    by_value = abc_by_value(agg, catalogue=catalogue)
    by_velocity = abc_by_velocity(agg, catalogue=catalogue)
    # 30.00 of 34.50 is 87 %: cola alone is A; noodles come after 80 % and before 95 %: B.
    assert [(r.sku, r.abc_class) for r in by_value] == [(COLA, "A"), (NOODLES, "B")]
    assert by_value[0].name_en == "Coca-Cola 330 ml can"
    assert [r.metric for r in by_velocity] == [Decimal(10), Decimal(1)]


def test_abc_edge_cases() -> None:
    assert {r.abc_class for r in abc_classes({"a": 0, "b": 0})} == {"C"}
    assert [r.abc_class for r in abc_classes({"a": 1})] == ["A"]
    assert [r.metric for r in abc_classes({"a": Decimal("-5.00"), "b": 1})] == [Decimal(1), Decimal(0)]
    with pytest.raises(ValueError, match="a_share"):
        abc_classes({"a": 1}, a_share=Decimal("0.9"), b_share=Decimal("0.8"))


@given(st.dictionaries(st.text("abcdefghij", min_size=1, max_size=3), st.integers(0, 10_000), max_size=30))
def test_abc_classes_partition_the_skus(metric: dict[str, int]) -> None:
    rows = abc_classes(metric)
    assert sorted(r.sku for r in rows) == sorted(metric)  # every SKU exactly once
    order = {"A": 0, "B": 1, "C": 2}
    assert [order[r.abc_class] for r in rows] == sorted(order[r.abc_class] for r in rows)  # A, then B, then C
    total = sum(metric.values())
    a_value = sum(Decimal(r.metric) for r in rows if r.abc_class == "A")
    if total > 0:
        assert a_value / total >= Decimal("0.8")  # A reaches 80 %…
        a_rows = [r for r in rows if r.abc_class == "A"]
        assert (a_value - a_rows[-1].metric) / total < Decimal(
            "0.8"
        )  # …and is the smallest top set that does
    else:
        assert a_value == 0


def test_slow_movers(catalogue: Catalogue) -> None:
    last = {COLA: NOW - 2 * DAY_S, WATER: NOW - 10 * DAY_S, NOODLES: None}
    book: dict[str, int | Decimal] = {
        COLA: 20,
        WATER: 5,
        NOODLES: 7,
        APPLES: Decimal("0.000"),
        "06921168509256": 3,
    }
    rows = slow_movers(last, book, now=NOW, days=7, catalogue=catalogue)
    assert [(r.sku, r.days_since) for r in rows] == [
        (NOODLES, None),  # never sold: first (by SKU)
        ("06921168509256", None),
        (WATER, 10),
    ]
    assert rows[2].last_sold == rfc3339(NOW - 10 * DAY_S)
    assert rows[2].name_zh == "农夫山泉 550毫升"
    with pytest.raises(ValueError, match="days"):
        slow_movers({}, {}, now=NOW, days=0)


def test_csv_output_plain_decimals_empty_none_and_excel_bom() -> None:
    rows = replenishment([BinStock("A01", COLA, 1, 4, 12, "aisle A", "可乐", "Cola")], {COLA: 5})
    text = to_csv(rows)
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert parsed[0]["name_zh"] == "可乐"
    assert parsed[0]["back_room_uncertain"] == "false"
    assert text.endswith("\r\n")
    assert to_csv([{"x": Decimal("1E+1"), "y": None, "z": 0.1 + 0.2}]) == "x,y,z\r\n10,,0.3\r\n"
    assert to_csv([], columns=["a"], bom=True) == "\ufeffa\r\n"
    with pytest.raises(ValueError, match="columns"):
        to_csv([])
