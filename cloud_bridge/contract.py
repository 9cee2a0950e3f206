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

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

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


class AlertKind(StrEnum):
    """Alert kinds of the inventory rules (ARCHITECTURE.md, "The inventory engine")."""

    LOW = "low"
    OUT = "out"
    OVER = "over"
    AMBIGUOUS = "ambiguous"
    SENSOR_FAULT = "sensor_fault"


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


EVENT_DATA_MODELS: Final[dict[EventType, type[_Payload]]] = {
    EventType.STOCK_CHANGED: StockChanged,
    EventType.ALERT_RAISED: AlertData,
    EventType.ALERT_ACKNOWLEDGED: AlertData,
    EventType.ALERT_RESOLVED: AlertData,
}


class Event(_Payload):
    """One event in a batch. `id` = ``{gateway_id}:{seq}`` is the hub's idempotency key."""

    id: str
    seq: int = Field(ge=1)
    type: EventType
    ts: str
    data: dict[str, Any]

    def typed_data(self) -> StockChanged | AlertData:
        """Validate `data` against the model of this event's type."""
        model = EVENT_DATA_MODELS[self.type]
        parsed = model.model_validate(self.data)
        assert isinstance(parsed, StockChanged | AlertData)  # noqa: S101 - narrowing for mypy
        return parsed


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
    """One device's state in a heartbeat."""

    device_id: str
    online: bool
    last_seen_age_s: float | None
    polls: int
    errors: int
    last_error: str | None = None


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
