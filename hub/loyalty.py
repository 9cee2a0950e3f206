"""Membership rules of the hub: tiers, points and the points ledger, as pure functions.

No database, no I/O, no clock: every function takes the facts and the member's state it needs and returns
values — a `TierStatus`, or the **ledger entries** a fact causes. The storage layer reads the inputs, calls
one planner, and inserts the entries it returns in the same transaction as the fact (docs/loyalty.md has the
tables and the call sequence). Rules and numbers are DOMAIN.md "Sales, members and points"; every choice the
text leaves open is decided here and written down in docs/loyalty.md:

- "A day" (daily check-in, Double 11, birthday month, tier windows) is a calendar day in the stores' time
  zone, China Standard Time (``Asia/Shanghai``, UTC+8, no DST), whatever the UTC date of the timestamp.
- Points are whole numbers. Purchase points = floor(points_per_cny × total paid): fractions are dropped.
- Tiers: Bronze < 500 ≤ Silver < 2 000 ≤ Gold by net spend over the last 30 local days, with no upper
  limit on Gold (DOMAIN.md's "2 000–5 000" names no tier above 5 000, and Platinum is defined only by the
  365-day spend); Platinum when the last 365 local days exceed 50 000, which takes precedence. A return
  lowers the spend of the *sale it returns* (on that sale's date), so a sale and its full return cancel
  inside every window and a late return never makes a window negative.
- Platinum birthday month doubles the purchase points (one extra `platinum_birthday` entry); the fixed
  bonuses (Double 11, sign-up, check-in) are not doubled. The tier that counts is the tier just before
  the sale.
- Returns reverse what the sale earned, from the ledger entries the sale created (not by recomputing, so a
  rules change or a tier change in between cannot make a return take back more or less). A partial return
  leaves the member the points of what they kept, rounded down: kept = floor(earned × kept / total) per
  cause; the Double 11 bonus is kept only while the kept amount still reaches the threshold. So partial
  returns that add up to the whole sale reverse exactly what it earned.
- The spendable balance never goes below zero. When a return must take back points that were already
  redeemed, the part it cannot take becomes **points owed** (`debt`), and later earnings pay the debt
  before they reach the balance (`debt_recovery` entries). Net over time the return still reverses exactly
  what the sale earned.
- Idempotency: every entry has a key (cause, ref); a planner that finds its fact's primary key among the
  `applied` keys returns no entries, and UNIQUE(member_id, cause, ref) in the table enforces it again.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from datetime import date, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from enum import StrEnum
from typing import Annotated, Final, NamedTuple, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from cloud_bridge.contract import SaleCompleted, SaleItem, SaleReturned, parse_rfc3339

ZERO_CNY: Final = Decimal("0.00")


# ---- errors -------------------------------------------------------------------------------------------------


class LoyaltyError(ValueError):
    """A fact the rules refuse; the message says why. The API maps it to a 4xx, ingest to a quarantine."""


class InsufficientPointsError(LoyaltyError):
    """A redemption asked for more points than the spendable balance."""

    def __init__(self, member_id: str, balance: int, requested: int) -> None:
        self.member_id = member_id
        self.balance = balance
        self.requested = requested
        super().__init__(
            f"member {member_id}: cannot redeem {requested} points, the balance is {balance}"
            " (a redemption never takes the balance below zero)"
        )


class ReturnMismatchError(LoyaltyError):
    """A return that does not fit the sale it references (unknown goods, more than was sold, …)."""


class MemberMismatchError(LoyaltyError):
    """The fact belongs to another member than the state it was planned against (a wiring bug)."""


# ---- configuration ------------------------------------------------------------------------------------------


def _check_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as 'Asia/Shanghai')") from exc
    return name


class LoyaltyRules(BaseModel):
    """The points and tier rules (DOMAIN.md defaults). Part of the hub config; validated once, at start."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    timezone: Annotated[str, AfterValidator(_check_zone)] = "Asia/Shanghai"
    """Whose calendar defines "a day": check-ins, Double 11, birthday month, tier windows."""
    points_per_cny: Decimal = Field(default=Decimal("1.2"), ge=0, le=1000)
    signup_points: int = Field(default=5, ge=0)
    checkin_points: int = Field(default=1, ge=0)
    double11_month: int = Field(default=11, ge=1, le=12)
    double11_day: int = Field(default=11, ge=1, le=31)
    double11_min_total_cny: Decimal = Field(default=Decimal("1000.00"), ge=0)
    """A single purchase paying at least this much on the day earns the bonus (≥, inclusive)."""
    double11_bonus_points: int = Field(default=50, ge=0)
    platinum_birthday_multiplier: int = Field(default=2, ge=1, le=10)
    """Purchase points × this for a Platinum member in their birth month (1 disables it)."""
    silver_min_spend_30d_cny: Decimal = Field(default=Decimal("500.00"), ge=0)
    gold_min_spend_30d_cny: Decimal = Field(default=Decimal("2000.00"), ge=0)
    platinum_over_spend_365d_cny: Decimal = Field(default=Decimal("50000.00"), ge=0)
    """Platinum needs strictly more than this over the long window ("> 50 000")."""
    short_window_days: int = Field(default=30, ge=1, le=366)
    long_window_days: int = Field(default=365, ge=1, le=3660)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.silver_min_spend_30d_cny < self.gold_min_spend_30d_cny:
            raise ValueError("silver_min_spend_30d_cny must be below gold_min_spend_30d_cny")
        if self.short_window_days > self.long_window_days:
            raise ValueError("short_window_days must not exceed long_window_days")
        try:
            date(2024, self.double11_month, self.double11_day)  # a leap year admits 29 February
        except ValueError as exc:
            raise ValueError(
                f"double11_month/day {self.double11_month}/{self.double11_day} is no date"
            ) from exc
        return self

    @property
    def zone(self) -> ZoneInfo:
        """The time zone object (ZoneInfo caches instances, so this is cheap)."""
        return ZoneInfo(self.timezone)


