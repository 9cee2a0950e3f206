"""Staff response times (issue #6 part 9): time from an alert to its acknowledgement and to its resolution,
per shift and per staff member, from the alert audit (`edge.store.AlertRow`: raised_at, acknowledged_by/at,
resolved_at, RFC 3339 strings).

Rules:

- **Shift** = the shift on duty when the alert was *raised* (`edge.retail.hours.Shifts`, local time); alerts
  raised outside every shift are grouped as `-`.
- **Staff member** = who acknowledged it (`acknowledged_by`). The audit records no resolver (resolution is
  automatic when the condition clears, e.g. the shelf refilled), so time-to-resolve per staff member is that of
  the alerts they acknowledged. Alerts nobody acknowledged count in their shift only.
- Each group reports `count` (alerts), `acked`/`resolved` (how many have those times), and for each of the two
  durations its **median** (`statistics.median`: the mean of the two middle values for an even count) and
  **p90** by the nearest-rank method (the ⌈0.9·n⌉-th smallest value: a duration that really occurred, and
  no interpolation between two people's responses). A duration is never negative: a clock step that puts the
  ack before the raise counts as 0 s.

This is manager-only data (DOMAIN.md): the wiring serves it under the manager role.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from cloud_bridge.contract import parse_rfc3339
from edge.retail.hours import Shifts

NO_SHIFT: Final = "-"


class AlertAudit(Protocol):
    """What the report reads of an alert (`edge.store.AlertRow` has it)."""

    @property
    def raised_at(self) -> str: ...
    @property
    def acknowledged_by(self) -> str | None: ...
    @property
    def acknowledged_at(self) -> str | None: ...
    @property
    def resolved_at(self) -> str | None: ...


def percentile_nearest_rank(values: Sequence[float], pct: float) -> float | None:
    """The ⌈pct/100 · n⌉-th smallest value (None for no values)."""
    if not values:
        return None
    if not 0 < pct <= 100:
        raise ValueError("pct must be in (0, 100]")
    ordered = sorted(values)
    return ordered[max(math.ceil(pct / 100 * len(ordered)), 1) - 1]


@dataclass(frozen=True, slots=True)
class ResponseStats:
    """Response times of one group (a shift or a staff member), seconds."""

    group: str
    count: int
    acked: int
    resolved: int
    ack_median_s: float | None
    ack_p90_s: float | None
    resolve_median_s: float | None
    resolve_p90_s: float | None


@dataclass(frozen=True, slots=True)
class StaffReport:
    """Per shift and per staff member, each sorted by group name."""

    by_shift: tuple[ResponseStats, ...]
    by_staff: tuple[ResponseStats, ...]


def _seconds(start: float, end: str | None) -> float | None:
    if end is None:
        return None
    return max(parse_rfc3339(end).timestamp() - start, 0.0)


def _stats(group: str, rows: list[tuple[float | None, float | None]]) -> ResponseStats:
    acks = [a for a, _ in rows if a is not None]
    resolves = [r for _, r in rows if r is not None]
    return ResponseStats(
        group=group,
        count=len(rows),
        acked=len(acks),
        resolved=len(resolves),
        ack_median_s=statistics.median(acks) if acks else None,
        ack_p90_s=percentile_nearest_rank(acks, 90),
        resolve_median_s=statistics.median(resolves) if resolves else None,
        resolve_p90_s=percentile_nearest_rank(resolves, 90),
    )


def response_times(alerts: Iterable[AlertAudit], shifts: Shifts) -> StaffReport:
    """Time to acknowledge and to resolve, per shift and per staff member (see the module docstring)."""
    by_shift: dict[str, list[tuple[float | None, float | None]]] = {}
    by_staff: dict[str, list[tuple[float | None, float | None]]] = {}
    for alert in alerts:
        raised = parse_rfc3339(alert.raised_at).timestamp()
        durations = (_seconds(raised, alert.acknowledged_at), _seconds(raised, alert.resolved_at))
        by_shift.setdefault(shifts.shift_at(raised) or NO_SHIFT, []).append(durations)
        if alert.acknowledged_by:
            by_staff.setdefault(alert.acknowledged_by, []).append(durations)
    return StaffReport(
        by_shift=tuple(_stats(k, v) for k, v in sorted(by_shift.items())),
        by_staff=tuple(_stats(k, v) for k, v in sorted(by_staff.items())),
    )


__all__ = [
    "NO_SHIFT",
    "AlertAudit",
    "ResponseStats",
    "StaffReport",
    "percentile_nearest_rank",
    "response_times",
]
