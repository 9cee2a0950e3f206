"""Sales, returns, members and the points ledger in the hub database (issue #4 parts 3–5).

Two halves, both running inside one `hub.db.Tx` (this module never opens a transaction itself):

- **Effects** for `sale.completed` and `sale.returned`, registered in `hub.db.EFFECTS`, so a sale is stored,
  the member's spend and tier updated and the points written in the SAME transaction that marks the event
  applied. The event id constraint makes each event's effect at-most-once; the sale and return tables are
  keyed by transaction id, so the same sale carried by a second event (a new seq after a gateway restore)
  changes nothing either.
- **Member actions and reads** for the HQ API (`hub.sales_api`): register, sign-up, check-in, redeem, the
  ledger, sales queries and daily totals.

The rules are `hub.loyalty`'s pure planners; this module reads their inputs, calls one planner per fact and
writes what it returns (docs/loyalty.md, "Wiring the storage layer"). Portable SQL only (docs/hub-storage.md):

- Money is integer fen (`*_fen BIGINT`): SQLite has no exact decimal column, integer sums are exact on both
  engines. Timestamps are RFC 3339 UTC text normalised by `contract.rfc3339` (fixed width, so bytewise order
  is time order), plus the loyalty-time-zone `local_date` (``YYYY-MM-DD`` text) the tier windows and daily
  totals group by. Hub-measured times are epoch seconds.
- **Locks without a dialect branch.** A member is locked with ``UPDATE members SET balance = balance …
  RETURNING …``: on PostgreSQL an UPDATE takes the row lock and, under READ COMMITTED, waits for a concurrent
  writer and re-reads the committed row (PostgreSQL docs, "Transaction Isolation", 13.2.1); on SQLite the
  writer lock (``BEGIN IMMEDIATE``) already serialises every write transaction. A sale and a return of it
  meet on one `sale_refs` row, locked by an ``INSERT … ON CONFLICT DO UPDATE`` upsert (which waits for a
  concurrent inserter of the same key and locks an existing row), so a return held for a sale that is being
  inserted by another worker at the same moment is always found by one of the two transactions.
- **Lock order**: the store row (taken by `hub.db` before any effect), then `sale_refs`, then the members;
  within a run of sales each kind is locked in one statement, in sorted order. Two PostgreSQL transactions
  of different stores that lock the same two members in opposite orders (across several runs of one batch,
  or a sale run and a return) can still deadlock; PostgreSQL then aborts one (SQLSTATE 40P01), the worker stops on the
  database error, and the broker redelivers its unacknowledged batch (apply is idempotent). A retry of the
  transaction in `hub.db` on 40P01 would turn that into a short wait.
- **Per run, not per event.** PostgreSQL pays a round trip per statement, so a run of sales is written with
  a handful of statements (``executemany``, which psycopg pipelines, and ``IN`` lists) plus one tier
  query per member sale (about 2× faster on PostgreSQL and 4–5× on SQLite than one sale at a time for
  50-event batches; docs/benchmarks.md, "Sales at the hub").

Decisions (docs/loyalty.md has the full list):

- A sale whose transaction id is already recorded from another event is a duplicate when its payload is
  identical (nothing happens) and is quarantined when it differs (the first one stands).
- A return whose original sale is unknown is **held** (`held_returns`, with the reason) and applied when the
  sale arrives: a cross-store return can overtake its sale when the selling store was offline. It never
  blocks its store's event order. `GET /api/returns/held` lists what waits.
- A return that does not fit its sale (`loyalty.check_return`) is quarantined with the reason; the rest of
  the batch applies.
- An unknown member on a sale is created (`source` 'sale') when `members.auto_create` is on; otherwise the
  sale is stored with its member id and earns nothing. Tiers are computed from the sales, so that spend
  counts once the member registers.

Member ids never appear in log lines (DOMAIN.md: member data is personal data); transaction ids do.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import bindparam, text
from sqlalchemy.sql.elements import TextClause

from cloud_bridge.contract import (
    EventType,
    SaleCompleted,
    SaleItem,
    SaleReturned,
    events_topic,
    parse_rfc3339,
    rfc3339,
)
from hub.config import HubConfig
from hub.loyalty import (
    DEFAULT_RULES,
    EARN_CAUSES,
    LedgerCause,
    LedgerEntry,
    LedgerKey,
    LoyaltyError,
    LoyaltyRules,
    MemberState,
    TierStatus,
    apply_entries,
    check_return,
    checkin_ref,
    local_date,
    plan_checkin,
    plan_redeem,
    plan_return,
    plan_sale,
    plan_signup,
    tier_for_spend,
    window_first_day,
)
from hub.models import (
    DailySales,
    HeldReturn,
    LedgerItem,
    MemberView,
    PointsChange,
    ReturnRecord,
    SaleDetail,
    SaleLine,
    SaleRecord,
)

if TYPE_CHECKING:
    from hub.db import Applied, Tx

log = logging.getLogger(__name__)

SALES_LIMIT_MAX: Final = 1000
LEDGER_LIMIT_MAX: Final = 10_000
DAILY_RANGE_MAX_DAYS: Final = 366

# --- settings ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SalesSettings:
    """What the sale effects need from the hub config: the points rules and whether sales create members."""

    rules: LoyaltyRules = DEFAULT_RULES
    auto_create_members: bool = True

    @classmethod
    def from_config(cls, config: HubConfig) -> SalesSettings:
        """The `loyalty` and `members` sections of a validated hub config."""
        return cls(rules=config.loyalty, auto_create_members=config.members.auto_create)


_settings = SalesSettings()


def configure(settings: SalesSettings) -> SalesSettings:
    """Set the rules the sale effects of this process apply; returns the previous settings.

    Process-wide because `hub.db.EFFECTS` is: one process is one hub worker with one config, and the
    effects run on its database threads without a config argument. The service sets it at start
    (`hub.api.create_app`); tests restore the previous value.
    """
    global _settings
    previous, _settings = _settings, settings
    return previous


def current_settings() -> SalesSettings:
    """The settings the sale effects use now."""
    return _settings


# --- money and time ---------------------------------------------------------------------------------------


def to_fen(amount_cny: Decimal) -> int:
    """CNY (two places, as the contract guarantees) → integer fen, exactly."""
    fen = amount_cny.scaleb(2)
    if fen != fen.to_integral_value():
        raise ValueError(f"{amount_cny} CNY is not a whole number of fen")
    return int(fen)


def fen_cny(fen: int) -> Decimal:
    """Integer fen → CNY with two places."""
    return Decimal(fen).scaleb(-2).quantize(Decimal("0.01"))


def fen_text(fen: int) -> str:
    """Integer fen → the API's money text, e.g. 4811 → "48.11", -5 → "-0.05"."""
    sign = "-" if fen < 0 else ""
    whole, cents = divmod(abs(fen), 100)
    return f"{sign}{whole}.{cents:02d}"


