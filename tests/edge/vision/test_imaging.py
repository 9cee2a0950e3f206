"""Pure image helpers: shift estimate (and the OpenCV 5.0 in-place quirk), lighting fit, SSIM."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray

from edge.vision.imaging import (
    LightingFit,
    estimate_shift,
    fit_lighting,
    normalise_lighting,
    ssim_map,
    ssim_reference,
    translate,
)


def textured(seed: int, h: int = 180, w: int = 320) -> NDArray[np.float32]:
    """A smooth random texture (upsampled noise) — something phase correlation and SSIM can lock onto."""
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 255, (h // 4, w // 4)).astype(np.float32)
    return np.asarray(cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC), np.float32).clip(0, 255)


def test_estimate_shift_finds_the_translation_and_leaves_inputs_alone() -> None:
    ref = textured(1)
    cur = translate(ref, 3.0, -2.0)
    window = np.asarray(cv2.createHanningWindow((320, 180), cv2.CV_32F), np.float32)
    ref_before, cur_before = ref.copy(), cur.copy()
    dx, dy, response = estimate_shift(ref, cur, window)
    assert dx == pytest.approx(3.0, abs=0.2)
    assert dy == pytest.approx(-2.0, abs=0.2)
    assert response > 0.3
    # OpenCV 5.0.0 multiplies phaseCorrelate's inputs by the window in place; the helper must copy.
    assert np.array_equal(ref, ref_before)
    assert np.array_equal(cur, cur_before)
    _, _, unrelated = estimate_shift(ref, textured(2), window)
    assert unrelated < response


def test_lighting_fit_recovers_a_gain_plane_despite_an_occluder() -> None:
    ref = textured(3) * np.float32(0.6) + np.float32(40)
    truth = LightingFit(float(np.log(0.7)), 0.3, -0.15)
    cur = ((ref + 8) * truth.field(320, 180) - 8).astype(np.float32)
    cur[40:140, 100:160] = 250.0  # something bright in front: an outlier for the fit
    fit = fit_lighting(cur, ref, np.ones(ref.shape, bool))
    assert fit.mean_gain == pytest.approx(0.7, rel=0.03)
    assert fit.cx == pytest.approx(0.3, abs=0.05)
    assert fit.cy == pytest.approx(-0.15, abs=0.05)
    restored = normalise_lighting(cur, fit)
    outside = np.ones(ref.shape, bool)
    outside[40:140, 100:160] = False
    assert float(np.abs(restored - ref)[outside].mean()) < 2.0


def test_ssim_map_is_one_for_identical_images_and_low_for_different_ones() -> None:
    ref = textured(4)
    same = ssim_map(ref.copy(), ssim_reference(ref))
    other = ssim_map(textured(5), ssim_reference(ref))
    assert float(same.mean()) == pytest.approx(1.0, abs=1e-3)
    assert float(other.mean()) < 0.3
