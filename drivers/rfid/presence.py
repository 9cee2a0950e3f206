"""Tag presence per antenna zone from raw reads: pure logic, no I/O, no clock (the caller passes `ts`).

Why a window at all: a UHF reader sees a tag that sits still on a shelf in only 60-70 % of its inventory
rounds (DOMAIN.md "RFID"; orientation, detuning by the product, collisions). Counting "read in the last
round" as stock would make stock flicker several times a second; counting "ever read" would never notice a
sale. And a tag on the neighbouring shelf is read now and then through the gap: one stray read must not add
stock.

Rules (per tag; a tag belongs to at most one zone at a time):

- **Enter** a zone after `min_reads` reads there within `enter_window_s` (strays are too rare to qualify).
- **Stay** while the gap since its last read is shorter than its *hold window*. The window is sized from the
  tag's own observed read rate: modelling reads as a Poisson process with mean gap ``g``, the chance of a
  silent stretch longer than ``w`` is ``exp(-w/g)``, so ``w = g · ln(1/false_leave_probability)``, clamped to
  ``[min_window_s, max_window_s]``. (Reads of a still tag are per-round Bernoulli trials, whose run of misses
  has probability ``(1-p)^n``, smaller than the Poisson bound for every p: the Poisson model is the
  conservative one.) Until a tag has `min_gaps` gaps of history the window is `max_window_s`.
- **Leave** when that window elapses without a read (detected by `tick`), so a departure is reported at the
  latest `max_window_s` after the tag's last read (plus the tick interval).
- **Move** to another zone when it qualifies there (``min_reads`` within the enter window) with more reads in
  that window than in its current zone: a leave + an enter, never counted twice.

`false_leave_probability` is per silent stretch; the default 1e-9 is chosen for long runs (a store with
thousands of tags sees millions of stretches a day), not the 99.9 % a single window would need.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from drivers.rfid.epc import EpcError, Sgtin96, parse_epc
from drivers.rfid.errors import ProtocolError

__all__ = ["PresenceEvent", "PresencePolicy", "PresenceTracker", "gtin_of"]


@dataclass(frozen=True, slots=True)
class PresencePolicy:
    """Tuning of the presence windows; the defaults suit a shelf antenna doing ~5-20 rounds/s."""

    min_reads: int = 3
    """Reads within `enter_window_s` needed to enter a zone (k)."""
    enter_window_s: float = 3.0
    min_window_s: float = 1.0
    """Floor of the hold window: duplicate reads in one round must not shrink it to nothing."""
    max_window_s: float = 10.0
    """Ceiling of the hold window: the longest a departed tag can still be counted."""
    false_leave_probability: float = 1e-9
    min_gaps: int = 8
    """Inter-read gaps seen before the adaptive window replaces `max_window_s`."""
    gap_smoothing: float = 0.05
    """EWMA weight of the newest gap (≈ the last 20 gaps dominate)."""

    def __post_init__(self) -> None:
        if self.min_reads < 1:
            raise ValueError("min_reads must be >= 1")
        if not 0 < self.min_window_s <= self.max_window_s:
            raise ValueError("need 0 < min_window_s <= max_window_s")
        if self.enter_window_s <= 0:
            raise ValueError("enter_window_s must be > 0")
        if not 0 < self.false_leave_probability < 1:
            raise ValueError("false_leave_probability must be in (0, 1)")
        if not 0 < self.gap_smoothing <= 1:
            raise ValueError("gap_smoothing must be in (0, 1]")

    @property
    def window_factor(self) -> float:
        """``ln(1/ε)``: hold windows are this many mean gaps long."""
        return math.log(1.0 / self.false_leave_probability)


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    """A tag entered or left a zone; `ts` is when the decision was made (the caller's clock)."""

    kind: Literal["enter", "leave"]
    epc: str
    zone: str
    gtin: str | None
    ts: float
    reason: str = ""


def gtin_of(epc: str) -> str | None:
    """GTIN-14 of an SGTIN-96 EPC, None for other or malformed EPCs (still tracked, just not per GTIN)."""
    try:
        identity = parse_epc(epc)
    except (EpcError, ProtocolError):
        return None
    return identity.gtin if isinstance(identity, Sgtin96) else None


@dataclass(slots=True)
class _Present:
    zone: str
    gtin: str | None
    last_read: float
    entered: float
    mean_gap_s: float = 0.0
    gaps: int = 0


@dataclass(slots=True)
class _Candidate:
    reads: dict[str, deque[float]] = field(default_factory=dict)
    """Recent read times per zone, pruned to the enter window."""


class PresenceTracker:
    """Feed reads with `feed(epc, zone, ts)`, call `tick(ts)` periodically; both return events.

    Timestamps must be non-decreasing (use `time.monotonic()`, not wall time, which NTP may step).
    """

    def __init__(
        self, policy: PresencePolicy | None = None, *, gtin_for: Callable[[str], str | None] = gtin_of
    ) -> None:
        self.policy = policy or PresencePolicy()
        self._gtin_for = gtin_for
        self._present: dict[str, _Present] = {}
        self._candidates: dict[str, _Candidate] = {}
        self.reads = 0
        self.ignored_stale_reads = 0
        """Reads with a timestamp older than the tag's last read (out-of-order delivery); ignored."""

    # --- input -----------------------------------------------------------------------------------------------

    def feed(self, epc: str, zone: str, ts: float) -> list[PresenceEvent]:
        """Record one read; returns the enter (or move) events it causes."""
        self.reads += 1
        epc = epc.upper()
        present = self._present.get(epc)
        if present is not None and present.zone == zone:
            gap = ts - present.last_read
            if gap < 0:
                self.ignored_stale_reads += 1
                return []
            if gap > 0:
                a = self.policy.gap_smoothing if present.gaps else 1.0
                present.mean_gap_s += a * (gap - present.mean_gap_s)
                present.gaps += 1
            present.last_read = ts
            self._note_candidate(epc, zone, ts)  # keeps the home zone's count for move decisions
            return []
        count = self._note_candidate(epc, zone, ts)
        if count < self.policy.min_reads:
            return []
        events: list[PresenceEvent] = []
        if present is not None:
            home = self._candidates[epc].reads.get(present.zone)
            if home is not None and len(home) >= count:
                return []  # still read at least as often at home: a cross-read, not a move
            events.append(PresenceEvent("leave", epc, present.zone, present.gtin, ts, f"moved to {zone}"))
        gtin = present.gtin if present is not None else self._gtin_for(epc)
        self._present[epc] = _Present(zone=zone, gtin=gtin, last_read=ts, entered=ts)
        events.append(PresenceEvent("enter", epc, zone, gtin, ts, f"{count} reads"))
        return events

    def _note_candidate(self, epc: str, zone: str, ts: float) -> int:
        cand = self._candidates.setdefault(epc, _Candidate())
        times = cand.reads.setdefault(zone, deque())
        times.append(ts)
        horizon = ts - self.policy.enter_window_s
        while times and times[0] < horizon:
            times.popleft()
        return len(times)

    def tick(self, ts: float) -> list[PresenceEvent]:
        """Age every tag to `ts`: leave events for tags silent past their window; forget stale candidates."""
        events: list[PresenceEvent] = []
        for epc, p in list(self._present.items()):
            silent_s = ts - p.last_read
            window_s = self._window_s(p)
            if silent_s > window_s:
                del self._present[epc]
                events.append(PresenceEvent("leave", epc, p.zone, p.gtin, ts, f"unread for {silent_s:.1f} s"))
        horizon = ts - self.policy.enter_window_s
        for epc, cand in list(self._candidates.items()):
            for zone, times in list(cand.reads.items()):
                while times and times[0] < horizon:
                    times.popleft()
                if not times:
                    del cand.reads[zone]
            if not cand.reads:
                del self._candidates[epc]
        return events

    # --- queries ---------------------------------------------------------------------------------------------

    def _window_s(self, p: _Present) -> float:
        pol = self.policy
        if p.gaps < pol.min_gaps:
            return pol.max_window_s
        return min(pol.max_window_s, max(pol.min_window_s, p.mean_gap_s * pol.window_factor))

    def window_s(self, epc: str) -> float | None:
        """The current hold window of a present tag (None if it is not present)."""
        p = self._present.get(epc.upper())
        return None if p is None else self._window_s(p)

    def zone_of(self, epc: str) -> str | None:
        """The zone a tag is present in, or None."""
        p = self._present.get(epc.upper())
        return None if p is None else p.zone

    def present(self, zone: str | None = None) -> set[str]:
        """EPCs present (in one zone, or anywhere)."""
        return {epc for epc, p in self._present.items() if zone is None or p.zone == zone}

    def zone_counts(self, zone: str) -> dict[str, int]:
        """Present tags per GTIN-14 in one zone (tags without a GTIN are not counted here)."""
        counts: dict[str, int] = {}
        for p in self._present.values():
            if p.zone == zone and p.gtin is not None:
                counts[p.gtin] = counts.get(p.gtin, 0) + 1
        return counts

    def candidates(self) -> Iterator[str]:
        """EPCs seen recently but not (yet) present anywhere (strays, or tags still qualifying)."""
        return iter([epc for epc in self._candidates if epc not in self._present])
