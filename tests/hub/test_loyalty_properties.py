"""Properties of the membership rules over random member histories (hypothesis).

- the balance never goes negative, points are owed only at a zero balance, and the ledger sums to the state;
- a sale returned in full (at once or in any partial steps) nets zero points and restores the tier spend;
- the order of the sales never changes the tier;
- replaying every fact (at-least-once delivery, API retries) changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from cloud_bridge.contract import SaleCompleted, SaleItem, SaleReturned, line_amount
from hub.loyalty import (
    InsufficientPointsError,
    MemberState,
    SpendFact,
    compute_tier,
    spend_windows,
)
from tests.hub.test_loyalty import GTIN_A, GTIN_B, GTIN_WEIGHED, MEMBER, MemberBook, a_return, sale

START = datetime(2026, 11, 9, tzinfo=UTC)  # histories run across Double 11 and into December
prices = st.integers(min_value=0, max_value=300_000).map(lambda fen: Decimal(fen).scaleb(-2))


@st.composite
def lines(draw: st.DrawFn) -> SaleItem:
    price = draw(prices)
    if draw(st.integers(0, 3)) == 0:
        weight = Decimal(draw(st.integers(min_value=1, max_value=5000))).scaleb(-3)
        return SaleItem(
            gtin=GTIN_WEIGHED, weight_kg=weight, unit_price=price, amount=line_amount(price, weight)
        )
    qty = draw(st.integers(min_value=1, max_value=12))
    gtin = draw(st.sampled_from([GTIN_A, GTIN_B]))
    return SaleItem(gtin=gtin, qty=qty, unit_price=price, amount=line_amount(price, qty))


def part_of(line: SaleItem, qty: int) -> SaleItem:
    """`qty` units of a counted line, at the price paid."""
    return SaleItem(
        gtin=line.gtin, qty=qty, unit_price=line.unit_price, amount=line_amount(line.unit_price, qty)
    )


@dataclass
class Remaining:
    """What of one sale can still be returned: per line, units left (counted) or 1/0 (a weighed package)."""

    sale: SaleCompleted
    left: list[int]

    @classmethod
    def of(cls, completed: SaleCompleted) -> Remaining:
        return cls(completed, [line.qty if line.qty is not None else 1 for line in completed.items])

    def take(
        self, data: st.DataObject, return_id: str, at: datetime, everything: bool = False
    ) -> SaleReturned | None:
        items: list[SaleItem] = []
        for index, line in enumerate(self.sale.items):
            if not self.left[index]:
                continue
            count = self.left[index] if everything else data.draw(st.integers(0, self.left[index]))
            if not count:
                continue
            self.left[index] -= count
            items.append(part_of(line, count) if line.qty is not None else line)
        return a_return(return_id, self.sale, at, *items) if items else None


def check_invariants(book: MemberBook) -> None:
    member = book.member
    assert member.balance >= 0
    assert member.debt >= 0
    assert not (member.debt and member.balance)
    assert member.balance == sum(entry.delta for entry in book.entries)
    assert member.debt == sum(entry.debt_delta for entry in book.entries)
    assert len({entry.key for entry in book.entries}) == len(book.entries)


OPS = ("sale", "sale", "sale", "return", "checkin", "signup", "redeem")


@dataclass
class History:
    """A random member history, kept so the whole of it can be replayed."""

    book: MemberBook
    log: list[tuple[str, object]]


def run_history(data: st.DataObject, steps: int) -> History:
    birth_month = data.draw(st.sampled_from([None, 11, 12, 3]))  # mostly months the histories reach
    book = MemberBook(MemberState(member_id=MEMBER, birth_month=birth_month))
    log: list[tuple[str, object]] = []
    remaining: list[Remaining] = []
    at = START
    for step in range(steps):
        at += timedelta(minutes=data.draw(st.integers(0, 36 * 60)))
        op = data.draw(st.sampled_from(OPS))
        if op == "sale":
            # Now and then a big sale, so Platinum, Double 11 and the birthday month all happen.
            items = data.draw(st.lists(lines(), min_size=1, max_size=4))
            if data.draw(st.integers(0, 5)) == 0:
                items.append(
                    SaleItem(gtin=GTIN_A, qty=1, unit_price=Decimal("60000.00"), amount=Decimal("60000.00"))
                )
            completed = sale(f"s{step}", at, *items)
            book.sale(completed)
            remaining.append(Remaining.of(completed))
            log.append(("sale", completed))
        elif op == "return" and remaining:
            target = data.draw(st.sampled_from(remaining))
            returned = target.take(data, f"r{step}", at)
            if returned is not None:
                book.ret(returned)
                log.append(("return", returned))
        elif op == "checkin":
            book.checkin(at)
            log.append(("checkin", at))
        elif op == "signup":
            campaign = data.draw(st.sampled_from(["spring", "double11", "anniversary"]))
            book.signup(campaign, at)
            log.append(("signup", (campaign, at)))
        elif op == "redeem":
            # Often everything: a later return then has to leave points owed.
            points = data.draw(
                st.just(max(book.member.balance, 1)) | st.integers(1, book.member.balance + 20)
            )
            if points > book.member.balance:
                with pytest.raises(InsufficientPointsError):
                    book.redeem(points, f"m{step}", at)
            else:
                book.redeem(points, f"m{step}", at)
                log.append(("redeem", (points, f"m{step}", at)))
        check_invariants(book)
    return History(book, log)


def replay(history: History) -> None:
    book = history.book
    for kind, fact in history.log:
        if kind == "sale":
            assert isinstance(fact, SaleCompleted)
            assert book.sale(fact) == []
        elif kind == "return":
            assert isinstance(fact, SaleReturned)
            assert book.ret(fact) == []
        elif kind == "checkin":
            assert isinstance(fact, datetime)
            assert book.checkin(fact) == []
        elif kind == "signup":
            assert isinstance(fact, tuple)
            assert book.signup(fact[0], fact[1]) == []
        else:
            assert isinstance(fact, tuple)
            assert book.redeem(fact[0], fact[1], fact[2]) == []


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(data=st.data(), steps=st.integers(1, 40))
def test_balance_never_negative_and_ledger_matches_state(data: st.DataObject, steps: int) -> None:
    history = run_history(data, steps)  # invariants are checked after every step
    for cause in sorted({entry.cause for entry in history.book.entries}):
        event(f"ledger has {cause.value}")  # --hypothesis-show-statistics: which rules the histories reach
    if history.book.member.debt:
        event("ends with points owed")


@SETTINGS
@given(data=st.data(), steps=st.integers(1, 30))
def test_replaying_every_fact_changes_nothing(data: st.DataObject, steps: int) -> None:
    history = run_history(data, steps)
    entries, member = list(history.book.entries), history.book.member
    replay(history)
    assert history.book.entries == entries
    assert history.book.member == member


@SETTINGS
@given(data=st.data(), prior=st.integers(0, 6), pieces=st.integers(1, 4))
def test_a_sale_returned_in_full_nets_zero_and_restores_the_spend(
    data: st.DataObject, prior: int, pieces: int
) -> None:
    history = run_history(data, prior)
    book = history.book
    # No redemption may intervene, so nothing becomes owed; start from a book without debt.
    assume(not book.member.debt)
    at = START + timedelta(days=data.draw(st.integers(0, 60)), minutes=data.draw(st.integers(0, 1440)))
    later = max([at, *(entry.ts for entry in book.entries)]) + timedelta(hours=1)
    spend_before = spend_windows(book.facts(), later + timedelta(days=1), book.rules)
    tier_before = book.tier(later + timedelta(days=1)).tier
    completed = sale("the-sale", at, *data.draw(st.lists(lines(), min_size=1, max_size=5)))
    earned = book.sale(completed)
    left = Remaining.of(completed)
    reversed_entries = []
    for piece in range(pieces):
        returned = left.take(data, f"back-{piece}", later, everything=piece == pieces - 1)
        if returned is not None:
            reversed_entries += book.ret(returned)
    assert not any(left.left)
    assert sum(e.delta for e in earned) + sum(e.delta for e in reversed_entries) == 0
    assert spend_windows(book.facts(), later + timedelta(days=1), book.rules) == spend_before
    assert book.tier(later + timedelta(days=1)).tier is tier_before
    check_invariants(book)


spend_facts = st.builds(
    lambda minutes, fen: SpendFact(
        START + timedelta(minutes=minutes), Decimal(fen).scaleb(-2), START + timedelta(minutes=minutes)
    ),
    st.integers(0, 500 * 24 * 60),
    st.integers(0, 3_000_000),
)


@given(facts=st.lists(spend_facts, max_size=40), data=st.data(), days=st.integers(0, 520))
def test_the_order_of_sales_never_changes_the_tier(
    facts: list[SpendFact], data: st.DataObject, days: int
) -> None:
    as_of = START + timedelta(days=days, hours=12)
    shuffled = data.draw(st.permutations(facts))
    assert compute_tier(shuffled, as_of) == compute_tier(facts, as_of)
