"""ShelfAnalyser on simulated frames: states, lighting, re-registration, camera moved, gating, re-capture."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edge.vision import CameraMovedError, Roi, ShelfAnalyser, VisionSettings
from firmware_sims.camera import CameraScript, ShelfSim

from .conftest import QUIET, rois_of


def test_rois_are_validated() -> None:
    with pytest.raises(ValueError, match="at least 3 points"):
        Roi("a", "sku", ((0, 0), (1, 1)))
    with pytest.raises(ValueError, match="no area"):
        Roi("a", "sku", ((0, 0), (5, 5), (10, 10)))
    with pytest.raises(ValueError, match="positive"):
        Roi.rect("a", "sku", 0, 0, 0, 10)
    with pytest.raises(ValueError, match="duplicate ROI id"):
        ShelfAnalyser("c", [Roi.rect("a", "s", 0, 0, 5, 5), Roi.rect("a", "s", 5, 5, 5, 5)])
    analyser = ShelfAnalyser("c", [Roi.rect("a", "s", 1200, 700, 100, 100)])
    with pytest.raises(ValueError, match="outside the 1280×720 image"):
        analyser.capture_reference(np.zeros((720, 1280, 3), np.uint8))
    with pytest.raises(ValueError, match=r"settings|metric"):
        VisionSettings(fill_weights=(("colour", 1.0),))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty_below"):
        VisionSettings(empty_below=0.7, low_below=0.6)


def test_nothing_is_judged_without_a_reference_or_on_a_wrong_size(quiet_sim: ShelfSim) -> None:
    analyser = ShelfAnalyser("c", rois_of(quiet_sim))
    result = analyser.analyse(quiet_sim.image(0))
    assert {o.gate for o in result.observations} == {"no_reference"}
    analyser.capture_reference(quiet_sim.reference_image())
    small = np.zeros((360, 640, 3), np.uint8)
    assert {o.gate for o in analyser.analyse(small).observations} == {"frame_size"}


def test_stocked_shelf_is_ok_under_drifting_light(quiet_sim: ShelfSim) -> None:
    analyser = ShelfAnalyser("c", rois_of(quiet_sim))
    analyser.capture_reference(quiet_sim.reference_image())
    gains = []
    for i in range(0, 40, 4):
        result = analyser.analyse(quiet_sim.image(i))
        gains.append(quiet_sim.gain(i))
        assert [o.state for o in result.observations] == ["ok"] * 20
        assert result.lighting_gain == pytest.approx(quiet_sim.gain(i), rel=0.1)
    assert max(gains) - min(gains) > 0.05


def test_emptied_and_depleted_facings_are_seen() -> None:
    script = replace(QUIET, initial_units=(0.25, 0.25, 0.25, 0.0, 0.25), n_frames=3)
    sim = ShelfSim(23, script)
    analyser = ShelfAnalyser("c", rois_of(sim))
    analyser.capture_reference(sim.reference_image())
    frame = sim.frame(0)
    result = analyser.analyse(frame.image)
    states = [o.state for o in result.observations]
    truth = [t.state for t in frame.truth]
    assert states == truth
    assert {"ok", "low", "empty"} <= set(truth)
    for obs, t in zip(result.observations, frame.truth, strict=True):
        assert obs.score is not None
        assert obs.score == pytest.approx(t.fill, abs=0.25)


def test_small_shift_is_re_registered_and_a_large_one_is_camera_moved() -> None:
    small = replace(QUIET, n_frames=6, shift_at=2, shift_px=(7.0, -5.0))
    sim = ShelfSim(29, small)
    analyser = ShelfAnalyser("c", rois_of(sim))
    analyser.capture_reference(sim.reference_image())
    for i in range(6):
        result = analyser.analyse(sim.image(i))
        assert not result.camera_moved
        if i == 2:
            # the frame the camera is bumped in: facings may be held back as "motion", never misjudged
            assert {o.state for o in result.observations} <= {"ok", None}
        else:
            assert [o.state for o in result.observations] == ["ok"] * 20
    assert result.shift_px[0] == pytest.approx(7.0, abs=1.5)
    assert result.shift_px[1] == pytest.approx(-5.0, abs=1.5)

    large = replace(QUIET, n_frames=8, shift_at=2, shift_px=(60.0, 25.0))
    sim = ShelfSim(29, large)
    analyser = ShelfAnalyser("c", rois_of(sim), VisionSettings(moved_after_frames=3))
    analyser.capture_reference(sim.reference_image())
    moved = [analyser.analyse(sim.image(i)).camera_moved for i in range(8)]
    assert moved == [False, False, False, False, True, True, True, True]
    result = analyser.analyse(sim.image(7))
    assert {o.gate for o in result.observations} == {"camera_moved"}
    with pytest.raises(CameraMovedError):
        analyser.recapture(sim.image(7), ["r0c0"])
    analyser.capture_reference(sim.image(7))  # the installer re-commissions the moved camera
    assert not analyser.camera_moved
    assert [o.state for o in analyser.analyse(sim.image(7)).observations] == ["ok"] * 20


def test_person_in_front_is_gated_not_judged_empty() -> None:
    script = CameraScript(
        n_frames=36,
        pick_prob=0.0,
        restock_prob=0.0,
        walker_prob=0.0,
        stander_prob=0.5,
        stander_frames=(12, 20),
        initial_units=(0.0, 0.0, 0.0, 0.0, 1.0),
    )
    sim = ShelfSim(31, script)
    analyser = ShelfAnalyser("c", rois_of(sim))
    analyser.capture_reference(sim.reference_image())
    blocked = 0
    for i in range(36):
        frame = sim.frame(i)
        result = analyser.analyse(frame.image)
        for obs, truth in zip(result.observations, frame.truth, strict=True):
            if truth.occluded_fraction > 0:
                blocked += 1
                assert obs.state is None
                assert obs.gate in {"occluded", "motion"}
    assert blocked > 50  # someone stood in front of several facings for many frames


def test_partial_recapture_adopts_a_new_look() -> None:
    sim = ShelfSim(37, replace(QUIET, n_frames=2))
    other = ShelfSim(38, replace(QUIET, n_frames=2))  # different products on the same shelf layout
    rois = rois_of(sim)
    analyser = ShelfAnalyser("c", rois)
    analyser.capture_reference(sim.reference_image())
    # facing r1c1 restocked with another product: paste the other shelf's facing into this view
    f = next(x for x in sim.facings if x.roi_id == "r1c1")
    g = next(x for x in other.facings if x.roi_id == "r1c1")
    restocked = sim.image(0).copy()
    h = min(f.h, g.h)
    restocked[f.y + f.h - h : f.y + f.h, f.x : f.x + f.w] = other.image(0)[
        g.y + g.h - h : g.y + g.h, g.x : g.x + g.w
    ]
    before = {o.roi_id: o.state for o in analyser.analyse(restocked).observations}
    assert before["r1c1"] != "ok"
    with pytest.raises(ValueError, match="unknown ROI"):
        analyser.recapture(restocked, ["nope"])
    analyser.recapture(restocked, ["r1c1"])
    after = {o.roi_id: o.state for o in analyser.analyse(restocked).observations}
    assert after == dict.fromkeys(after, "ok")


def test_results_hold_numbers_only(quiet_sim: ShelfSim) -> None:
    analyser = ShelfAnalyser("c", rois_of(quiet_sim), VisionSettings(report_metrics=("edges", "hist")))
    analyser.capture_reference(quiet_sim.reference_image())
    result = analyser.analyse(quiet_sim.image(1))
    names = {name for name, _ in result.observations[0].metrics}
    assert names == {"joint", "edges", "hist"}
    for obs in result.observations:
        for _, value in obs.metrics:
            assert isinstance(value, float)
            assert 0.0 <= value <= 1.0