def _weight_g(weight_kg: Decimal) -> int:
    grams = weight_kg.scaleb(3)
    if grams != grams.to_integral_value():
        raise ValueError(f"{weight_kg} kg is not a whole number of grams")
    return int(grams)


def utc_text(ts: str) -> str:
    """An RFC 3339 timestamp with any offset → the hub's fixed-width UTC form (bytewise order = time order)."""
    return rfc3339(parse_rfc3339(ts))


def _at(now: float) -> datetime:
    return datetime.fromtimestamp(now, UTC)


def local_day(now: float, rules: LoyaltyRules = DEFAULT_RULES) -> date:
    """The local date (loyalty time zone) of an epoch-seconds moment."""
    return local_date(_at(now), rules)


def _int(value: Any) -> int:
    """PostgreSQL's SUM over BIGINT is NUMERIC (Decimal); SQLite's is int."""
    return int(value or 0)


# --- tiers --------------------------------------------------------------------------------------------------

_SPEND: Final = """
SELECT COALESCE(SUM(CASE WHEN f.local_date >= :first_short THEN f.fen ELSE 0 END), 0),
       COALESCE(SUM(f.fen), 0)
FROM (
    SELECT s.local_date AS local_date, s.total_fen AS fen FROM sales s
    WHERE s.member_id = :member_id AND s.local_date BETWEEN :first_long AND :day
      AND s.ts <= :as_of AND s.transaction_id <> :exclude
    UNION ALL
    SELECT s.local_date AS local_date, -r.refund_fen AS fen
    FROM sale_returns r JOIN sales s ON s.transaction_id = r.original_transaction_id
    WHERE s.member_id = :member_id AND s.local_date BETWEEN :first_long AND :day
      AND s.ts <= :as_of AND r.ts <= :as_of AND s.transaction_id <> :exclude
) f
"""
"""Net spend of the short and the long window as of `:as_of` (`loyalty.spend_windows` in SQL): a sale counts
on its own local date, a return subtracts its refund on the date of the sale it returns, and facts after
`:as_of` are ignored."""


def _spend_fen(
    tx: Tx, rules: LoyaltyRules, member_id: str, as_of: datetime, exclude: str = ""
) -> tuple[int, int]:
    day = local_date(as_of, rules)
    row = tx.run(
        _SPEND,
        {
            "member_id": member_id,
            "first_short": window_first_day(day, rules.short_window_days).isoformat(),
            "first_long": window_first_day(day, rules.long_window_days).isoformat(),
            "day": day.isoformat(),
            "as_of": rfc3339(as_of),
            "exclude": exclude,  # '' matches no transaction id (ids are non-empty); NULL would match none either way
        },
    ).one()
    return _int(row[0]), _int(row[1])


def tier_as_of(tx: Tx, rules: LoyaltyRules, member_id: str, as_of: datetime, exclude: str = "") -> TierStatus:
    """The member's tier as of `as_of` from the stored sales and returns (`exclude`: leave one sale out)."""
    short_fen, long_fen = _spend_fen(tx, rules, member_id, as_of, exclude)
    short, long = fen_cny(short_fen), fen_cny(long_fen)
    return TierStatus(
        tier=tier_for_spend(short, long, rules),
        spend_30d_cny=short,
        spend_365d_cny=long,
        as_of_date=local_date(as_of, rules),
    )


@dataclass(frozen=True, slots=True)
class _TierUpdate:
    """The tier and spends to cache on the member row, as of `as_of`."""

    status: TierStatus
    as_of: datetime


def _tier_after(tx: Tx, rules: LoyaltyRules, member: _Member, fact_at: datetime) -> _TierUpdate:
    """The tier as of the newest fact seen for the member (a late fact never moves the cache back)."""
    as_of = fact_at
    if member.tier_ts is not None and member.tier_ts > rfc3339(fact_at):
        as_of = parse_rfc3339(member.tier_ts)
    return _TierUpdate(tier_as_of(tx, rules, member.state.member_id, as_of), as_of)


# --- members and the ledger ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Member:
    state: MemberState
    tier_ts: str | None
    registered_at: float | None


_LOCK_MEMBER: Final = """
UPDATE members SET balance = balance WHERE member_id = :member_id
RETURNING balance, debt, birth_month, tier_ts, registered_at
"""


def _lock_member(tx: Tx, member_id: str) -> _Member | None:
    """The member's row, locked until the transaction ends (see the module doc); None if unknown."""
    row = tx.run(_LOCK_MEMBER, {"member_id": member_id}).one_or_none()
    if row is None:
        return None
    state = MemberState(member_id=member_id, balance=int(row[0]), debt=int(row[1]), birth_month=row[2])
    return _Member(state=state, tier_ts=row[3], registered_at=row[4])


def _create_member(
    tx: Tx, member_id: str, *, source: str, now: float, birth_month: int | None = None, registered: bool
) -> bool:
    """Insert a member if unknown; True if this call created it (a concurrent creator is waited for)."""
    return (
        tx.run(
            "INSERT INTO members (member_id, birth_month, source, created_at, registered_at)"
            " VALUES (:member_id, :birth_month, :source, :now, :registered_at)"
            " ON CONFLICT (member_id) DO NOTHING",
            {
                "member_id": member_id,
                "birth_month": birth_month,
                "source": source,
                "now": now,
                "registered_at": now if registered else None,
            },
        ).rowcount
        == 1
    )


