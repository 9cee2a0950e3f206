"""Store config, cameras: the `cameras:` section, camera-only bins, and every error path with key and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import ConfigError, load_config

STORE = """\
store_id: s1
buses:
  - {id: tcp1, kind: tcp, host: 127.0.0.1, port: 5020}
transmitters:
  - {id: tx1, bus: tcp1, unit_id: 1, profile: wt-int32-abcd}
scanners:
  - {id: hh1, port: /dev/ttyACM0, role: handheld}
cameras:
  - id: cam1
    source: /dev/video0
    frame_size: {width: 1280, height: 720}
    rois:
      - {id: f1, rect: [10, 20, 200, 100], bin: P01}
      - {id: f2, polygon: [[300, 20], [500, 20], [500, 120], [300, 120]], bin: A01}
      - {id: f3, rect: [600, 20, 200, 100], sku: "2100009"}
  - id: cam2
    source: "rtsp://user:secret@127.0.0.1:8554/shelf"
    analysis_fps: 0.5
    reference: {capture: manual}
    rois:
      - {id: f1, rect: [0, 0, 50, 50], bin: P01, sku: "2100001"}
  - id: cam3
    source: "file:videos/aisle.avi"
    rois:
      - {id: f1, rect: [0, 0, 50, 50], sku: "2100003"}
bins:
  - id: A01
    sku: "06901234567892"
    name: {zh: 可乐, en: Cola}
    unit_weight_g: 350
    safety_stock: 4
    max_stock: 12
    device: tx1
    channel: 0
  - id: P01
    sku: "2100001"
    name: {zh: 苹果, en: Apples}
    safety_stock: 1
    max_stock: 4
"""


def _write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "store.yaml"
    f.write_text(text, encoding="utf-8")
    return f


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def _one_issue(tmp_path: Path, text: str) -> tuple[str, int | None, str]:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    issues = [(i.path, i.line, i.message) for i in info.value.issues]
    assert len(issues) == 1, issues
    return issues[0]


def test_cameras_and_a_camera_only_bin_load(tmp_path: Path) -> None:
    s = load_config(_write(tmp_path, STORE)).store
    cam1, cam2, cam3 = s.cameras
    assert (cam1.analysis_fps, cam1.reference.capture, cam1.reference.frames) == (1.0, "on_start", 3)
    assert cam1.rois[0].points == ((10, 20), (210, 20), (210, 120), (10, 120))
    assert cam1.rois[1].points == ((300, 20), (500, 20), (500, 120), (300, 120))
    assert (cam2.analysis_fps, cam2.reference.capture) == (0.5, "manual")
    assert cam3.source == f"file:{(tmp_path / 'videos' / 'aisle.avi').resolve()}", "relative to the config"
    a01, p01 = s.bins
    assert (a01.weighed, a01.device, a01.channel) == (True, "tx1", 0)
    assert (p01.weighed, p01.device) == (False, None)


def test_a_store_of_only_cameras_is_valid(tmp_path: Path) -> None:
    text = """\
store_id: s2
cameras:
  - {id: cam1, source: "synthetic:7", rois: [{id: f1, rect: [0, 0, 10, 10], bin: P01}]}
bins:
  - {id: P01, sku: "2100001", name: {zh: 苹果, en: Apples}, safety_stock: 0, max_stock: 4}
