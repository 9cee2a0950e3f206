"""The synthetic shelf camera: deterministic by seed, random access, truthful ground truth, every effect drawn."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest

from firmware_sims.camera import CameraScript, ShelfSim, facing_state, write_video


def test_frames_are_deterministic_by_seed_and_random_access() -> None:
    script = CameraScript(n_frames=30)
    a, b = ShelfSim(7, script), ShelfSim(7, script)
    later_first = a.frame(9)
    assert np.array_equal(a.frame(5).image, b.frame(5).image)  # order of rendering does not matter
    assert np.array_equal(later_first.image, b.frame(9).image)
    assert a.frame(5).truth == b.frame(5).truth
    assert not np.array_equal(a.frame(5).image, ShelfSim(8, script).frame(5).image)
    assert np.array_equal(a.frame(30 + 4).image, a.frame(4).image)  # the stream wraps around


def test_reference_is_fully_stocked_and_truth_follows_the_units() -> None:
    sim = ShelfSim(3, CameraScript(n_frames=80))
    assert len(sim.facings) == 20
    assert {f.roi_id for f in sim.facings} == {f"r{r}c{c}" for r in range(4) for c in range(5)}
    seen_states = set()
    for i in range(len(sim)):
        for truth in sim.truth(i):
            assert truth.state == facing_state(truth.units, sim.capacity)
            assert truth.fill == truth.units / sim.capacity
            seen_states.add(truth.state)
    assert seen_states == {"ok", "low", "empty"}
    assert facing_state(0, 4) == "empty"
    assert facing_state(2, 4) == "low"
    assert facing_state(3, 4) == "ok"


def test_stock_changes_happen_behind_an_arm() -> None:
    sim = ShelfSim(3, CameraScript(n_frames=120, walker_prob=0.0, stander_prob=0.0))
    truths = [sim.truth(i) for i in range(len(sim))]
    assert truths[7] == sim.frame(7).truth  # the pixel-free truth is the rendered frame's truth
    changes = 0
    for before, after in itertools.pairwise(truths):
        for t0, t1 in zip(before, after, strict=True):
            if t0.units != t1.units:
                changes += 1
                # a pick/restock shows the arm in the facing on the frame the units change
                assert t1.occluded_fraction > 0
    assert changes >= 5


def test_shoppers_occlude_facings_and_the_occlusion_is_drawn() -> None:
    sim = ShelfSim(3, CameraScript(n_frames=60, pick_prob=0.0, restock_prob=0.0, walker_prob=0.3))
    blocked = [i for i in range(len(sim)) if any(t.occluded_fraction > 0.2 for t in sim.truth(i))]
    assert blocked
    frame = sim.frame(blocked[0])
    clean = sim.reference_image()
    roi = next(t for t in frame.truth if t.occluded_fraction > 0.2)
    f = next(x for x in sim.facings if x.roi_id == roi.roi_id)
    patch_now = frame.image[f.y : f.y + f.h, f.x : f.x + f.w].astype(np.float32)
    patch_ref = clean[f.y : f.y + f.h, f.x : f.x + f.w].astype(np.float32)
    assert float(np.mean(np.abs(patch_now - patch_ref))) > 20.0


def test_lighting_drifts_and_steps() -> None:
    sim = ShelfSim(
        5,
        CameraScript(
            n_frames=100,
            light_step_at=50,
            light_step=-0.3,
            walker_prob=0.0,
            stander_prob=0.0,
            pick_prob=0.0,
            restock_prob=0.0,
        ),
    )
    gains = [sim.gain(i) for i in range(0, 100, 5)]
    assert max(gains) - min(gains) > 0.2
    before, after = sim.frame(49), sim.frame(50)
    assert float(after.image.mean()) < 0.85 * float(before.image.mean())


def test_camera_shift_moves_the_whole_image() -> None:
    script = CameraScript(
        n_frames=20,
        shift_at=10,
        shift_px=(6.0, -4.0),
        walker_prob=0.0,
        stander_prob=0.0,
        pick_prob=0.0,
        restock_prob=0.0,
        lighting_amplitude=0.0,
        gradient_amplitude=0.0,
    )
    sim = ShelfSim(2, script)
    assert sim.frame(9).shift_px == (0.0, 0.0)
    assert sim.frame(10).shift_px == (6.0, -4.0)
    a = cv2.cvtColor(sim.frame(9).image, cv2.COLOR_BGR2GRAY).astype(np.float32)
    b = cv2.cvtColor(sim.frame(10).image, cv2.COLOR_BGR2GRAY).astype(np.float32)
    (dx, dy), _ = cv2.phaseCorrelate(a.copy(), b.copy())
    assert dx == pytest.approx(6.0, abs=0.5)
    assert dy == pytest.approx(-4.0, abs=0.5)


def test_stream_source_serves_the_frames() -> None:
    sim = ShelfSim(1, CameraScript(n_frames=5))
    source = sim.source()
    source.open()
    for i in range(3):
        source.grab()
        assert np.array_equal(source.retrieve(), sim.image(i))
    source.close()


def test_write_video_rejects_mixed_sizes(tmp_path: Path) -> None:
    frames = [np.zeros((32, 32, 3), np.uint8), np.zeros((16, 32, 3), np.uint8)]
    with pytest.raises(ValueError, match="expected 32×32"):
        write_video(tmp_path / "bad.avi", frames)
    assert write_video(tmp_path / "empty.avi", []) == 0


def test_script_validation() -> None:
    with pytest.raises(ValueError, match="initial_units"):
        CameraScript(initial_units=(0.5, 0.5))
    with pytest.raises(ValueError, match="n_frames"):
        CameraScript(n_frames=0)
