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

T = TypeVar("T")

SCHEMA_VERSION = 2
"""1: bins, ledger, outbox, alerts. 2: ledger `created_at` and `priority` (retention, resend), outbox
`resend_gen`."""

RETENTION_MAX_EVENTS = 200_000
"""Default: sent events kept for `cmd/resend` (~20 MB of ledger at ~100 bytes per event)."""
RETENTION_MAX_AGE_S = 7 * 86_400.0
"""Default: a sent event older than a week is no longer kept for `cmd/resend`."""

PRIORITY_HIGH = 0
"""Sales and alerts: never dropped before level updates."""
PRIORITY_LEVEL = 1
"""Stock level updates."""


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
        (gen,) = conn.execute("SELECT COALESCE(MAX(resend_gen), 0) FROM outbox").fetchone()
        self._resend_gen = int(gen)

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
            conn.execute("ROLLBACK")
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

    def _record(self, events: list[NewEvent], bins: list[BinRow], alerts: list[AlertRow]) -> list[int]:
        db = self._db
        now = self._clock()
        db.execute("BEGIN IMMEDIATE")
        try:
            seqs: list[int] = []
            if events:
                (last,) = db.execute(
                    "SELECT CAST(value AS INTEGER) FROM meta WHERE key='last_seq'"
                ).fetchone()
                seqs = list(range(last + 1, last + 1 + len(events)))
                rows = [
                    (
                        s,
                        e.event_type,
                        e.ts,
                        json.dumps(e.data, ensure_ascii=False, separators=(",", ":")),
                        e.priority,
                        now,
                    )
                    for s, e in zip(seqs, events, strict=True)
                ]
                db.executemany(
                    "INSERT INTO ledger (seq, type, ts, data, priority, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
                db.executemany(
                    "INSERT INTO outbox (seq, type, ts, data, priority, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
                db.execute("UPDATE meta SET value=? WHERE key='last_seq'", (str(seqs[-1]),))
            if bins:
                db.executemany(
                    "INSERT INTO bins (bin_id, sku, count, weight_g, baseline_g, uncertain, updated_ts)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(bin_id) DO UPDATE SET sku=excluded.sku,"
                    " count=excluded.count, weight_g=excluded.weight_g, baseline_g=excluded.baseline_g,"
                    " uncertain=excluded.uncertain, updated_ts=excluded.updated_ts",
                    [
                        (b.bin_id, b.sku, b.count, b.weight_g, b.baseline_g, int(b.uncertain), b.updated_ts)
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
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return seqs

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
            "SELECT bin_id, sku, count, weight_g, baseline_g, uncertain, updated_ts FROM bins"
        )
        return {
            r[0]: BinRow(r[0], r[1], r[2], r[3] or 0.0, r[4], bool(r[5]), r[6] or 0.0) for r in cur.fetchall()
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
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
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
        a resend that landed meanwhile stays), then apply the ledger's retention."""
        return await self._run(self._ack_through, last_seq)

    def _ack_through(self, last_seq: int) -> int:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            deleted = db.execute(
                "DELETE FROM outbox WHERE seq <= ? AND resend_gen <= ?", (last_seq, self._peeked_gen)
            ).rowcount
            self.events_pruned += self._prune()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
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
            db.execute("ROLLBACK")
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