DEFAULT_RULES: Final = LoyaltyRules()


def local_date(ts: datetime, rules: LoyaltyRules = DEFAULT_RULES) -> date:
    """The calendar date of an aware timestamp in the rules' time zone (2026-11-10T16:00Z → 2026-11-11)."""
    if ts.tzinfo is None:
        raise ValueError(f"naive timestamp {ts.isoformat()}: cannot place it on a local day")
    return ts.astimezone(rules.zone).date()


def is_double11(ts: datetime, rules: LoyaltyRules = DEFAULT_RULES) -> bool:
    """Whether `ts` falls on the bonus day (11 November) in local time."""
    day = local_date(ts, rules)
    return (day.month, day.day) == (rules.double11_month, rules.double11_day)


# ---- tiers --------------------------------------------------------------------------------------------------


class Tier(StrEnum):
    """Member tiers, lowest first (DOMAIN.md "Member tiers")."""

    BRONZE = "bronze"
    SILVER = "silver"
    GOLD = "gold"
    PLATINUM = "platinum"


class SpendFact(NamedTuple):
    """Money that counts toward a member's spend: +total of a sale, −refund of a return.

    `sale_ts` places it in the windows (a return counts on the date of the sale it returns); `effective_ts`
    is when it happened, so a tier "as of" an earlier moment ignores returns made after it.
    """

    sale_ts: datetime
    amount_cny: Decimal
    effective_ts: datetime


class TierStatus(BaseModel):
    """A member's tier as of a local date, with the spend behind it (what `GET /api/members/{id}` shows)."""

    model_config = ConfigDict(frozen=True)

    tier: Tier
    spend_30d_cny: Decimal
    spend_365d_cny: Decimal
    as_of_date: date


def window_first_day(as_of_day: date, days: int) -> date:
    """First local date of the trailing window of `days` days that ends with (and includes) `as_of_day`."""
    return as_of_day - timedelta(days=days - 1)


def sale_spend_facts(sale: SaleCompleted, returns: Iterable[SaleReturned] = ()) -> list[SpendFact]:
    """The spend facts of one sale and its returns (none for an anonymous sale)."""
    if sale.member_id is None:
        return []
    sale_ts = parse_rfc3339(sale.ts)
    facts = [SpendFact(sale_ts, sale.total, sale_ts)]
    for ret in returns:
        if ret.original_transaction_id != sale.transaction_id:
            raise ReturnMismatchError(
                f"return {ret.transaction_id} is of sale {ret.original_transaction_id}, not {sale.transaction_id}"
            )
        facts.append(SpendFact(sale_ts, -ret.refund_total, parse_rfc3339(ret.ts)))
    return facts


