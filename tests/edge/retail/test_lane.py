"""Checkout lane: pricing, weighing, voids, completion, returns, crash-safe replay (examples and properties)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from cloud_bridge.contract import SaleCompleted, SaleReturned, line_amount
from drivers.barcode.protocol import MemberScan, ProductScan, decode_scan
from edge.retail.catalogue import Catalogue
from edge.retail.errors import LaneError, UnknownItem
from edge.retail.lane import (
    CheckoutLane,
    LaneEvent,
    LaneRules,
    LaneState,
    ScaleZeroed,
    TransactionOpened,
    WeightTaken,
    compact,
    event_from_json,
    event_to_json,
    fold,
    stock_deltas,
    weight_kg_from_g,
)

from .conftest import APPLES, COLA, NOODLES, PORK, WATER, price_label, weight_label

T0 = datetime(2026, 11, 13, 16, 0, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp()


def product(code: str) -> ProductScan:
    scan = decode_scan("]E0" + code[-13:] if len(code) >= 13 else code)
    assert isinstance(scan, ProductScan)
    return scan


class Till:
    """A lane plus its journal, applying what each command returns (as the wiring will)."""

    def __init__(self, catalogue: Catalogue, rules: LaneRules | None = None) -> None:
        self.lane = CheckoutLane("demo-sh-001", "lane1", catalogue, rules or LaneRules())
        self.journal: list[LaneEvent] = []
        self.t = T0

    def do(self, events: list[LaneEvent]) -> list[LaneEvent]:
        self.journal.extend(events)
        self.lane.apply(events)
        return events

    def tick(self) -> float:
        self.t += 1.0
        return self.t

    def sign_in(self, cashier: str = "c042") -> None:
        self.do(self.lane.sign_in(cashier, self.tick()))

    def scan(self, code: str) -> list[LaneEvent]:
        return self.do(self.lane.scan(product(code), self.tick()))

    def weigh(self, grams: float | None, *, stable: bool = True) -> list[LaneEvent]:
        return self.do(self.lane.weight(grams, stable=stable, ts=self.tick()))

    def complete(self) -> SaleCompleted | SaleReturned:
        self.do(self.lane.complete(self.tick()))
        payload = self.lane.last_payload
        assert payload is not None
        return payload


@pytest.fixture
def till(catalogue: Catalogue) -> Till:
    t = Till(catalogue)
    t.sign_in()
    return t


def test_a_mixed_basket_prices_exactly(till: Till) -> None:
    till.scan(COLA)
    till.scan(COLA)  # repeat scan: same line, qty 2
    till.scan(NOODLES)
    till.scan(APPLES)  # weighed at the lane scale
    assert till.weigh(830, stable=False) == []  # moving: wait
    assert till.lane.open_transaction is not None
    assert till.lane.open_transaction.pending_line is not None
    [taken] = till.weigh(1234.4)
    assert isinstance(taken, WeightTaken)
    assert taken.weight_kg == Decimal("1.234")
    till.weigh(0)  # pan emptied
    till.scan(weight_label("00003", 456))  # pork belly, 0.456 kg on the produce-scale label
    till.scan(price_label("00002", 995))  # bananas at a printed 9.95
    till.do(till.lane.scan(MemberScan(member_id="MBR0123456789"), till.tick()))
    sale = till.complete()
    assert isinstance(sale, SaleCompleted)
    assert [(i.gtin, i.qty, i.weight_kg, i.unit_price, i.amount) for i in sale.items] == [
        (COLA, 2, None, Decimal("3.00"), Decimal("6.00")),
        (NOODLES, 1, None, Decimal("4.50"), Decimal("4.50")),
        (APPLES, None, Decimal("1.234"), Decimal("12.80"), Decimal("15.80")),  # 15.7952 → 15.80
        (PORK, None, Decimal("0.456"), Decimal("29.90"), Decimal("13.63")),  # 13.6344 → 13.63
        ("02200002000000", 1, None, Decimal("9.95"), Decimal("9.95")),
    ]
    assert sale.total == Decimal("49.88")
    assert sale.member_id == "MBR0123456789"
    assert (sale.lane, sale.cashier) == ("lane1", "c042")
    assert sale.transaction_id == f"demo-sh-001:lane1:{int((T0 + 2) * 1000)}-1"
    assert sale.ts == "2026-11-13T08:00:12.000Z"  # completed at T0 + 12 s (16:00:12 in Shanghai)


def test_half_up_rounding_matches_the_wire_rule(till: Till) -> None:
    till.scan(APPLES)
    till.weigh(1125)  # 1.125 × 12.80 = 14.40 exactly; 0.5 fen cases below
    till.weigh(0)
    till.scan(weight_label("00002", 125))  # bananas 0.125 kg × 6.98 = 0.8725 → 0.87
    sale = till.complete()
    assert [i.amount for i in sale.items] == [Decimal("14.40"), Decimal("0.87")]
    assert all(i.amount == line_amount(i.unit_price, i.measure) for i in sale.items)


def test_a_weighed_line_blocks_other_scans_and_completion_until_weighed(till: Till) -> None:
    till.scan(APPLES)
    with pytest.raises(LaneError, match=r"line 1 .*waiting for a stable weight"):
        till.lane.scan(product(COLA), till.tick())
    with pytest.raises(LaneError, match="waiting for a stable weight"):
        till.lane.complete(till.tick())
    assert till.weigh(None) == []  # no reading at all
    assert till.weigh(0) == []  # an empty pan prices nothing
    till.weigh(500)
    till.complete()


def test_the_pan_must_empty_between_two_weighed_lines(till: Till) -> None:
    till.scan(APPLES)
    till.weigh(1000)
    till.scan(APPLES)
    assert till.weigh(1000) == []  # the same apples still on the pan
    [zeroed] = till.weigh(-0.4)  # rounds to 0 g / under zero: empty
    assert isinstance(zeroed, ScaleZeroed)
    assert till.weigh(0) == []  # already known empty: nothing journaled
    till.weigh(750)
    sale = till.complete()
    assert [i.weight_kg for i in sale.items] == [Decimal("1.000"), Decimal("0.750")]


def test_without_the_zero_rule_any_stable_weight_after_the_scan_counts(catalogue: Catalogue) -> None:
    till = Till(catalogue, LaneRules(require_zero_between_weighings=False))
    till.sign_in()
    till.scan(APPLES)
    till.weigh(1000)
    till.scan(APPLES)
    till.weigh(1000)
    assert [i.weight_kg for i in till.complete().items] == [Decimal("1.000")] * 2


def test_min_weight_treats_light_readings_as_an_empty_pan(catalogue: Catalogue) -> None:
    till = Till(catalogue, LaneRules(min_weight_g=40))
    till.sign_in()
    till.scan(APPLES)
    assert till.weigh(39) == []
    till.weigh(41)
    assert till.complete().items[0].weight_kg == Decimal("0.041")


def test_quantity_voids_and_void_all(till: Till) -> None:
    till.scan(COLA)
    till.scan(WATER)
    till.scan(APPLES)
    till.weigh(500)
    till.do(till.lane.set_quantity(1, 6, till.tick()))
    with pytest.raises(LaneError, match=r"quantity must be 1\.\.99999"):
        till.lane.set_quantity(1, 0, till.tick())
    with pytest.raises(LaneError, match="line 3 is one weighed or labelled package"):
        till.lane.set_quantity(3, 2, till.tick())
    till.do(till.lane.void_line(2, till.tick()))
    with pytest.raises(LaneError, match="line 2 is voided"):
        till.lane.void_line(2, till.tick())
    with pytest.raises(LaneError, match="no line 9"):
        till.lane.void_line(9, till.tick())
    tx = till.lane.open_transaction
    assert tx is not None
    assert [ln.line_no for ln in tx.active_lines] == [1, 3]
    assert tx.total == Decimal("18.00") + Decimal("6.40")
    till.do(till.lane.void_all(till.tick()))
    with pytest.raises(LaneError, match="nothing to complete"):
        till.lane.complete(till.tick())
    with pytest.raises(LaneError, match="no line to void"):
        till.lane.void_all(till.tick())
    till.scan(COLA)  # a void line is never merged into
    sale = till.complete()
    assert [(i.gtin, i.qty) for i in sale.items] == [(COLA, 1)]


def test_completing_twice_yields_one_sale_and_ids_never_repeat(till: Till) -> None:
    till.scan(COLA)
    sale = till.complete()
    assert till.lane.complete(till.tick()) == []  # idempotent
    assert till.lane.last_payload is sale
    till.scan(COLA)  # opens the next transaction
    second = till.complete()
    assert second.transaction_id != sale.transaction_id
    assert second.transaction_id.endswith("-2")
    # Even with the clock stepped back, the number keeps ids unique.
    till.t = T0 - 3600
    till.scan(COLA)
    assert till.complete().transaction_id.endswith("-3")


def test_cancel_leaves_no_sale(till: Till) -> None:
    till.scan(COLA)
    till.do(till.lane.cancel(till.tick()))
    assert till.lane.last_payload is None
    assert till.lane.open_transaction is None
    with pytest.raises(LaneError, match="no open transaction"):
        till.lane.cancel(till.tick())


def test_a_refused_command_journals_nothing(till: Till, catalogue: Catalogue) -> None:
    till.scan(COLA)
    before = till.lane.state
    with pytest.raises(UnknownItem):
        till.lane.scan(product("07032069804988"), till.tick())
    with pytest.raises(LaneError, match="before another cashier signs in"):
        till.lane.sign_in("c007", till.tick())
    assert till.lane.state == before
    fresh = CheckoutLane("demo-sh-001", "lane2", catalogue)
    with pytest.raises(LaneError, match="no cashier signed in"):
        fresh.scan(product(COLA), T0)


def test_member_scan_first_opens_the_sale(till: Till) -> None:
    events = till.do(till.lane.scan(MemberScan(member_id="M-77"), till.tick()))
    assert isinstance(events[0], TransactionOpened)
    till.scan(WATER)
    sale = till.complete()
    assert isinstance(sale, SaleCompleted)
    assert sale.member_id == "M-77"


def test_restart_mid_transaction_replays_to_the_same_sale(till: Till, catalogue: Catalogue) -> None:
    till.scan(COLA)
    till.scan(APPLES)
    stored = [event_to_json(e) for e in till.journal]  # what SQLite holds at the crash
    till.weigh(777)
    uninterrupted = till.complete()

    revived = CheckoutLane("demo-sh-001", "lane1", catalogue, journal=[event_from_json(t) for t in stored])
    open_tx = revived.open_transaction
    assert open_tx is not None
    assert open_tx.pending_line is not None
    assert open_tx.pending_line.gtin == APPLES
    revived.apply(revived.weight(777, stable=True, ts=T0 + 4))
    revived.apply(revived.complete(T0 + 5))
    assert revived.last_payload == uninterrupted


def test_a_catalogue_replaced_mid_transaction_reprices_nothing(till: Till, catalogue: Catalogue) -> None:
    till.scan(COLA)
    dearer = Catalogue.model_validate(
        {
            **catalogue.model_dump(),
            "items": [
                {**i.model_dump(), "price": "3.50"} if i.gtin == COLA else i.model_dump()
                for i in catalogue.items
            ],
        }
    )
    till.lane.catalogue = dearer
    till.scan(WATER)
    replayed = fold(till.journal, "lane1")
    assert replayed == till.lane.state
    till.scan(COLA)  # a new scan uses the new price: a new line, not merged into the 3.00 one
    tx = till.lane.open_transaction
    assert tx is not None
    assert [(ln.gtin, ln.unit_price, ln.qty) for ln in tx.lines] == [
        (COLA, Decimal("3.00"), 1),
        (WATER, Decimal("2.00"), 1),
        (COLA, Decimal("3.50"), 1),
    ]


def test_transaction_id_must_fit_the_wire_identifier(catalogue: Catalogue) -> None:
    with pytest.raises(ValueError, match="too long"):
        CheckoutLane("s" * 40, "lane-with-a-long-name", catalogue)


# --- returns -------------------------------------------------------------------------------------------------


def sold(till: Till) -> SaleCompleted:
    till.scan(COLA)
    till.do(till.lane.set_quantity(1, 3, till.tick()))
    till.scan(APPLES)
    till.weigh(1234)
    sale = till.complete()
    assert isinstance(sale, SaleCompleted)
    return sale


def test_partial_returns_at_the_price_paid(till: Till) -> None:
    sale = sold(till)
    till.do(till.lane.start_return(sale, till.tick()))
    till.scan(COLA)
    till.scan(COLA)  # merged: 2 cans
    ret = till.complete()
    assert isinstance(ret, SaleReturned)
    assert ret.original_transaction_id == sale.transaction_id
    assert [(i.gtin, i.qty, i.amount) for i in ret.items] == [(COLA, 2, Decimal("6.00"))]
    assert ret.refund_total == Decimal("6.00")
    # A second return knows the first: one can and the apples are left.
    till.do(till.lane.start_return(sale, till.tick(), prior_returns=[ret]))
    with pytest.raises(LaneError, match="only 1 of 06901234567892"):
        till.lane.return_line(0, till.tick(), qty=2)
    till.do(till.lane.return_line(0, till.tick()))
    till.do(till.lane.return_line(1, till.tick()))  # weighed: whole line
    with pytest.raises(LaneError, match="only 0"):
        till.lane.return_line(1, till.tick())
    with pytest.raises(LaneError, match="returned whole"):
        till.lane.return_line(1, till.tick(), qty=1)
    with pytest.raises(LaneError, match="not allowed in a return"):
        till.lane.scan(MemberScan(member_id="M1"), till.tick())
    second = till.complete()
    assert isinstance(second, SaleReturned)
    assert [(i.gtin, i.qty, i.weight_kg) for i in second.items] == [
        (COLA, 1, None),
        (APPLES, None, Decimal("1.234")),
    ]
    assert second.refund_total == Decimal("3.00") + Decimal("15.80")
    # Nothing left to return.
    till.do(till.lane.start_return(sale, till.tick(), prior_returns=[ret, second]))
    with pytest.raises(LaneError, match=r"not .*returnable"):
        till.lane.scan(product(COLA), till.tick())


def test_return_quantity_changes_stay_within_what_was_sold(till: Till) -> None:
    sale = sold(till)
    till.do(till.lane.start_return(sale, till.tick()))
    till.do(till.lane.return_line(0, till.tick()))
    with pytest.raises(LaneError, match="only 3 of line 1's item"):
        till.lane.set_quantity(1, 4, till.tick())
    till.do(till.lane.set_quantity(1, 3, till.tick()))
    assert till.complete().items[0].qty == 3


def test_start_return_refuses_foreign_prior_returns(till: Till) -> None:
    sale = sold(till)
    other = SaleReturned(
        transaction_id="x:1",
        original_transaction_id="x:0",
        lane="lane9",
        cashier="c1",
        items=sale.items[:1],
        refund_total=sale.items[0].amount,
        ts=sale.ts,
    )
    with pytest.raises(LaneError, match="is not of sale"):
        till.lane.start_return(sale, till.tick(), prior_returns=[other])


def test_stock_deltas(till: Till, catalogue: Catalogue) -> None:
    sale = sold(till)
    till.scan(price_label("00002", 698))  # bananas at a printed 6.98 = 1.000 kg at 6.98/kg
    labelled = till.complete()
    assert stock_deltas(sale, catalogue) == {COLA: Decimal(-3), APPLES: Decimal("-1.234")}
    assert stock_deltas(labelled, catalogue) == {"02200002000000": Decimal("-1.000")}
    till.do(till.lane.start_return(sale, till.tick()))
    till.do(till.lane.return_line(0, till.tick(), qty=2))
    assert stock_deltas(till.complete(), catalogue) == {COLA: Decimal(2)}


def test_weight_conversion_is_exact_for_scale_grams() -> None:
    assert weight_kg_from_g(1234.4) == Decimal("1.234")
    assert weight_kg_from_g(1234.5) == Decimal("1.235")
    assert weight_kg_from_g(0.1) == Decimal("0.000")


# --- properties ----------------------------------------------------------------------------------------------

CODES = [
    COLA,
    WATER,
    NOODLES,
    APPLES,
    weight_label("00003", 456),
    price_label("00002", 995),
    "07032069804988",
]

ARGS: dict[str, st.SearchStrategy[tuple[object, ...]]] = {
    "scan": st.tuples(st.sampled_from(CODES)),
    "weigh": st.tuples(
        st.sampled_from([None, -1.0, 0.0, 0.4, 250.0, 1234.5, 2000.0]), st.sampled_from([True] * 3 + [False])
    ),
    "member": st.tuples(st.sampled_from(["M1", "M2"])),
    "qty": st.tuples(st.integers(1, 6), st.integers(-1, 5)),
    "void": st.tuples(st.integers(1, 6)),
    "void_all": st.just(()),
    "complete": st.just(()),
    "cancel": st.just(()),
    "sign_in": st.tuples(st.sampled_from(["c1", "c2"])),
}
KINDS = (
    ["scan"] * 5
    + ["weigh"] * 5
    + ["complete"] * 2
    + ["member", "qty", "void", "void_all", "cancel", "sign_in"]
)
command = st.sampled_from(KINDS).flatmap(lambda kind: ARGS[kind].map(lambda args: (kind, *args)))
commands = st.lists(command, min_size=8, max_size=60)


def run(lane: CheckoutLane, command: tuple[object, ...], ts: float) -> list[LaneEvent]:
    match command:
        case ("scan", str(code)):
            return lane.scan(product(code), ts)
        case ("weigh", grams, bool(stable)):
            return lane.weight(grams if grams is None else float(str(grams)), stable=stable, ts=ts)
        case ("member", str(member)):
            return lane.scan(MemberScan(member_id=member), ts)
        case ("qty", int(line_no), int(qty)):
            return lane.set_quantity(line_no, qty, ts)
        case ("void", int(line_no)):
            return lane.void_line(line_no, ts)
        case ("void_all",):
            return lane.void_all(ts)
        case ("complete",):
            return lane.complete(ts)
        case ("cancel",):
            return lane.cancel(ts)
        case ("sign_in", str(cashier)):
            return lane.sign_in(cashier, ts)
    raise AssertionError(command)


def check_invariants(state: LaneState) -> None:
    tx = state.transaction
    if tx is None:
        return
    for line in tx.lines:
        assert line.qty is None or 1 <= line.qty <= 99_999  # voids never make a negative (or zero) quantity
        assert (line.qty is None) != (line.weight_kg is None) or line.pending or line.voided
    assert sum(1 for line in tx.lines if line.pending) <= 1
    assert tx.total == sum((ln.amount or Decimal(0) for ln in tx.active_lines), Decimal("0.00"))
    if tx.status == "completed":
        assert isinstance(tx.payload, SaleCompleted)
        assert tx.payload.total == tx.total == sum((i.amount for i in tx.payload.items), Decimal("0.00"))
        assert len(tx.payload.items) == len(tx.active_lines)


@settings(max_examples=200)
@given(commands)
def test_any_command_sequence_replays_to_the_same_state(
    catalogue: Catalogue, script: list[tuple[object, ...]]
) -> None:
    lane = CheckoutLane("demo-sh-001", "lane1", catalogue)
    journal: list[LaneEvent] = lane.sign_in("c1", T0)
    lane.apply(journal)
    sales: dict[str, SaleCompleted | SaleReturned] = {}
    for step, command in enumerate(script, start=1):
        before = lane.state
        try:
            events = run(lane, command, T0 + step)
        except (LaneError, UnknownItem):
            assert lane.state == before  # a refused command changes nothing
            continue
        journal.extend(events)
        lane.apply(events)
        check_invariants(lane.state)
        payload = lane.last_payload
        if payload is not None:
            assert sales.setdefault(payload.transaction_id, payload) == payload
        if command == ("complete",) and payload is not None:
            assert lane.complete(T0 + step) == []  # a second completion adds nothing
    replayed = fold([event_from_json(event_to_json(e)) for e in journal], "lane1")
    assert replayed == lane.state
    assert fold(compact(journal, "lane1"), "lane1") == lane.state
    # One sale per completion event, never two with one id.
    completed = [e for e in journal if e.type == "transaction_completed"]
    assert len(completed) == len(sales)
    event(f"completed {min(len(sales), 2)}+ transactions")
    event(f"weighed lines: {any(isinstance(e, WeightTaken) for e in journal)}")


def test_the_property_harness_itself_sees_refusals(catalogue: Catalogue) -> None:
    lane = CheckoutLane("demo-sh-001", "lane1", catalogue)
    with pytest.raises(LaneError):
        run(lane, ("complete",), T0)
    lane.apply(lane.sign_in("c1", T0))
    with pytest.raises(UnknownItem):
        run(lane, ("scan", "07032069804988"), T0)
