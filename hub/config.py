"""Hub configuration: one YAML file validated once, at start, into frozen typed models (STYLE.md rule 11).

Deliberately independent of `edge.config` (the hub knows only the wire contract). Errors name the key path,
e.g. ``hub.yaml: broker.port: Input should be less than 65536``; bad config fails start.

`database` is a URL (docs/hub-storage.md): ``sqlite:///relative/file.db``, ``sqlite:////absolute/file.db`` or
``postgresql://user@host:5432/dbname``. A bare path still means a SQLite file (the form older configs use).
A password in the URL is refused: secrets never live in the config file — libpq reads ``PGPASSWORD`` or
``~/.pgpass`` (PostgreSQL docs, "The Password File").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from hub.loyalty import LoyaltyRules

SQLITE_SCHEME: Final = "sqlite"
POSTGRESQL_SCHEME: Final = "postgresql+psycopg"
"""The one PostgreSQL driver the hub uses (psycopg 3); ``postgresql://`` and ``postgres://`` map to it."""
_POSTGRESQL_ALIASES: Final = frozenset({"postgresql", "postgres", "postgresql+psycopg"})


def normalize_database_url(value: str) -> str:
    """A config `database` value → the canonical URL; ValueError says what is wrong.

    SQLite: ``sqlite:///`` + the file path (relative, or absolute with a fourth slash). PostgreSQL:
    ``postgresql+psycopg://…`` without a password.
    """
    text = value.strip()
    if not text:
        raise ValueError("empty database URL")
    if "://" not in text:
        return f"{SQLITE_SCHEME}:///{text}"
    try:
        url = make_url(text)
    except ArgumentError as exc:
        raise ValueError(f"not a database URL: {exc}") from exc
    if url.drivername == SQLITE_SCHEME:
        if not url.database or url.database == ":memory:":
            raise ValueError(
                "sqlite needs a file (sqlite:///path/to/hub.db); in memory everything is lost on exit"
            )
        return f"{SQLITE_SCHEME}:///{url.database}"
    if url.drivername in _POSTGRESQL_ALIASES:
        if url.password is not None:
            raise ValueError(
                "the URL holds a password; secrets never live in the config file: use PGPASSWORD or ~/.pgpass"
            )
        if not url.database:
            raise ValueError("postgresql needs a database name: postgresql://user@host:5432/dbname")
        return url.set(drivername=POSTGRESQL_SCHEME).render_as_string(hide_password=False)
    raise ValueError(
        f"unsupported database {url.drivername!r}: use sqlite:///path or postgresql://user@host:port/dbname"
    )


def sqlite_file(url: str) -> Path | None:
    """The file of a canonical SQLite URL, or None for another engine."""
    parsed: URL = make_url(url)
    if parsed.drivername != SQLITE_SCHEME or parsed.database is None:
        return None
    return Path(parsed.database)


def redacted(url: str) -> str:
    """The URL as logs may show it (a password, should one come from elsewhere, masked)."""
    return make_url(url).render_as_string(hide_password=True)


class HubConfigError(Exception):
    """The hub config file is missing, not YAML, or fails validation; the message names the key path."""

    def __init__(self, source: str, key_path: str, reason: str) -> None:
        self.source = source
        self.key_path = key_path
        self.reason = reason
        where = f"{source}: {key_path}" if key_path else source
        super().__init__(f"{where}: {reason}")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BrokerConfig(_Frozen):
    """Where the hub subscribes. A stable `client_id` plus a persistent session lets the broker queue QoS 1
    messages while the hub restarts (MQTT 3.1.1 §3.1.2.4, Clean Session = 0)."""

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=1883, gt=0, lt=65536)
    keepalive_s: int = Field(default=30, ge=5, le=65535)
    client_id: str | None = Field(default=None, min_length=1, max_length=64)
    reconnect_max_s: float = Field(default=30.0, gt=0, le=600)
    ca_file: Path | None = Field(default=None, description="CA certificate: TLS on (docs/security.md)")
    cert_file: Path | None = Field(
        default=None, description="the hub's client certificate (`shelfgate pki issue-hub`)"
    )
    key_file: Path | None = Field(default=None, description="its private key (mode 0600)")


class ApiConfig(_Frozen):
    """The HQ API listener; port 0 lets the kernel pick a free port (tests, demo)."""

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=8800, ge=0, lt=65536)


