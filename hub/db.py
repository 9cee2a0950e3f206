"""The hub's store: SQLite (WAL) today, PostgreSQL later — so every apply statement is portable SQL.

Why the apply is safe under at-least-once delivery (ARCHITECTURE.md, "The bridge and its contract"):

- `events.id` (= ``{gateway_id}:{seq}``) is the PRIMARY KEY, and an event's effect runs only when its
  ``INSERT … ON CONFLICT (id) DO NOTHING`` inserted a row — the database, not a memory set, makes apply
  at-most-once, and it survives restarts;
- effects are commutative, so out-of-order delivery converges: `stock.changed` replaces a bin's row only
  if its seq is higher than the stored one; alert events move the state only forward by `ALERT_STATE_RANK`
  (ties go to the higher seq);
- all writes of one batch (events, effects, received seq ranges) happen in ONE transaction.

Portability rules for the apply logic (the PostgreSQL backend will reuse it): named parameters,
``ON CONFLICT … DO NOTHING / DO UPDATE … WHERE``, ``excluded.``, no INSERT OR REPLACE, no rowid, times as
epoch seconds in DOUBLE PRECISION and gateway timestamps as RFC 3339 text. Only the DDL and the connection
PRAGMAs are SQLite's.

All database work runs on one dedicated thread owned by `HubDB` (STYLE.md rule 5): the event loop never blocks
on SQLite, and the connection is only ever touched by the thread that opened it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, TypeVar

from cloud_bridge.contract import ALERT_STATE_RANK, AlertData, AlertState, EventType, StockChanged, rfc3339
from hub.models import AlertItem, ApplyResult, QuarantineItem, SeqRange, StockItem, StoreRecord
from hub.parse import BatchMessage, CommandResultMessage, HeartbeatMessage, StatusMessage, check_timestamp

log = logging.getLogger(__name__)

T = TypeVar("T")

QUARANTINE_KEEP_BYTES: Final = 64 * 1024
"""A quarantined payload is kept up to this size (enough to diagnose; the size is recorded in full)."""

MISSING_RANGES_SHOWN: Final = 100

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
        id INTEGER PRIMARY KEY,
        topic TEXT NOT NULL,
        received_at DOUBLE PRECISION NOT NULL,
        reason TEXT NOT NULL,
        payload TEXT NOT NULL,
        payload_encoding TEXT NOT NULL,
        payload_size BIGINT NOT NULL
    );
    """,
)

SCHEMA_VERSION: Final = len(_MIGRATIONS)


class HubDBError(RuntimeError):
    """The hub database cannot be opened or is newer than this code."""


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to `SCHEMA_VERSION`, one transaction per step; returns the version found before."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    found = int(row[0]) if row is not None and row[0] is not None else 0
    if found > SCHEMA_VERSION:
        raise HubDBError(f"database schema v{found} is newer than this hub (v{SCHEMA_VERSION})")
    for version in range(found + 1, SCHEMA_VERSION + 1):
        with _transaction(conn):
            for statement in _MIGRATIONS[version - 1].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version) VALUES (:v)", {"v": version})
        log.info("hub database migrated to schema v%d", version)
    return found


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


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


def _event_params(store_id: str, seq: int, ts: str, data: StockChanged | AlertData) -> dict[str, Any]:
    params = data.model_dump(mode="json")
    params.update(store_id=store_id, seq=seq, ts=ts)
    return params


def _merge_seq_range(conn: sqlite3.Connection, store_id: str, gateway_id: str, first: int, last: int) -> None:
    """Fold first..last into the store's set of received ranges (touching or overlapping ranges merge)."""
    key = {"store_id": store_id, "gateway_id": gateway_id}
    rows = conn.execute(
        "SELECT first_seq, last_seq FROM seq_ranges WHERE store_id = :store_id AND gateway_id = :gateway_id"
        " AND last_seq >= :lo AND first_seq <= :hi",
        {**key, "lo": first - 1, "hi": last + 1},
    ).fetchall()
    if len(rows) == 1 and rows[0][0] <= first and rows[0][1] >= last:
        return  # already inside a received range (a duplicate batch)
    for row_first, row_last in rows:
        first, last = min(first, row_first), max(last, row_last)
        conn.execute(
            "DELETE FROM seq_ranges"
            " WHERE store_id = :store_id AND gateway_id = :gateway_id AND first_seq = :f",
            {**key, "f": row_first},
        )
    conn.execute(
        "INSERT INTO seq_ranges (store_id, gateway_id, first_seq, last_seq)"
        " VALUES (:store_id, :gateway_id, :f, :l)",
        {**key, "f": first, "l": last},
    )


