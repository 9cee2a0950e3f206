"""Typed values of the camera driver: frames, stream settings, health counters, availability, one error tree.

A `Frame` is the only object that carries pixels; it goes from the grab thread to exactly one consumer (the
gateway's vision monitor) and nowhere else. Everything else here is pixel-free and safe to log or ship.

Exceptions (STYLE.md rule 10): every failure of a source surfaces as one `SourceError` subclass carrying the
source name and a human reason; `cv2.error` and friends are translated in `sources.py`. Each subclass states
its error class for the reconnect policy (STYLE.md rule 7): transient and gone are retried with backoff,
misconfigured and ended are not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Final, TypeAlias

import numpy as np
from numpy.typing import NDArray

Image: TypeAlias = NDArray[np.uint8]
"""An 8-bit BGR image, height × width × 3 (OpenCV's native layout)."""

MAX_FPS_LIMIT: Final = 30.0
"""An inventory camera needs ≤ 1 analysed frame/s (DOMAIN.md); more than a video rate is a config error."""


class CameraError(Exception):
    """Root of the camera driver's exceptions."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class SourceError(CameraError):
    """A frame source failed. `kind` names the counter; `retry` says whether reconnecting can help."""

    kind: ClassVar[str] = "source_error"
    retry: ClassVar[bool] = True


class SourceTransient(SourceError):
    """A read or open failed in a way that may pass (network hiccup, camera busy, stream restarting)."""

    kind = "transient"


class SourceGone(SourceError):
    """The device is not there (V4L2 node missing after an unplug, file not present yet): retried, slower."""

    kind = "gone"


class SourceMisconfigured(SourceError):
    """The source can never work as configured (unsupported URL, unreadable file): not retried."""

    kind = "misconfigured"
    retry = False


class SourceEnded(SourceError):
    """A finite source (a video file without looping) has no more frames: not retried."""

    kind = "ended"
    retry = False


class BadFrame(SourceError):
    """The source delivered something that is not an 8-bit image (empty, wrong type or shape): skipped."""

    kind = "bad_frame"


class CameraStreamClosed(CameraError):
    """The stream stopped for good (closed, or its source failed in a way that is not retried)."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One grabbed image. Carries pixels: hand it to the analyser, never to an event, log or the outbox.

    `seq` counts every frame the stream retrieved (so a gap in the consumer's sequence is the number of
    frames superseded in the handoff); `ts` is wall-clock seconds for events, `mono` is `time.monotonic()`.
    """

    camera_id: str
    seq: int
    ts: float
    mono: float
    image: Image


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """How a `CameraStream` paces and reconnects.

    `max_fps` caps frames handed to the analyser (default 1/s: a shelf does not change faster, and a Pi 4
    must run four cameras). `read_failures_before_reconnect` consecutive failed reads close and reopen the
    source; a vanished device reopens at once. Backoff is capped full jitter (`drivers.backoff`).
    """

    max_fps: float = 1.0
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0
    read_failures_before_reconnect: int = 3
    join_timeout_s: float = 10.0
    """How long closing waits for the grab thread (a blocked network read ends at the source's timeout)."""

    def __post_init__(self) -> None:
        if not 0 < self.max_fps <= MAX_FPS_LIMIT:
            raise ValueError(f"max_fps must be in (0, {MAX_FPS_LIMIT:g}], got {self.max_fps!r}")
        if self.backoff_base_s <= 0 or self.backoff_cap_s < self.backoff_base_s:
            raise ValueError("need 0 < backoff_base_s <= backoff_cap_s")
        if self.read_failures_before_reconnect < 1:
            raise ValueError("read_failures_before_reconnect must be at least 1")
        if self.join_timeout_s <= 0:
            raise ValueError("join_timeout_s must be positive")


@dataclass(frozen=True, slots=True)
class Availability:
    """A change of a camera's availability; reported once per change, never per failed read."""

    camera_id: str
    online: bool
    reason: str
    ts: float


@dataclass(slots=True)
class StreamCounters:
    """Running health of one camera stream (mutated by its grab thread; read anywhere — plain ints).

    `frames_grabbed`: frames the source produced (a live source is drained continuously);
    `frames_retrieved`: frames decoded for the analyser (≤ max_fps); `frames_delivered`: taken by the
    consumer; `frames_superseded`: overwritten in the one-slot handoff because the consumer was busy.
    `errors` counts failures by `SourceError.kind` (plus "unexpected" for a bug in a source).
    """

    frames_grabbed: int = 0
    frames_retrieved: int = 0
    frames_delivered: int = 0
    frames_superseded: int = 0
    reconnects: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    last_error: str = ""

    def count_error(self, kind: str, reason: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        self.last_error = reason

    def snapshot(self) -> dict[str, object]:
        """A copy for status pages and health heartbeats (pixel-free)."""
        return {
            "frames_grabbed": self.frames_grabbed,
            "frames_retrieved": self.frames_retrieved,
            "frames_delivered": self.frames_delivered,
            "frames_superseded": self.frames_superseded,
            "reconnects": self.reconnects,
            "errors": dict(self.errors),
            "last_error": self.last_error,
        }