_APPLIED_KEYS: Final = """
SELECT cause, ref FROM points_ledger WHERE member_id = :member_id AND (ref = :ref OR ref = :recovery_ref)
"""


def _applied_keys(tx: Tx, member_id: str, cause: LedgerCause, ref: str) -> set[LedgerKey]:
    """The member's ledger keys a fact (cause, ref) may already have written: its own entries and the debt
    recovery its earning paid ('{cause}:{ref}')."""
    rows = tx.run(_APPLIED_KEYS, {"member_id": member_id, "ref": ref, "recovery_ref": f"{cause.value}:{ref}"})
    return {(LedgerCause(row[0]), str(row[1])) for row in rows}


_INSERT_ENTRY: Final = """
INSERT INTO points_ledger (member_id, cause, ref, delta, debt_delta, sale_id, ts, detail, recorded_at)
VALUES (:member_id, :cause, :ref, :delta, :debt_delta, :sale_id, :ts, :detail, :recorded_at)
"""


_UPDATE_MEMBER: Final = "UPDATE members SET balance = :balance, debt = :debt WHERE member_id = :member_id"
_UPDATE_MEMBER_AND_TIER: Final = """
UPDATE members SET balance = :balance, debt = :debt, tier = :tier, tier_ts = :tier_ts, spend_30d_fen = :short,
                   spend_365d_fen = :long
WHERE member_id = :member_id
"""


def _entry_params(entry: LedgerEntry, now: float) -> dict[str, Any]:
    return {
        "member_id": entry.member_id,
        "cause": entry.cause.value,
        "ref": entry.ref,
        "delta": entry.delta,
        "debt_delta": entry.debt_delta,
        "sale_id": entry.sale_id,
        "ts": rfc3339(entry.ts),
        "detail": entry.detail,
        "recorded_at": now,
    }


def _member_params(state: MemberState, tier: _TierUpdate) -> dict[str, Any]:
    return {
        "member_id": state.member_id,
        "balance": state.balance,
        "debt": state.debt,
        "tier": tier.status.tier.value,
        "tier_ts": rfc3339(tier.as_of),
        "short": to_fen(tier.status.spend_30d_cny),
        "long": to_fen(tier.status.spend_365d_cny),
    }


def _write_entries(
    tx: Tx, member: _Member, entries: Sequence[LedgerEntry], now: float, tier: _TierUpdate | None = None
) -> MemberState:
    """Insert planned entries (a plain INSERT: a duplicate key is a wiring bug and rolls back), fold them
    into the member's balance and debt, and cache `tier` — one UPDATE of the member row; the CHECK
    constraints are the backstop."""
    after = apply_entries(member.state, entries) if entries else member.state
    if tier is not None:
        tx.run(_UPDATE_MEMBER_AND_TIER, _member_params(after, tier))
    elif entries:
        tx.run(_UPDATE_MEMBER, {"member_id": after.member_id, "balance": after.balance, "debt": after.debt})
    if entries:
        tx.run_many(_INSERT_ENTRY, [_entry_params(entry, now) for entry in entries])
    return after


_LEDGER_COLUMNS: Final = "id, member_id, cause, ref, delta, debt_delta, sale_id, ts, detail"


def _ledger_item(row: Any) -> LedgerItem:
    return LedgerItem(
        id=int(row[0]),
        member_id=row[1],
        cause=row[2],
        ref=row[3],
        delta=int(row[4]),
        debt_delta=int(row[5]),
        sale_id=row[6],
        ts=row[7],
        detail=row[8],
    )


def _entries_of(tx: Tx, member_id: str, cause: LedgerCause, ref: str) -> list[LedgerItem]:
    """The rows one fact wrote: its primary entry and the debt it paid (`debt_recovery` '{cause}:{ref}')."""
    rows = tx.run(
        f"SELECT {_LEDGER_COLUMNS} FROM points_ledger WHERE member_id = :member_id"  # noqa: S608 - constant
        " AND ((cause = :cause AND ref = :ref) OR (cause = :recovery AND ref = :recovery_ref)) ORDER BY id",
        {
            "member_id": member_id,
            "cause": cause.value,
            "ref": ref,
            "recovery": LedgerCause.DEBT_RECOVERY.value,
            "recovery_ref": f"{cause.value}:{ref}",
        },
    ).all()
    return [_ledger_item(row) for row in rows]


def _sale_entries(tx: Tx, member_id: str, sale_id: str) -> list[LedgerEntry]:
    rows = tx.run(
        f"SELECT {_LEDGER_COLUMNS} FROM points_ledger WHERE member_id = :member_id AND ref = :ref",  # noqa: S608
        {"member_id": member_id, "ref": sale_id},
    ).all()
    return [
        LedgerEntry(
            member_id=row[1],
            cause=LedgerCause(row[2]),
            ref=row[3],
            delta=int(row[4]),
            debt_delta=int(row[5]),
            sale_id=row[6],
            ts=parse_rfc3339(row[7]),
            detail=row[8],
        )
        for row in rows
        if LedgerCause(row[2]) in EARN_CAUSES
    ]


# --- quarantine and the rendezvous of a sale and its returns -------------------------------------------------


def _quarantine_event(
    tx: Tx, store_id: str, *, event_id: str, event_type: str, data_json: str, reason: str
) -> None:
    """Keep an applied event whose effect was refused, with the reason (the same table `hub.parse` refusals go
    to; the event itself stays applied, so its store's order moves on)."""
    from hub.db import quarantine_row  # noqa: PLC0415 - hub.db imports this module to fill EFFECTS

    payload = f'{{"id":{json.dumps(event_id)},"type":{json.dumps(event_type)},"data":{data_json}}}'
    # The one quarantine writer: payload capped at QUARANTINE_KEEP_BYTES (size recorded in full), NUL-safe for
    # PostgreSQL — this path used to store the whole payload unbounded.
    quarantine_row(tx, events_topic(store_id), reason, payload.encode(), time.time())
    log.warning("store %s: event %s quarantined: %s", store_id, event_id, reason)


