"""Stock-out forecast (缺货预警): time-to-empty per bin from its recent pick rate; `predicted_out` with hysteresis.

**The pick rate** is an exponentially weighted event rate. Each pick of n items at time tᵢ contributes
n·e^(−(t−tᵢ)/τ) to a decaying sum S(t); the rate is

    λ(t) = S(t) / (τ · (1 − e^(−T/τ)))

where T is how long the bin has been observed. For a steady (Poisson) pick rate λ₀ observed over T,
E[S] = λ₀·τ·(1 − e^(−T/τ)), so the estimate is unbiased from the first minute on; once T ≫ τ the denominator
is τ and this is the continuous-time EWMA (mean age of the evidence τ, like a load average). Why this and not
"picks in the last N minutes": no window edge where one pick falling out makes the rate jump, O(1) state per
bin, and a rush raises the rate at once while a lull lets it decay smoothly. τ (default 30 min) trades
reaction for noise; with few picks the estimate is noisy, so nothing is predicted until the bin has at least
`min_picks` recent pick events (the same decay applied to the event count).

**Time to empty** = count / λ (None when λ = 0 or the count is unknown/zero — an empty bin is the `out`
alert's business).

**`predicted_out`** (per bin, during opening hours only):

- raise when the store is open, the bin has ≥ `min_picks` recent picks, ETA < `horizon_s` (default 30 min)
  and the bin would empty before closing (now + ETA ≤ closing time — no warning at 21:50 for a bin that
  would run out at 22:20 in a store that closes at 22:00);
- resolve when ETA > `horizon_s × clear_factor` (default 1.5: hysteresis, so a rate hovering around the
  threshold does not flap), when the ETA is gone (the rate decayed to 0, or the count is 0 or unknown: `out`
  takes over), or when the store closes.

Restocks (`put`) change the count, not the rate; reconciliations correct the count and are not picks. Pure:
every call takes the time; `evaluate(now)` returns the transitions since the last call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final, Literal

from edge.retail.hours import OpeningHours

HOUR_S: Final = 3600.0


@dataclass(frozen=True, slots=True)
class ForecastSettings:
    """Tuning of the stock-out forecast."""

    horizon_s: float = 1800.0
    """Raise when the bin would be empty within this time."""
    tau_s: float = 1800.0
    """Time constant of the pick-rate average."""
    clear_factor: float = 1.5
    """Resolve only when the ETA exceeds `horizon_s × clear_factor` (> 1)."""
    min_picks: float = 3.0
    """Recent (decayed) pick events needed before a rate is trusted."""

    def __post_init__(self) -> None:
        if self.horizon_s <= 0 or self.tau_s <= 0:
            raise ValueError("horizon_s and tau_s must be > 0")
        if self.clear_factor < 1:
            raise ValueError("clear_factor must be ≥ 1 (it is the hysteresis band)")
        if self.min_picks < 0:
            raise ValueError("min_picks must be ≥ 0")


@dataclass(slots=True)
class PickRate:
    """Exponentially weighted pick rate of one bin (items per second); see the module docstring."""

    tau_s: float
    start_ts: float
    last_ts: float = field(init=False)
    items: float = 0.0
    """Decayed item sum S at `last_ts`."""
    events: float = 0.0
    """Decayed pick-event count at `last_ts`."""

    def __post_init__(self) -> None:
        self.last_ts = self.start_ts

    def _decay(self, ts: float) -> float:
        return math.exp(-max(ts - self.last_ts, 0.0) / self.tau_s)

    def add(self, ts: float, items: int) -> None:
        """A pick of `items` at `ts` (out-of-order picks are taken at the latest time seen)."""
        ts = max(ts, self.last_ts)
        decay = self._decay(ts)
        self.items = self.items * decay + items
        self.events = self.events * decay + 1
        self.last_ts = ts

    def recent_events(self, now: float) -> float:
        """Decayed pick-event count at `now`."""
        return self.events * self._decay(now)

    def rate_per_s(self, now: float) -> float:
        """λ(now) in items/s (0 before any pick)."""
        observed = max(now - self.start_ts, 0.0)
        norm = self.tau_s * -math.expm1(-observed / self.tau_s)
        if norm <= 0 or self.items == 0:
            return 0.0
        return self.items * self._decay(now) / norm


@dataclass(frozen=True, slots=True)
class ForecastChange:
    """A `predicted_out` alert transition of one bin."""

    bin_id: str
    state: Literal["raised", "resolved"]
    ts: float
    count: int | None
    eta_s: float | None
    rate_per_h: float
    reason: str


@dataclass(frozen=True, slots=True)
class BinForecast:
    """A bin's forecast for the board: count, rate, ETA, whether `predicted_out` is active."""

    bin_id: str
    count: int | None
    rate_per_h: float
    eta_s: float | None
    active: bool


