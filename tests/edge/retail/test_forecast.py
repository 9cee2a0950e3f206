"""Stock-out forecast: the exponentially weighted pick rate, time to empty, predicted_out with hysteresis."""

from __future__ import annotations

import math
import random
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.retail.forecast import ForecastSettings, PickRate, StockoutForecaster
from edge.retail.hours import OpeningHours

SH = ZoneInfo("Asia/Shanghai")


def at(hh: int, mm: int = 0, ss: int = 0) -> float:
    return datetime(2026, 11, 13, hh, mm, ss, tzinfo=SH).timestamp()


def picks(
    f: StockoutForecaster, bin_id: str, start: float, *, every_s: float, n: int, count: int
) -> tuple[float, int]:
    """`n` single-item picks every `every_s` from `start`, counting down from `count`; returns (last ts, count)."""
    ts = start
    for _ in range(n):
        count -= 1
        f.observe(bin_id, ts, count=count, delta=-1, cause="pick")
        ts += every_s
    return ts - every_s, count


def test_rate_is_unbiased_from_the_start() -> None:
    rate = PickRate(tau_s=1800, start_ts=0.0)
    for i in range(1, 11):  # one pick a minute for ten minutes
        rate.add(i * 60.0, 1)
    per_h = rate.rate_per_s(600.0) * 3600
    # A plain EWMA (sum / τ) would say 20/h here; the warm-up normaliser gives ~60/h.
    assert per_h == pytest.approx(60, rel=0.1)


def test_steady_rate_converges_and_decays_without_picks() -> None:
    rate = PickRate(tau_s=1800, start_ts=0.0)
    for i in range(1, 241):  # 4 h at 1/min
        rate.add(i * 60.0, 1)
    assert rate.rate_per_s(240 * 60.0) * 3600 == pytest.approx(60, rel=0.03)
    # One τ without picks: the rate falls by e (the warm-up normaliser is ~1 by now).
    assert rate.rate_per_s(240 * 60.0 + 1800) / rate.rate_per_s(240 * 60.0) == pytest.approx(
        math.exp(-1), rel=1e-3
    )


@given(st.floats(0.2, 5.0), st.integers(0, 2**32 - 1))
def test_poisson_picks_estimate_their_rate(per_min: float, seed: int) -> None:
    """For a constant-rate (Poisson) pick process observed ≥ 2τ the estimate is within a few standard errors."""
    rnd = random.Random(seed)
    tau = 1800.0
    rate = PickRate(tau_s=tau, start_ts=0.0)
    t = 0.0
    horizon = 4 * tau
    lam = per_min / 60
    while True:
        t += rnd.expovariate(lam)
        if t > horizon:
            break
        rate.add(t, 1)
    est = rate.rate_per_s(horizon)
    # Var of the EW sum for a Poisson process ≈ λτ/2, so the relative s.e. is 1/√(λτ/2).
    rel_se = 1 / math.sqrt(lam * tau / 2)
    assert abs(est - lam) / lam < 5 * rel_se


def forecaster(**kw: float) -> StockoutForecaster:
    return StockoutForecaster(ForecastSettings(**kw), OpeningHours(tz="Asia/Shanghai", default="08:00-22:00"))


def test_predicted_out_raises_with_an_eta_then_clears_after_a_restock() -> None:
    f = forecaster()
    f.observe("A01", at(9), count=30, cause="initial")
    last, count = picks(f, "A01", at(9, 1), every_s=60, n=40, count=50)  # 40 picks at 1/min → 60/h, 10 left
    assert count == 10
    [raised] = f.evaluate(last)
    assert (raised.bin_id, raised.state, raised.count) == ("A01", "raised", 10)
    assert raised.eta_s == pytest.approx(600, rel=0.15)  # 10 items at ~60/h
    assert raised.rate_per_h == pytest.approx(60, rel=0.15)
    assert f.evaluate(last + 1) == []  # raised once
    f.observe("A01", last + 60, count=40, delta=30, cause="put")  # refilled: rate unchanged, ETA 40 min
    assert f.evaluate(last + 60) == []  # inside the hysteresis band (30..45 min): still active
    f.observe("A01", last + 120, count=60, delta=20, cause="put")
    [cleared] = f.evaluate(last + 120)
    assert cleared.state == "resolved"
    assert "time to empty" in cleared.reason


def test_hysteresis_band_is_horizon_times_clear_factor() -> None:
    f = forecaster(horizon_s=1800, clear_factor=1.5)
    last, _ = picks(f, "A01", at(9), every_s=60, n=120, count=150)  # steady 60/h
    rate_per_s = f.snapshot(last)[0].rate_per_h / 3600
    f.observe("A01", last, count=round(rate_per_s * 1700), cause="reconcile")  # ETA ≈ 28 min
    assert [c.state for c in f.evaluate(last)] == ["raised"]
    f.observe("A01", last, count=round(rate_per_s * 2600), cause="reconcile")  # ≈ 43 min
    assert f.evaluate(last) == []
    f.observe("A01", last, count=round(rate_per_s * 2800), cause="reconcile")  # ≈ 47 min > 45
    assert [c.state for c in f.evaluate(last)] == ["resolved"]


def test_a_single_burst_is_not_a_trend() -> None:
    f = forecaster(min_picks=3)
    f.observe("A01", at(10), count=10, cause="initial")
    f.observe("A01", at(10, 1), count=4, delta=-6, cause="pick")  # one shopper takes six
    assert f.evaluate(at(10, 2)) == []
    assert f.eta_s("A01", at(10, 2)) is not None  # there is a rate, just not a trusted one


def test_only_during_opening_hours_and_not_for_a_stock_out_after_closing() -> None:
    f = forecaster()
    last, _ = picks(
        f, "A01", at(21, 0), every_s=60, n=40, count=60
    )  # 20 left at 60/h at 21:39: empty ≈ 21:59
    assert [c.state for c in f.evaluate(last)] == ["raised"]
    g = forecaster()
    last, _ = picks(
        g, "B01", at(21, 10), every_s=60, n=40, count=65
    )  # 25 left at 21:49: empty ≈ 22:14, after closing
    eta = g.eta_s("B01", last)
    assert eta is not None
    assert eta < 1800
    assert g.evaluate(last) == []
    # The raised one clears when the store closes.
    [closed] = f.evaluate(at(22, 0))
    assert (closed.state, closed.reason) == ("resolved", "store closed")
    # Closed before opening too.
    h = forecaster()
    picks(h, "C01", at(6, 0), every_s=30, n=60, count=70)
    assert h.evaluate(at(7, 30)) == []


def test_an_empty_bin_hands_over_to_the_out_alert() -> None:
    f = forecaster()
    last, count = picks(f, "A01", at(9), every_s=60, n=45, count=50)
    assert [c.state for c in f.evaluate(last)] == ["raised"]
    f.observe("A01", last + 60, count=0, delta=-count, cause="pick")
    [cleared] = f.evaluate(last + 60)
    assert (cleared.state, cleared.reason) == ("resolved", "bin empty or count unknown")


def test_picks_stopping_lets_the_alert_clear() -> None:
    f = forecaster()
    last, _ = picks(f, "A01", at(9), every_s=60, n=45, count=50)
    assert [c.state for c in f.evaluate(last)] == ["raised"]
    assert [c.state for c in f.evaluate(last + 3 * 1800)] == ["resolved"]  # ETA grows as the rate decays


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="clear_factor"):
        ForecastSettings(clear_factor=0.9)
    with pytest.raises(ValueError, match="> 0"):
        ForecastSettings(tau_s=0)
