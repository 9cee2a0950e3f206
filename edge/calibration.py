"""Calibration and commissioning of weighed bins: the wizard, the installer overlay, the audit trail.

The wizard (`CalibrationWizard`) is a pure state machine fed raw transmitter readings (profile units, as in
`ChannelReading.value`); the CLI (`shelfgate calibrate`) and the installer page drive the same object through the
gateway's installer API (`edge/installer.py`)::

    EMPTY ─confirm_empty─▶ ZEROING ─stable─▶ LOAD ─confirm_loaded(mass_g)─▶ SPANNING ─stable, moved─▶ CHECKING
      ─fresh stable window─▶ CHECKED (check ok or not)          any step ─cancel─▶ CANCELLED (nothing written)

Two-point calibration as `edge.config.Calibration` defines it: grams = (value - zero) * span_g_per_unit, then
the estimator subtracts the bin's `tare_g`. The tray usually stays on the plate while zeroing (it cannot be
lifted off every shelf), so by default the empty reading includes the tray and the written `zero` is moved down
by `tare_g / span` — the estimator's net weight then reads 0 g with the tray alone, as before.

Stability: a window of `window_s` seconds of samples is stable when the device's own motion flag, where it has
one, was never False in the window (DOMAIN.md: "count only stable readings"), its older and newer halves agree
(no slow approach to the level), and no sample sits far from the mean (no hand on the plate). The noise σ is
estimated from the median of successive differences (robust to a single step), like the estimator does; the raw
unit's scale is unknown before calibration, so every threshold is relative to that σ, never absolute.

The check re-reads a fresh stable window taken entirely after the span and compares it to the known mass:
error in g and %, accepted within `max(tolerance_g, tolerance_pct × mass)`. A failed check is reported; the
calibration is written only when forced.

Where calibrations live (`OVERLAY_FILE` in `data_dir`): the store YAML stays the installer's hand-written
source; what the wizard and the bind flow decide goes into a small machine-written overlay that `load_config`
merges over the bins (`merge_overlay`). Why an overlay and not a rewrite of the store YAML: the YAML carries
comments and layout a round-trip writer can still mangle, it may be read-only or managed by a deployment tool,
and a bad wizard result is undone by deleting one entry. Every change is also appended to `AUDIT_FILE` (JSON
lines: who, when, bin, before → after, check result) and summarised in `COMMISSIONING_FILE`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import json
import math
import os
import statistics
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, ParamSpec, TypeVar

import yaml
from pydantic import ValidationError

from cloud_bridge.contract import rfc3339
from edge.config import (
    Bin,
    Calibration,
    CameraRoi,
    ConfigError,
    ConfigIssue,
    FrameSize,
    StoreConfig,
    _check_cameras,
)

OVERLAY_FILE: Final = "installer-overlay.yaml"
AUDIT_FILE: Final = "installer-audit.jsonl"
COMMISSIONING_FILE: Final = "commissioning.json"

DEFAULT_WINDOW_S: Final = 1.5
DEFAULT_TOLERANCE_PCT: Final = 0.5
DEFAULT_TOLERANCE_G: Final = 1.0
MIN_SAMPLES: Final = 5
"""A stability verdict needs this many samples in the window (5 polls at the default 0.2 s interval)."""
HALVES_K: Final = 4.0
"""Older and newer half means must agree within this many standard errors of their difference."""
MOTION_K: Final = 6.0
"""No sample further than this many σ from the window mean (a hand on the plate)."""
NOISE_RATIO_K: Final = 4.0
"""A window whose σ exceeds this many times the channel's reference noise (`StabilityWindow.sigma_ref`) is
motion, not noise."""
MOVED_K: Final = 20.0
"""After `confirm_loaded` the level must move this many σ away from zero before it counts as the load."""
MEDIAN_ABS_DIFF_PER_SIGMA: Final = 0.6745 * math.sqrt(2.0)
"""median(|x_k − x_(k−1)|) = 0.954 σ for white Gaussian noise (as in edge/inventory/estimator.py)."""
REL_EPS: Final = 1e-9
"""σ floor relative to the level: a noise-free (simulated or quantised) signal still has a scale."""


class CalibrationError(ValueError):
    """A wizard step was asked for out of order, or with a bad value; the message says what to do."""


class Step(enum.StrEnum):
    """Where the wizard is; each waits for the installer (`EMPTY`, `LOAD`) or for a stable reading."""

    EMPTY = "empty"
    ZEROING = "zeroing"
    LOAD = "load"
    SPANNING = "spanning"
    CHECKING = "checking"
    CHECKED = "checked"
    APPLIED = "applied"
    CANCELLED = "cancelled"
    FAILED = "failed"


WAITING_STEPS: Final = frozenset({Step.ZEROING, Step.SPANNING, Step.CHECKING})


@dataclass(frozen=True, slots=True)
class RawSample:
    """One raw reading of the bin's channel (profile units) and the device's stable flag, if it has one."""

    value: float
    ts: float
    device_stable: bool | None = None


@dataclass(frozen=True, slots=True)
class Stability:
    """The verdict on the current window."""

    stable: bool
    level: float | None
    """Mean of the window (raw units); None before MIN_SAMPLES samples."""
    sigma: float | None
    samples: int
    reason: str
    """Why not stable (empty when stable): `too few samples`, `device motion`, `settling`, `moving`."""


class StabilityWindow:
    """A sliding `window_s` of raw samples and its stability verdict (see the module docstring)."""

    def __init__(self, window_s: float = DEFAULT_WINDOW_S) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = window_s
        self._w: deque[RawSample] = deque()
        self.sigma_ref: float | None = None
        """The channel's own noise, once known (the wizard sets it from the empty plate's stable window; kept
        across `clear()`). An oscillating plate inflates a difference-based σ, so without a reference a steady
        swing could pass for noise."""

    def samples(self) -> list[RawSample]:
        """The samples in the window, oldest first."""
        return list(self._w)

    def clear(self) -> None:
        """Forget every sample (a new level must prove itself from scratch)."""
        self._w.clear()

    def add(self, s: RawSample) -> None:
        """Append one sample; drop those older than the window (the newest sample sets the clock)."""
        if not math.isfinite(s.value):
            return
        w = self._w
        if w and s.ts < w[-1].ts:
            w.clear()  # the clock went backwards (a restart of the source): start over
        w.append(s)
        while w and s.ts - w[0].ts > self.window_s:
            w.popleft()

    def verdict(self) -> Stability:
        """Stable or not, and the window's level and noise."""
        w = list(self._w)
        n = len(w)
        if n < MIN_SAMPLES or w[-1].ts - w[0].ts < 0.8 * self.window_s:
            level = statistics.fmean(s.value for s in w) if n >= MIN_SAMPLES else None
            return Stability(False, level, None, n, "too few samples")
        values = [s.value for s in w]
        level = statistics.fmean(values)
        diffs = [abs(b - a) for a, b in itertools.pairwise(values)]
        sigma = max(statistics.median(diffs) / MEDIAN_ABS_DIFF_PER_SIGMA, REL_EPS * max(abs(level), 1.0))
        if any(s.device_stable is False for s in w):
            return Stability(False, level, sigma, n, "device motion")
        ref = self.sigma_ref
        if ref is not None and sigma > NOISE_RATIO_K * ref:
            return Stability(False, level, sigma, n, "moving")
        half = n // 2
        old, new = values[:half], values[half:]
        se = sigma * math.sqrt(1.0 / len(old) + 1.0 / len(new))
        if abs(statistics.fmean(new) - statistics.fmean(old)) > HALVES_K * se:
            return Stability(False, level, sigma, n, "settling")
        if max(abs(v - level) for v in values) > MOTION_K * sigma:
            return Stability(False, level, sigma, n, "moving")
        return Stability(True, level, sigma, n, "")


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The re-read of the known mass with the new calibration."""

    mass_g: float
    measured_g: float
    error_g: float
    error_pct: float
    tolerance_g: float
    ok: bool

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (rounded for people)."""
        return {
            "mass_g": round(self.mass_g, 3),
            "measured_g": round(self.measured_g, 3),
            "error_g": round(self.error_g, 3),
            "error_pct": round(self.error_pct, 4),
            "tolerance_g": round(self.tolerance_g, 3),
            "ok": self.ok,
        }


