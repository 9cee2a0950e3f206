"""Pure image helpers of the shelf analyser: lighting normalisation, shift estimate, SSIM map.

All functions take and return float32 grey images; none keeps state, touches a clock or logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TypeAlias

import cv2
import numpy as np
from numpy.typing import NDArray

Gray: TypeAlias = NDArray[np.float32]
"""Grey image, H × W float32."""
Colour: TypeAlias = NDArray[np.float32]
"""BGR image, H × W × 3 float32."""
Mask: TypeAlias = NDArray[np.bool_]


def f32(mat: object) -> Gray:
    """OpenCV's stubs return `MatLike` (any numeric dtype); this states the float32 we know it is (no copy)."""
    return np.asarray(mat, dtype=np.float32)


def u8(mat: object) -> NDArray[np.uint8]:
    """As `f32`, for 8-bit results (masks, Canny edges, HSV)."""
    return np.asarray(mat, dtype=np.uint8)


LOG_OFFSET: Final = 8.0
"""Added before the log in the lighting model: keeps near-black pixels (noise) from dominating the fit."""

SSIM_C1: Final = (0.01 * 255) ** 2
SSIM_C2: Final = (0.03 * 255) ** 2
"""SSIM stabilisers for 8-bit data, K1 = 0.01 and K2 = 0.03 (Wang, Bovik, Sheikh, Simoncelli, "Image quality
assessment: from error visibility to structural similarity", IEEE TIP 13(4), 2004, eq. 13)."""

SSIM_SIGMA: Final = 1.5
"""The paper's 11×11 Gaussian window with σ 1.5 (OpenCV picks the kernel size from σ)."""

FIT_MAX_SAMPLES: Final = 4000
FIT_KEEP: Final = 0.6
"""The lighting fit keeps the 60 % best-fitting samples in its second pass: occluders and emptied facings are
outliers, and up to ~40 % of the static area may be covered before they bias the fit."""


@dataclass(frozen=True, slots=True)
class LightingFit:
    """Gain field (cur + 8) ≈ exp(c0 + cx·x + cy·y) · (ref + 8), with x, y in [-0.5, 0.5] across the image."""

    c0: float
    cx: float
    cy: float

    @property
    def mean_gain(self) -> float:
        return float(np.exp(self.c0))

    def field(self, width: int, height: int) -> Gray:
        """The gain per pixel. The plane is separable in log space, so the field is an outer product of two
        1-D exponentials — no exp over the whole grid."""
        ex = np.exp(np.float32(self.cx) * np.linspace(-0.5, 0.5, width, dtype=np.float32))
        ey = np.exp(np.float32(self.cy) * np.linspace(-0.5, 0.5, height, dtype=np.float32))
        out: Gray = (np.float32(np.exp(self.c0)) * np.outer(ey, ex)).astype(np.float32)
        return out


IDENTITY_LIGHTING: Final = LightingFit(0.0, 0.0, 0.0)


def fit_lighting(cur: Gray, ref: Gray, sample: Mask) -> LightingFit:
    """Robust planar fit of the log gain between `cur` and `ref` over the `sample` pixels.

    A plane in log space models a global brightness change plus a left-right / top-bottom gradient (a lamp
    on one side, daylight from a window), which is what slow store lighting does; real shadows and occluders
    are left as residuals for the gate to see. Two least-squares passes, the second on the `FIT_KEEP` share of
    samples with the smallest residuals.
    """
    ys, xs = np.nonzero(sample)
    if ys.size < 16:
        ys, xs = np.nonzero(np.ones_like(sample))
    if ys.size > FIT_MAX_SAMPLES:
        step = ys.size // FIT_MAX_SAMPLES + 1
        ys, xs = ys[::step], xs[::step]
    h, w = cur.shape
    target = np.log(cur[ys, xs] + LOG_OFFSET) - np.log(ref[ys, xs] + LOG_OFFSET)
    design = np.stack(
        [np.ones(ys.size, np.float32), xs / max(w - 1, 1) - 0.5, ys / max(h - 1, 1) - 0.5], axis=1
    ).astype(np.float32)
    coef = np.linalg.lstsq(design, target, rcond=None)[0]
    residual = np.abs(design @ coef - target)
    keep = residual <= np.quantile(residual, FIT_KEEP)
    if int(keep.sum()) >= 8:
        coef = np.linalg.lstsq(design[keep], target[keep], rcond=None)[0]
    return LightingFit(float(coef[0]), float(coef[1]), float(coef[2]))