def spend_windows(
    facts: Iterable[SpendFact], as_of: datetime, rules: LoyaltyRules = DEFAULT_RULES
) -> tuple[Decimal, Decimal]:
    """Net spend over the short and the long trailing window as of `as_of` (facts after it are ignored).

    Windows are whole local days: the last `short_window_days` dates up to and including the local date
    of `as_of`. SQL equivalent: ``SUM(amount) WHERE local_date BETWEEN first_day AND as_of_day AND
    effective_ts <= as_of``.
    """
    as_of_day = local_date(as_of, rules)
    short_first = window_first_day(as_of_day, rules.short_window_days)
    long_first = window_first_day(as_of_day, rules.long_window_days)
    short = long = ZERO_CNY
    for fact in facts:
        if fact.effective_ts > as_of or fact.sale_ts > as_of:
            continue
        day = local_date(fact.sale_ts, rules)
        if long_first <= day <= as_of_day:
            long += fact.amount_cny
            if short_first <= day:
                short += fact.amount_cny
    return short, long


def tier_for_spend(
    spend_30d_cny: Decimal, spend_365d_cny: Decimal, rules: LoyaltyRules = DEFAULT_RULES
) -> Tier:
    """The tier for the two window sums (the storage layer may compute them in SQL and call only this)."""
    if spend_365d_cny > rules.platinum_over_spend_365d_cny:
        return Tier.PLATINUM
    if spend_30d_cny >= rules.gold_min_spend_30d_cny:
        return Tier.GOLD
    if spend_30d_cny >= rules.silver_min_spend_30d_cny:
        return Tier.SILVER
    return Tier.BRONZE


def compute_tier(
    facts: Iterable[SpendFact], as_of: datetime, rules: LoyaltyRules = DEFAULT_RULES
) -> TierStatus:
    """Tier as of `as_of` from the member's spend facts; a sum, so the order of the facts never matters."""
    short, long = spend_windows(facts, as_of, rules)
    return TierStatus(
        tier=tier_for_spend(short, long, rules),
        spend_30d_cny=short,
        spend_365d_cny=long,
        as_of_date=local_date(as_of, rules),
    )


# ---- the ledger ---------------------------------------------------------------------------------------------


class LedgerCause(StrEnum):
    """Why the points changed; with `ref` the idempotency key of a ledger entry."""

    PURCHASE = "purchase"  # ref = sale transaction id
    PLATINUM_BIRTHDAY = "platinum_birthday"  # ref = sale transaction id; the extra of the multiplier
    DOUBLE11 = "double11"  # ref = sale transaction id
    RETURN = "return"  # ref = return transaction id; sale_id = the returned sale
    SIGNUP = "signup"  # ref = campaign id
    CHECKIN = "checkin"  # ref = local date, ISO (2026-11-11)
    REDEEM = "redeem"  # ref = redemption id (the points mall's order id)
    DEBT_RECOVERY = "debt_recovery"  # ref = "{cause}:{ref}" of the earning that paid the debt


EARN_CAUSES: Final = frozenset({LedgerCause.PURCHASE, LedgerCause.PLATINUM_BIRTHDAY, LedgerCause.DOUBLE11})
"""The causes a sale earns under; a return reverses entries of these causes."""

LedgerKey = tuple[LedgerCause, str]
"""(cause, ref): unique per member — UNIQUE(member_id, cause, ref) in the table."""

_REF_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
Ref = Annotated[str, Field(pattern=_REF_PATTERN)]


class LedgerEntry(BaseModel):
    """One change of a member's points. `delta` moves the spendable balance, `debt_delta` the points owed.

    The balance is the sum of `delta`, the debt the sum of `debt_delta`; a reversal that reaches past the
    balance records the rest in `debt_delta`. `detail` explains the number (no personal data).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    member_id: str = Field(min_length=1)
    cause: LedgerCause
    ref: Ref
    delta: int
    debt_delta: int = 0
    sale_id: str | None = None
    """The sale a purchase, bonus or return entry is about (its transaction id), else None."""
    ts: AwareDatetime
    detail: str = ""

    @property
    def key(self) -> LedgerKey:
        """The idempotency key."""
        return (self.cause, self.ref)


class MemberState(BaseModel):
    """What the planners need to know about a member: balances and the (minimised) birthday.

    Only the birth *month* is kept: the rules need no more, and member data is personal data (DOMAIN.md).
    Invariant: points are owed only while the balance is zero (earnings pay the debt first).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    member_id: str = Field(min_length=1)
    balance: int = Field(default=0, ge=0)
    debt: int = Field(default=0, ge=0)
    birth_month: int | None = Field(default=None, ge=1, le=12)

    @model_validator(mode="after")
    def _debt_only_at_zero(self) -> Self:
        if self.debt and self.balance:
            raise ValueError(
                f"member {self.member_id}: owes {self.debt} points with a balance of {self.balance}"
            )
        return self


