"""Fleet health and HQ alerts: what HQ sees of every store, and the three alerts it raises (docs/hq.md).

Health is derived at read time from what ingest already stores per store (`stores` row: the retained status
and its hub receive time, the latest heartbeat and its receive time, the outbox figures, seq bookkeeping), so
it is never older than the last message. Ages use the hub's receive times, never a gateway's clock.

HQ alerts are state, not a view. Each is raised once when its rule starts to hold and resolved once when it
stops, and resolved ones stay as history; a rule for a *growing* backlog also needs the outbox figures of
past heartbeats, which the `stores` row overwrites. Computing alerts on read from the `stores` row alone
could give neither (an offline episode would vanish with the next birth), so they live in two tables of this
module's own:

- ``hq_alerts``: one row per alert episode. A partial unique index allows one *active* row per
  (store, kind, subject), so the database — not a worker's memory — makes "raised once" hold across workers.
- ``fleet_samples``: the outbox figures of each store's last few heartbeats, keyed by the heartbeat's own
  timestamp (a sample recorded by two workers is one row).

These tables have their own migration list (`FLEET_MIGRATIONS`, versions in ``fleet_schema_version``),
applied after the core ones by `FleetMonitor.ensure_schema`, so this module never competes with the core
schema's numbering in `hub.db`.

Evaluation: every worker runs `FleetMonitor.run` (every `fleet.evaluate_every_s`), and the API evaluates
again before it answers a read (at most once a second). One pass reads every store in one read
transaction, finds the stores whose alerts must change (or that have a heartbeat not yet sampled), and
re-decides each of those in a write transaction that first locks the store's row — the same lock ingest
takes — so a decision is always made on the committed state and two workers never raise an episode that the
other just resolved. While the worker's MQTT ingest is not subscribed it cannot see the fleet: it neither
raises nor resolves, and silence is only counted from when it subscribed again.

Rules (thresholds in `hub.config.FleetConfig`):

- ``store_offline``: the retained status says offline (the will, or a graceful stop) since the hub received
  it, or no heartbeat arrived for `stale_after_s` (silent: the uplink may hang while its TCP connection
  lives); raised once that lasts `offline_alert_after_s`, resolved when the store is online and heard again.
- ``backlog_growing``: the outbox is not empty and either its oldest unsent event is older than
  `backlog_max_age_s` in the latest two heartbeats and did not get younger (nothing drains, or draining
  falls behind), or its depth rose at each of the last `backlog_rising_heartbeats` heartbeats and is at least
  `backlog_min_depth`. Once raised it stays while the depth keeps rising or the oldest event keeps ageing.
- ``device_down``: the latest heartbeat reports the device offline (the gateway already debounces device
  availability); resolved when a heartbeat reports it online, or no longer lists it. A device the gateway has
  not heard from yet (`last_seen_age_s` null) does not count while the gateway's uptime is under
  `device_startup_grace_s`: a starting gateway's first heartbeat comes before its first poll.
- ``outbox_quota``: the latest heartbeat carries `outbox_alarm` (an outbox disk quota is hit: level updates
  coalesce to the latest per bin, sales and alerts are all kept — docs/reliability.md); resolved by the first
  heartbeat without it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Annotated, Any, Final, TypeVar, cast

from fastapi import APIRouter, HTTPException, Query
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from cloud_bridge.contract import Commissioning, DeviceHealth, Heartbeat, rfc3339
from hub.commissioning import (
    CommissioningSummary,
    commissioning_summaries,
    migrate_commissioning,
    read_commissioning,
)
from hub.config import FleetConfig, HubConfig
from hub.db import HubDB, Tx, lock_store, run_migrations
from hub.models import (
    BacklogSample,
    BacklogView,
    DeviceDown,
    DeviceView,
    FleetEntry,
    GatewayHealth,
    HqAlert,
    HqAlertKind,
    StoreDetail,
    StoreRecord,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

FLEET_MIGRATIONS: Final[tuple[str, ...]] = (
    # 1: HQ alert episodes and the heartbeat samples the backlog rule reads.
    """
    CREATE TABLE hq_alerts (
        alert_id TEXT PRIMARY KEY,
        store_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        raised_at DOUBLE PRECISION NOT NULL,
        resolved_at DOUBLE PRECISION,
        message TEXT NOT NULL,
        detail TEXT NOT NULL,
        resolution TEXT
    );
    CREATE UNIQUE INDEX hq_alerts_one_active ON hq_alerts (store_id, kind, subject) WHERE resolved_at IS NULL;
    CREATE INDEX hq_alerts_by_store ON hq_alerts (store_id, raised_at);
    CREATE INDEX hq_alerts_by_raised ON hq_alerts (raised_at);
    CREATE TABLE fleet_samples (
        store_id TEXT NOT NULL,
        heartbeat_ts TEXT NOT NULL,
        received_at DOUBLE PRECISION NOT NULL,
        outbox_depth BIGINT NOT NULL,
        outbox_oldest_age_s DOUBLE PRECISION,
        PRIMARY KEY (store_id, heartbeat_ts)
    );
    """,
)
FLEET_SCHEMA_VERSION: Final = len(FLEET_MIGRATIONS)
FLEET_MIGRATION_LOCK_KEY: Final = 0x5348_4C46_464C_5431  # "SHLFFLT1": the fleet tables' advisory lock id

READ_EVALUATE_MIN_INTERVAL_S: Final = 1.0
"""A read re-evaluates the rules first unless a pass finished less than this ago (coalesces a busy page)."""
PURGE_EVERY_S: Final = 3600.0
STORE_ALERTS_SHOWN: Final = 50
HEARTBEATS_CACHED: Final = 8192
"""Parsed heartbeats kept (one per store is enough): a pass over a fleet this size parses only what changed."""
NO_SUBJECT: Final = ""
"""`hq_alerts.subject` of store-wide kinds: a real value, so the partial unique index covers them."""

STORE_OFFLINE: Final = "store_offline"
BACKLOG_GROWING: Final = "backlog_growing"
DEVICE_DOWN: Final = "device_down"
OUTBOX_QUOTA: Final = "outbox_quota"

AlertKey = tuple[str, str]
"""(kind, subject)."""


# --- schema --------------------------------------------------------------------------------------------


def migrate_fleet(tx: Tx) -> int:
    """Bring the fleet tables to `FLEET_SCHEMA_VERSION` in the caller's write transaction; returns the
    version found. Concurrent starts are safe for the reasons `hub.db.run_migrations` gives (advisory lock
    on PostgreSQL, BEGIN IMMEDIATE on SQLite, version read after the lock)."""
    return run_migrations(
        tx,
        FLEET_MIGRATIONS,
        version_table="fleet_schema_version",
        lock_key=FLEET_MIGRATION_LOCK_KEY,
        schema_name="fleet schema",
        migrated_log="hub database: fleet tables migrated to v%d",
        logger=log,
    )


# --- what the rules read -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoreState:
    """The columns of one `stores` row the health rules read (hub receive times in epoch seconds)."""

    store_id: str
    gateway_id: str | None
    online: bool | None
    status_received_at: float | None
    first_seen_at: float
    last_heartbeat_at: float | None
    heartbeat: Heartbeat | None
    heartbeat_ts: str | None
    outbox_depth: int | None
    outbox_oldest_age_s: float | None

    def current_sample(self) -> Sample | None:
        """The latest heartbeat's outbox figures as a sample, or None before the first heartbeat."""
        if self.heartbeat_ts is None or self.outbox_depth is None or self.last_heartbeat_at is None:
            return None
        return Sample(self.heartbeat_ts, self.last_heartbeat_at, self.outbox_depth, self.outbox_oldest_age_s)


