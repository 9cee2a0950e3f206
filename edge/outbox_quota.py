"""Per-priority disk quotas of the gateway outbox, and what happens when one is hit (issue #5 part 2).

The rule: sales and alerts are never dropped, and never before level updates. Two classes of unsent event:

- **critical** (`PRIORITY_HIGH`: sales, returns, alerts): every one is kept. Its quota is an alarm and shedding
  point, not a refusal — refusing a sale would lose it (the lane and the alert rules cannot take it back), so
  the last limit for critical events is the disk itself.
- **levels** (`PRIORITY_LEVEL`: `stock.changed`, `facing.changed`, `commissioning`): each is a snapshot the
  next one of the same key supersedes. While either quota is hit, a new level update is not given a seq: it
  waits in `outbox_held`, one row per key (a bin, a camera facing, the commissioning record), each newer one
  replacing the row (coalesced to the latest per bin). When both classes are back under their clear mark, the
  held rows are appended to the outbox in one transaction with fresh seqs.

Why hold instead of superseding rows that already have a seq: the hub applies a gateway's events strictly by
seq and treats a missing seq as a loss (`cmd/resend`, then "lost"). A held update never had a seq, so nothing
is missing; the seqs already allocated are delivered as they are. The hub's stock view stays right because a
`stock.changed` carries the absolute `count` (the coalesced `delta` is the sum of the merged deltas). Level
storage is therefore bounded by the levels quota plus one held row per key.

Accounting is in bytes of unsent events as stored: each event has a row in the outbox and one in the ledger
(which keeps unsent rows until they are acknowledged), so `row_bytes` counts both copies. The per-row overhead
(SQLite record header, rowid, the REAL and INTEGER columns, b-tree slack) was measured on a real database file
with bench/bench_outbox.py (docs/benchmarks.md, "Outbox quotas").

One alarm: the first time a class crosses its quota, one WARNING; when every class is back under
`CLEAR_FRACTION` of its quota (hysteresis, so an outbox hovering at the mark does not flap), one INFO. The
alarm text is in the heartbeat (`outbox_alarm`) and in `GET /api/health` while it lasts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Final

log = logging.getLogger(__name__)

MIB: Final = 1 << 20
QUOTA_CRITICAL_MB: Final = 256.0
"""Default quota of unsent sales and alerts (`bridge.outbox_quota_mb.critical`)."""
QUOTA_LEVELS_MB: Final = 64.0
"""Default quota of unsent level updates (`bridge.outbox_quota_mb.levels`)."""
ROW_OVERHEAD_BYTES: Final = 56
"""Bytes per stored row beyond its type, ts and data text (measured, see the module docstring)."""
DISK_COPIES: Final = 2
"""An unsent event is stored twice: outbox row and ledger row."""
CLEAR_FRACTION: Final = 0.9
"""A hit class clears once its unsent bytes fall below this fraction of its quota."""

CRITICAL: Final = "critical"
LEVELS: Final = "levels"


def row_bytes(event_type: str, ts: str, data_text: str) -> int:
    """Disk bytes one unsent event costs (both copies)."""
    payload = len(event_type.encode()) + len(ts.encode()) + len(data_text.encode())
    return DISK_COPIES * (payload + ROW_OVERHEAD_BYTES)


ROW_BYTES_SQL: Final = (
    f"{DISK_COPIES} * (length(CAST(type AS BLOB)) + length(CAST(ts AS BLOB)) + length(CAST(data AS BLOB))"
    f" + {ROW_OVERHEAD_BYTES})"
)
"""`row_bytes` as an SQL expression over a row of `outbox`."""


def _size(nbytes: int) -> str:
    return f"{nbytes / MIB:.1f} MiB" if nbytes >= MIB else f"{nbytes / 1024:.1f} KiB"


def coalesce_key(event_type: str, data: dict[str, Any]) -> str:
    """What a level update supersedes: the previous update of the same bin / facing / record."""
    if event_type == "facing.changed":
        return f"{event_type}:{data.get('camera_id', '')}/{data.get('roi_id', '')}"
    return f"{event_type}:{data.get('bin_id', '')}"


def merge_level(event_type: str, older: dict[str, Any], newer: dict[str, Any]) -> dict[str, Any]:
    """The one update that stands for `older` then `newer` of the same key.

    For `stock.changed` the newer absolute `count` wins and `delta` is the sum, so the deltas the hub sees still
    add up to the count change; the cause stays when both agree, else it is `reconcile` (an absolute count).
    Any other level type is a snapshot: the newer one replaces the older.
    """
    if event_type != "stock.changed":
        return newer
    merged = dict(newer)
    old_delta, new_delta = older.get("delta"), newer.get("delta")
    if isinstance(old_delta, int) and isinstance(new_delta, int):
        merged["delta"] = old_delta + new_delta
    if older.get("cause") != newer.get("cause"):
        merged["cause"] = "reconcile"
    return merged


@dataclass(frozen=True, slots=True)
class OutboxQuota:
    """Quotas in bytes of unsent events (both stored copies)."""

    critical_bytes: int = int(QUOTA_CRITICAL_MB * MIB)
    levels_bytes: int = int(QUOTA_LEVELS_MB * MIB)

    def __post_init__(self) -> None:
        if self.critical_bytes <= 0 or self.levels_bytes <= 0:
            raise ValueError("outbox quotas must be > 0 bytes")

    @classmethod
    def from_mb(cls, critical_mb: float, levels_mb: float) -> OutboxQuota:
        """From the config's MiB figures."""
        return cls(critical_bytes=int(critical_mb * MIB), levels_bytes=int(levels_mb * MIB))