@dataclass(slots=True)
class _Bin:
    rate: PickRate
    count: int | None = None
    active: bool = False


class StockoutForecaster:
    """Every bin's pick rate and `predicted_out` state; fed with count changes, evaluated with the time."""

    def __init__(self, settings: ForecastSettings | None = None, hours: OpeningHours | None = None) -> None:
        self.settings = settings or ForecastSettings()
        self.hours = hours or OpeningHours()
        self._bins: dict[str, _Bin] = {}

    def _bin(self, bin_id: str, ts: float) -> _Bin:
        state = self._bins.get(bin_id)
        if state is None:
            state = self._bins[bin_id] = _Bin(PickRate(self.settings.tau_s, ts))
        return state

    def observe(
        self, bin_id: str, ts: float, *, count: int | None, delta: int = 0, cause: str = "pick"
    ) -> None:
        """A bin's count changed (`edge.inventory.events.CountChanged`: count, delta, cause) or became unknown."""
        state = self._bin(bin_id, ts)
        state.count = count
        if cause == "pick" and delta < 0:
            state.rate.add(ts, -delta)

    def eta_s(self, bin_id: str, now: float) -> float | None:
        """Seconds until the bin is empty at the current rate; None if unknown, empty or not being picked."""
        state = self._bins.get(bin_id)
        if state is None or state.count is None or state.count <= 0:
            return None
        rate = state.rate.rate_per_s(now)
        return state.count / rate if rate > 0 else None

    def evaluate(self, now: float) -> list[ForecastChange]:
        """Raise/resolve `predicted_out` per bin at `now`; returns the transitions, by bin id."""
        s = self.settings
        period = self.hours.period_at(now)
        out: list[ForecastChange] = []
        for bin_id in sorted(self._bins):
            state = self._bins[bin_id]
            eta = self.eta_s(bin_id, now)
            rate_h = state.rate.rate_per_s(now) * HOUR_S
            if state.active:
                reason = None
                if period is None:
                    reason = "store closed"
                elif eta is None:
                    reason = (
                        "bin empty or count unknown"
                        if not state.count or state.count <= 0
                        else "no recent picks"
                    )
                elif eta > s.horizon_s * s.clear_factor:
                    reason = f"time to empty {eta / 60:.0f} min"
                if reason is not None:
                    state.active = False
                    out.append(ForecastChange(bin_id, "resolved", now, state.count, eta, rate_h, reason))
            elif (
                period is not None
                and eta is not None
                and eta < s.horizon_s
                and now + eta <= period[1]
                and state.rate.recent_events(now) >= s.min_picks
            ):
                state.active = True
                reason = f"{state.count} left at {rate_h:.1f}/h: empty in {eta / 60:.0f} min"
                out.append(ForecastChange(bin_id, "raised", now, state.count, eta, rate_h, reason))
        return out

    def snapshot(self, now: float) -> list[BinForecast]:
        """Every bin's forecast at `now` (for a page), by bin id."""
        return [
            BinForecast(
                bin_id,
                state.count,
                state.rate.rate_per_s(now) * HOUR_S,
                self.eta_s(bin_id, now),
                state.active,
            )
            for bin_id, state in sorted(self._bins.items())
        ]


__all__ = ["BinForecast", "ForecastChange", "ForecastSettings", "PickRate", "StockoutForecaster"]
