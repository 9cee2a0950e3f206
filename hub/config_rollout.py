"""Config rollouts: HQ pushes a store config to one, several or all stores and follows each (issue #4 part 7).

A rollout is one push of config text to a set of stores; each store is a *target* with its own command
(`cmd/config`, `cloud_bridge.config_push`) and state::

    pending ──(cmd-result ok)──────────────▶ applied
       │    ──(cmd-result, outcome rejected / refused)──▶ rejected
       │    ──(cmd-result, outcome rolled_back)─────────▶ rolled_back
       └────(no result within timeout_s)─────────────────▶ timed_out

Why the hub sends a target's command more than once, always with the same id: the gateway that accepts a
valid push restarts before it can answer (edge/remote_config.py), so its answer comes from the *next*
gateway — the one on the new config, or the old one after a rollback — when it is asked again. The sweep
therefore re-publishes a pending target's command when the store's retained status shows a birth received
after the last publish (the restarted gateway's uplink is connected and subscribed), and otherwise every
`retry_s` (a gateway offline at the first publish gets the broker-queued copy; the retry covers a lost one).
A command id is never run twice by a gateway: it answers a repeat from its record.

Results are not parsed here from MQTT: ingest stores every `cmd-result` in `command_results` (first answer per
command id), and the sweep joins it, so any worker's ingest serves every worker's rollouts. Publishing and
settling are claimed in the database (conditional UPDATEs), so several hub workers sweep the same table
without sending a command twice in one round.

Tables (own migration list and version table, like `hub.commissioning`): `config_rollouts`,
`config_rollout_targets`. Routes: `POST /api/config-rollouts`, `GET /api/config-rollouts`,
`GET /api/config-rollouts/{rollout_id}`, `GET /api/stores/{store_id}/config` (docs/hub-api.md).

A push may carry a catalogue with or without a config (`catalogue_text`). After `applied` the store watches its
device poll error rate for the rollout's `watch_s` and may roll back on its own; its first answer cannot say so,
so the sweep asks for the verdict with *verdict queries* (`cmd/config` with `verdict_of`, a fresh id each:
``cfgw-{rollout}-{store}-{n}``) once the watch is over, or as soon as the store's next birth shows its gateway
restarted — and moves the target to `rolled_back` when the store says it rolled back::

    applied (watch: watching) ──verdict passed / interrupted──▶ applied (watch: passed / interrupted)
                              ──verdict rolled_back──────────▶ rolled_back
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cloud_bridge.config_push import (
    CONFIG_COMMAND,
    DEFAULT_MAX_ERROR_RATE,
    DEFAULT_PROBATION_S,
    DEFAULT_WATCH_S,
    MAX_CONFIG_YAML_CHARS,
    CatalogueFormat,
    ConfigArgs,
    ConfigResult,
)
from cloud_bridge.contract import Command, rfc3339

if TYPE_CHECKING:
    from hub.db import HubDB, Tx

log = logging.getLogger(__name__)

TargetState = Literal["pending", "applied", "rejected", "rolled_back", "timed_out"]
TARGET_STATES: Final[tuple[str, ...]] = ("pending", "applied", "rejected", "rolled_back", "timed_out")
STORE_PLACEHOLDER: Final = "{{store_id}}"
"""In a rollout's shared `config_yaml`, replaced by each target's store id (one template, many stores)."""
DEFAULT_TIMEOUT_S: Final = 900.0
"""A target without an answer this long after the rollout started is `timed_out` (the store stayed offline)."""
DEFAULT_RETRY_S: Final = 30.0
DEFAULT_SWEEP_S: Final = 1.0

CONFIG_ROLLOUT_MIGRATIONS: Final[tuple[str, ...]] = (
    # 1: rollouts and their per-store targets.
    """
    CREATE TABLE config_rollouts (
        rollout_id TEXT PRIMARY KEY,
        created_at DOUBLE PRECISION NOT NULL,
        note TEXT NOT NULL,
        probation_s DOUBLE PRECISION NOT NULL,
        timeout_s DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE config_rollout_targets (
        rollout_id TEXT NOT NULL REFERENCES config_rollouts (rollout_id),
        store_id TEXT NOT NULL,
        command_id TEXT NOT NULL,
        config_yaml TEXT NOT NULL,
        state TEXT NOT NULL,
        sent_count INTEGER NOT NULL,
        last_sent_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION,
        error TEXT,
        result TEXT,
        PRIMARY KEY (rollout_id, store_id),
        UNIQUE (store_id, command_id)
    );
    CREATE INDEX config_rollout_targets_pending ON config_rollout_targets (state);
    """,
    # 2: catalogue pushes and the error-rate watch. `config_yaml` '' means "no config in this push" (a column
    # cannot drop NOT NULL portably in SQLite).
    """
    ALTER TABLE config_rollouts ADD COLUMN watch_s DOUBLE PRECISION NOT NULL DEFAULT 0;
    ALTER TABLE config_rollouts ADD COLUMN max_error_rate DOUBLE PRECISION NOT NULL DEFAULT 0.02;
    ALTER TABLE config_rollout_targets ADD COLUMN catalogue_text TEXT;
    ALTER TABLE config_rollout_targets ADD COLUMN catalogue_format TEXT;
    ALTER TABLE config_rollout_targets ADD COLUMN watch_state TEXT;
    ALTER TABLE config_rollout_targets ADD COLUMN watch_until DOUBLE PRECISION;
    ALTER TABLE config_rollout_targets ADD COLUMN watch_queries INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE config_rollout_targets ADD COLUMN watch_last_sent_at DOUBLE PRECISION;
    CREATE INDEX config_rollout_targets_store ON config_rollout_targets (store_id);
    """,
)
CONFIG_ROLLOUT_SCHEMA_VERSION: Final = len(CONFIG_ROLLOUT_MIGRATIONS)
CONFIG_ROLLOUT_MIGRATION_LOCK_KEY: Final = 0x5348_4C46_4346_4731  # "SHLFCFG1": this table's advisory lock id

Publish = Callable[[str, str, Command], Awaitable[bool]]
"""`publish(store_id, name, command)` sends `cmd/{name}`; False when not connected (retried next sweep)."""


def migrate_config_rollouts(tx: Tx) -> int:
    """Bring the rollout tables to `CONFIG_ROLLOUT_SCHEMA_VERSION` (see `hub.db.run_migrations`)."""
    from hub.db import run_migrations  # noqa: PLC0415 - keep hub.db's import graph one-way

    return run_migrations(
        tx,
        CONFIG_ROLLOUT_MIGRATIONS,
        version_table="config_rollout_schema_version",
        lock_key=CONFIG_ROLLOUT_MIGRATION_LOCK_KEY,
        schema_name="config rollout schema",
        migrated_log="hub database: config rollout tables migrated to v%d",
        logger=log,
    )


# --- API models -----------------------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RolloutRequest(_Model):
    """`POST /api/config-rollouts`: what to push where.

    A config — one `config_yaml` for every store in `stores` (``{{store_id}}`` in it is replaced per store), or
    `configs` with one text per store (then `stores` defaults to its keys) — and/or a product catalogue
    (`catalogue_text`, YAML or an HQ CSV export, the same for every store). Without a config the stores keep
    theirs and the catalogue goes to the file it names.
    """

    stores: list[str] | Literal["all"] | None = None
    config_yaml: str | None = Field(default=None, min_length=1, max_length=MAX_CONFIG_YAML_CHARS)
    configs: dict[str, Annotated[str, Field(min_length=1, max_length=MAX_CONFIG_YAML_CHARS)]] | None = None
    catalogue_text: str | None = Field(default=None, min_length=1, max_length=MAX_CONFIG_YAML_CHARS)
    catalogue_format: CatalogueFormat | None = None
    probation_s: float = Field(default=DEFAULT_PROBATION_S, ge=1.0, le=600.0)
    timeout_s: float = Field(default=DEFAULT_TIMEOUT_S, ge=10.0, le=7 * 86400.0)
    watch_s: float = Field(default=DEFAULT_WATCH_S, ge=0.0, le=86400.0)
    """Seconds each store watches its device error rate after applying; 0: no watch."""
    max_error_rate: float = Field(default=DEFAULT_MAX_ERROR_RATE, gt=0.0, le=1.0)
    note: str = Field(default="", max_length=500)

    @model_validator(mode="after")
    def _one_source(self) -> RolloutRequest:
        if self.config_yaml is not None and self.configs is not None:
            raise ValueError("give exactly one of config_yaml (shared) and configs (per store)")
        if self.config_yaml is None and self.configs is None and self.catalogue_text is None:
            raise ValueError(
                "give exactly one of config_yaml (shared) and configs (per store), and/or catalogue_text"
            )
        if self.configs is None and self.stores is None:
            raise ValueError('stores is required with config_yaml: a list of store ids or "all"')
        if (
            self.configs is not None
            and isinstance(self.stores, list)
            and set(self.stores) - set(self.configs)
        ):
            missing = sorted(set(self.stores) - set(self.configs))
            raise ValueError(f"no entry in configs for store(s) {missing}")
        return self


class TargetView(_Model):
    """One store of a rollout."""

    store_id: str
    command_id: str
    state: TargetState
    sent_count: int
    last_sent_at: str | None
    finished_at: str | None
    error: str | None
    """The gateway's one-line error (rejected / rolled back), or why the hub gave up."""
    errors: list[str]
    """`rejected`: every problem in the pushed file, ``line N: key: message``."""
    config_version: str | None
    """The version the store runs after this push (from its answer)."""
    previous_version: str | None
    catalogue_version: str | None = None
    """`Catalogue.version` the store runs after this push (None: it names no catalogue)."""
    previous_catalogue_version: str | None = None
    pushed: list[str] = []
    """What this push carries: ``config``, ``catalogue`` or both."""
    watch: str | None = None
    """After `applied`: ``watching`` (the store is watching its device error rate), ``passed``,
    ``rolled_back``, ``interrupted`` (a newer push or a restart ended it) or ``unknown`` (no verdict came)."""
    watch_until: str | None = None


class PushedFile(_Model):
    """One file of the newest push that carried it."""

    text: str
    format: str | None = None
    """Catalogues: ``yaml`` or ``csv`` when the push said so."""
    rollout_id: str
    pushed_at: str
    state: TargetState
    version: str | None
    """The version the store reported running after that push (its answer), when it answered."""


class StoreConfigView(_Model):
    """`GET /api/stores/{store_id}/config`: what HQ last pushed to a store (the HQ form starts from it)."""

    store_id: str
    config: PushedFile | None
    catalogue: PushedFile | None


class RolloutView(_Model):
    """A rollout with its progress."""

    rollout_id: str
    created_at: str
    note: str
    probation_s: float
    timeout_s: float
    watch_s: float = 0.0
    max_error_rate: float = DEFAULT_MAX_ERROR_RATE
    counts: dict[str, int]
    """Targets per state (every state listed, zeros included)."""
    watching: int = 0
    """Applied targets still watching their device error rate (they may yet roll back)."""
    done: bool
    """No target is pending any more."""
    targets: list[TargetView]


def _ts(value: float | None) -> str | None:
    return None if value is None else rfc3339(datetime.fromtimestamp(value, UTC))


# --- database functions (one transaction each, run by HubDB.run) ----------------------------------------------


def _known_stores(tx: Tx) -> list[str]:
    return [str(r[0]) for r in tx.run("SELECT store_id FROM stores ORDER BY store_id").all()]


def _create(tx: Tx, rollout_id: str, targets: dict[str, str], now: float, request: RolloutRequest) -> None:
    tx.run(
        "INSERT INTO config_rollouts (rollout_id, created_at, note, probation_s, timeout_s, watch_s,"
        " max_error_rate) VALUES (:id, :now, :note, :probation_s, :timeout_s, :watch_s, :max_error_rate)",
        {
            "id": rollout_id,
            "now": now,
            "note": request.note,
            "probation_s": request.probation_s,
            "timeout_s": request.timeout_s,
            "watch_s": request.watch_s,
            "max_error_rate": request.max_error_rate,
        },
    )
    tx.run_many(
        "INSERT INTO config_rollout_targets (rollout_id, store_id, command_id, config_yaml, catalogue_text,"
        " catalogue_format, state, sent_count)"
        " VALUES (:rollout_id, :store_id, :command_id, :config_yaml, :catalogue_text, :catalogue_format,"
        " 'pending', 0)",
        [
            {
                "rollout_id": rollout_id,
                "store_id": store_id,
                "command_id": command_id(rollout_id, store_id),
                "config_yaml": text,  # '' = no config in this push
                "catalogue_text": request.catalogue_text,
                "catalogue_format": request.catalogue_format,
            }
            for store_id, text in sorted(targets.items())
        ],
    )


def command_id(rollout_id: str, store_id: str) -> str:
    """The id of a target's `cmd/config` (≤ 128 characters: rollout ids are 16, store ids ≤ 64)."""
    return f"cfg-{rollout_id}-{store_id}"


def watch_command_id(rollout_id: str, store_id: str, n: int) -> str:
    """The id of a target's `n`-th verdict query (each query its own id: the first answer per id is kept)."""
    return f"cfgw-{rollout_id}-{store_id}-{n}"


def outcome_of(ok: bool, error: str | None, result_json: str | None) -> TargetState:
    """A target's final state from the gateway's `cmd-result`."""
    if result_json is not None:
        try:
            result = ConfigResult.model_validate_json(result_json)
        except ValidationError:
            result = None
        if result is not None:
            return result.outcome
    # No ConfigResult: an old gateway ("unknown command"), bad args or a busy gateway — all refusals.
    return "applied" if ok else "rejected"


def _settle(tx: Tx, now: float) -> list[tuple[str, str, str]]:
    """Give pending targets their answer from `command_results`, and time out the overdue ones; returns
    (rollout, store, new state) for what changed."""
    changed: list[tuple[str, str, str]] = []
    answered = tx.run(
        "SELECT t.rollout_id, t.store_id, r.ok, r.error, r.result, r.received_at"
        " FROM config_rollout_targets t JOIN command_results r"
        " ON r.store_id = t.store_id AND r.command_id = t.command_id WHERE t.state = 'pending'"
    ).all()
    for rollout_id, store_id, ok, error, result, received_at in answered:
        state = outcome_of(bool(ok), error, result)
        watch_s = _watch_s_of(result) if state == "applied" else None
        tx.run(
            "UPDATE config_rollout_targets SET state = :state, finished_at = :at, error = :error,"
            " result = :result, watch_state = :watch, watch_until = :until"
            " WHERE rollout_id = :rollout_id AND store_id = :store_id AND state = 'pending'",
            {
                "state": state,
                "at": received_at,
                "error": error,
                "result": result,
                "watch": None if watch_s is None else "watching",
                "until": None if watch_s is None else float(received_at) + watch_s,
                "rollout_id": rollout_id,
                "store_id": store_id,
            },
        )
        changed.append((str(rollout_id), str(store_id), state))
    changed += _settle_watches(tx, now)
    overdue = tx.run(
        "SELECT t.rollout_id, t.store_id, ro.timeout_s FROM config_rollout_targets t"
        " JOIN config_rollouts ro ON ro.rollout_id = t.rollout_id"
        " WHERE t.state = 'pending' AND ro.created_at + ro.timeout_s < :now",
        {"now": now},
    ).all()
    for rollout_id, store_id, timeout_s in overdue:
        tx.run(
            "UPDATE config_rollout_targets SET state = 'timed_out', finished_at = :now, error = :error"
            " WHERE rollout_id = :rollout_id AND store_id = :store_id AND state = 'pending'",
            {
                "now": now,
                "error": f"no answer from the store within {timeout_s:.0f} s",
                "rollout_id": rollout_id,
                "store_id": store_id,
            },
        )
        changed.append((str(rollout_id), str(store_id), "timed_out"))
    return changed


def _watch_s_of(result_json: str | None) -> float | None:
    """The watch an `applied` answer started (seconds), or None."""
    if result_json is None:
        return None
    try:
        result = ConfigResult.model_validate_json(result_json)
    except ValidationError:
        return None
    return result.watch_s if result.watch_s else None


def _settle_watches(tx: Tx, now: float) -> list[tuple[str, str, str]]:
    """Verdicts of watched targets from their latest verdict query's answer; a target whose store never gives
    one within the rollout's timeout after the watch is `unknown`."""
    changed: list[tuple[str, str, str]] = []
    rows = tx.run(
        "SELECT t.rollout_id, t.store_id, t.watch_queries, r.ok, r.error, r.result, r.received_at"
        " FROM config_rollout_targets t JOIN command_results r ON r.store_id = t.store_id"
        " AND r.command_id = 'cfgw-' || t.rollout_id || '-' || t.store_id || '-' || CAST(t.watch_queries AS TEXT)"
        " WHERE t.state = 'applied' AND t.watch_state = 'watching'"
    ).all()
    for rollout_id, store_id, _n, _ok, error, result_json, received_at in rows:
        verdict: ConfigResult | None = None
        if result_json is not None:
            try:
                verdict = ConfigResult.model_validate_json(result_json)
            except ValidationError:
                verdict = None
        watch = "unknown" if verdict is None or verdict.watch is None else verdict.watch
        if watch == "watching":
            continue  # asked too early: the next query (retry_s later) asks again
        params = {"rollout_id": rollout_id, "store_id": store_id, "watch": watch}
        if watch == "rolled_back":
            tx.run(
                "UPDATE config_rollout_targets SET state = 'rolled_back', watch_state = 'rolled_back',"
                " finished_at = :at, error = :error, result = :result"
                " WHERE rollout_id = :rollout_id AND store_id = :store_id AND watch_state = 'watching'",
                {**params, "at": received_at, "error": error, "result": result_json},
            )
            changed.append((str(rollout_id), str(store_id), "rolled_back"))
        else:
            tx.run(
                "UPDATE config_rollout_targets SET watch_state = :watch"
                " WHERE rollout_id = :rollout_id AND store_id = :store_id AND watch_state = 'watching'",
                params,
            )
            changed.append((str(rollout_id), str(store_id), f"applied (watch {watch})"))
    given_up = tx.run(
        "SELECT t.rollout_id, t.store_id FROM config_rollout_targets t"
        " JOIN config_rollouts ro ON ro.rollout_id = t.rollout_id"
        " WHERE t.state = 'applied' AND t.watch_state = 'watching' AND t.watch_until + ro.timeout_s < :now",
        {"now": now},
    ).all()
    for rollout_id, store_id in given_up:
        tx.run(
            "UPDATE config_rollout_targets SET watch_state = 'unknown'"
            " WHERE rollout_id = :rollout_id AND store_id = :store_id AND watch_state = 'watching'",
            {"rollout_id": rollout_id, "store_id": store_id},
        )
        changed.append((str(rollout_id), str(store_id), "applied (watch unknown)"))
    return changed


def _any_pending(tx: Tx) -> bool:
    return (
        tx.run(
            "SELECT 1 FROM config_rollout_targets WHERE state = 'pending' OR watch_state = 'watching' LIMIT 1"
        ).first()
        is not None
    )


def _claim_due(tx: Tx, now: float, retry_s: float) -> list[tuple[str, str, str, ConfigArgs]]:
    """Pending targets to (re)publish now, claimed: (rollout, store, command id, args).

    Due: never sent; or the store's status shows a birth received after the last send (its gateway restarted
    or reconnected, and answers from its record); or `retry_s` passed since the last send.
    """
    rows = tx.run(
        "SELECT t.rollout_id, t.store_id, t.command_id, t.config_yaml, t.catalogue_text, t.catalogue_format,"
        " ro.probation_s, ro.watch_s, ro.max_error_rate, t.last_sent_at"
        " FROM config_rollout_targets t JOIN config_rollouts ro ON ro.rollout_id = t.rollout_id"
        " LEFT JOIN stores s ON s.store_id = t.store_id"
        " WHERE t.state = 'pending' AND (t.last_sent_at IS NULL OR t.last_sent_at < :retry_before"
        " OR (s.online AND s.status_received_at > t.last_sent_at))",
        {"retry_before": now - retry_s},
    ).all()
    claimed: list[tuple[str, str, str, ConfigArgs]] = []
    for row in rows:
        rollout_id, store_id, cmd_id, text, catalogue, fmt, probation_s, watch_s, max_rate, last_sent_at = row
        guard = "last_sent_at IS NULL" if last_sent_at is None else "last_sent_at = :last"
        won = tx.run(
            "UPDATE config_rollout_targets SET last_sent_at = :now, sent_count = sent_count + 1"  # noqa: S608
            f" WHERE rollout_id = :rollout_id AND store_id = :store_id AND state = 'pending' AND {guard}",
            {"now": now, "rollout_id": rollout_id, "store_id": store_id, "last": last_sent_at},
        ).rowcount
        if won:
            args = ConfigArgs(
                config_yaml=str(text) or None,
                catalogue_text=catalogue,
                catalogue_format=fmt,
                probation_s=float(probation_s),
                watch_s=float(watch_s),
                max_error_rate=float(max_rate),
                rollout_id=str(rollout_id),
            )
            claimed.append((str(rollout_id), str(store_id), str(cmd_id), args))
    return claimed


def _claim_watch_queries(tx: Tx, now: float, retry_s: float) -> list[tuple[str, str, str, str]]:
    """Watched targets to ask for their verdict now, claimed: (rollout, store, query id, push command id).

    Due once the watch is over (and `retry_s` after the last query while the store says it is still
    watching), or as soon as the store's status shows a birth after the push applied — its gateway restarted,
    which a rollback does.
    """
    rows = tx.run(
        "SELECT t.rollout_id, t.store_id, t.command_id, t.watch_queries FROM config_rollout_targets t"
        " LEFT JOIN stores s ON s.store_id = t.store_id"
        " WHERE t.state = 'applied' AND t.watch_state = 'watching' AND ("
        " (t.watch_until <= :now AND (t.watch_last_sent_at IS NULL OR t.watch_last_sent_at < :retry_before))"
        " OR (s.online AND s.status_received_at > COALESCE(t.watch_last_sent_at, t.finished_at)))",
        {"now": now, "retry_before": now - retry_s},
    ).all()
    claimed: list[tuple[str, str, str, str]] = []
    for rollout_id, store_id, cmd_id, n in rows:
        won = tx.run(
            "UPDATE config_rollout_targets SET watch_queries = watch_queries + 1, watch_last_sent_at = :now"
            " WHERE rollout_id = :rollout_id AND store_id = :store_id AND watch_queries = :n"
            " AND watch_state = 'watching'",
            {"now": now, "rollout_id": rollout_id, "store_id": store_id, "n": n},
        ).rowcount
        if won:
            claimed.append(
                (
                    str(rollout_id),
                    str(store_id),
                    watch_command_id(str(rollout_id), str(store_id), int(n) + 1),
                    str(cmd_id),
                )
            )
    return claimed


def _unclaim(tx: Tx, rollout_id: str, store_id: str) -> None:
    """A claimed publish that could not go out: due again at the next sweep."""
    tx.run(
        "UPDATE config_rollout_targets SET last_sent_at = NULL, sent_count = sent_count - 1"
        " WHERE rollout_id = :rollout_id AND store_id = :store_id AND state = 'pending'",
        {"rollout_id": rollout_id, "store_id": store_id},
    )


def _target_view(row: Sequence[Any]) -> TargetView:
    store_id, cmd_id, state, sent_count, last_sent_at, finished_at, error, result_json = row[:8]
    has_config, has_catalogue, watch, watch_until = row[8:]
    result: ConfigResult | None = None
    if result_json is not None:
        try:
            result = ConfigResult.model_validate_json(result_json)
        except ValidationError:
            result = None
    return TargetView(
        store_id=str(store_id),
        command_id=str(cmd_id),
        state=state,
        sent_count=int(sent_count),
        last_sent_at=_ts(last_sent_at),
        finished_at=_ts(finished_at),
        error=error,
        errors=[] if result is None else list(result.errors),
        config_version=None if result is None else result.config_version,
        previous_version=None if result is None else result.previous_version,
        catalogue_version=None if result is None else result.catalogue_version,
        previous_catalogue_version=None if result is None else result.previous_catalogue_version,
        pushed=[name for name, on in (("config", has_config), ("catalogue", has_catalogue)) if on],
        watch=watch,
        watch_until=_ts(watch_until),
    )


def _read(tx: Tx, rollout_id: str | None, limit: int) -> list[RolloutView]:
    where = "" if rollout_id is None else " WHERE rollout_id = :id"
    heads = tx.run(
        "SELECT rollout_id, created_at, note, probation_s, timeout_s, watch_s, max_error_rate"  # noqa: S608
        " FROM config_rollouts"
        f"{where} ORDER BY created_at DESC, rollout_id DESC LIMIT :limit",
        {"id": rollout_id, "limit": limit},
    ).all()
    views: list[RolloutView] = []
    for rid, created_at, note, probation_s, timeout_s, watch_s, max_error_rate in heads:
        targets = [
            _target_view(r)
            for r in tx.run(
                "SELECT store_id, command_id, state, sent_count, last_sent_at, finished_at, error, result,"
                " config_yaml <> '', catalogue_text IS NOT NULL, watch_state, watch_until"
                " FROM config_rollout_targets WHERE rollout_id = :id ORDER BY store_id",
                {"id": rid},
            ).all()
        ]
        counts = dict.fromkeys(TARGET_STATES, 0)
        for t in targets:
            counts[t.state] += 1
        views.append(
            RolloutView(
                rollout_id=str(rid),
                created_at=_ts(created_at) or "",
                note=str(note),
                probation_s=float(probation_s),
                timeout_s=float(timeout_s),
                watch_s=float(watch_s),
                max_error_rate=float(max_error_rate),
                counts=counts,
                watching=sum(1 for t in targets if t.state == "applied" and t.watch == "watching"),
                done=counts["pending"] == 0,
                targets=targets,
            )
        )
    return views


def _last_pushed(tx: Tx, store_id: str) -> StoreConfigView:
    """The newest config and the newest catalogue pushed to a store (each from its own rollout)."""

    def newest(condition: str, columns: str) -> Sequence[Any] | None:
        found = tx.run(
            f"SELECT {columns}, t.rollout_id, ro.created_at, t.state, t.result"  # noqa: S608 - fixed fragments
            " FROM config_rollout_targets t JOIN config_rollouts ro ON ro.rollout_id = t.rollout_id"
            f" WHERE t.store_id = :store_id AND {condition}"
            " ORDER BY ro.created_at DESC, t.rollout_id DESC LIMIT 1",
            {"store_id": store_id},
        ).first()
        return None if found is None else tuple(found)

    def result_of(text: str | None) -> ConfigResult | None:
        if text is None:
            return None
        try:
            return ConfigResult.model_validate_json(text)
        except ValidationError:
            return None

    config: PushedFile | None = None
    row = newest("t.config_yaml <> ''", "t.config_yaml")
    if row is not None:
        text, rid, at, state, result = row
        answer = result_of(result)
        config = PushedFile(
            text=str(text), rollout_id=str(rid), pushed_at=_ts(at) or "", state=state,
            version=None if answer is None or state != "applied" else answer.config_version,
        )  # fmt: skip
    catalogue: PushedFile | None = None
    row = newest("t.catalogue_text IS NOT NULL", "t.catalogue_text, t.catalogue_format")
    if row is not None:
        text, fmt, rid, at, state, result = row
        answer = result_of(result)
        catalogue = PushedFile(
            text=str(text), format=fmt, rollout_id=str(rid), pushed_at=_ts(at) or "", state=state,
            version=None if answer is None or state != "applied" else answer.catalogue_version,
        )  # fmt: skip
    return StoreConfigView(store_id=store_id, config=config, catalogue=catalogue)


# --- the service ------------------------------------------------------------------------------------------------


class UnknownStoresError(ValueError):
    """A rollout names stores the hub has never heard from."""


class ConfigRollouts:
    """Creates rollouts, publishes their commands and follows their answers (`run()` sweeps until cancelled)."""

    def __init__(
        self,
        db: HubDB,
        publish: Publish | None,
        *,
        clock: Callable[[], float] = time.time,
        sweep_s: float = DEFAULT_SWEEP_S,
        retry_s: float = DEFAULT_RETRY_S,
    ) -> None:
        self.db = db
        self._publish = publish
        self._clock = clock
        self.sweep_s = sweep_s
        self.retry_s = retry_s
        self.published = 0
        self._lock = asyncio.Lock()
        self._schema_ready = False

    async def ensure_schema(self) -> None:
        """Create or upgrade the rollout tables (once per instance; safe with several workers)."""
        if not self._schema_ready:
            await self.db.run(migrate_config_rollouts)
            self._schema_ready = True

    async def create(self, request: RolloutRequest) -> RolloutView:
        """Record a rollout (every target pending) and publish its commands at once where connected."""
        await self.ensure_schema()
        known = await self.db.run(_known_stores, write=False)
        if request.stores == "all":
            stores = list(known)
        elif request.stores is not None:
            stores = list(dict.fromkeys(request.stores))
        else:
            stores = sorted((request.configs or {}).keys())
        unknown = sorted(set(stores) - set(known))
        if unknown:
            raise UnknownStoresError(f"unknown store(s) {unknown}: the hub has no data from them")
        if not stores:
            raise UnknownStoresError("no stores to push to")
        if request.configs is not None and (missing := sorted(set(stores) - set(request.configs))):
            # `stores: "all"` with per-store configs: the validator cannot know the hub's stores (was a 500).
            raise UnknownStoresError(f"no entry in configs for store(s) {missing}")
        targets: dict[str, str] = {}
        for store_id in stores:
            if request.config_yaml is not None:
                text: str | None = request.config_yaml.replace(STORE_PLACEHOLDER, store_id)
            elif request.configs is not None:
                text = request.configs[store_id]
            else:
                text = None
            ConfigArgs(  # the gateway's own limits
                config_yaml=text,
                catalogue_text=request.catalogue_text,
                catalogue_format=request.catalogue_format,
                probation_s=request.probation_s,
                watch_s=request.watch_s,
                max_error_rate=request.max_error_rate,
            )
            targets[store_id] = text or ""
        rollout_id = secrets.token_hex(8)
        await self.db.run(_create, rollout_id, targets, self._clock(), request)
        log.info(
            "config rollout %s created for %d store(s): %s", rollout_id, len(targets), request.note or "-"
        )
        await self.sweep()
        view = await self.get(rollout_id)
        assert view is not None  # noqa: S101 - just written
        return view

    async def get(self, rollout_id: str) -> RolloutView | None:
        """One rollout with its targets, or None."""
        await self.ensure_schema()
        found = await self.db.run(_read, rollout_id, 1, write=False)
        return found[0] if found else None

    async def recent(self, limit: int = 20) -> list[RolloutView]:
        """The newest rollouts first."""
        await self.ensure_schema()
        return await self.db.run(_read, None, limit, write=False)

    async def last_pushed(self, store_id: str) -> StoreConfigView:
        """What HQ last pushed to a store: its newest config and newest catalogue."""
        await self.ensure_schema()
        return await self.db.run(_last_pushed, store_id, write=False)

    async def sweep(self) -> None:
        """Settle answered and overdue targets, then publish what is due (see the module docstring)."""
        await self.ensure_schema()
        async with self._lock:
            # Read-only first: with nothing pending (the usual case) a sweep never takes SQLite's write lock.
            if not await self.db.run(_any_pending, write=False):
                return
            now = self._clock()
            for rollout_id, store_id, state in await self.db.run(_settle, now):
                level = logging.INFO if state == "applied" else logging.WARNING
                log.log(level, "config rollout %s: store %s %s", rollout_id, store_id, state)
            if self._publish is None:
                return
            for rollout_id, store_id, cmd_id, args in await self.db.run(_claim_due, now, self.retry_s):
                command = Command(
                    id=cmd_id,
                    issued_at=rfc3339(datetime.fromtimestamp(now, UTC)),
                    args=args.model_dump(mode="json", exclude_none=True),
                )
                if not await self._send(store_id, command):
                    await self.db.run(_unclaim, rollout_id, store_id)
                    return  # not connected: the rest waits for the next sweep too
                log.debug("config rollout %s: %s sent to store %s", rollout_id, cmd_id, store_id)
            for rollout_id, store_id, query_id, push_id in await self.db.run(
                _claim_watch_queries, now, self.retry_s
            ):
                query = Command(
                    id=query_id,
                    issued_at=rfc3339(datetime.fromtimestamp(now, UTC)),
                    args=ConfigArgs(verdict_of=push_id, rollout_id=rollout_id).model_dump(
                        mode="json", exclude_none=True
                    ),
                )
                if not await self._send(store_id, query):
                    return  # asked again after retry_s
                log.debug(
                    "config rollout %s: verdict query %s sent to store %s", rollout_id, query_id, store_id
                )

    async def _send(self, store_id: str, command: Command) -> bool:
        assert self._publish is not None  # noqa: S101 - checked by the caller
        try:
            sent = await self._publish(store_id, CONFIG_COMMAND, command)
        except Exception as exc:  # noqa: BLE001 - a broker error: the target is due again next sweep
            log.debug("config rollout: publish of %s to %s failed: %s", command.id, store_id, exc)
            sent = False
        if sent:
            self.published += 1
        return sent

    async def run(self) -> None:
        """Sweep every `sweep_s` until cancelled; a failing sweep is logged and retried, never fatal."""
        failing = False
        while True:
            try:
                await self.sweep()
            except Exception:
                if not failing:
                    log.exception("config rollout sweep failed; retrying every %.1f s", self.sweep_s)
                failing = True
            else:
                if failing:
                    log.info("config rollout sweep recovered")
                failing = False
            await asyncio.sleep(self.sweep_s)


def config_rollout_router(rollouts: ConfigRollouts) -> APIRouter:
    """`/api/config-rollouts` and `GET /api/stores/{store_id}/config` (the newest config and catalogue pushed to
    a store, where the HQ form starts) — docs/hub-api.md, "Config rollouts"."""
    router = APIRouter(tags=["config rollouts"])

    @router.post("/api/config-rollouts", status_code=201)
    async def create(request: RolloutRequest) -> RolloutView:
        try:
            return await rollouts.create(request)
        except UnknownStoresError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from exc
        except ValidationError as exc:
            problems = "; ".join(str(e["msg"]) for e in exc.errors())
            raise HTTPException(status_code=422, detail=f"config_yaml: {problems}") from exc

    @router.get("/api/config-rollouts")
    async def recent(limit: Annotated[int, Query(ge=1, le=200)] = 20) -> list[RolloutView]:
        return await rollouts.recent(limit)

    @router.get("/api/config-rollouts/{rollout_id}")
    async def one(rollout_id: str) -> RolloutView:
        found = await rollouts.get(rollout_id)
        if found is None:
            raise HTTPException(status_code=404, detail=f"unknown rollout {rollout_id!r}")
        return found

    @router.get("/api/stores/{store_id}/config")
    async def last_pushed(store_id: str) -> StoreConfigView:
        return await rollouts.last_pushed(store_id)

    return router


__all__ = [
    "CONFIG_ROLLOUT_MIGRATIONS",
    "CONFIG_ROLLOUT_SCHEMA_VERSION",
    "STORE_PLACEHOLDER",
    "ConfigRollouts",
    "PushedFile",
    "RolloutRequest",
    "RolloutView",
    "StoreConfigView",
    "TargetView",
    "UnknownStoresError",
    "command_id",
    "config_rollout_router",
    "migrate_config_rollouts",
    "outcome_of",
    "watch_command_id",
]
