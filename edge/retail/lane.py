"""The checkout lane: a deterministic state machine whose state is a pure fold over an append-only event list.

Crash safety is the design driver (issue #6: "nothing is lost or doubled on restart mid-transaction"). The
gateway journals every lane event (SQLite, append-only) *before* applying it; after a restart it replays the
journal through `fold` and gets the same state — the same open transaction with the same id and lines, or the
same completed sale. Two rules make that hold:

- **Events record decisions, not inputs.** A product scan is journaled as the resolved line (`ItemScanned`:
  GTIN, names, unit price, measure) — not as the raw scan — so a replay after the hub replaced the catalogue
  reprices nothing. A stable scale reading is journaled only when it changes something (`WeightTaken` for the
  line waiting for it, `ScaleZeroed` when the pan empties): a scale polled every 0.5 s does not flood the
  journal, and `fold` needs no rules or clock.
- **Commands and application are separate.** `CheckoutLane.scan(...)` etc. validate against the current state
  and *return* the events to journal without changing anything; `CheckoutLane.apply(events)` changes the
  state. A command that fails (unknown GTIN, a weighed line still waiting…) journals nothing.

Transaction ids are derived at open and journaled with it (`TransactionOpened.transaction_id`):
``{store_id}:{lane}:{opened_ms}-{number}`` — the open time in ms and the lane's running transaction number,
so neither a clock step back nor a lost journal (number restarting) can reissue an id. Completing is
idempotent: a completed transaction refuses a second `TransactionCompleted`, and `CheckoutLane.complete()` on
it returns no events while `last_payload` still returns the one sale — so the wiring can journal the
completion and insert the `sale.completed` outbox row in one SQLite transaction and emit exactly one sale.

Pricing (DOMAIN.md, docs/wire-contract.md "Sales"):

=============================================  ==============================================================
scan                                           line
=============================================  ==============================================================
counted item (catalogue price)                 qty 1 at the catalogue price; a repeat scan of the same item
                                               right after adds 1 to that line
counted or weighed item, price in the code     qty 1 at the printed price (in-store price label, GS1 AI 392n)
  (in-store price label, AI 392n)
weighed item, weight in the code               weight_kg from the label at the catalogue price per kg
  (in-store weight label, AI 310n)
weighed item, plain code                       waits for the lane scale: the first *stable* weight > 0 that
                                               arrives after the scan prices it; an unstable reading is
                                               ignored (the lane waits). With `require_zero_between_weighings`
                                               the pan must have read zero since the previous weighed line took
                                               its weight, so one item on the pan cannot price two lines.
=============================================  ==============================================================

Amounts are `cloud_bridge.contract.line_amount` (half-up to the fen); the total is their sum over lines not
voided. Voids mark a line voided (a voided line keeps its number on the screen); quantities only change to
1..99 999, never below 1 — void the line instead. Returns are transactions of their own (`kind="return"`)
against an original sale: each returned line comes from the original at the price paid, counted goods up to
what was sold minus what earlier returns took back, weighed goods whole (the hub's `check_return` rule).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from cloud_bridge.contract import (
    QTY_MAX,
    SALE_ITEMS_MAX,
    Gtin14,
    Identifier,
    Money,
    SaleCompleted,
    SaleItem,
    SaleReturned,
    WeightKg,
    line_amount,
    rfc3339,
)
from drivers.barcode.protocol import MemberScan, ProductScan
from edge.retail.catalogue import WEIGHT_STEP_KG, Catalogue
from edge.retail.errors import LaneError, UnknownItem

TxKind = Literal["sale", "return"]
TxStatus = Literal["open", "completed", "cancelled"]
Measure = Literal["count", "weigh"]

_ID_MAX: Final = 64


# --- events (what the journal holds) -------------------------------------------------------------------------


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    ts: float = Field(ge=0, allow_inf_nan=False, description="epoch seconds when the lane decided it")


class CashierSignedIn(_Event):
    """A cashier takes the lane (only between transactions)."""

    type: Literal["cashier_signed_in"] = "cashier_signed_in"
    cashier: Identifier


class TransactionOpened(_Event):
    """A sale (or a return against `original`) begins; its id is fixed here."""

    type: Literal["transaction_opened"] = "transaction_opened"
    transaction_id: Identifier
    number: int = Field(ge=1, description="the lane's running transaction number")
    kind: TxKind = "sale"
    cashier: Identifier
    scale_clear: bool = Field(
        default=True, description="the pan had read zero since the last weight was taken (carried across)"
    )
    original: SaleCompleted | None = None
    already_returned: list[SaleItem] = Field(default=[], description="lines of earlier returns of `original`")


class ItemScanned(_Event):
    """A sale line resolved from a scan (or merged into line `merge_into`)."""

    type: Literal["item_scanned"] = "item_scanned"
    code: str = Field(
        min_length=1, max_length=14, description="the scanned GTIN-14 (in-store codes as printed)"
    )
    gtin: Gtin14
    name_zh: str
    name_en: str
    unit_price: Money
    measure: Measure
    qty: int | None = Field(default=None, ge=1, le=QTY_MAX)
    weight_kg: WeightKg | None = None
    price_embedded: bool = False
    merge_into: int | None = Field(
        default=None, ge=1, description="add `qty` to this line instead of a new one"
    )


class ReturnLineAdded(_Event):
    """A line of the original sale taken back (counted: `qty` units; weighed: the whole line)."""

    type: Literal["return_line_added"] = "return_line_added"
    original_index: int = Field(ge=0)
    qty: int | None = Field(default=None, ge=1, le=QTY_MAX)
    merge_into: int | None = Field(default=None, ge=1)
    name_zh: str = ""
    name_en: str = ""


class WeightTaken(_Event):
    """The lane scale's stable weight priced the weighed line waiting for it."""

    type: Literal["weight_taken"] = "weight_taken"
    line_no: int = Field(ge=1)
    weight_kg: WeightKg