_UPSERT_REF: Final = """
INSERT INTO sale_refs (transaction_id) VALUES (:id)
ON CONFLICT (transaction_id) DO UPDATE SET transaction_id = excluded.transaction_id
"""


def _lock_ref(tx: Tx, transaction_id: str) -> None:
    """Serialise a sale with the returns that reference it (see the module doc): the upsert waits for a
    concurrent inserter of the same key and locks an existing row, on PostgreSQL; SQLite serialises anyway.
    `sale_refs.held` counts the returns held for the id, so a sale looks for them only when there are some."""
    tx.run(_UPSERT_REF, {"id": transaction_id})


def _item_rows(kind: str, transaction_id: str, items: Iterable[SaleItem]) -> list[dict[str, Any]]:
    return [
        {
            "kind": kind,
            "transaction_id": transaction_id,
            "line_no": line_no,
            "gtin": item.gtin,
            "qty": item.qty,
            "weight_g": None if item.weight_kg is None else _weight_g(item.weight_kg),
            "unit_price_fen": to_fen(item.unit_price),
            "amount_fen": to_fen(item.amount),
        }
        for line_no, item in enumerate(items, start=1)
    ]


_INSERT_ITEM: Final = """
INSERT INTO sale_items (kind, transaction_id, line_no, gtin, qty, weight_g, unit_price_fen, amount_fen)
VALUES (:kind, :transaction_id, :line_no, :gtin, :qty, :weight_g, :unit_price_fen, :amount_fen)
"""

# --- the effects ------------------------------------------------------------------------------------------

_INSERT_SALE: Final = """
INSERT INTO sales (transaction_id, event_id, store_id, lane, cashier, member_id, total_fen, item_count, ts,
                   local_date, payload, applied_at)
VALUES (:transaction_id, :event_id, :store_id, :lane, :cashier, :member_id, :total_fen, :item_count, :ts,
        :local_date, :payload, :now)
ON CONFLICT (transaction_id) DO NOTHING
"""


@dataclass(frozen=True, slots=True)
class _Incoming:
    """One `sale.completed` of the run being applied."""

    event_id: str
    sale: SaleCompleted
    at: datetime
    payload: str


_INSERT_MEMBER: Final = """
INSERT INTO members (member_id, birth_month, source, created_at, registered_at)
VALUES (:member_id, NULL, 'sale', :now, NULL)
ON CONFLICT (member_id) DO NOTHING
"""
_LOCK_MEMBERS: Final = """
UPDATE members SET balance = balance WHERE member_id IN :ids
RETURNING member_id, balance, debt, birth_month, tier_ts, registered_at
"""


def _lock_members(tx: Tx, member_ids: list[str]) -> dict[str, _Member]:
    """Lock the members' rows (one UPDATE; see `_lock_member`) and read them; unknown ids are absent."""
    return {
        row[0]: _Member(
            state=MemberState(member_id=row[0], balance=int(row[1]), debt=int(row[2]), birth_month=row[3]),
            tier_ts=row[4],
            registered_at=row[5],
        )
        for row in _run_in(tx, _LOCK_MEMBERS, member_ids)
    }


@functools.lru_cache(maxsize=64)
def _expanding(statement: str, name: str) -> TextClause:
    return text(statement).bindparams(bindparam(name, expanding=True))


def _run_in(tx: Tx, statement: str, values: Sequence[str]) -> list[Any]:
    """Run a statement with ``IN :ids`` over `values` (SQLAlchemy's expanding bind parameter, both engines)."""
    return list(tx.conn.execute(_expanding(statement, "ids"), {"ids": list(values)}).all())


def sale_completed_effect(tx: Tx, store_id: str, run: Applied) -> None:
    """`hub.db.Effect` for `sale.completed`: record the run's sales, then their members' points and tiers.

    Per run, not per sale (one round trip per statement is the cost on PostgreSQL): the sale keys are locked
    in one ``executemany`` in sorted order, the lines go in with one, the members are locked with one
    UPDATE, and the ledger rows and member rows are written with one ``executemany`` each. Per member sale
    only the tier window query remains. Sales are planned in seq order, so a member's second sale in the run
    sees the first one's points.
    """
    settings = _settings
    now = time.time()
    incoming: list[_Incoming] = []
    for event, data in run:
        if not isinstance(data, SaleCompleted):
            raise TypeError(f"{event.id}: sale.completed carries {type(data).__name__}")
        incoming.append(_Incoming(event.id, data, parse_rfc3339(data.ts), data.model_dump_json()))
    keys = sorted({i.sale.transaction_id for i in incoming})
    held = _lock_refs(tx, keys)
    # The first event of the run with each id is the candidate; the insert skips ids recorded before. The
    # sale_refs locks serialise every transaction that could insert these ids, so what the insert skipped
    # was committed before, and only then (rare) do we read who recorded it.
    candidates: dict[str, _Incoming] = {}
    for sale in incoming:
        candidates.setdefault(sale.sale.transaction_id, sale)
    rows = [_sale_params(store_id, sale, settings.rules, now) for sale in candidates.values()]
    inserted = tx.run_many(_INSERT_SALE, rows).rowcount
    recorded: dict[str, tuple[str, str]] = {
        key: (sale.event_id, sale.payload) for key, sale in candidates.items()
    }
    if inserted != len(rows):
        recorded.update(
            (row[0], (row[1], row[2]))
            for row in _run_in(
                tx, "SELECT transaction_id, event_id, payload FROM sales WHERE transaction_id IN :ids", keys
            )
        )
    fresh: list[_Incoming] = []
    for sale in incoming:
        first = recorded[sale.sale.transaction_id]
        if first[0] == sale.event_id:
            fresh.append(sale)
        else:
            _duplicate_sale(tx, store_id, sale, first)
    if fresh:
        tx.run_many(
            _INSERT_ITEM,
            [row for sale in fresh for row in _item_rows("sale", sale.sale.transaction_id, sale.sale.items)],
        )
        _earn_for_sales(
            tx, settings, store_id, [sale for sale in fresh if sale.sale.member_id is not None], now
        )
    for transaction_id in held:
        _release_held(tx, settings, transaction_id, now)


