"""The facing board: current camera states of every facing, and the hint the inventory engine asks for.

`facing_hint(bin_id)` is the call the inventory engine makes when a weight bin reports an `ambiguous` level
change (a weight step that is not a whole number of items): if a camera watches that bin's facing(s) and
currently sees them, the hint says whether the shelf looks `ok`, `low` or `empty`, which lets the engine
tell "several items taken" from "something put back on the wrong plate" without guessing. It returns None
whenever the camera cannot vouch for the facing right now, and the engine must then treat the event as it
does without a camera.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

from edge.vision.tracker import FacingStateChanged, FacingStatus, VisionEvent

FacingHint: TypeAlias = Literal["ok", "low", "empty"]


class FacingBoard:
    """Shared by every camera monitor of a gateway (they `apply` their events); read on the event loop."""

    def __init__(self) -> None:
        self._facings: dict[tuple[str, str], FacingStatus] = {}

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
