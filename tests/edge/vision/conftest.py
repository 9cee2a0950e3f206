"""Shared helpers: a small simulated shelf and its ROIs."""

from __future__ import annotations

import pytest

from edge.vision import Roi
from firmware_sims.camera import CameraScript, ShelfSim

QUIET = CameraScript(
    n_frames=40,
    pick_prob=0.0,
    restock_prob=0.0,
    walker_prob=0.0,
    stander_prob=0.0,
    initial_units=(0.0, 0.0, 0.0, 0.0, 1.0),
)
"""A shelf where nothing happens: every facing full, lighting drifting, nobody in front."""


def rois_of(sim: ShelfSim) -> list[Roi]:
    return [Roi.rect(f.roi_id, f.sku, f.x, f.y, f.w, f.h, bin_id=f.bin_id) for f in sim.facings]


@pytest.fixture(scope="module")
def quiet_sim() -> ShelfSim:
    return ShelfSim(17, QUIET)
