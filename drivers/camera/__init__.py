"""Cameras (V4L2 / RTSP / files / synthetic) behind one `FrameSource` seam, with a reconnecting grab thread.

Frames never leave this package except through `CameraStream.next_frame()` to one consumer; nothing here
writes to disk. Analysis (ROIs, fill scores, gating) lives in `edge.vision`.
"""

from drivers.camera.models import (
    Availability,
    BadFrame,
    CameraError,
    CameraStreamClosed,
    Frame,
    Image,
    SourceEnded,
    SourceError,
    SourceGone,
    SourceMisconfigured,
    SourceTransient,
    StreamCounters,
    StreamSettings,
)
from drivers.camera.sources import (
    FrameSource,
    OpenCvSource,
    SyntheticSource,
    VideoFileSource,
    as_bgr_image,
    mask_credentials,
)
from drivers.camera.stream import CameraStream

__all__ = [
    "Availability",
    "BadFrame",
    "CameraError",
    "CameraStream",
    "CameraStreamClosed",
    "Frame",
    "FrameSource",
    "Image",
    "OpenCvSource",
    "SourceEnded",
    "SourceError",
    "SourceGone",
    "SourceMisconfigured",
    "SourceTransient",
    "StreamCounters",
    "StreamSettings",
    "SyntheticSource",
    "VideoFileSource",
    "as_bgr_image",
    "mask_credentials",
]
