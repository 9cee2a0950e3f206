"""The shelf analyser: one camera's frame → a fill score and a judged state per facing, or a reason not to judge.

Synchronous and CPU-bound on purpose: the monitor runs it on the camera's own worker thread, never on the
event loop. Per frame (720p in, about 5 ms on one x86 core — `bench/bench_camera.py`):

```
BGR 1280×720 ─grey, INTER_AREA─▶ A 640×360 (blur σ 1) ─▶ G 320×180
                                                       │
 shift:     phase correlation G vs reference ──▶ |shift| ≤ max_shift_px: translate A and G back (re-register)
                                                │  beyond (confident, K frames in a row): camera_moved
 lighting:  robust planar log-gain fit on the static area (outside every ROI) ──▶ normalise A and G
 gate:      motion   = |G − previous G| > motion_threshold, share per ROI (+ margin)
            occluder = blobs of |G − reference G| > change_threshold that reach outside every ROI
                       (stock changes stay inside their facing; a person or an arm crosses the shelf lips)
 fill:      diff / ssim / edges / hist per ROI on A, weighted mean ──▶ ok / low / empty
```

Privacy: the analyser keeps the reference and the previous frame (grey, downscaled) in memory only; what it
returns (`FrameAnalysis`) holds numbers, never pixels.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

import cv2
import numpy as np
from numpy.typing import NDArray

from drivers.camera import Image
from edge.vision.imaging import (
    Colour,
    Gray,
    Mask,
    SsimReference,
    channel_max_absdiff,
    estimate_shift,
    f32,
    fit_lighting,
    normalise_lighting,
    normalise_lighting_colour,
    ssim_map,
    ssim_reference,
    to_u8,
    translate,
    u8,
)
from edge.vision.roi import FacingState, Roi, check_unique
from edge.vision.settings import MetricName, VisionSettings

GateReason: TypeAlias = Literal["motion", "occluded", "camera_moved", "no_reference", "frame_size"]
"""Why an ROI was not judged in a frame."""

BLUR_SIGMA_PX: Final = 1.0
"""Pre-blur at analysis scale: sensor noise and JPEG blocking out, product texture in."""
CANNY_LOW: Final = 40
CANNY_HIGH: Final = 120
HUE_BINS: Final = 18
SAT_BINS: Final = 8
MIN_OCCLUDER_PX_IN_ROI: Final = 3
"""Occluder pixels (gate scale) in an ROI's region that make it `occluded`: any real overlap, minus noise."""
MIN_STATIC_SHARE: Final = 0.05
"""Below this share of static (non-ROI) area the lighting fit samples the whole image instead."""


@dataclass(frozen=True, slots=True)
class ReferenceImage:
    """The stocked view an analyser compares against, as it keeps it: BGR float32 at analysis scale
    (blurred, lighting-matched), plus the full frame size it was taken from. Pixels: it never leaves the
    gateway; `edge.vision.reference_store` writes it to the data folder so a restart keeps it."""

    colour: Colour
    width: int
    height: int


class CameraMovedError(ValueError):
    """A partial re-capture was asked for while the view no longer matches the reference."""


@dataclass(frozen=True, slots=True)
class RoiObservation:
    """One facing in one frame. Numbers only: `metrics` are (metric name, fill in [0, 1]) pairs."""

    roi_id: str
    state: FacingState | None
    """The judged state, or None when the ROI was gated (see `gate`)."""
    score: float | None
    gate: GateReason | None
    metrics: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class FrameAnalysis:
    """The verdict on one frame. `shift_px` is the camera displacement from the reference (full-res pixels)."""

    observations: tuple[RoiObservation, ...]
    shift_px: tuple[float, float]
    shift_response: float
    camera_moved: bool
    lighting_gain: float


@dataclass(slots=True)
class _RoiGeometry:
    roi: Roi
    a_slice: tuple[slice, slice]
    a_mask: Mask
    a_mask_u8: NDArray[np.uint8]
    a_paste_slice: tuple[slice, slice]
    a_paste_mask: Mask
    """The ROI plus its margin, for partial re-capture."""
    area_a: int
    g_slice: tuple[slice, slice]
    g_mask: Mask
    """The ROI dilated by the margin, at gate scale: where motion or an occluder disqualifies it."""
    area_g: int
    ring_slice: tuple[slice, slice] | None = None
    ring_mask: Mask | None = None
    """Static shelf just outside the ROI (gate scale): an occluder in front of this facing changes it too."""
    ref_edge_density: float = 0.0
    ref_hist: NDArray[np.float32] | None = None