def _lock_refs(tx: Tx, keys: list[str]) -> list[str]:
    """Lock the sale ids of a run in `sale_refs` (see `_lock_ref`), in sorted order; the ids with held returns.

    One sale (the live case) is one statement; a run is one ``executemany`` and one read."""
    if len(keys) == 1:
        held = int(tx.run(_UPSERT_REF + " RETURNING held", {"id": keys[0]}).scalar_one())
        return keys if held else []
    tx.run_many(_UPSERT_REF, [{"id": key} for key in keys])
    return sorted(
        row[0]
        for row in _run_in(
            tx, "SELECT transaction_id FROM sale_refs WHERE held > 0 AND transaction_id IN :ids", keys
        )
    )


def _sale_params(store_id: str, incoming: _Incoming, rules: LoyaltyRules, now: float) -> dict[str, Any]:
    sale = incoming.sale
    return {
        "transaction_id": sale.transaction_id,
        "event_id": incoming.event_id,
        "store_id": store_id,
        "lane": sale.lane,
        "cashier": sale.cashier,
        "member_id": sale.member_id,
        "total_fen": to_fen(sale.total),
        "item_count": len(sale.items),
        "ts": rfc3339(incoming.at),
        "local_date": local_date(incoming.at, rules).isoformat(),
        "payload": incoming.payload,
        "now": now,
    }


def _duplicate_sale(tx: Tx, store_id: str, incoming: _Incoming, first: tuple[str, str]) -> None:
    """A transaction id recorded before (from another event): nothing if it is the same sale, else quarantine."""
    first_event, first_payload = first
    transaction_id = incoming.sale.transaction_id
    if first_payload == incoming.payload:
        log.info(
            "store %s: sale %s of event %s was already recorded from event %s; nothing to do",
            store_id,
            transaction_id,
            incoming.event_id,
            first_event,
        )
        return
    _quarantine_event(
        tx,
        store_id,
        event_id=incoming.event_id,
        event_type=EventType.SALE_COMPLETED.value,
        data_json=incoming.payload,
        reason=f"sale {transaction_id}: transaction id already recorded from event {first_event} with a"
        " different sale; the first one stands, this one is not applied",
    )


def _earn_for_sales(
    tx: Tx, settings: SalesSettings, store_id: str, member_sales: list[_Incoming], now: float
) -> None:
    """Points and tiers for the run's new member sales (their sale rows are in place), in seq order."""
    if not member_sales:
        return
    rules = settings.rules
    member_ids = sorted({sale.sale.member_id for sale in member_sales if sale.sale.member_id is not None})
    members = _lock_members(tx, member_ids)
    unknown = [member_id for member_id in member_ids if member_id not in members]
    if unknown and settings.auto_create_members:
        tx.run_many(_INSERT_MEMBER, [{"member_id": member_id, "now": now} for member_id in unknown])
        members.update(_lock_members(tx, unknown))
    written: list[LedgerEntry] = []
    tiers: dict[str, _TierUpdate] = {}
    for incoming in member_sales:
        sale = incoming.sale
        assert sale.member_id is not None  # noqa: S101 - filtered by the caller
        member = members.get(sale.member_id)
        if member is None:
            log.info(
                "sale %s: its member is not registered and auto_create is off; no points", sale.transaction_id
            )
            continue
        before = tier_as_of(tx, rules, sale.member_id, incoming.at, exclude=sale.transaction_id)
        try:
            # The sale row is new in this transaction, so no ledger row can carry its id yet: nothing is applied
            # (UNIQUE(member_id, cause, ref) would still refuse a second entry).
            entries = plan_sale(rules, member.state, sale, tier_before=before.tier, applied=())
            state = apply_entries(member.state, entries)
        except LoyaltyError as exc:
            _quarantine_event(
                tx,
                store_id,
                event_id=incoming.event_id,
                event_type=EventType.SALE_COMPLETED.value,
                data_json=incoming.payload,
                reason=f"sale {sale.transaction_id} recorded, but no points: {exc}",
            )
            continue
        if member.tier_ts is None or member.tier_ts <= rfc3339(incoming.at):
            # As of the sale: the spend before it plus the sale itself (inside both windows on its own day).
            short, long = before.spend_30d_cny + sale.total, before.spend_365d_cny + sale.total
            status = TierStatus(
                tier=tier_for_spend(short, long, rules),
                spend_30d_cny=short,
                spend_365d_cny=long,
                as_of_date=local_date(incoming.at, rules),
            )
            tier = _TierUpdate(status, incoming.at)
        else:
            tier = _tier_after(tx, rules, member, incoming.at)  # a late sale: as of the newest fact
        members[sale.member_id] = _Member(state, rfc3339(tier.as_of), member.registered_at)
        tiers[sale.member_id] = tier
        written.extend(entries)
    if written:
        tx.run_many(_INSERT_ENTRY, [_entry_params(entry, now) for entry in written])
    if tiers:
        tx.run_many(
            _UPDATE_MEMBER_AND_TIER,
            [_member_params(members[member_id].state, tier) for member_id, tier in sorted(tiers.items())],
        )


def sale_returned_effect(tx: Tx, store_id: str, run: Applied) -> None:
    """`hub.db.Effect` for `sale.returned`: apply each return against its sale, or hold it for the sale."""
    settings = _settings
    now = time.time()
    for event, data in run:
        if not isinstance(data, SaleReturned):
            raise TypeError(f"{event.id}: sale.returned carries {type(data).__name__}")
        _apply_return(tx, settings, store_id, event_id=event.id, ret=data, now=now)


def _release_held(tx: Tx, settings: SalesSettings, transaction_id: str, now: float) -> None:
    """Apply the returns that waited for this sale, oldest first (the sale row is in place now)."""
    held = tx.run(
        "SELECT transaction_id, event_id, store_id, payload FROM held_returns"
        " WHERE original_transaction_id = :id ORDER BY ts, transaction_id",
        {"id": transaction_id},
    ).all()
    tx.run("UPDATE sale_refs SET held = 0 WHERE transaction_id = :id", {"id": transaction_id})
    for return_id, return_event, return_store, return_payload in held:
        tx.run("DELETE FROM held_returns WHERE transaction_id = :id", {"id": return_id})
        log.info("sale %s arrived: applying return %s that waited for it", transaction_id, return_id)
        ret = SaleReturned.model_validate_json(return_payload)
        _apply_return(tx, settings, return_store, event_id=return_event, ret=ret, now=now)