class ScaleZeroed(_Event):
    """The lane scale read a stable zero after a weight was taken: the next weighed line may use the pan."""

    type: Literal["scale_zeroed"] = "scale_zeroed"


class MemberIdentified(_Event):
    """A member card/QR was scanned for this sale (the last one scanned counts)."""

    type: Literal["member_identified"] = "member_identified"
    member_id: Identifier


class QuantityChanged(_Event):
    """A counted line's quantity set by the cashier."""

    type: Literal["quantity_changed"] = "quantity_changed"
    line_no: int = Field(ge=1)
    qty: int = Field(ge=1, le=QTY_MAX)


class LineVoided(_Event):
    """One line voided."""

    type: Literal["line_voided"] = "line_voided"
    line_no: int = Field(ge=1)


class AllVoided(_Event):
    """Every line voided; the transaction stays open."""

    type: Literal["all_voided"] = "all_voided"


class TransactionCompleted(_Event):
    """Paid: the sale (or refund) is final and goes on the wire."""

    type: Literal["transaction_completed"] = "transaction_completed"


class TransactionCancelled(_Event):
    """Abandoned without a sale."""

    type: Literal["transaction_cancelled"] = "transaction_cancelled"


LaneEvent = Annotated[
    CashierSignedIn
    | TransactionOpened
    | ItemScanned
    | ReturnLineAdded
    | WeightTaken
    | ScaleZeroed
    | MemberIdentified
    | QuantityChanged
    | LineVoided
    | AllVoided
    | TransactionCompleted
    | TransactionCancelled,
    Field(discriminator="type"),
]
"""One journal entry; `event_to_json` / `event_from_json` are its stored form."""

_EVENT: Final[TypeAdapter[LaneEvent]] = TypeAdapter(LaneEvent)


def event_to_json(event: LaneEvent) -> str:
    """The journal text of one event (Decimal as strings, so replay is exact)."""
    return event.model_dump_json()


def event_from_json(text: str | bytes) -> LaneEvent:
    """One journaled event back; `pydantic.ValidationError` for a corrupt entry."""
    return _EVENT.validate_json(text)


