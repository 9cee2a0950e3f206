"""Shelf physics: counts, settling and the stable flag, noise, creep, overload, stuck output, determinism."""

from __future__ import annotations

import math
import statistics

import pytest

from firmware_sims.layout import ShelfPhysics, SimBin
from firmware_sims.shelf import Shelf

QUIET = ShelfPhysics(creep_g_per_h=0.0)


def make_bin(**overrides: float) -> SimBin:
    fields: dict[str, object] = {
        "bin_id": "A01",
        "device_id": "tx1",
        "channel": 2,
        "unit_weight_g": 350.0,
        "unit_weight_spread_g": 3.0,
        "tare_g": 120.0,
        "zero": 1000.0,
        "span_g_per_unit": 0.05,
        "safety_stock": 4,
        "max_stock": 12,
        "initial_count": 8,
    }
    fields.update(overrides)
    return SimBin(**fields)  # type: ignore[arg-type]


def grams(shelf: Shelf, t: float) -> float:
    r = shelf.reading(t)
    return (r.value - shelf.bin.zero) * shelf.bin.span_g_per_unit


def test_count_follows_picks_and_puts() -> None:
    shelf = Shelf(make_bin(), noise_g=0.0, physics=QUIET)
    assert shelf.count == 8
    removed = shelf.pick(3, 1.0)
    assert shelf.count == 5
    assert removed == pytest.approx(3 * 350.0, abs=30.0)
    shelf.put(7, 5.0)
    assert shelf.count == 12
    with pytest.raises(ValueError, match="cannot pick 13 of 12"):
        shelf.pick(13, 9.0)
    assert shelf.count == 12


def test_settled_value_is_tare_plus_item_masses_in_transmitter_units() -> None:
    shelf = Shelf(make_bin(), noise_g=0.0, physics=QUIET)
    shelf.pick(2, 1.0)
    expected_g = 120.0 + sum(shelf.item_masses_g)
    reading = shelf.reading(10.0)
    assert reading.channel == 2
    assert reading.value == pytest.approx(1000.0 + expected_g / 0.05)
    assert grams(shelf, 10.0) == pytest.approx(expected_g)
    assert reading.stable is True
    assert reading.overload is False
    assert reading.fault is False


def test_item_masses_spread_as_configured() -> None:
    shelf = Shelf(make_bin(initial_count=0), noise_g=0.0, physics=QUIET, seed=7)
    shelf.put(2000, 0.0)
    masses = shelf.item_masses_g
    assert statistics.fmean(masses) == pytest.approx(350.0, abs=0.5)
    assert statistics.stdev(masses) == pytest.approx(3.0, rel=0.1)


def test_stable_only_after_the_plate_settles() -> None:
    """Unstable right after a pick, stable again within the settle time plus the detector window."""
    physics = ShelfPhysics(creep_g_per_h=0.0, settle_s=0.6, overshoot=0.2, stable_window_s=0.3)
    shelf = Shelf(make_bin(), noise_g=1.0, physics=physics, seed=3)
    assert shelf.reading(4.9).stable is True
    shelf.pick(1, 5.0)
    assert shelf.reading(5.05).stable is False
    assert shelf.reading(5.3).stable is False
    step = 1.0 / physics.sample_rate_hz
    first_stable = next(t for t in (5.0 + i * step for i in range(5, 300)) if shelf.reading(t).stable)
    # The 350 g step rings down to the 6 g band a little after settle_s; the detector then needs its window.
    assert 5.0 + physics.settle_s < first_stable < 5.0 + 2 * physics.settle_s + physics.stable_window_s
    assert all(shelf.reading(first_stable + i * step).stable for i in range(200))


def test_settling_transient_overshoots_then_settles() -> None:
    shelf = Shelf(make_bin(initial_count=0), noise_g=0.0, physics=QUIET)
    added = shelf.put(4, 2.0)
    trace = [shelf.gross_g(2.0 + i / 1000) - 120.0 for i in range(1500)]
    assert trace[0] == pytest.approx(0.0)
    peak = max(trace)
    assert peak == pytest.approx(added * (1 + QUIET.overshoot), rel=0.02)
    # 2 % band reached by settle_s (second-order estimate 4/(ζω_n))
    after = trace[int(QUIET.settle_s * 1000) :]
    assert max(abs(g - added) for g in after) < 0.03 * added
    assert shelf.gross_g(10.0) - 120.0 == pytest.approx(added)


