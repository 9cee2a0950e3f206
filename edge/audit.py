"""The gateway's audit log: who did what, when, and what it changed (before → after).

Written for every alert acknowledgement, calibration and binding, remote command from the hub (`resend`,
`config`: user `hub`) and user management (`shelfgate users …`); read by managers and admins through
`GET /api/audit` (edge/auth.py guards it). One append-only SQLite table in `data_dir/audit.db`: nothing here
updates or deletes a row, so the log is the record of what happened even when the thing it describes changed
again later.

Who: the API's auth middleware puts the logged-in user on `current_actor` (a context variable, so a route deep
inside a router needs no extra parameter); with auth off (a loopback-only developer gateway, docs/security.md)
the actor is `anonymous`. Secrets never land here: values under keys that name a password, token, secret or key
are replaced by `***` before a row is written (issue #5, "never in logs, heartbeats or the audit log").
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cloud_bridge.contract import rfc3339

_log = logging.getLogger(__name__)

AUDIT_DB: Final = "audit.db"
"""File name of the audit log inside `data_dir`."""

SECRET_MARKERS: Final = ("password", "token", "secret", "key", "hash", "csrf")
"""A key whose lower-cased name contains one of these has its value masked (`bin_id` etc. are not keys)."""

_SAFE_KEYS: Final = frozenset({"bin_id", "keyed", "sku", "kind"})


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is acting: a logged-in user, `hub` for remote commands, `anonymous` with auth off."""

    user: str
    role: str
    source_ip: str | None = None


ANONYMOUS: Final = Actor("anonymous", "none")
current_actor: contextvars.ContextVar[Actor] = contextvars.ContextVar("shelfgate_actor", default=ANONYMOUS)
"""Set by the auth middleware for the length of one request."""


def scrub(value: Any) -> Any:
    """A JSON-able copy of `value` with every secret-looking key's value masked."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            name = str(k)
            lowered = name.lower()
            secret = lowered not in _SAFE_KEYS and any(m in lowered for m in SECRET_MARKERS)
            out[name] = "***" if secret else scrub(v)
        return out
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


class AuditLog:
    """The append-only table. Calls are short and synchronous; `arecord` runs one off the event loop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # Created 0600 before SQLite opens it (SQLite gives its -wal/-shm files the database file's mode): who
        # did what in the store is not for every local account to read.
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        with contextlib.suppress(OSError):
            os.chmod(path, 0o600)  # an older file made under a looser umask
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # the record of who did what survives a power cut
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS audit ("
            " id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, user TEXT NOT NULL, role TEXT NOT NULL,"
            " action TEXT NOT NULL, target TEXT NOT NULL, before TEXT, after TEXT, source_ip TEXT)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS audit_ts ON audit(ts)")

    def record(
        self,
        action: str,
        target: str,
        before: Any = None,
        after: Any = None,
        *,
        actor: Actor | None = None,
    ) -> dict[str, Any]:
        """Append one row; the actor defaults to the request's (`current_actor`)."""
        who = actor or current_actor.get()
        ts = time.time()
        before_json = (
            None if before is None else json.dumps(scrub(before), ensure_ascii=False, sort_keys=True)
        )
        after_json = None if after is None else json.dumps(scrub(after), ensure_ascii=False, sort_keys=True)
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO audit (ts, user, role, action, target, before, after, source_ip)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (ts, who.user, who.role, action, target, before_json, after_json, who.source_ip),
            )
            row_id = cur.lastrowid
        return self._row(
            (row_id, ts, who.user, who.role, action, target, before_json, after_json, who.source_ip)
        )

    async def arecord(
        self, action: str, target: str, before: Any = None, after: Any = None, *, actor: Actor | None = None
    ) -> dict[str, Any]:
        """`record` in a worker thread (an fsync'd write must not stall the event loop)."""
        who = actor or current_actor.get()  # read here: the worker thread has a copy of this context anyway
        return await asyncio.to_thread(self.record, action, target, before, after, actor=who)

    def query(
        self,
        *,
        since: float | None = None,
        user: str | None = None,
        action: str | None = None,
        limit: int = 500,
    ) -> list[dict[str, Any]]:
        """Rows newest first; `action` matches a prefix (`calibration` finds `calibration.apply`)."""
        sql = "SELECT id, ts, user, role, action, target, before, after, source_ip FROM audit WHERE 1=1"
        params: list[Any] = []
        if since is not None:
            sql += " AND ts >= ?"
            params.append(since)
        if user is not None:
            sql += " AND user = ?"
            params.append(user)
        if action is not None:
            sql += " AND (action = ? OR action LIKE ? ESCAPE '\\')"
            escaped = action.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            params += [action, f"{escaped}.%"]
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        return [self._row(r) for r in rows]

    @staticmethod
    def _row(r: tuple[Any, ...]) -> dict[str, Any]:
        return {
            "id": r[0],
            "ts": rfc3339(r[1]),
            "user": r[2],
            "role": r[3],
            "action": r[4],
            "target": r[5],
            "before": None if r[6] is None else json.loads(r[6]),
            "after": None if r[7] is None else json.loads(r[7]),
            "source_ip": r[8],
        }

    def close(self) -> None:
        """Close the database (tests; the gateway keeps one open for its life)."""
        with self._lock:
            self._db.close()


