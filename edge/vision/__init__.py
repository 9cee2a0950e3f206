"""Shelf gap detection from cameras: ROIs per facing, fill scores, motion gating, facing states.

The camera seam and grab thread are `drivers.camera`; this package judges frames and keeps state. Only
numbers and ids leave it (events, statuses, hints); pixels leave only through
`CameraMonitor.snapshot_with_overlay()` (installer page). See docs/cameras.md.
"""

from edge.vision.analyser import (
    CameraMovedError,
    FrameAnalysis,
    GateReason,
    ReferenceImage,
    RoiObservation,
    ShelfAnalyser,
)
from edge.vision.board import FacingBefore, FacingBoard, FacingHint, FacingReading
from edge.vision.monitor import CameraMonitor, MonitorCounters, NoFrameYet
from edge.vision.reference_store import ReferenceStore
from edge.vision.roi import FacingState, Roi
from edge.vision.settings import METRIC_NAMES, MetricName, VisionSettings
from edge.vision.tracker import CameraMoved, FacingStateChanged, FacingStatus, FacingTracker, VisionEvent

__all__ = [
    "METRIC_NAMES",
    "CameraMonitor",
    "CameraMoved",
    "CameraMovedError",
    "FacingBefore",
    "FacingBoard",
    "FacingHint",
    "FacingReading",
    "FacingState",
    "FacingStateChanged",
    "FacingStatus",
    "FacingTracker",
    "FrameAnalysis",
    "GateReason",
    "MetricName",
    "MonitorCounters",
    "NoFrameYet",
    "ReferenceImage",
    "ReferenceStore",
    "Roi",
    "RoiObservation",
    "ShelfAnalyser",
    "VisionEvent",
    "VisionSettings",
]