class IngestConfig(_Frozen):
    """How the workers of one fleet share the store topics and keep each store's events in order.

    Every worker of a fleet uses the same `share_group`: the broker hands each `events`, `health` and
    `cmd-result` message to ONE member of the group (MQTT 5.0 §4.8.2 shared subscriptions, which Mosquitto
    ≥ 1.6 also offers to 3.1.1 clients). `status` is subscribed by every worker (see `hub.ingest`). `null`
    subscribes plainly — for a broker without shared subscriptions, with one worker only.

    Ordering: events are applied in `seq` order per gateway. One that arrives ahead of a hole waits in the
    database (`events.applied_at` NULL) until the hole fills; a hole older than `gap_timeout_s`, or more than
    `reorder_window_events` seqs behind the newest event, is asked for with `cmd/resend`.
    """

    share_group: str | None = Field(default="hub", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    reorder_window_events: int = Field(default=1000, ge=1, le=1_000_000)
    gap_timeout_s: float = Field(default=2.0, gt=0, le=3600)
    gap_check_s: float = Field(
        default=1.0, gt=0, le=600, description="how often a worker sweeps for old holes"
    )
    resend_retry_s: float = Field(
        default=60.0, gt=0, le=86400, description="re-publish an unanswered resend (same id) after this"
    )
    resend_min_interval_s: float = Field(
        default=10.0,
        ge=0,
        le=86400,
        description="after an answer, the next request for the gateway waits this",
    )
    gap_give_up_s: float = Field(
        default=3600.0,
        gt=0,
        le=30 * 86400,
        description="a hole still open after this is recorded as lost and the events after it are applied",
    )


class FleetConfig(_Frozen):
    """Fleet health rules and HQ alert thresholds (docs/hq.md). Seconds are hub receive times, never a
    gateway's clock. Tests and demos shrink them to seconds; production keeps the defaults."""

    offline_alert_after_s: float = Field(
        default=300.0,
        gt=0,
        le=7 * 86400,
        description="raise `store_offline` once a store has been offline (will) or silent this long",
    )
    backlog_max_age_s: float = Field(
        default=600.0,
        gt=0,
        le=30 * 86400,
        description="`backlog_growing` when the oldest unsent event is older than this in two heartbeats"
        " running and did not get younger",
    )
    backlog_rising_heartbeats: int = Field(
        default=3,
        ge=1,
        le=100,
        description="…or when the outbox depth rose at each of this many heartbeats in a row",
    )
    backlog_min_depth: int = Field(
        default=50, ge=1, description="a rising outbox below this depth is a burst, not a backlog"
    )
    device_startup_grace_s: float = Field(
        default=60.0,
        ge=0,
        le=3600,
        description="`device_down` is not raised for a device the gateway has not heard from yet while the"
        " gateway has been up less than this (its first heartbeats come before the first poll)",
    )
    evaluate_every_s: float = Field(
        default=5.0, gt=0, le=3600, description="how often each worker re-evaluates the HQ alert rules"
    )
    resolved_alerts_kept_days: float = Field(
        default=90.0, gt=0, le=3650, description="resolved HQ alerts older than this are deleted"
    )


class MembersConfig(_Frozen):
    """Membership intake (docs/loyalty.md). Every worker of a fleet must use the same `members` and `loyalty`
    sections: whichever worker applies a sale applies these rules."""

    auto_create: bool = Field(
        default=True,
        description="a sale with an unknown member_id creates the member (source 'sale'); false: the sale is"
        " stored, its spend counts once the member registers, but it earns no points",
    )


class HubConfig(_Frozen):
    """Everything the hub needs to start. `database` is a canonical URL (`normalize_database_url`); a
    relative SQLite path is resolved against the config file's directory by `load_hub_config`."""

    hub_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    database: str
    database_pool_size: int = Field(
        default=4, ge=1, le=64, description="PostgreSQL connections (and DB threads) per worker"
    )
    broker: BrokerConfig = BrokerConfig()
    api: ApiConfig = ApiConfig()
    heartbeat_s: float = Field(default=30.0, gt=0, description="heartbeat period the gateways are set to")
    stale_after_heartbeats: int = Field(
        default=3, ge=1, description="missed heartbeats before a store is stale"
    )

    ingest: IngestConfig = IngestConfig()
    members: MembersConfig = MembersConfig()
    loyalty: LoyaltyRules = LoyaltyRules()
    """Points and tier rules (hub/loyalty.py; the defaults are DOMAIN.md's)."""
    fleet: FleetConfig = FleetConfig()

    @field_validator("database", mode="before")
    @classmethod
    def _database_url(cls, value: Any) -> Any:
        if isinstance(value, Path):
            value = str(value)
        if isinstance(value, str):
            return normalize_database_url(value)
        return value

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file, or None when the hub runs on PostgreSQL."""
        return sqlite_file(self.database)

    @property
    def stale_after_s(self) -> float:
        """A store with no heartbeat for this long is shown as stale."""
        return self.stale_after_heartbeats * self.heartbeat_s

    @property
    def mqtt_client_id(self) -> str:
        """The configured client id, else one derived from `hub_id` (stable across restarts)."""
        return self.broker.client_id or f"shelfgate-hub-{self.hub_id}"


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_hub_config(raw: Any, *, source: str = "<hub config>", base_dir: Path | None = None) -> HubConfig:
    """Validate an already-loaded mapping; a relative SQLite `database` is resolved against `base_dir`."""
    if not isinstance(raw, dict):
        raise HubConfigError(source, "", "the top level must be a mapping")
    try:
        config = HubConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise HubConfigError(source, _key_path(tuple(first["loc"])), first["msg"]) from exc
    path = config.sqlite_path
    if base_dir is not None and path is not None and not path.is_absolute():
        config = config.model_copy(update={"database": f"{SQLITE_SCHEME}:///{(base_dir / path).resolve()}"})
    if base_dir is not None:
        tls = {
            name: (base_dir / value).resolve()
            for name in ("ca_file", "cert_file", "key_file")
            if (value := getattr(config.broker, name)) is not None and not value.is_absolute()
        }
        if tls:
            config = config.model_copy(update={"broker": config.broker.model_copy(update=tls)})
    if config.broker.cert_file is not None and config.broker.ca_file is None:
        raise HubConfigError(source, "broker.cert_file", "a client certificate needs broker.ca_file (TLS)")
    return config


def load_hub_config(path: Path | str) -> HubConfig:
    """Read and validate a hub YAML file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise HubConfigError(str(path), "", f"cannot read: {exc.strerror or exc}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise HubConfigError(str(path), "", f"not valid YAML: {exc}") from exc
    return parse_hub_config(raw, source=str(path), base_dir=path.resolve().parent)
