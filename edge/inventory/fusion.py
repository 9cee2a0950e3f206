"""Camera fusion for weighed bins: settle `ambiguous` weight changes and flag misplaced goods.

A weighed bin whose facing a camera also watches (a `cameras[].rois[]` entry with `bin:`) gets a second
opinion when its weight change is `Ambiguous` (not a whole number of items within tolerance, or several counts
fit — `BinEstimator.candidates`). The camera answers only when it is *confident*, and only *after* the change:

* every facing of the bin: camera not moved, tracked state not `unknown`, and its last `fusion_frames`
  analysed frames were all taken after the weight change, none gated (a shopper, an arm, motion) and all
  agreeing (`FacingBoard.readings`);
* within `fusion_window_s` of the change; any later count of the bin (a newer level) drops the question.

Rules (in this order; `u` = unit weight, Δ = the weight change, frac = |Δ/u − round(Δ/u)|):

1. **Misplaced goods**: frac ≥ `misplaced_min_fraction` (the change is no whole number of this bin's items)
   and every facing looks as it did before the change (fill score within `misplaced_max_score_change` of
   the median of its last judged frames before it — frames taken after the bin's previous weight change
   only; with none, no verdict). The state is not compared: a facing whose score sits on a state threshold
   may flip between `low` and `ok` without any change on the shelf. If Δ > 0 something
   foreign was put on the plate: a `misplaced` alert, the count stays what it was. If Δ < 0 something that
   was not this bin's goods was taken off: the count stays. Either way the count is confirmed as before
   (`resolved_by: camera`).
2. **Empty**: every facing `empty` → 0 items, when 0 is a candidate.
3. **Fill → count** (facings with `units`): estimate = Σ fill score × units; the nearest candidate, when it
   is within `fill_tolerance_items` of the estimate and the next nearest is at least that much farther.
4. **Not empty** (no `units`): `ok`/`low` rules out 0; when exactly one candidate is left, that one.

Otherwise the change stays ambiguous (the alert raised after the dwell says what the camera sees). A
`misplaced` alert clears when the camera settles a later non-whole *decrease* under rule 1 (the foreign item
taken off again), or when the plate's stable level is a whole number of items matching the count again
(`BinEstimator.level_count`; a bin whose items vary too much to count by weight never gets there).

Pure and deterministic like the rest of the engine: the caller passes every timestamp. Not exported from
`edge.inventory` (it needs `edge.vision`, hence OpenCV): the gateway imports it only when cameras exist.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from edge.config import Bin, Camera, CameraRoi
from edge.inventory.alerts import AlertRules, AlertTransition
from edge.inventory.estimator import BinEstimator
from edge.inventory.events import Ambiguous, CountChanged
from edge.vision.board import FacingBefore, FacingBoard, FacingReading, NotSure

_log = logging.getLogger(__name__)

RESOLVED_BY = "camera"


@dataclass(frozen=True, slots=True)
class FusionSettings:
    """One bin's fusion thresholds, combined from its ROIs (the strictest of each; `units` summed)."""

    frames: int = 3
    window_s: float = 60.0
    fill_tolerance_items: float = 0.35
    misplaced_min_fraction: float = 0.25
    misplaced_max_score_change: float = 0.1
    units: Mapping[tuple[str, str], int] | None = None
    """(camera id, ROI id) → units its stocked reference shows; None unless every facing of the bin has one."""

    @classmethod
    def for_bin(cls, rois: Sequence[tuple[str, CameraRoi]]) -> FusionSettings:
        """`rois`: (camera id, ROI) pairs bound to one bin."""
        if not rois:
            return cls()
        units = {(cam, r.id): r.units for cam, r in rois if r.units is not None}
        return cls(
            frames=max(r.fusion_frames for _, r in rois),
            window_s=min(r.fusion_window_s for _, r in rois),
            fill_tolerance_items=min(r.fill_tolerance_items for _, r in rois),
            misplaced_min_fraction=max(r.misplaced_min_fraction for _, r in rois),
            misplaced_max_score_change=min(r.misplaced_max_score_change for _, r in rois),
            units=units if len(units) == len(rois) else None,
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """What the camera settled: a count (and whether the change was misplaced goods), with a reason."""

    count: int
    misplaced: bool
    detail: str
    foreign_removed: bool = False
    """Rule 1 with Δ < 0: what left the plate was not this bin's goods (clears a `misplaced` alert)."""


def decide(
    event: Ambiguous,
    unit_weight_g: float,
    readings: Sequence[FacingReading],
    before: Sequence[FacingBefore],
    settings: FusionSettings,
) -> Decision | None:
    """The rules of the module docstring for one ambiguous change and confident readings; None = still
    ambiguous."""
    if not readings:
        return None
    items = event.delta_g / unit_weight_g
    frac = abs(items - round(items))
    seen = ", ".join(f"{r.roi_id} {r.state} {r.score:.2f}" for r in readings)
    if frac >= settings.misplaced_min_fraction and event.count_before is not None and before:
        was = {(b.camera_id, b.roi_id): b for b in before}
        unchanged = all(
            (b := was.get((r.camera_id, r.roi_id))) is not None
            and b.score is not None
            and abs(b.score - r.score) <= settings.misplaced_max_score_change
            for r in readings
        )
        if unchanged:
            if event.delta_g > 0:
                detail = (
                    f"{event.delta_g:+.1f} g ({items:+.2f} items) put on the plate while the camera saw "
                    f"the facing unchanged ({seen})"
                )
                return Decision(event.count_before, True, detail)
            detail = (
                f"{event.delta_g:+.1f} g ({items:+.2f} items) taken off while the camera saw the facing "
                f"unchanged ({seen}): not this bin's goods"
            )
            return Decision(event.count_before, False, detail, foreign_removed=True)
    candidates = event.candidates
    if not candidates:
        return None
    if all(r.state == "empty" for r in readings):
        return Decision(0, False, f"camera sees the facing empty ({seen})") if 0 in candidates else None
    if settings.units is not None:
        estimate = sum(
            min(max(r.score, 0.0), 1.0) * settings.units.get((r.camera_id, r.roi_id), 0) for r in readings
        )
        ranked = sorted(candidates, key=lambda c: (abs(c - estimate), c))
        best = ranked[0]
        err = abs(best - estimate)
        margin_ok = len(ranked) == 1 or abs(ranked[1] - estimate) - err >= settings.fill_tolerance_items
        if err <= settings.fill_tolerance_items and margin_ok and best > 0:
            return Decision(best, False, f"camera counts {estimate:.2f} items ({seen})")
        return None
    left = [c for c in candidates if c > 0]
    if len(left) == 1:
        return Decision(left[0], False, f"camera sees the facing not empty ({seen})")
    return None


@dataclass(slots=True)
class _Pending:
    event: Ambiguous
    before: list[FacingBefore]
    last_why: NotSure | None = None


@dataclass(frozen=True, slots=True)
class FusionOutcome:
    """What one `check` did: counts to persist, alert transitions, bins touched (for their rows)."""

    counts: list[CountChanged]
    transitions: list[AlertTransition]
    touched: list[str]


class CameraFusion:
    """The gateway's fusion of weight and camera for weighed bins with a ROI (see the module docstring).

    `ambiguous()` when the estimator reports an ambiguity; `check()` about once a tick and after facing
    changes; `count_changed()` after every count the weight settles itself (clears `misplaced`).
    """

    def __init__(
        self, bins: Mapping[str, Bin], cameras: Callable[[], Sequence[Camera]], board: FacingBoard
    ) -> None:
        """`cameras` returns the cameras as they run now (the installer may re-draw ROIs live); it is read
        again at every ambiguity."""
        self._board = board
        self._bins = bins
        self._cameras = cameras
        self._settings: dict[str, FusionSettings] = {}
        self.set_cameras(cameras())
        self._pending: dict[str, _Pending] = {}
        self._last_change_ts: dict[str, float] = {}
        """Per bin: when its weight last changed (a count or an ambiguity) — "before" frames start there."""
        self.resolved = 0
        """Ambiguities the camera settled (counts, including `misplaced`)."""
        self.expired = 0
        """Ambiguities the camera could not settle within the window."""

    def set_cameras(self, cameras: Sequence[Camera]) -> None:
        """(Re)read which ROIs watch which weighed bin (after installer edits)."""
        by_bin: dict[str, list[tuple[str, CameraRoi]]] = {}
        for cam in cameras:
            for r in cam.rois:
                b = self._bins.get(r.bin) if r.bin is not None else None
                if b is not None and b.device is not None:
                    by_bin.setdefault(b.id, []).append((cam.id, r))
        self._settings = {bin_id: FusionSettings.for_bin(rois) for bin_id, rois in by_bin.items()}

    def watches(self, bin_id: str) -> bool:
        return bin_id in self._settings

    @property
    def pending(self) -> list[str]:
        """Bins with an ambiguity waiting for the camera."""
        return sorted(self._pending)

    def ambiguous(self, event: Ambiguous) -> None:
        """Remember an ambiguity of a watched bin, with how its facings looked at that moment."""
        self.set_cameras(self._cameras())
        since = self._last_change_ts.get(event.bin_id, float("-inf"))
        self._last_change_ts[event.bin_id] = event.ts
        if event.bin_id not in self._settings:
            return
        before = self._board.before(event.bin_id, event.ts, since_ts=since)
        self._pending[event.bin_id] = _Pending(event, before)

    def count_changed(
        self, bin_id: str, estimator: BinEstimator, rules: AlertRules, ts: float
    ) -> list[AlertTransition]:
        """A count the weight settled (call it for every `CountChanged`): a pending ambiguity of the bin is
        dropped — a newer level replaced the one its candidates were for — and a `misplaced` alert clears when
        the level is whole again."""
        self._last_change_ts[bin_id] = ts
        self._pending.pop(bin_id, None)
        if bin_id not in self._settings or not rules.misplaced_active(bin_id):
            return []
        if estimator.count is not None and estimator.level_count() == estimator.count:
            return rules.misplaced(bin_id, False, ts)
        return []

    def check(self, now: float, estimators: Mapping[str, BinEstimator], rules: AlertRules) -> FusionOutcome:
        """Try every pending ambiguity against what the cameras see now."""
        out = FusionOutcome([], [], [])
        for bin_id, p in list(self._pending.items()):
            settings = self._settings.get(bin_id)
            est = estimators.get(bin_id)
            if settings is None or est is None:
                del self._pending[bin_id]
                continue
            if est.count is not None and not est.uncertain:
                del self._pending[bin_id]  # the weight settled it itself (a later level reconciled)
                continue
            if now - p.event.ts > settings.window_s:
                del self._pending[bin_id]
                self.expired += 1
                _log.info(
                    "bin %s: the camera could not settle the ambiguity within %g s (%s)",
                    bin_id,
                    settings.window_s,
                    p.last_why,
                )
                continue
            readings, why = self._board.readings(bin_id, after_ts=p.event.ts, frames=settings.frames)
            p.last_why = why
            if why is not None or not est.stable:
                continue
            decision = decide(p.event, self._bins[bin_id].unit_weight_g, readings, p.before, settings)
            if decision is None:
                continue
            del self._pending[bin_id]
            self.resolved += 1
            changed = est.resolve(decision.count, now)
            self._last_change_ts[bin_id] = now
            out.counts.append(changed)
            out.touched.append(bin_id)
            if decision.misplaced:
                out.transitions.extend(rules.misplaced(bin_id, True, now, decision.detail))
            out.transitions.extend(rules.update_count(bin_id, changed.count, now, resolved_by=RESOLVED_BY))
            if decision.foreign_removed and rules.misplaced_active(bin_id):
                out.transitions.extend(rules.misplaced(bin_id, False, now))
            elif not decision.misplaced:
                out.transitions.extend(self.count_changed(bin_id, est, rules, now))
            _log.info(
                "bin %s: count %d settled by the camera (resolved_by: %s): %s",
                bin_id,
                decision.count,
                RESOLVED_BY,
                decision.detail,
            )
        return out
