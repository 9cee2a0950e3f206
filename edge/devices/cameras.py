"""Shelf cameras: one `CameraMonitor` per camera, a shared `FacingBoard`, and facing states into the engine.

Each camera is a supervised task `camera[{id}]` (STYLE.md rule 9: one task per device) running its monitor
(`edge.vision`: grab thread, analysis thread, tracker). What leaves it is pixel-free: every
`FacingStateChanged` goes to the gateway (`FacingSink.facing_changed`: a `facing.changed` outbox event, and
for a camera-only bin the `out`/`low` alert rules), and to the live stream. `CameraMoved` is logged and
published. The board answers `facing_hint(bin_id)` for weighed bins whose weight change was ambiguous.

Reference: with `reference_dir` (the gateway passes `DATA_DIR/camera-references`) every capture and
re-capture is saved there and loaded on the next start (`edge.vision.reference_store`; it stays on the
gateway). Only when none is stored (or it does not check out) is it captured from the first frames after
start when `reference.capture` is `on_start` (median-combined); with `manual` the camera runs with every
facing `unknown` until the installer captures it (`capture_reference`).

Sources: `/dev/…`, `rtsp(s)://`, `http(s)://` → `OpenCvSource`; `file:PATH` → `VideoFileSource` (looping);
`synthetic:NAME` only through `sources=` — the seam the demo and tests use to inject the simulator
(`firmware_sims`), like the BLE coordinator's `backend=`. `shelfgate run` never passes one, so a synthetic
camera there stays offline with that reason as its error.

OpenCV threads: `cv2.setNumThreads(1)` once when the coordinator is built — each camera has its own analysis
thread, and a second OpenCV thread per call costs more CPU than it saves at 720p (docs/cameras.md, "Cost").
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import cv2

from drivers.camera import (
    Availability,
    FrameSource,
    OpenCvSource,
    StreamSettings,
    VideoFileSource,
    mask_credentials,
)
from edge.config import Bin, Camera, CameraRoi
from edge.devices.base import DeviceHealthView, Family, Publish, age_s, supervise
from edge.vision import CameraMonitor, CameraMoved, FacingBoard, FacingStateChanged, NoFrameYet, Roi
from edge.vision.reference_store import ReferenceStore

_log = logging.getLogger(__name__)

ERROR_KINDS: Final = ("transient", "gone", "misconfigured", "ended", "bad_frame", "unexpected")
"""`StreamCounters.errors` kinds (drivers/camera), plus `analysis` for frames the analyser failed on."""

_opencv_threads_set = False


def _single_threaded_opencv() -> None:
    """Once per process: see the module docstring."""
    global _opencv_threads_set  # noqa: PLW0603 - a process-wide OpenCV setting, applied once
    if not _opencv_threads_set:
        cv2.setNumThreads(1)
        _opencv_threads_set = True


class FacingSink(Protocol):
    """Where facing changes go: the gateway (outbox event; alert rules for camera-only bins)."""

    async def facing_changed(self, event: FacingStateChanged) -> None:
        """One facing's state changed (ids, state, score — never pixels)."""
        ...


class CameraUnavailable(LookupError):
    """A snapshot or capture was asked of a camera that is not running (unknown id, no source, stopped)."""


def make_source(uri: str) -> FrameSource:
    """The driver source for a config `source` (not `synthetic:`: that one must be injected)."""
    if uri.startswith("file:"):
        return VideoFileSource(uri.removeprefix("file:"), loop=True)
    if uri.startswith("synthetic:"):
        raise ValueError("a synthetic camera runs only with the demo's or a test's simulator (the seam)")
    return OpenCvSource(uri)


@dataclass(slots=True)
class _CameraState:
    cfg: Camera
    rois: list[Roi]
    source: FrameSource | None
    problem: str | None = None
    """Why the camera cannot run (bad or synthetic source without a simulator); shown as its error."""
    monitor: CameraMonitor | None = None
    online: bool = False
    reference_error: str | None = None
    crashes: int = 0
    moved: bool = False
    seen: tuple[int, float | None] = (0, None)
    """(frames delivered, monotonic time that count was first seen) — for `last_seen_age_s`."""
    last_counters: dict[str, Any] = field(default_factory=dict)