def apply_entries(state: MemberState, entries: Iterable[LedgerEntry]) -> MemberState:
    """Fold entries into the state (the storage layer's cached balance); refuses a negative result."""
    balance, debt = state.balance, state.debt
    for entry in entries:
        if entry.member_id != state.member_id:
            raise MemberMismatchError(f"entry {entry.key} is for {entry.member_id}, not {state.member_id}")
        balance += entry.delta
        debt += entry.debt_delta
        if balance < 0 or debt < 0:
            raise LoyaltyError(
                f"member {state.member_id}: entry {entry.key} leaves balance {balance}, debt {debt}"
            )
    return state.model_copy(update={"balance": balance, "debt": debt})


_REF_TEXT: Final = re.compile(_REF_PATTERN)


def _check_ref(ref: str, what: str) -> None:
    if not _REF_TEXT.fullmatch(ref):
        raise LoyaltyError(
            f"{what} {ref!r}: 1–128 chars of A-Z a-z 0-9 . _ : -, starting with a letter or digit"
        )


def _check_member(member: MemberState, member_id: str | None, what: str) -> None:
    if member_id != member.member_id:
        raise MemberMismatchError(f"{what} is for member {member_id}, planned against {member.member_id}")


def _earn(
    member: MemberState,
    earned: list[LedgerEntry],
    at: datetime,
    applied: Collection[LedgerKey],
) -> list[LedgerEntry]:
    """Earnings, then the debt they pay off first; entries whose key is already applied are left out."""
    fresh = [entry for entry in earned if entry.key not in applied]
    total = sum(entry.delta for entry in fresh)
    if member.debt and total > 0 and fresh:
        pay = min(member.debt, total)
        first = fresh[0]
        fresh.append(
            LedgerEntry(
                member_id=member.member_id,
                cause=LedgerCause.DEBT_RECOVERY,
                ref=f"{first.cause.value}:{first.ref}",
                delta=-pay,
                debt_delta=-pay,
                sale_id=first.sale_id,
                ts=at,
                detail=f"{pay} of {member.debt} points owed from earlier returns",
            )
        )
    return [entry for entry in fresh if entry.key not in applied]


def purchase_points(total_cny: Decimal, rules: LoyaltyRules = DEFAULT_RULES) -> int:
    """floor(points_per_cny × total): 100.00 CNY → 120, 99.99 CNY → 119 (119.988)."""
    return int((total_cny * rules.points_per_cny).to_integral_value(rounding=ROUND_FLOOR))


def plan_sale(
    rules: LoyaltyRules,
    member: MemberState,
    sale: SaleCompleted,
    *,
    tier_before: Tier,
    applied: Collection[LedgerKey],
) -> list[LedgerEntry]:
    """Ledger entries a completed member sale earns; [] if the sale was applied already.

    `tier_before` is the member's tier just before the sale (`compute_tier` over the other sales, as of
    the sale's ts). `applied` holds the member's keys already in the ledger — at least those whose ref is
    this sale's transaction id. Always returns the `purchase` entry first (even for 0 points: it marks the
    sale as applied).
    """
    _check_member(member, sale.member_id, f"sale {sale.transaction_id}")
    if (LedgerCause.PURCHASE, sale.transaction_id) in applied:
        return []
    at = parse_rfc3339(sale.ts)
    day = local_date(at, rules)
    base = purchase_points(sale.total, rules)

    def entry(cause: LedgerCause, delta: int, detail: str) -> LedgerEntry:
        return LedgerEntry(
            member_id=member.member_id,
            cause=cause,
            ref=sale.transaction_id,
            delta=delta,
            sale_id=sale.transaction_id,
            ts=at,
            detail=detail,
        )

    earned = [entry(LedgerCause.PURCHASE, base, f"{rules.points_per_cny} points/CNY × {sale.total} CNY")]
    if (
        tier_before is Tier.PLATINUM
        and member.birth_month == day.month
        and rules.platinum_birthday_multiplier > 1
        and base > 0
    ):
        extra = base * (rules.platinum_birthday_multiplier - 1)
        earned.append(
            entry(
                LedgerCause.PLATINUM_BIRTHDAY,
                extra,
                f"Platinum birthday month: purchase points × {rules.platinum_birthday_multiplier}",
            )
        )
    if is_double11(at, rules) and sale.total >= rules.double11_min_total_cny and rules.double11_bonus_points:
        earned.append(
            entry(
                LedgerCause.DOUBLE11,
                rules.double11_bonus_points,
                f"Double 11 ({day.isoformat()}): purchase ≥ {rules.double11_min_total_cny} CNY",
            )
        )
    return _earn(member, earned, at, applied)


