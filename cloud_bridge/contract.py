"""The MQTT wire contract between a store gateway and the hub: topics and versioned payloads.

One module both ends import, so a field cannot drift between publisher and consumer. `docs/wire-contract.md`
documents every payload; change both together, and bump `SCHEMA_*` on any incompatible change.

Topic root ``shelfgate/v1/stores/{store_id}/``::

    status        gw → hub  QoS 1, retained   birth {"state": "online", …}; the MQTT will says "offline"
    events        gw → hub  QoS 1             EventBatch: events first_seq..last_seq, gap-free per gateway
    health        gw → hub  QoS 1             Heartbeat every `bridge.heartbeat_s`
    cmd/{name}    hub → gw  QoS 1             Command {id, issued_at, args}
    cmd-result    gw → hub  QoS 1             CommandResult {id, ok, error?, result?}

Delivery is at-least-once on the wire (the gateway deletes outbox rows only after PUBACK) and exactly-once in
effect (the hub applies each event `id` = ``{gateway_id}:{seq}`` at most once).
"""

from __future__ import annotations

import builtins
import re
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Annotated, Any, Final, Literal, Self, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    model_validator,
)
from stdnum import ean

TOPIC_PREFIX: Final = "shelfgate/v1/stores"
SCHEMA_EVENTS: Final = "shelfgate.events/1"
SCHEMA_STATUS: Final = "shelfgate.status/1"
SCHEMA_HEALTH: Final = "shelfgate.health/1"


def store_root(store_id: str) -> str:
    """Topic root of one store."""
    return f"{TOPIC_PREFIX}/{store_id}"


def status_topic(store_id: str) -> str:
    """Retained birth/will topic."""
    return f"{store_root(store_id)}/status"


def events_topic(store_id: str) -> str:
    """Event batches."""
    return f"{store_root(store_id)}/events"


def health_topic(store_id: str) -> str:
    """Heartbeats."""
    return f"{store_root(store_id)}/health"


def command_topic(store_id: str, name: str) -> str:
    """A command from the hub to one store."""
    return f"{store_root(store_id)}/cmd/{name}"


def command_result_topic(store_id: str) -> str:
    """Command outcomes from the gateway."""
    return f"{store_root(store_id)}/cmd-result"


ALL_STORES_EVENTS: Final = f"{TOPIC_PREFIX}/+/events"
ALL_STORES_STATUS: Final = f"{TOPIC_PREFIX}/+/status"
ALL_STORES_HEALTH: Final = f"{TOPIC_PREFIX}/+/health"
ALL_STORES_CMD_RESULT: Final = f"{TOPIC_PREFIX}/+/cmd-result"


def store_id_from_topic(topic: str) -> str:
    """`shelfgate/v1/stores/{store_id}/…` → store_id; ValueError for a foreign topic."""
    parts = topic.split("/")
    if len(parts) < 5 or "/".join(parts[:3]) != TOPIC_PREFIX or not parts[3]:
        raise ValueError(f"not a shelfgate store topic: {topic!r}")
    return parts[3]


def utc_now() -> datetime:
    """Aware UTC now; every timestamp on the wire is RFC 3339 UTC."""
    return datetime.now(UTC)


def rfc3339(ts: float | datetime) -> str:
    """Format epoch seconds or an aware datetime as RFC 3339 UTC with milliseconds, e.g. 2026-11-23T10:00:00.123Z."""
    dt = ts if isinstance(ts, datetime) else datetime.fromtimestamp(ts, UTC)
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class EventType(StrEnum):
    """Event types a gateway emits; each has a typed `data` model below."""

    STOCK_CHANGED = "stock.changed"
    ALERT_RAISED = "alert.raised"
    ALERT_ACKNOWLEDGED = "alert.acknowledged"
    ALERT_RESOLVED = "alert.resolved"
    SALE_COMPLETED = "sale.completed"
    SALE_RETURNED = "sale.returned"
    FACING_CHANGED = "facing.changed"
    COMMISSIONING = "commissioning"
    STOCKTAKE_COMPLETED = "stocktake.completed"
    STOCK_RECEIVED = "stock.received"


