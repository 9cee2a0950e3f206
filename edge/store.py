"""The gateway's durable state in one SQLite file (WAL): bins, event ledger, alert log, outbox.

Why one file and one writer thread: every event is written to the ledger and the outbox, and every alert
change to the alert log, in ONE transaction together with the `seq` it is given — so `seq` is gap-free and
survives restarts by construction (a crash either commits the event with its seq or neither). All SQLite work
runs on a single thread owned by this object (STYLE.md rule 5: no blocking calls on the event loop); the
connection is used from that thread only.

`synchronous=FULL` in WAL mode: a committed event survives a power cut (SQLite docs, "PRAGMA synchronous":
NORMAL in WAL mode may roll back the last transactions after a power loss). Commits are batched per poll
cycle, so the fsync cost is paid per batch, not per event.

Resend (`cmd/resend`, docs/wire-contract.md): the outbox row goes after its PUBACK, but the ledger keeps every
event for a bounded retention — the newest `retention_max_events` sent events, none older than
`retention_max_age_s` — so `resend()` can put a range back in the outbox with the same seq (and so the same
event id; the hub's constraint makes the replay harmless). Rows still waiting in the outbox are never pruned.
A resent row carries a `resend_gen` newer than the uplink's last `peek`, so the PUBACK of a batch that was
already in flight when the resend came cannot delete it unsent (`ack_through` deletes up to `last_seq` only
rows the uplink had peeked).

Outbox quotas (edge/outbox_quota.py): unsent bytes are counted per priority; while a quota is hit, level
updates wait in `outbox_held` (one row per bin, without a seq, coalesced to the latest) and are appended once
the backlog drains, so seq stays gap-free and sales and alerts are never dropped.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import sqlite_utils

from cloud_bridge.outbox import OutboxRow
from cloud_bridge.resend import ResendResult, SeqSpan, merge_spans
from edge.outbox_quota import (
    CRITICAL,
    LEVELS,
    ROW_BYTES_SQL,
    OutboxQuota,
    OutboxUsage,
    QuotaState,
    coalesce_key,
    merge_level,
    row_bytes,
)

T = TypeVar("T")

SCHEMA_VERSION = 3
"""1: bins, ledger, outbox, alerts. 2: ledger `created_at` and `priority` (retention, resend), outbox
`resend_gen`."""

RETENTION_MAX_EVENTS = 200_000
"""Default: sent events kept for `cmd/resend` (~20 MB of ledger at ~100 bytes per event)."""
RETENTION_MAX_AGE_S = 7 * 86_400.0
"""Default: a sent event older than a week is no longer kept for `cmd/resend`."""

PRIORITY_HIGH = 0
"""Sales and alerts: never dropped before level updates."""
PRIORITY_LEVEL = 1
"""Stock level updates — and any event that is a snapshot the next one of the same key supersedes: while an
outbox quota is hit they coalesce per `edge.outbox_quota.coalesce_key` (bin, facing, record). Anything that
must never be merged away is `PRIORITY_HIGH`."""


class StoreError(RuntimeError):
    """The gateway database cannot be opened or written."""


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append: it gets its seq inside the transaction that stores it."""

    event_type: str
    ts: str
    data: dict[str, Any]
    priority: int = PRIORITY_HIGH


@dataclass(frozen=True, slots=True)
class BinRow:
    """Persisted per-bin state, enough to restart the estimator where it stopped."""

    bin_id: str
    sku: str
    count: int | None
    weight_g: float
    baseline_g: float | None
    uncertain: bool
    updated_ts: float
    noise_g: float | None = None
    """The estimator's noise σ when saved: a restart then judges steps with it at once, instead of guessing σ
    from a first window that may hold a moving plate (schema v3)."""


