"""Frame sources behind one seam: a V4L2 device or network stream through OpenCV, a video file, a callable.

The seam (`FrameSource`) is blocking on purpose: OpenCV's capture API is blocking, so every call runs on the
stream's grab thread (`stream.py`), never on the event loop. It splits a read into `grab()` and `retrieve()`
the way `cv2.VideoCapture` does: a *live* source (a camera producing frames on its own clock) must be drained
continuously or its driver buffer serves stale frames (V4L2 queues several buffers; an RTSP/FFmpeg demuxer
keeps reading), but only the frames the analyser will use need decoding into BGR — `grab()` only dequeues,
`retrieve()` decodes (OpenCV docs, `VideoCapture::grab`: "the main use of the function is in multi-camera
environments ... call VideoCapture::retrieve to decode"). A non-live source (file, synthetic) produces a
frame only when asked, so the stream grabs it only when one is due.

Error classes for the reconnect policy (`models.py`): transient (retry with backoff), gone (the device node or
file is missing: retry), misconfigured / ended (never retried).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Final, Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

from drivers.camera.models import (
    BadFrame,
    Image,
    SourceEnded,
    SourceGone,
    SourceMisconfigured,
    SourceTransient,
)

NETWORK_SCHEMES: Final = frozenset({"rtsp", "rtsps", "http", "https"})
"""URL schemes handed to OpenCV's FFmpeg backend (RTSP cameras; MJPEG-over-HTTP cameras)."""

_V4L2_NODE: Final = re.compile(r"^/dev/(video\d+|v4l/by-(id|path)/.+)$")
"""Device paths accepted for V4L2: the kernel's node, or the stable udev links (by-id / by-path)."""


@runtime_checkable
class FrameSource(Protocol):
    """The camera seam. All methods block and run on the stream's grab thread.

    `open()` may be called again after `close()` (reconnect). `grab()` advances to the next frame without
    decoding it; `retrieve()` returns the last grabbed frame as an 8-bit BGR image. Failures raise
    `SourceError` subclasses only.
    """

    @property
    def name(self) -> str:
        """A printable name without secrets (RTSP passwords are masked)."""
        ...

    @property
    def live(self) -> bool:
        """True when frames arrive on the device's clock and must be drained (V4L2, RTSP)."""
        ...

    def open(self) -> None: ...

    def grab(self) -> None: ...

    def retrieve(self) -> Image: ...

    def close(self) -> None: ...


def as_bgr_image(raw: object, source: str) -> Image:
    """Check and normalise what a source returned: 8-bit BGR, H × W × 3, contiguous — else `BadFrame`.

    Grey (H × W or H × W × 1) and BGRA images are converted; anything else (None, floats, empty arrays,
    odd channel counts) is a bad frame, counted by the stream and skipped.
    """
    if not isinstance(raw, np.ndarray):
        raise BadFrame(source, f"expected an image array, got {type(raw).__name__}")
    if raw.dtype != np.uint8:
        raise BadFrame(source, f"expected 8-bit pixels, got {raw.dtype}")
    if raw.size == 0 or raw.ndim not in (2, 3):
        raise BadFrame(source, f"expected an H×W or H×W×C image, got shape {raw.shape}")
    if raw.ndim == 2 or raw.shape[2] == 1:
        out = cv2.cvtColor(raw, cv2.COLOR_GRAY2BGR)
    elif raw.shape[2] == 4:
        out = cv2.cvtColor(raw, cv2.COLOR_BGRA2BGR)
    elif raw.shape[2] == 3:
        out = raw
    else:
        raise BadFrame(source, f"expected 1, 3 or 4 channels, got {raw.shape[2]}")
    return np.ascontiguousarray(out, dtype=np.uint8)