@dataclass(slots=True)
class _Reference:
    width: int
    height: int
    colour: Colour
    grey: Gray
    g: Gray
    g_colour: Colour
    hann: Gray
    ssim: SsimReference
    static_g: Mask
    """Gate-scale pixels outside every ROI (with margin): the lighting fit's samples and the occluder test."""
    rois: list[_RoiGeometry]


@dataclass(frozen=True, slots=True)
class _Prepared:
    """One frame at analysis scale: colour and grey at A, grey and colour at gate scale G; float32."""

    colour: Colour
    grey: Gray
    g: Gray
    g_colour: Colour


class ShelfAnalyser:
    """`capture_reference(frames)` once (stocked shelf, nobody in front), then `analyse(image)` per frame."""

    def __init__(self, camera_id: str, rois: Sequence[Roi], settings: VisionSettings | None = None) -> None:
        check_unique(rois)
        if not rois:
            raise ValueError(f"camera {camera_id}: at least one ROI is needed")
        self.camera_id = camera_id
        self.settings = settings or VisionSettings()
        self._rois = tuple(rois)
        self._ref: _Reference | None = None
        self._prev_g: Gray | None = None
        self._moved_streak = 0
        self._moved = False
        self._metric_names = self.settings.computed_metrics
        weights = dict(self.settings.fill_weights)
        total = sum(weights.values())
        self._weights: dict[str, float] = {k: v / total for k, v in weights.items()}

    # --- reference -------------------------------------------------------------------------------------------

    @property
    def rois(self) -> tuple[Roi, ...]:
        return self._rois

    @property
    def has_reference(self) -> bool:
        return self._ref is not None

    @property
    def camera_moved(self) -> bool:
        return self._moved

    def capture_reference(self, images: Image | Sequence[Image]) -> None:
        """Take the stocked view as the reference. Several frames (a few seconds at 1 frame/s) are combined by
        a per-pixel median, so a shopper passing during commissioning does not end up in the reference."""
        frames = [images] if isinstance(images, np.ndarray) else list(images)
        if not frames:
            raise ValueError("capture_reference needs at least one frame")
        height, width = frames[0].shape[:2]
        if any(f.ndim != 3 or f.shape[:2] != (height, width) for f in frames):
            raise ValueError("reference frames must be BGR images of one size")
        for roi in self._rois:
            roi.check_fits(width, height)
        colour = _median([self._prepare(f, width, height).colour for f in frames])
        self._ref = self._build_reference(colour, width, height, self._rois)
        self._prev_g = None
        self._moved_streak = 0
        self._moved = False

    def reference_image(self) -> ReferenceImage | None:
        """The current reference (to persist it), or None before the first capture."""
        ref = self._ref
        return None if ref is None else ReferenceImage(ref.colour, ref.width, ref.height)

    def load_reference(self, image: ReferenceImage) -> None:
        """Adopt a reference taken earlier (a restart): as if it had just been captured.

        Raises ValueError when it does not fit this analyser (analysis size for that frame size, a ROI outside
        the frame) — then capture a new one."""
        (aw, ah), _ = self._sizes(image.width, image.height)
        colour = image.colour
        if colour.ndim != 3 or colour.shape != (ah, aw, 3) or colour.dtype != np.float32:
            raise ValueError(
                f"camera {self.camera_id}: stored reference is {colour.shape} {colour.dtype}, "
                f"expected ({ah}, {aw}, 3) float32 for {image.width}×{image.height} frames"
            )
        if not np.isfinite(colour).all():
            raise ValueError(f"camera {self.camera_id}: stored reference holds non-finite values")
        for roi in self._rois:
            roi.check_fits(image.width, image.height)
        self._ref = self._build_reference(colour, image.width, image.height, self._rois)
        self._prev_g = None
        self._moved_streak = 0
        self._moved = False

    def recapture(self, images: Image | Sequence[Image], roi_ids: Collection[str]) -> None:
        """Re-take the reference of some facings only (restocked with a new look), registered and
        lighting-matched to the rest of the reference. Raises `CameraMovedError` if the view moved."""
        ref = self._require_reference()
        unknown = set(roi_ids) - {g.roi.roi_id for g in ref.rois}
        if unknown:
            raise ValueError(f"unknown ROI ids: {', '.join(sorted(unknown))}")
        frames = [images] if isinstance(images, np.ndarray) else list(images)
        if not frames or any(f.ndim != 3 or f.shape[:2] != (ref.height, ref.width) for f in frames):
            raise ValueError(f"re-capture needs BGR frames of {ref.width}×{ref.height}")
        colour = _median([self._prepare(f, ref.width, ref.height).colour for f in frames])
        frame = self._from_colour(colour, ref)
        frame, shift, response = self._register(frame, ref)
        if response >= self.settings.min_shift_response and math.hypot(*shift) > self.settings.max_shift_px:
            raise CameraMovedError(
                f"camera {self.camera_id}: view moved {shift}; re-capture the whole reference"
            )
        fit = fit_lighting(frame.g, ref.g, ref.static_g)
        colour_n = normalise_lighting_colour(frame.colour, fit)
        new_colour = ref.colour.copy()
        wanted = set(roi_ids)
        for geom in ref.rois:
            if geom.roi.roi_id in wanted:
                sl = geom.a_paste_slice
                new_colour[sl][geom.a_paste_mask] = colour_n[sl][geom.a_paste_mask]
        self._ref = self._build_reference(new_colour, ref.width, ref.height, self._rois)
        self._prev_g = None

    def set_rois(self, rois: Sequence[Roi]) -> None:
        """Replace the ROIs (installer edits); keeps the reference image."""
        check_unique(rois)
        if not rois:
            raise ValueError(f"camera {self.camera_id}: at least one ROI is needed")
        if self._ref is not None:
            for roi in rois:
                roi.check_fits(self._ref.width, self._ref.height)
            self._ref = self._build_reference(
                self._ref.colour, self._ref.width, self._ref.height, tuple(rois)
            )
        self._rois = tuple(rois)
        self._prev_g = None

    # --- per frame -------------------------------------------------------------------------------------------

    def analyse(self, image: Image) -> FrameAnalysis:
        """Judge every ROI in one frame (or say why not)."""
        ref = self._ref
        if ref is None:
            return self._all_gated("no_reference", (0.0, 0.0), 0.0, 1.0)
        if image.ndim != 3 or image.shape[:2] != (ref.height, ref.width):
            return self._all_gated("frame_size", (0.0, 0.0), 0.0, 1.0)
        s = self.settings
        frame, shift, response = self._register(self._prepare(image, ref.width, ref.height), ref)
        trusted = response >= s.min_shift_response
        if trusted and math.hypot(*shift) > s.max_shift_px:
            self._moved_streak += 1
            if self._moved_streak >= s.moved_after_frames:
                self._moved = True
            self._prev_g = None
            return self._all_gated("camera_moved", shift, response, 1.0)
        if trusted:
            self._moved_streak = 0
            self._moved = False
        elif self._moved:
            return self._all_gated("camera_moved", shift, response, 1.0)

        fit = fit_lighting(frame.g, ref.g, ref.static_g)
        g_n = normalise_lighting(frame.g, fit)
        motion = None if self._prev_g is None else (cv2.absdiff(g_n, self._prev_g) > s.motion_threshold)
        self._prev_g = g_n
        occluder = self._occluders(normalise_lighting_colour(frame.g_colour, fit), ref)
        gates = [self._gate(geom, occluder, motion) for geom in ref.rois]

        observations: list[RoiObservation] = []
        if any(gate is None for gate in gates):
            colour_n = normalise_lighting_colour(frame.colour, fit)
            grey_n = normalise_lighting(frame.grey, fit)
            names = self._metric_names
            ssim = ssim_map(grey_n, ref.ssim) if ("ssim" in names or "joint" in names) else None
            edges = u8(cv2.Canny(to_u8(grey_n), CANNY_LOW, CANNY_HIGH)) if "edges" in names else None
            hsv = u8(cv2.cvtColor(to_u8(colour_n), cv2.COLOR_BGR2HSV)) if "hist" in names else None
            delta = (
                channel_max_absdiff(colour_n, ref.colour) if ("diff" in names or "joint" in names) else None
            )
        for geom, gate in zip(ref.rois, gates, strict=True):
            if gate is not None:
                observations.append(RoiObservation(geom.roi.roi_id, None, None, gate))
                continue
            values = self._metrics(geom, delta, ssim, edges, hsv)
            score = sum(
                self._weights[name] * value for name, value in values.items() if name in self._weights
            )
            observations.append(
                RoiObservation(
                    geom.roi.roi_id,
                    self.state_for(score),
                    round(score, 4),
                    None,
                    tuple((name, round(value, 4)) for name, value in values.items()),
                )
            )
        return FrameAnalysis(tuple(observations), shift, response, False, round(fit.mean_gain, 4))

    def state_for(self, score: float) -> FacingState:
        """The state a fill score means (thresholds from the settings)."""
        if score < self.settings.empty_below:
            return "empty"
        if score < self.settings.low_below:
            return "low"
        return "ok"

    # --- internals -------------------------------------------------------------------------------------------

    def _require_reference(self) -> _Reference:
        if self._ref is None:
            raise ValueError(f"camera {self.camera_id}: no reference captured yet")
        return self._ref

    def _sizes(self, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int]]:
        aw = min(self.settings.analysis_width_px, width)
        ah = max(8, round(height * aw / width))
        return (aw, ah), (max(8, aw // 2), max(8, ah // 2))

    def _prepare(self, image: Image, width: int, height: int) -> _Prepared:
        """Downscale (INTER_AREA averages, so noise drops too) and blur: colour and grey at A, grey at G."""
        (aw, ah), (gw, gh) = self._sizes(width, height)
        small = cv2.resize(image, (aw, ah), interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (0, 0), BLUR_SIGMA_PX)
        grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        g = cv2.resize(grey, (gw, gh), interpolation=cv2.INTER_AREA)
        g_colour = cv2.resize(small, (gw, gh), interpolation=cv2.INTER_AREA)
        return _Prepared(f32(small), f32(grey), f32(g), f32(g_colour))

    @staticmethod
    def _from_colour(colour: Colour, ref: _Reference) -> _Prepared:
        size = (ref.g.shape[1], ref.g.shape[0])
        grey = f32(cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY))
        g = f32(cv2.resize(grey, size, interpolation=cv2.INTER_AREA))
        return _Prepared(colour, grey, g, f32(cv2.resize(colour, size, interpolation=cv2.INTER_AREA)))

    def _register(self, frame: _Prepared, ref: _Reference) -> tuple[_Prepared, tuple[float, float], float]:
        """Estimate the shift against the reference; translate small, trusted shifts back."""
        dx_g, dy_g, response = estimate_shift(ref.g, frame.g, ref.hann)
        to_full = ref.width / frame.g.shape[1]
        shift = (round(dx_g * to_full, 2), round(dy_g * to_full, 2))
        if (
            response >= self.settings.min_shift_response
            and math.hypot(*shift) <= self.settings.max_shift_px
            and math.hypot(dx_g, dy_g) >= 0.1
        ):
            a_per_g = frame.grey.shape[1] / frame.g.shape[1]
            frame = _Prepared(
                translate(frame.colour, -dx_g * a_per_g, -dy_g * a_per_g),
                translate(frame.grey, -dx_g * a_per_g, -dy_g * a_per_g),
                translate(frame.g, -dx_g, -dy_g),
                translate(frame.g_colour, -dx_g, -dy_g),
            )
        return frame, shift, round(response, 4)

    def _occluders(self, g_colour_n: Colour, ref: _Reference) -> Mask | None:
        """Changed blobs that reach outside every ROI: something in front of the shelf, not a stock change.

        Change is measured in colour (largest channel change): skin or clothes in front of a product of the
        same brightness would be invisible in grey."""
        s = self.settings
        changed = u8(channel_max_absdiff(g_colour_n, ref.g_colour) > s.change_threshold)
        changed = u8(cv2.morphologyEx(changed, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)))
        n, labels = cv2.connectedComponents(changed, connectivity=8)
        if n <= 1:
            return None
        outside = np.bincount(labels[ref.static_g], minlength=n)
        is_occluder = outside >= s.occluder_min_px
        is_occluder[0] = False
        if not is_occluder.any():
            return None
        mask: Mask = is_occluder[labels]
        return mask

    def _gate(self, geom: _RoiGeometry, occluder: Mask | None, motion: Mask | None) -> GateReason | None:
        if occluder is not None:
            hits = int(np.count_nonzero(occluder[geom.g_slice] & geom.g_mask))
            # An occluder covers this facing only if it also covers the facing's own ring of static shelf:
            # a row of emptied facings can join a shopper's blob through the gaps between facings, but an
            # emptied facing leaves its shelf lip and the panel above it unchanged.
            in_ring = (
                MIN_OCCLUDER_PX_IN_ROI
                if geom.ring_slice is None or geom.ring_mask is None
                else int(np.count_nonzero(occluder[geom.ring_slice] & geom.ring_mask))
            )
            if hits >= MIN_OCCLUDER_PX_IN_ROI and in_ring >= MIN_OCCLUDER_PX_IN_ROI:
                return "occluded"
        if motion is not None:
            moving = int(np.count_nonzero(motion[geom.g_slice] & geom.g_mask))
            if moving > self.settings.motion_min_fraction * geom.area_g:
                return "motion"
        return None

    def _metrics(
        self,
        geom: _RoiGeometry,
        delta: Gray | None,
        ssim: Gray | None,
        edges: NDArray[np.uint8] | None,
        hsv: NDArray[np.uint8] | None,
    ) -> dict[MetricName, float]:
        s = self.settings
        sl, m = geom.a_slice, geom.a_mask
        out: dict[MetricName, float] = {}
        for name in self._metric_names:
            if name == "diff" and delta is not None:
                # colour distance: the largest per-channel change (products and shelf backs often share
                # brightness but not colour)
                out[name] = 1.0 - np.count_nonzero((delta[sl] > s.diff_threshold) & m) / geom.area_a
            elif name == "joint" and ssim is not None and delta is not None:
                same = (delta[sl] <= s.diff_threshold) & (ssim[sl] > s.ssim_threshold) & m
                out[name] = np.count_nonzero(same) / geom.area_a
            elif name == "ssim" and ssim is not None:
                out[name] = np.count_nonzero((ssim[sl] > s.ssim_threshold) & m) / geom.area_a
            elif name == "edges" and edges is not None:
                density = np.count_nonzero(edges[sl] & geom.a_mask_u8) / geom.area_a
                out[name] = 1.0 if geom.ref_edge_density < 1e-3 else min(1.0, density / geom.ref_edge_density)
            elif name == "hist" and hsv is not None and geom.ref_hist is not None:
                hist = _hs_histogram(hsv[sl], geom.a_mask_u8)
                out[name] = max(0.0, float(cv2.compareHist(hist, geom.ref_hist, cv2.HISTCMP_CORREL)))
        return {k: float(v) for k, v in out.items()}

    def _all_gated(
        self, reason: GateReason, shift: tuple[float, float], response: float, gain: float
    ) -> FrameAnalysis:
        obs = tuple(RoiObservation(r.roi_id, None, None, reason) for r in self._rois)
        return FrameAnalysis(obs, shift, response, self._moved, gain)

    def _build_reference(self, colour: Colour, width: int, height: int, rois: Sequence[Roi]) -> _Reference:
        (aw, ah), (gw, gh) = self._sizes(width, height)
        grey = f32(cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY))
        ref_g = f32(cv2.resize(grey, (gw, gh), interpolation=cv2.INTER_AREA))
        hann = f32(cv2.createHanningWindow((gw, gh), cv2.CV_32F))
        a_scale, g_scale = aw / width, gw / width
        margin_a = max(1, round(self.settings.roi_margin_px * a_scale))
        margin_g = max(1, round(self.settings.roi_margin_px * g_scale))
        union_g = np.zeros((gh, gw), np.uint8)
        geoms: list[_RoiGeometry] = []
        ref_edges = u8(cv2.Canny(to_u8(grey), CANNY_LOW, CANNY_HIGH))
        ref_hsv = u8(cv2.cvtColor(to_u8(colour), cv2.COLOR_BGR2HSV))
        for roi in rois:
            a_full = _poly_mask(roi, a_scale, (ah, aw))
            a_slice, a_mask = _crop(a_full)
            paste_slice, paste_mask = _crop(u8(cv2.dilate(a_full, _disc(margin_a))))
            g_grown = u8(cv2.dilate(_poly_mask(roi, g_scale, (gh, gw)), _disc(margin_g)))
            union_g |= g_grown
            g_slice, g_mask = _crop(g_grown)
            mask_u8 = a_mask.astype(np.uint8) * 255
            area_a = max(1, int(a_mask.sum()))
            geom = _RoiGeometry(
                roi,
                a_slice,
                a_mask,
                mask_u8,
                paste_slice,
                paste_mask,
                area_a,
                g_slice,
                g_mask,
                int(g_mask.sum()),
            )
            geom.ref_edge_density = float(np.count_nonzero(ref_edges[a_slice] & mask_u8)) / area_a
            geom.ref_hist = _hs_histogram(ref_hsv[a_slice], mask_u8)
            geoms.append(geom)
        static_g = union_g == 0
        border = max(2, gw // 80)
        static_g[:border] = False
        static_g[-border:] = False
        static_g[:, :border] = False
        static_g[:, -border:] = False
        if static_g.mean() < MIN_STATIC_SHARE:
            static_g[:] = False  # the lighting fit then samples everything; no occluder test possible
        ring_g = max(1, round(self.settings.occluder_ring_px * g_scale))
        for geom in geoms:
            outer = u8(cv2.dilate(_poly_mask(geom.roi, g_scale, (gh, gw)), _disc(margin_g + ring_g)))
            ring = (outer > 0) & static_g
            if int(ring.sum()) >= 2 * MIN_OCCLUDER_PX_IN_ROI:  # else: ROIs wall to wall, any overlap counts
                geom.ring_slice, geom.ring_mask = _crop(u8(ring))
        g_colour = f32(cv2.resize(colour, (gw, gh), interpolation=cv2.INTER_AREA))
        return _Reference(
            width, height, colour, grey, ref_g, g_colour, hann, ssim_reference(grey), static_g, geoms
        )


def _median(frames: list[Colour]) -> Colour:
    if len(frames) == 1:
        return frames[0]
    out: Colour = np.median(np.stack(frames), axis=0).astype(np.float32)
    return out


def _poly_mask(roi: Roi, scale: float, shape: tuple[int, int]) -> NDArray[np.uint8]:
    mask = np.zeros(shape, np.uint8)
    shift_bits = 4  # sub-pixel vertices: fillPoly's fixed-point coordinates (OpenCV docs, `shift`)
    pts = np.array([[round(x * scale * 16), round(y * scale * 16)] for x, y in roi.polygon], np.int32)
    cv2.fillPoly(mask, [pts], (1,), lineType=cv2.LINE_8, shift=shift_bits)
    if not mask.any():  # a sliver thinner than a pixel at this scale: keep its centre pixel
        cx = min(shape[1] - 1, round(sum(p[0] for p in roi.polygon) / len(roi.polygon) * scale))
        cy = min(shape[0] - 1, round(sum(p[1] for p in roi.polygon) / len(roi.polygon) * scale))
        mask[cy, cx] = 1
    return mask


def _crop(mask: NDArray[np.uint8]) -> tuple[tuple[slice, slice], Mask]:
    ys, xs = np.nonzero(mask)
    sl = (slice(int(ys.min()), int(ys.max()) + 1), slice(int(xs.min()), int(xs.max()) + 1))
    cropped: Mask = mask[sl] > 0
    return sl, cropped


def _disc(radius: int) -> NDArray[np.uint8]:
    size = 2 * radius + 1
    return u8(cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)))


def _hs_histogram(hsv: NDArray[np.uint8], mask: NDArray[np.uint8]) -> NDArray[np.float32]:
    """Hue–saturation histogram (OpenCV tutorial "Histogram Comparison"): brightness-independent."""
    hist = cv2.calcHist([hsv], [0, 1], mask, [HUE_BINS, SAT_BINS], [0, 180, 0, 256])
    total = float(hist.sum())
    return f32(hist) / np.float32(total) if total > 0 else f32(hist)


__all__ = [
    "CameraMovedError",
    "FrameAnalysis",
    "GateReason",
    "RoiObservation",
    "ShelfAnalyser",
]
