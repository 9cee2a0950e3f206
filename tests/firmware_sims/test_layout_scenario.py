"""Layouts (validation, JSON round trip, profiles in sync); scenarios (ground truth, restock, demo timing)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from drivers.rfid.epc import Sgtin96, parse_epc
from edge.config import load_config
from firmware_sims.layout import (
    SimBleSensor,
    SimLayout,
    SimScale,
    SimTransmitter,
    layout_from_json,
    layout_to_json,
    sgtin_tags,
)
from firmware_sims.runner import build_shelves
from firmware_sims.scenario import DeviceAction, DeviceScenario, ScriptedScenario, ScriptStep, StoreScenario
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
        assert len(layout.bins) == 46  # 44 on transmitters, 2 on BLE shelf sensors
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


def test_demo_layout_has_every_device_family() -> None:
    layout = demo_layout()
    assert [(s.device_id, s.protocol, s.lane) for s in layout.scales] == [("scale-lane1", "mtsics", "lane1")]
    assert {s.role for s in layout.scanners} == {"lane", "handheld"}
    kinds = {r.zone_kind: r for r in layout.rfid_readers}
    assert len(kinds["shelf"].tags) == 9
    assert kinds["exit"].tags == ()
    tags = [parse_epc(t) for t in kinds["shelf"].tags]
    skus = {b.sku for b in load_config(ROOT / "config" / "demo-store.yaml").store.bins}
    assert all(isinstance(t, Sgtin96) and t.gtin in skus for t in tags), "shelf tags are the store's products"
    assert sorted(s.keyed for s in layout.ble_sensors) == [False, True]
    assert {b.device_id for b in layout.bins} >= {s.device_id for s in layout.ble_sensors}
    assert any(c.member for c in layout.codes)
    assert any(c.symbology == "]d2" for c in layout.codes)


def test_sgtin_tags_encode_the_gtin_with_the_drivers_codec() -> None:
    (epc,) = sgtin_tags("06901234567892", (7,))
    tag = parse_epc(epc)
    assert isinstance(tag, Sgtin96)
    assert (tag.gtin, tag.serial, tag.filter) == ("06901234567892", 7, 1)
    with pytest.raises(ValueError, match="GTIN-14"):
        sgtin_tags("123", (1,))


def test_layout_binds_bins_to_ble_sensors_within_their_channels() -> None:
    base = small_layout()
    sensor = SimBleSensor("ble1", "A4:C1:38:00:00:01", channels=2)
    ble_bin = dataclasses.replace(base.bins[0], bin_id="E1", device_id="ble1", channel=1)
    layout = dataclasses.replace(base, ble_sensors=(sensor,), bins=(*base.bins, ble_bin))
    assert layout.bins_on("ble1") == (ble_bin,)
    with pytest.raises(ValueError, match=r"channel 2 outside 0\.\.1"):
        dataclasses.replace(layout, bins=(*base.bins, dataclasses.replace(ble_bin, channel=2)))
    with pytest.raises(ValueError, match="duplicate device id"):
        dataclasses.replace(layout, scales=(SimScale("ble1"),))


def test_device_scenario_checkouts_weighings_and_tag_walks_are_reproducible() -> None:
    def run(seed: int) -> list[DeviceAction]:
        scenario = DeviceScenario(demo_layout(seed), checkout_every_s=15.0, tag_walk_every_s=20.0)
        scenario.advance(600.0)
        return scenario.log

    log = run(2)
    assert log == run(2)
    assert log != run(3)
    codes = {c.data: c for c in demo_layout().codes}
    lane_scans = [a for a in log if a.device_id == "scan-lane1"]
    assert any(codes[a.code].member for a in lane_scans)
    assert sum(not codes[a.code].member for a in lane_scans) > sum(codes[a.code].member for a in lane_scans)
    assert any(a.device_id == "scan-handheld1" for a in log)
    loads = [a for a in log if a.action == "load"]
    unloads = [a for a in log if a.action == "unload"]
    assert loads
    assert all(150.0 <= a.grams <= 1500.0 for a in loads)
    assert [a.t + 4.0 for a in loads][: len(unloads)] == [a.t for a in unloads]
    # Every tag that walked out came through the exit zone and went back to its shelf.
    outs = [a for a in log if a.action == "tag_out" and a.device_id == "rfid-shelf-e"]
    assert outs
    for out in outs:
        through_exit = [
            a.action for a in log if a.epc == out.epc and a.device_id == "rfid-exit" and a.t >= out.t
        ]
        assert through_exit[:2] == ["tag_in", "tag_out"]
    assert all(a.t <= 600.0 for a in log)
    assert [a.t for a in log] == sorted(a.t for a in log)


def test_device_scenario_leaves_the_lanes_to_a_cashier_when_asked() -> None:
    """`lane_checkouts=False` (the demo's cashier works the lane): no lane scan, no scale load; the rest runs."""
    scenario = DeviceScenario(demo_layout(2), checkout_every_s=15.0, lane_checkouts=False)
    scenario.advance(600.0)
    assert not [a for a in scenario.log if a.device_id in {"scan-lane1", "scale-lane1"}]
    assert any(a.device_id == "scan-handheld1" for a in scenario.log)
    assert any(a.action == "tag_out" for a in scenario.log)
