"""Read models of the hub: what the store layer returns and the HQ API serves (one definition for both)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Read(BaseModel):
    model_config = ConfigDict(frozen=True)


class SeqRange(_Read):
    """An inclusive range of event seqs, e.g. missing 5..7."""

    first_seq: int
    last_seq: int


class StockItem(_Read):
    """A bin's latest applied stock (from the `stock.changed` with the highest seq)."""

    bin_id: str
    sku: str
    count: int
    weight_g: float
    safety_stock: int
    max_stock: int
    updated_ts: str


class AlertItem(_Read):
    """An alert in its furthest state (raised → acknowledged → resolved)."""

    alert_id: str
    bin_id: str
    sku: str
    kind: str
    state: str
    count: int | None
    message: str
    raised_at: str
    updated_ts: str
    acknowledged_by: str | None


class StoreRecord(_Read):
    """What the hub stores about one gateway's store; the API derives ages and staleness from it."""

    store_id: str
    gateway_id: str | None
    online: bool | None
    status_ts: str | None
    boot_id: str | None
    version: str | None
    config_version: str | None
    last_heartbeat_at: float | None
    """Hub receive time (epoch seconds), so staleness never depends on the gateway's clock."""
    heartbeat_ts: str | None
    outbox_depth: int | None
    outbox_oldest_age_s: float | None
    last_seq: int | None
    """The gateway's last assigned seq, as its latest heartbeat reports it."""
    devices_offline: int | None
    active_alerts: int
    received_seq: int | None
    """The highest seq the hub has received from the current gateway."""
    contiguous_seq: int
    """Every seq 1..contiguous_seq has been received (0 if seq 1 has not)."""
    missing_ranges: tuple[SeqRange, ...]
    applied_seq: int = 0
    """Events of the current gateway are applied in seq order up to here; later ones wait behind a hole."""
    lost_ranges: tuple[SeqRange, ...] = ()
    """Holes the hub stopped waiting for (the gateway no longer had them, or `gap_give_up_s` passed)."""


class FleetEntry(_Read):
    """One row of `GET /api/fleet`."""

    store_id: str
    gateway_id: str | None
    online: bool | None
    """From the retained status (birth/will); None until a status arrives."""
    status_ts: str | None
    last_heartbeat_at: str | None
    heartbeat_age_s: float | None
    stale: bool
    """No heartbeat for `stale_after_heartbeats × heartbeat_s` (or never)."""
    outbox_depth: int | None
    outbox_oldest_age_s: float | None
    last_seq: int | None
    received_seq: int | None
    contiguous_seq: int
    missing_ranges: list[SeqRange]
    version: str | None
    config_version: str | None
    devices_offline: int | None
    active_alerts: int
    applied_seq: int = 0
    lost_ranges: list[SeqRange] = []
    state: Literal["online", "stale", "offline"] = "stale"
    """One word for the fleet table: `offline` (the will or a graceful stop said so), `stale` (no heartbeat
    for `stale_after_s`, or never), else `online`."""
    offline_since: str | None = None
    """Hub receive time of the offline status; None while online."""
    offline_for_s: float | None = None
    devices_total: int | None = None
    """Devices in the latest heartbeat; None before the first one."""
    devices_down: list[DeviceDown] = []
    backlog_growing: bool = False
    """A `backlog_growing` HQ alert is active (docs/hq.md, "HQ alerts")."""
    hq_alerts_active: int = 0
    commissioned: bool = False
    """The hub holds a commissioning record from the store with at least one bin calibrated or bound
    (docs/hq.md, "Commissioning")."""
    commissioned_at: str | None = None
    """`generated_at` of the latest record (the gateway's clock); None before the first."""
    calibrations: int = 0
    failed_checks: int = 0
    """Calibrations whose check weighing was out of tolerance (applied anyway, `forced`)."""
    bindings: int = 0
    pick_tests: int = 0
    pick_tests_passed: int = 0


