"""Commissioning records at the hub: which stores are commissioned, and what was done there (issue #7 part 3).

A gateway sends its whole commissioning record as a `commissioning` event each time an installer calibrates,
binds or pick-tests a bin (edge/installer.py; docs/wire-contract.md "Commissioning"). The record is a
snapshot, so the hub keeps one row per store: the record with the latest `generated_at`. Ties (two records in
one millisecond) go to the greater event id, so the kept row does not depend on the order the events were
applied in — redelivery, a `cmd/resend` replay or a late event cannot roll it back (the upsert's WHERE).

The table has its own migration list (`COMMISSIONING_MIGRATIONS`, versions in
``commissioning_schema_version``), like `hub.fleet`'s, so it never competes with the core schema's numbering
in `hub.db`. It is brought up to date by `FleetMonitor.ensure_schema` at worker start and, because an apply
transaction may run before any monitor exists (a test, a tool using `HubDB` alone), also by the effect itself:
commissioning events are a handful per store per installation, so the version check they pay is nothing.

This module is imported by `hub.db` (for `EFFECTS`), so it imports `hub.db` only inside functions.

Read model: `commissioning_summaries` (for the fleet table) and `read_commissioning` (the full record,
`GET /api/stores/{store_id}/commissioning`, served by `hub.fleet.fleet_router`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from cloud_bridge.contract import Commissioning, parse_rfc3339

if TYPE_CHECKING:
    from pydantic import BaseModel

    from cloud_bridge.contract import Event
    from hub.db import Tx

log = logging.getLogger(__name__)

COMMISSIONING_MIGRATIONS: Final[tuple[str, ...]] = (
    # 1: the latest commissioning record per store, with the figures the fleet table shows.
    """
    CREATE TABLE commissioning (
        store_id TEXT PRIMARY KEY,
        gateway_id TEXT NOT NULL,
        generated_at TEXT NOT NULL,
        generated_at_s DOUBLE PRECISION NOT NULL,
        event_id TEXT NOT NULL,
        calibrations INTEGER NOT NULL,
        failed_checks INTEGER NOT NULL,
        bindings INTEGER NOT NULL,
        tests INTEGER NOT NULL,
        tests_passed INTEGER NOT NULL,
        record TEXT NOT NULL
    );
    """,
)
COMMISSIONING_SCHEMA_VERSION: Final = len(COMMISSIONING_MIGRATIONS)
COMMISSIONING_MIGRATION_LOCK_KEY: Final = 0x5348_4C46_434D_5331  # "SHLFCMS1": this table's advisory lock id


def migrate_commissioning(tx: Tx) -> int:
    """Bring the commissioning table to `COMMISSIONING_SCHEMA_VERSION` in the caller's write transaction;
    returns the version found. Concurrent callers are safe for the reasons `hub.db.run_migrations` gives
    (advisory lock on PostgreSQL, BEGIN IMMEDIATE on SQLite, version read after the lock)."""
    from hub.db import run_migrations  # noqa: PLC0415 - hub.db imports this module

    return run_migrations(
        tx,
        COMMISSIONING_MIGRATIONS,
        version_table="commissioning_schema_version",
        lock_key=COMMISSIONING_MIGRATION_LOCK_KEY,
        schema_name="commissioning schema",
        migrated_log="hub database: commissioning table migrated to v%d",
        logger=log,
    )


# --- the effect ----------------------------------------------------------------------------------------------

_UPSERT: Final = """
INSERT INTO commissioning (store_id, gateway_id, generated_at, generated_at_s, event_id, calibrations,
                           failed_checks, bindings, tests, tests_passed, record)
VALUES (:store_id, :gateway_id, :generated_at, :generated_at_s, :event_id, :calibrations,
        :failed_checks, :bindings, :tests, :tests_passed, :record)
ON CONFLICT (store_id) DO UPDATE SET
    gateway_id = excluded.gateway_id, generated_at = excluded.generated_at,
    generated_at_s = excluded.generated_at_s, event_id = excluded.event_id,
    calibrations = excluded.calibrations, failed_checks = excluded.failed_checks,
    bindings = excluded.bindings, tests = excluded.tests, tests_passed = excluded.tests_passed,
    record = excluded.record
WHERE excluded.generated_at_s > commissioning.generated_at_s
   OR (excluded.generated_at_s = commissioning.generated_at_s AND excluded.event_id > commissioning.event_id)
"""


def _row(store_id: str, event_id: str, data: Commissioning) -> dict[str, Any]:
    return {
        "store_id": store_id,
        "gateway_id": data.gateway_id,
        "generated_at": data.generated_at,
        "generated_at_s": parse_rfc3339(data.generated_at).timestamp(),
        "event_id": event_id,
        "calibrations": len(data.calibrations),
        "failed_checks": data.failed_checks,
        "bindings": len(data.bindings),
        "tests": len(data.tests),
        "tests_passed": data.tests_passed,
        "record": json.dumps(data.model_dump(mode="json"), ensure_ascii=False, sort_keys=True),
    }


def commissioning_effect(tx: Tx, store_id: str, run: Sequence[tuple[Event, BaseModel]]) -> None:
    """`hub.db.EFFECTS["commissioning"]`: keep each store's latest record (see the module doc).

    The store is the topic's, not the payload's `store_id`: a gateway cannot write another store's row. A
    record naming another store is kept under the topic's store all the same (the payload's own id is in
    the stored JSON for an operator to see) and logged."""
    migrate_commissioning(tx)
    rows = []
    for event, data in run:
        if not isinstance(data, Commissioning):
            raise TypeError(f"{event.id}: commissioning carries {type(data).__name__}")
        if data.store_id != store_id:
            log.warning(
                "event %s: commissioning record names store %r but came on store %r's topic",
                event.id,
                data.store_id,
                store_id,
            )
        rows.append(_row(store_id, event.id, data))
    tx.run_many(_UPSERT, rows)


# --- reads ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommissioningSummary:
    """What the fleet table shows of a store's latest record."""

    generated_at: str
    calibrations: int
    failed_checks: int
    bindings: int
    tests: int
    tests_passed: int

    @property
    def commissioned(self) -> bool:
        """At least one bin was calibrated or bound: an installer has been at work there."""
        return self.calibrations + self.bindings > 0


def commissioning_summaries(tx: Tx, store_id: str | None = None) -> dict[str, CommissioningSummary]:
    """Store id → summary of its latest record (every store, or one). Needs `migrate_commissioning` done."""
    where = "" if store_id is None else " WHERE store_id = :store_id"
    rows = tx.run(
        "SELECT store_id, generated_at, calibrations, failed_checks, bindings, tests, tests_passed"  # noqa: S608
        f" FROM commissioning{where}",
        {"store_id": store_id},
    )
    return {
        str(r[0]): CommissioningSummary(str(r[1]), int(r[2]), int(r[3]), int(r[4]), int(r[5]), int(r[6]))
        for r in rows
    }


def read_commissioning(tx: Tx, store_id: str) -> Commissioning | None:
    """The store's latest full record, or None when none arrived."""
    row = tx.run(
        "SELECT record FROM commissioning WHERE store_id = :store_id", {"store_id": store_id}
    ).first()
    if row is None:
        return None
    return Commissioning.model_validate(json.loads(row[0]))


__all__ = [
    "COMMISSIONING_MIGRATIONS",
    "COMMISSIONING_SCHEMA_VERSION",
    "CommissioningSummary",
    "commissioning_effect",
    "commissioning_summaries",
    "migrate_commissioning",
    "read_commissioning",
]