def mask_credentials(uri: str) -> str:
    """`rtsp://user:secret@host/x` → `rtsp://user:***@host/x` (URIs reach logs and status pages)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class OpenCvSource:
    """A live camera through `cv2.VideoCapture`: a V4L2 node (USB camera) or an RTSP/HTTP stream (FFmpeg).

    V4L2: the device path must exist (a missing node after an unplug is `SourceGone`); the driver queue is cut
    to one buffer (`CAP_PROP_BUFFERSIZE`) so a retrieved frame is recent. Optional `width`/`height`/`fourcc`
    request a capture mode (MJPG lets a USB 2 camera deliver 720p at full rate). Network streams use FFmpeg
    with open and read timeouts (`CAP_PROP_OPEN_TIMEOUT_MSEC` / `CAP_PROP_READ_TIMEOUT_MSEC`, OpenCV ≥ 4.6),
    so a dead camera ends a blocked read instead of hanging the grab thread. For RTSP over TCP set
    `OPENCV_FFMPEG_CAPTURE_OPTIONS=rtsp_transport;tcp` in the service environment (OpenCV's FFmpeg backend
    reads it; a store network dropping UDP is common).
    """

    def __init__(
        self,
        uri: str,
        *,
        open_timeout_s: float = 10.0,
        read_timeout_s: float = 5.0,
        width: int | None = None,
        height: int | None = None,
        fourcc: str | None = None,
    ) -> None:
        scheme = urlsplit(uri).scheme.lower()
        if scheme in NETWORK_SCHEMES:
            self._api = cv2.CAP_FFMPEG
            self._is_device = False
        elif _V4L2_NODE.match(uri):
            self._api = cv2.CAP_V4L2
            self._is_device = True
        else:
            raise ValueError(
                f"camera source {mask_credentials(uri)!r}: expected a V4L2 device path (/dev/videoN, "
                f"/dev/v4l/by-id/...) or an rtsp://, rtsps://, http:// or https:// URL"
            )
        if open_timeout_s <= 0 or read_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        if (width is None) != (height is None):
            raise ValueError("give both width and height, or neither")
        if fourcc is not None and len(fourcc) != 4:
            raise ValueError(f"fourcc must be 4 characters, got {fourcc!r}")
        self._uri = uri
        self._name = mask_credentials(uri)
        self._open_timeout_ms = round(open_timeout_s * 1000)
        self._read_timeout_ms = round(read_timeout_s * 1000)
        self._size = (width, height) if width is not None and height is not None else None
        self._fourcc = fourcc
        self._cap: cv2.VideoCapture | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def live(self) -> bool:
        return True

    def open(self) -> None:
        self.close()
        if self._is_device and not Path(self._uri).exists():
            raise SourceGone(self._name, "device node not present (unplugged?)")
        params: list[int] = []
        if not self._is_device:
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                self._open_timeout_ms,
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                self._read_timeout_ms,
            ]
        try:
            cap = cv2.VideoCapture(self._uri, self._api, params)
        except cv2.error as exc:
            raise SourceTransient(self._name, f"cannot open: {exc}") from exc
        if not cap.isOpened():
            cap.release()
            raise SourceTransient(self._name, "cannot open (camera busy, unreachable or not streaming)")
        if self._is_device:
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
            if self._fourcc is not None:
                cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*self._fourcc))
            if self._size is not None:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self._size[0])
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self._size[1])
        self._cap = cap

    def grab(self) -> None:
        cap = self._require_open()
        try:
            ok = cap.grab()
        except cv2.error as exc:
            raise SourceTransient(self._name, f"grab failed: {exc}") from exc
        if not ok:
            if self._is_device and not Path(self._uri).exists():
                raise SourceGone(self._name, "device node vanished (unplugged?)")
            raise SourceTransient(self._name, "no frame (stream stalled or closed by the camera)")

    def retrieve(self) -> Image:
        cap = self._require_open()
        try:
            ok, raw = cap.retrieve()
        except cv2.error as exc:
            raise BadFrame(self._name, f"cannot decode frame: {exc}") from exc
        if not ok:
            raise BadFrame(self._name, "cannot decode the grabbed frame")
        return as_bgr_image(raw, self._name)

    def close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()

    def _require_open(self) -> cv2.VideoCapture:
        if self._cap is None:
            raise SourceTransient(self._name, "not open")
        return self._cap


class VideoFileSource:
    """A recorded video (any container FFmpeg reads; the simulator writes MJPG/AVI), looped by default.

    Not live: a frame is decoded only when the stream asks for one, so a 1 frame/s analysis walks the file
    at one file frame per analysed frame (`frame_step` skips frames to play a 15 fps recording at real time).
    A missing file is `SourceGone` (retried: it may be copied in later); a file OpenCV cannot read is
    `SourceMisconfigured`; the end without `loop` is `SourceEnded`.
    """

    def __init__(self, path: str | os.PathLike[str], *, loop: bool = True, frame_step: int = 1) -> None:
        if frame_step < 1:
            raise ValueError("frame_step must be at least 1")
        self._path = Path(path)
        self._name = str(self._path)
        self._loop = loop
        self._frame_step = frame_step
        self._cap: cv2.VideoCapture | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def live(self) -> bool:
        return False

    def open(self) -> None:
        self.close()
        if not self._path.is_file():
            raise SourceGone(self._name, "video file not found")
        cap = cv2.VideoCapture(str(self._path), cv2.CAP_ANY)
        if not cap.isOpened():
            cap.release()
            raise SourceMisconfigured(self._name, "OpenCV cannot read this video file")
        self._cap = cap

    def grab(self) -> None:
        cap = self._cap
        if cap is None:
            raise SourceTransient(self._name, "not open")
        for _ in range(self._frame_step):
            if cap.grab():
                continue
            if not self._loop:
                raise SourceEnded(self._name, "end of video file")
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            if not cap.grab():
                raise SourceMisconfigured(self._name, "video file has no readable frame")

    def retrieve(self) -> Image:
        cap = self._cap
        if cap is None:
            raise SourceTransient(self._name, "not open")
        ok, raw = cap.retrieve()
        if not ok:
            raise BadFrame(self._name, "cannot decode the grabbed frame")
        return as_bgr_image(raw, self._name)

    def close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()


class SyntheticSource:
    """Frames from a callable `render(index) -> image` — the simulator's stream, and a seam for tests.

    `render` may raise `SourceError` subclasses to act out faults; `index` counts grabs since construction
    (it survives reopen, like a camera's clock). Not live unless `live=True`.
    """

    def __init__(
        self, render: Callable[[int], Image], *, name: str = "synthetic", live: bool = False
    ) -> None:
        self._render = render
        self._name = name
        self._live = live
        self._index = -1
        self._open = False

    @property
    def name(self) -> str:
        return self._name

    @property
    def live(self) -> bool:
        return self._live

    def open(self) -> None:
        self._open = True

    def grab(self) -> None:
        if not self._open:
            raise SourceTransient(self._name, "not open")
        self._index += 1

    def retrieve(self) -> Image:
        if not self._open:
            raise SourceTransient(self._name, "not open")
        return as_bgr_image(self._render(max(self._index, 0)), self._name)

    def close(self) -> None:
        self._open = False