class CameraCoordinator:
    """Every configured camera; `run()` under the gateway's TaskGroup (tasks `camera[{id}]`)."""

    family: Family = "camera"

    def __init__(
        self,
        cameras: Sequence[Camera],
        bins: Mapping[str, Bin],
        sink: FacingSink,
        publish: Publish,
        *,
        sources: Mapping[str, FrameSource] | None = None,
        board: FacingBoard | None = None,
        reference_dir: Path | None = None,
    ) -> None:
        _single_threaded_opencv()
        self.reference_store = None if reference_dir is None else ReferenceStore(reference_dir)
        self._sink = sink
        self._publish = publish
        self.board = board if board is not None else FacingBoard()
        self._cameras: dict[str, _CameraState] = {}
        injected = dict(sources or {})
        self._bins = bins
        for cam in cameras:
            rois = _vision_rois(cam.rois, bins)
            source: FrameSource | None = injected.get(cam.id)
            problem = None
            if source is None:
                try:
                    source = make_source(cam.source)
                except ValueError as exc:
                    problem = str(exc)
            self._cameras[cam.id] = _CameraState(cam, rois, source, problem)

    def __contains__(self, camera_id: object) -> bool:
        return camera_id in self._cameras

    @property
    def camera_ids(self) -> list[str]:
        """Configured camera ids, in config order."""
        return list(self._cameras)

    # --- the loop ------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run every camera until cancelled; a camera that cannot run waits, reporting why."""
        async with asyncio.TaskGroup() as tg:
            for cam_id, st in self._cameras.items():
                if st.source is None:
                    _log.error("camera %s not started: %s", cam_id, st.problem)
                    continue
                tg.create_task(
                    supervise(
                        f"camera[{cam_id}]",
                        functools.partial(self._run_camera, st),
                        on_crash=functools.partial(self._crashed, st),
                    ),
                    name=f"camera[{cam_id}]",
                )
            await asyncio.Event().wait()

    def _crashed(self, st: _CameraState, reason: str) -> None:
        st.crashes += 1
        st.monitor = None
        st.online = False

    async def _run_camera(self, st: _CameraState) -> None:
        cfg = st.cfg
        assert st.source is not None  # noqa: S101 - run() starts only cameras with a source
        monitor = CameraMonitor(
            cfg.id,
            st.source,
            st.rois,
            stream_settings=StreamSettings(max_fps=cfg.analysis_fps),
            board=self.board,
            on_availability=functools.partial(self._availability, st),
            reference_store=self.reference_store,
        )
        try:
            async with monitor, asyncio.TaskGroup() as tg:
                st.monitor = monitor
                if cfg.reference.capture == "on_start" and not monitor.has_reference:
                    tg.create_task(self._capture_on_start(st, monitor), name=f"camera[{cfg.id}].reference")
                async for event in monitor.events():
                    await self._handle(st, event)
        finally:
            st.last_counters = dict(monitor.stream_counters)
            st.monitor = None
            st.online = False

    async def _capture_on_start(self, st: _CameraState, monitor: CameraMonitor) -> None:
        """Take the reference from the first frames; retry while the camera delivers none."""
        ref = st.cfg.reference
        while True:
            try:
                await monitor.capture_reference(frames=ref.frames, timeout_s=ref.timeout_s)
            except TimeoutError:
                if st.reference_error is None:
                    _log.warning("camera %s: no frames for the reference yet; still waiting", st.cfg.id)
                st.reference_error = f"no frames within {ref.timeout_s:g} s for the reference"
                continue
            except (ValueError, RuntimeError) as exc:
                st.reference_error = str(exc)
                _log.error("camera %s: reference capture failed: %s", st.cfg.id, exc)
                return
            st.reference_error = None
            return

    def _availability(self, st: _CameraState, event: Availability) -> None:
        st.online = event.online
        self._publish(
            {"type": "device", "device_id": st.cfg.id, "family": self.family, "online": event.online}
        )

    async def _handle(self, st: _CameraState, event: FacingStateChanged | CameraMoved) -> None:
        if isinstance(event, CameraMoved):
            st.moved = event.active
            if event.active:
                _log.warning("camera %s moved (shift %s px): facings unknown", st.cfg.id, event.shift_px)
            else:
                _log.info("camera %s back in place", st.cfg.id)
            self._publish(
                {
                    "type": "camera",
                    "camera_id": st.cfg.id,
                    "moved": event.active,
                    "shift_px": list(event.shift_px),
                }
            )
            return
        await self._sink.facing_changed(event)
        self._publish(
            {
                "type": "facing",
                "camera_id": event.camera_id,
                "roi_id": event.roi_id,
                "sku": event.sku,
                "bin_id": event.bin_id,
                "state": event.state,
                "score": None if event.score is None else round(event.score, 3),
            }
        )

    # --- operations ----------------------------------------------------------------------------------------

    def _running(self, camera_id: str) -> CameraMonitor:
        st = self._cameras.get(camera_id)
        if st is None:
            raise CameraUnavailable(f"no camera {camera_id!r}")
        if st.monitor is None:
            raise CameraUnavailable(f"camera {camera_id!r} is not running ({st.problem or 'starting'})")
        return st.monitor

    async def snapshot_jpeg(self, camera_id: str, *, jpeg_quality: int = 80, overlay: bool = True) -> bytes:
        """The current frame with the ROI overlay (or plain: `overlay=False`), as JPEG (installer only;
        nothing is stored).

        Raises CameraUnavailable, or `NoFrameYet` before the camera's first frame.
        """
        return await self._running(camera_id).snapshot_with_overlay(
            jpeg_quality=jpeg_quality, overlay=overlay
        )

    def configs(self) -> list[Camera]:
        """Every camera as it runs now (ROIs with the installer's live edits), in config order."""
        return [st.cfg for st in self._cameras.values()]

    def camera_config(self, camera_id: str) -> Camera:
        """The camera as it runs now (its ROIs include the installer's live edits). KeyError when unknown."""
        return self._cameras[camera_id].cfg

    def frame_size(self, camera_id: str) -> tuple[int, int] | None:
        """(width, height) of the camera's latest frame; None when it is not running or has no frame yet."""
        st = self._cameras.get(camera_id)
        return None if st is None or st.monitor is None else st.monitor.frame_size

    def reference_info(self, camera_id: str) -> dict[str, str | None]:
        """Where the running camera's reference came from (`stored` / `captured` / None) and when the stored
        one was taken (RFC 3339; None when nothing is stored). Numbers and words only, never the image."""
        st = self._cameras.get(camera_id)
        origin = None if st is None or st.monitor is None else st.monitor.reference_origin
        store = self.reference_store
        return {
            "reference_origin": origin,
            "reference_captured_at": None if store is None else store.captured_at(camera_id),
        }

    def has_reference(self, camera_id: str) -> bool:
        """Whether the running camera has a reference (False when it is not running)."""
        st = self._cameras.get(camera_id)
        return st is not None and st.monitor is not None and st.monitor.has_reference

    async def set_rois(self, camera_id: str, rois: Sequence[CameraRoi]) -> list[str]:
        """Run the camera with these (already validated) ROIs from now on; return the ROI ids whose reference
        was re-taken (new or re-drawn outlines, when the camera has a reference).

        The new list is kept for a restart of the camera task, too. A camera that is not running takes them
        when it starts. Raises ValueError when the running analyser refuses them, or the partial re-capture
        fails (the camera moved: re-capture the whole reference).
        """
        st = self._cameras.get(camera_id)
        if st is None:
            raise CameraUnavailable(f"no camera {camera_id!r}")
        new = _vision_rois(rois, self._bins)
        before = {r.roi_id: r.polygon for r in st.rois}
        redrawn = [r.roi_id for r in new if before.get(r.roi_id) != r.polygon]
        st.cfg = st.cfg.model_copy(update={"rois": list(rois)})
        st.rois = new
        monitor = st.monitor
        if monitor is None:
            return []
        await monitor.set_rois(new)
        if not redrawn or not monitor.has_reference:
            return []
        await monitor.capture_reference(frames=st.cfg.reference.frames, roi_ids=redrawn)
        return redrawn

    async def capture_reference(self, camera_id: str, *, roi_ids: Sequence[str] | None = None) -> None:
        """(Re-)capture the reference of one camera, or of some of its facings (installer)."""
        st = self._cameras.get(camera_id)
        monitor = self._running(camera_id)
        frames = st.cfg.reference.frames if st is not None else 3
        await monitor.capture_reference(frames=frames, roi_ids=roi_ids)

    # --- views ---------------------------------------------------------------------------------------------

    def health(self, now_mono: float) -> list[DeviceHealthView]:
        """One view per camera (pixel-free): frames, errors by kind, reconnects, facings."""
        out: list[DeviceHealthView] = []
        for cam_id, st in self._cameras.items():
            monitor = st.monitor
            counters = dict(monitor.stream_counters) if monitor is not None else dict(st.last_counters)
            errors_raw = counters.get("errors")
            errors = dict.fromkeys(ERROR_KINDS, 0)
            if isinstance(errors_raw, dict):
                for kind, n in errors_raw.items():
                    errors[str(kind)] = int(n)
            analysed = monitor.counters.frames_analysed if monitor is not None else 0
            errors["analysis"] = monitor.counters.analysis_errors if monitor is not None else 0
            delivered = _int(counters.get("frames_delivered"))
            if delivered != st.seen[0]:
                st.seen = (delivered, now_mono)
            last_error = st.problem or str(counters.get("last_error") or "") or st.reference_error or None
            online = monitor is not None and monitor.online is True
            facings = [
                {
                    "roi_id": s.roi_id,
                    "sku": s.sku,
                    "bin_id": s.bin_id,
                    "state": s.state,
                    "score": None if s.score is None else round(s.score, 3),
                }
                for s in self.board.statuses()
                if s.camera_id == cam_id
            ]
            out.append(
                DeviceHealthView(
                    device_id=cam_id,
                    family=self.family,
                    online=online,
                    connected=online,
                    last_seen_age_s=age_s(st.seen[1], now_mono),
                    messages=analysed,
                    errors_by_kind=errors,
                    last_error=last_error,
                    detail={
                        "source": mask_credentials(st.cfg.source),
                        "location": st.cfg.location,
                        "analysis_fps": st.cfg.analysis_fps,
                        "frames": delivered,
                        "frames_analysed": analysed,
                        "reconnects": _int(counters.get("reconnects")),
                        "has_reference": monitor is not None and monitor.has_reference,
                        "reference_origin": None if monitor is None else monitor.reference_origin,
                        "reference_capture": st.cfg.reference.capture,
                        "moved": st.moved,
                        "crashes": st.crashes,
                        "facings": facings,
                    },
                    counters={k: v for k, v in counters.items() if k != "errors"},
                )
            )
        return out


def _vision_rois(rois: Sequence[CameraRoi], bins: Mapping[str, Bin]) -> list[Roi]:
    """Config ROIs as the analyser takes them (a ROI without `sku` shows its bin's)."""
    return [
        Roi(
            r.id,
            r.sku if r.sku is not None else bins[r.bin].sku if r.bin is not None else "",
            r.points,
            r.bin,
        )
        for r in rois
    ]


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


__all__ = ["CameraCoordinator", "CameraUnavailable", "FacingSink", "NoFrameYet", "make_source"]