@dataclass(frozen=True, slots=True)
class Sample:
    """One heartbeat's outbox figures."""

    heartbeat_ts: str
    received_at: float
    outbox_depth: int
    outbox_oldest_age_s: float | None


@dataclass(frozen=True, slots=True)
class Wanted:
    """An alert a rule says should be active now, with the text and facts it is raised with."""

    message: str
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Rules:
    """Everything the rules need besides the store: thresholds and this worker's view of time."""

    fleet: FleetConfig
    stale_after_s: float
    now: float
    listening_since: float
    """When this worker's ingest last (re)subscribed: silence before that is the hub's, not the store's."""


_STATE_COLUMNS: Final = (
    "store_id, gateway_id, online, status_received_at, first_seen_at, last_heartbeat_at, heartbeat,"
    " heartbeat_ts, outbox_depth, outbox_oldest_age_s"
)


@functools.lru_cache(maxsize=HEARTBEATS_CACHED)
def _parse_heartbeat(text: str | None) -> Heartbeat | None:
    """The stored heartbeat (validated at ingest, so this only fails if the contract changed meanwhile).
    Cached by its JSON: every pass reads every store, and most heartbeats have not changed since the last."""
    if text is None:
        return None
    try:
        return Heartbeat.model_validate_json(text)
    except ValidationError:
        return None