PROMPTS: Final[Mapping[Step, str]] = {
    Step.EMPTY: "Empty the plate (leave the tray on it), then confirm.",
    Step.ZEROING: "Hold still: waiting for a stable empty reading.",
    Step.LOAD: "Place the known mass on the plate, then confirm with its mass in grams.",
    Step.SPANNING: "Hold still: waiting for a stable loaded reading.",
    Step.CHECKING: "Hold still: re-reading the mass to check the new calibration.",
    Step.CHECKED: "Review the check and apply (or cancel).",
    Step.APPLIED: "Calibration written.",
    Step.CANCELLED: "Cancelled: the calibration is unchanged.",
    Step.FAILED: "Failed: the calibration is unchanged.",
}


class CalibrationWizard:
    """Zero → span → check for one bin, fed raw samples; no I/O, no clock reads (tests feed synthetic data)."""

    def __init__(
        self,
        bin: Bin,
        *,
        window_s: float = DEFAULT_WINDOW_S,
        tolerance_pct: float = DEFAULT_TOLERANCE_PCT,
        tolerance_g: float = DEFAULT_TOLERANCE_G,
        tare_on_plate: bool = True,
    ) -> None:
        if tolerance_pct < 0 or tolerance_g < 0:
            raise ValueError("tolerances must not be negative")
        self.bin = bin
        self.before = bin.calibration
        self.tolerance_pct = tolerance_pct
        self.tolerance_g = tolerance_g
        self.tare_on_plate = tare_on_plate
        self.window = StabilityWindow(window_s)
        self.step = Step.EMPTY
        self.error: str | None = None
        self.last: RawSample | None = None
        self.zero_raw: float | None = None
        self.loaded_raw: float | None = None
        self.mass_g: float | None = None
        self.span: float | None = None
        self.check: CheckResult | None = None

    # --- installer actions ------------------------------------------------------------------------------

    def confirm_empty(self) -> None:
        """The plate is empty: wait for a stable reading to take as zero."""
        self._expect(Step.EMPTY, "confirm the empty plate")
        self.window.clear()
        self.step = Step.ZEROING

    def confirm_loaded(self, mass_g: float) -> None:
        """The known mass (grams) is on the plate: wait for a stable reading to take as span."""
        self._expect(Step.LOAD, "confirm the loaded plate")
        if not (math.isfinite(mass_g) and mass_g > 0):
            raise CalibrationError(f"the known mass must be a positive number of grams, got {mass_g}")
        self.mass_g = mass_g
        self.window.clear()
        self.step = Step.SPANNING

    def cancel(self) -> None:
        """Stop here; nothing is written."""
        if self.step is not Step.APPLIED:
            self.step = Step.CANCELLED

    def mark_applied(self) -> None:
        """The caller wrote the result."""
        self._expect(Step.CHECKED, "apply")
        self.step = Step.APPLIED

    def _expect(self, step: Step, what: str) -> None:
        if self.step is not step:
            raise CalibrationError(f"cannot {what} now: the wizard is at {self.step.value!r}")

    # --- samples --------------------------------------------------------------------------------------

    def feed(self, s: RawSample) -> Step:
        """One raw sample; returns the (possibly new) step."""
        self.last = s
        self.window.add(s)
        if self.step not in WAITING_STEPS:
            return self.step
        v = self.window.verdict()
        if not v.stable or v.level is None or v.sigma is None:
            return self.step
        if self.step is Step.ZEROING:
            self.zero_raw = v.level
            # The empty plate is as quiet as this channel gets: its spread is the noise reference (the
            # population SD over the whole window is steadier than the median of a few differences).
            values = [x.value for x in self.window.samples()]
            self.window.sigma_ref = max(v.sigma, statistics.pstdev(values))
            self.window.clear()
            self.step = Step.LOAD
        elif self.step is Step.SPANNING:
            zero, mass = self.zero_raw, self.mass_g
            if zero is None or mass is None:  # unreachable: ZEROING and confirm_loaded set them
                raise CalibrationError("span before zero")
            moved = v.level - zero
            if abs(moved) <= MOVED_K * v.sigma:
                return self.step  # not placed yet (the installer confirmed early): keep waiting
            if moved < 0:
                self.step = Step.FAILED
                self.error = (
                    "the reading went down when the mass was placed: check the load-cell wiring (signal +/−)"
                )
                return self.step
            self.loaded_raw = v.level
            self.span = mass / moved
            self.window.clear()
            self.step = Step.CHECKING
        elif self.step is Step.CHECKING:
            zero, span, mass = self.zero_raw, self.span, self.mass_g
            if zero is None or span is None or mass is None:  # unreachable: SPANNING set them
                raise CalibrationError("check before span")
            measured = (v.level - zero) * span
            err = measured - mass
            tol = max(self.tolerance_g, self.tolerance_pct / 100.0 * mass)
            self.check = CheckResult(
                mass_g=mass,
                measured_g=measured,
                error_g=err,
                error_pct=100.0 * err / mass,
                tolerance_g=tol,
                ok=abs(err) <= tol,
            )
            self.step = Step.CHECKED
        return self.step

    # --- results --------------------------------------------------------------------------------------

    def result(self, now: float | None = None) -> Calibration | None:
        """The new calibration once span is known (`zero` shifted by the tray when it stayed on the plate)."""
        if self.zero_raw is None or self.span is None:
            return None
        zero = self.zero_raw - (self.bin.tare_g / self.span if self.tare_on_plate else 0.0)
        return Calibration(
            zero=zero,
            span_g_per_unit=self.span,
            calibrated_at=rfc3339(time.time() if now is None else now),
        )

    def live_g(self) -> float | None:
        """Net grams of the last sample with the best calibration known so far (new span once known)."""
        if self.last is None:
            return None
        if self.zero_raw is not None and self.span is not None:
            return (self.last.value - self.zero_raw) * self.span
        if self.zero_raw is not None:
            return (self.last.value - self.zero_raw) * self.before.span_g_per_unit
        c = self.before
        return (self.last.value - c.zero) * c.span_g_per_unit - self.bin.tare_g

    def status(self) -> dict[str, Any]:
        """Everything the CLI and the page show, JSON-ready."""
        v = self.window.verdict()
        after = self.result()
        return {
            "bin_id": self.bin.id,
            "step": self.step.value,
            "prompt": self.error if self.step is Step.FAILED and self.error else PROMPTS[self.step],
            "error": self.error,
            "raw": None if self.last is None else self.last.value,
            "live_g": _round(self.live_g(), 2),
            "stable": v.stable,
            "unstable_reason": v.reason,
            "samples": v.samples,
            "zero_raw": self.zero_raw,
            "loaded_raw": self.loaded_raw,
            "mass_g": self.mass_g,
            "check": None if self.check is None else self.check.as_dict(),
            "before": calibration_dict(self.before),
            "after": None if after is None else calibration_dict(after),
        }


