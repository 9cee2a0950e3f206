"""Layouts (validation, JSON round trip, profiles in sync); scenarios (ground truth, restock, demo timing)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from edge.config import load_config
from firmware_sims.layout import (
    SimLayout,
    SimTransmitter,
    layout_from_json,
    layout_to_json,
)
from firmware_sims.runner import build_shelves
from firmware_sims.scenario import ScriptedScenario, ScriptStep, StoreScenario
from firmware_sims.testing import WT_FLOAT32_CDAB, WT_INT32_ABCD, small_layout
from shelfgate.demo import layout_from_config

ROOT = Path(__file__).resolve().parents[2]


def demo_layout(seed: int = 0) -> SimLayout:
    """The demo store exactly as `shelfgate demo` and `shelfgate sim` map it (edge config → SimLayout)."""
    return layout_from_config(load_config(ROOT / "config" / "demo-store.yaml"), seed=seed)


def test_testing_maps_mirror_the_profile_files() -> None:
    cfg = load_config(ROOT / "config" / "demo-store.yaml")
    assert cfg.profiles["wt-int32-abcd"] == WT_INT32_ABCD
    assert cfg.profiles["wt-float32-cdab"] == WT_FLOAT32_CDAB


def test_layout_json_round_trip() -> None:
    for layout in (small_layout(noise_g=0.5, seed=9, tcp_port=5999), demo_layout(seed=3)):
        text = layout_to_json(layout)
        assert layout_from_json(text) == layout


def test_layout_rejects_contradictions() -> None:
    base = small_layout()
    with pytest.raises(ValueError, match="duplicate bin id"):
        dataclasses.replace(base, bins=(*base.bins, base.bins[0]))
    with pytest.raises(ValueError, match="unknown bus"):
        dataclasses.replace(
            base, transmitters=(*base.transmitters, SimTransmitter("tx9", "nope", 5, WT_INT32_ABCD))
        )
    with pytest.raises(ValueError, match="duplicate unit id"):
        dataclasses.replace(
            base, transmitters=(*base.transmitters, SimTransmitter("tx9", "tcp1", 1, WT_INT32_ABCD))
        )
    with pytest.raises(ValueError, match="channel 12 outside"):
        dataclasses.replace(base, bins=(dataclasses.replace(base.bins[3], channel=12),))
    with pytest.raises(ValueError, match="format"):
        layout_from_json('{"format": 99}')
    with pytest.raises(ValueError, match="invalid layout"):
        layout_from_json('{"buses": []}')


def test_store_scenario_ground_truth_is_consistent_and_never_negative() -> None:
    layout = small_layout(seed=1)
    shelves = build_shelves(layout)
    initial = {b: s.count for b, s in shelves.items()}
    scenario = StoreScenario(
        layout, shelves, shopper_rate_per_min=30.0, restock_delay_s=20.0, first_low_at_s=None
    )
    scenario.advance(4 * 3600.0)
    log = scenario.log
    assert len(log) > 1000
    assert all(c.count_after >= 0 for c in log)
    assert [c.t for c in log] == sorted(c.t for c in log)
    for bin_id, count in scenario.true_counts.items():
        assert initial[bin_id] + sum(c.delta for c in log if c.bin_id == bin_id) == count
        assert count == shelves[bin_id].count
    picks = [c for c in log if c.delta < 0]
    assert {-c.delta for c in picks} <= {1, 2, 3}


def test_restock_comes_restock_delay_after_a_bin_goes_low() -> None:
    layout = small_layout(seed=2)
    safety = {b.bin_id: b.safety_stock for b in layout.bins}
    max_stock = {b.bin_id: b.max_stock for b in layout.bins}
    scenario = StoreScenario(
        layout, build_shelves(layout), shopper_rate_per_min=20.0, restock_delay_s=45.0, first_low_at_s=None
    )
    scenario.advance(2 * 3600.0)
    restocks = [c for c in scenario.log if c.delta > 0]
    assert restocks, "a busy store must need a restock within two hours"
    low_since: dict[str, float] = {}
    for c in scenario.log:
        if c.delta > 0:
            assert c.count_after == max_stock[c.bin_id]
            assert c.t == pytest.approx(low_since.pop(c.bin_id) + 45.0)
        elif c.count_after < safety[c.bin_id]:
            low_since.setdefault(c.bin_id, c.t)
    assert all(due > 2 * 3600.0 - 45.0 for due in low_since.values())


def test_same_seed_same_store_run() -> None:
    def run(seed: int) -> list[tuple[float, str, int, int]]:
        layout = small_layout(seed=seed)
        scenario = StoreScenario(layout, build_shelves(layout), shopper_rate_per_min=10.0)
        scenario.advance(600.0)
        return list(scenario.log)

    assert run(4) == run(4)
    assert run(4) != run(5)


def test_demo_defaults_go_low_within_30_s_and_restock_soon_after() -> None:
    for seed in range(5):
        layout = demo_layout(seed=seed)
        assert len(layout.bins) == 44
        safety = {b.bin_id: b.safety_stock for b in layout.bins}
        scenario = StoreScenario(layout, build_shelves(layout))
        scenario.advance(60.0)
        first_low = next(c for c in scenario.log if c.count_after < safety[c.bin_id])
        assert first_low.t <= 30.0
        restock = next(c for c in scenario.log if c.delta > 0 and c.bin_id == first_low.bin_id)
        assert restock.t == pytest.approx(first_low.t + 10.0)


def test_scripted_scenario_applies_steps_in_order_and_refuses_negative_counts() -> None:
    layout = small_layout()
    shelves = build_shelves(layout)
    scenario = ScriptedScenario(
        shelves, [ScriptStep(2.0, "T1", +3), ScriptStep(1.0, "T1", -2), ScriptStep(3.0, "R3", -6)]
    )
    assert scenario.next_event_s() == 1.0
    assert scenario.advance(1.5) == [(1.0, "T1", -2, 7)]
    assert scenario.advance(10.0) == [(2.0, "T1", 3, 10), (3.0, "R3", -6, 0)]
    assert scenario.next_event_s() is None
    assert scenario.true_counts["R3"] == 0
    with pytest.raises(ValueError, match="below zero"):
        ScriptedScenario(build_shelves(layout), [ScriptStep(1.0, "R3", -7)])
    with pytest.raises(ValueError, match="unknown bin"):
        ScriptedScenario(build_shelves(layout), [ScriptStep(1.0, "ZZ", 1)])


def test_a_pick_by_hand_also_calls_the_staff() -> None:
    layout = small_layout()
    shelves = build_shelves(layout)
    scenario = StoreScenario(
        layout, shelves, shopper_rate_per_min=0.0, restock_delay_s=5.0, first_low_at_s=None
    )
    assert scenario.next_event_s() is None
    scenario.apply(1.0, "R3", -3)  # 6 → 3, below safety stock 4
    assert scenario.restocks_pending == {"R3": 6.0}
    assert scenario.advance(10.0) == [(6.0, "R3", 9, 12)]
    assert scenario.true_counts["R3"] == 12