def _state(row: Sequence[Any]) -> StoreState:
    return StoreState(
        store_id=row[0],
        gateway_id=row[1],
        online=None if row[2] is None else bool(row[2]),
        status_received_at=row[3],
        first_seen_at=float(row[4]),
        last_heartbeat_at=row[5],
        heartbeat=_parse_heartbeat(row[6]),
        heartbeat_ts=row[7],
        outbox_depth=None if row[8] is None else int(row[8]),
        outbox_oldest_age_s=row[9],
    )


# --- the rules (pure: a store's state and samples in, the alerts that should be active out) ------------------


def unreachable(state: StoreState, rules: Rules) -> tuple[str, float] | None:
    """(cause, since) while the hub cannot reach the store, else None.

    `status`: the retained status says offline, since the hub received it. `silent`: no heartbeat for
    `stale_after_s`; counted from the last heartbeat (or status, or first contact) but never from before
    this worker was listening.
    """
    if state.online is False:
        return "status", state.status_received_at or state.first_seen_at
    heard_at = state.last_heartbeat_at or state.status_received_at or state.first_seen_at
    heard_at = max(heard_at, rules.listening_since)
    if rules.now - heard_at > rules.stale_after_s:
        return "silent", heard_at
    return None


def backlog_growing(samples: Sequence[Sample], fleet: FleetConfig, *, active: bool) -> Wanted | None:
    """The backlog rule over a store's samples (oldest first); `active`: an alert is already raised."""
    if not samples or samples[-1].outbox_depth == 0:
        return None
    latest = samples[-1]
    previous = samples[-2] if len(samples) >= 2 else None
    detail: dict[str, Any] = {
        "outbox_depth": latest.outbox_depth,
        "outbox_oldest_age_s": latest.outbox_oldest_age_s,
    }
    if (
        previous is not None
        and previous.outbox_oldest_age_s is not None
        and latest.outbox_oldest_age_s is not None
        and previous.outbox_oldest_age_s > fleet.backlog_max_age_s
        and latest.outbox_oldest_age_s > fleet.backlog_max_age_s
        and latest.outbox_oldest_age_s >= previous.outbox_oldest_age_s
    ):
        return Wanted(
            f"oldest unsent event {latest.outbox_oldest_age_s:.0f} s old and not draining"
            f" ({latest.outbox_depth} waiting)",
            {**detail, "cause": "stuck"},
        )
    n = fleet.backlog_rising_heartbeats
    tail = samples[-(n + 1) :]
    if (
        len(tail) == n + 1
        and all(b.outbox_depth > a.outbox_depth for a, b in pairwise(tail))
        and latest.outbox_depth >= fleet.backlog_min_depth
    ):
        return Wanted(
            f"outbox rose at {n} heartbeats in a row to {latest.outbox_depth} events",
            {**detail, "cause": "rising", "from_depth": tail[0].outbox_depth},
        )
    if active and previous is not None and latest.outbox_depth > previous.outbox_depth:
        return Wanted(f"outbox still rising ({latest.outbox_depth} events)", {**detail, "cause": "rising"})
    return None


def down_devices(heartbeat: Heartbeat | None) -> list[DeviceHealth]:
    """Devices the heartbeat reports offline, in its order."""
    return [] if heartbeat is None else [d for d in heartbeat.devices if not d.online]


def wanted_alerts(
    state: StoreState, samples: Sequence[Sample], active: Mapping[AlertKey, Any], rules: Rules
) -> dict[AlertKey, Wanted]:
    """Every alert that should be active for this store now; `active` holds the ones that are (hysteresis)."""
    wanted: dict[AlertKey, Wanted] = {}
    gone = unreachable(state, rules)
    if gone is not None:
        cause, since = gone
        offline_s = rules.now - since
        if offline_s >= rules.fleet.offline_alert_after_s or (STORE_OFFLINE, NO_SUBJECT) in active:
            what = "the gateway's will / offline status" if cause == "status" else "no heartbeat"
            wanted[STORE_OFFLINE, NO_SUBJECT] = Wanted(
                f"store {state.store_id} unreachable for {offline_s:.0f} s ({what})",
                {"cause": cause, "since": rfc3339(since)},
            )
    backlog = backlog_growing(samples, rules.fleet, active=(BACKLOG_GROWING, NO_SUBJECT) in active)
    if backlog is not None:
        wanted[BACKLOG_GROWING, NO_SUBJECT] = backlog
    alarm = None if state.heartbeat is None else state.heartbeat.outbox_alarm
    if alarm:
        wanted[OUTBOX_QUOTA, NO_SUBJECT] = Wanted(f"outbox quota hit: {alarm}", {"alarm": alarm})
    starting = state.heartbeat is not None and state.heartbeat.uptime_s < rules.fleet.device_startup_grace_s
    for device in down_devices(state.heartbeat):
        if starting and device.last_seen_age_s is None and (DEVICE_DOWN, device.device_id) not in active:
            continue  # not polled yet: not down
        wanted[DEVICE_DOWN, device.device_id] = Wanted(
            f"device {device.device_id} ({device.family or 'unknown family'}) offline"
            + (f": {device.last_error}" if device.last_error else ""),
            {
                "family": device.family,
                "last_error": device.last_error,
                "errors": device.errors,
                "errors_by_kind": device.errors_by_kind or {},
                "last_seen_age_s": device.last_seen_age_s,
            },
        )
    return wanted