def calibration_dict(c: Calibration) -> dict[str, Any]:
    """A calibration as written to the overlay and shown in a diff."""
    return {"zero": c.zero, "span_g_per_unit": c.span_g_per_unit, "calibrated_at": c.calibrated_at}


def _round(x: float | None, nd: int) -> float | None:
    return None if x is None else round(x, nd)


# --- the overlay, the audit trail and the commissioning record ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Binding:
    """A bin bound to a product: what `bind` writes over the config's `sku` (and unit weight)."""

    sku: str
    unit_weight_g: float | None = None
    unit_weight_spread_g: float | None = None
    name: dict[str, str] | None = None
    """`{"zh": …, "en": …}` from the catalogue, so the board names what is really on the plate."""

    def as_dict(self) -> dict[str, Any]:
        """Only the fields set (the overlay does not override what it does not know)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def read_overlay(data_dir: Path) -> dict[str, Any]:
    """The overlay document (`{"bins": {id: {...}}}`), or an empty one when there is none yet."""
    path = Path(data_dir) / OVERLAY_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {"bins": {}}
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(path, [ConfigIssue("", None, f"not valid YAML: {exc}")]) from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("bins", {}), dict):
        raise ConfigError(path, [ConfigIssue("bins", None, "must be a mapping `bins: {BIN_ID: {...}}`")])
    if not isinstance(doc.get("cameras", {}), dict):
        raise ConfigError(
            path, [ConfigIssue("cameras", None, "must be a mapping `cameras: {CAMERA_ID: {rois: [...]}}`")]
        )
    doc.setdefault("bins", {})
    return doc


OVERLAY_HEADER: Final = (
    "# Written by shelfgate (the installer page and `shelfgate calibrate`); merged over the store config's\n"
    "# bins and cameras' ROIs at load. Delete an entry to go back to what the store config says.\n"
    "# See docs/installer.md.\n"
)


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so a reader sees the old file or the new one, never half (temp, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def update_overlay(
    data_dir: Path, bin_id: str, *, calibration: Calibration | None = None, binding: Binding | None = None
) -> dict[str, Any]:
    """Set one bin's calibration and/or binding in the overlay (atomically); return the new bin entry."""
    doc = read_overlay(data_dir)
    entry = dict(doc["bins"].get(bin_id) or {})
    if calibration is not None:
        entry["calibration"] = calibration_dict(calibration)
    if binding is not None:
        entry.update(binding.as_dict())
    doc["bins"][bin_id] = entry
    body = yaml.safe_dump(doc, sort_keys=True, allow_unicode=True, default_flow_style=False)
    write_atomic(Path(data_dir) / OVERLAY_FILE, OVERLAY_HEADER + body)
    return entry