def _apply_batch(conn: sqlite3.Connection, message: BatchMessage, received_at: float) -> ApplyResult:
    batch, store_id = message.batch, message.store_id
    applied = duplicates = 0
    with _transaction(conn):
        conn.execute(_ENSURE_STORE, {"store_id": store_id, "now": received_at})
        for event, data in zip(batch.events, message.data, strict=True):
            inserted = conn.execute(
                "INSERT INTO events (id, store_id, gateway_id, seq, type, ts, data, received_at)"
                " VALUES (:id, :store_id, :gateway_id, :seq, :type, :ts, :data, :received_at)"
                " ON CONFLICT (id) DO NOTHING",
                {
                    "id": event.id,
                    "store_id": store_id,
                    "gateway_id": batch.gateway_id,
                    "seq": event.seq,
                    "type": event.type.value,
                    "ts": event.ts,
                    "data": json.dumps(event.data, separators=(",", ":"), ensure_ascii=False),
                    "received_at": received_at,
                },
            ).rowcount
            if inserted != 1:
                duplicates += 1
                continue
            applied += 1
            params = _event_params(store_id, event.seq, event.ts, data)
            if event.type is EventType.STOCK_CHANGED:
                conn.execute(_UPSERT_STOCK, params)
            else:
                assert isinstance(data, AlertData)  # noqa: S101 - parse.py pairs alert types with AlertData
                params["state_rank"] = ALERT_STATE_RANK[data.state]
                conn.execute(_UPSERT_ALERT, params)
                if data.state is AlertState.ACKNOWLEDGED and data.by is not None:
                    conn.execute(_FILL_ACKNOWLEDGED_BY, params)
        _merge_seq_range(conn, store_id, batch.gateway_id, batch.first_seq, batch.last_seq)
        conn.execute(
            "UPDATE stores SET gateway_id = :gateway_id WHERE store_id = :store_id AND gateway_id IS NULL",
            {"store_id": store_id, "gateway_id": batch.gateway_id},
        )
    return ApplyResult(applied=applied, duplicates=duplicates)