"""
    assert load_config(_write(tmp_path, text)).store.cameras[0].source == "synthetic:7"


@pytest.mark.parametrize(
    ("old", "new", "path", "line_needle", "message"),
    [
        (
            "  - id: cam2\n",
            "  - id: hh1\n",
            "cameras[1].id",
            "  - id: hh1",
            "duplicate device id 'hh1' (first at scanners[0])",
        ),
        (
            "{id: f1, rect: [10, 20, 200, 100], bin: P01}",
            "{id: f1, rect: [10, 20, 200, 100], bin: P09}",
            "cameras[0].rois[0].bin",
            "bin: P09",
            "unknown bin 'P09'",
        ),
        (
            "{id: f3, rect: [600, 20, 200, 100]",
            "{id: f1, rect: [600, 20, 200, 100]",
            "cameras[0].rois[2].id",
            "{id: f1, rect: [600",
            "duplicate ROI id 'f1' (first at cameras[0].rois[0])",
        ),
        (
            "{id: f3, rect: [600, 20, 200, 100]",
            "{id: f3, rect: [1200, 20, 200, 100]",
            "cameras[0].rois[2].rect",
            "{id: f3",
            "ROI 'f3' reaches (1400, 120), outside the 1280×720 frame",
        ),
        (
            "[300, 20], [500, 20], [500, 120]",
            "[300, 20], [500, 20], [500, 820]",
            "cameras[0].rois[1].polygon",
            "{id: f2",
            "ROI 'f2' reaches (500, 820), outside the 1280×720 frame",
        ),
        (
            'bin: P01, sku: "2100001"}',
            'bin: P01, sku: "2100002"}',
            "cameras[1].rois[0].sku",
            "bin: P01, sku",
            "sku '2100002' differs from bin 'P01''s sku '2100001'",
        ),
        (
            "{id: f1, rect: [10, 20, 200, 100], bin: P01}",
            "{id: f1, rect: [10, 20, 200, 100], bin: A01}",
            "bins[1].id",
            "  - id: P01",
            "bin 'P01' has no `device` and no camera ROI names it: give it a `device` (weighed) or bind a "
            "`cameras[].rois[].bin` to it (camera-only)",
        ),
    ],
)
def test_camera_cross_checks_name_key_and_line(
    tmp_path: Path, *, old: str, new: str, path: str, line_needle: str, message: str
) -> None:
    assert old in STORE
    text = STORE.replace(old, new, 1)
    if path == "bins[1].id":  # cam2 binds P01 too: unbind it so P01 is watched by nobody
        text = text.replace(
            '{id: f1, rect: [0, 0, 50, 50], bin: P01, sku: "2100001"}',
            '{id: f1, rect: [0, 0, 50, 50], sku: "2100001"}',
        )
    assert _one_issue(tmp_path, text) == (path, _line_of(text, line_needle), message)


@pytest.mark.parametrize(
    ("old", "new", "path", "line_needle", "message"),
    [
        (
            "{id: f3, rect: [600, 20, 200, 100], sku",
            "{id: f3, rect: [600, 20, 200, 100], polygon: [[0, 0], [5, 0], [5, 5]], sku",
            "cameras[0].rois[2]",
            "{id: f3",
            "give exactly one of `rect` or `polygon`",
        ),
        (
            "{id: f3, rect: [600, 20, 200, 100], sku",
            "{id: f3, sku",
            "cameras[0].rois[2]",
            "{id: f3",
            "give exactly one of `rect` or `polygon`",
        ),
        (
            '{id: f3, rect: [600, 20, 200, 100], sku: "2100009"}',
            "{id: f3, rect: [600, 20, 200, 100]}",
            "cameras[0].rois[2]",
            "{id: f3",
            "give `sku`, `bin` or both (a facing is bound to a SKU)",
        ),
        (
            "{id: f3, rect: [600, 20, 200, 100], sku",
            "{id: f3, rect: [600, 20, 0, 100], sku",
            "cameras[0].rois[2]",
            "{id: f3",
            "rect [600, 20, 0, 100]: x, y must be ≥ 0 and width, height > 0",
        ),
        (
            "polygon: [[300, 20], [500, 20], [500, 120], [300, 120]]",
            "polygon: [[300, 20], [500, 20], [700, 20]]",
            "cameras[0].rois[1]",
            "{id: f2",
            "the polygon has no area",
        ),
        (
            "polygon: [[300, 20], [500, 20], [500, 120], [300, 120]]",
            "polygon: [[300, 20], [500, 20]]",
            "cameras[0].rois[1]",
            "{id: f2",
            "a polygon needs at least 3 points, got 2",
        ),
        (
            "source: /dev/video0",
            "source: camera-one",
            "cameras[0]",
            "  - id: cam1",
            "source 'camera-one': expected one of /dev/…, rtsp://…, rtsps://…, http://…, https://…, file:…, "
            "synthetic:…",
        ),
        (
            "analysis_fps: 0.5",
            "analysis_fps: 0",
            "cameras[1].analysis_fps",
            "analysis_fps: 0",
            "Input should be greater than 0",
        ),
        (
            "reference: {capture: manual}",
            "reference: {capture: daily}",
            "cameras[1].reference.capture",
            "reference: {capture: daily}",
            "Input should be 'on_start' or 'manual'",
        ),
        (
            "    unit_weight_g: 350\n",
            "",
            "bins[0]",
            "  - id: A01",
            "a bin with `device` needs `unit_weight_g`",
        ),
        (
            "    channel: 0\n",
            "",
            "bins[0]",
            "  - id: A01",
            "a bin with `device` needs `channel`",
        ),
        (
            "    unit_weight_g: 350\n",
            "    unit_weight_g: 0\n",
            "bins[0]",
            "  - id: A01",
            "unit_weight_g must be greater than 0 for a weighed bin",
        ),
        (
            "    device: tx1\n",
            "    device: cam1\n",
            "bins[0].device",
            "device: cam1",
            "device 'cam1' is a camera; a bin is weighed by a transmitter or a BLE shelf sensor (a camera "
            "watches a bin through a ROI's `bin`)",
        ),
    ],
)
def test_camera_field_errors_name_key_and_line(
    tmp_path: Path, *, old: str, new: str, path: str, line_needle: str, message: str
) -> None:
    assert old in STORE
    text = STORE.replace(old, new, 1)
    assert _one_issue(tmp_path, text) == (path, _line_of(text, line_needle), message)