# ---- returns ------------------------------------------------------------------------------------------------


def _counted(items: Iterable[SaleItem]) -> Counter[tuple[str, Decimal]]:
    counts: Counter[tuple[str, Decimal]] = Counter()
    for item in items:
        if item.qty is not None:
            counts[(item.gtin, item.unit_price)] += item.qty
    return counts


def _weighed(items: Iterable[SaleItem]) -> Counter[tuple[str, Decimal, Decimal]]:
    lines: Counter[tuple[str, Decimal, Decimal]] = Counter()
    for item in items:
        if item.weight_kg is not None:
            lines[(item.gtin, item.unit_price, item.weight_kg)] += 1
    return lines


def check_return(sale: SaleCompleted, prior_returns: Sequence[SaleReturned], ret: SaleReturned) -> None:
    """Raise ReturnMismatchError unless `ret` fits what `sale` sold minus what `prior_returns` took back.

    Counted goods: per (gtin, unit_price), the returned quantities never exceed the sold ones (partial
    returns allowed). Weighed goods are one labelled package each: a returned weighed line must equal a
    sold one (gtin, unit price, weight), each at most once — a part-package return would not add up to the
    line amount after fen rounding. Together these bound the refunds by the sale total.
    """
    if ret.original_transaction_id != sale.transaction_id:
        raise ReturnMismatchError(
            f"return {ret.transaction_id} references sale {ret.original_transaction_id}, not {sale.transaction_id}"
        )
    earlier = [r for r in prior_returns if r.transaction_id != ret.transaction_id]
    for prior in earlier:
        if prior.original_transaction_id != sale.transaction_id:
            raise ReturnMismatchError(
                f"prior return {prior.transaction_id} is not of sale {sale.transaction_id}"
            )
    sold_counted = _counted(sale.items)
    sold_weighed = _weighed(sale.items)
    taken_counted = _counted(item for r in [*earlier, ret] for item in r.items)
    taken_weighed = _weighed(item for r in [*earlier, ret] for item in r.items)
    for (gtin, price), qty in sorted(taken_counted.items()):
        if qty > sold_counted[(gtin, price)]:
            raise ReturnMismatchError(
                f"return {ret.transaction_id}: {qty} × {gtin} at {price} CNY returned in total,"
                f" sale {sale.transaction_id} sold {sold_counted[(gtin, price)]} at that price"
            )
    for (gtin, price, weight), times in sorted(taken_weighed.items()):
        if times > sold_weighed[(gtin, price, weight)]:
            raise ReturnMismatchError(
                f"return {ret.transaction_id}: weighed line {gtin} {weight} kg at {price} CNY/kg"
                f" is not (or no longer) in sale {sale.transaction_id}; weighed lines return whole"
            )


def _fen(amount_cny: Decimal) -> int:
    return int(amount_cny.scaleb(2).to_integral_value())


def _kept(earned: int, kept_cny: Decimal, total_cny: Decimal) -> int:
    """Points of a cause the member keeps while `kept_cny` of `total_cny` is kept: rounded down.

    Integer fen arithmetic, so the floor is exact (a 28-digit Decimal quotient could round 1079.999… up).
    """
    if total_cny <= 0 or earned <= 0:
        return 0
    return (earned * _fen(kept_cny)) // _fen(total_cny)


