"""`sale.completed` / `sale.returned` on the wire: exact money, verified GTINs, consistent totals, strict reads.

GTINs come from the GS1 vectors (tests/vectors/gs1_barcodes.json, each with its source), so the check-digit
rule is tested against codes real scanners produced, not against our own arithmetic.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from cloud_bridge.contract import (
    EVENT_DATA_MODELS,
    AlertData,
    Event,
    EventBatch,
    EventType,
    SaleCompleted,
    SaleItem,
    SaleReturned,
    StockChanged,
    line_amount,
    parse_rfc3339,
)

VECTORS_FILE = Path(__file__).resolve().parents[1] / "vectors" / "gs1_barcodes.json"


def _vector_gtins() -> list[str]:
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "gtin" and isinstance(value, str):
                    found.add(value.zfill(14))
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(VECTORS_FILE.read_text(encoding="utf-8"))["vectors"])
    return sorted(found)


GTINS = _vector_gtins()
GTIN = "07032069804988"  # biip tests/test_gs1_messages.py line 20, via tests/vectors/gs1_barcodes.json
VARIABLE_MEASURE_GTIN = "02302148210869"  # an in-store (prefix 2x) code from the same vectors
TS = "2026-11-11T02:15:00.000Z"


def counted(gtin: str = GTIN, qty: int = 2, unit_price: str = "12.50") -> dict[str, Any]:
    price = Decimal(unit_price)
    return {"gtin": gtin, "qty": qty, "unit_price": unit_price, "amount": str(line_amount(price, qty))}


def weighed(
    gtin: str = VARIABLE_MEASURE_GTIN, weight_kg: str = "0.455", unit_price: str = "39.80"
) -> dict[str, Any]:
    amount = line_amount(Decimal(unit_price), Decimal(weight_kg))
    return {"gtin": gtin, "weight_kg": weight_kg, "unit_price": unit_price, "amount": str(amount)}


def sale_dict(**overrides: Any) -> dict[str, Any]:
    items = overrides.pop("items", [counted(), weighed()])
    total = sum((Decimal(i["amount"]) for i in items), Decimal("0.00"))
    base: dict[str, Any] = {
        "transaction_id": "s042-L2-000117",
        "lane": "L2",
        "cashier": "c017",
        "member_id": "M00042",
        "items": items,
        "total": str(total),
        "ts": TS,
    }
    base.update(overrides)
    return base


def return_dict(**overrides: Any) -> dict[str, Any]:
    items = overrides.pop("items", [counted(qty=1)])
    total = sum((Decimal(i["amount"]) for i in items), Decimal("0.00"))
    base: dict[str, Any] = {
        "transaction_id": "s042-L1-R000003",
        "original_transaction_id": "s042-L2-000117",
        "lane": "L1",
        "cashier": "c003",
        "items": items,
        "refund_total": str(total),
        "ts": "2026-11-12T03:00:00.000Z",
    }
    base.update(overrides)
    return base


def rejected(model: type[SaleItem | SaleCompleted | SaleReturned], payload: dict[str, Any]) -> str:
    """Validate JSON as the wire does and return the error text (fails the test if it validates)."""
    with pytest.raises(ValidationError) as caught:
        model.model_validate_json(json.dumps(payload))
    return str(caught.value)


# ---- round trips ---------------------------------------------------------------------------------------------


def test_vector_gtins_are_all_accepted() -> None:
    assert len(GTINS) >= 10
    for gtin in GTINS:
        assert SaleItem.model_validate(counted(gtin=gtin)).gtin == gtin


def test_sale_round_trips_with_money_as_two_place_strings() -> None:
    sale = SaleCompleted.model_validate_json(json.dumps(sale_dict()))
    wire = json.loads(sale.model_dump_json())
    assert wire["total"] == "43.11"  # 2 × 12.50 + 0.455 kg × 39.80 (18.109 → 18.11)
    assert wire["items"][0] == {
        "gtin": GTIN,
        "qty": 2,
        "weight_kg": None,
        "unit_price": "12.50",
        "amount": "25.00",
    }
    assert wire["items"][1]["weight_kg"] == "0.455"
    assert wire["items"][1]["amount"] == "18.11"
    assert SaleCompleted.model_validate_json(sale.model_dump_json()) == sale
    assert sale.items[1].measure == Decimal("0.455")
    assert parse_rfc3339(sale.ts).isoformat() == "2026-11-11T02:15:00+00:00"


def test_short_money_is_normalised_to_two_places() -> None:
    item = SaleItem.model_validate_json(
        json.dumps({**counted(unit_price="3"), "unit_price": "3", "amount": "6.0"})
    )
    assert (item.unit_price, item.amount) == (Decimal("3.00"), Decimal("6.00"))
    assert json.loads(item.model_dump_json())["amount"] == "6.00"


def test_anonymous_sale_has_no_member() -> None:
    payload = sale_dict()
    del payload["member_id"]
    assert SaleCompleted.model_validate_json(json.dumps(payload)).member_id is None


def test_return_round_trips() -> None:
    ret = SaleReturned.model_validate_json(json.dumps(return_dict(items=[counted(qty=1), weighed()])))
    assert ret.refund_total == Decimal("30.61")
    assert SaleReturned.model_validate_json(ret.model_dump_json()) == ret


def test_sale_events_travel_in_a_batch_and_type_their_data() -> None:
    sale = SaleCompleted.model_validate(sale_dict())
    ret = SaleReturned.model_validate(return_dict())
    batch = EventBatch(
        store_id="s042",
        gateway_id="s042-gw",
        first_seq=7,
        last_seq=8,
        events=[
            Event(
                id="s042-gw:7", seq=7, type=EventType.SALE_COMPLETED, ts=TS, data=sale.model_dump(mode="json")
            ),
            Event(
                id="s042-gw:8", seq=8, type=EventType.SALE_RETURNED, ts=TS, data=ret.model_dump(mode="json")
            ),
        ],
    )
    again = EventBatch.model_validate_json(batch.to_json())
    assert again.events[0].typed_data() == sale
    assert again.events[1].typed_data() == ret
    assert again.events[0].data_as(SaleCompleted).total == Decimal("43.11")
    with pytest.raises(ValueError, match="whose data is SaleCompleted, not StockChanged"):
        again.events[0].data_as(StockChanged)


def test_existing_event_types_still_type_their_data() -> None:
    stock = StockChanged(
        bin_id="A-03", sku=GTIN, count=4, delta=-1, cause="pick", weight_g=500.0, safety_stock=2, max_stock=9
    )
    event = Event(id="gw:1", seq=1, type=EventType.STOCK_CHANGED, ts=TS, data=stock.model_dump(mode="json"))
    assert event.typed_data() == stock
    assert event.data_as(StockChanged).count == 4
    assert EVENT_DATA_MODELS[EventType.ALERT_RAISED] is AlertData
    assert EVENT_DATA_MODELS[EventType.SALE_COMPLETED] is SaleCompleted
    assert EVENT_DATA_MODELS[EventType.SALE_RETURNED] is SaleReturned


def test_a_sale_event_with_bad_data_fails_typed_data() -> None:
    event = Event(
        id="gw:1", seq=1, type=EventType.SALE_COMPLETED, ts=TS, data={**sale_dict(), "total": "1.00"}
    )
    with pytest.raises(ValidationError, match=re.escape("total 1.00 ≠ sum of item amounts 43.11")):
        event.typed_data()


# ---- arithmetic ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit_price", "measure", "amount"),
    [
        ("12.50", 3, "37.50"),
        ("0.25", "0.5", "0.13"),  # 0.125 rounds half-up to 0.13 (banker's rounding would give 0.12)
        ("0.05", "0.3", "0.02"),  # 0.015 → 0.02
        ("39.80", "0.455", "18.11"),  # 18.109
        ("9.99", "1.001", "10.00"),  # 9.99999
        ("19.90", "0.001", "0.02"),  # 0.0199
        ("0.01", "0.001", "0.00"),  # 0.00001: a weighed line may round to nothing
    ],
)
def test_line_amount_rounds_half_up_to_the_fen(unit_price: str, measure: int | str, amount: str) -> None:
    qty_or_weight = measure if isinstance(measure, int) else Decimal(measure)
    assert line_amount(Decimal(unit_price), qty_or_weight) == Decimal(amount)


# ---- rejections ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("unit_price", 12.5, "not a number: binary floats lose cents"),
        ("unit_price", "12.505", "at most 2 decimal places"),
        ("unit_price", "-1.00", "no sign"),
        ("unit_price", "1e3", "no sign, exponent or spaces"),
        ("unit_price", "NaN", "decimal string"),
        ("unit_price", " 12.50", "decimal string"),
        ("unit_price", "12345678901.00", "decimal string"),
        ("unit_price", True, "not a number"),
        ("amount", 25.0, "binary floats lose cents"),
    ],
)
def test_money_must_be_an_exact_decimal_string(field: str, value: Any, message: str) -> None:
    assert message in rejected(SaleItem, {**counted(), field: value})


@pytest.mark.parametrize(
    ("gtin", "message"),
    [
        ("07032069804989", "wrong check digit (expected 8)"),
        ("7032069804988", "must be 14 digits"),
        ("0703206980498８", "must be 14 digits"),  # a full-width digit is not an ASCII digit
        ("0703-2069804988", "must be 14 digits"),
        ("", "must be 14 digits"),
    ],
)
def test_gtin_must_be_14_digits_with_a_valid_check_digit(gtin: str, message: str) -> None:
    assert message in rejected(SaleItem, {**counted(), "gtin": gtin})


def test_every_vector_gtin_with_a_wrong_check_digit_is_rejected() -> None:
    for gtin in GTINS:
        wrong = gtin[:-1] + str((int(gtin[-1]) + 1) % 10)
        assert "wrong check digit" in rejected(SaleItem, {**counted(), "gtin": wrong})


def test_qty_or_weight_exactly_one() -> None:
    both = {**counted(qty=1), "weight_kg": "0.500"}
    assert "exactly one of qty" in rejected(SaleItem, both)
    neither = {key: value for key, value in counted().items() if key != "qty"}
    assert "exactly one of qty" in rejected(SaleItem, neither)


@pytest.mark.parametrize(
    ("qty", "message"),
    [
        (0, "greater than or equal to 1"),
        (1.0, "valid integer"),
        ("2", "valid integer"),
        (100_000, "less than"),
    ],
)
def test_qty_is_a_strict_positive_integer(qty: Any, message: str) -> None:
    item = {**counted(qty=1), "qty": qty}
    assert message in rejected(SaleItem, item)


@pytest.mark.parametrize(
    ("weight", "message"),
    [
        ("0.000", "must be > 0"),
        ("0.4555", "at most 3 decimal places"),
        (0.455, "binary floats"),
        ("-0.5", "no sign"),
    ],
)
def test_weight_is_a_positive_kg_string_to_the_gram(weight: Any, message: str) -> None:
    assert message in rejected(SaleItem, {**weighed(), "weight_kg": weight})


def test_amount_must_equal_price_times_measure() -> None:
    text = rejected(SaleItem, {**counted(qty=3, unit_price="12.50"), "amount": "37.49"})
    assert "amount 37.49 ≠ unit_price 12.50 × qty 3 = 37.50" in text
    text = rejected(SaleItem, {**weighed(weight_kg="0.500", unit_price="0.25"), "amount": "0.12"})
    assert "× weight_kg 0.500 = 0.13 (rounded half-up to 0.01 CNY)" in text


def test_total_must_equal_the_sum_of_amounts() -> None:
    assert "total 43.10 ≠ sum of item amounts 43.11 (2 items)" in rejected(
        SaleCompleted, sale_dict(total="43.10")
    )


def test_refund_total_must_equal_the_sum_of_amounts() -> None:
    assert "refund_total 99.00 ≠ sum of item amounts 12.50" in rejected(
        SaleReturned, return_dict(refund_total="99.00")
    )


def test_a_return_needs_its_own_id() -> None:
    assert "needs its own transaction_id" in rejected(
        SaleReturned, return_dict(transaction_id="s042-L2-000117")
    )


@pytest.mark.parametrize(
    ("ts", "message"),
    [
        ("2026-11-11T10:15:00", "has no UTC offset"),
        ("11/11/2026", "not an RFC 3339"),
        ("", "not an RFC 3339"),
    ],
)
def test_sale_time_must_carry_an_offset(ts: str, message: str) -> None:
    assert message in rejected(SaleCompleted, sale_dict(ts=ts))


@pytest.mark.parametrize(
    "overrides",
    [
        {"items": []},
        {"transaction_id": ""},
        {"transaction_id": "x" * 65},
        {"cashier": "c 017"},
        {"member_id": "M\n1"},
        {"lane": "-L2"},
        {"currency": "CNY"},  # unknown field: readers are strict
    ],
)
def test_malformed_sales_are_rejected(overrides: dict[str, Any]) -> None:
    rejected(SaleCompleted, sale_dict(**overrides))


def test_unknown_fields_in_an_item_are_rejected() -> None:
    assert "Extra inputs are not permitted" in rejected(SaleItem, {**counted(), "discount": "1.00"})


# ---- properties ----------------------------------------------------------------------------------------------

prices = st.integers(min_value=0, max_value=99_999_99).map(lambda fen: Decimal(fen).scaleb(-2))
weights = st.integers(min_value=1, max_value=99_999).map(lambda grams: Decimal(grams).scaleb(-3))


@st.composite
def sale_items(draw: st.DrawFn) -> SaleItem:
    gtin = draw(st.sampled_from(GTINS))
    price = draw(prices)
    if draw(st.booleans()):
        qty = draw(st.integers(min_value=1, max_value=999))
        return SaleItem(gtin=gtin, qty=qty, unit_price=price, amount=line_amount(price, qty))
    weight = draw(weights)
    return SaleItem(gtin=gtin, weight_kg=weight, unit_price=price, amount=line_amount(price, weight))


@given(items=st.lists(sale_items(), min_size=1, max_size=30), member=st.none() | st.just("M7"))
def test_any_consistent_sale_round_trips_exactly(items: list[SaleItem], member: str | None) -> None:
    total = sum((item.amount for item in items), Decimal("0.00"))
    sale = SaleCompleted(
        transaction_id="s1-L1-1", lane="L1", cashier="c1", member_id=member, items=items, total=total, ts=TS
    )
    wire = sale.model_dump_json()
    again = SaleCompleted.model_validate_json(wire)
    assert again == sale
    assert again.total == sum((item.amount for item in again.items), Decimal("0.00"))
    for raw in json.loads(wire)["items"]:
        assert isinstance(raw["amount"], str)
        assert isinstance(raw["unit_price"], str)
        assert len(raw["amount"].split(".")[1]) == 2


@given(item=sale_items(), fen=st.integers(min_value=1, max_value=99))
def test_any_amount_off_by_some_fen_is_rejected(item: SaleItem, fen: int) -> None:
    payload = json.loads(item.model_dump_json())
    wrong = item.amount + Decimal(fen).scaleb(-2)
    payload["amount"] = str(wrong)
    with pytest.raises(ValidationError, match="rounded half-up"):
        SaleItem.model_validate_json(json.dumps(payload))