# --- state (what the fold produces) --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Line:
    """One receipt line as the cashier screen shows it."""

    line_no: int
    code: str
    gtin: str
    name_zh: str
    name_en: str
    unit_price: Decimal
    measure: Measure
    qty: int | None
    weight_kg: Decimal | None
    price_embedded: bool = False
    voided: bool = False
    original_index: int | None = None
    """For a return line: the index of the original sale's item it takes back."""

    @property
    def pending(self) -> bool:
        """A weighed line still waiting for a stable weight."""
        return self.measure == "weigh" and self.weight_kg is None and not self.voided

    @property
    def amount(self) -> Decimal | None:
        """unit_price × qty (or × weight_kg), half-up to the fen; None while pending."""
        measure = self.qty if self.qty is not None else self.weight_kg
        return None if measure is None else line_amount(self.unit_price, measure)

    def sale_item(self) -> SaleItem:
        """The wire form of this line (`SaleItem`)."""
        amount = self.amount
        if amount is None:
            raise ValueError(f"line {self.line_no} has no weight yet")
        return SaleItem(
            gtin=self.gtin, qty=self.qty, weight_kg=self.weight_kg, unit_price=self.unit_price, amount=amount
        )


@dataclass(frozen=True, slots=True)
class Transaction:
    """One sale or return at a lane: open, or closed (completed / cancelled)."""

    transaction_id: str
    number: int
    kind: TxKind
    lane: str
    cashier: str
    opened_ts: float
    status: TxStatus = "open"
    lines: tuple[Line, ...] = ()
    member_id: str | None = None
    closed_ts: float | None = None
    original: SaleCompleted | None = None
    already_returned: tuple[SaleItem, ...] = ()
    payload: SaleCompleted | SaleReturned | None = None
    """The wire payload, set when completed (built once, at the completing event)."""

    @property
    def active_lines(self) -> tuple[Line, ...]:
        """Lines not voided, in line order."""
        return tuple(line for line in self.lines if not line.voided)

    @property
    def pending_line(self) -> Line | None:
        """The weighed line waiting for the scale, if any (at most one)."""
        return next((line for line in self.lines if line.pending), None)

    @property
    def total(self) -> Decimal:
        """Sum of the priced active lines (a pending line counts 0 until weighed)."""
        return sum((line.amount or Decimal("0.00") for line in self.active_lines), Decimal("0.00"))

    def items(self) -> list[SaleItem]:
        """The active lines as `SaleItem`s (every line must be priced)."""
        return [line.sale_item() for line in self.active_lines]


@dataclass(frozen=True, slots=True)
class LaneState:
    """Everything the lane knows: the signed-in cashier, the current (or last) transaction, the scale's pan."""

    lane: str
    cashier: str | None = None
    transaction: Transaction | None = None
    number: int = 0
    """The last transaction number used (ids never repeat within a journal)."""
    scale_clear: bool = True
    """True when the pan read zero since the last weight was taken (or none was ever taken)."""

    @property
    def open_transaction(self) -> Transaction | None:
        """The transaction in progress, if any."""
        tx = self.transaction
        return tx if tx is not None and tx.status == "open" else None


# --- the fold ------------------------------------------------------------------------------------------------


def _err(state: LaneState, reason: str) -> LaneError:
    return LaneError(state.lane, reason)


def _need_open(state: LaneState, kind: TxKind | None = None) -> Transaction:
    tx = state.open_transaction
    if tx is None:
        raise _err(state, "no open transaction")
    if kind is not None and tx.kind != kind:
        raise _err(state, f"not allowed in a {tx.kind} transaction")
    return tx


def _line(state: LaneState, tx: Transaction, line_no: int) -> Line:
    if not 1 <= line_no <= len(tx.lines):
        raise _err(state, f"no line {line_no} (transaction has {len(tx.lines)})")
    line = tx.lines[line_no - 1]
    if line.voided:
        raise _err(state, f"line {line_no} is voided")
    return line


def _with_line(tx: Transaction, line: Line) -> Transaction:
    lines = list(tx.lines)
    lines[line.line_no - 1] = line
    return replace(tx, lines=tuple(lines))


def _returnable(tx: Transaction, index: int, *, exclude_line: int | None = None) -> int:
    """How many more units (counted) or packages (weighed) of the original's item `index` this return may take.

    Aggregated like `hub.loyalty.check_return`: counted goods per (gtin, unit price), weighed goods per
    (gtin, unit price, weight), sold minus earlier returns minus this return's active lines.
    """
    assert tx.original is not None  # noqa: S101 - only called for returns, which always carry the original
    item = tx.original.items[index]

    def key(i: SaleItem) -> tuple[str, Decimal, Decimal | None]:
        return (i.gtin, i.unit_price, i.weight_kg)

    def units(i: SaleItem) -> int:
        return i.qty if i.qty is not None else 1

    target = key(item)
    sold = sum(units(i) for i in tx.original.items if key(i) == target)
    before = sum(units(i) for i in tx.already_returned if key(i) == target)
    here = sum(
        units(line.sale_item())
        for line in tx.active_lines
        if line.line_no != exclude_line
        and line.original_index is not None
        and key(tx.original.items[line.original_index]) == target
    )
    return sold - before - here