_logs: dict[Path, AuditLog] = {}
_logs_lock = threading.Lock()


def audit_for(data_dir: Path | str) -> AuditLog:
    """The one `AuditLog` of a data folder (the API, the installer and the command handler share it)."""
    path = (Path(data_dir) / AUDIT_DB).resolve()
    with _logs_lock:
        log = _logs.get(path)
        if log is None or not path.exists():
            log = _logs[path] = AuditLog(path)
        return log


HUB: Final = Actor("hub", "hub")
"""The actor of a remote command: the hub has no local user."""

_MAX_TEXT_CHARS: Final = 256


def _summarise(value: Any) -> Any:
    """Long strings (a pushed config file, a catalogue) become their length and SHA-256: the log says which
    text was applied without holding a copy of it."""
    if isinstance(value, Mapping):
        return {str(k): _summarise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_summarise(v) for v in value[:50]]
    if isinstance(value, str) and len(value) > _MAX_TEXT_CHARS:
        digest = hashlib.sha256(value.encode("utf-8")).hexdigest()
        return {"chars": len(value), "sha256": digest}
    return value


async def audit_command(
    data_dir: Path | str, name: str, command: Any, result: Any, before: Mapping[str, Any]
) -> None:
    """A hub command (`cmd/{name}`) and its result, as user `hub`; never fails the command."""
    after = {
        "command_id": getattr(command, "id", None),
        "args": _summarise(getattr(command, "args", {})),
        "ok": getattr(result, "ok", None),
        "error": getattr(result, "error", None),
        "result": _summarise(getattr(result, "result", None)),
    }
    try:
        await audit_for(data_dir).arecord(f"command.{name}", name, dict(before), after, actor=HUB)
    except (OSError, sqlite3.Error):
        _log.exception("audit: cannot record command %s", name)


async def audit_installer(data_dir: Path | str, entry: Mapping[str, Any]) -> None:
    """Mirror one installer trail entry (calibration, binding, pick test) with the logged-in user."""
    kind = str(entry.get("kind", "installer"))
    rest = {k: v for k, v in entry.items() if k not in ("before", "after")}
    after = {"value": entry.get("after"), **rest} if "after" in entry else rest
    try:
        await audit_for(data_dir).arecord(
            f"installer.{kind}", str(entry.get("bin_id", "")), entry.get("before"), after
        )
    except (OSError, sqlite3.Error):
        _log.exception("audit: cannot record installer %s", kind)


__all__ = [
    "ANONYMOUS",
    "AUDIT_DB",
    "HUB",
    "Actor",
    "AuditLog",
    "audit_command",
    "audit_for",
    "audit_installer",
    "current_actor",
    "scrub",
]