def plan_return(
    rules: LoyaltyRules,
    member: MemberState,
    sale: SaleCompleted,
    ret: SaleReturned,
    *,
    sale_entries: Iterable[LedgerEntry],
    prior_returns: Sequence[SaleReturned],
    applied: Collection[LedgerKey],
) -> list[LedgerEntry]:
    """The `return` entry that reverses what `ret` takes back of `sale`'s points; [] if already applied.

    `sale_entries`: this member's ledger entries with ref = the sale's transaction id (entries of other
    causes or sales are ignored). `prior_returns`: the sale's earlier returns (`ret` itself, if present,
    is skipped). Raises ReturnMismatchError if the return does not fit the sale.
    """
    _check_member(member, sale.member_id, f"sale {sale.transaction_id}")
    if (LedgerCause.RETURN, ret.transaction_id) in applied:
        return []
    check_return(sale, prior_returns, ret)
    earlier = [r for r in prior_returns if r.transaction_id != ret.transaction_id]
    earned: dict[LedgerCause, int] = dict.fromkeys(EARN_CAUSES, 0)
    for entry in sale_entries:
        if (
            entry.cause in EARN_CAUSES
            and entry.ref == sale.transaction_id
            and entry.member_id == member.member_id
        ):
            earned[entry.cause] += entry.delta
    total = sale.total
    kept_before = total - sum((r.refund_total for r in earlier), ZERO_CNY)
    kept_after = kept_before - ret.refund_total

    def owed_for(cause: LedgerCause) -> int:
        if cause is LedgerCause.DOUBLE11:
            keeps = [
                earned[cause] if kept >= rules.double11_min_total_cny else 0
                for kept in (kept_before, kept_after)
            ]
            return keeps[0] - keeps[1]
        return _kept(earned[cause], kept_before, total) - _kept(earned[cause], kept_after, total)

    parts = {cause: owed_for(cause) for cause in sorted(EARN_CAUSES)}
    owed = sum(parts.values())
    taken = min(owed, member.balance)
    breakdown = ", ".join(f"{cause.value} {points}" for cause, points in parts.items() if points)
    detail = f"refund {ret.refund_total} of {total} CNY: reverses {owed} points ({breakdown or 'none'})"
    if owed > taken:
        detail += f"; {owed - taken} owed (already redeemed)"
    return [
        LedgerEntry(
            member_id=member.member_id,
            cause=LedgerCause.RETURN,
            ref=ret.transaction_id,
            delta=-taken,
            debt_delta=owed - taken,
            sale_id=sale.transaction_id,
            ts=parse_rfc3339(ret.ts),
            detail=detail,
        )
    ]


# ---- member actions from the hub API ------------------------------------------------------------------------


def plan_signup(
    rules: LoyaltyRules,
    member: MemberState,
    campaign_id: str,
    at: datetime,
    *,
    applied: Collection[LedgerKey],
) -> list[LedgerEntry]:
    """Sign-up points for a campaign, once per member and campaign; [] if already signed up."""
    _check_ref(campaign_id, "campaign id")
    if (LedgerCause.SIGNUP, campaign_id) in applied:
        return []
    earned = LedgerEntry(
        member_id=member.member_id,
        cause=LedgerCause.SIGNUP,
        ref=campaign_id,
        delta=rules.signup_points,
        ts=at,
        detail=f"campaign sign-up {campaign_id}",
    )
    return _earn(member, [earned], at, applied)


def checkin_ref(at: datetime, rules: LoyaltyRules = DEFAULT_RULES) -> str:
    """The check-in key of a moment: its local date (one check-in per local day)."""
    return local_date(at, rules).isoformat()


def plan_checkin(
    rules: LoyaltyRules,
    member: MemberState,
    at: datetime,
    *,
    applied: Collection[LedgerKey],
) -> list[LedgerEntry]:
    """The daily check-in point; [] if the member already checked in on this local day."""
    ref = checkin_ref(at, rules)
    if (LedgerCause.CHECKIN, ref) in applied:
        return []
    earned = LedgerEntry(
        member_id=member.member_id,
        cause=LedgerCause.CHECKIN,
        ref=ref,
        delta=rules.checkin_points,
        ts=at,
        detail=f"daily check-in {ref} ({rules.timezone})",
    )
    return _earn(member, [earned], at, applied)


def plan_redeem(
    member: MemberState,
    points: int,
    redemption_id: str,
    at: datetime,
    *,
    applied: Collection[LedgerKey],
) -> list[LedgerEntry]:
    """Spend points in the points mall; [] for a retried redemption id; InsufficientPointsError if short."""
    if points < 1:
        raise LoyaltyError(f"member {member.member_id}: redeem a positive number of points, not {points}")
    _check_ref(redemption_id, "redemption id")
    if (LedgerCause.REDEEM, redemption_id) in applied:
        return []
    if points > member.balance:
        raise InsufficientPointsError(member.member_id, member.balance, points)
    return [
        LedgerEntry(
            member_id=member.member_id,
            cause=LedgerCause.REDEEM,
            ref=redemption_id,
            delta=-points,
            ts=at,
            detail=f"points mall redemption {redemption_id}",
        )
    ]