def _payload(state: LaneState, tx: Transaction, ts: float) -> SaleCompleted | SaleReturned:
    items = tx.items()
    total = sum((i.amount for i in items), Decimal("0.00"))
    try:
        if tx.kind == "sale":
            return SaleCompleted(
                transaction_id=tx.transaction_id,
                lane=tx.lane,
                cashier=tx.cashier,
                member_id=tx.member_id,
                items=items,
                total=total,
                ts=rfc3339(ts),
            )
        assert tx.original is not None  # noqa: S101 - a return always carries its original
        return SaleReturned(
            transaction_id=tx.transaction_id,
            original_transaction_id=tx.original.transaction_id,
            lane=tx.lane,
            cashier=tx.cashier,
            items=items,
            refund_total=total,
            ts=rfc3339(ts),
        )
    except ValidationError as exc:
        raise _err(state, f"cannot complete: {exc.errors()[0]['msg']}") from exc


def apply(state: LaneState, event: LaneEvent) -> LaneState:
    """The state after `event`; `LaneError` if the event is not allowed now (a journal never holds one)."""
    if isinstance(event, ScaleZeroed):
        return replace(state, scale_clear=True)
    if isinstance(event, CashierSignedIn):
        if state.open_transaction is not None:
            raise _err(state, "complete or cancel the open transaction before another cashier signs in")
        return replace(state, cashier=event.cashier)
    if isinstance(event, TransactionOpened):
        if state.open_transaction is not None:
            raise _err(state, f"transaction {state.open_transaction.transaction_id} is still open")
        if state.cashier is None or event.cashier != state.cashier:
            raise _err(state, f"cashier {event.cashier} is not signed in")
        if event.number <= state.number:
            raise _err(state, f"transaction number {event.number} was already used (last {state.number})")
        if (event.kind == "return") != (event.original is not None):
            raise _err(state, "a return needs its original sale, and only a return has one")
        if event.original is not None and event.original.transaction_id == event.transaction_id:
            raise _err(state, "a return needs its own transaction id")
        tx = Transaction(
            transaction_id=event.transaction_id,
            number=event.number,
            kind=event.kind,
            lane=state.lane,
            cashier=event.cashier,
            opened_ts=event.ts,
            original=event.original,
            already_returned=tuple(event.already_returned),
        )
        return replace(state, transaction=tx, number=event.number, scale_clear=event.scale_clear)
    tx = _need_open(state)
    if isinstance(event, ItemScanned):
        return replace(state, transaction=_scanned(state, _need_open(state, "sale"), event))
    if isinstance(event, ReturnLineAdded):
        return replace(state, transaction=_return_line(state, _need_open(state, "return"), event))
    if isinstance(event, WeightTaken):
        pending = tx.pending_line
        if pending is None or pending.line_no != event.line_no:
            raise _err(state, f"line {event.line_no} is not waiting for a weight")
        weighed = replace(pending, weight_kg=event.weight_kg)
        return replace(state, transaction=_with_line(tx, weighed), scale_clear=False)
    if isinstance(event, MemberIdentified):
        tx = _need_open(state, "sale")
        return replace(state, transaction=replace(tx, member_id=event.member_id))
    if isinstance(event, QuantityChanged):
        line = _line(state, tx, event.line_no)
        if line.measure != "count" or line.price_embedded:
            raise _err(
                state, f"line {line.line_no} is one weighed or labelled package; its quantity is fixed"
            )
        if line.original_index is not None:
            room = _returnable(tx, line.original_index, exclude_line=line.line_no)
            if event.qty > room:
                raise _err(state, f"only {room} of line {line.line_no}'s item can still be returned")
        return replace(state, transaction=_with_line(tx, replace(line, qty=event.qty)))
    if isinstance(event, LineVoided):
        line = _line(state, tx, event.line_no)
        return replace(state, transaction=_with_line(tx, replace(line, voided=True)))
    if isinstance(event, AllVoided):
        if not tx.active_lines:
            raise _err(state, "no line to void")
        lines = tuple(replace(line, voided=True) for line in tx.lines)
        return replace(state, transaction=replace(tx, lines=lines))
    if isinstance(event, TransactionCompleted):
        if not tx.active_lines:
            raise _err(state, "nothing to complete: no line")
        pending = tx.pending_line
        if pending is not None:
            raise _err(state, f"line {pending.line_no} ({pending.name_en}) is waiting for a stable weight")
        payload = _payload(state, tx, event.ts)
        return replace(
            state, transaction=replace(tx, status="completed", closed_ts=event.ts, payload=payload)
        )
    if isinstance(event, TransactionCancelled):
        return replace(state, transaction=replace(tx, status="cancelled", closed_ts=event.ts))
    raise _err(state, f"unknown event {event!r}")  # pragma: no cover - the union above is exhaustive