def normalise_lighting(cur: Gray, fit: LightingFit) -> Gray:
    """Undo a fitted gain field: the result is `cur` as it would look under the reference's lighting."""
    h, w = cur.shape[:2]
    return f32(cv2.divide(cur + np.float32(LOG_OFFSET), fit.field(w, h))) - np.float32(LOG_OFFSET)


def normalise_lighting_colour(cur: Colour, fit: LightingFit) -> Colour:
    """`normalise_lighting` for each channel of a BGR image (one gain field for all three)."""
    h, w = cur.shape[:2]
    field3 = cv2.merge([fit.field(w, h)] * 3)
    return f32(cv2.divide(cur + np.float32(LOG_OFFSET), field3)) - np.float32(LOG_OFFSET)


def channel_max_absdiff(a: Colour, b: Colour) -> Gray:
    """Per pixel, the largest absolute change over the B, G, R channels (OpenCV ops: numpy's reduction over
    the last axis is several times slower)."""
    blue, green, red = cv2.split(cv2.absdiff(a, b))
    return f32(cv2.max(cv2.max(blue, green), red))


def estimate_shift(ref: Gray, cur: Gray, window: Gray) -> tuple[float, float, float]:
    """(dx, dy, response): how far `cur` is displaced from `ref`, by phase correlation (OpenCV
    `phaseCorrelate`, Hann-windowed against edge effects); response is the normalised peak (≈1 for a clean
    translation, near 0 when the views do not match).

    Both inputs are copied: OpenCV 5.0.0's `phaseCorrelate` multiplies its inputs by the window *in place*
    (found here: the reference was being eaten frame by frame; `test_imaging.py` pins the workaround).
    """
    (dx, dy), response = cv2.phaseCorrelate(ref.copy(), cur.copy(), window)
    return float(dx), float(dy), float(response)


def translate(img: Gray, dx: float, dy: float) -> Gray:  # also used for Colour (same dtype)
    """Move `img` by (dx, dy) pixels (sub-pixel, border replicated)."""
    m = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]], dtype=np.float32)
    h, w = img.shape[:2]
    return f32(cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))


@dataclass(frozen=True, slots=True)
class SsimReference:
    """The reference's half of the SSIM map, computed once per reference."""

    ref: Gray
    mu: Gray
    var: Gray


def ssim_reference(ref: Gray) -> SsimReference:
    mu = f32(cv2.GaussianBlur(ref, (0, 0), SSIM_SIGMA))
    var = f32(cv2.GaussianBlur(ref * ref, (0, 0), SSIM_SIGMA)) - mu * mu
    return SsimReference(ref, mu, var)


def ssim_map(cur: Gray, ref: SsimReference) -> Gray:
    """Local SSIM of `cur` against the reference (Wang et al. 2004, eq. 13), per pixel."""
    mu = f32(cv2.GaussianBlur(cur, (0, 0), SSIM_SIGMA))
    var = f32(cv2.GaussianBlur(cur * cur, (0, 0), SSIM_SIGMA)) - mu * mu
    cov = f32(cv2.GaussianBlur(cur * ref.ref, (0, 0), SSIM_SIGMA)) - mu * ref.mu
    num = (2 * mu * ref.mu + SSIM_C1) * (2 * cov + SSIM_C2)
    den = (mu * mu + ref.mu * ref.mu + SSIM_C1) * (var + ref.var + SSIM_C2)
    out: Gray = (num / den).astype(np.float32)
    return out


def to_u8(img: Gray) -> NDArray[np.uint8]:
    out: NDArray[np.uint8] = np.clip(img, 0, 255).astype(np.uint8)
    return out