class AlertKind(StrEnum):
    """Alert kinds of the inventory rules (ARCHITECTURE.md, "The inventory engine")."""

    LOW = "low"
    OUT = "out"
    OVER = "over"
    AMBIGUOUS = "ambiguous"
    SENSOR_FAULT = "sensor_fault"
    MISPLACED = "misplaced"
    """A weighed bin's weight changed by a non-whole number of items while its camera saw the facing unchanged:
    goods that do not belong there (issue #8, docs/cameras.md "Fusion with weight")."""
    PREDICTED_OUT = "predicted_out"
    """Issue #6 part 7: the bin will be empty within the forecast horizon at its recent pick rate."""
    LOSS_SUSPECTED = "loss_suspected"
    """Issue #6 part 5 (`loss.suspected`): a tagged item in an RFID exit zone that was not sold."""
    SHRINK_SUSPECTED = "shrink_suspected"
    """Issue #6 part 6 (`shrink.suspected`): shelf picks of a SKU not explained by sales or put-backs."""


class AlertState(StrEnum):
    """Lifecycle: raised → acknowledged → resolved (resolved may also follow raised directly)."""

    RAISED = "raised"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


ALERT_STATE_RANK: Final = {AlertState.RAISED: 0, AlertState.ACKNOWLEDGED: 1, AlertState.RESOLVED: 2}
"""States only move forward; an apply that sees a lower rank than stored keeps the stored state."""


class StockChanged(_Payload):
    """A bin's shelf count changed (a counted pick/put, or an absolute reconciliation)."""

    bin_id: str
    sku: str
    count: int = Field(ge=0)
    delta: int
    cause: Literal["pick", "put", "reconcile", "initial"]
    weight_g: float
    safety_stock: int
    max_stock: int


class AlertData(_Payload):
    """Payload of alert.raised / alert.acknowledged / alert.resolved."""

    alert_id: str
    bin_id: str
    sku: str
    kind: AlertKind
    state: AlertState
    count: int | None = None
    message: str = ""
    raised_at: str
    by: str | None = None
    """Who acknowledged (for alert.acknowledged); None for automatic transitions."""


# ---- Sales: sale.completed / sale.returned (issue #6 part 2; docs/wire-contract.md "Sales") -----------------

CNY_FEN: Final = Decimal("0.01")
"""Money on the wire is CNY as a `Decimal` with exactly two places (fen), serialised as a JSON *string*
("12.50"). Never a float: a binary float cannot hold most fen values (0.1 + 0.2 ≠ 0.3), so float sums drift
by a fen and the hub's totals would disagree with the lane's receipt; and a JSON number may be read back as
a float by any consumer."""
MONEY_MAX_CNY: Final = Decimal("9999999999.99")
WEIGHT_MAX_KG: Final = Decimal("99999.999")
QTY_MAX: Final = 99_999
SALE_ITEMS_MAX: Final = 1000

_MONEY_TEXT: Final = re.compile(r"[0-9]{1,10}(?:\.[0-9]{1,2})?")
_WEIGHT_TEXT: Final = re.compile(r"[0-9]{1,5}(?:\.[0-9]{1,3})?")
_GTIN14_TEXT: Final = re.compile(r"[0-9]{14}")
_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"


def _decimal_field(
    value: object, *, what: str, text: re.Pattern[str], places: int, maximum: Decimal, example: str
) -> Decimal:
    """Strict decimal intake: a digits-only string (or an exact Decimal/int from Python), never a float."""
    if isinstance(value, bool | float):
        raise ValueError(  # noqa: TRY004 - pydantic reports a ValueError as a validation error, a TypeError not
            f"{what} must be a decimal string such as {example!r}, not a number: binary floats lose cents"
        )
    if isinstance(value, str):
        if not text.fullmatch(value):
            raise ValueError(
                f"{what} must be a decimal string such as {example!r} (digits, at most {places} decimal"
                f" places, no sign, exponent or spaces), got {value!r}"
            )
        number = Decimal(value)
    elif isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, Decimal):
        number = value
    else:
        raise ValueError(f"{what} must be a decimal string such as {example!r}, got {type(value).__name__}")  # noqa: TRY004 - as above
    if not number.is_finite() or number.is_signed():
        raise ValueError(f"{what} must be a finite, non-negative decimal, got {number}")
    if number > maximum:
        raise ValueError(f"{what} {number} exceeds {maximum}")
    step = Decimal(1).scaleb(-places)
    if number.quantize(step) != number:
        raise ValueError(f"{what} {number} has more than {places} decimal places")
    return number.quantize(step)


