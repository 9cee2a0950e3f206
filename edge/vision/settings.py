"""Tuning of the shelf analyser, frozen and validated once (STYLE.md rule 11).

The defaults were chosen by measurement on the synthetic set (`bench/bench_camera.py compare` and `gate`; results and
the comparison table in `docs/cameras.md`): which metrics enter the fill score and with what weight, the
state thresholds on that score, and the gate thresholds. Intensities are 8-bit grey levels after lighting
normalisation; pixel sizes are full-resolution (reference-image) pixels unless the name says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, TypeAlias, get_args

MetricName: TypeAlias = Literal["diff", "ssim", "joint", "edges", "hist"]
"""Fill metrics, each in [0, 1] (1 = looks like the stocked reference):

* `diff`  — share of the ROI whose normalised grey level is within `diff_threshold` of the reference;
* `ssim`  — share of the ROI whose local SSIM (Wang et al. 2004, 7×7 Gaussian window σ 1.5) against the
  reference exceeds `ssim_threshold`, on the downscaled grey image;
* `joint` — share of the ROI where both hold at once (same colour AND same local structure);
* `edges` — Canny edge density relative to the reference's (capped at 1);
* `hist`  — correlation of the 32-bin grey histograms (negative clipped to 0).
"""

METRIC_NAMES: Final[tuple[MetricName, ...]] = get_args(MetricName)


@dataclass(frozen=True, slots=True)
class VisionSettings:
    """One camera's analyser settings (shared by its ROIs)."""

    analysis_width_px: int = 640
    """Frames are analysed in grey at this width (720p → 640 × 360); gating and shift run at half of it."""
    fill_weights: tuple[tuple[MetricName, float], ...] = (("joint", 1.0),)
    """Metrics combined into the fill score, as weights (normalised by their sum). The default, `joint`
    (colour difference AND SSIM per pixel), had the best held-out accuracy and threshold margin of every
    single metric and weighted mean measured (docs/cameras.md, "Choosing the fill score")."""
    report_metrics: tuple[MetricName, ...] = ()
    """Extra metrics computed for comparison only (bench); they do not enter the score."""
    diff_threshold: float = 35.0
    ssim_threshold: float = 0.7
    empty_below: float = 0.16
    """Fill score below which a facing is `empty`."""
    low_below: float = 0.57
    """Fill score below which a facing is `low` (and at or above which it is `ok`)."""
    motion_threshold: float = 20.0
    """Grey-level change between consecutive analysed frames that counts as motion."""
    motion_min_fraction: float = 0.01
    """Share of an ROI (with its margin) in motion that keeps the ROI from being judged."""
    change_threshold: float = 30.0
    """Grey-level change against the reference that marks a pixel as changed (for occluder blobs)."""
    occluder_min_px: int = 20
    """A changed blob with at least this many pixels (at gate scale) outside every ROI is an occluder."""
    roi_margin_px: int = 16
    """Tolerance around each ROI: changes this close to an ROI still belong to it (loose drawing, blur)."""
    occluder_ring_px: int = 24
    """Width of the static ring outside an ROI's margin that an occluder of that ROI must also cover."""
    max_shift_px: float = 24.0
    """Camera shifts up to this are re-registered; beyond it (confidently, `moved_after_frames` frames in a
    row) the camera is reported moved and its facings become `unknown` until the reference is re-captured."""
    min_shift_response: float = 0.08
    """Phase-correlation peak below which the shift estimate is not trusted (view mostly hidden)."""
    moved_after_frames: int = 3
    confirm_frames: int = 3
    """N: a facing changes state only after N consecutive judged frames agree."""
    unknown_after_s: float = 120.0
    """A facing not judged for this long (hidden, camera gated) becomes `unknown`: stale is never fresh."""

    def __post_init__(self) -> None:
        if not 64 <= self.analysis_width_px <= 4096:
            raise ValueError("analysis_width_px must be in [64, 4096]")
        if not self.fill_weights:
            raise ValueError("fill_weights needs at least one metric")
        for name, weight in self.fill_weights:
            if name not in METRIC_NAMES:
                raise ValueError(f"unknown metric {name!r}; expected one of {', '.join(METRIC_NAMES)}")
            if weight <= 0:
                raise ValueError(f"metric {name}: weight must be positive")
        if len({n for n, _ in self.fill_weights}) != len(self.fill_weights):
            raise ValueError("a metric appears twice in fill_weights")
        for name in self.report_metrics:
            if name not in METRIC_NAMES:
                raise ValueError(f"unknown metric {name!r}")
        if not 0 <= self.empty_below < self.low_below <= 1:
            raise ValueError("need 0 <= empty_below < low_below <= 1")
        if self.confirm_frames < 1 or self.moved_after_frames < 1:
            raise ValueError("confirm_frames and moved_after_frames must be at least 1")
        if min(self.diff_threshold, self.motion_threshold, self.change_threshold) <= 0:
            raise ValueError("grey-level thresholds must be positive")
        if not 0 < self.motion_min_fraction < 1 or not -1 < self.ssim_threshold < 1:
            raise ValueError("motion_min_fraction must be in (0, 1) and ssim_threshold in (-1, 1)")
        if self.occluder_min_px < 1 or self.roi_margin_px < 0 or self.max_shift_px <= 0:
            raise ValueError("occluder_min_px >= 1, roi_margin_px >= 0 and max_shift_px > 0 are required")
        if self.occluder_ring_px < 1:
            raise ValueError("occluder_ring_px must be at least 1")
        if self.unknown_after_s <= 0:
            raise ValueError("unknown_after_s must be positive")

    @property
    def computed_metrics(self) -> tuple[MetricName, ...]:
        """Every metric the analyser computes: the scored ones, then the report-only ones."""
        names = [n for n, _ in self.fill_weights]
        return (*names, *(n for n in self.report_metrics if n not in names))