class DeviceDown(_Read):
    """A device the latest heartbeat reports offline."""

    device_id: str
    family: str | None = None
    last_error: str | None = None


class DeviceView(_Read):
    """One field device as the store's latest heartbeat reports it (docs/wire-contract.md, `DeviceHealth`)."""

    device_id: str
    family: str | None
    """`modbus`, `scale`, `scanner`, `rfid`, `ble` — or None from a gateway that predates the field."""
    online: bool
    connected: bool | None
    last_seen_age_s: float | None
    polls: int
    errors: int
    errors_by_kind: dict[str, int]
    last_error: str | None
    firmware: str | None
    serial: str | None
    battery_pct: int | None
    temperature_c: float | None


class GatewayHealth(_Read):
    """The gateway host as its latest heartbeat reports it."""

    boot_id: str
    ts: str
    """Gateway time of the sample (RFC 3339); ages elsewhere use the hub's receive time."""
    uptime_s: float
    cpu_pct: float
    mem_rss_mb: float
    disk_free_mb: float
    temperature_c: float | None
    active_alerts: int


class BacklogSample(_Read):
    """The outbox as one heartbeat reported it (the samples the backlog rule reads)."""

    heartbeat_ts: str
    received_at: str
    outbox_depth: int
    outbox_oldest_age_s: float | None


class BacklogView(_Read):
    """A store's outbox: the latest figures, whether the backlog rule fires, and the samples behind it."""

    outbox_depth: int | None
    outbox_oldest_age_s: float | None
    growing: bool
    samples: list[BacklogSample]
    """Oldest first; at most `fleet.backlog_rising_heartbeats + 1`."""


HqAlertKind = Literal["store_offline", "backlog_growing", "device_down", "outbox_quota"]


class HqAlert(_Read):
    """An HQ alert: raised once when its rule starts to hold, resolved once when it stops (docs/hq.md)."""

    alert_id: str
    store_id: str
    kind: HqAlertKind
    subject: str | None
    """The device id of a `device_down`; None for store-wide kinds."""
    active: bool
    raised_at: str
    resolved_at: str | None
    duration_s: float
    """Raised → resolved, or raised → now while active (hub clock)."""
    message: str
    """English, for logs and API users; the dashboard builds its own text from `kind` and `detail`."""
    detail: dict[str, Any]
    """What the rule saw when it raised: e.g. `cause` and `since` (offline), `outbox_depth` and
    `outbox_oldest_age_s` (backlog), `family` and `last_error` (device)."""
    resolution: str | None


class StoreDetail(_Read):
    """`GET /api/stores/{store_id}`: one store's health, devices, backlog and recent HQ alerts. Stock and
    stock alerts are `GET /api/stores/{store_id}/stock` and `…/alerts`."""

    store: FleetEntry
    gateway: GatewayHealth | None
    devices: list[DeviceView]
    backlog: BacklogView
    hq_alerts: list[HqAlert]
    """Active first, then the most recently raised; at most 50."""


class QuarantineItem(_Read):
    """A message the hub refused, kept with its reason for an operator to inspect."""

    id: int
    topic: str
    received_at: str
    reason: str
    payload: str
    payload_encoding: str
    """"utf-8" when the payload decoded as text, else "hex"."""
    payload_size: int


class GapState(_Read):
    """A gateway whose events wait behind a hole: what is missing and since when (hub receive time)."""

    store_id: str
    gateway_id: str
    applied_seq: int
    """Everything up to here is applied."""
    top_seq: int
    """The highest seq known to exist: received, or reported by a heartbeat with an empty outbox."""
    since: float
    """When this hole was first seen (epoch seconds)."""
    missing: tuple[SeqRange, ...]

    def due(self, *, now: float, timeout_s: float, window_events: int) -> bool:
        """Ask for a resend now: the hole is older than the timeout, or the newest event is beyond the window."""
        return now - self.since >= timeout_s or self.top_seq - self.applied_seq > window_events


