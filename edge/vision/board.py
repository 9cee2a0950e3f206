"""The facing board: current camera states of every facing, and the hint the inventory engine asks for.

`facing_hint(bin_id)` is the call the inventory engine makes when a weight bin reports an `ambiguous` level
change (a weight step that is not a whole number of items): if a camera watches that bin's facing(s) and
currently sees them, the hint says whether the shelf looks `ok`, `low` or `empty`, which lets the engine
tell "several items taken" from "something put back on the wrong plate" without guessing. It returns None
whenever the camera cannot vouch for the facing right now, and the engine must then treat the event as it
does without a camera.

For camera fusion (`edge.inventory.fusion`) the board also keeps the last `OBSERVATIONS_KEPT` per-frame
judgements of every facing (`observe`: time, state or None when gated, fill score — numbers only), so the
engine can ask what the camera saw *after* a weight change (`readings`) and just before it (`before`).
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from edge.vision.analyser import FrameAnalysis
from edge.vision.roi import FacingState
from edge.vision.tracker import FacingStateChanged, FacingStatus, VisionEvent

FacingHint: TypeAlias = Literal["ok", "low", "empty"]

OBSERVATIONS_KEPT: Final = 64
"""Per-frame judgements kept per facing: a minute at 1 frame/s, more than any fusion window needs frames."""
BEFORE_FRAMES: Final = 3
"""Judged frames (before a weight change) whose median fill score is the facing's score "before"."""

NotSure: TypeAlias = Literal["no_camera", "unknown", "moved", "too_few_frames", "gated", "disagree"]
"""Why `readings` cannot vouch for a bin's facings yet."""


@dataclass(frozen=True, slots=True)
class FacingReading:
    """What a camera saw of one facing over `frames` consecutive judged frames that agree (numbers only)."""

    camera_id: str
    roi_id: str
    state: FacingHint
    score: float
    """Median fill score of those frames, in [0, 1]."""
    frames: int
    first_ts: float


@dataclass(frozen=True, slots=True)
class FacingBefore:
    """A facing as the board knew it at a moment: the tracked state and the median recent fill score."""

    camera_id: str
    roi_id: str
    state: FacingState
    score: float | None


@dataclass(frozen=True, slots=True)
class _Obs:
    ts: float
    state: FacingState | None
    score: float | None


class FacingBoard:
    """Shared by every camera monitor of a gateway (they `apply` their events); read on the event loop."""

    def __init__(self) -> None:
        self._facings: dict[tuple[str, str], FacingStatus] = {}
        self._obs: dict[tuple[str, str], deque[_Obs]] = {}
        self._moved: dict[str, bool] = {}

    def observe(self, camera_id: str, ts: float, analysis: FrameAnalysis) -> None:
        """One analysed frame of a camera (taken at wall-clock `ts`): keep each facing's judgement."""
        self._moved[camera_id] = analysis.camera_moved
        for obs in analysis.observations:
            key = (camera_id, obs.roi_id)
            ring = self._obs.get(key)
            if ring is None:
                ring = self._obs[key] = deque(maxlen=OBSERVATIONS_KEPT)
            moved = analysis.camera_moved
            ring.append(_Obs(ts, None if moved else obs.state, None if moved else obs.score))

    def before(self, bin_id: str, ts: float, *, since_ts: float = float("-inf")) -> list[FacingBefore]:
        """The bin's facings at `ts` (a weight change): tracked state, median score of the last judged frames
        taken in (`since_ts`, `ts`] — None when there were none. Pass the time of the bin's previous weight
        change as `since_ts`: frames from before it show another shelf (a pick hidden by a shopper)."""
        out: list[FacingBefore] = []
        for key, status in sorted(self._facings.items()):
            if status.bin_id != bin_id:
                continue
            scores = [
                o.score for o in self._obs.get(key, ()) if since_ts < o.ts <= ts and o.score is not None
            ]
            recent = scores[-BEFORE_FRAMES:]
            out.append(
                FacingBefore(key[0], key[1], status.state, statistics.median(recent) if recent else None)
            )
        return out

    def readings(
        self, bin_id: str, *, after_ts: float, frames: int
    ) -> tuple[list[FacingReading], NotSure | None]:
        """What the cameras confidently see of the bin's facings *after* `after_ts`, or why they cannot tell.

        Confident, for every facing bound to the bin: the camera has not moved; the tracked state is not
        `unknown`; the facing's last `frames` analysed frames were all taken after `after_ts`, none was
        gated (motion, occluder), and all judged the tracked state. A shopper in front of the shelf, a
        camera that has not yet seen `frames` frames since the change, or frames that disagree all answer
        ([], reason) — the engine then keeps what the weight said.
        """
        keys = [k for k, s in sorted(self._facings.items()) if s.bin_id == bin_id]
        if not keys:
            return [], "no_camera"
        out: list[FacingReading] = []
        for key in keys:
            status = self._facings[key]
            if self._moved.get(key[0], False):
                return [], "moved"
            if status.state == "unknown":
                return [], "unknown"
            ring = self._obs.get(key, ())
            last = list(ring)[-frames:] if frames > 0 else []
            if len(last) < frames or last[0].ts <= after_ts:
                return [], "too_few_frames"
            if any(o.state is None or o.score is None for o in last):
                return [], "gated"
            if any(o.state != status.state for o in last):
                return [], "disagree"
            scores = [o.score for o in last if o.score is not None]
            out.append(
                FacingReading(key[0], key[1], status.state, statistics.median(scores), len(last), last[0].ts)
            )
        return out, None

    def apply(self, event: VisionEvent) -> None:
        if not isinstance(event, FacingStateChanged):
            return
        key = (event.camera_id, event.roi_id)
        before = self._facings.get(key)
        last_judged = event.ts if event.reason == "judged" else (before.last_judged_ts if before else None)
        self._facings[key] = FacingStatus(
            event.camera_id,
            event.roi_id,
            event.sku,
            event.bin_id,
            event.state,
            event.score,
            event.ts,
            last_judged,
        )

    def register(self, statuses: list[FacingStatus]) -> None:
        """Make facings known (as `unknown`) before their first event, so status pages list every facing."""
        for status in statuses:
            self._facings.setdefault((status.camera_id, status.roi_id), status)

    def forget_camera(self, camera_id: str) -> None:
        for key in [k for k in self._facings if k[0] == camera_id]:
            del self._facings[key]
        for key in [k for k in self._obs if k[0] == camera_id]:
            del self._obs[key]

    def statuses(self) -> list[FacingStatus]:
        return sorted(self._facings.values(), key=lambda s: (s.camera_id, s.roi_id))

    def facing_hint(self, bin_id: str) -> FacingHint | None:
        """What the cameras currently see of a weight bin's facings, or None if they cannot tell.

        * None when no ROI is bound to `bin_id`, or when any of its facings is `unknown` (no reference,
          camera offline or moved, hidden by shoppers for longer than `unknown_after_s`);
        * the common state when all its facings agree;
        * `low` when they disagree (some facings of the bin emptied, others still stocked: the bin as a
          whole is partly depleted).
        """
        states = {s.state for s in self._facings.values() if s.bin_id == bin_id}
        if not states or "unknown" in states:
            return None
        if len(states) == 1:
            (state,) = states
            if state == "unknown":  # narrowed above; keeps the return type exact for mypy
                return None
            return state
        return "low"