def _record_status(conn: sqlite3.Connection, message: StatusMessage, received_at: float) -> None:
    """Statuses apply in arrival order, not by `ts`: the will carries the time it was registered (connect
    time), which is older than the birth it follows, and the broker delivers one topic in order."""
    status = message.status
    with _transaction(conn):
        conn.execute(_ENSURE_STORE, {"store_id": message.store_id, "now": received_at})
        conn.execute(
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


def _record_heartbeat(conn: sqlite3.Connection, message: HeartbeatMessage, received_at: float) -> None:
    """The receive time always advances `last_heartbeat_at`; the payload replaces the stored one only if it
    is not older (a redelivered heartbeat must not roll the backlog figures back)."""
    heartbeat = message.heartbeat
    params = {
        "store_id": message.store_id,
        "received_at": received_at,
        "gateway_id": heartbeat.gateway_id,
        "heartbeat": heartbeat.model_dump_json(by_alias=True),
        "ts": rfc3339(check_timestamp(heartbeat.ts, "heartbeat.ts")),
        "outbox_depth": heartbeat.outbox_depth,
        "outbox_oldest_age_s": heartbeat.outbox_oldest_age_s,
        "last_seq": heartbeat.last_seq,
        "devices_offline": sum(1 for device in heartbeat.devices if not device.online),
    }
    with _transaction(conn):
        conn.execute(_ENSURE_STORE, {"store_id": message.store_id, "now": received_at})
        conn.execute(
            "UPDATE stores SET last_heartbeat_at = :received_at WHERE store_id = :store_id"
            " AND (last_heartbeat_at IS NULL OR last_heartbeat_at < :received_at)",
            params,
        )
        conn.execute(
            "UPDATE stores SET gateway_id = :gateway_id, heartbeat = :heartbeat, heartbeat_ts = :ts,"
            " outbox_depth = :outbox_depth, outbox_oldest_age_s = :outbox_oldest_age_s, last_seq = :last_seq,"
            " devices_offline = :devices_offline"
            " WHERE store_id = :store_id AND (heartbeat_ts IS NULL OR heartbeat_ts <= :ts)",
            params,
        )


def _record_command_result(
    conn: sqlite3.Connection, message: CommandResultMessage, received_at: float
) -> None:
    result = message.result
    with _transaction(conn):
        conn.execute(_ENSURE_STORE, {"store_id": message.store_id, "now": received_at})
        conn.execute(
            "INSERT INTO command_results (store_id, command_id, ok, error, result, received_at)"
            " VALUES (:store_id, :id, :ok, :error, :result, :received_at)"
            " ON CONFLICT (store_id, command_id) DO NOTHING",
            {
                "store_id": message.store_id,
                "id": result.id,
                "ok": result.ok,
                "error": result.error,
                "result": None if result.result is None else json.dumps(result.result, ensure_ascii=False),
                "received_at": received_at,
            },
        )


def _quarantine(conn: sqlite3.Connection, topic: str, reason: str, payload: bytes, received_at: float) -> int:
    kept = payload[:QUARANTINE_KEEP_BYTES]
    try:
        text, encoding = kept.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = kept.hex(), "hex"
    with _transaction(conn):
        cursor = conn.execute(
            "INSERT INTO quarantine (topic, received_at, reason, payload, payload_encoding, payload_size)"
            " VALUES (:topic, :received_at, :reason, :payload, :encoding, :size)",
            {
                "topic": topic,
                "received_at": received_at,
                "reason": reason,
                "payload": text,
                "encoding": encoding,
                "size": len(payload),
            },
        )
    return int(cursor.lastrowid or 0)


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
    " (SELECT COUNT(*) FROM alerts a WHERE a.store_id = s.store_id AND a.state_rank < :resolved_rank)"
)


_ALL_RANGES: Final = "SELECT store_id, gateway_id, first_seq, last_seq FROM seq_ranges ORDER BY first_seq"
_STORE_RANGES: Final = (
    "SELECT store_id, gateway_id, first_seq, last_seq FROM seq_ranges"
    " WHERE store_id = :store_id ORDER BY first_seq"
)


def _stores(conn: sqlite3.Connection, store_id: str | None) -> list[StoreRecord]:
    where = "" if store_id is None else " WHERE s.store_id = :store_id"
    rows = conn.execute(
        f"SELECT {_STORE_COLUMNS} FROM stores s{where} ORDER BY s.store_id",  # noqa: S608 - fixed fragments
        {"store_id": store_id, "resolved_rank": ALERT_STATE_RANK[AlertState.RESOLVED]},
    ).fetchall()
    ranges: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for r_store, r_gateway, r_first, r_last in conn.execute(
        _ALL_RANGES if store_id is None else _STORE_RANGES,
        {"store_id": store_id},
    ):
        ranges.setdefault((r_store, r_gateway), []).append((r_first, r_last))
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
            )
        )
    return records


def _stock(conn: sqlite3.Connection, store_id: str) -> list[StockItem]:
    rows = conn.execute(
        "SELECT bin_id, sku, count, weight_g, safety_stock, max_stock, updated_ts FROM stock"
        " WHERE store_id = :store_id ORDER BY bin_id",
        {"store_id": store_id},
    ).fetchall()
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


