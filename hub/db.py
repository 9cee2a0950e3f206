"""The hub's store: SQLite (one file, the default) or PostgreSQL (fleets), chosen by the config's URL.

Both engines run the same schema, the same migrations and the same apply SQL (docs/hub-storage.md). Portable
rules: named parameters (SQLAlchemy Core `text()`), ``INSERT … ON CONFLICT … DO NOTHING / DO UPDATE … WHERE``,
``excluded.``, ``RETURNING``, no INSERT OR REPLACE, no rowid, times as epoch seconds in DOUBLE PRECISION and
gateway timestamps as RFC 3339 text. The dialect layer is four things only (`ddl`, `lock_store`,
`run_migrations`' lock and the SQLite connection set-up): an auto-numbered key, text collation (PostgreSQL text
columns are ``COLLATE "C"`` so ordering and comparison are bytewise, as in SQLite), and how a transaction
takes its lock.

Why the apply is exactly-once in effect under at-least-once delivery and any number of workers
(ARCHITECTURE.md, "The bridge and its contract"; docs/wire-contract.md, "Delivery guarantees"):

- `events.id` (= ``{gateway_id}:{seq}``) is the PRIMARY KEY. An event's effect runs only in the transaction
  whose ``INSERT … ON CONFLICT (id) DO NOTHING`` inserted it (or, for an event that had to wait, in the one
  that sets its `applied_at`) — the database, not a memory set, makes apply at-most-once, across restarts and
  across workers.
- Effects run in `seq` order per gateway. `apply_cursors.applied_seq` says how far; an event that arrives
  ahead of a hole is stored with `applied_at` NULL and applied by whichever transaction — of whichever
  worker — closes the hole. The buffer is the database, so a worker that dies holding nothing loses nothing.
- Every transaction that touches a store first locks that store's row (PostgreSQL ``SELECT … FOR UPDATE``;
  SQLite's ``BEGIN IMMEDIATE`` already serialises writers), so two workers never interleave one store's
  apply, and lock order is the same everywhere (no deadlocks).
- A hole is repaired by `cmd/resend` (`claim_resend`, rate-limited in the database so N workers send one
  request). What the gateway no longer has (`not_retained`), or what stays missing for `gap_give_up_s`, is
  recorded in `lost_ranges` and skipped; such an event arriving later is applied at once ("late").
- The effects stay commutative where they can (stock by seq, alerts forward by `ALERT_STATE_RANK`), so a
  late event cannot roll state back.

All database work runs on threads owned by `HubDB` (STYLE.md rule 5): one for SQLite (its connection never
leaves that thread), `pool_size` for PostgreSQL (one pooled connection per call).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy import create_engine, text
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection, CursorResult, Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.sql.elements import TextClause

from cloud_bridge.contract import (
    ALERT_STATE_RANK,
    AlertData,
    AlertState,
    Command,
    Event,
    EventType,
    StockChanged,
    rfc3339,
)
from cloud_bridge.resend import MAX_RESEND_EVENTS, MAX_RESEND_RANGES, ResendArgs, ResendResult, SeqSpan
from hub.commissioning import commissioning_effect
from hub.config import normalize_database_url, redacted, sqlite_file
from hub.models import (
    AlertItem,
    ApplyResult,
    GapState,
    QuarantineItem,
    SeqRange,
    StockItem,
    StoreRecord,
)
from hub.parse import BatchMessage, CommandResultMessage, HeartbeatMessage, StatusMessage, check_timestamp
from hub.sales import sale_completed_effect, sale_returned_effect

log = logging.getLogger(__name__)

T = TypeVar("T")
Dialect = Literal["sqlite", "postgresql"]

QUARANTINE_KEEP_BYTES: Final = 64 * 1024
"""A quarantined payload is kept up to this size (enough to diagnose; the size is recorded in full)."""

MISSING_RANGES_SHOWN: Final = 100
SQLITE_BUSY_TIMEOUT_MS: Final = 30_000
"""Several workers (processes) on one SQLite file queue for the write lock; wait this long before failing."""
MIGRATION_LOCK_KEY: Final = 0x5348_4C46_4841_4231  # "SHLFHAB1": one advisory lock id for hub migrations
_ADVANCE_CHUNK: Final = 500
"""Held events read per round trip while applying a run that a batch released."""

_MIGRATIONS: Final[tuple[str, ...]] = (
    # 1: the minimal hub — ingest, stock, alerts, fleet, quarantine.
    """
    CREATE TABLE events (
        id TEXT PRIMARY KEY,
        store_id TEXT NOT NULL,
        gateway_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        type TEXT NOT NULL,
        ts TEXT NOT NULL,
        data TEXT NOT NULL,
        received_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX events_by_store_seq ON events (store_id, gateway_id, seq);
    CREATE TABLE stock (
        store_id TEXT NOT NULL,
        bin_id TEXT NOT NULL,
        sku TEXT NOT NULL,
        count BIGINT NOT NULL,
        weight_g DOUBLE PRECISION NOT NULL,
        safety_stock BIGINT NOT NULL,
        max_stock BIGINT NOT NULL,
        seq BIGINT NOT NULL,
        updated_ts TEXT NOT NULL,
        PRIMARY KEY (store_id, bin_id)
    );
    CREATE TABLE alerts (
        store_id TEXT NOT NULL,
        alert_id TEXT NOT NULL,
        bin_id TEXT NOT NULL,
        sku TEXT NOT NULL,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        state_rank INTEGER NOT NULL,
        count BIGINT,
        message TEXT NOT NULL,
        raised_at TEXT NOT NULL,
        updated_ts TEXT NOT NULL,
        acknowledged_by TEXT,
        seq BIGINT NOT NULL,
        PRIMARY KEY (store_id, alert_id)
    );
    CREATE INDEX alerts_by_store_rank ON alerts (store_id, state_rank);
    CREATE TABLE stores (
        store_id TEXT PRIMARY KEY,
        first_seen_at DOUBLE PRECISION NOT NULL,
        gateway_id TEXT,
        online BOOLEAN,
        status TEXT,
        status_ts TEXT,
        status_received_at DOUBLE PRECISION,
        boot_id TEXT,
        version TEXT,
        config_version TEXT,
        last_heartbeat_at DOUBLE PRECISION,
        heartbeat TEXT,
        heartbeat_ts TEXT,
        outbox_depth BIGINT,
        outbox_oldest_age_s DOUBLE PRECISION,
        last_seq BIGINT,
        devices_offline INTEGER
    );
    CREATE TABLE seq_ranges (
        store_id TEXT NOT NULL,
        gateway_id TEXT NOT NULL,
        first_seq BIGINT NOT NULL,
        last_seq BIGINT NOT NULL,
        PRIMARY KEY (store_id, gateway_id, first_seq)
    );
    CREATE TABLE command_results (
        store_id TEXT NOT NULL,
        command_id TEXT NOT NULL,
        ok BOOLEAN NOT NULL,
        error TEXT,
        result TEXT,
        received_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (store_id, command_id)
    );
    CREATE TABLE quarantine (
        id {id_pk},
        topic TEXT NOT NULL,
        received_at DOUBLE PRECISION NOT NULL,
        reason TEXT NOT NULL,
        payload TEXT NOT NULL,
        payload_encoding TEXT NOT NULL,
        payload_size BIGINT NOT NULL
    );
    """,
    # 2: ordered apply across workers — held events, apply cursors, lost ranges, resend requests.
    # Events stored by v1 were applied on arrival; the cursor starts at their contiguous prefix.
    """
    ALTER TABLE events ADD COLUMN applied_at DOUBLE PRECISION;
    UPDATE events SET applied_at = received_at;
    CREATE TABLE apply_cursors (
        store_id TEXT NOT NULL,
        gateway_id TEXT NOT NULL,
        applied_seq BIGINT NOT NULL,
        top_seq BIGINT NOT NULL,
        reported_seq BIGINT NOT NULL DEFAULT 0,
        lost_top BIGINT NOT NULL DEFAULT 0,
        gap_since DOUBLE PRECISION,
        PRIMARY KEY (store_id, gateway_id)
    );
    CREATE INDEX apply_cursors_by_gap ON apply_cursors (gap_since);
    INSERT INTO apply_cursors (store_id, gateway_id, applied_seq, top_seq)
        SELECT store_id, gateway_id, 0, MAX(last_seq) FROM seq_ranges GROUP BY store_id, gateway_id;
    UPDATE apply_cursors SET applied_seq = COALESCE((
        SELECT r.last_seq FROM seq_ranges r
        WHERE r.store_id = apply_cursors.store_id AND r.gateway_id = apply_cursors.gateway_id
          AND r.first_seq = 1), 0);
    CREATE TABLE lost_ranges (
        store_id TEXT NOT NULL,
        gateway_id TEXT NOT NULL,
        first_seq BIGINT NOT NULL,
        last_seq BIGINT NOT NULL,
        reason TEXT NOT NULL,
        recorded_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (store_id, gateway_id, first_seq)
    );
    CREATE TABLE resend_requests (
        store_id TEXT NOT NULL,
        gateway_id TEXT NOT NULL,
        command_id TEXT NOT NULL,
        args TEXT NOT NULL,
        issued_at TEXT NOT NULL,
        first_sent_at DOUBLE PRECISION NOT NULL,
        last_sent_at DOUBLE PRECISION NOT NULL,
        sends INTEGER NOT NULL,
        answered_at DOUBLE PRECISION,
        result TEXT,
        PRIMARY KEY (store_id, gateway_id)
    );
    CREATE UNIQUE INDEX resend_requests_by_command ON resend_requests (command_id);
    """,
    # 3: sales, returns, members and the points ledger (hub/sales.py, docs/loyalty.md). Money in integer fen,
    # gateway times as fixed-width RFC 3339 UTC text, `local_date` as YYYY-MM-DD text in the loyalty zone.
    # Foreign keys are enforced on PostgreSQL; SQLite (foreign_keys off) relies on the effects' order.
    """
    CREATE TABLE members (
        member_id TEXT PRIMARY KEY,
        birth_month SMALLINT CHECK (birth_month BETWEEN 1 AND 12),
        balance BIGINT NOT NULL DEFAULT 0 CHECK (balance >= 0),
        debt BIGINT NOT NULL DEFAULT 0 CHECK (debt >= 0),
        tier TEXT NOT NULL DEFAULT 'bronze' CHECK (tier IN ('bronze', 'silver', 'gold', 'platinum')),
        tier_ts TEXT,
        spend_30d_fen BIGINT NOT NULL DEFAULT 0,
        spend_365d_fen BIGINT NOT NULL DEFAULT 0,
        source TEXT NOT NULL CHECK (source IN ('api', 'sale')),
        created_at DOUBLE PRECISION NOT NULL,
        registered_at DOUBLE PRECISION,
        CHECK (debt = 0 OR balance = 0)
    );
    CREATE TABLE sales (
        transaction_id TEXT PRIMARY KEY,
        event_id TEXT NOT NULL UNIQUE,
        store_id TEXT NOT NULL,
        lane TEXT NOT NULL,
        cashier TEXT NOT NULL,
        member_id TEXT,
        total_fen BIGINT NOT NULL CHECK (total_fen >= 0),
        refunded_fen BIGINT NOT NULL DEFAULT 0,
        item_count INTEGER NOT NULL,
        ts TEXT NOT NULL,
        local_date TEXT NOT NULL,
        payload TEXT NOT NULL,
        applied_at DOUBLE PRECISION NOT NULL,
        CHECK (refunded_fen BETWEEN 0 AND total_fen)
    );
    CREATE INDEX sales_by_ts ON sales (ts, transaction_id);
    CREATE INDEX sales_by_store_day ON sales (store_id, local_date);
    CREATE INDEX sales_by_member_day ON sales (member_id, local_date);
    CREATE INDEX sales_by_day ON sales (local_date);
    CREATE TABLE sale_returns (
        transaction_id TEXT PRIMARY KEY,
        original_transaction_id TEXT NOT NULL REFERENCES sales (transaction_id),
        event_id TEXT NOT NULL UNIQUE,
        store_id TEXT NOT NULL,
        lane TEXT NOT NULL,
        cashier TEXT NOT NULL,
        refund_fen BIGINT NOT NULL CHECK (refund_fen >= 0),
        ts TEXT NOT NULL,
        local_date TEXT NOT NULL,
        payload TEXT NOT NULL,
        applied_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX sale_returns_by_original ON sale_returns (original_transaction_id);
    CREATE INDEX sale_returns_by_store_day ON sale_returns (store_id, local_date);
    CREATE TABLE sale_items (
        kind TEXT NOT NULL CHECK (kind IN ('sale', 'return')),
        transaction_id TEXT NOT NULL,
        line_no INTEGER NOT NULL,
        gtin TEXT NOT NULL,
        qty INTEGER,
        weight_g BIGINT,
        unit_price_fen BIGINT NOT NULL,
        amount_fen BIGINT NOT NULL,
        PRIMARY KEY (kind, transaction_id, line_no),
        CHECK ((qty IS NULL) <> (weight_g IS NULL))
    );
    CREATE INDEX sale_items_by_gtin ON sale_items (gtin, kind, transaction_id);
    CREATE TABLE held_returns (
        transaction_id TEXT PRIMARY KEY,
        original_transaction_id TEXT NOT NULL,
        event_id TEXT NOT NULL UNIQUE,
        store_id TEXT NOT NULL,
        refund_fen BIGINT NOT NULL,
        ts TEXT NOT NULL,
        payload TEXT NOT NULL,
        reason TEXT NOT NULL,
        held_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX held_returns_by_original ON held_returns (original_transaction_id);
    CREATE TABLE sale_refs (
        transaction_id TEXT PRIMARY KEY,
        held INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE points_ledger (
        id {id_pk},
        member_id TEXT NOT NULL REFERENCES members (member_id),
        cause TEXT NOT NULL,
        ref TEXT NOT NULL,
        delta BIGINT NOT NULL,
        debt_delta BIGINT NOT NULL DEFAULT 0,
        sale_id TEXT,
        ts TEXT NOT NULL,
        detail TEXT NOT NULL,
        recorded_at DOUBLE PRECISION NOT NULL,
        UNIQUE (member_id, cause, ref)
    );
    CREATE INDEX points_ledger_by_member_ref ON points_ledger (member_id, ref);
    """,
)

SCHEMA_VERSION: Final = len(_MIGRATIONS)


class HubDBError(RuntimeError):
    """The hub database cannot be opened or is newer than this code."""


# --- dialect layer ------------------------------------------------------------------------------------------

_TEXT_TYPE: Final = re.compile(r"\bTEXT\b")
_IDENTIFIER: Final = re.compile(r"[a-z_][a-z0-9_]*")


def ddl(template: str, dialect: Dialect) -> list[str]:
    """One migration's statements for `dialect`: the only place the schema text differs between engines."""
    if dialect == "postgresql":
        # Bytewise collation, as SQLite's BINARY: ORDER BY and comparisons on ids and RFC 3339 text agree.
        script = _TEXT_TYPE.sub('TEXT COLLATE "C"', template)
        script = script.replace("{id_pk}", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")
    else:
        script = template.replace("{id_pk}", "INTEGER PRIMARY KEY")  # SQLite numbers it (rowid alias)
    return [statement.strip() for statement in script.split(";") if statement.strip()]


@functools.lru_cache(maxsize=1024)
def _sql(statement: str) -> TextClause:
    """`text()` parses bind names with a regex; statements are constants, so parse each once."""
    return text(statement)


@dataclass(frozen=True, slots=True)
class Tx:
    """One open transaction on one connection, with the dialect it speaks. Effects receive it."""

    conn: Connection
    dialect: Dialect

    def run(self, statement: str, params: Mapping[str, Any] | None = None) -> CursorResult[Any]:
        """Execute one named-parameter statement."""
        return self.conn.execute(_sql(statement), dict(params or {}))

    def run_many(self, statement: str, rows: Sequence[Mapping[str, Any]]) -> CursorResult[Any]:
        """Execute one statement for each parameter set (DBAPI ``executemany``; psycopg pipelines it).
        `rowcount` is the total over all sets on both drivers."""
        return self.conn.execute(_sql(statement), [dict(row) for row in rows])


_SQLITE_BEGIN: Final = "shelfgate_begin"
_RETRIES: Final = 5
_RETRY_SQLSTATES: Final = frozenset({"40P01", "40001"})
"""PostgreSQL deadlock_detected and serialization_failure: the transaction was rolled back and may be rerun."""
"""Key in the connection's `info`: the BEGIN flavour the next transaction opens with."""


def _sqlite_engine(url: str) -> Engine:
    """pysqlite with SQLAlchemy's documented "transaction control" recipe: the driver's own implicit BEGIN is
    off (isolation_level None) and each transaction opens with our BEGIN — IMMEDIATE for writes, so a write
    transaction holds the lock from its first statement and never fails half-way with SQLITE_BUSY on
    upgrade (SQLite docs, "Transaction": BEGIN IMMEDIATE)."""
    path = sqlite_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, pool_size=1, max_overflow=0)

    @sa_event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")  # first: WAL needs the lock
            _enable_wal(cursor)
            cursor.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across app crashes
        finally:
            cursor.close()

    @sa_event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql(conn.info.get(_SQLITE_BEGIN, "BEGIN"))

    return engine


def _postgresql_engine(url: str, pool_size: int) -> Engine:
    """psycopg 3 behind SQLAlchemy's QueuePool: one connection per DB thread, checked on checkout."""
    return create_engine(
        url, pool_size=pool_size, max_overflow=0, pool_pre_ping=True, connect_args={"connect_timeout": 10}
    )


def lock_store(tx: Tx, store_id: str, now: float) -> None:
    """Create the store row if new, then hold it for this transaction: every per-store transaction starts
    here, so one store's work is serialised across workers and locks are always taken in the same order."""
    tx.run(_ENSURE_STORE, {"store_id": store_id, "now": now})
    if tx.dialect == "postgresql":
        tx.run("SELECT store_id FROM stores WHERE store_id = :store_id FOR UPDATE", {"store_id": store_id})


def _enable_wal(cursor: Any) -> None:
    """`PRAGMA journal_mode=WAL`, retried while another connection holds the lock.

    Switching a fresh file to WAL needs an exclusive lock, and SQLite answers SQLITE_BUSY there without always
    calling the busy handler — seen when several workers open a new database at once ("database is locked"
    despite busy_timeout, tests/hub/test_db.py under load). WAL is persistent in the file, so once one
    connection has switched it the others find it set. Bounded by the same busy timeout.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        else:
            return


def run_migrations(
    tx: Tx,
    migrations: Sequence[str],
    *,
    version_table: str,
    lock_key: int,
    schema_name: str,
    migrated_log: str,
    logger: logging.Logger = log,
) -> int:
    """Bring one migration list to its last version in the caller's (write) transaction; returns the version
    found. Each list (the hub's, fleet's, commissioning's) keeps its versions in its own `version_table`.

    Safe when several workers start together: PostgreSQL takes a transaction-scoped advisory lock first
    (PostgreSQL docs, "Advisory Locks"), SQLite's BEGIN IMMEDIATE holds the database's write lock; the
    version is read after the lock, so the second worker finds the work done. DDL is transactional on both.
    `schema_name` names the list in the too-new error; `migrated_log` (to the owning module's `logger`) is the
    log format for one version done.
    """
    if not _IDENTIFIER.fullmatch(version_table):
        raise ValueError(f"version table name {version_table!r} is not a plain SQL identifier")
    latest = len(migrations)
    if tx.dialect == "postgresql":
        tx.run("SELECT pg_advisory_xact_lock(:key)", {"key": lock_key})
    tx.run(f"CREATE TABLE IF NOT EXISTS {version_table} (version INTEGER NOT NULL)")
    # The table name is a checked identifier from our own modules (never input); values are bound.
    found = int(tx.run(f"SELECT COALESCE(MAX(version), 0) FROM {version_table}").scalar_one())  # noqa: S608
    if found > latest:
        raise HubDBError(f"{schema_name} v{found} is newer than this hub (v{latest})")
    for version in range(found + 1, latest + 1):
        for statement in ddl(migrations[version - 1], tx.dialect):
            tx.run(statement)
        tx.run(f"INSERT INTO {version_table} (version) VALUES (:v)", {"v": version})  # noqa: S608 - see above
        logger.info(migrated_log, version)
    return found


def migrate(tx: Tx) -> int:
    """Bring the schema to `SCHEMA_VERSION` in the caller's (write) transaction; returns the version found.
    Concurrent callers are safe (see `run_migrations`)."""
    return run_migrations(
        tx,
        _MIGRATIONS,
        version_table="schema_version",
        lock_key=MIGRATION_LOCK_KEY,
        schema_name="database schema",
        migrated_log="hub database migrated to schema v%d",
    )


# --- effects: what an applied event does ---------------------------------------------------------------------

_UPSERT_STOCK: Final = """
INSERT INTO stock (store_id, bin_id, sku, count, weight_g, safety_stock, max_stock, seq, updated_ts)
VALUES (:store_id, :bin_id, :sku, :count, :weight_g, :safety_stock, :max_stock, :seq, :ts)
ON CONFLICT (store_id, bin_id) DO UPDATE SET
    sku = excluded.sku, count = excluded.count, weight_g = excluded.weight_g,
    safety_stock = excluded.safety_stock, max_stock = excluded.max_stock,
    seq = excluded.seq, updated_ts = excluded.updated_ts
WHERE stock.seq < excluded.seq
"""

_UPSERT_ALERT: Final = """
INSERT INTO alerts (store_id, alert_id, bin_id, sku, kind, state, state_rank, count, message, raised_at,
                    updated_ts, acknowledged_by, seq)
VALUES (:store_id, :alert_id, :bin_id, :sku, :kind, :state, :state_rank, :count, :message, :raised_at,
        :ts, :by, :seq)
ON CONFLICT (store_id, alert_id) DO UPDATE SET
    bin_id = excluded.bin_id, sku = excluded.sku, kind = excluded.kind, state = excluded.state,
    state_rank = excluded.state_rank, count = excluded.count, message = excluded.message,
    raised_at = excluded.raised_at, updated_ts = excluded.updated_ts, seq = excluded.seq,
    acknowledged_by = COALESCE(excluded.acknowledged_by, alerts.acknowledged_by)
WHERE excluded.state_rank > alerts.state_rank
   OR (excluded.state_rank = alerts.state_rank AND excluded.seq > alerts.seq)
"""

# An acknowledgement that arrives after the resolution still records who acknowledged.
_FILL_ACKNOWLEDGED_BY: Final = """
UPDATE alerts SET acknowledged_by = :by
WHERE store_id = :store_id AND alert_id = :alert_id AND acknowledged_by IS NULL
"""

_ENSURE_STORE: Final = """
INSERT INTO stores (store_id, first_seen_at) VALUES (:store_id, :now) ON CONFLICT (store_id) DO NOTHING
"""


def _event_params(store_id: str, event: Event, data: BaseModel) -> dict[str, Any]:
    params = data.model_dump(mode="json")
    params.update(store_id=store_id, seq=event.seq, ts=event.ts)
    return params


Applied = Sequence[tuple[Event, BaseModel]]
"""A run of consecutive events of one effect, in seq order, each with its validated `data`."""


def _stock_effect(tx: Tx, store_id: str, run: Applied) -> None:
    rows = []
    for event, data in run:
        if not isinstance(data, StockChanged):
            raise TypeError(f"{event.id}: stock.changed carries {type(data).__name__}")
        rows.append(_event_params(store_id, event, data))
    tx.run_many(_UPSERT_STOCK, rows)


def _alert_effect(tx: Tx, store_id: str, run: Applied) -> None:
    rows, acknowledgements = [], []
    for event, data in run:
        if not isinstance(data, AlertData):
            raise TypeError(f"{event.id}: {event.type} carries {type(data).__name__}")
        params = _event_params(store_id, event, data)
        params["state_rank"] = ALERT_STATE_RANK[data.state]
        rows.append(params)
        if data.state is AlertState.ACKNOWLEDGED and data.by is not None:
            acknowledgements.append(params)
    tx.run_many(_UPSERT_ALERT, rows)
    if acknowledgements:  # after the run's upserts: an ack that lost to a resolution still names who
        tx.run_many(_FILL_ACKNOWLEDGED_BY, acknowledgements)


Effect = Callable[[Tx, str, Applied], None]
"""`effect(tx, store_id, run)`: the change a run of events makes to hub state, inside the apply transaction.

Each event reaches its effect at most once, and a store's events in seq order (except "late" events, see the
module doc); consecutive events with the same effect come as one run so it can use one `Tx.run_many`
(``executemany``: one round trip per run on PostgreSQL's pipeline, ~4× less overhead than one statement per
event on SQLite)."""

EFFECTS: Final[dict[str, Effect]] = {
    EventType.STOCK_CHANGED.value: _stock_effect,
    EventType.ALERT_RAISED.value: _alert_effect,
    EventType.ALERT_ACKNOWLEDGED.value: _alert_effect,
    EventType.ALERT_RESOLVED.value: _alert_effect,
    EventType.SALE_COMPLETED.value: sale_completed_effect,
    EventType.SALE_RETURNED.value: sale_returned_effect,
    EventType.COMMISSIONING.value: commissioning_effect,
}
"""Event type → effect. A type the contract has but this table lacks (one added to the contract before the
hub has a service for it) is stored and marked applied without effect, so it never blocks its store's order."""


def _run_effects(tx: Tx, store_id: str, events: Applied) -> None:
    """Hand `events` (in seq order) to their effects, one call per run of consecutive same-effect events."""
    run: list[tuple[Event, BaseModel]] = []
    current: Effect | None = None
    for event, data in events:
        effect = EFFECTS.get(event.type.value)
        if effect is not current and run:
            if current is not None:
                current(tx, store_id, run)
            run = []
        current = effect
        run.append((event, data))
        if effect is None:
            log.debug(
                "event %s: no effect for %s at this hub version; stored only", event.id, event.type.value
            )
    if run and current is not None:
        current(tx, store_id, run)


# --- apply -------------------------------------------------------------------------------------------------

_INSERT_EVENT: Final = """
INSERT INTO events (id, store_id, gateway_id, seq, type, ts, data, received_at, applied_at)
VALUES (:id, :store_id, :gateway_id, :seq, :type, :ts, :data, :received_at, :applied_at)
ON CONFLICT (id) DO NOTHING
"""

_HELD_EVENTS: Final = """
SELECT seq, id, type, ts, data, applied_at FROM events
WHERE store_id = :store_id AND gateway_id = :gateway_id AND seq > :after
ORDER BY seq LIMIT :limit
"""


class _InsertRace(Exception):
    """An event id of this batch was inserted meanwhile under ANOTHER store's lock (only possible when two
    stores' gateways share a gateway_id); the batch is redone one event at a time."""


@dataclass(frozen=True, slots=True)
class _Cursor:
    applied_seq: int
    top_seq: int
    reported_seq: int
    lost_top: int
    gap_since: float | None


_SELECT_CURSOR: Final = """
SELECT applied_seq, top_seq, reported_seq, lost_top, gap_since FROM apply_cursors
WHERE store_id = :store_id AND gateway_id = :gateway_id
"""


def _cursor(tx: Tx, store_id: str, gateway_id: str) -> _Cursor:
    key = {"store_id": store_id, "gateway_id": gateway_id}
    row = tx.run(_SELECT_CURSOR, key).one_or_none()
    if row is None:
        tx.run(
            "INSERT INTO apply_cursors (store_id, gateway_id, applied_seq, top_seq)"
            " VALUES (:store_id, :gateway_id, 0, 0) ON CONFLICT (store_id, gateway_id) DO NOTHING",
            key,
        )
        row = tx.run(_SELECT_CURSOR, key).one()
    return _Cursor(int(row[0]), int(row[1]), int(row[2]), int(row[3]), row[4])


def _ranges(tx: Tx, table: str, store_id: str, gateway_id: str, above: int) -> list[tuple[int, int]]:
    """Sorted (first, last) rows of `seq_ranges` or `lost_ranges` that reach above `above`."""
    if table not in {"seq_ranges", "lost_ranges"}:
        raise ValueError(table)
    rows = tx.run(
        f"SELECT first_seq, last_seq FROM {table}"  # noqa: S608 - table is one of two constants
        " WHERE store_id = :store_id AND gateway_id = :gateway_id AND last_seq > :above ORDER BY first_seq",
        {"store_id": store_id, "gateway_id": gateway_id, "above": above},
    ).all()
    return [(int(r[0]), int(r[1])) for r in rows]


def _skip_lost(applied_seq: int, lost: list[tuple[int, int]], before: int | None) -> int:
    """Move the cursor over lost seqs that directly follow it (not past `before` - 1, a held event)."""
    moved = True
    while moved:
        moved = False
        for first, last in lost:
            if first <= applied_seq + 1 <= last:
                target = last if before is None else min(last, before - 1)
                if target > applied_seq:
                    applied_seq, moved = target, True
    return applied_seq


def _held_event(row: Any) -> tuple[Event, BaseModel] | None:
    """An event that waited in the table, rebuilt from its stored JSON; None if it no longer validates."""
    seq, event_id, event_type, ts, data_text, _applied_at = row
    try:
        held = Event(id=event_id, seq=seq, type=event_type, ts=ts, data=json.loads(data_text))
        return held, held.typed_data()
    except (ValidationError, ValueError) as exc:  # parse.py accepted it; only a contract change gets here
        log.error("held event %s no longer validates (%s); marked applied without effect", event_id, exc)  # noqa: TRY400
        return None


def _advance(
    tx: Tx, store_id: str, gateway_id: str, cursor: _Cursor, *, applied_seq: int, now: float
) -> tuple[int, int, bool]:
    """Apply held events that now follow the cursor, in seq order, skipping lost seqs.

    Returns (cursor, events applied, whether anything is still stored above the cursor).
    """
    lost = (
        _ranges(tx, "lost_ranges", store_id, gateway_id, applied_seq) if cursor.lost_top > applied_seq else []
    )
    released = 0
    above = False
    while True:
        rows = tx.run(
            _HELD_EVENTS,
            {"store_id": store_id, "gateway_id": gateway_id, "after": applied_seq, "limit": _ADVANCE_CHUNK},
        ).all()
        ready: list[tuple[Event, BaseModel]] = []
        ids: list[dict[str, Any]] = []
        blocked = False
        for row in rows:
            seq = int(row[0])
            if seq > applied_seq + 1:
                applied_seq = _skip_lost(applied_seq, lost, before=seq)
                if seq > applied_seq + 1:
                    blocked = above = True
                    break
            if row[5] is None:  # applied_at: v1 rows beyond a v1 hole were applied on arrival already
                held = _held_event(row)
                if held is not None:
                    ready.append(held)
                ids.append({"id": row[1], "now": now})
            applied_seq = seq
        _run_effects(tx, store_id, ready)
        if ids:
            tx.run_many("UPDATE events SET applied_at = :now WHERE id = :id", ids)
            released += len(ids)
        if blocked or len(rows) < _ADVANCE_CHUNK:
            break
    return _skip_lost(applied_seq, lost, before=None), released, above


def _missing(
    received: Iterable[tuple[int, int]], lost: Iterable[tuple[int, int]], applied_seq: int, top_seq: int
) -> list[SeqRange]:
    """Holes in applied_seq+1..top_seq not covered by received or lost ranges (oldest first)."""
    missing: list[SeqRange] = []
    expected = applied_seq + 1
    for first, last in sorted([*received, *lost]):
        if first > expected:
            missing.append(SeqRange(first_seq=expected, last_seq=min(first - 1, top_seq)))
        expected = max(expected, last + 1)
        if expected > top_seq:
            break
    if expected <= top_seq:
        missing.append(SeqRange(first_seq=expected, last_seq=top_seq))
    return [r for r in missing if r.first_seq <= r.last_seq]


_UPDATE_CURSOR: Final = """
UPDATE apply_cursors SET applied_seq = :applied_seq, top_seq = :top_seq, gap_since = :since
WHERE store_id = :store_id AND gateway_id = :gateway_id
"""


def _settle(
    tx: Tx,
    store_id: str,
    gateway_id: str,
    *,
    before: _Cursor,
    applied_seq: int,
    now: float,
    nothing_above: bool = False,
) -> GapState | None:
    """Store the cursor and the hole state after a change; the hole's age restarts when the cursor moved.

    `nothing_above`: the caller saw no stored event above `applied_seq` — then only a heartbeat-reported
    tail can be missing, and the common in-order case costs one UPDATE.
    """
    key = {"store_id": store_id, "gateway_id": gateway_id}
    if nothing_above and before.reported_seq <= applied_seq:
        tx.run(_UPDATE_CURSOR, {**key, "applied_seq": applied_seq, "top_seq": applied_seq, "since": None})
        return None
    received = _ranges(tx, "seq_ranges", store_id, gateway_id, applied_seq)
    lost = _ranges(tx, "lost_ranges", store_id, gateway_id, applied_seq)
    top_seq = max([applied_seq, before.reported_seq, *(last for _, last in received)])
    missing = _missing(received, lost, applied_seq, top_seq)
    since: float | None = None
    if missing:
        kept = before.gap_since is not None and applied_seq == before.applied_seq
        since = before.gap_since if kept else now
    tx.run(_UPDATE_CURSOR, {**key, "applied_seq": applied_seq, "top_seq": top_seq, "since": since})
    if since is None:
        return None
    return GapState(
        store_id=store_id,
        gateway_id=gateway_id,
        applied_seq=applied_seq,
        top_seq=top_seq,
        since=since,
        missing=tuple(missing),
    )


def _merge_seq_range(tx: Tx, store_id: str, gateway_id: str, first: int, last: int) -> None:
    """Fold first..last into the store's set of received ranges (touching or overlapping ranges merge)."""
    key = {"store_id": store_id, "gateway_id": gateway_id}
    rows = tx.run(
        "SELECT first_seq, last_seq FROM seq_ranges WHERE store_id = :store_id AND gateway_id = :gateway_id"
        " AND last_seq >= :lo AND first_seq <= :hi ORDER BY first_seq",
        {**key, "lo": first - 1, "hi": last + 1},
    ).all()
    if not rows:
        tx.run(
            "INSERT INTO seq_ranges (store_id, gateway_id, first_seq, last_seq)"
            " VALUES (:store_id, :gateway_id, :f, :l)",
            {**key, "f": first, "l": last},
        )
        return
    if len(rows) == 1 and rows[0][0] <= first and rows[0][1] >= last:
        return  # already inside a received range (a duplicate batch)
    keep = int(rows[0][0])
    for row_first, row_last in rows:
        first, last = min(first, int(row_first)), max(last, int(row_last))
    for row_first, _row_last in rows[1:]:
        tx.run(
            "DELETE FROM seq_ranges"
            " WHERE store_id = :store_id AND gateway_id = :gateway_id AND first_seq = :f",
            {**key, "f": row_first},
        )
    tx.run(
        "UPDATE seq_ranges SET first_seq = :f, last_seq = :l"
        " WHERE store_id = :store_id AND gateway_id = :gateway_id AND first_seq = :keep",
        {**key, "f": first, "l": last, "keep": keep},
    )


def _apply_batch(tx: Tx, message: BatchMessage, received_at: float, careful: bool) -> ApplyResult:
    """Store and apply one batch. The duplicate check is one query under the store lock and the inserts one
    ``executemany``; `careful` (after an `_InsertRace`) inserts one event at a time and trusts each rowcount."""
    batch, store_id, gateway_id = message.batch, message.store_id, message.batch.gateway_id
    lock_store(tx, store_id, received_at)
    before = _cursor(tx, store_id, gateway_id)
    seen = {
        int(row[0])
        for row in tx.run(
            "SELECT seq FROM events WHERE store_id = :store_id AND gateway_id = :gateway_id"
            " AND seq BETWEEN :first AND :last",
            {
                "store_id": store_id,
                "gateway_id": gateway_id,
                "first": batch.first_seq,
                "last": batch.last_seq,
            },
        )
    }
    applied_seq = before.applied_seq
    in_order = True
    duplicates = late = 0
    rows: list[dict[str, Any]] = []
    now_applied: list[tuple[Event, BaseModel]] = []
    held: list[int] = []
    for event, data in zip(batch.events, message.data, strict=True):
        late_event = event.seq <= applied_seq
        if event.seq in seen:
            duplicates += 1
            if not late_event:
                in_order = False  # this seq may be held unapplied: the rest goes through `_advance`, in order
            continue
        apply_now = late_event or (in_order and event.seq == applied_seq + 1)
        row = {
            "id": event.id,
            "store_id": store_id,
            "gateway_id": gateway_id,
            "seq": event.seq,
            "type": event.type.value,
            "ts": event.ts,
            "data": json.dumps(event.data, separators=(",", ":"), ensure_ascii=False),
            "received_at": received_at,
            "applied_at": received_at if apply_now else None,
        }
        if careful and tx.run(_INSERT_EVENT, row).rowcount != 1:
            duplicates += 1
            if not late_event:
                in_order = False
            continue
        rows.append(row)
        if not apply_now:
            held.append(event.seq)
            in_order = False
            continue
        now_applied.append((event, data))
        if late_event:
            late += 1
        else:
            applied_seq = event.seq
    if rows and not careful and tx.run_many(_INSERT_EVENT, rows).rowcount != len(rows):
        raise _InsertRace
    _run_effects(tx, store_id, now_applied)
    _merge_seq_range(tx, store_id, gateway_id, batch.first_seq, batch.last_seq)
    applied_seq, released, above = _advance(
        tx, store_id, gateway_id, before, applied_seq=applied_seq, now=received_at
    )
    gap = _settle(
        tx,
        store_id,
        gateway_id,
        before=before,
        applied_seq=applied_seq,
        now=received_at,
        nothing_above=not above,
    )
    tx.run(
        "UPDATE stores SET gateway_id = :gateway_id WHERE store_id = :store_id AND gateway_id IS NULL",
        {"store_id": store_id, "gateway_id": gateway_id},
    )
    return ApplyResult(
        applied=len(now_applied) + released,
        duplicates=duplicates,
        pending=sum(1 for seq in held if seq > applied_seq),
        released=released,
        late=late,
        gap=gap,
    )


# --- status, heartbeat, command results ------------------------------------------------------------------


def _record_status(tx: Tx, message: StatusMessage, received_at: float) -> None:
    """Statuses apply in arrival order, not by `ts`: the will carries the time it was registered (connect
    time), which is older than the birth it follows, and the broker delivers one topic in order."""
    status = message.status
    lock_store(tx, message.store_id, received_at)
    tx.run(
        "UPDATE stores SET gateway_id = :gateway_id, online = :online, status = :status, status_ts = :ts,"
        " status_received_at = :received_at, boot_id = :boot_id, version = :version,"
        " config_version = :config_version WHERE store_id = :store_id",
        {
            "store_id": message.store_id,
            "gateway_id": status.gateway_id,
            "online": status.state == "online",
            "status": status.model_dump_json(by_alias=True),
            "ts": rfc3339(check_timestamp(status.ts, "status.ts")),
            "received_at": received_at,
            "boot_id": status.boot_id,
            "version": status.version,
            "config_version": status.config_version,
        },
    )


def _record_heartbeat(tx: Tx, message: HeartbeatMessage, received_at: float) -> GapState | None:
    """The receive time always advances `last_heartbeat_at`; the payload replaces the stored one only if it
    is not older (a redelivered heartbeat must not roll the backlog figures back).

    A heartbeat with an empty outbox also says every seq up to `last_seq` has been sent: seqs above what the
    hub received form a missing tail (docs/wire-contract.md, "Gaps"), handled like any hole.
    """
    heartbeat = message.heartbeat
    store_id = message.store_id
    params = {
        "store_id": store_id,
        "received_at": received_at,
        "gateway_id": heartbeat.gateway_id,
        "heartbeat": heartbeat.model_dump_json(by_alias=True),
        "ts": rfc3339(check_timestamp(heartbeat.ts, "heartbeat.ts")),
        "outbox_depth": heartbeat.outbox_depth,
        "outbox_oldest_age_s": heartbeat.outbox_oldest_age_s,
        "last_seq": heartbeat.last_seq,
        "devices_offline": sum(1 for device in heartbeat.devices if not device.online),
    }
    lock_store(tx, store_id, received_at)
    tx.run(
        "UPDATE stores SET last_heartbeat_at = :received_at WHERE store_id = :store_id"
        " AND (last_heartbeat_at IS NULL OR last_heartbeat_at < :received_at)",
        params,
    )
    tx.run(
        "UPDATE stores SET gateway_id = :gateway_id, heartbeat = :heartbeat, heartbeat_ts = :ts,"
        " outbox_depth = :outbox_depth, outbox_oldest_age_s = :outbox_oldest_age_s, last_seq = :last_seq,"
        " devices_offline = :devices_offline"
        " WHERE store_id = :store_id AND (heartbeat_ts IS NULL OR heartbeat_ts <= :ts)",
        params,
    )
    if heartbeat.outbox_depth != 0 or heartbeat.last_seq <= 0:
        return None
    before = _cursor(tx, store_id, heartbeat.gateway_id)
    if heartbeat.last_seq <= before.reported_seq:
        return None
    tx.run(
        "UPDATE apply_cursors SET reported_seq = :last_seq WHERE store_id = :store_id AND gateway_id = :gateway_id",
        params,
    )
    reported = _Cursor(
        before.applied_seq, before.top_seq, heartbeat.last_seq, before.lost_top, before.gap_since
    )
    return _settle(
        tx, store_id, heartbeat.gateway_id, before=reported, applied_seq=before.applied_seq, now=received_at
    )


@dataclass(frozen=True, slots=True)
class ResendAnswer:
    """What a gateway's answer to `cmd/resend` changed at the hub."""

    store_id: str
    gateway_id: str
    result: ResendResult | None
    """None when the gateway refused the command (`ok` false) or answered something unreadable."""
    lost: tuple[SeqRange, ...]
    released: int


def _record_lost(
    tx: Tx,
    store_id: str,
    gateway_id: str,
    spans: Iterable[SeqRange | SeqSpan],
    *,
    reason: str,
    now: float,
) -> list[SeqRange]:
    """Record holes the hub stops waiting for; only seqs above the cursor and not received count."""
    before = _cursor(tx, store_id, gateway_id)
    received = _ranges(tx, "seq_ranges", store_id, gateway_id, before.applied_seq)
    lost = _ranges(tx, "lost_ranges", store_id, gateway_id, before.applied_seq)
    recorded: list[SeqRange] = []
    for span in spans:
        top = span.last_seq
        low = max(span.first_seq, before.applied_seq + 1)
        if low > top:
            continue
        for hole in _missing(received, lost, low - 1, top):
            tx.run(
                "INSERT INTO lost_ranges (store_id, gateway_id, first_seq, last_seq, reason, recorded_at)"
                " VALUES (:store_id, :gateway_id, :first, :last, :reason, :now)"
                " ON CONFLICT (store_id, gateway_id, first_seq) DO UPDATE SET"
                " last_seq = excluded.last_seq, reason = excluded.reason, recorded_at = excluded.recorded_at"
                " WHERE excluded.last_seq > lost_ranges.last_seq",
                {
                    "store_id": store_id,
                    "gateway_id": gateway_id,
                    "first": hole.first_seq,
                    "last": hole.last_seq,
                    "reason": reason,
                    "now": now,
                },
            )
            lost.append((hole.first_seq, hole.last_seq))
            recorded.append(hole)
    if recorded:
        tx.run(
            "UPDATE apply_cursors SET lost_top = :top"
            " WHERE store_id = :store_id AND gateway_id = :gateway_id AND lost_top < :top",
            {"top": max(r.last_seq for r in recorded), "store_id": store_id, "gateway_id": gateway_id},
        )
    return recorded


def _record_command_result(tx: Tx, message: CommandResultMessage, received_at: float) -> ResendAnswer | None:
    result, store_id = message.result, message.store_id
    lock_store(tx, store_id, received_at)
    tx.run(
        "INSERT INTO command_results (store_id, command_id, ok, error, result, received_at)"
        " VALUES (:store_id, :id, :ok, :error, :result, :received_at)"
        " ON CONFLICT (store_id, command_id) DO NOTHING",
        {
            "store_id": store_id,
            "id": result.id,
            "ok": result.ok,
            "error": result.error,
            "result": None if result.result is None else json.dumps(result.result, ensure_ascii=False),
            "received_at": received_at,
        },
    )
    request = tx.run(
        "SELECT gateway_id, answered_at FROM resend_requests WHERE store_id = :store_id AND command_id = :id",
        {"store_id": store_id, "id": result.id},
    ).one_or_none()
    if request is None or request[1] is not None:
        return None  # not a resend, or a redelivered answer
    gateway_id = str(request[0])
    tx.run(
        "UPDATE resend_requests SET answered_at = :now, result = :result"
        " WHERE store_id = :store_id AND gateway_id = :gateway_id",
        {
            "now": received_at,
            "result": result.model_dump_json(exclude_none=True),
            "store_id": store_id,
            "gateway_id": gateway_id,
        },
    )
    outcome: ResendResult | None = None
    if result.ok and result.result is not None:
        try:
            outcome = ResendResult.model_validate(result.result)
        except ValidationError as exc:
            log.warning("store %s: unreadable resend result %s: %s", store_id, result.id, exc)
    if outcome is None:
        return ResendAnswer(store_id, gateway_id, None, (), 0)
    before = _cursor(tx, store_id, gateway_id)
    if outcome.not_allocated:
        # The gateway has not allocated these: a heartbeat-reported tail above them is stale.
        below = min(span.first_seq for span in outcome.not_allocated) - 1
        tx.run(
            "UPDATE apply_cursors SET reported_seq = :below WHERE store_id = :store_id"
            " AND gateway_id = :gateway_id AND reported_seq > :below",
            {"below": below, "store_id": store_id, "gateway_id": gateway_id},
        )
        before = _cursor(tx, store_id, gateway_id)
    lost = _record_lost(
        tx, store_id, gateway_id, outcome.not_retained, reason="not-retained", now=received_at
    )
    current = _cursor(tx, store_id, gateway_id)  # `lost_top` moved
    applied_seq, released, _above = _advance(
        tx, store_id, gateway_id, current, applied_seq=current.applied_seq, now=received_at
    )
    _settle(tx, store_id, gateway_id, before=before, applied_seq=applied_seq, now=received_at)
    return ResendAnswer(store_id, gateway_id, outcome, tuple(lost), released)


# --- resend requests and give-up ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResendPolicy:
    """Rate limits of `cmd/resend`, shared by all workers through the `resend_requests` table."""

    retry_s: float
    """An unanswered request is re-published (same id, so the gateway runs it once) after this."""
    min_interval_s: float
    """After an answer, the next request for the same gateway waits this long."""


@dataclass(frozen=True, slots=True)
class ResendClaim:
    """A `cmd/resend` this worker must publish for `store_id` (a new request, or a retry of one)."""

    store_id: str
    gateway_id: str
    command: Command
    retry: bool


def _resend_spans(missing: Iterable[SeqRange]) -> list[SeqSpan]:
    """The oldest holes, within one command's limits."""
    spans: list[SeqSpan] = []
    budget = MAX_RESEND_EVENTS
    for hole in missing:
        if len(spans) == MAX_RESEND_RANGES or budget <= 0:
            break
        last = min(hole.last_seq, hole.first_seq + budget - 1)
        spans.append(SeqSpan(first_seq=hole.first_seq, last_seq=last))
        budget -= last - hole.first_seq + 1
    return spans


def _claim_resend(
    tx: Tx, store_id: str, gateway_id: str, now: float, policy: ResendPolicy
) -> ResendClaim | None:
    lock_store(tx, store_id, now)
    cursor = _cursor(tx, store_id, gateway_id)
    received = _ranges(tx, "seq_ranges", store_id, gateway_id, cursor.applied_seq)
    lost = _ranges(tx, "lost_ranges", store_id, gateway_id, cursor.applied_seq)
    top_seq = max([cursor.applied_seq, cursor.reported_seq, *(last for _, last in received)])
    missing = _missing(received, lost, cursor.applied_seq, top_seq)
    if not missing:
        return None
    key = {"store_id": store_id, "gateway_id": gateway_id}
    row = tx.run(
        "SELECT command_id, args, issued_at, last_sent_at, answered_at FROM resend_requests"
        " WHERE store_id = :store_id AND gateway_id = :gateway_id",
        key,
    ).one_or_none()
    if row is not None and row[4] is None:
        if now - float(row[3]) < policy.retry_s:
            return None  # asked recently, no answer yet (the gateway may be offline: the broker holds it)
        tx.run(
            "UPDATE resend_requests SET last_sent_at = :now, sends = sends + 1"
            " WHERE store_id = :store_id AND gateway_id = :gateway_id",
            {**key, "now": now},
        )
        command = Command(id=str(row[0]), issued_at=str(row[2]), args=json.loads(row[1]))
        return ResendClaim(store_id, gateway_id, command, retry=True)
    if row is not None and now - float(row[4]) < policy.min_interval_s:
        return None
    args = ResendArgs(ranges=_resend_spans(missing)).model_dump(mode="json")
    command = Command(id=f"resend-{uuid.uuid4().hex}", issued_at=rfc3339(now), args=args)
    tx.run(
        "INSERT INTO resend_requests (store_id, gateway_id, command_id, args, issued_at, first_sent_at,"
        " last_sent_at, sends, answered_at, result)"
        " VALUES (:store_id, :gateway_id, :command_id, :args, :issued_at, :now, :now, 1, NULL, NULL)"
        " ON CONFLICT (store_id, gateway_id) DO UPDATE SET command_id = excluded.command_id,"
        " args = excluded.args, issued_at = excluded.issued_at, first_sent_at = excluded.first_sent_at,"
        " last_sent_at = excluded.last_sent_at, sends = 1, answered_at = NULL, result = NULL",
        {
            **key,
            "command_id": command.id,
            "args": json.dumps(args, separators=(",", ":")),
            "issued_at": command.issued_at,
            "now": now,
        },
    )
    return ResendClaim(store_id, gateway_id, command, retry=False)


def _due_gaps(tx: Tx, cutoff: float, window_events: int) -> list[tuple[str, str]]:
    rows = tx.run(
        "SELECT store_id, gateway_id FROM apply_cursors WHERE gap_since IS NOT NULL"
        " AND (gap_since <= :cutoff OR top_seq - applied_seq > :window) ORDER BY gap_since",
        {"cutoff": cutoff, "window": window_events},
    ).all()
    return [(str(r[0]), str(r[1])) for r in rows]


def _give_up(
    tx: Tx, store_id: str, gateway_id: str, now: float, give_up_s: float
) -> tuple[GapState, int] | None:
    """Record a hole older than `give_up_s` as lost and apply what waited behind it; (hole, applied)."""
    lock_store(tx, store_id, now)
    before = _cursor(tx, store_id, gateway_id)
    if before.gap_since is None or now - before.gap_since < give_up_s:
        return None  # another worker got here first, or the hole closed
    received = _ranges(tx, "seq_ranges", store_id, gateway_id, before.applied_seq)
    lost = _ranges(tx, "lost_ranges", store_id, gateway_id, before.applied_seq)
    top_seq = max([before.applied_seq, before.reported_seq, *(last for _, last in received)])
    missing = _missing(received, lost, before.applied_seq, top_seq)
    _record_lost(tx, store_id, gateway_id, missing, reason="gave-up", now=now)
    current = _cursor(tx, store_id, gateway_id)  # `lost_top` moved
    applied_seq, released, _above = _advance(
        tx, store_id, gateway_id, current, applied_seq=current.applied_seq, now=now
    )
    _settle(tx, store_id, gateway_id, before=before, applied_seq=applied_seq, now=now)
    gap = GapState(
        store_id=store_id,
        gateway_id=gateway_id,
        applied_seq=before.applied_seq,
        top_seq=top_seq,
        since=before.gap_since,
        missing=tuple(missing),
    )
    return gap, released


def quarantine_row(tx: Tx, topic: str, reason: str, payload: bytes, received_at: float) -> int:
    """Keep a refused payload with its reason: the first QUARANTINE_KEEP_BYTES, UTF-8 or hex, size in full."""
    reason = reason.replace("\x00", "\\x00")  # PostgreSQL text cannot hold NUL; a reason may quote input
    kept = payload[:QUARANTINE_KEEP_BYTES]
    try:
        text_value, encoding = kept.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text_value, encoding = kept.hex(), "hex"
    if "\x00" in text_value:  # valid UTF-8, but PostgreSQL text cannot hold NUL
        text_value, encoding = kept.hex(), "hex"
    return int(
        tx.run(
            "INSERT INTO quarantine (topic, received_at, reason, payload, payload_encoding, payload_size)"
            " VALUES (:topic, :received_at, :reason, :payload, :encoding, :size) RETURNING id",
            {
                "topic": topic,
                "received_at": received_at,
                "reason": reason,
                "payload": text_value,
                "encoding": encoding,
                "size": len(payload),
            },
        ).scalar_one()
    )


# --- reads ---------------------------------------------------------------------------------------------


def _seq_summary(ranges: list[tuple[int, int]]) -> tuple[int | None, int, tuple[SeqRange, ...]]:
    """(highest received, highest contiguous from 1, missing ranges) from sorted received ranges."""
    if not ranges:
        return None, 0, ()
    contiguous = ranges[0][1] if ranges[0][0] == 1 else 0
    missing: list[SeqRange] = []
    expected = 1
    for first, last in ranges:
        if first > expected and len(missing) < MISSING_RANGES_SHOWN:
            missing.append(SeqRange(first_seq=expected, last_seq=first - 1))
        expected = max(expected, last + 1)
    return ranges[-1][1], contiguous, tuple(missing)


_STORE_COLUMNS: Final = (
    "s.store_id, s.gateway_id, s.online, s.status_ts, s.boot_id, s.version, s.config_version,"
    " s.last_heartbeat_at, s.heartbeat_ts, s.outbox_depth, s.outbox_oldest_age_s, s.last_seq,"
    " s.devices_offline,"
    " (SELECT COUNT(*) FROM alerts a WHERE a.store_id = s.store_id AND a.state_rank < :resolved_rank),"
    " (SELECT c.applied_seq FROM apply_cursors c WHERE c.store_id = s.store_id AND c.gateway_id = s.gateway_id)"
)


def _grouped(tx: Tx, table: str, store_id: str | None) -> dict[tuple[str, str], list[tuple[int, int]]]:
    if table not in {"seq_ranges", "lost_ranges"}:
        raise ValueError(table)
    where = "" if store_id is None else " WHERE store_id = :store_id"
    grouped: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for r_store, r_gateway, r_first, r_last in tx.run(
        f"SELECT store_id, gateway_id, first_seq, last_seq FROM {table}{where} ORDER BY first_seq",  # noqa: S608
        {"store_id": store_id},
    ):
        grouped.setdefault((r_store, r_gateway), []).append((int(r_first), int(r_last)))
    return grouped


def _stores(tx: Tx, store_id: str | None) -> list[StoreRecord]:
    where = "" if store_id is None else " WHERE s.store_id = :store_id"
    rows = tx.run(
        f"SELECT {_STORE_COLUMNS} FROM stores s{where} ORDER BY s.store_id",  # noqa: S608 - fixed fragments
        {"store_id": store_id, "resolved_rank": ALERT_STATE_RANK[AlertState.RESOLVED]},
    ).all()
    ranges = _grouped(tx, "seq_ranges", store_id)
    lost = _grouped(tx, "lost_ranges", store_id)
    records = []
    for row in rows:
        received, contiguous, missing = _seq_summary(ranges.get((row[0], row[1]), []))
        records.append(
            StoreRecord(
                store_id=row[0],
                gateway_id=row[1],
                online=None if row[2] is None else bool(row[2]),
                status_ts=row[3],
                boot_id=row[4],
                version=row[5],
                config_version=row[6],
                last_heartbeat_at=row[7],
                heartbeat_ts=row[8],
                outbox_depth=row[9],
                outbox_oldest_age_s=row[10],
                last_seq=row[11],
                devices_offline=row[12],
                active_alerts=row[13],
                received_seq=received,
                contiguous_seq=contiguous,
                missing_ranges=missing,
                applied_seq=row[14] or 0,
                lost_ranges=tuple(
                    SeqRange(first_seq=f, last_seq=last) for f, last in lost.get((row[0], row[1]), [])
                ),
            )
        )
    return records


def _stock(tx: Tx, store_id: str) -> list[StockItem]:
    rows = tx.run(
        "SELECT bin_id, sku, count, weight_g, safety_stock, max_stock, updated_ts FROM stock"
        " WHERE store_id = :store_id ORDER BY bin_id",
        {"store_id": store_id},
    ).all()
    return [
        StockItem(
            bin_id=r[0],
            sku=r[1],
            count=r[2],
            weight_g=r[3],
            safety_stock=r[4],
            max_stock=r[5],
            updated_ts=r[6],
        )
        for r in rows
    ]


def _alerts(tx: Tx, store_id: str, active: bool | None) -> list[AlertItem]:
    resolved = ALERT_STATE_RANK[AlertState.RESOLVED]
    where = {None: "", True: " AND state_rank < :resolved", False: " AND state_rank >= :resolved"}[active]
    rows = tx.run(
        "SELECT alert_id, bin_id, sku, kind, state, count, message, raised_at, updated_ts, acknowledged_by"  # noqa: S608 - fixed fragments
        f" FROM alerts WHERE store_id = :store_id{where} ORDER BY raised_at, alert_id",
        {"store_id": store_id, "resolved": resolved},
    ).all()
    return [
        AlertItem(
            alert_id=r[0],
            bin_id=r[1],
            sku=r[2],
            kind=r[3],
            state=r[4],
            count=r[5],
            message=r[6],
            raised_at=r[7],
            updated_ts=r[8],
            acknowledged_by=r[9],
        )
        for r in rows
    ]


def _quarantined(tx: Tx, limit: int) -> list[QuarantineItem]:
    rows = tx.run(
        "SELECT id, topic, received_at, reason, payload, payload_encoding, payload_size FROM quarantine"
        " ORDER BY id DESC LIMIT :limit",
        {"limit": limit},
    ).all()
    return [
        QuarantineItem(
            id=r[0],
            topic=r[1],
            received_at=rfc3339(r[2]),
            reason=r[3],
            payload=r[4],
            payload_encoding=r[5],
            payload_size=r[6],
        )
        for r in rows
    ]


# --- the async facade ----------------------------------------------------------------------------------


class HubDB:
    """The hub's database, used as ``async with HubDB(url) as db``; every call runs on a DB thread.

    `url` is a config `database` value (`hub.config.normalize_database_url`); a `Path` means a SQLite file.
    """

    def __init__(self, url: str | Path, *, pool_size: int = 4) -> None:
        self.url = normalize_database_url(str(url))
        self.dialect: Dialect = "sqlite" if sqlite_file(self.url) is not None else "postgresql"
        self._threads = 1 if self.dialect == "sqlite" else pool_size
        self._executor: ThreadPoolExecutor | None = None
        self._engine: Engine | None = None

    @property
    def path(self) -> Path | None:
        """The SQLite file, or None on PostgreSQL."""
        return sqlite_file(self.url)

    def __repr__(self) -> str:
        return f"HubDB({redacted(self.url)!r})"

    async def __aenter__(self) -> Self:
        self._executor = ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="hub-db")
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._open)
        except (SQLAlchemyError, OSError) as exc:
            self._executor.shutdown(wait=True)
            self._executor = None
            raise HubDBError(f"cannot open hub database {redacted(self.url)}: {exc}") from exc
        except BaseException:
            self._executor.shutdown(wait=True)
            self._executor = None
            raise
        return self

    def _open(self) -> None:
        engine = (
            _sqlite_engine(self.url)
            if self.dialect == "sqlite"
            else _postgresql_engine(self.url, self._threads)
        )
        try:
            self._transact(engine, migrate, (), write=True)
        except BaseException:
            engine.dispose()
            raise
        self._engine = engine

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        engine, self._engine = self._engine, None
        executor, self._executor = self._executor, None
        if executor is None:
            return

        def close() -> None:
            # A call whose caller was cancelled still runs to its end on its DB thread; wait for it, so that
            # every connection is back in the pool when the pool is closed (none left for the GC to find).
            executor.shutdown(wait=True)
            if engine is not None:
                engine.dispose()

        await asyncio.shield(asyncio.to_thread(close))

    def _transact(self, engine: Engine, fn: Callable[..., T], args: tuple[Any, ...], *, write: bool) -> T:
        """Run `fn(tx, *args)` in one transaction (on the calling DB thread); commit, or roll back on error."""
        for attempt in range(1, _RETRIES + 1):
            try:
                with engine.connect() as conn:
                    if self.dialect == "sqlite":
                        conn.info[_SQLITE_BEGIN] = "BEGIN IMMEDIATE" if write else "BEGIN"
                    with conn.begin():
                        return fn(Tx(conn, self.dialect), *args)
            except OperationalError as exc:
                # PostgreSQL picks a victim of a deadlock (40P01) or a serialization failure (40001) and rolls
                # its transaction back; every apply here is idempotent, so running it again is the documented
                # remedy (PostgreSQL manual §13.6) — without it one deadlock between two workers stopped a worker.
                code = getattr(exc.orig, "sqlstate", None)
                if code not in _RETRY_SQLSTATES or attempt == _RETRIES:
                    raise
                log.warning(
                    "transaction rolled back by PostgreSQL (%s); retrying (%d/%d)", code, attempt, _RETRIES
                )
                time.sleep(0.01 * attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    async def run(self, fn: Callable[..., T], *args: Any, write: bool = True) -> T:
        """Run `fn(tx, *args)` in one transaction on a DB thread and return its result; `write=False` opens a
        read transaction (plain BEGIN on SQLite, so readers do not queue for the write lock)."""
        engine, executor = self._engine, self._executor
        if engine is None or executor is None:
            raise HubDBError("the hub database is not open")
        return await asyncio.get_running_loop().run_in_executor(
            executor, functools.partial(self._transact, engine, fn, args, write=write)
        )

    # --- writes (one transaction each) ---

    async def apply_batch(self, message: BatchMessage, received_at: float) -> ApplyResult:
        """Store the batch's events at most once each and apply, in seq order, whatever can be applied."""
        try:
            return await self.run(_apply_batch, message, received_at, False)
        except _InsertRace:
            log.warning(
                "store %s: events of gateway %s were stored under another store meanwhile; is its gateway_id"
                " used by two stores? Applying this batch one event at a time",
                message.store_id,
                message.batch.gateway_id,
            )
            return await self.run(_apply_batch, message, received_at, True)

    async def record_status(self, message: StatusMessage, received_at: float) -> None:
        """Store a birth/will (online/offline, versions)."""
        await self.run(_record_status, message, received_at)

    async def record_heartbeat(self, message: HeartbeatMessage, received_at: float) -> GapState | None:
        """Store a heartbeat and its receive time; returns the gateway's hole if it reveals a missing tail."""
        return await self.run(_record_heartbeat, message, received_at)

    async def record_command_result(
        self, message: CommandResultMessage, received_at: float
    ) -> ResendAnswer | None:
        """Store a command outcome (first one wins per command id); a resend answer also records what the
        gateway no longer has as lost and applies what waited behind it."""
        return await self.run(_record_command_result, message, received_at)

    async def quarantine(self, topic: str, reason: str, payload: bytes, received_at: float) -> int:
        """Keep a refused message with its reason; returns its quarantine id."""
        return await self.run(quarantine_row, topic, reason, payload, received_at)

    async def claim_resend(
        self, store_id: str, gateway_id: str, now: float, policy: ResendPolicy
    ) -> ResendClaim | None:
        """The resend this worker should publish for a gateway's holes now, or None (nothing missing, or
        another request is recent). Claimed in the database, so N workers publish one request."""
        return await self.run(_claim_resend, store_id, gateway_id, now, policy)

    async def due_gaps(self, now: float, timeout_s: float, window_events: int) -> list[tuple[str, str]]:
        """(store_id, gateway_id) of holes older than `timeout_s` or wider than the window, oldest first."""
        return await self.run(_due_gaps, now - timeout_s, window_events, write=False)

    async def give_up_gaps(self, now: float, give_up_s: float) -> list[tuple[GapState, int]]:
        """Record every hole older than `give_up_s` as lost and apply what waited behind it; returns each
        hole given up with the number of events that were then applied."""
        given_up: list[tuple[GapState, int]] = []
        for store_id, gateway_id in await self.run(_due_gaps, now - give_up_s, 2**62, write=False):
            outcome = await self.run(_give_up, store_id, gateway_id, now, give_up_s)
            if outcome is not None:
                given_up.append(outcome)
        return given_up

    # --- reads ---

    async def stores(self) -> list[StoreRecord]:
        """Every store the hub has heard from, by store id."""
        return await self.run(_stores, None, write=False)

    async def store(self, store_id: str) -> StoreRecord | None:
        """One store, or None if the hub has never heard from it."""
        found = await self.run(_stores, store_id, write=False)
        return found[0] if found else None

    async def stock(self, store_id: str) -> list[StockItem]:
        """A store's bins, by bin id."""
        return await self.run(_stock, store_id, write=False)

    async def alerts(self, store_id: str, active: bool | None = None) -> list[AlertItem]:
        """A store's alerts; `active` True = not resolved, False = resolved, None = all."""
        return await self.run(_alerts, store_id, active, write=False)

    async def quarantined(self, limit: int = 100) -> list[QuarantineItem]:
        """The most recent refused messages, newest first."""
        return await self.run(_quarantined, limit, write=False)

    async def query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Read-only escape hatch for tests and diagnostics (runs on a DB thread, in its own transaction)."""

        def select(tx: Tx) -> list[tuple[Any, ...]]:
            return [tuple(row) for row in tx.conn.execute(text(sql), params or {}).all()]

        return await self.run(select, write=False)