def _scanned(state: LaneState, tx: Transaction, event: ItemScanned) -> Transaction:
    pending = tx.pending_line
    if pending is not None:
        raise _err(state, f"line {pending.line_no} ({pending.name_en}) is still waiting for a stable weight")
    if (event.measure == "count") != (event.qty is not None):
        raise _err(state, "a counted line has a qty, a weighed line none")
    if event.measure == "count" and event.weight_kg is not None:
        raise _err(state, "a counted line has no weight")
    if event.merge_into is not None:
        line = _line(state, tx, event.merge_into)
        mergeable = (line.gtin, line.unit_price, line.measure, line.price_embedded) == (
            event.gtin,
            event.unit_price,
            "count",
            False,
        )
        if not mergeable or event.qty is None or event.price_embedded:
            raise _err(state, f"scan cannot be added to line {line.line_no}")
        qty = (line.qty or 0) + event.qty
        if qty > QTY_MAX:
            raise _err(state, f"line {line.line_no} would exceed {QTY_MAX} units")
        return _with_line(tx, replace(line, qty=qty))
    if len(tx.lines) >= SALE_ITEMS_MAX:
        raise _err(state, f"a transaction holds at most {SALE_ITEMS_MAX} lines")
    line = Line(
        line_no=len(tx.lines) + 1,
        code=event.code,
        gtin=event.gtin,
        name_zh=event.name_zh,
        name_en=event.name_en,
        unit_price=event.unit_price,
        measure=event.measure,
        qty=event.qty,
        weight_kg=event.weight_kg,
        price_embedded=event.price_embedded,
    )
    return replace(tx, lines=(*tx.lines, line))


def _return_line(state: LaneState, tx: Transaction, event: ReturnLineAdded) -> Transaction:
    assert tx.original is not None  # noqa: S101 - a return always carries its original
    if event.original_index >= len(tx.original.items):
        raise _err(state, f"the original sale has no item {event.original_index}")
    item = tx.original.items[event.original_index]
    weighed = item.weight_kg is not None
    if weighed and event.qty is not None:
        raise _err(state, "a weighed line is returned whole (no qty)")
    qty = None if weighed else (event.qty or 1)
    room = _returnable(tx, event.original_index)
    if (qty or 1) > room:
        raise _err(
            state, f"only {max(room, 0)} of {item.gtin} at {item.unit_price} CNY can still be returned"
        )
    if event.merge_into is not None:
        line = _line(state, tx, event.merge_into)
        if line.original_index != event.original_index or weighed or qty is None or line.qty is None:
            raise _err(state, f"return cannot be added to line {line.line_no}")
        return _with_line(tx, replace(line, qty=line.qty + qty))
    line = Line(
        line_no=len(tx.lines) + 1,
        code=item.gtin,
        gtin=item.gtin,
        name_zh=event.name_zh,
        name_en=event.name_en,
        unit_price=item.unit_price,
        measure="weigh" if weighed else "count",
        qty=qty,
        weight_kg=item.weight_kg,
        original_index=event.original_index,
    )
    return replace(tx, lines=(*tx.lines, line))


def fold(events: Iterable[LaneEvent], lane: str) -> LaneState:
    """Replay: the lane's state after `events`, from a fresh lane. Pure and deterministic."""
    state = LaneState(lane=lane)
    for event in events:
        state = apply(state, event)
    return state