def _alerts(conn: sqlite3.Connection, store_id: str, active: bool | None) -> list[AlertItem]:
    resolved = ALERT_STATE_RANK[AlertState.RESOLVED]
    where = {None: "", True: " AND state_rank < :resolved", False: " AND state_rank >= :resolved"}[active]
    rows = conn.execute(
        "SELECT alert_id, bin_id, sku, kind, state, count, message, raised_at, updated_ts, acknowledged_by"  # noqa: S608 - fixed fragments
        f" FROM alerts WHERE store_id = :store_id{where} ORDER BY raised_at, alert_id",
        {"store_id": store_id, "resolved": resolved},
    ).fetchall()
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


def _quarantined(conn: sqlite3.Connection, limit: int) -> list[QuarantineItem]:
    rows = conn.execute(
        "SELECT id, topic, received_at, reason, payload, payload_encoding, payload_size FROM quarantine"
        " ORDER BY id DESC LIMIT :limit",
        {"limit": limit},
    ).fetchall()
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


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)  # explicit BEGIN/COMMIT in _transaction
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across app crashes, not power loss
        conn.execute("PRAGMA busy_timeout=5000")
        migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


class HubDB:
    """The hub's database, used as ``async with HubDB(path) as db``; every call runs on its own DB thread."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    async def __aenter__(self) -> Self:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-db")
        try:
            self._conn = await self._call_raw(_connect, self.path)
        except (sqlite3.Error, OSError) as exc:
            self._executor.shutdown(wait=True)
            self._executor = None
            raise HubDBError(f"cannot open hub database {self.path}: {exc}") from exc
        except BaseException:
            self._executor.shutdown(wait=True)
            self._executor = None
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        conn, self._conn = self._conn, None
        executor, self._executor = self._executor, None
        if executor is None:
            return
        if conn is not None:
            # Queued behind any work still running, so the connection closes on its own thread, last.
            await asyncio.shield(asyncio.get_running_loop().run_in_executor(executor, conn.close))
        executor.shutdown(wait=False)

    async def _call_raw(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise HubDBError("the hub database is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._conn is None:
            raise HubDBError("the hub database is not open")
        return await self._call_raw(fn, self._conn, *args)

    # --- writes (one transaction each) ---

    async def apply_batch(self, message: BatchMessage, received_at: float) -> ApplyResult:
        """Insert the batch's events at most once each and apply the new ones' effects, atomically."""
        return await self._call(_apply_batch, message, received_at)

    async def record_status(self, message: StatusMessage, received_at: float) -> None:
        """Store a birth/will (online/offline, versions)."""
        await self._call(_record_status, message, received_at)

    async def record_heartbeat(self, message: HeartbeatMessage, received_at: float) -> None:
        """Store a heartbeat and its receive time."""
        await self._call(_record_heartbeat, message, received_at)

    async def record_command_result(self, message: CommandResultMessage, received_at: float) -> None:
        """Store a command outcome (first one wins per command id)."""
        await self._call(_record_command_result, message, received_at)

    async def quarantine(self, topic: str, reason: str, payload: bytes, received_at: float) -> int:
        """Keep a refused message with its reason; returns its quarantine id."""
        return await self._call(_quarantine, topic, reason, payload, received_at)

    # --- reads ---

    async def stores(self) -> list[StoreRecord]:
        """Every store the hub has heard from, by store id."""
        return await self._call(_stores, None)

    async def store(self, store_id: str) -> StoreRecord | None:
        """One store, or None if the hub has never heard from it."""
        found = await self._call(_stores, store_id)
        return found[0] if found else None

    async def stock(self, store_id: str) -> list[StockItem]:
        """A store's bins, by bin id."""
        return await self._call(_stock, store_id)

    async def alerts(self, store_id: str, active: bool | None = None) -> list[AlertItem]:
        """A store's alerts; `active` True = not resolved, False = resolved, None = all."""
        return await self._call(_alerts, store_id, active)

    async def quarantined(self, limit: int = 100) -> list[QuarantineItem]:
        """The most recent refused messages, newest first."""
        return await self._call(_quarantined, limit)

    async def query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Read-only escape hatch for tests and diagnostics (runs on the DB thread)."""

        def run(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return [tuple(row) for row in conn.execute(sql, params or {}).fetchall()]

        return await self._call(run)