OVERLAY_FIELDS: Final = frozenset({"calibration", "sku", "unit_weight_g", "unit_weight_spread_g", "name"})
CAMERA_OVERLAY_FIELDS: Final = frozenset({"rois"})


def update_camera_overlay(data_dir: Path, camera_id: str, rois: Sequence[CameraRoi]) -> dict[str, Any]:
    """Set one camera's full ROI list in the overlay (atomically); return the new camera entry.

    The list replaces the store config's `rois` of that camera as a whole (not merged ROI by ROI): what the
    installer drew is what runs, and deleting the entry goes back to the config's ROIs.
    """
    doc = read_overlay(data_dir)
    cameras = doc.setdefault("cameras", {})
    entry = {"rois": [roi_dict(r) for r in rois]}
    cameras[camera_id] = entry
    body = yaml.safe_dump(doc, sort_keys=True, allow_unicode=True, default_flow_style=None)
    write_atomic(Path(data_dir) / OVERLAY_FILE, OVERLAY_HEADER + body)
    return entry


def roi_dict(roi: CameraRoi) -> dict[str, Any]:
    """A ROI as written to the overlay and shown in a diff (only the fields set; lists, not tuples)."""
    out: dict[str, Any] = {"id": roi.id}
    if roi.rect is not None:
        out["rect"] = list(roi.rect)
    if roi.polygon is not None:
        out["polygon"] = [list(p) for p in roi.polygon]
    if roi.sku is not None:
        out["sku"] = roi.sku
    if roi.bin is not None:
        out["bin"] = roi.bin
    return out