def compact(events: Sequence[LaneEvent], lane: str) -> list[LaneEvent]:
    """The shortest suffix-based journal with the same fold: the last transaction's events onward, preceded by the
    cashier sign-in they need. The wiring may replace its journal with this after a transaction closes."""
    last_open = max((i for i, e in enumerate(events) if isinstance(e, TransactionOpened)), default=None)
    if last_open is None:
        # No transaction yet: no weight was ever taken, so the pan state is the default (clear).
        signed: list[LaneEvent] = [e for e in events if isinstance(e, CashierSignedIn)]
        return signed[-1:]
    before = [e for e in events[:last_open] if isinstance(e, CashierSignedIn)]
    return [*before[-1:], *events[last_open:]]


# --- the lane: commands → events ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LaneRules:
    """How a lane treats its scale and repeat scans."""

    require_zero_between_weighings: bool = True
    """After a weighed line took its weight, the pan must read zero before another line may take one."""
    min_weight_g: float = 0.0
    """Stable weights at or below this are "empty pan" (a scale's minimum load, e.g. 20 e, may be set)."""
    merge_repeat_scans: bool = True
    """A counted item scanned right after the same item adds 1 to that line instead of a new line."""


def weight_kg_from_g(weight_g: float) -> Decimal:
    """A scale's grams (float) → kg with three places (1 g), rounded half-up; exact for what a scale prints."""
    return (Decimal(repr(float(weight_g))) / 1000).quantize(WEIGHT_STEP_KG, rounding=ROUND_HALF_UP)