def test_noise_sigma_matches_configuration() -> None:
    shelf = Shelf(make_bin(), noise_g=2.5, physics=QUIET, seed=11)
    rate = QUIET.sample_rate_hz
    samples = [grams(shelf, 10.0 + k / rate) for k in range(4000)]
    assert statistics.stdev(samples) == pytest.approx(2.5, rel=0.06)
    assert statistics.fmean(samples) == pytest.approx(120.0 + sum(shelf.item_masses_g), abs=0.2)


def test_noise_alone_rarely_breaks_stability() -> None:
    shelf = Shelf(make_bin(), noise_g=1.0, physics=QUIET, seed=5)
    stable = [shelf.reading(1.0 + k / 50).stable is True for k in range(2000)]
    assert sum(stable) / len(stable) > 0.98


def test_creep_drifts_at_the_configured_rate() -> None:
    shelf = Shelf(make_bin(), noise_g=0.0, physics=ShelfPhysics(creep_g_per_h=36.0))
    assert grams(shelf, 100.0) - grams(shelf, 0.0) == pytest.approx(1.0, abs=1e-6)
    assert grams(shelf, 3600.0) - grams(shelf, 0.0) == pytest.approx(36.0, abs=1e-6)


def test_overload_flag_above_capacity() -> None:
    shelf = Shelf(make_bin(capacity_g=3000.0, initial_count=8), noise_g=0.0, physics=QUIET)
    assert shelf.reading(1.0).overload is False  # 120 + 8 × 350 ≈ 2920 g
    shelf.put(1, 2.0)
    assert shelf.reading(10.0).overload is True
    shelf.pick(2, 11.0)
    assert shelf.reading(20.0).overload is False


def test_default_capacity_is_twice_a_full_bin() -> None:
    assert make_bin().effective_capacity_g == pytest.approx(2 * (120.0 + 12 * 350.0))


def test_stuck_output_stays_frozen_and_fault_bit_shows() -> None:
    shelf = Shelf(make_bin(), noise_g=1.0, physics=QUIET)
    shelf.set_stuck(True, 1.0)
    frozen = shelf.reading(1.0).value
    shelf.pick(5, 2.0)
    assert shelf.count == 3
    assert shelf.reading(2.2).value == frozen
    assert shelf.reading(30.0).value == frozen
    assert shelf.reading(30.0).stable is True
    shelf.fault_bit = True
    assert shelf.reading(31.0).fault is True
    shelf.set_stuck(False, 40.0)
    assert grams(shelf, 40.0) == pytest.approx(120.0 + sum(shelf.item_masses_g), abs=6.0)


def test_same_seed_same_store_and_read_order_does_not_matter() -> None:
    a = Shelf(make_bin(), noise_g=1.0, physics=QUIET, seed=42)
    b = Shelf(make_bin(), noise_g=1.0, physics=QUIET, seed=42)
    c = Shelf(make_bin(), noise_g=1.0, physics=QUIET, seed=43)
    for shelf in (a, b, c):
        shelf.pick(2, 1.0)
    times = [0.5 + 0.037 * i for i in range(100)]
    forward = [a.reading(t) for t in times]
    backward = [b.reading(t) for t in reversed(times)][::-1]
    assert forward == backward
    assert a.item_masses_g == b.item_masses_g
    assert a.item_masses_g != c.item_masses_g
    assert [r.value for r in forward] != [c.reading(t).value for t in times]


def test_output_holds_between_transmitter_samples() -> None:
    shelf = Shelf(make_bin(), noise_g=1.0, physics=QUIET)
    k = shelf.sample_index(3.0)
    t_k = k / QUIET.sample_rate_hz
    assert shelf.reading(t_k + 0.001).value == shelf.reading(t_k + 0.019).value
    assert math.isfinite(shelf.reading(t_k).value)


def test_invalid_bins_are_refused() -> None:
    with pytest.raises(ValueError, match="unit_weight_g"):
        make_bin(unit_weight_g=0.0)
    with pytest.raises(ValueError, match="span_g_per_unit"):
        make_bin(span_g_per_unit=0.0)
    with pytest.raises(ValueError, match="overshoot"):
        ShelfPhysics(overshoot=1.0)
