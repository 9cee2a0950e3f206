"""Facing states over time: N consecutive agreeing judgements to change, `unknown` when the camera cannot see.

The analyser judges single frames; this turns judgements into state changes worth telling the inventory
engine about. Rules:

* a facing starts `unknown`; a judged state replaces the current one only after `confirm_frames` consecutive
  *judged* frames agree (frames gated by motion or an occluder are skipped — they neither count nor break the
  run), so a shopper's arm or one noisy frame never flips a facing;
* a facing not judged for `unknown_after_s` (someone standing in front of it, the camera gated) goes
  `unknown`: a stale state is never shown as fresh (STYLE.md rule 8);
* camera moved, camera offline, reference (re)captured: every facing goes `unknown` at once, and the run
  starts over.

Events (`FacingStateChanged`, `CameraMoved`) are small frozen value objects with numbers and ids only — they
are what may leave the gateway (through the outbox); a test checks they can hold no pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

from edge.vision.analyser import FrameAnalysis
from edge.vision.roi import FacingState, Roi
from edge.vision.settings import VisionSettings


@dataclass(frozen=True, slots=True)
class FacingStateChanged:
    """A facing's state changed. `score` is the fill score of the last judged frame (None for `unknown`)."""

    camera_id: str
    roi_id: str
    sku: str
    bin_id: str | None
    state: FacingState
    score: float | None
    ts: float
    reason: str
    """"judged", "camera_moved", "camera_offline", "not_seen", "reference" — why it changed."""


@dataclass(frozen=True, slots=True)
class CameraMoved:
    """The camera's view no longer matches its reference (`active=True`), or matches again (`active=False`)."""

    camera_id: str
    ts: float
    shift_px: tuple[float, float]
    active: bool


VisionEvent: TypeAlias = FacingStateChanged | CameraMoved


@dataclass(frozen=True, slots=True)
class FacingStatus:
    """The current state of one facing, for status pages and `facing_hint` (pixel-free)."""

    camera_id: str
    roi_id: str
    sku: str
    bin_id: str | None
    state: FacingState
    score: float | None
    since_ts: float
    last_judged_ts: float | None


class _Track:
    __slots__ = ("candidate", "last_judged_ts", "roi", "run", "score", "since_ts", "state")

    def __init__(self, roi: Roi, ts: float) -> None:
        self.roi = roi
        self.state: FacingState = "unknown"
        self.score: float | None = None
        self.since_ts = ts
        self.last_judged_ts: float | None = None
        self.candidate: FacingState | None = None
        self.run = 0


class FacingTracker:
    """Per-camera state machine over `FrameAnalysis` results; returns the events each update caused."""

    def __init__(
        self, camera_id: str, rois: Sequence[Roi], settings: VisionSettings, *, start_ts: float
    ) -> None:
        self.camera_id = camera_id
        self.settings = settings
        self._tracks = {r.roi_id: _Track(r, start_ts) for r in rois}
        self._moved = False

    def update(self, analysis: FrameAnalysis, ts: float) -> list[VisionEvent]:
        """Feed one analysed frame (taken at wall-clock `ts`)."""
        events: list[VisionEvent] = []
        if analysis.camera_moved != self._moved:
            self._moved = analysis.camera_moved
            events.append(CameraMoved(self.camera_id, ts, analysis.shift_px, self._moved))
            if self._moved:
                events.extend(self.mark_all_unknown(ts, "camera_moved"))
                return events
        n = self.settings.confirm_frames
        for obs in analysis.observations:
            track = self._tracks.get(obs.roi_id)
            if track is None:
                continue
            if obs.state is None:
                # not judged: neither counts nor breaks the run; stale after unknown_after_s
                last = track.last_judged_ts if track.last_judged_ts is not None else track.since_ts
                if track.state != "unknown" and ts - last >= self.settings.unknown_after_s:
                    events.append(self._change(track, "unknown", None, ts, "not_seen"))
                continue
            track.last_judged_ts = ts
            track.score = obs.score
            if obs.state == track.candidate:
                track.run += 1
            else:
                track.candidate, track.run = obs.state, 1
            if track.run >= n and track.candidate != track.state:
                events.append(self._change(track, track.candidate, obs.score, ts, "judged"))
        return events

    def mark_all_unknown(self, ts: float, reason: str) -> list[VisionEvent]:
        """Every facing to `unknown` (camera offline / moved, reference re-captured); runs start over."""
        events: list[VisionEvent] = []
        for track in self._tracks.values():
            track.candidate, track.run = None, 0
            if track.state != "unknown":
                events.append(self._change(track, "unknown", None, ts, reason))
        return events

    def set_rois(self, rois: Sequence[Roi], ts: float) -> list[VisionEvent]:
        """Replace the facings (installer edits). A facing whose outline changed, or that is new, starts over as
        `unknown` (its reference is re-taken); one whose outline is unchanged keeps its state (a new SKU or bin
        label only); a removed facing reports `unknown` once (reason `roi_removed`) so its bin stops counting
        on it, then is forgotten."""
        events: list[VisionEvent] = []
        new_tracks: dict[str, _Track] = {}
        for roi in rois:
            old = self._tracks.get(roi.roi_id)
            if old is not None and old.roi.polygon == roi.polygon:
                old.roi = roi
                new_tracks[roi.roi_id] = old
                continue
            if old is not None and old.state != "unknown":
                old.candidate, old.run = None, 0
                old.roi = roi
                events.append(self._change(old, "unknown", None, ts, "roi_changed"))
            new_tracks[roi.roi_id] = _Track(roi, ts)
        for roi_id, track in self._tracks.items():
            if roi_id not in new_tracks and track.state != "unknown":
                events.append(self._change(track, "unknown", None, ts, "roi_removed"))
        self._tracks = new_tracks
        return events

    def statuses(self) -> list[FacingStatus]:
        return [
            FacingStatus(
                self.camera_id,
                t.roi.roi_id,
                t.roi.sku,
                t.roi.bin_id,
                t.state,
                t.score if t.state != "unknown" else None,
                t.since_ts,
                t.last_judged_ts,
            )
            for t in self._tracks.values()
        ]

    def _change(
        self, track: _Track, state: FacingState, score: float | None, ts: float, reason: str
    ) -> FacingStateChanged:
        track.state = state
        track.since_ts = ts
        return FacingStateChanged(
            self.camera_id, track.roi.roi_id, track.roi.sku, track.roi.bin_id, state, score, ts, reason
        )