@dataclass(slots=True)
class CheckoutLane:
    """One lane's transactions: commands return the events to journal; `apply` applies journaled events.

    Build it with the journal to replay (`journal=`); `catalogue` may be replaced at any time (a hub push):
    lines already scanned keep the price they were journaled with.
    """

    store_id: str
    lane: str
    catalogue: Catalogue
    rules: LaneRules = LaneRules()
    journal: Sequence[LaneEvent] = ()
    state: LaneState = field(init=False)

    def __post_init__(self) -> None:
        sample = f"{self.store_id}:{self.lane}:{10**13}-{10**6}"
        if len(sample) > _ID_MAX:
            raise ValueError(
                f"store id + lane id too long for {_ID_MAX}-character transaction ids: {sample!r}"
            )
        self.state = fold(self.journal, self.lane)

    # --- reading ---

    @property
    def open_transaction(self) -> Transaction | None:
        """The transaction in progress, if any."""
        return self.state.open_transaction

    @property
    def last_payload(self) -> SaleCompleted | SaleReturned | None:
        """The sale or refund of the last transaction, if it completed (the same object however often asked)."""
        tx = self.state.transaction
        return tx.payload if tx is not None else None

    def apply(self, events: Iterable[LaneEvent]) -> LaneState:
        """Apply events the wiring has journaled (in order); returns the new state."""
        for event in events:
            self.state = apply(self.state, event)
        return self.state

    # --- commands ---

    def _check(self, events: list[LaneEvent]) -> list[LaneEvent]:
        """Dry-run the events on the current state so an invalid command journals nothing."""
        state = self.state
        for event in events:
            state = apply(state, event)
        return events

    def sign_in(self, cashier: str, ts: float) -> list[LaneEvent]:
        """A cashier takes the lane."""
        return self._check([CashierSignedIn(cashier=cashier, ts=ts)])

    def _open(
        self, ts: float, *, original: SaleCompleted | None = None, returned: Sequence[SaleItem] = ()
    ) -> TransactionOpened:
        if self.state.cashier is None:
            raise _err(self.state, "no cashier signed in")
        number = self.state.number + 1
        ms = max(0, int(ts * 1000))
        return TransactionOpened(
            transaction_id=f"{self.store_id}:{self.lane}:{ms}-{number}",
            number=number,
            kind="sale" if original is None else "return",
            cashier=self.state.cashier,
            scale_clear=self.state.scale_clear,
            original=original,
            already_returned=list(returned),
            ts=ts,
        )

    def open(self, ts: float) -> list[LaneEvent]:
        """Open a sale explicitly (a scan opens one by itself when the lane is idle)."""
        return self._check([self._open(ts)])

    def scan(self, scan: ProductScan | MemberScan, ts: float) -> list[LaneEvent]:
        """A lane scanner's classified scan: a product line (opening a sale if idle) or the member of the sale.

        In a return transaction a product scan takes back the first matching line of the original sale.
        Raises `UnknownItem` (not in the catalogue) or `LaneError` (not allowed now).
        """
        opening: list[LaneEvent] = [] if self.state.open_transaction is not None else [self._open(ts)]
        if isinstance(scan, MemberScan):
            return self._check([*opening, MemberIdentified(member_id=scan.member_id, ts=ts)])
        tx = self.state.open_transaction
        if tx is not None and tx.kind == "return":
            return self._check([self._return_scan(tx, scan, ts)])
        match = self.catalogue.lookup_scan(scan)
        item = match.item

        def line(unit_price: Decimal, measure: Measure, **kw: object) -> ItemScanned:
            return ItemScanned.model_validate(
                {
                    "code": scan.gtin,
                    "gtin": item.gtin,
                    "name_zh": item.name.zh,
                    "name_en": item.name.en,
                    "unit_price": unit_price,
                    "measure": measure,
                    "ts": ts,
                    **kw,
                }
            )

        if match.price_cny is not None:
            event = line(match.price_cny, "count", qty=1, price_embedded=True)
        elif item.variable_measure:
            if match.weight_kg is not None and match.weight_kg <= 0:
                raise UnknownItem(scan.gtin, "the code carries a zero weight")
            event = line(item.price, "weigh", weight_kg=match.weight_kg)
        else:
            merge = None
            last = tx.lines[-1] if tx is not None and tx.lines else None
            if (
                self.rules.merge_repeat_scans
                and last is not None
                and not last.voided
                and (last.gtin, last.unit_price, last.measure, last.price_embedded)
                == (item.gtin, item.price, "count", False)
            ):
                merge = last.line_no
            event = line(item.price, "count", qty=1, merge_into=merge)
        return self._check([*opening, event])

    def _return_scan(self, tx: Transaction, scan: ProductScan, ts: float) -> ReturnLineAdded:
        assert tx.original is not None  # noqa: S101 - a return always carries its original
        match = self.catalogue.lookup_scan(scan)
        for index, item in enumerate(tx.original.items):
            if item.gtin != match.item.gtin:
                continue
            if match.weight_kg is not None and item.weight_kg != match.weight_kg:
                continue
            if match.price_cny is not None and item.unit_price != match.price_cny:
                continue
            if _returnable(tx, index) > 0:
                return self.return_line_event(index, ts)
        raise _err(
            self.state,
            f"{match.item.gtin} is not (or no longer) returnable from {tx.original.transaction_id}",
        )

    def return_line_event(self, original_index: int, ts: float, qty: int | None = None) -> ReturnLineAdded:
        """The event taking back original item `original_index` (merged into its counted line if present)."""
        tx = _need_open(self.state, "return")
        merge = None
        if qty is None and tx.original is not None and tx.original.items[original_index].qty is not None:
            qty = 1
        if qty is not None:
            merge = next(
                (
                    ln.line_no
                    for ln in tx.active_lines
                    if ln.original_index == original_index and ln.qty is not None
                ),
                None,
            )
        names = (
            self.catalogue.get(tx.original.items[original_index].gtin) if tx.original is not None else None
        )
        return ReturnLineAdded(
            original_index=original_index,
            qty=qty,
            merge_into=merge,
            name_zh=names.name.zh if names is not None else "",
            name_en=names.name.en if names is not None else "",
            ts=ts,
        )

    def return_line(self, original_index: int, ts: float, qty: int | None = None) -> list[LaneEvent]:
        """Take back original item `original_index`: `qty` units of a counted line (default 1), a weighed one whole."""
        tx = _need_open(self.state, "return")
        if tx.original is None or not 0 <= original_index < len(tx.original.items):
            raise _err(self.state, f"the original sale has no item {original_index}")
        return self._check([self.return_line_event(original_index, ts, qty)])

    def weight(self, weight_g: float | None, *, stable: bool, ts: float) -> list[LaneEvent]:
        """A reading of the lane scale: usually no event; `WeightTaken` when it prices the waiting line,
        `ScaleZeroed` when the pan empties after a weighing. Unstable readings never change anything."""
        if not stable or weight_g is None:
            return []
        weight_kg = weight_kg_from_g(weight_g)
        empty = weight_g <= self.rules.min_weight_g or weight_kg <= 0
        if empty:
            return [] if self.state.scale_clear else self._check([ScaleZeroed(ts=ts)])
        tx = self.state.open_transaction
        pending = tx.pending_line if tx is not None else None
        if pending is None:
            return []
        if self.rules.require_zero_between_weighings and not self.state.scale_clear:
            return []
        return self._check([WeightTaken(line_no=pending.line_no, weight_kg=weight_kg, ts=ts)])

    def set_quantity(self, line_no: int, qty: int, ts: float) -> list[LaneEvent]:
        """Set a counted line's quantity (1..99 999)."""
        if not 1 <= qty <= QTY_MAX:
            raise _err(self.state, f"quantity must be 1..{QTY_MAX} (void the line to remove it)")
        return self._check([QuantityChanged(line_no=line_no, qty=qty, ts=ts)])

    def void_line(self, line_no: int, ts: float) -> list[LaneEvent]:
        """Void one line."""
        return self._check([LineVoided(line_no=line_no, ts=ts)])

    def void_all(self, ts: float) -> list[LaneEvent]:
        """Void every line; the transaction stays open."""
        return self._check([AllVoided(ts=ts)])

    def complete(self, ts: float) -> list[LaneEvent]:
        """Complete the open transaction; [] if the last one is already completed (idempotent: see `last_payload`)."""
        tx = self.state.transaction
        if tx is not None and tx.status == "completed":
            return []
        return self._check([TransactionCompleted(ts=ts)])

    def cancel(self, ts: float) -> list[LaneEvent]:
        """Abandon the open transaction."""
        return self._check([TransactionCancelled(ts=ts)])

    def start_return(
        self, original: SaleCompleted, ts: float, *, prior_returns: Sequence[SaleReturned] = ()
    ) -> list[LaneEvent]:
        """Open a return against `original`; `prior_returns` are earlier returns of it the gateway knows."""
        for prior in prior_returns:
            if prior.original_transaction_id != original.transaction_id:
                raise _err(
                    self.state, f"return {prior.transaction_id} is not of sale {original.transaction_id}"
                )
        returned = [item for prior in prior_returns for item in prior.items]
        return self._check([self._open(ts, original=original, returned=returned)])