@dataclass(frozen=True, slots=True)
class OutboxUsage:
    """What `GET /api/health` shows under `outbox_quota`."""

    critical_bytes: int
    critical_quota_bytes: int
    levels_bytes: int
    levels_quota_bytes: int
    held: int
    """Level updates waiting without a seq (one per key) while a quota is hit."""
    coalesced: int
    """Level updates merged into a held one since start."""
    alarm: str | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {f: getattr(self, f) for f in self.__slots__}


class QuotaState:
    """Unsent bytes per class, the held count and the alarm. Touched only on the store's database thread;
    `snapshot`/`restore` undo a rolled-back transaction's changes."""

    def __init__(self, quota: OutboxQuota) -> None:
        self.quota = quota
        self.unsent = {CRITICAL: 0, LEVELS: 0}
        self.held = 0
        self.coalesced = 0
        self.hit: frozenset[str] = frozenset()
        self.alarm: str | None = None
        self.alarms_raised = 0
        """Times the alarm went from clear to raised (one WARNING each) since start."""

    def limit(self, kind: str) -> int:
        """The quota of one class in bytes."""
        return self.quota.critical_bytes if kind == CRITICAL else self.quota.levels_bytes

    def add(self, kind: str, nbytes: int) -> None:
        """Count bytes of unsent rows written (negative: acknowledged)."""
        self.unsent[kind] = max(0, self.unsent[kind] + nbytes)

    @property
    def shedding(self) -> bool:
        """True while level updates must be held rather than given a seq."""
        return bool(self.hit) or any(self.unsent[k] >= self.limit(k) for k in self.unsent)

    def snapshot(self) -> tuple[int, int, int, int]:
        """The counters a transaction may change."""
        return self.unsent[CRITICAL], self.unsent[LEVELS], self.held, self.coalesced

    def restore(self, saved: tuple[int, int, int, int]) -> None:
        """Undo after a rollback."""
        self.unsent[CRITICAL], self.unsent[LEVELS], self.held, self.coalesced = saved

    def _next_hit(self) -> frozenset[str]:
        hit = set(self.hit)
        for kind, used in self.unsent.items():
            if used >= self.limit(kind):
                hit.add(kind)
            elif used < CLEAR_FRACTION * self.limit(kind):
                hit.discard(kind)
        return frozenset(hit)

    def would_clear(self) -> bool:
        """True if every class is (or would now be judged) back under its quota: held updates may go."""
        return not self._next_hit()

    def evaluate(self) -> None:
        """Raise or clear the alarm after a committed change; log only on transitions."""
        new_hit = self._next_hit()
        raised = new_hit - self.hit
        self.hit = new_hit
        if not new_hit:
            if self.alarm is not None:
                log.info("outbox back under its quotas (%s); held level updates released", self._figures())
            self.alarm = None
            return
        if not raised and self.alarm is not None:
            self.alarm = self._text()
            return
        if self.alarm is None:
            self.alarms_raised += 1
        self.alarm = self._text()
        log.warning("%s", self.alarm)

    def _figures(self) -> str:
        return ", ".join(
            f"{kind} {_size(self.unsent[kind])} of {_size(self.limit(kind))}" for kind in (CRITICAL, LEVELS)
        )

    def _text(self) -> str:
        kinds = " and ".join(sorted(self.hit))
        critical = (
            "; sales and alerts are still all kept (never dropped) — the disk is their last limit"
            if CRITICAL in self.hit
            else "; sales and alerts are all kept"
        )
        return (
            f"outbox quota hit ({kinds}): {self._figures()} of unsent events; level updates now coalesce to the"
            f" latest per bin ({self.held} held) until the backlog drains{critical}"
        )

    def usage(self) -> OutboxUsage:
        """A copy for the API."""
        return OutboxUsage(
            critical_bytes=self.unsent[CRITICAL],
            critical_quota_bytes=self.quota.critical_bytes,
            levels_bytes=self.unsent[LEVELS],
            levels_quota_bytes=self.quota.levels_bytes,
            held=self.held,
            coalesced=self.coalesced,
            alarm=self.alarm,
        )