_INSERT_RETURN: Final = """
INSERT INTO sale_returns (transaction_id, original_transaction_id, event_id, store_id, lane, cashier,
                          refund_fen, ts, local_date, payload, applied_at)
VALUES (:transaction_id, :original_transaction_id, :event_id, :store_id, :lane, :cashier, :refund_fen, :ts,
        :local_date, :payload, :now)
"""


def _same_or_quarantine(
    tx: Tx,
    store_id: str,
    *,
    event_id: str,
    ret: SaleReturned,
    payload: str,
    first: tuple[str, str],
    where: str,
) -> None:
    first_event, first_payload = first
    if first_payload == payload:
        log.info(
            "store %s: return %s of event %s is already %s from event %s; nothing to do",
            store_id,
            ret.transaction_id,
            event_id,
            where,
            first_event,
        )
        return
    _quarantine_event(
        tx,
        store_id,
        event_id=event_id,
        event_type=EventType.SALE_RETURNED.value,
        data_json=payload,
        reason=f"return {ret.transaction_id}: transaction id already {where} from event {first_event} with a"
        " different return; the first one stands, this one is not applied",
    )


def _apply_return(
    tx: Tx, settings: SalesSettings, store_id: str, *, event_id: str, ret: SaleReturned, now: float
) -> None:
    rules = settings.rules
    payload = ret.model_dump_json()
    _lock_ref(tx, ret.original_transaction_id)
    recorded = tx.run(
        "SELECT event_id, payload FROM sale_returns WHERE transaction_id = :id", {"id": ret.transaction_id}
    ).one_or_none()
    if recorded is not None:
        _same_or_quarantine(
            tx,
            store_id,
            event_id=event_id,
            ret=ret,
            payload=payload,
            first=(recorded[0], recorded[1]),
            where="applied",
        )
        return
    original_row = tx.run(
        "SELECT payload FROM sales WHERE transaction_id = :id", {"id": ret.original_transaction_id}
    ).one_or_none()
    if original_row is None:
        _hold_return(tx, store_id, event_id=event_id, ret=ret, payload=payload, now=now)
        return
    original = SaleCompleted.model_validate_json(original_row[0])
    prior = [
        SaleReturned.model_validate_json(row[0])
        for row in tx.run(
            "SELECT payload FROM sale_returns WHERE original_transaction_id = :id ORDER BY ts, transaction_id",
            {"id": ret.original_transaction_id},
        )
    ]
    try:
        check_return(original, prior, ret)
    except LoyaltyError as exc:
        _quarantine_event(
            tx,
            store_id,
            event_id=event_id,
            event_type=EventType.SALE_RETURNED.value,
            data_json=payload,
            reason=f"return refused: {exc}",
        )
        return
    return_at = parse_rfc3339(ret.ts)
    tx.run(
        _INSERT_RETURN,
        {
            "transaction_id": ret.transaction_id,
            "original_transaction_id": ret.original_transaction_id,
            "event_id": event_id,
            "store_id": store_id,
            "lane": ret.lane,
            "cashier": ret.cashier,
            "refund_fen": to_fen(ret.refund_total),
            "ts": rfc3339(return_at),
            "local_date": local_date(return_at, rules).isoformat(),
            "payload": payload,
            "now": now,
        },
    )
    tx.run_many(_INSERT_ITEM, _item_rows("return", ret.transaction_id, ret.items))
    tx.run(
        "UPDATE sales SET refunded_fen = refunded_fen + :refund WHERE transaction_id = :id",
        {"refund": to_fen(ret.refund_total), "id": ret.original_transaction_id},
    )
    if original.member_id is None:
        return
    member = _lock_member(tx, original.member_id)
    if member is None:
        return  # the sale earned nothing (an unregistered member with auto_create off)
    applied = _applied_keys(tx, original.member_id, LedgerCause.RETURN, ret.transaction_id)
    entries = plan_return(
        rules,
        member.state,
        original,
        ret,
        sale_entries=_sale_entries(tx, original.member_id, original.transaction_id),
        prior_returns=prior,
        applied=applied,
    )
    _write_entries(tx, member, entries, now, _tier_after(tx, rules, member, return_at))


def _hold_return(
    tx: Tx, store_id: str, *, event_id: str, ret: SaleReturned, payload: str, now: float
) -> None:
    reason = f"original sale {ret.original_transaction_id} not received yet"
    inserted = tx.run(
        "INSERT INTO held_returns (transaction_id, original_transaction_id, event_id, store_id, refund_fen, ts,"
        " payload, reason, held_at)"
        " VALUES (:transaction_id, :original, :event_id, :store_id, :refund_fen, :ts, :payload, :reason, :now)"
        " ON CONFLICT (transaction_id) DO NOTHING",
        {
            "transaction_id": ret.transaction_id,
            "original": ret.original_transaction_id,
            "event_id": event_id,
            "store_id": store_id,
            "refund_fen": to_fen(ret.refund_total),
            "ts": utc_text(ret.ts),
            "payload": payload,
            "reason": reason,
            "now": now,
        },
    ).rowcount
    if inserted != 1:
        first = tx.run(
            "SELECT event_id, payload FROM held_returns WHERE transaction_id = :id",
            {"id": ret.transaction_id},
        ).one()
        _same_or_quarantine(
            tx,
            store_id,
            event_id=event_id,
            ret=ret,
            payload=payload,
            first=(first[0], first[1]),
            where="held",
        )
        return
    tx.run(  # the sale, when it comes, looks for held returns only if this says there are some
        "UPDATE sale_refs SET held = held + 1 WHERE transaction_id = :id", {"id": ret.original_transaction_id}
    )
    log.info("store %s: return %s held: %s", store_id, ret.transaction_id, reason)


# --- member actions (HQ API) ------------------------------------------------------------------------------


class MemberNotFoundError(LookupError):
    """No member with this id (the API answers 404)."""

    def __init__(self, member_id: str) -> None:
        self.member_id = member_id
        super().__init__(f"unknown member {member_id!r}: register it with POST /api/members first")


