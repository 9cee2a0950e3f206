"""Read models of the hub: what the store layer returns and the HQ API serves (one definition for both)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


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


class ApplyResult(_Read):
    """What one batch did: events newly applied and events already seen."""

    applied: int
    duplicates: int
