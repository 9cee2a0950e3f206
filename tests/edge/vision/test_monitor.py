"""CameraMonitor end to end on the simulated shelf stream: states, hints, snapshot, offline, and privacy.

The source is the simulator's `SyntheticSource` (a real implementation of the camera seam) at a high frame
rate so the test is quick; nothing is mocked. Conditions are awaited with generous timeouts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import pickle
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from drivers.camera import Image, SourceTransient, StreamSettings, SyntheticSource
from edge.vision import (
    CameraMonitor,
    FacingBoard,
    FacingStateChanged,
    FacingStatus,
    FrameAnalysis,
    NoFrameYet,
    VisionEvent,
)
from firmware_sims.camera import ShelfSim

from .conftest import QUIET, rois_of

FAST = StreamSettings(max_fps=30.0, backoff_base_s=0.01, backoff_cap_s=0.05)
MIXED = replace(QUIET, n_frames=1000, initial_units=(0.3, 0.1, 0.1, 0.1, 0.4))


async def wait_for(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 - polls state the monitor's task updates; no event to await
            await asyncio.sleep(0.02)


async def drain(monitor: CameraMonitor, into: list[VisionEvent]) -> None:
    async for event in monitor.events():
        into.append(event)


def assert_pixel_free(value: object, path: str = "event") -> None:
    """Only ids and numbers: str, int, float, bool, None, and tuples of those — no arrays, bytes, buffers."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return
    if isinstance(value, tuple):
        for i, item in enumerate(value):
            assert_pixel_free(item, f"{path}[{i}]")
        return
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            assert_pixel_free(getattr(value, f.name), f"{path}.{f.name}")
        return
    raise AssertionError(f"{path} holds a {type(value).__name__}: only ids and numbers may leave the camera")


async def test_monitor_reports_states_hints_and_snapshots_and_no_pixels_leave(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # anything written to the working directory would show up here
    sim = ShelfSim(41, MIXED)
    truth = {t.roi_id: t.state for t in sim.truth(0)}
    board = FacingBoard()
    events: list[VisionEvent] = []
    monitor = CameraMonitor(
        "cam-1",
        sim.source(),
        rois_of(sim),
        board=board,
        reference=sim.reference_image(),
        stream_settings=FAST,
    )
    with pytest.raises(NoFrameYet):
        await monitor.snapshot_with_overlay()
    async with monitor:
        drainer = asyncio.create_task(drain(monitor, events), name="test.drain")
        await wait_for(lambda: all(s.state != "unknown" for s in board.statuses()))
        states = {s.roi_id: s.state for s in board.statuses()}
        assert states == truth
        for facing in sim.facings:
            assert monitor.facing_hint(facing.bin_id) == truth[facing.roi_id]
        jpeg = await monitor.snapshot_with_overlay(jpeg_quality=70)
        drainer.cancel()

    assert jpeg[:2] == b"\xff\xd8"  # a JPEG, decodable, of the camera's full frame
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None
    assert decoded.shape == (720, 1280, 3)

    # privacy: events, statuses and analyses carry ids and numbers only, and stay small
    changes = [e for e in events if isinstance(e, FacingStateChanged)]
    assert len(changes) >= len(sim.facings)
    for event in events:
        assert_pixel_free(event)
        assert len(pickle.dumps(event)) < 1024
    for status in monitor.statuses():
        assert isinstance(status, FacingStatus)
        assert_pixel_free(status)
    analysis = monitor.last_analysis
    assert isinstance(analysis, FrameAnalysis)
    assert_pixel_free(analysis)
    assert not any(
        isinstance(getattr(monitor, name), np.ndarray) for name in dir(monitor) if not name.startswith("_")
    )
    # nothing stored to disk by default
    assert not any(tmp_path.iterdir())  # noqa: ASYNC240 - a one-off directory listing in a test


async def test_camera_offline_makes_facings_unknown_and_recovery_brings_them_back() -> None:
    sim = ShelfSim(43, MIXED)
    failing = False

    def render(index: int) -> Image:
        if failing:
            raise SourceTransient("sim", "camera unplugged")
        return sim.image(index)

    board = FacingBoard()
    monitor = CameraMonitor(
        "cam-2",
        SyntheticSource(render),
        rois_of(sim),
        board=board,
        reference=sim.reference_image(),
        stream_settings=FAST,
    )
    async with monitor:
        await wait_for(lambda: all(s.state != "unknown" for s in board.statuses()))
        failing = True
        await wait_for(lambda: monitor.online is False)
        await wait_for(lambda: all(s.state == "unknown" for s in board.statuses()))
        assert monitor.facing_hint(sim.facings[0].bin_id) is None
        failing = False
        await wait_for(lambda: all(s.state != "unknown" for s in board.statuses()))
        assert monitor.online is True


async def test_reference_capture_through_the_monitor() -> None:
    sim = ShelfSim(47, replace(QUIET, n_frames=1000))
    board = FacingBoard()
    monitor = CameraMonitor("cam-3", sim.source(), rois_of(sim), board=board, stream_settings=FAST)
    async with monitor:
        await wait_for(lambda: monitor.last_analysis is not None)
        analysis = monitor.last_analysis
        assert analysis is not None
        assert {o.gate for o in analysis.observations} == {"no_reference"}
        await monitor.capture_reference(frames=3, timeout_s=30)
        assert monitor.has_reference
        await wait_for(lambda: all(s.state == "ok" for s in board.statuses()))
        with pytest.raises(ValueError, match="unknown ROI"):
            await monitor.capture_reference(frames=1, roi_ids=["nope"], timeout_s=30)
        await monitor.capture_reference(frames=1, roi_ids=["r0c0"], timeout_s=30)
        await wait_for(lambda: all(s.state == "ok" for s in board.statuses()))
