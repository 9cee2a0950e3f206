"""Live ROI edits (installer, issue #8 part 7): `FacingTracker.set_rois` keeps, resets, adds and drops facings."""

from __future__ import annotations

from edge.vision import FacingStateChanged, FacingTracker, Roi
from tests.edge.vision.test_tracker import ROIS, SETTINGS, frame


def test_set_rois_keeps_unchanged_outlines_and_restarts_redrawn_new_and_removed() -> None:
    tracker = FacingTracker("cam", ROIS, SETTINGS, start_ts=0.0)
    for ts in (1.0, 2.0, 3.0):
        tracker.update(frame({"a": "ok", "b": "low", "c": "empty"}), ts)
    assert {s.roi_id: s.state for s in tracker.statuses()} == {"a": "ok", "b": "low", "c": "empty"}

    edited = [
        Roi.rect("a", "06900000000099", 0, 0, 10, 10, bin_id="bin-2"),  # same outline, new SKU and bin
        Roi.rect("b", "06900000000010", 10, 0, 12, 10, bin_id="bin-1"),  # re-drawn
        Roi.rect("d", "06900000000034", 40, 0, 10, 10),  # new; "c" removed
    ]
    events = tracker.set_rois(edited, 4.0)
    assert all(isinstance(e, FacingStateChanged) for e in events)
    changes = {(e.roi_id, e.state, e.reason) for e in events if isinstance(e, FacingStateChanged)}
    assert changes == {("b", "unknown", "roi_changed"), ("c", "unknown", "roi_removed")}
    statuses = {s.roi_id: s for s in tracker.statuses()}
    assert list(statuses) == ["a", "b", "d"]
    assert (statuses["a"].state, statuses["a"].sku, statuses["a"].bin_id) == ("ok", "06900000000099", "bin-2")
    assert statuses["b"].state == "unknown"
    assert statuses["d"].state == "unknown"
    # An observation of the removed facing is ignored; none is a crash.
    assert tracker.update(frame({"c": "ok"}), 5.0) == []