class MemberAlreadyRegisteredError(LoyaltyError):
    """`POST /api/members` for a member who registered before (409)."""


class RedemptionConflictError(LoyaltyError):
    """A redemption id reused for a different number of points (409): a retry must repeat the request."""


def _member_view(tx: Tx, rules: LoyaltyRules, member_id: str, at: datetime) -> MemberView | None:
    row = tx.run(
        "SELECT balance, debt, birth_month, registered_at, source, created_at FROM members"
        " WHERE member_id = :member_id",
        {"member_id": member_id},
    ).one_or_none()
    if row is None:
        return None
    status = tier_as_of(tx, rules, member_id, at)
    return MemberView(
        member_id=member_id,
        tier=status.tier.value,
        points=int(row[0]),
        points_owed=int(row[1]),
        spend_30d_cny=fen_text(to_fen(status.spend_30d_cny)),
        spend_365d_cny=fen_text(to_fen(status.spend_365d_cny)),
        tier_as_of=status.as_of_date.isoformat(),
        birth_month=row[2],
        registered=row[3] is not None,
        source=row[4],
        created_at=rfc3339(float(row[5])),
    )


def member_view(tx: Tx, rules: LoyaltyRules, member_id: str, now: float) -> MemberView | None:
    """A member with the tier computed as of `now` (epoch seconds); None if unknown."""
    return _member_view(tx, rules, member_id, _at(now))


def _view(tx: Tx, rules: LoyaltyRules, member_id: str, at: datetime) -> MemberView:
    view = _member_view(tx, rules, member_id, at)
    if view is None:
        raise MemberNotFoundError(member_id)
    return view


def _locked(tx: Tx, member_id: str) -> _Member:
    member = _lock_member(tx, member_id)
    if member is None:
        raise MemberNotFoundError(member_id)
    return member


def _signup(
    tx: Tx, rules: LoyaltyRules, member: _Member, campaign_id: str, *, at: datetime, now: float
) -> PointsChange:
    member_id = member.state.member_id
    applied = _applied_keys(tx, member_id, LedgerCause.SIGNUP, campaign_id)
    entries = plan_signup(rules, member.state, campaign_id, at, applied=applied)
    _write_entries(tx, member, entries, now)
    return PointsChange(
        member=_view(tx, rules, member_id, at),
        entries=_entries_of(tx, member_id, LedgerCause.SIGNUP, campaign_id),
        created=bool(entries),
    )


def register_member(
    tx: Tx,
    rules: LoyaltyRules,
    member_id: str,
    *,
    birth_month: int | None,
    campaign_id: str | None,
    now: float,
) -> tuple[PointsChange, bool]:
    """Register a member (and sign them up for `campaign_id`); returns (outcome, whether the row is new).

    A member a sale created (`source` 'sale', not registered) is claimed: registered now, birth month set.
    A registered member raises MemberAlreadyRegisteredError.
    """
    at = _at(now)
    created = _create_member(tx, member_id, source="api", now=now, birth_month=birth_month, registered=True)
    member = _locked(tx, member_id)
    if not created:
        if member.registered_at is not None:
            raise MemberAlreadyRegisteredError(f"member {member_id!r} is already registered")
        tx.run(
            "UPDATE members SET registered_at = :now, birth_month = COALESCE(:birth_month, birth_month)"
            " WHERE member_id = :member_id",
            {"now": now, "birth_month": birth_month, "member_id": member_id},
        )
        member = _locked(tx, member_id)
    if campaign_id is not None:
        change = _signup(tx, rules, member, campaign_id, at=at, now=now)
        return change.model_copy(update={"created": True}), created
    return PointsChange(member=_view(tx, rules, member_id, at), entries=[], created=True), created


def signup(tx: Tx, rules: LoyaltyRules, member_id: str, campaign_id: str, now: float) -> PointsChange:
    """Campaign sign-up points, once per member and campaign (a repeat returns the first outcome)."""
    return _signup(tx, rules, _locked(tx, member_id), campaign_id, at=_at(now), now=now)


def checkin(tx: Tx, rules: LoyaltyRules, member_id: str, now: float) -> PointsChange:
    """The daily check-in point, once per local day (a repeat the same day returns the first outcome)."""
    at = _at(now)
    member = _locked(tx, member_id)
    ref = checkin_ref(at, rules)
    applied = _applied_keys(tx, member_id, LedgerCause.CHECKIN, ref)
    entries = plan_checkin(rules, member.state, at, applied=applied)
    _write_entries(tx, member, entries, now)
    return PointsChange(
        member=_view(tx, rules, member_id, at),
        entries=_entries_of(tx, member_id, LedgerCause.CHECKIN, ref),
        created=bool(entries),
    )


def redeem(
    tx: Tx, rules: LoyaltyRules, member_id: str, *, points: int, redemption_id: str, now: float
) -> PointsChange:
    """Spend points; never below zero (InsufficientPointsError). The same redemption id again returns the
    first outcome; with another number of points it is refused (RedemptionConflictError)."""
    at = _at(now)
    member = _locked(tx, member_id)
    applied = _applied_keys(tx, member_id, LedgerCause.REDEEM, redemption_id)
    entries = plan_redeem(member.state, points, redemption_id, at, applied=applied)
    if not entries:
        (first,) = _entries_of(tx, member_id, LedgerCause.REDEEM, redemption_id)
        if first.delta != -points:
            raise RedemptionConflictError(
                f"redemption {redemption_id!r} was already made for {-first.delta} points, not {points}"
            )
    _write_entries(tx, member, entries, now)
    return PointsChange(
        member=_view(tx, rules, member_id, at),
        entries=_entries_of(tx, member_id, LedgerCause.REDEEM, redemption_id),
        created=bool(entries),
    )