def resolution(key: AlertKey, state: StoreState) -> str:
    """Why an alert that is no longer wanted resolved (stored with it)."""
    kind, subject = key
    if kind == STORE_OFFLINE:
        return "back online"
    if kind == BACKLOG_GROWING:
        return "outbox empty" if state.outbox_depth == 0 else "draining"
    if kind == OUTBOX_QUOTA:
        return "back under quota"
    listed = state.heartbeat is not None and any(d.device_id == subject for d in state.heartbeat.devices)
    return "back online" if listed else "no longer reported"


# --- transactions (run on HubDB's threads) -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """One alert raised or resolved by an evaluation pass."""

    store_id: str
    kind: str
    subject: str
    raised: bool
    message: str


@dataclass
class _Snapshot:
    states: list[StoreState]
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    active: dict[str, dict[AlertKey, str]] = field(default_factory=dict)


def _samples(tx: Tx, store_id: str | None) -> dict[str, list[Sample]]:
    where = "" if store_id is None else " WHERE store_id = :store_id"
    grouped: dict[str, list[Sample]] = {}
    for row in tx.run(
        "SELECT store_id, heartbeat_ts, received_at, outbox_depth, outbox_oldest_age_s FROM fleet_samples"  # noqa: S608 - fixed fragments
        f"{where} ORDER BY store_id, heartbeat_ts",
        {"store_id": store_id},
    ):
        grouped.setdefault(row[0], []).append(Sample(row[1], float(row[2]), int(row[3]), row[4]))
    return grouped


def _active(tx: Tx, store_id: str | None) -> dict[str, dict[AlertKey, str]]:
    where = "" if store_id is None else " AND store_id = :store_id"
    grouped: dict[str, dict[AlertKey, str]] = {}
    for row in tx.run(
        f"SELECT store_id, kind, subject, alert_id FROM hq_alerts WHERE resolved_at IS NULL{where}",  # noqa: S608
        {"store_id": store_id},
    ):
        grouped.setdefault(row[0], {})[row[1], row[2]] = row[3]
    return grouped


def _snapshot(tx: Tx) -> _Snapshot:
    rows = tx.run(f"SELECT {_STATE_COLUMNS} FROM stores ORDER BY store_id").all()  # noqa: S608
    return _Snapshot([_state(r) for r in rows], _samples(tx, None), _active(tx, None))


def _with_current(samples: list[Sample], state: StoreState) -> tuple[list[Sample], bool]:
    """The stored samples plus the latest heartbeat's, and whether that one is new."""
    current = state.current_sample()
    if current is None or any(s.heartbeat_ts == current.heartbeat_ts for s in samples):
        return samples, False
    if samples and current.heartbeat_ts < samples[-1].heartbeat_ts:
        return samples, False  # an older heartbeat than sampled; the stores row never goes back, be safe
    return [*samples, current], True


def _needs_write(state: StoreState, snap: _Snapshot, rules: Rules) -> bool:
    samples, new_sample = _with_current(snap.samples.get(state.store_id, []), state)
    if new_sample:
        return True
    active = snap.active.get(state.store_id, {})
    return set(wanted_alerts(state, samples, active, rules)) != set(active)


