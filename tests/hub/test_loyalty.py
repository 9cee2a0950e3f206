"""Membership rules with DOMAIN.md's own numbers: points, bonuses, tiers, returns, redemption, idempotency.

Every number here is worked out by hand in docs/loyalty.md. `MemberBook` does what the storage layer will do
(keep the sales, the returns and a ledger with UNIQUE(member_id, cause, ref)) in memory, so the planners are
exercised exactly as the database wiring will call them; the property tests reuse it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from pydantic import ValidationError

from cloud_bridge.contract import SaleCompleted, SaleItem, SaleReturned, line_amount, parse_rfc3339, rfc3339
from hub.loyalty import (
    DEFAULT_RULES,
    InsufficientPointsError,
    LedgerCause,
    LedgerEntry,
    LedgerKey,
    LoyaltyError,
    LoyaltyRules,
    MemberMismatchError,
    MemberState,
    ReturnMismatchError,
    SpendFact,
    Tier,
    TierStatus,
    apply_entries,
    check_return,
    checkin_ref,
    compute_tier,
    is_double11,
    local_date,
    plan_checkin,
    plan_redeem,
    plan_return,
    plan_sale,
    plan_signup,
    purchase_points,
    sale_spend_facts,
    spend_windows,
    tier_for_spend,
    window_first_day,
)

GTIN_A = "07032069804988"  # from tests/vectors/gs1_barcodes.json (biip test-suite)
GTIN_B = "05901234123457"
GTIN_WEIGHED = "02302148210869"
MEMBER = "M00042"
CST = timedelta(hours=8)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def cst(text: str) -> datetime:
    """A China Standard Time wall-clock reading as an aware UTC datetime."""
    return (datetime.fromisoformat(text) - CST).replace(tzinfo=UTC)


def item(price: str, qty: int = 1, gtin: str = GTIN_A) -> SaleItem:
    unit_price = Decimal(price)
    return SaleItem(gtin=gtin, qty=qty, unit_price=unit_price, amount=line_amount(unit_price, qty))


def weighed_item(price_per_kg: str, weight_kg: str, gtin: str = GTIN_WEIGHED) -> SaleItem:
    unit_price, weight = Decimal(price_per_kg), Decimal(weight_kg)
    return SaleItem(
        gtin=gtin, weight_kg=weight, unit_price=unit_price, amount=line_amount(unit_price, weight)
    )


def sale(
    transaction_id: str, at: datetime, *items: SaleItem, member_id: str | None = MEMBER
) -> SaleCompleted:
    return SaleCompleted(
        transaction_id=transaction_id,
        lane="L1",
        cashier="c1",
        member_id=member_id,
        items=list(items),
        total=sum((i.amount for i in items), Decimal("0.00")),
        ts=rfc3339(at),
    )


def a_return(transaction_id: str, of: SaleCompleted, at: datetime, *items: SaleItem) -> SaleReturned:
    return SaleReturned(
        transaction_id=transaction_id,
        original_transaction_id=of.transaction_id,
        lane="L1",
        cashier="c1",
        items=list(items),
        refund_total=sum((i.amount for i in items), Decimal("0.00")),
        ts=rfc3339(at),
    )


@dataclass
class MemberBook:
    """The storage layer in memory: sales and returns tables, a ledger with a unique key, the member row."""

    member: MemberState
    rules: LoyaltyRules = DEFAULT_RULES
    entries: list[LedgerEntry] = field(default_factory=list)
    sales: dict[str, SaleCompleted] = field(default_factory=dict)
    returns: dict[str, list[SaleReturned]] = field(default_factory=lambda: defaultdict(list))

    @property
    def keys(self) -> set[LedgerKey]:
        return {entry.key for entry in self.entries}

    def insert(self, entries: list[LedgerEntry]) -> list[LedgerEntry]:
        for entry in entries:
            assert entry.key not in self.keys, f"UNIQUE(member_id, cause, ref) violated by {entry.key}"
        self.member = apply_entries(self.member, entries)
        self.entries.extend(entries)
        return entries

    def facts(self, exclude_sale: str | None = None) -> list[SpendFact]:
        return [
            fact
            for sale_id, recorded in self.sales.items()
            if sale_id != exclude_sale
            for fact in sale_spend_facts(recorded, self.returns[sale_id])
        ]

    def tier(self, as_of: datetime) -> TierStatus:
        return compute_tier(self.facts(), as_of, self.rules)

    def sale(self, completed: SaleCompleted) -> list[LedgerEntry]:
        self.sales.setdefault(completed.transaction_id, completed)
        tier_before = compute_tier(
            self.facts(exclude_sale=completed.transaction_id), parse_rfc3339(completed.ts), self.rules
        ).tier
        return self.insert(
            plan_sale(self.rules, self.member, completed, tier_before=tier_before, applied=self.keys)
        )

    def ret(self, returned: SaleReturned) -> list[LedgerEntry]:
        original = self.sales[returned.original_transaction_id]
        prior = self.returns[original.transaction_id]
        planned = plan_return(
            self.rules,
            self.member,
            original,
            returned,
            sale_entries=[e for e in self.entries if e.ref == original.transaction_id],
            prior_returns=prior,
            applied=self.keys,
        )
        if all(r.transaction_id != returned.transaction_id for r in prior):
            prior.append(returned)
        return self.insert(planned)

    def checkin(self, at: datetime) -> list[LedgerEntry]:
        return self.insert(plan_checkin(self.rules, self.member, at, applied=self.keys))

    def signup(self, campaign: str, at: datetime) -> list[LedgerEntry]:
        return self.insert(plan_signup(self.rules, self.member, campaign, at, applied=self.keys))

    def redeem(self, points: int, redemption_id: str, at: datetime) -> list[LedgerEntry]:
        return self.insert(plan_redeem(self.member, points, redemption_id, at, applied=self.keys))

    @property
    def balance_from_ledger(self) -> int:
        return sum(entry.delta for entry in self.entries)


def deltas(entries: list[LedgerEntry]) -> dict[LedgerCause, int]:
    return {entry.cause: entry.delta for entry in entries}


def platinum_book(birth_month: int | None = 11) -> MemberBook:
    """A member whose 365-day spend is 60 000 CNY from a sale on 2026-06-01 (Platinum until mid-2027)."""
    book = MemberBook(MemberState(member_id=MEMBER, birth_month=birth_month))
    book.sale(sale("big-1", cst("2026-06-01T12:00:00"), item("6000.00", qty=10)))
    return book


# ---- configuration and days -----------------------------------------------------------------------------------


def test_default_rules_are_domain_md() -> None:
    rules = LoyaltyRules()
    assert rules.points_per_cny == Decimal("1.2")
    assert (rules.signup_points, rules.checkin_points) == (5, 1)
    assert (rules.double11_month, rules.double11_day) == (11, 11)
    assert (rules.double11_min_total_cny, rules.double11_bonus_points) == (Decimal(1000), 50)
    assert rules.platinum_birthday_multiplier == 2
    assert (rules.silver_min_spend_30d_cny, rules.gold_min_spend_30d_cny) == (Decimal(500), Decimal(2000))
    assert rules.platinum_over_spend_365d_cny == Decimal(50000)
    assert (rules.short_window_days, rules.long_window_days) == (30, 365)
    assert rules.timezone == "Asia/Shanghai"


def test_rules_load_from_config_text_without_float_error() -> None:
    rules = LoyaltyRules.model_validate({"points_per_cny": 1.5, "double11_min_total_cny": "888"})
    assert rules.points_per_cny == Decimal("1.5")
    assert purchase_points(Decimal("100.00"), rules) == 150


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"silver_min_spend_30d_cny": "2000"}, "silver_min_spend_30d_cny must be below gold"),
        ({"double11_day": 31}, "double11_month/day 11/31 is no date"),
        (
            {"short_window_days": 60, "long_window_days": 30},
            "short_window_days must not exceed long_window_days",
        ),
        ({"signup_points": -1}, "greater than or equal to 0"),
        ({"bonus": 1}, "Extra inputs are not permitted"),
    ],
)
def test_contradictory_rules_fail_at_load(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        LoyaltyRules.model_validate(overrides)


def test_a_day_is_a_china_standard_time_calendar_day() -> None:
    assert local_date(utc("2026-11-10T15:59:59")) == date(2026, 11, 10)  # 23:59:59 CST
    assert local_date(utc("2026-11-10T16:00:00")) == date(2026, 11, 11)  # 00:00 CST
    assert is_double11(utc("2026-11-10T16:00:00"))
    assert is_double11(utc("2026-11-11T15:59:59"))
    assert not is_double11(utc("2026-11-11T16:00:00"))  # 12 Nov in Shanghai, still 11 Nov in UTC
    offset = datetime.fromisoformat("2026-11-11T00:30:00+09:00")  # a Tokyo-offset reading is 10 Nov 23:30 CST
    assert local_date(offset) == date(2026, 11, 10)
    with pytest.raises(ValueError, match="naive timestamp"):
        local_date(datetime(2026, 11, 11))  # noqa: DTZ001 - the point of the test


# ---- purchase points and bonuses --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "points"),
    [("100.00", 120), ("99.99", 119), ("0.83", 0), ("0.84", 1), ("1234.56", 1481), ("0.00", 0)],
)
def test_purchase_points_are_1_2_per_cny_rounded_down(total: str, points: int) -> None:
    assert purchase_points(Decimal(total)) == points


def test_a_sale_earns_purchase_points() -> None:
    book = MemberBook(MemberState(member_id=MEMBER))
    entries = book.sale(sale("s1", cst("2026-03-05T10:00:00"), item("25.00", qty=4)))
    assert [(e.cause, e.ref, e.delta, e.sale_id) for e in entries] == [
        (LedgerCause.PURCHASE, "s1", 120, "s1")
    ]
    assert entries[0].ts == cst("2026-03-05T10:00:00")
    assert book.member.balance == 120


def test_a_weighed_line_earns_on_its_rounded_amount() -> None:
    book = MemberBook(MemberState(member_id=MEMBER))
    entries = book.sale(sale("s1", cst("2026-03-05T10:00:00"), weighed_item("39.80", "0.455")))  # 18.11 CNY
    assert deltas(entries) == {LedgerCause.PURCHASE: 21}  # 21.732


def test_double11_purchase_of_1000_earns_50_extra() -> None:
    book = MemberBook(MemberState(member_id=MEMBER))
    entries = book.sale(sale("d11", cst("2026-11-11T00:30:00"), item("500.00", qty=2)))
    assert deltas(entries) == {LedgerCause.PURCHASE: 1200, LedgerCause.DOUBLE11: 50}
    assert book.member.balance == 1250


@pytest.mark.parametrize(
    ("at", "total", "bonus"),
    [
        (cst("2026-11-11T23:59:59"), "1000.00", True),
        (cst("2026-11-10T23:59:59"), "1000.00", False),
        (cst("2026-11-12T00:00:00"), "1000.00", False),
        (cst("2026-11-11T12:00:00"), "999.99", False),
        (cst("2025-11-11T12:00:00"), "4321.00", True),
    ],
)
def test_double11_is_the_local_day_and_at_least_1000(at: datetime, total: str, bonus: bool) -> None:
    book = MemberBook(MemberState(member_id=MEMBER))
    entries = book.sale(sale("s", at, item(total)))
    assert (LedgerCause.DOUBLE11 in deltas(entries)) is bonus


def test_platinum_birthday_month_doubles_purchase_points() -> None:
    book = platinum_book(birth_month=11)
    entries = book.sale(sale("b1", cst("2026-11-20T10:00:00"), item("100.00")))
    assert deltas(entries) == {LedgerCause.PURCHASE: 120, LedgerCause.PLATINUM_BIRTHDAY: 120}


def test_platinum_birthday_on_double11_doubles_the_purchase_points_not_the_bonus() -> None:
    book = platinum_book(birth_month=11)
    entries = book.sale(sale("b2", cst("2026-11-11T10:00:00"), item("1000.00")))
    assert deltas(entries) == {
        LedgerCause.PURCHASE: 1200,
        LedgerCause.PLATINUM_BIRTHDAY: 1200,
        LedgerCause.DOUBLE11: 50,
    }


@pytest.mark.parametrize(
    ("birth_month", "at"),
    [(11, cst("2026-12-01T00:00:00")), (12, cst("2026-11-30T23:59:59")), (None, cst("2026-11-20T10:00:00"))],
)
def test_no_doubling_outside_the_birth_month(birth_month: int | None, at: datetime) -> None:
    book = platinum_book(birth_month=birth_month)
    assert deltas(book.sale(sale("b3", at, item("100.00")))) == {LedgerCause.PURCHASE: 120}


def test_no_doubling_below_platinum() -> None:
    book = MemberBook(MemberState(member_id=MEMBER, birth_month=11))
    book.sale(sale("g", cst("2026-11-02T10:00:00"), item("4000.00")))  # Gold: 30-day spend 4 000
    assert book.tier(cst("2026-11-20T09:00:00")).tier is Tier.GOLD
    assert deltas(book.sale(sale("b4", cst("2026-11-20T10:00:00"), item("100.00")))) == {
        LedgerCause.PURCHASE: 120
    }


def test_the_sale_that_reaches_platinum_is_not_doubled_the_next_one_is() -> None:
    book = MemberBook(MemberState(member_id=MEMBER, birth_month=11))
    first = book.sale(sale("p1", cst("2026-11-03T10:00:00"), item("50000.01")))
    assert LedgerCause.PLATINUM_BIRTHDAY not in deltas(first)  # the tier before it was Bronze
    assert book.tier(cst("2026-11-03T10:00:00")).tier is Tier.PLATINUM
    second = book.sale(sale("p2", cst("2026-11-03T11:00:00"), item("10.00")))
    assert deltas(second) == {LedgerCause.PURCHASE: 12, LedgerCause.PLATINUM_BIRTHDAY: 12}


def test_anonymous_or_foreign_sales_are_refused_by_the_planner() -> None:
    member = MemberState(member_id=MEMBER)
    for member_id in (None, "M99999"):
        other = sale("x", cst("2026-03-05T10:00:00"), item("10.00"), member_id=member_id)
        with pytest.raises(MemberMismatchError, match="planned against M00042"):
            plan_sale(DEFAULT_RULES, member, other, tier_before=Tier.BRONZE, applied=set())


# ---- tiers ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spend_30d", "spend_365d", "tier"),
    [
        ("0.00", "0.00", Tier.BRONZE),
        ("499.99", "499.99", Tier.BRONZE),
        ("500.00", "500.00", Tier.SILVER),
        ("1999.99", "9000.00", Tier.SILVER),
        ("2000.00", "2000.00", Tier.GOLD),
        ("5000.00", "20000.00", Tier.GOLD),
        ("8000.00", "49999.99", Tier.GOLD),  # > 5 000 in 30 days without Platinum stays Gold
        ("0.00", "50000.00", Tier.BRONZE),  # exactly 50 000 is not "> 50 000"
        ("0.00", "50000.01", Tier.PLATINUM),  # Platinum takes precedence over a quiet month
        ("3000.00", "60000.00", Tier.PLATINUM),
    ],
)
def test_tier_thresholds(spend_30d: str, spend_365d: str, tier: Tier) -> None:
    assert tier_for_spend(Decimal(spend_30d), Decimal(spend_365d)) is tier


def test_windows_are_whole_local_days_ending_today() -> None:
    assert window_first_day(date(2026, 11, 30), 30) == date(2026, 11, 1)
    as_of = cst("2026-11-30T09:00:00")
    facts = [
        SpendFact(cst("2026-10-31T23:59:59"), Decimal("100.00"), cst("2026-10-31T23:59:59")),  # day −30: out
        SpendFact(cst("2026-11-01T00:00:00"), Decimal("200.00"), cst("2026-11-01T00:00:00")),  # day −29: in
        SpendFact(cst("2026-11-30T08:59:59"), Decimal("300.00"), cst("2026-11-30T08:59:59")),
        SpendFact(cst("2026-11-30T09:00:01"), Decimal("400.00"), cst("2026-11-30T09:00:01")),  # after as_of
        SpendFact(cst("2025-12-01T00:00:00"), Decimal("1000.00"), cst("2025-12-01T00:00:00")),  # day −364: in
        SpendFact(
            cst("2025-11-30T23:00:00"), Decimal("5000.00"), cst("2025-11-30T23:00:00")
        ),  # day −365: out
    ]
    assert spend_windows(facts, as_of) == (Decimal("500.00"), Decimal("1600.00"))


def test_tier_drops_when_the_spend_leaves_the_window() -> None:
    book = MemberBook(MemberState(member_id=MEMBER))
    book.sale(sale("s", cst("2026-03-01T10:00:00"), item("600.00")))
    assert book.tier(cst("2026-03-30T23:59:59")).tier is Tier.SILVER
    assert book.tier(cst("2026-03-31T00:00:00")).tier is Tier.BRONZE
    status = book.tier(cst("2026-03-31T00:00:00"))
    assert (status.spend_30d_cny, status.spend_365d_cny) == (Decimal("0.00"), Decimal("600.00"))
    assert status.as_of_date == date(2026, 3, 31)


def test_a_return_lowers_the_spend_of_the_sale_it_returns() -> None:
    book = MemberBook(MemberState(member_id=MEMBER))
    bought = sale("s", cst("2026-03-01T10:00:00"), item("300.00", qty=2))
    book.sale(bought)
    assert book.tier(cst("2026-03-02T10:00:00")).tier is Tier.SILVER
    book.ret(a_return("r", bought, cst("2026-03-20T10:00:00"), item("300.00")))
    assert book.tier(cst("2026-03-20T10:00:00")).tier is Tier.BRONZE
    # Before the return happened the member was Silver: a tier "as of" the past ignores later returns.
    assert book.tier(cst("2026-03-19T10:00:00")).tier is Tier.SILVER
    # Once the sale's date leaves the window, the return leaves with it: no negative spend.
    assert book.tier(cst("2026-04-10T10:00:00")).spend_30d_cny == Decimal("0.00")


# ---- returns --------------------------------------------------------------------------------------------------


def test_full_return_reverses_purchase_and_bonuses() -> None:
    book = platinum_book(birth_month=11)
    bought = sale("d", cst("2026-11-11T10:00:00"), item("500.00", qty=2))
    earned = book.sale(bought)
    assert sum(e.delta for e in earned) == 2450
    before = book.member.balance
    entries = book.ret(a_return("r", bought, cst("2026-11-12T10:00:00"), item("500.00", qty=2)))
    assert [(e.cause, e.ref, e.sale_id, e.delta, e.debt_delta) for e in entries] == [
        (LedgerCause.RETURN, "r", "d", -2450, 0)
    ]
    assert book.member.balance == before - 2450


def test_partial_return_keeps_the_points_of_what_was_kept() -> None:
    book = MemberBook(MemberState(member_id=MEMBER))
    bought = sale("d", cst("2026-11-11T10:00:00"), item("100.00", qty=10))  # 1 200 + 50 Double 11
    book.sale(bought)
    first = book.ret(a_return("r1", bought, cst("2026-11-12T10:00:00"), item("100.00")))
    # kept 900 CNY: purchase keeps floor(1200 × 900 / 1000) = 1080, the bonus needs ≥ 1000 kept
    assert first[0].delta == -(120 + 50)
    assert "double11 50" in first[0].detail
    rest = book.ret(a_return("r2", bought, cst("2026-11-13T10:00:00"), item("100.00", qty=9)))
    assert rest[0].delta == -1080
    assert book.member.balance == 0


def test_partial_returns_in_thirds_add_up_to_exactly_what_was_earned() -> None:
    book = MemberBook(MemberState(member_id=MEMBER))
    bought = sale("t", cst("2026-03-01T10:00:00"), item("33.33", qty=3))  # 99.99 CNY → 119 points
    assert book.sale(bought)[0].delta == 119
    reversed_points = [
        -book.ret(a_return(f"r{n}", bought, cst("2026-03-02T10:00:00"), item("33.33")))[0].delta
        for n in range(3)
    ]
    assert reversed_points == [40, 40, 39]  # keeps floor(119 × ⅔) = 79, then floor(119 × ⅓) = 39, then 0
    assert book.member.balance == 0


def test_a_return_can_only_take_back_what_the_sale_sold() -> None:
    bought = sale("s", cst("2026-03-01T10:00:00"), item("10.00", qty=2), weighed_item("39.80", "0.455"))
    one = a_return("r1", bought, cst("2026-03-02T10:00:00"), item("10.00"))
    check_return(bought, [], one)
    with pytest.raises(
        ReturnMismatchError, match=r"3 × 07032069804988 at 10.00 CNY returned in total.* sold 2"
    ):
        check_return(bought, [one], a_return("r2", bought, cst("2026-03-02T10:00:00"), item("10.00", qty=2)))
    with pytest.raises(ReturnMismatchError, match="sold 0 at that price"):
        check_return(bought, [], a_return("r3", bought, cst("2026-03-02T10:00:00"), item("9.00")))
    with pytest.raises(ReturnMismatchError, match="sold 0"):
        check_return(
            bought, [], a_return("r4", bought, cst("2026-03-02T10:00:00"), item("10.00", gtin=GTIN_B))
        )
    whole = a_return("r5", bought, cst("2026-03-02T10:00:00"), weighed_item("39.80", "0.455"))
    check_return(bought, [], whole)
    with pytest.raises(ReturnMismatchError, match="weighed lines return whole"):
        check_return(
            bought, [], a_return("r6", bought, cst("2026-03-02T10:00:00"), weighed_item("39.80", "0.200"))
        )
    with pytest.raises(ReturnMismatchError, match="no longer"):
        check_return(
            bought,
            [whole],
            a_return("r7", bought, cst("2026-03-02T10:00:00"), weighed_item("39.80", "0.455")),
        )
    other = sale("other", cst("2026-03-01T10:00:00"), item("10.00"))
    with pytest.raises(ReturnMismatchError, match="references sale s, not other"):
        check_return(other, [], one)


def test_a_retried_return_is_not_counted_against_itself() -> None:
    bought = sale("s", cst("2026-03-01T10:00:00"), item("10.00", qty=2))
    both = a_return("r1", bought, cst("2026-03-02T10:00:00"), item("10.00", qty=2))
    check_return(bought, [both], both)  # the storage layer may already hold it when it plans


def test_a_return_after_redemption_leaves_points_owed_that_later_earnings_pay() -> None:
    book = MemberBook(MemberState(member_id=MEMBER))
    bought = sale("s", cst("2026-03-01T10:00:00"), item("100.00"))
    book.sale(bought)  # +120
    book.redeem(100, "mall-1", cst("2026-03-01T11:00:00"))  # 20 left
    entries = book.ret(a_return("r", bought, cst("2026-03-02T10:00:00"), item("100.00")))
    assert [(e.delta, e.debt_delta) for e in entries] == [(-20, 100)]
    assert "100 owed (already redeemed)" in entries[0].detail
    assert (book.member.balance, book.member.debt) == (0, 100)
    checkin = book.checkin(cst("2026-03-03T08:00:00"))
    assert [(e.cause, e.ref, e.delta, e.debt_delta) for e in checkin] == [
        (LedgerCause.CHECKIN, "2026-03-03", 1, 0),
        (LedgerCause.DEBT_RECOVERY, "checkin:2026-03-03", -1, -1),
    ]
    earned = book.sale(sale("s2", cst("2026-03-04T10:00:00"), item("100.00")))
    assert [(e.cause, e.delta, e.debt_delta) for e in earned] == [
        (LedgerCause.PURCHASE, 120, 0),
        (LedgerCause.DEBT_RECOVERY, -99, -99),
    ]
    assert (book.member.balance, book.member.debt) == (21, 0)
    # Over time the return took back exactly what its sale earned: 20 at once + 100 owed and paid.
    assert sum(e.delta for e in book.entries) == book.member.balance


# ---- sign-up, check-in, redemption ----------------------------------------------------------------------------


def test_signup_earns_5_once_per_campaign() -> None:
    book = MemberBook(MemberState(member_id=MEMBER))
    assert deltas(book.signup("spring-2026", cst("2026-03-01T10:00:00"))) == {LedgerCause.SIGNUP: 5}
    assert book.signup("spring-2026", cst("2026-03-02T10:00:00")) == []
    assert deltas(book.signup("double11-2026", cst("2026-11-01T10:00:00"))) == {LedgerCause.SIGNUP: 5}
    assert book.member.balance == 10
    with pytest.raises(LoyaltyError, match="campaign id 'spring 2026'"):
        book.signup("spring 2026", cst("2026-03-01T10:00:00"))


def test_checkin_earns_1_once_per_local_day() -> None:
    book = MemberBook(MemberState(member_id=MEMBER))
    assert [(e.ref, e.delta) for e in book.checkin(cst("2026-11-11T00:00:00"))] == [("2026-11-11", 1)]
    assert book.checkin(cst("2026-11-11T23:59:59")) == []
    assert book.checkin(utc("2026-11-11T10:00:00")) == []  # 18:00 CST, same local day
    assert [e.ref for e in book.checkin(utc("2026-11-11T16:00:00"))] == ["2026-11-12"]  # 00:00 CST next day
    assert book.member.balance == 2
    assert checkin_ref(utc("2026-11-10T16:00:00")) == "2026-11-11"


def test_redemption_never_takes_the_balance_below_zero() -> None:
    book = MemberBook(MemberState(member_id=MEMBER))
    book.sale(sale("s", cst("2026-03-01T10:00:00"), item("100.00")))  # 120
    with pytest.raises(
        InsufficientPointsError, match="cannot redeem 121 points, the balance is 120"
    ) as caught:
        book.redeem(121, "mall-1", cst("2026-03-01T11:00:00"))
    assert (caught.value.balance, caught.value.requested) == (120, 121)
    assert book.member.balance == 120
    assert deltas(book.redeem(120, "mall-2", cst("2026-03-01T11:00:00"))) == {LedgerCause.REDEEM: -120}
    assert book.member.balance == 0
    assert book.redeem(120, "mall-2", cst("2026-03-01T11:00:01")) == []  # a retry of the same order
    with pytest.raises(LoyaltyError, match="redeem a positive number of points, not 0"):
        book.redeem(0, "mall-3", cst("2026-03-01T11:00:00"))


# ---- idempotency and the fold ---------------------------------------------------------------------------------


def test_the_same_sale_or_return_applied_twice_adds_nothing() -> None:
    book = MemberBook(MemberState(member_id=MEMBER))
    bought = sale("s", cst("2026-11-11T10:00:00"), item("1000.00"))
    assert len(book.sale(bought)) == 2
    assert book.sale(bought) == []
    returned = a_return("r", bought, cst("2026-11-12T10:00:00"), item("1000.00"))
    assert len(book.ret(returned)) == 1
    assert book.ret(returned) == []
    assert (book.member.balance, len(book.entries)) == (0, 3)


def test_apply_entries_refuses_a_negative_balance_or_another_member() -> None:
    member = MemberState(member_id=MEMBER, balance=3)
    take = LedgerEntry(
        member_id=MEMBER, cause=LedgerCause.REDEEM, ref="x", delta=-4, ts=cst("2026-03-01T10:00:00")
    )
    with pytest.raises(LoyaltyError, match="leaves balance -1"):
        apply_entries(member, [take])
    with pytest.raises(MemberMismatchError):
        apply_entries(member, [take.model_copy(update={"member_id": "M2"})])
    with pytest.raises(ValidationError, match="owes 5 points with a balance of 3"):
        MemberState(member_id=MEMBER, balance=3, debt=5)


def test_ledger_entries_carry_their_key_and_need_aware_times() -> None:
    entry = LedgerEntry(
        member_id=MEMBER, cause=LedgerCause.CHECKIN, ref="2026-11-11", delta=1, ts=cst("2026-11-11T08:00:00")
    )
    assert entry.key == (LedgerCause.CHECKIN, "2026-11-11")
    assert LedgerEntry.model_validate_json(entry.model_dump_json()) == entry
    with pytest.raises(ValidationError):
        LedgerEntry(member_id=MEMBER, cause=LedgerCause.CHECKIN, ref="d", delta=1, ts=datetime(2026, 11, 11))  # noqa: DTZ001