class ApplyResult(_Read):
    """What one batch did. `applied` counts effects run in this transaction: the batch's own in-order
    events, plus `released` ones that had waited for this batch, plus `late` ones whose hole had been given
    up on; `pending` events of the batch wait behind a hole; `duplicates` were seen before."""

    applied: int
    duplicates: int
    pending: int = 0
    released: int = 0
    late: int = 0
    gap: GapState | None = None


# --- sales, members and points (hub/sales.py; docs/loyalty.md, docs/hub-api.md) --------------------------

MoneyText = Annotated[str, Field(pattern=r"^-?[0-9]+\.[0-9]{2}$", examples=["48.11"])]
"""CNY as a decimal string with exactly two places, as on the wire (docs/wire-contract.md, "Money"): never a
JSON number, which a client may read as a binary float."""


class SaleLine(_Read):
    """One receipt line, as the lane sent it."""

    gtin: str
    qty: int | None
    weight_kg: str | None
    """Decimal string with at most three places, for variable-measure goods."""
    unit_price: MoneyText
    amount: MoneyText


class SaleRecord(_Read):
    """A recorded `sale.completed`, with what its returns refunded so far."""

    transaction_id: str
    event_id: str
    """``{gateway_id}:{seq}`` of the event that carried it."""
    store_id: str
    lane: str
    cashier: str
    member_id: str | None
    total: MoneyText
    refunded: MoneyText
    ts: str
    """When the lane completed it (RFC 3339 UTC, milliseconds)."""
    local_date: str
    """Its calendar day in the loyalty time zone (Asia/Shanghai by default), YYYY-MM-DD."""
    items: list[SaleLine]


class ReturnRecord(_Read):
    """A recorded `sale.returned` (applied against its original sale)."""

    transaction_id: str
    original_transaction_id: str
    event_id: str
    store_id: str
    lane: str
    cashier: str
    refund: MoneyText
    ts: str
    local_date: str
    items: list[SaleLine]


class SaleDetail(_Read):
    """`GET /api/sales/{transaction_id}`: the sale and every return applied against it."""

    sale: SaleRecord
    returns: list[ReturnRecord]


class HeldReturn(_Read):
    """A return whose original sale the hub has not seen yet: applied when the sale arrives."""

    transaction_id: str
    original_transaction_id: str
    event_id: str
    store_id: str
    ts: str
    refund: MoneyText
    reason: str
    held_at: str


class DailySales(_Read):
    """One store's till totals for one local day: sales on the day they were made, refunds on the day (and at
    the store) they were paid out."""

    store_id: str
    day: str
    sales: int
    gross: MoneyText
    returns: int
    refunds: MoneyText
    net: MoneyText


class MemberView(_Read):
    """`GET /api/members/{member_id}`: tier and points; the tier is computed as of the request."""

    member_id: str
    tier: Literal["bronze", "silver", "gold", "platinum"]
    points: int
    """The spendable balance (never below zero)."""
    points_owed: int
    """Points a return took back after they had been spent; later earnings pay them first."""
    spend_30d_cny: MoneyText
    spend_365d_cny: MoneyText
    tier_as_of: str
    """The local date the tier and spends are computed for."""
    birth_month: int | None
    registered: bool
    """False for a member created by a sale (`members.auto_create`) who has not registered yet."""
    source: Literal["api", "sale"]
    created_at: str


class LedgerItem(_Read):
    """One ledger row: why the points changed, by how much, and its idempotency key (cause, ref)."""

    id: int
    member_id: str
    cause: str
    ref: str
    delta: int
    debt_delta: int
    sale_id: str | None
    ts: str
    detail: str


class PointsChange(_Read):
    """The outcome of a member action (register, sign-up, check-in, redemption)."""

    member: MemberView
    entries: list[LedgerItem]
    """The rows this action wrote, or, when it had happened already (`created` false), the rows it wrote then."""
    created: bool
    """False when the action was already recorded (a retry, a second check-in the same day): nothing changed."""
