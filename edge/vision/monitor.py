"""One camera end to end: stream → analyser (on the camera's own worker thread) → tracker → events and board.

```
CameraStream (drivers; grab thread, latest frame wins, ≤ max_fps)
   │ Frame (pixels)                                            stays in this module
   ▼
camera[{id}].loop task ──run_in_executor──▶ camera[{id}].analyse thread: ShelfAnalyser.analyse
   │ FrameAnalysis (numbers)
   ▼
FacingTracker ──▶ VisionEvent ──▶ bounded queue → events()      (to the gateway / outbox: no pixels)
                              └─▶ FacingBoard → facing_hint(bin_id)
```

Privacy (issue #8): the only way pixels leave a monitor is `snapshot_with_overlay()`, which returns JPEG
bytes of the current frame with the ROIs drawn on it, for an installer-only page; the latest frame lives in
memory only and is dropped on close. Events and statuses carry ids and numbers. The one thing written to disk
is the reference, and only with a `reference_store` (the gateway's data folder, `edge.vision.reference_store`):
loaded on start, overwritten by every (re-)capture, so a restart in front of an emptied shelf still compares
against the stocked one.

Overflow policy of the event queue (STYLE.md rule 6): bounded (`event_queue_size`); when full the oldest event
is dropped, counted in `events_dropped`, with one WARNING per burst. A facing state is also always readable
from the board, so a dropped event loses history, not the current picture.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, Self

import cv2
import numpy as np

from drivers.camera import Availability, CameraStream, Frame, FrameSource, Image, StreamSettings
from edge.vision.analyser import FrameAnalysis, ReferenceImage, ShelfAnalyser
from edge.vision.board import FacingBoard, FacingHint
from edge.vision.reference_store import ReferenceStore
from edge.vision.roi import FacingState, Roi, check_unique
from edge.vision.settings import VisionSettings
from edge.vision.tracker import FacingStatus, FacingTracker, VisionEvent

_log = logging.getLogger(__name__)

OVERLAY_BGR: Final[dict[FacingState, tuple[int, int, int]]] = {
    "ok": (60, 180, 60),
    "low": (0, 165, 255),
    "empty": (40, 40, 220),
    "unknown": (160, 160, 160),
}


class NoFrameYet(LookupError):
    """`snapshot_with_overlay()` before the camera delivered a frame."""


@dataclass(slots=True)
class _CaptureRequest:
    count: int
    roi_ids: Collection[str] | None
    future: asyncio.Future[None]
    frames: list[Image] = field(default_factory=list)


@dataclass(slots=True)
class MonitorCounters:
    frames_analysed: int = 0
    analysis_errors: int = 0
    events_emitted: int = 0
    events_dropped: int = 0
    reference_save_errors: int = 0


class CameraMonitor:
    """`async with CameraMonitor("cam-1", source, rois, board=board) as mon: async for ev in mon.events(): ...`"""

    def __init__(
        self,
        camera_id: str,
        source: FrameSource,
        rois: Sequence[Roi],
        *,
        settings: VisionSettings | None = None,
        stream_settings: StreamSettings | None = None,
        board: FacingBoard | None = None,
        reference: Image | Sequence[Image] | None = None,
        event_queue_size: int = 256,
        on_availability: Callable[[Availability], None] | None = None,
        reference_store: ReferenceStore | None = None,
    ) -> None:
        if event_queue_size < 1:
            raise ValueError("event_queue_size must be at least 1")
        self.camera_id = camera_id
        self.settings = settings or VisionSettings()
        self.board = board if board is not None else FacingBoard()
        self.counters = MonitorCounters()
        self._analyser = ShelfAnalyser(camera_id, rois, self.settings)
        self._tracker = FacingTracker(camera_id, rois, self.settings, start_ts=time.time())
        self._stream = CameraStream(source, camera_id, stream_settings, on_availability=self._on_availability)
        self._user_on_availability = on_availability
        self._initial_reference = reference
        self._reference_store = reference_store
        self.reference_origin: str | None = None
        """"given" (constructor), "stored" (loaded from the reference store), "captured", or None."""
        self._queue: asyncio.Queue[VisionEvent] = asyncio.Queue(maxsize=event_queue_size)
        self._dropping = False
        self._latest: Frame | None = None
        self._last_analysis: FrameAnalysis | None = None
        self._capture: _CaptureRequest | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self.board.register(self._tracker.statuses())

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"camera[{self.camera_id}].analyse"
        )
        try:
            if self._initial_reference is not None:
                ref = self._initial_reference
                await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._analyser.capture_reference, ref
                )
                self.reference_origin = "given"
            elif self._reference_store is not None:
                await asyncio.get_running_loop().run_in_executor(self._executor, self._load_stored)
            await self._stream.__aenter__()
        except BaseException:
            self._executor.shutdown(wait=False)
            raise
        self._task = asyncio.create_task(self._run(), name=f"camera[{self.camera_id}].loop")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._stream.aclose()
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, True)
        self._latest = None
        request, self._capture = self._capture, None
        if request is not None and not request.future.done():
            request.future.set_exception(RuntimeError(f"camera {self.camera_id}: monitor closed"))

    # --- public surface (no pixels except snapshot_with_overlay) ---------------------------------------------

    @property
    def stream_counters(self) -> dict[str, object]:
        return self._stream.counters.snapshot()

    @property
    def online(self) -> bool | None:
        return self._stream.online

    @property
    def has_reference(self) -> bool:
        return self._analyser.has_reference

    @property
    def last_analysis(self) -> FrameAnalysis | None:
        """The latest per-frame verdict (numbers only), for diagnostics."""
        return self._last_analysis

    def statuses(self) -> list[FacingStatus]:
        return self._tracker.statuses()

    def facing_hint(self, bin_id: str) -> FacingHint | None:
        """See `FacingBoard.facing_hint` (answers from the shared board, so across cameras)."""
        return self.board.facing_hint(bin_id)

    async def events(self) -> AsyncIterator[VisionEvent]:
        while True:
            yield await self._queue.get()

    async def capture_reference(
        self, *, frames: int = 3, roi_ids: Collection[str] | None = None, timeout_s: float = 60.0
    ) -> None:
        """Take the next `frames` frames as the reference (median), for all facings or only `roi_ids`.

        Call it with the shelf stocked and nobody in front; every facing affected restarts as `unknown` and
        is judged again after `confirm_frames`. Raises ValueError (unknown ROI, camera moved for a partial
        re-capture) or TimeoutError when the camera delivers no frames.
        """
        if frames < 1:
            raise ValueError("frames must be at least 1")
        if self._capture is not None:
            raise RuntimeError(f"camera {self.camera_id}: a reference capture is already running")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._capture = _CaptureRequest(frames, None if roi_ids is None else tuple(roi_ids), future)
        try:
            async with asyncio.timeout(timeout_s):
                await future
        finally:
            if self._capture is not None and self._capture.future is future:
                self._capture = None

    @property
    def rois(self) -> tuple[Roi, ...]:
        """The facings analysed now."""
        return self._analyser.rois

    @property
    def frame_size(self) -> tuple[int, int] | None:
        """(width, height) of the latest frame, None before the first (ROIs are checked against it)."""
        frame = self._latest
        if frame is None:
            return None
        height, width = frame.image.shape[:2]
        return int(width), int(height)

    async def set_rois(self, rois: Sequence[Roi]) -> None:
        """Replace the facings while running (installer edits); keeps the reference image.

        The analyser swaps on its own thread, between two frames (the executor has one worker, so never in
        the middle of an analysis). New and re-drawn facings restart as `unknown`; re-take their reference
        with `capture_reference(roi_ids=…)` — the old reference image under a new outline may show a shelf
        that has changed since. Raises ValueError (duplicate ids, no ROI, outside the reference image).
        """
        new = tuple(rois)
        check_unique(new)
        if self._executor is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._analyser.set_rois, new)
        else:
            self._analyser.set_rois(new)
        events = self._tracker.set_rois(new, time.time())
        for event in events:  # the board first learns the removals, then forgets them
            self.board.apply(event)
        self.board.forget_camera(self.camera_id)
        self.board.register(self._tracker.statuses())
        self._emit(events, board=False)

    async def snapshot_with_overlay(self, *, jpeg_quality: int = 80, overlay: bool = True) -> bytes:
        """JPEG bytes of the current frame with every ROI outlined in its state's colour and labelled
        (`overlay=False`: the plain frame, for a page that draws editable outlines itself).

        The one way pixels leave the monitor — meant for an installer-only page; nothing is stored.
        """
        frame = self._latest
        if frame is None:
            raise NoFrameYet(f"camera {self.camera_id}: no frame yet")
        if not 1 <= jpeg_quality <= 100:
            raise ValueError("jpeg_quality must be in 1..100")
        statuses = {s.roi_id: s for s in self._tracker.statuses()}
        rois = self._analyser.rois if overlay else ()
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, _render_overlay, frame.image, rois, statuses, jpeg_quality
        )

    # --- loop ------------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        async for frame in self._stream.frames():
            self._latest = frame
            request = self._capture
            if request is not None:
                request.frames.append(frame.image)
                if len(request.frames) >= request.count:
                    self._capture = None
                    await self._do_capture(request)
                continue
            try:
                analysis = await loop.run_in_executor(self._executor, self._analyser.analyse, frame.image)
            except Exception:  # noqa: BLE001 - a bug in one frame's analysis must not end the camera
                self.counters.analysis_errors += 1
                if self.counters.analysis_errors == 1 or self.counters.analysis_errors % 1000 == 0:
                    _log.exception(
                        "camera %s: analysis failed (%d so far)",
                        self.camera_id,
                        self.counters.analysis_errors,
                    )
                continue
            self.counters.frames_analysed += 1
            self._last_analysis = analysis
            self._emit(self._tracker.update(analysis, frame.ts))
            self.board.observe(self.camera_id, frame.ts, analysis)
        self._emit(self._tracker.mark_all_unknown(time.time(), "camera_offline"))

    def _load_stored(self) -> None:
        """On the analysis thread: adopt the stored reference, if one checks out and fits these ROIs."""
        store = self._reference_store
        if store is None:
            return
        image = store.load(self.camera_id)
        if image is None:
            return
        try:
            self._analyser.load_reference(image)
        except ValueError as exc:
            _log.warning("camera %s: stored reference not used: %s", self.camera_id, exc)
            return
        self.reference_origin = "stored"
        _log.info("camera %s: reference loaded from %s", self.camera_id, store.directory)

    def _save_reference(self) -> None:
        """On the analysis thread: write the current reference (a failure is logged and counted, not fatal —
        the camera keeps working with the reference in memory)."""
        store = self._reference_store
        image: ReferenceImage | None = self._analyser.reference_image()
        if store is None or image is None:
            return
        try:
            store.save(self.camera_id, image)
        except (OSError, ValueError) as exc:
            self.counters.reference_save_errors += 1
            _log.error("camera %s: could not save the reference: %s", self.camera_id, exc)

    async def _do_capture(self, request: _CaptureRequest) -> None:
        loop = asyncio.get_running_loop()
        try:
            if request.roi_ids is None:
                await loop.run_in_executor(self._executor, self._analyser.capture_reference, request.frames)
            else:
                await loop.run_in_executor(
                    self._executor, self._analyser.recapture, request.frames, request.roi_ids
                )
        except ValueError as exc:
            if not request.future.done():
                request.future.set_exception(exc)
            return
        self.reference_origin = "captured"
        await loop.run_in_executor(self._executor, self._save_reference)
        self._emit(self._tracker.mark_all_unknown(time.time(), "reference"))
        _log.info("camera %s: reference captured from %d frame(s)", self.camera_id, len(request.frames))
        if not request.future.done():
            request.future.set_result(None)

    def _on_availability(self, event: Availability) -> None:
        if not event.online:
            self._emit(self._tracker.mark_all_unknown(event.ts, "camera_offline"))
        if self._user_on_availability is not None:
            self._user_on_availability(event)

    def _emit(self, events: list[VisionEvent], *, board: bool = True) -> None:
        for event in events:
            if board:
                self.board.apply(event)
            self.counters.events_emitted += 1
            if self._queue.full():
                self._queue.get_nowait()
                self.counters.events_dropped += 1
                if not self._dropping:
                    self._dropping = True
                    _log.warning("camera %s: event queue full; dropping the oldest events", self.camera_id)
            elif self._dropping and self._queue.qsize() < self._queue.maxsize // 2:
                self._dropping = False
            self._queue.put_nowait(event)


def _render_overlay(
    image: Image, rois: Sequence[Roi], statuses: dict[str, FacingStatus], jpeg_quality: int
) -> bytes:
    canvas = image.copy()
    for roi in rois:
        status = statuses.get(roi.roi_id)
        state: FacingState = status.state if status is not None else "unknown"
        colour = OVERLAY_BGR[state]
        pts = np.array(roi.polygon, np.int32)
        cv2.polylines(canvas, [pts], isClosed=True, color=colour, thickness=2)
        score = "" if status is None or status.score is None else f" {status.score:.2f}"
        x0, y0, _, _ = roi.bounds
        label = f"{roi.roi_id} {state}{score}"
        cv2.putText(canvas, label, (x0 + 3, max(12, y0 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3)
        cv2.putText(canvas, label, (x0 + 3, max(12, y0 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1)
    ok, encoded = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return encoded.tobytes()