def _decide_store(tx: Tx, store_id: str, rules: Rules) -> list[Change]:
    """Re-read one store under its lock, record its new sample, raise and resolve what changed."""
    lock_store(tx, store_id, rules.now)
    row = tx.run(
        f"SELECT {_STATE_COLUMNS} FROM stores WHERE store_id = :store_id",  # noqa: S608
        {"store_id": store_id},
    ).one()
    state = _state(row)
    samples, new_sample = _with_current(_samples(tx, store_id).get(store_id, []), state)
    keep = max(rules.fleet.backlog_rising_heartbeats + 1, 2)
    if new_sample:
        latest = samples[-1]
        tx.run(
            "INSERT INTO fleet_samples (store_id, heartbeat_ts, received_at, outbox_depth, outbox_oldest_age_s)"
            " VALUES (:store_id, :ts, :received_at, :depth, :oldest) ON CONFLICT (store_id, heartbeat_ts) DO NOTHING",
            {
                "store_id": store_id,
                "ts": latest.heartbeat_ts,
                "received_at": latest.received_at,
                "depth": latest.outbox_depth,
                "oldest": latest.outbox_oldest_age_s,
            },
        )
        if len(samples) > keep:
            tx.run(
                "DELETE FROM fleet_samples WHERE store_id = :store_id AND heartbeat_ts < :oldest_kept",
                {"store_id": store_id, "oldest_kept": samples[-keep].heartbeat_ts},
            )
            samples = samples[-keep:]
    active = _active(tx, store_id).get(store_id, {})
    wanted = wanted_alerts(state, samples, active, rules)
    changes: list[Change] = []
    for key, alert in wanted.items():
        if key in active:
            continue
        inserted = tx.run(
            "INSERT INTO hq_alerts (alert_id, store_id, kind, subject, raised_at, message, detail)"
            " VALUES (:alert_id, :store_id, :kind, :subject, :now, :message, :detail)"
            " ON CONFLICT (store_id, kind, subject) WHERE resolved_at IS NULL DO NOTHING",
            {
                "alert_id": f"hq-{uuid.uuid4().hex}",
                "store_id": store_id,
                "kind": key[0],
                "subject": key[1],
                "now": rules.now,
                "message": alert.message,
                "detail": json.dumps(alert.detail, ensure_ascii=False, sort_keys=True),
            },
        ).rowcount
        if inserted:
            changes.append(Change(store_id, key[0], key[1], raised=True, message=alert.message))
    for key, alert_id in active.items():
        if key in wanted:
            continue
        why = resolution(key, state)
        updated = tx.run(
            "UPDATE hq_alerts SET resolved_at = :now, resolution = :why"
            " WHERE alert_id = :alert_id AND resolved_at IS NULL",
            {"now": rules.now, "why": why, "alert_id": alert_id},
        ).rowcount
        if updated:
            changes.append(Change(store_id, key[0], key[1], raised=False, message=why))
    return changes


def _purge(tx: Tx, cutoff: float) -> int:
    return int(
        tx.run(
            "DELETE FROM hq_alerts WHERE resolved_at IS NOT NULL AND resolved_at < :cutoff",
            {"cutoff": cutoff},
        ).rowcount
    )


_ALERT_COLUMNS: Final = (
    "alert_id, store_id, kind, subject, raised_at, resolved_at, message, detail, resolution"
)


def _alert(row: Sequence[Any], now: float) -> HqAlert:
    raised_at, resolved_at = float(row[4]), None if row[5] is None else float(row[5])
    return HqAlert(
        alert_id=row[0],
        store_id=row[1],
        kind=cast(HqAlertKind, row[2]),
        subject=row[3] or None,
        active=resolved_at is None,
        raised_at=rfc3339(raised_at),
        resolved_at=None if resolved_at is None else rfc3339(resolved_at),
        duration_s=round(max(0.0, (now if resolved_at is None else resolved_at) - raised_at), 3),
        message=row[6],
        detail=json.loads(row[7]),
        resolution=row[8],
    )


def _hq_alerts(tx: Tx, active: bool | None, store_id: str | None, limit: int, now: float) -> list[HqAlert]:
    where = []
    if active is True:
        where.append("resolved_at IS NULL")
    elif active is False:
        where.append("resolved_at IS NOT NULL")
    if store_id is not None:
        where.append("store_id = :store_id")
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    rows = tx.run(
        f"SELECT {_ALERT_COLUMNS} FROM hq_alerts{clause}"  # noqa: S608 - fixed fragments
        " ORDER BY CASE WHEN resolved_at IS NULL THEN 0 ELSE 1 END, raised_at DESC, alert_id LIMIT :limit",
        {"store_id": store_id, "limit": limit},
    ).all()
    return [_alert(r, now) for r in rows]


@dataclass(frozen=True, slots=True)
class FleetExtras:
    """What the fleet view adds to a `StoreRecord`: status receive time, devices, HQ alert figures."""

    status_received_at: float | None = None
    heartbeat: Heartbeat | None = None
    hq_alerts_active: int = 0
    backlog_growing: bool = False
    commissioning: CommissioningSummary | None = None
    """The latest commissioning record's figures (`hub.commissioning`); None before the first."""