def stock_deltas(payload: SaleCompleted | SaleReturned, catalogue: Catalogue) -> dict[str, Decimal]:
    """Book-stock change per GTIN: a sale subtracts, a return adds back.

    Counted goods move by `qty` units. Variable-measure goods are kept in kg: a weighed line moves by its
    `weight_kg`; a price-labelled line of a variable-measure item (qty 1 at a printed price, weight unknown)
    moves by amount ÷ catalogue price per kg, rounded half-up to 1 g — an estimate, and the only one possible.
    """
    sign = Decimal(-1) if isinstance(payload, SaleCompleted) else Decimal(1)
    deltas: dict[str, Decimal] = {}
    for item in payload.items:
        catalogued = catalogue.get(item.gtin)
        if item.weight_kg is not None:
            moved = item.weight_kg
        elif catalogued is not None and catalogued.variable_measure:
            moved = (item.amount / catalogued.price).quantize(WEIGHT_STEP_KG, rounding=ROUND_HALF_UP)
        else:
            moved = Decimal(item.qty or 0)
        deltas[item.gtin] = deltas.get(item.gtin, Decimal(0)) + sign * moved
    return deltas


__all__ = [
    "AllVoided",
    "CashierSignedIn",
    "CheckoutLane",
    "ItemScanned",
    "LaneEvent",
    "LaneRules",
    "LaneState",
    "Line",
    "LineVoided",
    "MemberIdentified",
    "QuantityChanged",
    "ReturnLineAdded",
    "ScaleZeroed",
    "Transaction",
    "TransactionCancelled",
    "TransactionCompleted",
    "TransactionOpened",
    "WeightTaken",
    "apply",
    "compact",
    "event_from_json",
    "event_to_json",
    "fold",
    "stock_deltas",
    "weight_kg_from_g",
]