@dataclass(frozen=True, slots=True)
class RoiIssue:
    """One problem in a camera's ROI list: which ROI (position and id) and which field."""

    index: int | None
    roi_id: str | None
    field: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (the installer API's 422 detail)."""
        return {"index": self.index, "roi": self.roi_id, "field": self.field, "message": self.message}

    def __str__(self) -> str:
        where = "rois" if self.index is None else f"rois[{self.index}]"
        who = f" ({self.roi_id})" if self.roi_id else ""
        return f"{where}{who}.{self.field}: {self.message}" if self.field else f"{where}{who}: {self.message}"


def validate_camera_rois(
    store: StoreConfig,
    camera_id: str,
    rois: Sequence[Any],
    *,
    frame_size: tuple[int, int] | None = None,
) -> tuple[list[CameraRoi], list[RoiIssue]]:
    """Check a camera's new ROI list exactly as `load_config` checks the config's (`CameraRoi` per ROI, then
    the cross-checks of `edge.config._check_cameras` over the whole store with this list in place): ids
    unique, one of rect/polygon with area, sku or bin, bin exists with the same SKU, inside the frame,
    every camera-only bin still watched. `frame_size` (the live frame) stands in for the camera's
    `frame_size` when the config gives none. Returns (ROIs, issues); the ROIs are valid only without issues.
    """
    cam_index = next((i for i, c in enumerate(store.cameras) if c.id == camera_id), None)
    if cam_index is None:
        return [], [RoiIssue(None, None, "", f"no camera {camera_id!r}")]
    issues: list[RoiIssue] = []
    if not rois:
        issues.append(RoiIssue(None, None, "", "a camera needs at least one ROI"))
    parsed: list[CameraRoi] = []
    for j, raw in enumerate(rois):
        roi_id = raw.get("id") if isinstance(raw, Mapping) else None
        name = roi_id if isinstance(roi_id, str) else None
        if not isinstance(raw, Mapping):
            issues.append(RoiIssue(j, None, "", "must be a mapping {id, rect | polygon, sku, bin}"))
            continue
        try:
            parsed.append(CameraRoi.model_validate(dict(raw)))
        except ValidationError as exc:
            for e in exc.errors():
                field_name = ".".join(str(p) for p in e["loc"])
                if not field_name:  # a model-level rule: name the field it is about
                    msg = str(e["msg"])
                    field_name = (
                        "rect" if "rect" in msg or "polygon" in msg else "sku" if "sku" in msg else ""
                    )
                issues.append(RoiIssue(j, name, field_name, str(e["msg"]).removeprefix("Value error, ")))
    if issues:
        return parsed, issues
    cam = store.cameras[cam_index]
    update: dict[str, Any] = {"rois": parsed}
    if cam.frame_size is None and frame_size is not None:
        update["frame_size"] = FrameSize(width=frame_size[0], height=frame_size[1])
    cameras = list(store.cameras)
    cameras[cam_index] = cam.model_copy(update=update)
    trial = store.model_copy(update={"cameras": cameras})

    def issue(loc: tuple[str | int, ...], msg: str) -> None:
        if loc[:1] == ("cameras",) and loc[1] != cam_index:
            return  # another camera's problem is not this edit's
        if loc[:1] == ("cameras",) and len(loc) >= 4 and isinstance(loc[3], int):
            j = loc[3]
            issues.append(RoiIssue(j, parsed[j].id, ".".join(str(p) for p in loc[4:]), msg))
        else:  # a camera-only bin no longer watched
            issues.append(RoiIssue(None, None, "bin", msg))

    _check_cameras(trial, issue)
    return parsed, issues


def _merge_cameras(store: StoreConfig, doc: Mapping[str, Any], issues: list[ConfigIssue]) -> StoreConfig:
    """The overlay's `cameras: {id: {rois: [...]}}` over the config's cameras, cross-checked as a whole."""
    entries = doc.get("cameras") or {}
    if not entries:
        return store
    by_id = {c.id: i for i, c in enumerate(store.cameras)}
    cameras = list(store.cameras)
    for cam_id, entry in entries.items():
        where = f"cameras.{cam_id}"
        if cam_id not in by_id:
            issues.append(ConfigIssue(where, None, f"no camera {cam_id!r} in the store config"))
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("rois"), list):
            issues.append(ConfigIssue(where, None, "must be a mapping `{rois: [...]}`"))
            continue
        unknown = set(entry) - CAMERA_OVERLAY_FIELDS
        if unknown:
            issues.append(ConfigIssue(where, None, f"unknown fields {sorted(unknown)}"))
            continue
        rois, found = validate_camera_rois(store, cam_id, entry["rois"])
        if found:
            issues.extend(ConfigIssue(f"{where}.{i}", None, i.message) for i in found)
            continue
        cameras[by_id[cam_id]] = cameras[by_id[cam_id]].model_copy(update={"rois": rois})
    merged = store.model_copy(update={"cameras": cameras})
    if not issues:  # every camera replaced: check them together (a bin moved between cameras)

        def issue(loc: tuple[str | int, ...], msg: str) -> None:
            issues.append(ConfigIssue(".".join(str(p) for p in loc), None, msg))

        _check_cameras(merged, issue)
    return merged