@dataclass(frozen=True, slots=True)
class AlertRow:
    """One alert in the alert log (the latest state of each alert id)."""

    alert_id: str
    bin_id: str
    sku: str
    kind: str
    state: str
    count: int | None
    message: str
    raised_at: str
    updated_at: str
    acknowledged_by: str | None = None
    acknowledged_at: str | None = None
    resolved_at: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for the API."""
        return {f: getattr(self, f) for f in self.__slots__}


class GatewayStore:
    """Async facade over the gateway database; implements `cloud_bridge.outbox.Outbox`.

    `clock` (epoch seconds) stamps rows and judges their age; tests pass their own to age rows without
    waiting.
    """

    def __init__(
        self,
        path: Path,
        *,
        retention_max_events: int = RETENTION_MAX_EVENTS,
        retention_max_age_s: float = RETENTION_MAX_AGE_S,
        clock: Callable[[], float] = time.time,
        quota: OutboxQuota | None = None,
    ) -> None:
        if retention_max_events < 0 or retention_max_age_s < 0:
            raise ValueError("retention_max_events and retention_max_age_s must be >= 0")
        self.path = path
        self.retention_max_events = retention_max_events
        self.retention_max_age_s = retention_max_age_s
        self._clock = clock
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._rows_waiting = asyncio.Event()
        self.events_written = 0
        self.events_pruned = 0
        """Sent events dropped from the ledger by the retention limits since start."""
        self._resend_gen = 0
        """Bumped by every resend; stored on the rows it re-enqueues (DB thread only)."""
        self._peeked_gen = 0
        """`_resend_gen` at the uplink's last peek: rows newer than that have not been seen by it."""
        self._quota = QuotaState(quota or OutboxQuota())
        """Per-priority quotas of unsent events (edge/outbox_quota.py); database thread only."""

    # --- lifecycle -------------------------------------------------------------------------------------

    async def __aenter__(self) -> GatewayStore:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-store")
        await self._run(self._open)
        depth, _ = await self.depth()
        if depth:
            self._rows_waiting.set()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._executor is not None:
            await self._run(self._close)
            self._executor.shutdown(wait=True)
            self._executor = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise StoreError("store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open gateway database {self.path}: {exc}") from exc
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        self._conn = conn
        self._migrate(sqlite_utils.Database(conn))
        self._migrate_v2(conn, self._clock())
        self._migrate_v3(conn)
        (gen,) = conn.execute("SELECT COALESCE(MAX(resend_gen), 0) FROM outbox").fetchone()
        self._resend_gen = int(gen)
        self._open_quota(conn)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("store is not open")
        return self._conn

    @staticmethod
    def _migrate(db: sqlite_utils.Database) -> None:
        tables = set(db.table_names())
        if "meta" not in tables:
            db.table("meta").create({"key": str, "value": str}, pk="key")
            db.table("meta").insert_all(
                [{"key": "schema_version", "value": "1"}, {"key": "last_seq", "value": "0"}]  # v1 tables
            )
        if "bins" not in tables:
            db.table("bins").create(
                {
                    "bin_id": str,
                    "sku": str,
                    "count": int,
                    "weight_g": float,
                    "baseline_g": float,
                    "uncertain": int,
                    "updated_ts": float,
                },
                pk="bin_id",
            )
        if "ledger" not in tables:
            # Every event the gateway ever emitted, kept after upload: the source for resends and audits.
            db.table("ledger").create({"seq": int, "type": str, "ts": str, "data": str}, pk="seq")
        if "outbox" not in tables:
            db.table("outbox").create(
                {"seq": int, "type": str, "ts": str, "data": str, "priority": int, "created_at": float},
                pk="seq",
            )
        if "alerts" not in tables:
            db.table("alerts").create(
                {
                    "alert_id": str,
                    "bin_id": str,
                    "sku": str,
                    "kind": str,
                    "state": str,
                    "count": int,
                    "message": str,
                    "raised_at": str,
                    "updated_at": str,
                    "acknowledged_by": str,
                    "acknowledged_at": str,
                    "resolved_at": str,
                },
                pk="alert_id",
            )
            db.table("alerts").create_index(["state"])
            db.table("alerts").create_index(["bin_id"])

    @staticmethod
    def _migrate_v2(conn: sqlite3.Connection, now: float) -> None:
        """Retention and resend columns. Rows kept by v1 count as written now, so they expire a retention
        period after the upgrade, not at once."""
        (version,) = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if int(version) >= 2:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("ALTER TABLE ledger ADD COLUMN created_at REAL")
            conn.execute("ALTER TABLE ledger ADD COLUMN priority INTEGER NOT NULL DEFAULT 0")
            conn.execute("UPDATE ledger SET created_at = ?", (now,))
            conn.execute(
                "UPDATE ledger SET priority = (SELECT o.priority FROM outbox o WHERE o.seq = ledger.seq)"
                " WHERE seq IN (SELECT seq FROM outbox)"
            )
            conn.execute("ALTER TABLE outbox ADD COLUMN resend_gen INTEGER NOT NULL DEFAULT 0")
            conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    @staticmethod
    def _migrate_v3(conn: sqlite3.Connection) -> None:
        """The estimator's noise σ per bin (nullable: unknown for rows written before)."""
        (version,) = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if int(version) >= 3:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("ALTER TABLE bins ADD COLUMN noise_g REAL")
            conn.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    # --- writes --------------------------------------------------------------------------------------------

    async def record(
        self,
        events: Sequence[NewEvent] = (),
        bins: Sequence[BinRow] = (),
        alerts: Sequence[AlertRow] = (),
    ) -> list[int]:
        """Append events (ledger + outbox) and upsert bin and alert state in one transaction; return the seqs."""
        if not events and not bins and not alerts:
            return []
        seqs = await self._run(self._record, list(events), list(bins), list(alerts))
        if seqs:
            self.events_written += len(seqs)
            self._rows_waiting.set()
        return seqs

    async def transact(self, fn: Callable[[sqlite3.Connection], T], events: Sequence[NewEvent] = ()) -> T:
        """Run `fn(conn)` on the store thread inside the one transaction that also appends `events` (ledger +
        outbox, through the same path as `record`); fn's return value is returned. fn must not BEGIN/COMMIT;
        if it raises, nothing of it and no event is committed. The hook for modules that own their own tables
        (checkout lanes, book stock) and need their rows atomic with an outbox event."""
        box: list[T] = []
        seqs = await self._run(self._record, list(events), [], [], lambda conn: box.append(fn(conn)))
        if seqs:
            self.events_written += len(seqs)
            self._rows_waiting.set()
        return box[0]

    def _record(
        self,
        events: list[NewEvent],
        bins: list[BinRow],
        alerts: list[AlertRow],
        before_commit: Callable[[sqlite3.Connection], object] | None = None,
    ) -> list[int]:
        db = self._db
        now = self._clock()
        saved_quota = self._quota.snapshot()
        db.execute("BEGIN IMMEDIATE")
        try:
            seqs = self._append_events(events, now) if events else []
            if bins:
                db.executemany(
                    "INSERT INTO bins (bin_id, sku, count, weight_g, baseline_g, uncertain, updated_ts, noise_g)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(bin_id) DO UPDATE SET sku=excluded.sku,"
                    " count=excluded.count, weight_g=excluded.weight_g, baseline_g=excluded.baseline_g,"
                    " uncertain=excluded.uncertain, updated_ts=excluded.updated_ts,"
                    " noise_g=COALESCE(excluded.noise_g, bins.noise_g)",
                    [
                        (
                            b.bin_id,
                            b.sku,
                            b.count,
                            b.weight_g,
                            b.baseline_g,
                            int(b.uncertain),
                            b.updated_ts,
                            b.noise_g,
                        )
                        for b in bins
                    ],
                )
            if alerts:
                db.executemany(
                    "INSERT INTO alerts (alert_id, bin_id, sku, kind, state, count, message, raised_at, updated_at,"
                    " acknowledged_by, acknowledged_at, resolved_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
                    " ON CONFLICT(alert_id) DO UPDATE SET state=excluded.state, count=excluded.count,"
                    " message=excluded.message, updated_at=excluded.updated_at,"
                    " acknowledged_by=COALESCE(excluded.acknowledged_by, alerts.acknowledged_by),"
                    " acknowledged_at=COALESCE(excluded.acknowledged_at, alerts.acknowledged_at),"
                    " resolved_at=COALESCE(excluded.resolved_at, alerts.resolved_at)",
                    [
                        (
                            a.alert_id,
                            a.bin_id,
                            a.sku,
                            a.kind,
                            a.state,
                            a.count,
                            a.message,
                            a.raised_at,
                            a.updated_at,
                            a.acknowledged_by,
                            a.acknowledged_at,
                            a.resolved_at,
                        )
                        for a in alerts
                    ],
                )
            if before_commit is not None:
                before_commit(db)
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            self._quota.restore(saved_quota)
            raise
        self._quota.evaluate()
        return seqs

    # --- outbox quotas (edge/outbox_quota.py) ---------------------------------------------------------

    @property
    def outbox_alarm(self) -> str | None:
        """The outbox quota alarm while a quota is hit (heartbeat `outbox_alarm`), else None."""
        return self._quota.alarm

    def outbox_usage(self) -> OutboxUsage:
        """Unsent bytes per class against the quotas, held level updates and the alarm (`/api/health`)."""
        return self._quota.usage()

    def _open_quota(self, conn: sqlite3.Connection) -> None:
        """Create the held-updates table (additive: no schema version bump) and count what is unsent."""
        conn.execute(
            "CREATE TABLE IF NOT EXISTS outbox_held (key TEXT PRIMARY KEY, type TEXT NOT NULL, ts TEXT NOT NULL,"
            " data TEXT NOT NULL, priority INTEGER NOT NULL, created_at REAL NOT NULL, merged INTEGER NOT NULL)"
        )
        self._count_unsent("1", (), sign=1)
        (held,) = conn.execute("SELECT COUNT(*) FROM outbox_held").fetchone()
        self._quota.held = int(held)
        if self._quota.held and self._quota.would_clear():
            # Held before a restart under quotas that are no longer hit (the backlog drained, or the quota
            # was raised): release now — no acknowledgement may come to do it if the outbox is empty.
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._release_held(self._clock())
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
        self._quota.evaluate()

    def _count_unsent(self, where: str, args: tuple[Any, ...], *, sign: int) -> None:
        """Add (sign 1) or remove (sign -1) the bytes of the outbox rows matching `where` (caller's
        transaction; `where` is one of this class's constant fragments)."""
        for priority, nbytes in self._db.execute(
            f"SELECT priority, SUM({ROW_BYTES_SQL}) FROM outbox WHERE {where} GROUP BY priority",  # noqa: S608
            args,
        ):
            self._quota.add(LEVELS if priority == PRIORITY_LEVEL else CRITICAL, sign * int(nbytes or 0))

    def _append_events(self, events: list[NewEvent], now: float) -> list[int]:
        """Give events their seqs and write them to ledger + outbox — except level updates while a quota is
        hit (or whose key is already held): those replace their key's row in `outbox_held`, without a seq."""
        db = self._db
        (last,) = db.execute("SELECT CAST(value AS INTEGER) FROM meta WHERE key='last_seq'").fetchone()
        rows: list[tuple[int, str, str, str, int, float]] = []
        for e in events:
            text = json.dumps(e.data, ensure_ascii=False, separators=(",", ":"))
            if (
                e.priority == PRIORITY_LEVEL
                and (self._quota.shedding or self._quota.held)
                and self._hold(e, now)
            ):
                continue
            last += 1
            rows.append((last, e.event_type, e.ts, text, e.priority, now))
            kind = LEVELS if e.priority == PRIORITY_LEVEL else CRITICAL
            self._quota.add(kind, row_bytes(e.event_type, e.ts, text))
        self._insert_rows(rows)
        return [r[0] for r in rows]

    def _hold(self, event: NewEvent, now: float) -> bool:
        """Coalesce `event` into its key's held row if there is one, or hold it anew while shedding.
        True if the event was held."""
        db = self._db
        key = coalesce_key(event.event_type, event.data)
        row = db.execute("SELECT data FROM outbox_held WHERE key = ?", (key,)).fetchone()
        if row is None and not self._quota.shedding:
            return False
        data = event.data if row is None else merge_level(event.event_type, json.loads(row[0]), event.data)
        db.execute(
            "INSERT INTO outbox_held (key, type, ts, data, priority, created_at, merged)"
            " VALUES (?, ?, ?, ?, ?, ?, 1) ON CONFLICT(key) DO UPDATE SET type = excluded.type, ts = excluded.ts,"
            " data = excluded.data, merged = outbox_held.merged + 1",
            (
                key,
                event.event_type,
                event.ts,
                json.dumps(data, ensure_ascii=False, separators=(",", ":")),
                event.priority,
                now,
            ),
        )
        if row is None:
            self._quota.held += 1
        else:
            self._quota.coalesced += 1
        return True

    def _insert_rows(self, rows: list[tuple[int, str, str, str, int, float]]) -> None:
        if not rows:
            return
        db = self._db
        db.executemany(
            "INSERT INTO ledger (seq, type, ts, data, priority, created_at) VALUES (?, ?, ?, ?, ?, ?)", rows
        )
        db.executemany(
            "INSERT INTO outbox (seq, type, ts, data, priority, created_at) VALUES (?, ?, ?, ?, ?, ?)", rows
        )
        db.execute("UPDATE meta SET value=? WHERE key='last_seq'", (str(rows[-1][0]),))

    def _release_held(self, now: float) -> int:
        """Once both classes are back under their clear marks, append the held updates (oldest key first)
        with fresh seqs (caller's transaction). Returns how many were appended."""
        if not self._quota.held:
            return 0
        if not self._quota.would_clear():
            return 0
        db = self._db
        (last,) = db.execute("SELECT CAST(value AS INTEGER) FROM meta WHERE key='last_seq'").fetchone()
        rows: list[tuple[int, str, str, str, int, float]] = []
        for event_type, ts, text, priority in db.execute(
            "SELECT type, ts, data, priority FROM outbox_held ORDER BY created_at, key"
        ).fetchall():
            last += 1
            rows.append((last, event_type, ts, text, priority, now))
            self._quota.add(LEVELS, row_bytes(event_type, ts, text))
        self._insert_rows(rows)
        db.execute("DELETE FROM outbox_held")
        self._quota.held = 0
        return len(rows)

    # --- reads ---------------------------------------------------------------------------------------------

    async def last_seq(self) -> int:
        """The highest seq ever allocated (0 before the first event)."""
        return await self._run(self._last_seq)

    def _last_seq(self) -> int:
        (value,) = self._db.execute("SELECT CAST(value AS INTEGER) FROM meta WHERE key='last_seq'").fetchone()
        return int(value)

    async def load_bins(self) -> dict[str, BinRow]:
        """Persisted bin state by bin id (restart)."""
        return await self._run(self._load_bins)

    def _load_bins(self) -> dict[str, BinRow]:
        cur = self._db.execute(
            "SELECT bin_id, sku, count, weight_g, baseline_g, uncertain, updated_ts, noise_g FROM bins"
        )
        return {
            r[0]: BinRow(r[0], r[1], r[2], r[3] or 0.0, r[4], bool(r[5]), r[6] or 0.0, r[7])
            for r in cur.fetchall()
        }

    async def alerts(self, *, active_only: bool = False, limit: int = 500) -> list[AlertRow]:
        """Alerts, newest first; `active_only` excludes resolved ones."""
        return await self._run(self._alerts, active_only, limit, None)

    async def alert(self, alert_id: str) -> AlertRow | None:
        """One alert by id."""
        rows = await self._run(self._alerts, False, 1, alert_id)
        return rows[0] if rows else None

    def _alerts(self, active_only: bool, limit: int, alert_id: str | None) -> list[AlertRow]:
        where, args = [], []
        if active_only:
            where.append("state != 'resolved'")
        if alert_id is not None:
            where.append("alert_id = ?")
            args.append(alert_id)
        # The WHERE parts are the constants above; values go in as parameters.
        sql = (
            "SELECT alert_id, bin_id, sku, kind, state, count, message, raised_at, updated_at, acknowledged_by,"  # noqa: S608
            " acknowledged_at, resolved_at FROM alerts"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY raised_at DESC, alert_id LIMIT ?"
        )
        return [AlertRow(*r) for r in self._db.execute(sql, (*args, limit)).fetchall()]

    async def ledger(self, after_seq: int = 0, limit: int = 1000) -> list[OutboxRow]:
        """Ledger rows after a seq (for resends and audits)."""
        return await self._run(self._ledger, after_seq, limit)

    def _ledger(self, after_seq: int, limit: int) -> list[OutboxRow]:
        cur = self._db.execute(
            "SELECT seq, type, ts, data, priority, created_at FROM ledger WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
        return [OutboxRow(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5] or 0.0) for r in cur.fetchall()]

    async def retained(self) -> tuple[int, int | None, int | None]:
        """(events in the ledger, oldest seq, newest seq): what `resend` can still serve."""
        return await self._run(self._retained)

    def _retained(self) -> tuple[int, int | None, int | None]:
        count, first, last = self._db.execute("SELECT COUNT(*), MIN(seq), MAX(seq) FROM ledger").fetchone()
        return int(count), first, last

    # --- resend (cmd/resend) -------------------------------------------------------------------------

    async def resend(self, spans: Sequence[SeqSpan]) -> ResendResult:
        """Put the retained events of `spans` back in the outbox (same seq, so the same event id) and say
        what could not be: seqs no longer retained, and seqs never allocated. One transaction."""
        result = await self._run(self._resend, list(spans))
        if result.resent:
            self._rows_waiting.set()
        return result

    def _resend(self, spans: list[SeqSpan]) -> ResendResult:
        db = self._db
        now = self._clock()
        saved_quota = self._quota.snapshot()
        generation = self._resend_gen + 1
        requested = resent = already_queued = 0
        not_retained: list[SeqSpan] = []
        not_allocated: list[SeqSpan] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            last_seq = self._last_seq()
            for span in merge_spans(spans):
                requested += span.size
                if span.last_seq > last_seq:
                    first = max(span.first_seq, last_seq + 1)
                    not_allocated.append(SeqSpan(first_seq=first, last_seq=span.last_seq))
                low, high = span.first_seq, min(span.last_seq, last_seq)
                if low > high:
                    continue
                (queued,) = db.execute(
                    "SELECT COUNT(*) FROM outbox WHERE seq BETWEEN ? AND ?", (low, high)
                ).fetchone()
                inserted = db.execute(
                    "INSERT OR IGNORE INTO outbox (seq, type, ts, data, priority, created_at, resend_gen)"
                    " SELECT seq, type, ts, data, priority, ?, ? FROM ledger WHERE seq BETWEEN ? AND ?",
                    (now, generation, low, high),
                ).rowcount
                already_queued += int(queued)
                resent += inserted
                if queued + inserted < high - low + 1:
                    not_retained.extend(self._holes(low, high))
            if resent:
                self._count_unsent("resend_gen = ?", (generation,), sign=1)
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            self._quota.restore(saved_quota)
            raise
        self._quota.evaluate()
        if resent:
            self._resend_gen = generation
        return ResendResult(
            requested=requested,
            resent=resent,
            already_queued=already_queued,
            not_retained=not_retained,
            not_allocated=not_allocated,
        )

    def _holes(self, low: int, high: int) -> list[SeqSpan]:
        """Seqs of low..high missing from the ledger (pruned by retention)."""
        holes: list[SeqSpan] = []
        expected = low
        for (seq,) in self._db.execute(
            "SELECT seq FROM ledger WHERE seq BETWEEN ? AND ? ORDER BY seq", (low, high)
        ):
            if seq > expected:
                holes.append(SeqSpan(first_seq=expected, last_seq=seq - 1))
            expected = seq + 1
        if expected <= high:
            holes.append(SeqSpan(first_seq=expected, last_seq=high))
        return holes

    # --- Outbox protocol ------------------------------------------------------------------------------

    async def peek(self, limit: int) -> list[OutboxRow]:
        """The oldest rows in seq order."""
        return await self._run(self._peek, limit)

    def _peek(self, limit: int) -> list[OutboxRow]:
        self._peeked_gen = self._resend_gen
        cur = self._db.execute(
            "SELECT seq, type, ts, data, priority, created_at FROM outbox ORDER BY seq LIMIT ?", (limit,)
        )
        return [OutboxRow(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5]) for r in cur.fetchall()]

    async def ack_through(self, last_seq: int) -> int:
        """Delete rows up to last_seq once the broker acknowledged them (only rows the uplink had peeked:
        a resend that landed meanwhile stays), then apply the ledger's retention. Back under the outbox
        quotas, the level updates held meanwhile are appended (edge/outbox_quota.py)."""
        held_before = self._quota.held
        deleted = await self._run(self._ack_through, last_seq)
        if held_before and not self._quota.held:
            self._rows_waiting.set()
        return deleted

    def _ack_through(self, last_seq: int) -> int:
        db = self._db
        saved_quota = self._quota.snapshot()
        db.execute("BEGIN IMMEDIATE")
        try:
            self._count_unsent("seq <= ? AND resend_gen <= ?", (last_seq, self._peeked_gen), sign=-1)
            deleted = db.execute(
                "DELETE FROM outbox WHERE seq <= ? AND resend_gen <= ?", (last_seq, self._peeked_gen)
            ).rowcount
            self._release_held(self._clock())
            self.events_pruned += self._prune()
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            self._quota.restore(saved_quota)
            raise
        self._quota.evaluate()
        return deleted

    async def prune(self) -> int:
        """Apply the retention limits now (they also apply after every acknowledgement); rows dropped."""
        return await self._run(self._prune_now)

    def _prune_now(self) -> int:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            pruned = self._prune()
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        self.events_pruned += pruned
        return pruned

    def _prune(self) -> int:
        """Drop sent ledger rows beyond the count limit or older than the age limit (caller's transaction).

        Cheap enough for every PUBACK: MIN/MAX on the rowid, and the age scan starts at the oldest row and
        stops at the first young one, so it reads only rows it deletes.
        """
        db = self._db
        (oldest_unsent,) = db.execute("SELECT MIN(seq) FROM outbox").fetchone()
        sent_through = self._last_seq() if oldest_unsent is None else int(oldest_unsent) - 1
        if sent_through <= 0:
            return 0
        bound = sent_through - self.retention_max_events  # keep the newest `retention_max_events` sent rows
        young = db.execute(
            "SELECT seq FROM ledger WHERE created_at >= ? ORDER BY seq LIMIT 1",
            (self._clock() - self.retention_max_age_s,),
        ).fetchone()
        bound = max(bound, (int(young[0]) - 1) if young is not None else sent_through)
        bound = min(bound, sent_through)
        if bound <= 0:
            return 0
        return db.execute("DELETE FROM ledger WHERE seq <= ?", (bound,)).rowcount

    async def depth(self) -> tuple[int, float | None]:
        """(rows waiting, age of the oldest in seconds)."""
        return await self._run(self._depth)

    def _depth(self) -> tuple[int, float | None]:
        n, oldest = self._db.execute("SELECT COUNT(*), MIN(created_at) FROM outbox").fetchone()
        return int(n), (None if oldest is None else max(0.0, self._clock() - oldest))

    async def wait_for_rows(self, timeout_s: float) -> None:
        """Wake the uplink after an append, or after timeout_s."""
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancel that lands as the event fires
        # (CPython gh-86296), and the uplink's drain task would then never stop.
        try:
            async with asyncio.timeout(timeout_s):
                await self._rows_waiting.wait()
        except TimeoutError:
            return
        self._rows_waiting.clear()


def _rollback(conn: sqlite3.Connection) -> None:
    """ROLLBACK if a transaction is still open. SQLite may already have rolled back by itself — it does on
    SQLITE_FULL during COMMIT ("Response To Errors Within A Transaction", sqlite.org/lang_transaction.html) —
    and a second ROLLBACK would raise "no transaction is active", hiding the real error (disk full)."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")