def _extras(tx: Tx, store_id: str | None) -> dict[str, FleetExtras]:
    where = "" if store_id is None else " WHERE store_id = :store_id"
    counts: dict[str, tuple[int, bool]] = {}
    for r_store, r_kind, r_count in tx.run(
        f"SELECT store_id, kind, COUNT(*) FROM hq_alerts WHERE resolved_at IS NULL"  # noqa: S608
        f"{'' if store_id is None else ' AND store_id = :store_id'} GROUP BY store_id, kind",
        {"store_id": store_id},
    ):
        total, growing = counts.get(r_store, (0, False))
        counts[r_store] = (total + int(r_count), growing or r_kind == BACKLOG_GROWING)
    commissioning = commissioning_summaries(tx, store_id)
    extras = {}
    for r_store, r_received, r_heartbeat in tx.run(
        f"SELECT store_id, status_received_at, heartbeat FROM stores{where}",  # noqa: S608
        {"store_id": store_id},
    ):
        total, growing = counts.get(r_store, (0, False))
        extras[r_store] = FleetExtras(
            r_received, _parse_heartbeat(r_heartbeat), total, growing, commissioning.get(r_store)
        )
    return extras


def _detail_reads(
    tx: Tx, store_id: str, now: float
) -> tuple[FleetExtras | None, list[Sample], list[HqAlert]]:
    extras = _extras(tx, store_id).get(store_id)
    samples = _samples(tx, store_id).get(store_id, [])
    return extras, samples, _hq_alerts(tx, None, store_id, STORE_ALERTS_SHOWN, now)


# --- the read models ---------------------------------------------------------------------------------------


def fleet_entry(
    record: StoreRecord, *, now: float, stale_after_s: float, extras: FleetExtras | None = None
) -> FleetEntry:
    """Derive the fleet view of one store at time `now` (epoch seconds); `extras` adds devices, offline
    time and HQ alert figures."""
    age_s = None if record.last_heartbeat_at is None else max(0.0, now - record.last_heartbeat_at)
    stale = age_s is None or age_s > stale_after_s
    extras = extras or FleetExtras()
    offline_at = extras.status_received_at if record.online is False else None
    heartbeat = extras.heartbeat
    done = extras.commissioning
    return FleetEntry(
        store_id=record.store_id,
        gateway_id=record.gateway_id,
        online=record.online,
        status_ts=record.status_ts,
        last_heartbeat_at=None if record.last_heartbeat_at is None else rfc3339(record.last_heartbeat_at),
        heartbeat_age_s=None if age_s is None else round(age_s, 3),
        stale=stale,
        outbox_depth=record.outbox_depth,
        outbox_oldest_age_s=record.outbox_oldest_age_s,
        last_seq=record.last_seq,
        received_seq=record.received_seq,
        contiguous_seq=record.contiguous_seq,
        missing_ranges=list(record.missing_ranges),
        version=record.version,
        config_version=record.config_version,
        devices_offline=record.devices_offline,
        active_alerts=record.active_alerts,
        applied_seq=record.applied_seq,
        lost_ranges=list(record.lost_ranges),
        state="offline" if record.online is False else ("stale" if stale else "online"),
        offline_since=None if offline_at is None else rfc3339(offline_at),
        offline_for_s=None if offline_at is None else round(max(0.0, now - offline_at), 3),
        devices_total=None if heartbeat is None else len(heartbeat.devices),
        devices_down=[
            DeviceDown(device_id=d.device_id, family=d.family, last_error=d.last_error)
            for d in down_devices(heartbeat)
        ],
        backlog_growing=extras.backlog_growing,
        hq_alerts_active=extras.hq_alerts_active,
        commissioned=done is not None and done.commissioned,
        commissioned_at=None if done is None else done.generated_at,
        calibrations=0 if done is None else done.calibrations,
        failed_checks=0 if done is None else done.failed_checks,
        bindings=0 if done is None else done.bindings,
        pick_tests=0 if done is None else done.tests,
        pick_tests_passed=0 if done is None else done.tests_passed,
    )


def device_view(device: DeviceHealth) -> DeviceView:
    """A heartbeat's device as the API shows it."""
    return DeviceView(
        device_id=device.device_id,
        family=device.family,
        online=device.online,
        connected=device.connected,
        last_seen_age_s=device.last_seen_age_s,
        polls=device.polls,
        errors=device.errors,
        errors_by_kind=dict(device.errors_by_kind or {}),
        last_error=device.last_error,
        firmware=device.firmware,
        serial=device.serial,
        battery_pct=device.battery_pct,
        temperature_c=device.temperature_c,
    )


# --- the monitor -----------------------------------------------------------------------------------------


