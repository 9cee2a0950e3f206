"""What a bin estimator tells the rest of the gateway: count changes, ambiguities and sensor faults.

Frozen, slotted value objects: the estimator creates one only when something happened (a few per minute per
bin), never per sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

CountCause = Literal["pick", "put", "reconcile", "initial"]
"""Why a count changed: a counted step (pick/put), an absolute reconciliation, or the first count after start.
Matches `cloud_bridge.contract.StockChanged.cause`."""

FaultKind = Literal["overload", "fault", "out_of_range", "drifting"]
"""Sensor-fault kinds the estimator raises (the gateway adds "silent" from the poller's availability)."""


@dataclass(frozen=True, slots=True)
class CountChanged:
    """The bin's count changed (or was confirmed by a reconciliation, then `delta` may be 0)."""

    bin_id: str
    ts: float
    delta: int
    """Items added (positive) or removed (negative); 0 for `initial` and for a reconcile that confirms."""
    count: int
    weight_g: float
    """Net weight of the stable level that decided this count (tare removed)."""
    cause: CountCause
    uncertain: bool = False
    """True when a step was counted on top of a count that is itself not confirmed (after an ambiguity)."""


@dataclass(frozen=True, slots=True)
class Ambiguous:
    """A level change that is not a whole number of items within tolerance: reported, never guessed."""

    bin_id: str
    ts: float
    delta_g: float
    """The weight change that could not be explained (or the net weight, for an initial level)."""
    reason: str
    candidates: tuple[int, ...] = ()
    """Counts the new level may stand for, nearest first (`BinEstimator.candidates`): every
    count within 4σ (item spread + measurement) of the net weight, else the two whole counts around it. A
    camera may pick one (`edge.inventory.fusion`); the estimator never does."""
    count_before: int | None = None
    """The confirmed count before this change (None when there was none, or it was itself uncertain — then
    nothing can be kept "as before")."""
    level_g: float | None = None
    """Net weight of the new level (tare removed)."""


@dataclass(frozen=True, slots=True)
class SensorFault:
    """A sensor condition started (`active=True`) or ended (`active=False`)."""

    bin_id: str
    ts: float
    kind: str
    """One of `FaultKind` (kept `str` so other sources, e.g. "silent", share the type)."""
    active: bool
    detail: str = ""


EngineEvent: TypeAlias = CountChanged | Ambiguous | SensorFault
