"""Frame sources: the file source reads what the simulator wrote; the OpenCV source's checks and classes."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from drivers.camera import (
    BadFrame,
    OpenCvSource,
    SourceEnded,
    SourceGone,
    SourceMisconfigured,
    SyntheticSource,
    VideoFileSource,
    as_bgr_image,
    mask_credentials,
)
from firmware_sims.camera import CameraScript, ShelfSim, write_video


def psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_file_source_reads_back_a_video_written_by_the_simulator(tmp_path: Path) -> None:
    sim = ShelfSim(4, CameraScript(n_frames=8))
    originals = [sim.image(i) for i in range(8)]
    path = tmp_path / "shelf.avi"
    assert write_video(path, originals, fps=1.0) == 8

    source = VideoFileSource(path, loop=False)
    source.open()
    read = []

    def read_to_the_end() -> None:
        for _ in range(20):
            source.grab()
            read.append(source.retrieve())

    with pytest.raises(SourceEnded):
        read_to_the_end()
    source.close()

    assert len(read) == 8
    other_shelf = ShelfSim(5, CameraScript(n_frames=1)).image(0)
    for got, want in zip(read, originals, strict=True):
        assert got.shape == (720, 1280, 3)
        assert got.dtype == np.uint8
        # MJPG is lossy (and smooths the sensor noise away), but it is the same shelf, not another one
        assert psnr_db(got, want) > 25.0
        assert psnr_db(got, other_shelf) < 20.0


def test_file_source_loops_and_steps(tmp_path: Path) -> None:
    frames = [np.full((48, 64, 3), 20 * k, np.uint8) for k in range(5)]
    path = tmp_path / "ramp.avi"
    write_video(path, frames, fps=5.0)
    source = VideoFileSource(path, loop=True, frame_step=2)
    source.open()
    levels = []
    for _ in range(5):
        source.grab()
        levels.append(round(float(source.retrieve().mean()) / 20))
    source.close()
    # step 2 over 5 frames: 1, 3, then the end wraps to the start: 0, 2, 4
    assert levels == [1, 3, 0, 2, 4]


def test_file_source_error_classes(tmp_path: Path) -> None:
    with pytest.raises(SourceGone):
        VideoFileSource(tmp_path / "missing.avi").open()
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"this is not a video" * 100)
    with pytest.raises(SourceMisconfigured):
        VideoFileSource(junk).open()


def test_opencv_source_validates_its_uri_and_masks_credentials() -> None:
    with pytest.raises(ValueError, match="expected a V4L2 device path"):
        OpenCvSource("ftp://camera/stream")
    with pytest.raises(ValueError, match="expected a V4L2 device path"):
        OpenCvSource("/tmp/video0")
    source = OpenCvSource("rtsp://admin:hunter2@127.0.0.1:8554/shelf")
    assert source.live
    assert "hunter2" not in source.name
    assert source.name == "rtsp://admin:***@127.0.0.1:8554/shelf"
    assert mask_credentials("rtsp://127.0.0.1/x") == "rtsp://127.0.0.1/x"


def test_missing_v4l2_device_is_gone_not_misconfigured() -> None:
    source = OpenCvSource("/dev/video987")
    with pytest.raises(SourceGone, match="not present"):
        source.open()


def test_as_bgr_image_normalises_or_rejects() -> None:
    grey = np.zeros((4, 5), np.uint8)
    assert as_bgr_image(grey, "t").shape == (4, 5, 3)
    bgra = np.zeros((4, 5, 4), np.uint8)
    assert as_bgr_image(bgra, "t").shape == (4, 5, 3)
    for bad in (
        None,
        np.zeros((4, 5, 3), np.float32),
        np.zeros((0, 5, 3), np.uint8),
        np.zeros((4, 5, 2), np.uint8),
    ):
        with pytest.raises(BadFrame):
            as_bgr_image(bad, "t")


def test_synthetic_source_counts_grabs_and_validates() -> None:
    seen: list[int] = []

    def render(i: int) -> np.ndarray:
        seen.append(i)
        return np.full((8, 8), i, np.uint8) if i < 2 else np.zeros((8, 8), np.float64)

    source = SyntheticSource(render)
    source.open()
    source.grab()
    assert source.retrieve()[0, 0, 0] == 0
    source.grab()
    assert source.retrieve()[0, 0, 0] == 1
    source.grab()
    with pytest.raises(BadFrame):
        source.retrieve()
    assert seen == [0, 1, 2]
    assert cv2.countNonZero(np.zeros((2, 2), np.uint8)) == 0  # cv2 importable next to the sources
