"""FacingTracker (N consecutive judged frames, unknown when unseen or moved) and FacingBoard.facing_hint."""

from __future__ import annotations

from edge.vision import (
    CameraMoved,
    FacingBoard,
    FacingStateChanged,
    FacingTracker,
    FrameAnalysis,
    Roi,
    RoiObservation,
    VisionSettings,
)
from edge.vision.analyser import GateReason
from edge.vision.roi import FacingState

ROIS = [
    Roi.rect("a", "06900000000010", 0, 0, 10, 10, bin_id="bin-1"),
    Roi.rect("b", "06900000000010", 10, 0, 10, 10, bin_id="bin-1"),
    Roi.rect("c", "06900000000027", 20, 0, 10, 10),
]
SETTINGS = VisionSettings(confirm_frames=3, unknown_after_s=10.0)


SCORES: dict[str, float] = {"ok": 0.9, "low": 0.4, "empty": 0.05}


def frame(states: dict[str, FacingState | GateReason], *, moved: bool = False) -> FrameAnalysis:
    """One analysed frame: a judged state per ROI, or a gate reason (ROIs not named are gated by motion)."""
    obs = []
    for roi in ROIS:
        value = states.get(roi.roi_id, "motion")
        if value == "ok" or value == "low" or value == "empty":  # noqa: PLR1714 - narrows the Literal for mypy
            obs.append(RoiObservation(roi.roi_id, value, SCORES[value], None))
        elif value in ("motion", "occluded", "camera_moved", "no_reference", "frame_size"):
            obs.append(RoiObservation(roi.roi_id, None, None, value))
    return FrameAnalysis(tuple(obs), (0.0, 0.0), 0.9, moved, 1.0)


def test_a_state_needs_n_consecutive_judged_frames_and_gated_frames_do_not_break_the_run() -> None:
    tracker = FacingTracker("cam", ROIS, SETTINGS, start_ts=0.0)
    assert tracker.update(frame({"a": "ok"}), 1.0) == []
    assert tracker.update(frame({"a": "occluded"}), 2.0) == []  # a shopper: skipped, run kept
    assert tracker.update(frame({"a": "ok"}), 3.0) == []
    events = tracker.update(frame({"a": "ok"}), 4.0)
    assert events == [FacingStateChanged("cam", "a", "06900000000010", "bin-1", "ok", 0.9, 4.0, "judged")]
    # one disagreeing frame does not flip it, and it restarts the run
    assert tracker.update(frame({"a": "empty"}), 5.0) == []
    assert tracker.update(frame({"a": "ok"}), 6.0) == []
    assert tracker.update(frame({"a": "empty"}), 7.0) == []
    assert tracker.update(frame({"a": "empty"}), 8.0) == []
    assert [e.state for e in tracker.update(frame({"a": "empty"}), 9.0)] == ["empty"]  # type: ignore[union-attr]


def test_unseen_for_too_long_becomes_unknown() -> None:
    tracker = FacingTracker("cam", ROIS, SETTINGS, start_ts=0.0)
    for ts in (1.0, 2.0, 3.0):
        tracker.update(frame({"c": "low"}), ts)
    assert tracker.update(frame({"c": "occluded"}), 12.0) == []
    events = tracker.update(frame({"c": "occluded"}), 13.0)
    assert len(events) == 1
    assert events[0] == FacingStateChanged(
        "cam", "c", "06900000000027", None, "unknown", None, 13.0, "not_seen"
    )


def test_camera_moved_makes_every_facing_unknown() -> None:
    tracker = FacingTracker("cam", ROIS, SETTINGS, start_ts=0.0)
    for ts in (1.0, 2.0, 3.0):
        tracker.update(frame({"a": "ok", "b": "ok", "c": "ok"}), ts)
    events = tracker.update(frame({}, moved=True), 4.0)
    assert isinstance(events[0], CameraMoved)
    assert events[0].active
    assert sorted((e.roi_id, e.state, e.reason) for e in events[1:]) == [  # type: ignore[union-attr]
        ("a", "unknown", "camera_moved"),
        ("b", "unknown", "camera_moved"),
        ("c", "unknown", "camera_moved"),
    ]
    back = tracker.update(frame({"a": "ok"}), 5.0)
    assert back == [CameraMoved("cam", 5.0, (0.0, 0.0), False)]


def test_facing_hint_for_ambiguous_weight_events() -> None:
    board = FacingBoard()
    tracker = FacingTracker("cam", ROIS, SETTINGS, start_ts=0.0)
    board.register(tracker.statuses())
    assert board.facing_hint("bin-1") is None  # unknown facings vouch for nothing
    assert board.facing_hint("no-such-bin") is None
    for ts in (1.0, 2.0, 3.0):
        for event in tracker.update(frame({"a": "empty", "b": "empty", "c": "ok"}), ts):
            board.apply(event)
    assert board.facing_hint("bin-1") == "empty"
    for ts in (4.0, 5.0, 6.0):
        for event in tracker.update(frame({"b": "ok"}), ts):
            board.apply(event)
    assert board.facing_hint("bin-1") == "low"  # one facing emptied, the other stocked: partly depleted
    for event in tracker.mark_all_unknown(7.0, "camera_offline"):
        board.apply(event)
    assert board.facing_hint("bin-1") is None
    assert {s.state for s in board.statuses()} == {"unknown"}