def merge_overlay(store: StoreConfig) -> tuple[StoreConfig, bytes]:
    """The store config with the overlay in `store.data_dir` merged over its bins, and the overlay's bytes
    (for the config version). Unknown bins or fields, and invalid values, are a `ConfigError` naming the overlay.
    """
    path = Path(store.data_dir) / OVERLAY_FILE
    if not path.is_file():
        return store, b""
    doc = read_overlay(store.data_dir)
    by_id = {b.id: b for b in store.bins}
    issues: list[ConfigIssue] = []
    merged: dict[str, Bin] = {}
    for bin_id, entry in doc["bins"].items():
        where = f"bins.{bin_id}"
        if bin_id not in by_id:
            issues.append(ConfigIssue(where, None, f"no bin {bin_id!r} in the store config"))
            continue
        if not isinstance(entry, dict):
            issues.append(ConfigIssue(where, None, "must be a mapping"))
            continue
        unknown = set(entry) - OVERLAY_FIELDS
        if unknown:
            issues.append(ConfigIssue(where, None, f"unknown fields {sorted(unknown)}"))
            continue
        try:
            merged[bin_id] = Bin.model_validate({**by_id[bin_id].model_dump(), **entry})
        except ValidationError as exc:
            issues.extend(
                ConfigIssue(f"{where}.{'.'.join(str(p) for p in e['loc'])}", None, e["msg"])
                for e in exc.errors()
            )
    if issues:
        raise ConfigError(path, issues)
    bins = [merged.get(b.id, b) for b in store.bins]
    store = _merge_cameras(store.model_copy(update={"bins": bins}), doc, issues)
    if issues:
        raise ConfigError(path, issues)
    return store, path.read_bytes()