def ledger(tx: Tx, member_id: str, *, limit: int, after_id: int = 0) -> list[LedgerItem] | None:
    """The member's ledger in the order it changed the balance (oldest first); None if the member is unknown."""
    if tx.run("SELECT 1 FROM members WHERE member_id = :m", {"m": member_id}).one_or_none() is None:
        return None
    rows = tx.run(
        f"SELECT {_LEDGER_COLUMNS} FROM points_ledger WHERE member_id = :member_id AND id > :after"  # noqa: S608
        " ORDER BY id LIMIT :limit",
        {"member_id": member_id, "after": after_id, "limit": limit},
    ).all()
    return [_ledger_item(row) for row in rows]


# --- sales reads ---------------------------------------------------------------------------------------------


def _lines(payload: str) -> list[SaleLine]:
    """The receipt lines from the stored payload (the contract's own JSON: money already as text)."""
    return [
        SaleLine(
            gtin=item["gtin"],
            qty=item["qty"],
            weight_kg=item["weight_kg"],
            unit_price=item["unit_price"],
            amount=item["amount"],
        )
        for item in json.loads(payload)["items"]
    ]


_SALE_COLUMNS: Final = (
    "s.transaction_id, s.event_id, s.store_id, s.lane, s.cashier, s.member_id, s.total_fen, s.refunded_fen,"
    " s.ts, s.local_date, s.payload"
)


def _sale_record(row: Any) -> SaleRecord:
    return SaleRecord(
        transaction_id=row[0],
        event_id=row[1],
        store_id=row[2],
        lane=row[3],
        cashier=row[4],
        member_id=row[5],
        total=fen_text(int(row[6])),
        refunded=fen_text(int(row[7])),
        ts=row[8],
        local_date=row[9],
        items=_lines(row[10]),
    )


@dataclass(frozen=True, slots=True)
class SalesFilter:
    """`GET /api/sales` filters; None means any."""

    store_id: str | None = None
    day: date | None = None
    gtin: str | None = None
    member_id: str | None = None
    limit: int = 100


def sales(tx: Tx, where: SalesFilter) -> list[SaleRecord]:
    """Sales matching every given filter, newest first (by the lane's time, then transaction id)."""
    clauses: list[str] = []
    params: dict[str, Any] = {"limit": where.limit}
    if where.store_id is not None:
        clauses.append("s.store_id = :store_id")
        params["store_id"] = where.store_id
    if where.day is not None:
        clauses.append("s.local_date = :day")
        params["day"] = where.day.isoformat()
    if where.member_id is not None:
        clauses.append("s.member_id = :member_id")
        params["member_id"] = where.member_id
    if where.gtin is not None:
        clauses.append(
            "EXISTS (SELECT 1 FROM sale_items i WHERE i.kind = 'sale'"
            " AND i.transaction_id = s.transaction_id AND i.gtin = :gtin)"
        )
        params["gtin"] = where.gtin
    condition = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = tx.run(
        f"SELECT {_SALE_COLUMNS} FROM sales s{condition}"  # noqa: S608 - fixed fragments, values bound
        " ORDER BY s.ts DESC, s.transaction_id DESC LIMIT :limit",
        params,
    ).all()
    return [_sale_record(row) for row in rows]


def sale_detail(tx: Tx, transaction_id: str) -> SaleDetail | None:
    """One sale with its applied returns (oldest first); None if unknown."""
    row = tx.run(
        f"SELECT {_SALE_COLUMNS} FROM sales s WHERE s.transaction_id = :id",  # noqa: S608 - constant
        {"id": transaction_id},
    ).one_or_none()
    if row is None:
        return None
    returns = [
        ReturnRecord(
            transaction_id=r[0],
            original_transaction_id=r[1],
            event_id=r[2],
            store_id=r[3],
            lane=r[4],
            cashier=r[5],
            refund=fen_text(int(r[6])),
            ts=r[7],
            local_date=r[8],
            items=_lines(r[9]),
        )
        for r in tx.run(
            "SELECT transaction_id, original_transaction_id, event_id, store_id, lane, cashier, refund_fen, ts,"
            " local_date, payload FROM sale_returns WHERE original_transaction_id = :id"
            " ORDER BY ts, transaction_id",
            {"id": transaction_id},
        )
    ]
    return SaleDetail(sale=_sale_record(row), returns=returns)


def daily_sales(tx: Tx, store_id: str, first: date, last: date) -> list[DailySales]:
    """A store's totals per local day from `first` to `last` (inclusive); days without a sale or a refund
    are left out. Sales count on their own day; refunds on the day and at the store they were paid out."""
    span = {"store_id": store_id, "first": first.isoformat(), "last": last.isoformat()}
    days: dict[str, list[int]] = {}
    for day, count, fen in tx.run(
        "SELECT local_date, COUNT(*), SUM(total_fen) FROM sales"
        " WHERE store_id = :store_id AND local_date BETWEEN :first AND :last GROUP BY local_date",
        span,
    ):
        days.setdefault(day, [0, 0, 0, 0])[0:2] = [_int(count), _int(fen)]
    for day, count, fen in tx.run(
        "SELECT local_date, COUNT(*), SUM(refund_fen) FROM sale_returns"
        " WHERE store_id = :store_id AND local_date BETWEEN :first AND :last GROUP BY local_date",
        span,
    ):
        days.setdefault(day, [0, 0, 0, 0])[2:4] = [_int(count), _int(fen)]
    return [
        DailySales(
            store_id=store_id,
            day=day,
            sales=sold,
            gross=fen_text(gross),
            returns=returned,
            refunds=fen_text(refunds),
            net=fen_text(gross - refunds),
        )
        for day, (sold, gross, returned, refunds) in sorted(days.items())
    ]


def held_returns(tx: Tx, limit: int) -> list[HeldReturn]:
    """Returns waiting for their original sale, oldest first."""
    rows = tx.run(
        "SELECT transaction_id, original_transaction_id, event_id, store_id, ts, refund_fen, reason, held_at"
        " FROM held_returns ORDER BY held_at, transaction_id LIMIT :limit",
        {"limit": limit},
    ).all()
    return [
        HeldReturn(
            transaction_id=r[0],
            original_transaction_id=r[1],
            event_id=r[2],
            store_id=r[3],
            ts=r[4],
            refund=fen_text(int(r[5])),
            reason=r[6],
            held_at=rfc3339(float(r[7])),
        )
        for r in rows
    ]
