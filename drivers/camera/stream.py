"""A camera stream: a grab thread that owns the source, reconnects it, and hands over the latest frame.

```
 FrameSource (blocking)        grab thread  camera[id].grab                 event loop
 ──────────────────────        ───────────────────────────                  ──────────
 open ─ fail ─▶ backoff (capped full jitter, drivers.backoff) ─▶ open …
 grab ─▶ (live: drain every frame) ─▶ due? ─▶ retrieve ─▶ one-slot mailbox ─▶ await next_frame()
                                      (≤ max_fps)            │ a frame still in the slot is
                                                             │ replaced: latest frame wins,
                                                             ▼ counted in frames_superseded
```

Why a thread: OpenCV's capture calls block (a V4L2 dequeue waits for the sensor, an RTSP read waits for the
network) and cannot be awaited, so they never run on the event loop (STYLE.md rule 5). One thread per camera,
named `camera[{id}].grab`, started in `__aenter__` and joined in `__aexit__`.

Overflow policy of the handoff (STYLE.md rule 6): the mailbox holds ONE frame; a newer frame replaces an
untaken one (drop-oldest, counted — no log line per drop: at 1 frame/s a slow analyser simply sees the newest
shelf). The wake-up from the thread to the loop is one `call_soon_threadsafe` at most in flight, so nothing
queues up on the loop either.

Reconnection (STYLE.md rule 7) by error class: transient and gone errors close the source and reopen it after
a capped, fully jittered backoff; a misconfigured or ended source stops the stream (`CameraStreamClosed`).
Availability (rule 8) is state: one WARNING when the camera drops, one INFO when it returns, one
`on_availability` call per change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Self

from drivers.backoff import full_jitter_s
from drivers.camera.models import (
    Availability,
    BadFrame,
    CameraStreamClosed,
    Frame,
    SourceError,
    SourceGone,
    StreamCounters,
    StreamSettings,
)
from drivers.camera.sources import FrameSource

_log = logging.getLogger(__name__)


class CameraStream:
    """`async with CameraStream(source, "cam-1") as stream: frame = await stream.next_frame()`.

    Frames come at most `settings.max_fps` per second, and each is the most recent one the source produced
    when the consumer asked (latest frame wins). Only one consumer is supported.
    """

    def __init__(
        self,
        source: FrameSource,
        camera_id: str,
        settings: StreamSettings | None = None,
        *,
        on_availability: Callable[[Availability], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.source = source
        self.camera_id = camera_id
        self.settings = settings or StreamSettings()
        self.counters = StreamCounters()
        self._on_availability = on_availability
        self._rng = rng or random.Random()  # jitter, not security
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._slot: Frame | None = None
        self._wake_pending = False
        self._finished_reason: str | None = None
        self._online: bool | None = None
        self._seq = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._thread is not None:
            raise RuntimeError(f"camera {self.camera_id}: stream already started")
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"camera[{self.camera_id}].grab", daemon=True)
        self._thread.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the grab thread and wait for it (it closes the source itself)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join, self.settings.join_timeout_s)
            if thread.is_alive():
                # Daemon thread stuck in a blocking read; it exits at the source's own timeout.
                _log.warning(
                    "camera %s: grab thread still blocked after %.0f s; leaving it to its read timeout",
                    self.camera_id,
                    self.settings.join_timeout_s,
                )
        self._finish("stream closed")

    @property
    def online(self) -> bool | None:
        """None before the first frame or failure, then the current availability."""
        return self._online

    # --- consumer side (event loop) ------------------------------------------------------------------------

    async def next_frame(self) -> Frame:
        """The newest frame not yet taken; waits for one. Raises `CameraStreamClosed` once the stream ended."""
        wakeup = self._wakeup
        if wakeup is None:
            raise CameraStreamClosed(self.camera_id, "stream not started")
        while True:
            wakeup.clear()
            with self._lock:
                frame, self._slot = self._slot, None
                finished = self._finished_reason
            if frame is not None:
                self.counters.frames_delivered += 1
                return frame
            if finished is not None:
                raise CameraStreamClosed(self.camera_id, finished)
            await wakeup.wait()

    async def frames(self) -> AsyncIterator[Frame]:
        """Frames until the stream ends (then the iterator stops instead of raising)."""
        while True:
            try:
                frame = await self.next_frame()
            except CameraStreamClosed:
                return
            yield frame

    def _wake(self) -> None:
        with self._lock:
            self._wake_pending = False
        if self._wakeup is not None:
            self._wakeup.set()

    def _post_wake(self) -> None:
        """From the grab thread: schedule one wake-up on the loop unless one is already pending."""
        loop = self._loop
        with self._lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # loop closed while we were shutting down
                loop.call_soon_threadsafe(self._wake)

    def _publish(self, frame: Frame) -> None:
        with self._lock:
            if self._slot is not None:
                self.counters.frames_superseded += 1
            self._slot = frame
        self._post_wake()

    def _finish(self, reason: str) -> None:
        with self._lock:
            if self._finished_reason is None:
                self._finished_reason = reason
        self._post_wake()

    # --- availability --------------------------------------------------------------------------------------

    def _set_online(self, online: bool, reason: str) -> None:
        if self._online is online:
            return
        was = self._online
        self._online = online
        if online:
            _log.info("camera %s (%s) online: %s", self.camera_id, self.source.name, reason)
        elif was is None:
            _log.warning("camera %s (%s) unavailable: %s", self.camera_id, self.source.name, reason)
        else:
            _log.warning("camera %s (%s) went offline: %s", self.camera_id, self.source.name, reason)
        callback, loop = self._on_availability, self._loop
        if callback is not None and loop is not None:
            event = Availability(self.camera_id, online=online, reason=reason, ts=time.time())
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(callback, event)

    # --- grab thread ---------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._grab_loop()
        except Exception as exc:  # noqa: BLE001 - a bug must stop this camera loudly, not silently
            self.counters.count_error("unexpected", repr(exc))
            _log.exception("camera %s: grab thread failed", self.camera_id)
            self._set_online(False, f"internal error: {exc!r}")
            self._finish(f"internal error: {exc!r}")
        finally:
            self.source.close()

    def _grab_loop(self) -> None:
        s = self.settings
        period_s = 1.0 / s.max_fps
        attempt = 0
        opened_before = False
        is_open = False
        failures = 0
        next_due_mono = 0.0
        while not self._stop.is_set():
            if not is_open:
                try:
                    self.source.open()
                except SourceError as exc:
                    if not self._note_failure(exc):
                        return
                    self._stop.wait(full_jitter_s(attempt, s.backoff_base_s, s.backoff_cap_s, self._rng))
                    attempt += 1
                    continue
                except Exception as exc:  # noqa: BLE001 - a source's bug counts like a transient failure
                    self._note_unexpected(exc)
                    self._stop.wait(full_jitter_s(attempt, s.backoff_base_s, s.backoff_cap_s, self._rng))
                    attempt += 1
                    continue
                is_open = True
                failures = 0
                if opened_before:
                    self.counters.reconnects += 1
                opened_before = True
            try:
                if self.source.live:
                    self.source.grab()
                    self.counters.frames_grabbed += 1
                    if time.monotonic() < next_due_mono:
                        continue
                else:
                    wait_s = next_due_mono - time.monotonic()
                    if wait_s > 0 and self._stop.wait(wait_s):
                        break
                    self.source.grab()
                    self.counters.frames_grabbed += 1
                image = self.source.retrieve()
            except SourceError as exc:
                if not self._note_failure(exc):
                    return
                failures += 1
                if isinstance(exc, BadFrame) and failures < s.read_failures_before_reconnect:
                    continue
                if isinstance(exc, SourceGone) or failures >= s.read_failures_before_reconnect:
                    self.source.close()
                    is_open = False
                    self._stop.wait(full_jitter_s(attempt, s.backoff_base_s, s.backoff_cap_s, self._rng))
                    attempt += 1
                continue
            except Exception as exc:  # noqa: BLE001 - see above
                self._note_unexpected(exc)
                failures += 1
                if failures >= s.read_failures_before_reconnect:
                    self.source.close()
                    is_open = False
                    self._stop.wait(full_jitter_s(attempt, s.backoff_base_s, s.backoff_cap_s, self._rng))
                    attempt += 1
                continue
            now_mono = time.monotonic()
            next_due_mono = now_mono + period_s
            failures = 0
            attempt = 0
            self.counters.frames_retrieved += 1
            self._seq += 1
            self._set_online(True, "frames arriving")
            self._publish(Frame(self.camera_id, self._seq, time.time(), now_mono, image))

    def _note_failure(self, exc: SourceError) -> bool:
        """Count and report one failure; False when the error class is never retried (the stream ends)."""
        self.counters.count_error(exc.kind, exc.reason)
        if isinstance(exc, BadFrame):
            return True  # a bad frame alone says nothing about availability
        self._set_online(False, f"{exc.kind}: {exc.reason}")
        if not exc.retry:
            _log.error("camera %s: %s; not retrying", self.camera_id, exc)
            self._finish(f"{exc.kind}: {exc.reason}")
            return False
        return True

    def _note_unexpected(self, exc: Exception) -> None:
        self.counters.count_error("unexpected", repr(exc))
        self._set_online(False, f"unexpected error: {exc!r}")