class ListeningSince:
    """When this worker's ingest became subscribed (first noticed), or None while it is not: the silence
    rule only counts time the hub could have heard a heartbeat."""

    def __init__(self, connected: Callable[[], bool], clock: Callable[[], float] = time.time) -> None:
        self._connected = connected
        self._clock = clock
        self._since: float | None = None

    def __call__(self) -> float | None:
        if not self._connected():
            self._since = None
        elif self._since is None:
            self._since = self._clock()
        return self._since


@dataclass(frozen=True, slots=True)
class Evaluation:
    """What one pass changed (empty when nothing did, or when the worker could not judge)."""

    changes: tuple[Change, ...]
    judged: bool
    """False while ingest is not subscribed: nothing was raised or resolved."""


class FleetMonitor:
    """Fleet health reads and the HQ alert evaluator of one worker, over an open `HubDB`.

    `clock` gives the hub's time (epoch seconds; tests inject one). `listening_since` says since when the
    worker's ingest has been subscribed, None while not (`ListeningSince`); without one the monitor counts as
    listening since it was created (a monitor over a database that something else fills).
    """

    def __init__(
        self,
        db: HubDB,
        config: HubConfig,
        *,
        clock: Callable[[], float] = time.time,
        listening_since: Callable[[], float | None] | None = None,
    ) -> None:
        self.db = db
        self.config = config
        self.rules = config.fleet
        self._clock = clock
        if listening_since is None:
            created = clock()
            listening_since = lambda: created  # noqa: E731 - a constant source
        self._listening_since = listening_since
        self._schema_ready = False
        self._schema_lock = asyncio.Lock()
        self._evaluate_lock = asyncio.Lock()
        self._last_evaluated = float("-inf")
        self._last_purge = float("-inf")
        self._failing = False

    async def _run(self, fn: Callable[..., T], *args: Any, write: bool) -> T:
        # Every statement runs on the DB's own threads, one transaction per call.
        return await self.db.run(fn, *args, write=write)

    async def ensure_schema(self) -> None:
        """Create or upgrade the fleet tables (once per monitor; safe with several workers)."""
        if self._schema_ready:
            return
        async with self._schema_lock:
            if not self._schema_ready:
                await self._run(migrate_fleet, write=True)
                await self._run(migrate_commissioning, write=True)
                self._schema_ready = True

    def _rules(self, now: float, listening_since: float) -> Rules:
        return Rules(self.rules, self.config.stale_after_s, now, listening_since)

    async def evaluate(self) -> Evaluation:
        """One pass over every store: record new samples, raise and resolve HQ alerts."""
        async with self._evaluate_lock:
            return await self._evaluate()

    async def _evaluate(self) -> Evaluation:
        await self.ensure_schema()
        listening_since = self._listening_since()
        if listening_since is None:
            return Evaluation((), judged=False)
        now = self._clock()
        rules = self._rules(now, listening_since)
        snap = await self._run(_snapshot, write=False)
        changes: list[Change] = []
        for state in snap.states:
            if _needs_write(state, snap, rules):
                changes.extend(await self._run(_decide_store, state.store_id, rules, write=True))
        for change in changes:
            if change.raised:
                log.warning(
                    "HQ alert raised: store %s %s %s: %s",
                    change.store_id,
                    change.kind,
                    change.subject,
                    change.message,
                )
            else:
                log.info(
                    "HQ alert resolved: store %s %s %s (%s)",
                    change.store_id,
                    change.kind,
                    change.subject,
                    change.message,
                )
        if now - self._last_purge >= PURGE_EVERY_S:
            self._last_purge = now
            purged = await self._run(_purge, now - self.rules.resolved_alerts_kept_days * 86400, write=True)
            if purged:
                log.info(
                    "deleted %d resolved HQ alert(s) older than %g days",
                    purged,
                    self.rules.resolved_alerts_kept_days,
                )
        self._last_evaluated = self._clock()
        return Evaluation(tuple(changes), judged=True)

    async def evaluate_if_due(self) -> None:
        """Before a read: evaluate unless a pass finished within `READ_EVALUATE_MIN_INTERVAL_S`. A database
        error is logged and the read goes on with what is stored."""
        if self._clock() - self._last_evaluated < READ_EVALUATE_MIN_INTERVAL_S:
            return
        async with self._evaluate_lock:
            if self._clock() - self._last_evaluated < READ_EVALUATE_MIN_INTERVAL_S:
                return
            await self._guarded()

    async def _guarded(self) -> None:
        try:
            await self._evaluate()
        except SQLAlchemyError as exc:
            if not self._failing:
                log.warning(
                    "HQ alert evaluation failed (%s); retrying every %g s", exc, self.rules.evaluate_every_s
                )
            self._failing = True
        else:
            if self._failing:
                log.info("HQ alert evaluation works again")
            self._failing = False

    async def run(self) -> None:
        """The periodic evaluator (task body, named ``hub[{hub_id}].fleet`` by the service). A database error
        is logged once per failure streak and retried: evaluation is recomputed from stored state, so a
        skipped pass loses nothing."""
        await self.ensure_schema()
        while True:
            async with self._evaluate_lock:
                await self._guarded()
            await asyncio.sleep(self.rules.evaluate_every_s)

    # --- reads ---

    async def fleet(self) -> list[FleetEntry]:
        """Every store's health row (`GET /api/fleet`)."""
        await self.ensure_schema()
        await self.evaluate_if_due()
        records = await self.db.stores()
        extras = await self._run(_extras, None, write=False)
        now = self._clock()
        stale_after_s = self.config.stale_after_s
        return [
            fleet_entry(r, now=now, stale_after_s=stale_after_s, extras=extras.get(r.store_id))
            for r in records
        ]

    async def store_detail(self, store_id: str) -> StoreDetail | None:
        """One store's health, devices, backlog and recent HQ alerts; None for a store never heard from."""
        await self.ensure_schema()
        await self.evaluate_if_due()
        record = await self.db.store(store_id)
        if record is None:
            return None
        now = self._clock()
        extras, samples, alerts = await self._run(_detail_reads, store_id, now, write=False)
        entry = fleet_entry(record, now=now, stale_after_s=self.config.stale_after_s, extras=extras)
        heartbeat = None if extras is None else extras.heartbeat
        gateway = (
            None
            if heartbeat is None
            else GatewayHealth(
                boot_id=heartbeat.boot_id,
                ts=heartbeat.ts,
                uptime_s=heartbeat.uptime_s,
                cpu_pct=heartbeat.cpu_pct,
                mem_rss_mb=heartbeat.mem_rss_mb,
                disk_free_mb=heartbeat.disk_free_mb,
                temperature_c=heartbeat.temperature_c,
                active_alerts=heartbeat.active_alerts,
            )
        )
        return StoreDetail(
            store=entry,
            gateway=gateway,
            devices=[] if heartbeat is None else [device_view(d) for d in heartbeat.devices],
            backlog=BacklogView(
                outbox_depth=record.outbox_depth,
                outbox_oldest_age_s=record.outbox_oldest_age_s,
                growing=entry.backlog_growing,
                samples=[
                    BacklogSample(
                        heartbeat_ts=s.heartbeat_ts,
                        received_at=rfc3339(s.received_at),
                        outbox_depth=s.outbox_depth,
                        outbox_oldest_age_s=s.outbox_oldest_age_s,
                    )
                    for s in samples
                ],
            ),
            hq_alerts=alerts,
        )

    async def commissioning(self, store_id: str) -> Commissioning | None:
        """The store's latest commissioning record (`GET /api/stores/{store_id}/commissioning`)."""
        await self.ensure_schema()
        return await self._run(read_commissioning, store_id, write=False)

    async def hq_alerts(
        self, *, active: bool | None = None, store_id: str | None = None, limit: int = 200
    ) -> list[HqAlert]:
        """HQ alerts, active first, then newest raised first."""
        await self.ensure_schema()
        await self.evaluate_if_due()
        return await self._run(_hq_alerts, active, store_id, limit, self._clock(), write=False)