def append_audit(data_dir: Path, entry: Mapping[str, Any]) -> dict[str, Any]:
    """Append one audit line (with `ts`) to the JSONL trail; fsync'd, since it is the record of who did what."""
    line = {"ts": rfc3339(time.time()), **entry}
    path = Path(data_dir) / AUDIT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(line, ensure_ascii=False, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return line


def read_audit(data_dir: Path) -> list[dict[str, Any]]:
    """Every audit entry, oldest first; a torn last line (power cut mid-append) is skipped."""
    path = Path(data_dir) / AUDIT_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        with contextlib.suppress(json.JSONDecodeError):
            item = json.loads(line)
            if isinstance(item, dict):
                out.append(item)
    return out


@dataclass
class CommissioningRecord:
    """What was commissioned at this store: the latest calibration, binding and pick test per bin."""

    store_id: str
    gateway_id: str
    generated_at: str
    installers: list[str] = field(default_factory=list)
    devices: list[dict[str, Any]] = field(default_factory=list)
    calibrations: dict[str, dict[str, Any]] = field(default_factory=dict)
    bindings: dict[str, dict[str, Any]] = field(default_factory=dict)
    tests: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def commissioning_record(
    store_id: str, gateway_id: str, devices: Iterable[dict[str, Any]], audit: Iterable[dict[str, Any]]
) -> CommissioningRecord:
    """Fold the audit trail into the record (later entries win per bin)."""
    rec = CommissioningRecord(store_id, gateway_id, rfc3339(time.time()), devices=list(devices))
    kinds = {"calibration": rec.calibrations, "binding": rec.bindings, "pick_test": rec.tests}
    for e in audit:
        target = kinds.get(str(e.get("kind")))
        bin_id = e.get("bin_id")
        if target is None or not isinstance(bin_id, str):
            continue
        target[bin_id] = e
        who = e.get("installer")
        if isinstance(who, str) and who not in rec.installers:
            rec.installers.append(who)
    return rec


def write_commissioning(data_dir: Path, record: CommissioningRecord) -> None:
    """Keep the latest record next to the database (atomically)."""
    text = json.dumps(record.as_dict(), ensure_ascii=False, indent=2, sort_keys=True) + "\n"
    write_atomic(Path(data_dir) / COMMISSIONING_FILE, text)


_P = ParamSpec("_P")
_T = TypeVar("_T")

_FILES_LOCK: Final = threading.Lock()
"""Held by the worker thread around one data_dir file operation started by `run_file_op`. The overlay is
read-modify-write and shared by the installer's bins and the camera ROI editor (two routers, each with its
own asyncio lock), so two threads must never interleave inside it or one edit is lost."""


def _locked(fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
    with _FILES_LOCK:
        return fn(*args, **kwargs)


async def run_file_op(fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Run a blocking data_dir helper (`update_overlay`, `append_audit`, `write_commissioning`, …) off the event
    loop, one at a time per process.

    The helpers fsync, so they block for milliseconds to seconds on an SD card; on the loop they would stall
    every device task. Off the loop they could overlap, hence the process-wide lock; callers that need a
    request's writes kept in order (an audit trail per bin) hold their own asyncio.Lock (FIFO) around the await.
    """
    return await asyncio.to_thread(_locked, fn, *args, **kwargs)


__all__ = [
    "AUDIT_FILE",
    "COMMISSIONING_FILE",
    "OVERLAY_FILE",
    "Binding",
    "CalibrationError",
    "CalibrationWizard",
    "CheckResult",
    "CommissioningRecord",
    "RawSample",
    "RoiIssue",
    "Stability",
    "StabilityWindow",
    "Step",
    "append_audit",
    "calibration_dict",
    "commissioning_record",
    "merge_overlay",
    "read_audit",
    "read_overlay",
    "roi_dict",
    "run_file_op",
    "update_camera_overlay",
    "update_overlay",
    "validate_camera_rois",
    "write_atomic",
    "write_commissioning",
]