def _money(value: object) -> Decimal:
    return _decimal_field(
        value, what="money (CNY)", text=_MONEY_TEXT, places=2, maximum=MONEY_MAX_CNY, example="12.50"
    )


def _weight(value: object) -> Decimal:
    weight = _decimal_field(
        value,
        what="weight_kg",
        text=_WEIGHT_TEXT,
        places=3,
        maximum=WEIGHT_MAX_KG,
        example="0.456",
    )
    if weight == 0:
        raise ValueError("weight_kg must be > 0 (a weighed line with no weight is not a sale)")
    return weight


def _check_gtin14(value: str) -> str:
    """14 ASCII digits with a valid GS1 mod-10 check digit (GS1 General Specifications §7.9.1)."""
    if not _GTIN14_TEXT.fullmatch(value):
        raise ValueError(
            f"gtin must be 14 digits (GTIN-14: pad GTIN-8/12/13 with leading zeros), got {value!r}"
        )
    if not ean.is_valid(value):
        raise ValueError(
            f"gtin {value} has a wrong check digit (expected {ean.calc_check_digit(value[:-1])})"
        )
    return value


def parse_rfc3339(value: str) -> datetime:
    """RFC 3339 text with an offset (``Z`` or ``±hh:mm``) → aware datetime; ValueError for a naive or bad one."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"not an RFC 3339 timestamp (e.g. 2026-11-11T02:15:00.000Z): {value!r}") from exc
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp {value!r} has no UTC offset; a sale must be placeable on a local day")
    return parsed


def _check_ts(value: str) -> str:
    parse_rfc3339(value)
    return value


Money = Annotated[Decimal, BeforeValidator(_money)]
"""CNY, ≥ 0, exactly two places on the wire ("12.50"); see `CNY_FEN` for why not float."""
WeightKg = Annotated[Decimal, BeforeValidator(_weight)]
"""kg, > 0, a string on the wire ("0.456") with at most three places (1 g): the resolution of retail scales
and of GS1 AI 3103 (net weight in kg, three decimals)."""
Gtin14 = Annotated[str, AfterValidator(_check_gtin14)]
Identifier = Annotated[str, Field(pattern=_ID_PATTERN)]
"""1–64 chars of ``A-Z a-z 0-9 . _ : -``, starting with a letter or digit."""
Rfc3339 = Annotated[str, AfterValidator(_check_ts)]


def line_amount(unit_price: Decimal, measure: int | Decimal) -> Decimal:
    """unit_price × qty (or × weight_kg), rounded half-up to the fen (四舍五入), the rule the lane prints."""
    return (unit_price * measure).quantize(CNY_FEN, rounding=ROUND_HALF_UP)


class SaleItem(_Payload):
    """One receipt line: counted goods carry `qty`, variable-measure goods `weight_kg` — exactly one.

    `unit_price` is CNY per unit (counted) or per kg (weighed); `amount` = `line_amount(unit_price, qty or
    weight_kg)`. A price-embedded in-store label (GS1 prefix 2x, price in the code) is a counted line, qty 1
    at the printed price.
    """

    gtin: Gtin14
    qty: int | None = Field(default=None, ge=1, le=QTY_MAX, strict=True)
    weight_kg: WeightKg | None = None
    unit_price: Money
    amount: Money

    @property
    def measure(self) -> int | Decimal:
        """The quantity the price applies to: `qty` or `weight_kg`."""
        if self.qty is not None:
            return self.qty
        assert self.weight_kg is not None  # noqa: S101 - guaranteed by the validator below
        return self.weight_kg

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.qty is None) == (self.weight_kg is None):
            raise ValueError(
                f"gtin {self.gtin}: give exactly one of qty (counted goods) or weight_kg (variable-measure goods)"
            )
        expected = line_amount(self.unit_price, self.measure)
        if self.amount != expected:
            by = f"qty {self.qty}" if self.qty is not None else f"weight_kg {self.weight_kg}"
            raise ValueError(
                f"gtin {self.gtin}: amount {self.amount} ≠ unit_price {self.unit_price} × {by} = {expected}"
                " (rounded half-up to 0.01 CNY)"
            )
        return self


def _check_sum(items: list[SaleItem], total: Decimal, what: str) -> None:
    summed = sum((item.amount for item in items), Decimal("0.00"))
    if summed != total:
        raise ValueError(f"{what} {total} ≠ sum of item amounts {summed} ({len(items)} items)")


class SaleCompleted(_Payload):
    """Payload of `sale.completed`: one completed checkout transaction at a lane (issue #6 part 2).

    `transaction_id` is fleet-unique (the gateway prefixes it with its store), so a return in another store
    can reference it and the hub can key sales by it. `member_id` is the scanned member number, absent for
    anonymous sales. `ts` is when the lane completed the transaction.
    """

    transaction_id: Identifier
    lane: Identifier
    cashier: Identifier
    member_id: Identifier | None = None
    items: list[SaleItem] = Field(min_length=1, max_length=SALE_ITEMS_MAX)
    total: Money
    ts: Rfc3339

    @model_validator(mode="after")
    def _total_matches(self) -> Self:
        _check_sum(self.items, self.total, "total")
        return self


class SaleReturned(_Payload):
    """Payload of `sale.returned`: goods of one earlier sale brought back, fully or in part.

    `transaction_id` is the return's own id (a sale can be returned in several parts; each is applied once);
    `original_transaction_id` is the sale. `items` are the returned lines at the price paid (same rules as a
    sale line), `refund_total` their sum. Whether they fit within what the sale sold is checked at the hub,
    which has the original (`hub.loyalty.check_return`).
    """

    transaction_id: Identifier
    original_transaction_id: Identifier
    lane: Identifier
    cashier: Identifier
    items: list[SaleItem] = Field(min_length=1, max_length=SALE_ITEMS_MAX)
    refund_total: Money
    ts: Rfc3339

    @model_validator(mode="after")
    def _refund_matches(self) -> Self:
        if self.transaction_id == self.original_transaction_id:
            raise ValueError(f"a return needs its own transaction_id, not the sale's ({self.transaction_id})")
        _check_sum(self.items, self.refund_total, "refund_total")
        return self


# ---- Cameras: facing.changed (issue #8; docs/wire-contract.md "Cameras") ------------------------------------


class FacingChanged(_Payload):
    """Payload of `facing.changed`: a camera's verdict on one facing (ROI) changed.

    Ids, a state and a score — never pixels (frames stay on the gateway). `state` `unknown` means the camera
    cannot tell right now (no reference, offline, moved, hidden by shoppers too long); `score` is the fill
    score in [0, 1] of the last judged frame (1 = looks like the stocked reference), null for `unknown`.
    `bin_id` is null for a facing bound only to a SKU. `reason`: judged, camera_moved, camera_offline,
    not_seen, reference, roi_changed (a re-drawn facing restarts as unknown), roi_removed.
    """

    camera_id: Identifier
    roi_id: Identifier
    sku: str = Field(min_length=1, max_length=32)
    bin_id: str | None = None
    state: Literal["ok", "low", "empty", "unknown"]
    score: float | None = Field(default=None, ge=0.0, le=1.0)
    reason: str = Field(default="judged", max_length=32)


# ---- Commissioning: commissioning (issue #7 part 3; docs/wire-contract.md "Commissioning") -------------------

_Name = Annotated[str, Field(min_length=1, max_length=64)]
_Grams = Annotated[float, Field(allow_inf_nan=False)]


class CommissionedDevice(_Payload):
    """A device as the gateway saw it when the record was written."""

    id: _Name
    family: str | None = Field(default=None, max_length=32)
    online: bool


class CalibrationValues(_Payload):
    """One side of a calibration diff: grams = (value - zero) * span_g_per_unit (edge/config.py `Calibration`)."""

    zero: _Grams
    span_g_per_unit: _Grams = Field(gt=0)
    calibrated_at: str | None = Field(default=None, max_length=40)


class CalibrationCheck(_Payload):
    """The wizard's check weighing: a known mass re-weighed with the new calibration; `ok` = within tolerance."""

    mass_g: _Grams
    measured_g: _Grams
    error_g: _Grams
    error_pct: _Grams
    tolerance_g: _Grams = Field(ge=0)
    ok: bool


class CommissionedCalibration(_Payload):
    """A bin's latest applied calibration. `forced`: applied although the check failed."""

    before: CalibrationValues
    after: CalibrationValues
    check: CalibrationCheck | None = None
    forced: bool = False
    installer: _Name
    ts: Rfc3339


class BindingValues(_Payload):
    """One side of a binding diff."""

    sku: str = Field(min_length=1, max_length=32)
    unit_weight_g: _Grams | None = None


class BoundItem(_Payload):
    """The catalogue item a bin was bound to, as the catalogue had it then (issue #7 part 3)."""

    gtin: str = Field(pattern=r"^[0-9]{14}$", description="GTIN-14")
    name_zh: str = Field(min_length=1, max_length=200)
    name_en: str = Field(min_length=1, max_length=200)
    unit_weight_g: _Grams | None = Field(default=None, gt=0, description="the catalogue's unit weight")
    unit_weight_spread_g: _Grams | None = Field(default=None, ge=0)


class CommissionedBinding(_Payload):
    """A bin's latest product binding; `item` when the store has a catalogue (bound by scan or typed code)."""

    before: BindingValues
    after: BindingValues
    installer: _Name
    ts: Rfc3339
    item: BoundItem | None = None
    source: str | None = Field(default=None, max_length=64, description="`typed` or `scan:{scanner id}`")


class CommissionedPickTest(_Payload):
    """A bin's latest pick test ("take one item": the first count change must be exactly −1)."""

    state: Literal["waiting", "passed", "failed"]
    count_before: int
    count_after: int | None = None
    installer: _Name
    started_at: str | None = Field(default=None, max_length=40)
    detail: str = Field(default="", max_length=500)
    ts: Rfc3339


class Commissioning(_Payload):
    """Payload of `commissioning`: the store's whole commissioning record as the gateway last wrote it.

    A snapshot, not a delta: each one replaces the previous, so the hub keeps the one with the latest
    `generated_at` and redelivery or reordering cannot roll it back. Per bin, the latest calibration, binding
    and pick test (keys are bin ids). Ids and figures only — no frames, no raw samples.
    """

    store_id: _Name
    gateway_id: _Name
    generated_at: Rfc3339
    installers: list[_Name] = Field(default_factory=list, max_length=1000)
    devices: list[CommissionedDevice] = Field(default_factory=list, max_length=10_000)
    calibrations: dict[str, CommissionedCalibration] = Field(default_factory=dict, max_length=10_000)
    bindings: dict[str, CommissionedBinding] = Field(default_factory=dict, max_length=10_000)
    tests: dict[str, CommissionedPickTest] = Field(default_factory=dict, max_length=10_000)

    @property
    def failed_checks(self) -> int:
        """Calibrations whose check weighing was out of tolerance (applied anyway with `forced`)."""
        return sum(1 for c in self.calibrations.values() if c.check is not None and not c.check.ok)

    @property
    def tests_passed(self) -> int:
        """Bins whose latest pick test passed."""
        return sum(1 for t in self.tests.values() if t.state == "passed")


# --- store workflows: stocktake and receiving (issue #6; docs/store-workflows.md) ---------------------------

RECEIVED_QTY_MAX: Final = 99_999_999
"""AI 30 / AI 37 carry up to 8 digits (GS1 General Specifications §3.6.6, §3.6.7)."""

_SIGNED_MONEY_TEXT: Final = re.compile(r"-?[0-9]{1,10}(?:\.[0-9]{1,2})?")


def _signed_money(value: object) -> Decimal:
    """A signed CNY amount: a decimal string ("-3.00") or an exact Decimal/int, never a float."""
    if isinstance(value, bool | float):
        raise ValueError(  # noqa: TRY004 - pydantic reports a ValueError as a validation error
            "money (CNY) must be a decimal string such as '-3.00', not a number: binary floats lose cents"
        )
    if isinstance(value, str):
        if not _SIGNED_MONEY_TEXT.fullmatch(value):
            raise ValueError(f"money (CNY) must be a decimal string such as '-3.00', got {value!r}")
        number = Decimal(value)
    elif isinstance(value, int | Decimal):
        number = Decimal(value)
    else:
        raise ValueError(f"money (CNY) must be a decimal string, got {type(value).__name__}")  # noqa: TRY004
    if not number.is_finite() or number.quantize(Decimal("0.01")) != number:
        raise ValueError(f"money (CNY) {number} must be finite with at most 2 decimal places")
    return number.quantize(Decimal("0.01"))


SignedMoney = Annotated[Decimal, BeforeValidator(_signed_money), PlainSerializer(str, return_type=str)]
"""CNY with a sign, two places on the wire ("-3.00")."""


Sku = Annotated[str, Field(min_length=1, max_length=32)]
"""A bin's SKU: a GTIN-14 or a store SKU alias (edge/config.py `Bin.sku`)."""


class StocktakeLine(_Payload):
    """One SKU of the variance report."""

    sku: Sku
    expected: int
    """Book stock when the session started (may be below zero: sales ahead of a missed delivery)."""
    counted: int = Field(ge=0)
    variance: int
    """counted − expected (negative: shrink)."""
    unit_price: Money | None = None
    value_variance: SignedMoney | None = None
    """variance × unit price; null for a variable-measure SKU or one not in the catalogue."""


class StocktakeAdjustment(_Payload):
    """A book-stock change applied on confirmation: per bin when the counts named it, else per SKU."""

    sku: Sku
    bin_id: str | None = None
    expected: int
    counted: int = Field(ge=0)
    delta: int


class StocktakeCompleted(_Payload):
    """`stocktake.completed`: an area's count was confirmed and book stock adjusted by `book_deltas`."""

    session_id: str = Field(min_length=1, max_length=64)
    area: str = Field(min_length=1, max_length=64)
    bins: list[str] = Field(min_length=1)
    started_at: Rfc3339
    confirmed_at: Rfc3339
    by: str | None = Field(default=None, max_length=64)
    counts: int = Field(ge=0, description="count scans that were not voided")
    lines: list[StocktakeLine]
    adjustments: list[StocktakeAdjustment]
    book_deltas: dict[str, int]
    """Per SKU, the change applied to book stock (zeros left out)."""
    units_short: int = Field(ge=0)
    units_over: int = Field(ge=0)
    value_variance: SignedMoney


class ReceivedLine(_Payload):
    """One booked scan line: `qty` × `gtin`, from pallet `sscc` when it came on one."""

    gtin: Gtin14
    qty: int = Field(ge=1, le=RECEIVED_QTY_MAX)
    sscc: str | None = Field(default=None, pattern=r"^[0-9]{18}$")


class ReceivedTotal(_Payload):
    """Units received per GTIN (what book stock gained)."""

    gtin: Gtin14
    qty: int = Field(ge=1)


class StockReceived(_Payload):
    """`stock.received`: a delivery was committed; book stock gained `totals`."""

    receipt_id: str = Field(min_length=1, max_length=64)
    lines: list[ReceivedLine] = Field(min_length=1)
    totals: list[ReceivedTotal] = Field(min_length=1)
    ts: Rfc3339
    by: str | None = Field(default=None, max_length=64)
    delivery_note: str | None = Field(default=None, max_length=200)
    """The delivery note's name, when pallets were booked through one."""


EventData = (
    StockChanged
    | AlertData
    | SaleCompleted
    | SaleReturned
    | FacingChanged
    | Commissioning
    | StocktakeCompleted
    | StockReceived
)
"""What `Event.typed_data()` returns; narrow with isinstance or `Event.data_as`."""

EVENT_DATA_MODELS: Final[dict[EventType, type[_Payload]]] = {
    EventType.STOCK_CHANGED: StockChanged,
    EventType.ALERT_RAISED: AlertData,
    EventType.ALERT_ACKNOWLEDGED: AlertData,
    EventType.ALERT_RESOLVED: AlertData,
    EventType.SALE_COMPLETED: SaleCompleted,
    EventType.SALE_RETURNED: SaleReturned,
    EventType.FACING_CHANGED: FacingChanged,
    EventType.COMMISSIONING: Commissioning,
    EventType.STOCKTAKE_COMPLETED: StocktakeCompleted,
    EventType.STOCK_RECEIVED: StockReceived,
}


_P = TypeVar("_P", bound=_Payload)


class Event(_Payload):
    """One event in a batch. `id` = ``{gateway_id}:{seq}`` is the hub's idempotency key."""

    id: str
    seq: int = Field(ge=1)
    type: EventType
    ts: str
    data: dict[str, Any]

    def typed_data(self) -> EventData:
        """Validate `data` against the model of this event's type."""
        model = EVENT_DATA_MODELS[self.type]
        parsed = model.model_validate(self.data)
        assert isinstance(parsed, EventData)  # noqa: S101 - narrowing for mypy
        return parsed

    def data_as(self, model: builtins.type[_P]) -> _P:
        """`typed_data()` for a caller that expects one model; ValueError if this event's type has another."""
        expected = EVENT_DATA_MODELS[self.type]
        if model is not expected:
            raise ValueError(
                f"event {self.id} is {self.type.value}, whose data is {expected.__name__}, not {model.__name__}"
            )
        return model.model_validate(self.data)


class EventBatch(_Payload):
    """Payload of the `events` topic: contiguous events first_seq..last_seq of one gateway."""

    schema_: Literal["shelfgate.events/1"] = Field(default=SCHEMA_EVENTS, alias="schema")
    store_id: str
    gateway_id: str
    first_seq: int = Field(ge=1)
    last_seq: int = Field(ge=1)
    events: list[Event] = Field(min_length=1)

    def to_json(self) -> bytes:
        """Wire form (uses the `schema` alias)."""
        return self.model_dump_json(by_alias=True).encode()


class Status(_Payload):
    """Retained on `status`: birth when the uplink connects, and the will the broker publishes on loss."""

    schema_: Literal["shelfgate.status/1"] = Field(default=SCHEMA_STATUS, alias="schema")
    state: Literal["online", "offline"]
    gateway_id: str
    boot_id: str
    version: str
    config_version: str
    ts: str

    def to_json(self) -> bytes:
        """Wire form (uses the `schema` alias)."""
        return self.model_dump_json(by_alias=True).encode()


class DeviceHealth(_Payload):
    """One device's state in a heartbeat.

    The fields after `last_error` are optional (default null) so a heartbeat without them — from a gateway
    that predates them — still validates. `polls` counts the device's exchanges in its family's terms: Modbus
    polls, scale requests, scanner lines, RFID frames, BLE adverts.
    """

    device_id: str
    online: bool
    last_seen_age_s: float | None
    polls: int
    errors: int
    last_error: str | None = None
    family: str | None = None
    """`modbus`, `scale`, `scanner`, `rfid`, `ble` or `camera` (open set: a new family is not a schema
    change)."""
    connected: bool | None = None
    """Transport up (port open, adapter scanning) — a device can be connected and still silent."""
    errors_by_kind: dict[str, int] | None = None
    """`errors` broken down by the driver's counter names, e.g. `{"timeouts": 3, "crc_errors": 1}`."""
    firmware: str | None = None
    serial: str | None = None
    """Serial number where the protocol reports one (MT-SICS `I4`)."""
    battery_pct: int | None = None
    temperature_c: float | None = None


class Heartbeat(_Payload):
    """Payload of `health`."""

    schema_: Literal["shelfgate.health/1"] = Field(default=SCHEMA_HEALTH, alias="schema")
    gateway_id: str
    boot_id: str
    ts: str
    uptime_s: float
    cpu_pct: float
    mem_rss_mb: float
    disk_free_mb: float
    temperature_c: float | None
    outbox_depth: int
    outbox_oldest_age_s: float | None
    last_seq: int
    devices: list[DeviceHealth]
    active_alerts: int
    outbox_alarm: str | None = None
    """Set while an outbox disk quota is hit (edge/outbox_quota.py): what was hit and what the gateway does
    about it. Optional, so heartbeats from gateways that predate it still validate."""

    def to_json(self) -> bytes:
        """Wire form (uses the `schema` alias)."""
        return self.model_dump_json(by_alias=True).encode()


class Command(_Payload):
    """Payload of `cmd/{name}`."""

    id: str = Field(min_length=1, max_length=128)
    issued_at: str
    args: dict[str, Any] = Field(default_factory=dict)


class CommandResult(_Payload):
    """Payload of `cmd-result`."""

    id: str
    ok: bool
    error: str | None = None
    result: dict[str, Any] | None = None