def fleet_router(monitor: FleetMonitor) -> APIRouter:
    """`GET /api/stores/{store_id}`, `GET /api/stores/{store_id}/commissioning` and `GET /api/hq-alerts`
    (`GET /api/fleet` is in `hub.api`)."""
    router = APIRouter(tags=["fleet"])

    @router.get("/api/stores/{store_id}")
    async def store_detail(store_id: str) -> StoreDetail:
        detail = await monitor.store_detail(store_id)
        if detail is None:
            raise HTTPException(
                status_code=404, detail=f"unknown store {store_id!r}: the hub has no data from it"
            )
        return detail

    @router.get("/api/stores/{store_id}/commissioning")
    async def store_commissioning(store_id: str) -> Commissioning:
        record = await monitor.commissioning(store_id)
        if record is None:
            raise HTTPException(
                status_code=404,
                detail=f"no commissioning record from store {store_id!r} yet: nobody has calibrated, bound "
                "or pick-tested a bin there since its gateway could reach the hub",
            )
        return record

    @router.get("/api/hq-alerts")
    async def hq_alerts(
        active: Annotated[
            bool | None, Query(description="true: active; false: resolved; omit: both (active first)")
        ] = None,
        store_id: Annotated[str | None, Query(description="only this store's")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> list[HqAlert]:
        return await monitor.hq_alerts(active=active, store_id=store_id, limit=limit)

    return router
