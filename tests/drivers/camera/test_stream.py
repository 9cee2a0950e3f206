"""CameraStream: latest frame wins under a slow consumer, reconnect with backoff, availability once per change.

Sources are real implementations of the `FrameSource` seam (a scripted flaky source, the synthetic source, the
file source on a real file) — no mocks of the stream's internals. No timed assertions: conditions are awaited
with generous timeouts that only stop hangs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from drivers.camera import (
    Availability,
    BadFrame,
    CameraStream,
    CameraStreamClosed,
    Frame,
    Image,
    OpenCvSource,
    SourceMisconfigured,
    SourceTransient,
    StreamSettings,
    SyntheticSource,
    VideoFileSource,
)
from firmware_sims.camera import MjpegHttpCamera, write_video

FAST = StreamSettings(max_fps=30.0, backoff_base_s=0.01, backoff_cap_s=0.05, read_failures_before_reconnect=3)


def numbered(index: int) -> Image:
    """A tiny frame that carries its own index (pixel value, wrapping at 256, plus the row for more)."""
    img = np.zeros((4, 4, 3), np.uint8)
    img[0, 0, 0] = index % 256
    img[0, 1, 0] = (index // 256) % 256
    return img


def index_of(img: Image) -> int:
    return int(img[0, 0, 0]) + 256 * int(img[0, 1, 0])


async def wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 - polls counters the grab thread updates; no event to await
            await asyncio.sleep(0.01)


class FlakySource:
    """A `FrameSource` that acts out a camera failing and recovering, by script.

    `open_failures` opens fail first; after `good_reads` frames the next `read_failures` grabs fail (the
    stream then reconnects); after that it works for good.
    """

    def __init__(self, open_failures: int, good_reads: int, read_failures: int) -> None:
        self.open_failures = open_failures
        self.good_reads = good_reads
        self.read_failures = read_failures
        self.opens = 0
        self.closes = 0
        self.grabs = 0
        self.is_open = False

    @property
    def name(self) -> str:
        return "flaky"

    @property
    def live(self) -> bool:
        return False

    def open(self) -> None:
        self.opens += 1
        if self.open_failures > 0:
            self.open_failures -= 1
            raise SourceTransient(self.name, "connection refused")
        self.is_open = True

    def grab(self) -> None:
        if not self.is_open:
            raise SourceTransient(self.name, "not open")
        if self.good_reads > 0:
            self.good_reads -= 1
        elif self.read_failures > 0:
            self.read_failures -= 1
            raise SourceTransient(self.name, "stream stalled")
        self.grabs += 1

    def retrieve(self) -> Image:
        return numbered(self.grabs)

    def close(self) -> None:
        self.closes += 1
        self.is_open = False


async def test_latest_frame_wins_under_a_slow_analyser() -> None:
    source = SyntheticSource(numbered, name="counter")
    async with CameraStream(source, "cam-slow", FAST) as stream:
        first = await stream.next_frame()
        # The "analyser" is busy with `first` while the camera keeps producing frames.
        await wait_for(lambda: stream.counters.frames_retrieved >= first.seq + 6)
        produced_before_take = stream.counters.frames_retrieved
        second = await stream.next_frame()
        # Only the newest frame was kept: the ones in between were superseded, not queued.
        assert second.seq >= produced_before_take
        assert stream.counters.frames_superseded >= 4
        assert index_of(second.image) == second.seq - 1  # the frame's pixels are that frame's
        assert stream.counters.frames_delivered == 2
        assert stream.online is True


async def test_frames_are_paced_to_max_fps_for_on_demand_sources() -> None:
    grabs: list[int] = []

    def render(i: int) -> Image:
        grabs.append(i)
        return numbered(i)

    async with CameraStream(SyntheticSource(render), "cam-pace", FAST) as stream:
        for _ in range(3):
            await stream.next_frame()
    # A file/synthetic source is read only when a frame is due: no busy loop racing through it.
    assert stream.counters.frames_grabbed == stream.counters.frames_retrieved
    assert len(grabs) == stream.counters.frames_retrieved


async def test_reconnects_with_backoff_and_reports_availability_once_per_change(
    caplog: pytest.LogCaptureFixture,
) -> None:
    changes: list[Availability] = []
    source = FlakySource(open_failures=3, good_reads=2, read_failures=5)
    caplog.set_level(logging.INFO, logger="drivers.camera.stream")
    async with CameraStream(source, "cam-flaky", FAST, on_availability=changes.append) as stream:
        seqs: list[int] = []
        async with asyncio.timeout(20):
            while len(seqs) < 5:
                seqs.append((await stream.next_frame()).seq)
        await wait_for(lambda: len(changes) >= 4)
        counters = stream.counters

    assert [c.online for c in changes] == [False, True, False, True]
    assert counters.errors["transient"] == 3 + 5
    # one reopen after 3 consecutive failed reads; the 2 failures after it stay under the limit
    assert counters.reconnects == 1
    assert source.opens >= 3 + 1 + 1
    assert seqs == sorted(seqs)
    offline_logs = [r for r in caplog.records if r.levelno == logging.WARNING]
    online_logs = [r for r in caplog.records if r.levelno == logging.INFO and "online" in r.getMessage()]
    assert len(offline_logs) == 2  # one per drop, not one per failed open or read
    assert len(online_logs) == 2


async def test_a_bad_frame_is_counted_and_skipped() -> None:
    def render(i: int) -> Image:
        if i == 1:
            return np.zeros((4, 4, 3), np.float32)  # a broken decoder's output
        return numbered(i)

    async with CameraStream(SyntheticSource(render), "cam-bad", FAST) as stream:
        frames = [await stream.next_frame() for _ in range(3)]
        assert stream.counters.errors.get(BadFrame.kind) == 1
    assert [index_of(f.image) for f in frames] == [0, 2, 3]


async def test_misconfigured_source_ends_the_stream() -> None:
    class Broken(FlakySource):
        def open(self) -> None:
            raise SourceMisconfigured(self.name, "unsupported URL")

    source = Broken(0, 0, 0)
    changes: list[Availability] = []
    async with CameraStream(source, "cam-broken", FAST, on_availability=changes.append) as stream:
        with pytest.raises(CameraStreamClosed, match="unsupported URL"):
            await stream.next_frame()
        assert [f async for f in stream.frames()] == []
    await wait_for(lambda: len(changes) == 1)
    assert changes[0].online is False
    assert stream.counters.errors == {"misconfigured": 1}


async def test_file_source_recovers_when_the_file_appears(tmp_path: Path) -> None:
    path = tmp_path / "late.avi"
    changes: list[Availability] = []
    async with CameraStream(
        VideoFileSource(path), "cam-file", FAST, on_availability=changes.append
    ) as stream:
        await wait_for(lambda: stream.counters.errors.get("gone", 0) >= 2)
        assert stream.online is False
        tmp = tmp_path / "writing.avi"
        write_video(tmp, [np.full((48, 64, 3), 100, np.uint8)] * 3, fps=3.0)
        tmp.rename(path)
        frame = await _next(stream)
        assert frame.image.shape == (48, 64, 3)
        assert abs(float(frame.image.mean()) - 100) < 5
    assert [c.online for c in changes] == [False, True]


async def _next(stream: CameraStream) -> Frame:
    async with asyncio.timeout(20):
        return await stream.next_frame()


async def test_close_stops_the_grab_thread_and_closes_the_source() -> None:
    source = FlakySource(0, 10**6, 0)
    stream = CameraStream(source, "cam-close", FAST)
    async with stream:
        await stream.next_frame()
    assert source.closes >= 1
    assert not source.is_open
    with pytest.raises(CameraStreamClosed):
        await stream.next_frame()


async def test_live_network_camera_drops_and_returns() -> None:
    """The OpenCV/FFmpeg path against a real MJPEG-over-HTTP camera on loopback: frames flow; the camera
    dies (connections and socket gone) → offline once; it comes back on the same port → online again."""
    changes: list[Availability] = []
    with MjpegHttpCamera(numbered_big, fps=20.0) as camera:
        source = OpenCvSource(camera.url, open_timeout_s=5.0, read_timeout_s=2.0)
        settings = StreamSettings(max_fps=10.0, backoff_base_s=0.05, backoff_cap_s=0.2)
        async with CameraStream(source, "cam-ip", settings, on_availability=changes.append) as stream:
            first = await _next(stream)
            assert first.image.shape == (96, 128, 3)
            await wait_for(lambda: stream.counters.frames_grabbed > stream.counters.frames_retrieved)
            camera.stop()
            await wait_for(lambda: stream.online is False)
            failures_while_down = sum(stream.counters.errors.values())
            camera.start()
            await wait_for(lambda: stream.online is True and stream.counters.reconnects >= 1)
            frame = await _next(stream)
            assert frame.seq > first.seq
    assert [c.online for c in changes] == [True, False, True]
    assert failures_while_down >= 1


def numbered_big(index: int) -> Image:
    return np.full((96, 128, 3), (index * 7) % 256, np.uint8)
