"""Per-bin weight estimator: calibrated samples in, counted picks/puts (or honest ambiguity) out.

Pipeline for every sample (the hot path — O(1), no allocation beyond one small window tuple)::

    value ─ calibrate ─▶ grams ─ Hampel-3 spike filter ─▶ y ─ window (settle_window_s) ─▶ state machine
                                  (1-sample delay)          Σy, Σy² relative to a reference

State machine::

    INIT ──stable level──▶ STABLE ──level left (sample / window mean / shaking)──▶ UNSETTLED
      ▲                     ▲  │ baseline follows slow drift (bounded)                │
      └── no baseline yet   │  └────────────── new stable level: Δ = level − baseline ◀┘
                            └─ count from Δ if whole within tolerance, else Ambiguous + absolute reconcile

Why each piece:

* **Hampel filter over three samples** (replace the middle sample by the median of its neighbourhood when
  it is more than 4σ away): a single electrical spike or a knock never reaches the state machine, while a
  genuine step passes unchanged (the median of a step edge is the edge). Non-outliers pass untouched, so the
  noise statistics used for tolerances stay those of the raw signal. Two-sample disturbances pass but settle
  back to the same level, which counts as Δ = 0 — no event.
* **Stability** = the last `settle_window_s` of samples has a standard deviation ≤ 1.5σ, and its older and
  newer halves agree (≤ 2.5σ of their means: no slow approach to the level), and the device's own stable
  bit, when it has one, is not False — it may veto, it is never required (DOMAIN.md: "count only stable
  readings"). The window is `settle_window_s`, or 2.5 sample intervals when the transmitter is polled so
  slowly that the configured window could not hold the 3 samples a verdict needs. The new level is the mean
  from the *newer* half of that first stable window on (the older half proved stability but may hold the
  end of the hand's motion or the plate's ring-down); when the noise is large the estimator keeps
  averaging (up to 6 windows) until the tolerance can be met, so precision and latency trade
  automatically. Typical decision: 0.6 s after the hand leaves the plate (0.9 s p99).
* **Leaving a level** is detected three ways: one sample beyond 5σ (fast, for real steps), the window mean
  beyond 4σ of the mean (slow, for steps small next to the noise), or a window that shakes (σ_w > 2.5σ, a
  hand on the plate). Samples join the baseline only once they leave the window, so a step caught by the
  slower tests never leaks into the baseline it is compared against.
* **Counting**: n = round(Δ / unit_weight_g), accepted only when
  |Δ − n·unit| ≤ max(3·sqrt(|n|·spread² + σ²/N_baseline + σ²/N_level), 0.1 unit) *and* the statistical
  tolerance is below 0.35 unit — so a wrong integer needs a > 5σ error. Otherwise `Ambiguous`, never a
  guess. Also refused when a neighbouring integer (n ± 1) would fit within its own 4σ — with a wide item
  spread a light item can pass for none. Then an **absolute reconciliation** (net weight / unit within the
  same kind of tolerance of an integer, same neighbour test) may set the count (`cause="reconcile"`),
  else the count is kept and marked `uncertain` until a later stable level reconciles.
* **Drift**: while stable, the baseline follows slow creep (running mean, then an EMA over 64 samples). The
  drift since the last counted event is bounded: beyond 0.5 unit (and statistically significant) it raises
  `SensorFault("drifting")` and marks the count uncertain instead of silently absorbing what may be a missed
  step. After each counted step the absolute level is checked against the count, which both detects a zero
  that wandered over many events and clears the fault once the level agrees again. While drifting, an
  absolute reconciliation may only *confirm* the count, never change it (the zero is suspect).
* **Noise σ**: given (`noise_g`) or estimated — first from the first full window, then from a running
  median of |x_k − x_(k−1)| (stochastic quantile tracking, σ = median / 0.954), floored at 0.2 % of the unit
  weight. A median ignores steps, hand motion and spikes, and — unlike an average of residuals "while
  stable" — cannot lock itself into an inflated value (a too-large σ would call motion stable and feed on it).
  It assumes white noise; a transmitter that low-passes its output makes σ/√N optimistic.
* **Very noisy bins** (σ > 0.2 unit): a one-item step can hide inside a window that passes the stability
  test, so no count is accepted (relative or absolute) — every change is reported Ambiguous.

No clock reads, no I/O, no logging: the caller passes every timestamp (`ts`, seconds), so the same input
always gives the same output — tests and replays are exact.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from itertools import pairwise
from typing import Any, Final

from edge.config import Bin
from edge.inventory.events import Ambiguous, CountCause, CountChanged, EngineEvent, SensorFault

NOISE_FLOOR_FRACTION: Final = 0.002
"""σ never drops below this fraction of the unit weight (quantised or noise-free signals)."""
SPIKE_K: Final = 4.0
LEAVE_SAMPLE_K: Final = 5.0
LEAVE_MEAN_K: Final = 4.0
LEAVE_MEAN_FLOOR_FRACTION: Final = 0.15
"""A window mean closer than this fraction of a unit to the baseline is creep, not a step."""
STABLE_K: Final = 1.5
UNSTABLE_K: Final = 2.5
TOL_K: Final = 3.0
NEIGHBOUR_K: Final = 4.0
"""n is refused when n ± 1 also fits within this many σ (stricter than TOL_K: wrong is worse than unsure)."""
TOL_FLOOR_FRACTION: Final = 0.1
"""The tolerance never drops below this fraction of a unit: σ estimated from a few samples, a restored
baseline or a configured spread of 0 must not turn a 2 % difference into an ambiguity. Harmless for
correctness — a wrong integer still needs an error of 0.65 unit."""
TARGET_TOL_FRACTION: Final = 0.25
"""Keep averaging a new level until its tolerance is at most this fraction of a unit (unless futile)."""
MAX_TOL_FRACTION: Final = 0.35
"""No count is accepted when the tolerance reaches this fraction of a unit: a wrong integer needs > 5σ."""
DRIFT_FRACTION: Final = 0.5
OUT_OF_RANGE_FRACTION: Final = 0.5
RESOLVABLE_FRACTION: Final = 0.2
"""Above this σ/unit a one-item step can hide inside a "stable" window (σ_w of a half/half window is
sqrt(σ² + unit²/4), under 2σ once σ > 0.29 unit): the bin cannot count single items; all is Ambiguous."""
BASELINE_N_MAX: Final = 64
NOISE_STEP: Final = 0.01
"""Multiplicative step of the running median of |Δraw| (stochastic quantile tracking, ±1 % per sample)."""
MEDIAN_ABS_DIFF_PER_SIGMA: Final = 0.6745 * math.sqrt(2.0)
"""median(|x_k − x_(k−1)|) = 0.954 σ for white Gaussian noise."""
MIN_SAMPLES: Final = 3
QUIET_WINDOW_RATIO: Final = 9.0
"""The first σ comes from a window whose variance is at most this many times the variance implied by the median
of its successive differences (σ² ≈ (median|Δ| / 0.954)²): a median ignores a step or a hand, a variance does
not — a larger ratio means motion in the window, not noise."""
CAND_FROM_FRACTION: Final = 0.5
"""A new level is averaged from the newer half of the first stable window on: the older half proved the
stability but may hold the tail of the hand's motion or the plate's ring-down."""
MIN_HOLD_WINDOWS: Final = 0.25
TREND_K: Final = 2.5
MAX_WAIT_WINDOWS: Final = 6.0
_RESUM_EVERY: Final = 4096
SAMPLE_INTERVALS_PER_WINDOW: Final = 2.5
"""The window spans at least this many sample intervals, so it can hold MIN_SAMPLES samples when the
transmitter is polled slowly: at 1 Hz a 0.5 s window holds one sample and no level could ever be stable
(bench/peer_thingsboard, 2 transmitters at 1 Hz: no count at all before this). Half an interval of margin
keeps poll jitter from dropping the third sample. At ≥ 5 Hz the configured window is wider and is used."""
_DT_EMA: Final = 0.1
"""Weight of one new interval in the running sample interval."""
_DT_JUMP: Final = 4.0
"""One interval counts at most this many times the running one: a gap (transmitter offline) moves the
window only a little, while a real change of poll rate is followed within ~10 samples."""

_LEAVE_SAMPLE2: Final = LEAVE_SAMPLE_K * LEAVE_SAMPLE_K
_LEAVE_MEAN2: Final = LEAVE_MEAN_K * LEAVE_MEAN_K
_UNSTABLE2: Final = UNSTABLE_K * UNSTABLE_K
_STABLE2: Final = STABLE_K * STABLE_K

_INIT: Final = 0
_UNSETTLED: Final = 1
_STABLE: Final = 2

_NO_EVENTS: Final[tuple[EngineEvent, ...]] = ()


class BinEstimator:
    """The live count of one weighed bin. Feed it every sample; it returns events only when something happens.

    `initial_count` (+ optionally `initial_baseline_g`, the net weight of the level that count was taken at)
    restore a snapshot after a restart: with a baseline, the first stable level is compared to it like any
    step (a pick during the downtime is counted); without, the first level is checked absolutely against the
    count. A baseline without a count is ignored (the first level is counted absolutely). `initial_noise_g`
    (the σ in use when the snapshot was saved) is the starting σ, so a plate already moving at the restart
    cannot inflate it; the running median goes on tracking it.
    """

    __slots__ = (
        "_announced",
        "_b",
        "_bn",
        "_chain_b",
        "_chain_inv_n",
        "_cn",
        "_csum",
        "_ct0",
        "_drift_limit2",
        "_dt",
        "_faults",
        "_flagged",
        "_inv_bn_eff",
        "_inv_unit",
        "_leave_floor2",
        "_mad",
        "_max_tol2",
        "_max_wait_s",
        "_min_hold_s",
        "_min_span_s",
        "_noise_fixed",
        "_p1",
        "_p1_ts",
        "_p2",
        "_ref",
        "_resolvable_var",
        "_settle_cfg",
        "_settle_s",
        "_span",
        "_spread_var",
        "_state",
        "_tare",
        "_target_tol2",
        "_tol_floor2",
        "_unit_g",
        "_var",
        "_var_floor",
        "_w",
        "_wfull",
        "_wops",
        "_wsq",
        "_wsum",
        "_zero",
        "bin",
        "bin_id",
        "count",
        "last_sample_ts",
        "stable",
        "uncertain",
        "weight_g",
    )

    def __init__(
        self,
        bin: Bin,
        *,
        noise_g: float | None = None,
        settle_window_s: float = 0.5,
        initial_count: int | None = None,
        initial_baseline_g: float | None = None,
        initial_noise_g: float | None = None,
    ) -> None:
        if settle_window_s <= 0:
            raise ValueError(f"settle_window_s must be > 0, got {settle_window_s}")
        if noise_g is not None and not noise_g >= 0:
            raise ValueError(f"noise_g must be >= 0, got {noise_g}")
        if initial_count is not None and initial_count < 0:
            raise ValueError(f"initial_count must be >= 0, got {initial_count}")
        self.bin = bin
        self.bin_id = bin.id
        u = bin.unit_weight_g
        self._unit_g = u
        self._inv_unit = 1.0 / u
        self._spread_var = bin.unit_weight_spread_g**2
        self._zero = bin.calibration.zero
        self._span = bin.calibration.span_g_per_unit
        self._tare = bin.tare_g
        self._settle_cfg = settle_window_s
        self._dt = 0.0
        """Running sample interval (s); 0 until two samples have been seen."""
        self._settle_s = self._min_span_s = self._min_hold_s = self._max_wait_s = 0.0
        self._set_window(settle_window_s)
        self._resolvable_var = (RESOLVABLE_FRACTION * u) ** 2
        self._target_tol2 = (TARGET_TOL_FRACTION * u) ** 2
        self._tol_floor2 = (TOL_FLOOR_FRACTION * u) ** 2
        self._leave_floor2 = (LEAVE_MEAN_FLOOR_FRACTION * u) ** 2
        self._drift_limit2 = (DRIFT_FRACTION * u) ** 2
        self._max_tol2 = (MAX_TOL_FRACTION * u) ** 2
        self._var_floor = (NOISE_FLOOR_FRACTION * u) ** 2
        self._noise_fixed = noise_g is not None
        self._var = max(noise_g**2, self._var_floor) if noise_g is not None else math.inf
        if (
            noise_g is None
            and initial_noise_g is not None
            and math.isfinite(initial_noise_g)
            and initial_noise_g >= 0
        ):
            # σ saved before a restart: steps are judged at once; the running median keeps tracking it.
            self._var = max(initial_noise_g**2, self._var_floor)
        # Hampel filter history: raw grams of the two previous samples, ts of the middle one.
        self._p1: float | None = None
        self._p2: float | None = None
        self._p1_ts = 0.0
        # Sliding window of (ts, grams - _ref) with running sums.
        self._w: deque[tuple[float, float]] = deque()
        self._wfull = False
        """The window has dropped a sample since its last reset: it covers a whole settle_window_s."""
        self._ref = 0.0
        self._wsum = 0.0
        self._wsq = 0.0
        self._wops = 0
        # Candidate level (samples since the window became stable), relative to _ref.
        self._cn = 0
        self._csum = 0.0
        self._ct0 = 0.0
        # Baseline: absolute net grams and how many samples it averages (capped: EMA beyond).
        self._b = 0.0
        self._bn = 0
        self._inv_bn_eff = 1.0
        self._chain_b = 0.0
        self._chain_inv_n = 0.0
        self._mad = (
            math.sqrt(self._var) * MEDIAN_ABS_DIFF_PER_SIGMA
            if not self._noise_fixed and math.isfinite(self._var)
            else 0.0
        )
        self._faults: set[str] = set()
        self._flagged = False
        self._announced = False
        self.count: int | None = initial_count
        self.uncertain = False
        self.stable = False
        self.weight_g = 0.0
        self.last_sample_ts: float | None = None
        if initial_count is not None and initial_baseline_g is not None:
            self._state = _UNSETTLED
            self._b = float(initial_baseline_g)
            self._bn = BASELINE_N_MAX
            self._inv_bn_eff = 1.0 / (2 * BASELINE_N_MAX - 1)
            self._chain_b = self._b
            self._chain_inv_n = 1.0 / (2 * BASELINE_N_MAX - 1)
            self.weight_g = self._b
        else:
            self._state = _INIT

    @classmethod
    def from_snapshot(
        cls,
        bin: Bin,
        snapshot: dict[str, Any],
        *,
        noise_g: float | None = None,
        settle_window_s: float = 0.5,
    ) -> BinEstimator:
        """Rebuild an estimator from `snapshot()` output (a restart continues, it does not recount)."""
        count = snapshot.get("count")
        baseline = snapshot.get("baseline_g")
        saved_noise = snapshot.get("noise_g")
        est = cls(
            bin,
            noise_g=noise_g,
            settle_window_s=settle_window_s,
            initial_count=int(count) if count is not None else None,
            initial_baseline_g=float(baseline) if baseline is not None else None,
            initial_noise_g=float(saved_noise) if saved_noise is not None else None,
        )
        est.uncertain = bool(snapshot.get("uncertain", False)) and est.count is not None
        return est

    # --- public state ------------------------------------------------------------------------------------

    @property
    def noise_g(self) -> float | None:
        """The σ of the noise in use (given or estimated); None before the first window."""
        return None if math.isinf(self._var) else math.sqrt(self._var)

    @property
    def baseline_g(self) -> float | None:
        """Net grams of the current reference level; None before the first stable level."""
        return None if self._state == _INIT else self._b

    @property
    def faults(self) -> frozenset[str]:
        """Sensor-fault kinds active right now."""
        return frozenset(self._faults)

    def snapshot(self) -> dict[str, Any]:
        """What to persist so a restart continues: see `from_snapshot` and the constructor's `initial_*`."""
        return {
            "bin_id": self.bin_id,
            "count": self.count,
            "baseline_g": self.baseline_g,
            "uncertain": self.uncertain,
            "weight_g": self.weight_g,
            "noise_g": self.noise_g,
            "faults": sorted(self._faults),
            "last_sample_ts": self.last_sample_ts,
        }

    @property
    def settle_window_s(self) -> float:
        """The window in use: the configured one, or SAMPLE_INTERVALS_PER_WINDOW intervals if wider."""
        return self._settle_s

    def _set_window(self, settle_s: float, min_span_s: float | None = None) -> None:
        """The stability window and the times derived from it (rarely: at start and on a poll-rate change)."""
        self._settle_s = settle_s
        self._min_span_s = 0.95 * settle_s if min_span_s is None else min_span_s
        self._min_hold_s = MIN_HOLD_WINDOWS * settle_s
        self._max_wait_s = MAX_WAIT_WINDOWS * settle_s

    # --- the hot path ----------------------------------------------------------------------------------

    def feed(
        self,
        value: float,
        ts: float,
        *,
        device_stable: bool | None = None,
        overload: bool = False,
        fault: bool = False,
    ) -> tuple[EngineEvent, ...]:
        """One sample (`value` in transmitter units, as in `ChannelReading`). Returns () for most samples."""
        self.last_sample_ts = ts
        if overload or fault or not math.isfinite(value):
            return self._bad_sample(ts, overload=overload, fault=fault or not math.isfinite(value))
        out: list[EngineEvent] | None = self._clear_flags(ts) if self._flagged else None
        grams = (value - self._zero) * self._span - self._tare
        p1 = self._p1
        self._p1 = grams
        if p1 is None:
            self._p1_ts = ts
            return tuple(out) if out else _NO_EVENTS
        if not self._noise_fixed and self._mad:
            # Running median of |Δraw|: robust to steps, motion and spikes, and it never locks itself in.
            mad = self._mad * (1.0 + NOISE_STEP if abs(grams - p1) > self._mad else 1.0 - NOISE_STEP)
            self._mad = mad
            var = (mad / MEDIAN_ABS_DIFF_PER_SIGMA) ** 2
            self._var = var if var > self._var_floor else self._var_floor
        p2 = self._p2
        t = self._p1_ts
        self._p2 = p1
        self._p1_ts = ts
        dt = ts - t
        if dt > 0.0:
            d = self._dt
            d = dt if d == 0.0 else d + _DT_EMA * ((dt if dt < _DT_JUMP * d else _DT_JUMP * d) - d)
            self._dt = d
            need = SAMPLE_INTERVALS_PER_WINDOW * d
            if need > self._settle_cfg:
                if abs(need - self._settle_s) > 0.05 * self._settle_s:
                    # A window of MIN_SAMPLES samples spans (MIN_SAMPLES - 1) intervals: full from there.
                    self._set_window(need, 0.95 * (MIN_SAMPLES - 1) * d)
            elif self._settle_s != self._settle_cfg:
                self._set_window(self._settle_cfg)
        y = p1
        if p2 is not None:
            # Median of three = the middle sample clamped between its neighbours.
            lo, hi = (grams, p2) if p2 > grams else (p2, grams)
            med = lo if p1 < lo else (hi if p1 > hi else p1)
            # Only an isolated outlier is a spike: its neighbours must agree with each other.
            spike2 = SPIKE_K * SPIKE_K * self._var
            if med != p1 and (p1 - med) ** 2 > spike2 and (p2 - grams) ** 2 <= 2.0 * spike2:
                y = med
        self.weight_g = y
        events = self._step(y, t, ts, device_stable)
        if out:
            out.extend(events)
            return tuple(out)
        return events

    def _step(self, y: float, t: float, now: float, device_stable: bool | None) -> tuple[EngineEvent, ...]:
        """Window bookkeeping and the state machine for one filtered sample `y` taken at `t`."""
        w = self._w
        r = y - self._ref
        w.append((t, r))
        s = self._wsum + r
        q = self._wsq + r * r
        cutoff = t - self._settle_s - 1e-9
        state = self._state
        while w[0][0] < cutoff:
            self._wfull = True
            t0, r0 = w.popleft()
            s -= r0
            q -= r0 * r0
            if state == _STABLE and t0 > self._ct0:
                # A verified sample leaves probation and joins the baseline.
                bn = self._bn
                if bn < BASELINE_N_MAX:
                    bn += 1
                    self._bn = bn
                    self._inv_bn_eff = 1.0 / bn if bn < BASELINE_N_MAX else 1.0 / (2 * BASELINE_N_MAX - 1)
                self._b += (r0 + self._ref - self._b) / bn
        self._wops += 1
        if self._wops >= _RESUM_EVERY:
            self._wops = 0
            s = math.fsum(v for _, v in w)
            q = math.fsum(v * v for _, v in w)
        self._wsum = s
        self._wsq = q
        n = len(w)
        var = self._var
        mean_r = s / n
        if n >= MIN_SAMPLES:
            wvar = q - s * mean_r
            wvar = wvar / (n - 1) if wvar > 0.0 else 0.0
        else:
            wvar = math.inf
        full = self._wfull or t - w[0][0] >= self._min_span_s
        if var == math.inf:
            if n < MIN_SAMPLES or not full:
                return _NO_EVENTS
            if wvar > QUIET_WINDOW_RATIO * max(self._var_floor, _diff_var(w)):
                # The plate is moving (a gateway restarted while shoppers pick): this window's variance is
                # motion, not noise. Taken as σ it would make every step "ambiguous" for minutes. Wait for a
                # quiet window (found by the reliability suite: tests/reliability, moves during a restart).
                return _NO_EVENTS
            var = self._var = max(self._var_floor, wvar)
            self._mad = math.sqrt(var) * MEDIAN_ABS_DIFF_PER_SIGMA

        if state == _STABLE:
            b = self._b
            d = y - b
            d2 = d * d
            if d2 > _LEAVE_SAMPLE2 * var:
                return self._leave(y, t)
            if n >= MIN_SAMPLES:
                dm = self._ref + mean_r - b
                dm2 = dm * dm
                if (
                    dm2 > self._leave_floor2 and dm2 > _LEAVE_MEAN2 * var * (1.0 / n + self._inv_bn_eff)
                ) or wvar > _UNSTABLE2 * var:
                    return self._leave(y, t)
            dd = b - self._chain_b
            return self._check_drift(now) if dd * dd > self._drift_limit2 else _NO_EVENTS

        # INIT or UNSETTLED: look for a new stable level.
        stable_now = n >= MIN_SAMPLES and wvar <= _STABLE2 * var and full and device_stable is not False
        cn = self._cn
        if cn:
            if not stable_now:
                self._cn = 0
                cn = 0
            else:
                mc = self._csum / cn
                dc = r - mc
                dmc = mean_r - mc
                if dc * dc > _LEAVE_SAMPLE2 * var or dmc * dmc > max(
                    _LEAVE_MEAN2 * var * (1.0 / n + 1.0 / cn), self._leave_floor2
                ):
                    # The level moved while we were averaging it: start again from this sample.
                    self._reset_window(y, t)
                    return _NO_EVENTS
                self._csum += r
                cn += 1
                self._cn = cn
        elif stable_now:
            t_from = w[0][0] + CAND_FROM_FRACTION * (t - w[0][0])
            csum = 0.0
            for tk, rk in w:
                if tk >= t_from:
                    csum += rk
                    cn += 1
            n_old = n - cn
            if n_old and cn:
                # Still creeping towards its level? The older half of the window must agree with the newer.
                dm = (s - csum) / n_old - csum / cn
                if dm * dm > TREND_K * TREND_K * var * (1.0 / n_old + 1.0 / cn):
                    return _NO_EVENTS
            self._csum = csum
            self._cn = cn
            self._ct0 = t_from
        if not cn or t - self._ct0 < self._min_hold_s:
            return _NO_EVENTS
        return self._decide(t, now)

    # --- decisions (a few per minute) -------------------------------------------------------------------

    def _decide(self, t: float, now: float) -> tuple[EngineEvent, ...]:
        cn = self._cn
        var = self._var
        u = self._unit_g
        level = self._ref + self._csum / cn
        var_level = var / cn
        waited = t - self._ct0
        if self._state == _INIT:
            c = max(round(level * self._inv_unit), 0)
            fixed2 = TOL_K * TOL_K * c * self._spread_var
            tol2 = fixed2 + TOL_K * TOL_K * var_level
            if tol2 > self._target_tol2 and waited < self._max_wait_s and fixed2 < self._target_tol2:
                return _NO_EVENTS
            return self._commit_initial(level, var_level, t, now)
        delta = level - self._b
        n_items = round(delta * self._inv_unit)
        fixed2 = TOL_K * TOL_K * (abs(n_items) * self._spread_var + var * self._inv_bn_eff)
        tol2 = fixed2 + TOL_K * TOL_K * var_level
        if tol2 > self._target_tol2 and waited < self._max_wait_s and fixed2 < self._target_tol2:
            return _NO_EVENTS
        residual = delta - n_items * u
        tol2 = max(tol2, self._tol_floor2)
        accepted = (
            tol2 < self._max_tol2
            and residual * residual <= tol2
            and var <= self._resolvable_var
            and not self._neighbour_fits(delta, n_items, var * self._inv_bn_eff + var_level)
        )
        return self._commit_step(
            level, var_level, delta=delta, n_items=n_items, accepted=accepted, t=t, now=now
        )

    def _commit_initial(
        self, level: float, var_level: float, t: float, now: float
    ) -> tuple[EngineEvent, ...]:
        out: list[EngineEvent] = []
        if self._range_check(level, now, out):
            self.uncertain = self.count is not None
            self._anchor(level, t, keep_chain=False)
            return tuple(out)
        rec = self._absolute(level, var_level)
        if self.count is None:
            if rec is not None:
                self.count = rec
                self.uncertain = False
                self._announce(out, now, 0, "initial", level)
            else:
                out.append(
                    Ambiguous(
                        self.bin_id,
                        now,
                        level,
                        f"initial level {level:.1f} g is not a whole number of "
                        f"{_unit_str(self._unit_g)} items",
                        self.candidates(level, var_level),
                        None,
                        level,
                    )
                )
        elif rec == self.count and not self.uncertain:
            self._announce(out, now, 0, "initial", level)
        elif rec is not None and "drifting" not in self._faults:
            old = self.count
            self.count = rec
            self.uncertain = False
            self._announce(out, now, rec - old, "reconcile", level)
        else:
            self.uncertain = True
            out.append(
                Ambiguous(
                    self.bin_id,
                    now,
                    level - self.count * self._unit_g,
                    f"level {level:.1f} g does not match the restored count {self.count}",
                    self.candidates(level, var_level),
                    self.count,
                    level,
                )
            )
        self._anchor(level, t, keep_chain=False)
        return tuple(out)

    def _commit_step(
        self,
        level: float,
        var_level: float,
        *,
        delta: float,
        n_items: int,
        accepted: bool,
        t: float,
        now: float,
    ) -> tuple[EngineEvent, ...]:
        out: list[EngineEvent] = []
        if self._range_check(level, now, out):
            if self.count is not None:
                self.uncertain = True
            self._anchor(level, t, keep_chain=False)
            return tuple(out)
        count = self.count
        if accepted and count is not None and count + n_items < 0:
            accepted = False
        if count is None or self.uncertain:
            # The count is not confirmed: an absolute reconciliation outranks a relative step.
            rec = self._absolute(level, var_level)
            drifting = "drifting" in self._faults
            expected = count + n_items if accepted and count is not None else count
            if rec is not None and (count is None or not drifting or rec == expected):
                if drifting:
                    self._set_fault(out, now, "drifting", active=False, detail="level agrees with the count")
                self.count = rec
                self.uncertain = False
                if accepted and count is not None and n_items and rec == expected:
                    self._announce(out, now, n_items, "pick" if n_items < 0 else "put", level)
                else:
                    cause: CountCause = "initial" if count is None else "reconcile"
                    self._announce(out, now, 0 if count is None else rec - count, cause, level)
                self._anchor(level, t, keep_chain=False)
                return tuple(out)
            if accepted:
                if n_items and count is not None:
                    self.count = count + n_items
                    self._announce(out, now, n_items, "pick" if n_items < 0 else "put", level, uncertain=True)
                self._anchor(level, t, keep_chain=n_items == 0)
                return tuple(out)
            out.append(self._ambiguous(now, delta, n_items, level, var_level))
            self._anchor(level, t, keep_chain=False)
            return tuple(out)
        if accepted:
            if n_items:
                self.count = count + n_items
                self._announce(out, now, n_items, "pick" if n_items < 0 else "put", level)
            elif not self._announced:
                self._announce(out, now, 0, "initial", level)
            self._anchor(level, t, keep_chain=n_items == 0)
            self._zero_check(level, var_level, now, out)
            return tuple(out)
        out.append(self._ambiguous(now, delta, n_items, level, var_level))
        rec = self._absolute(level, var_level)
        if rec is not None and "drifting" not in self._faults:
            self.count = rec
            self._announce(out, now, rec - count, "reconcile", level)
        else:
            self.uncertain = True
        self._anchor(level, t, keep_chain=False)
        return tuple(out)

    def _ambiguous(self, now: float, delta: float, n_items: int, level: float, var_level: float) -> Ambiguous:
        return Ambiguous(
            self.bin_id,
            now,
            delta,
            self._ambiguity_reason(delta, n_items),
            self.candidates(level, var_level),
            None if self.uncertain else self.count,
            level,
        )

    def candidates(self, level_g: float, var_level_g2: float | None = None) -> tuple[int, ...]:
        """The counts a net weight may stand for, nearest first — what an ambiguity offers a camera.

        Every count c ≥ 0 whose weight c·unit lies within 4σ of `level_g` (σ² = c·spread² + the level's
        measurement variance, the neighbour test's bound); when none does (a change that is no whole number of
        items: a foreign item, a sensor problem), the two whole counts around `level_g`. Never empty.
        """
        u = self._unit_g
        var = self._var / 8.0 if var_level_g2 is None else var_level_g2
        if not math.isfinite(var):
            var = 0.0
        x = level_g * self._inv_unit
        lo, hi = max(math.floor(x), 0), max(math.ceil(x), 0)
        found: list[int] = []
        c = lo
        while c >= 0:  # downwards from floor(x) while within the bound
            r = level_g - c * u
            if r * r > NEIGHBOUR_K * NEIGHBOUR_K * (c * self._spread_var + var):
                break
            found.append(c)
            c -= 1
        c = lo + 1
        while True:  # upwards
            r = level_g - c * u
            if r * r > NEIGHBOUR_K * NEIGHBOUR_K * (c * self._spread_var + var):
                break
            found.append(c)
            c += 1
        if not found:
            found = sorted({lo, hi})
        return tuple(sorted(set(found), key=lambda n: (abs(level_g - n * u), n)))

    def resolve(self, count: int, ts: float) -> CountChanged:
        """Another source (a camera, `edge.inventory.fusion`) settled the count after an ambiguity: adopt it as
        confirmed at the current level (`cause="reconcile"`). The level is already the baseline, so later
        steps count from it. Raises ValueError for a negative count."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        old = self.count
        self.count = count
        self.uncertain = False
        self._announced = True
        return CountChanged(self.bin_id, ts, 0 if old is None else count - old, count, self._b, "reconcile")

    def level_count(self) -> int | None:
        """The whole count the current stable level stands for within tolerance (None when it is not one, or
        while the plate is not stable) — e.g. whether a foreign item has left the plate again."""
        if self._state != _STABLE or self._bn == 0:
            return None
        return self._absolute(self._b, self._var * self._inv_bn_eff)

    def _ambiguity_reason(self, delta: float, n_items: int) -> str:
        items = delta * self._inv_unit
        if n_items == 0 or (self.count is not None and self.count + n_items < 0):
            return f"weight changed by {delta:+.1f} g ({items:+.2f} items): not a whole item"
        return f"weight changed by {delta:+.1f} g ({items:+.2f} items): not within tolerance of {n_items:+d}"

    def _announce(
        self,
        out: list[EngineEvent],
        now: float,
        delta: int,
        cause: CountCause,
        level: float,
        *,
        uncertain: bool = False,
    ) -> None:
        if self.count is None:  # pragma: no cover - every caller sets the count first
            return
        self._announced = True
        out.append(CountChanged(self.bin_id, now, delta, self.count, level, cause, uncertain))

    def _absolute(self, level: float, var_level: float) -> int | None:
        """The whole count the net weight stands for, or None when it is not one within tolerance."""
        c = round(level * self._inv_unit)
        if c < 0:
            return None
        tol2 = TOL_K * TOL_K * (c * self._spread_var + var_level)
        if tol2 >= self._max_tol2 or self._var > self._resolvable_var:
            return None
        residual = level - c * self._unit_g
        if residual * residual > max(tol2, self._tol_floor2) or self._neighbour_fits(level, c, var_level):
            return None
        return c

    def _neighbour_fits(self, weight_g: float, n: int, var_g2: float) -> bool:
        """Would n − 1 or n + 1 items also explain `weight_g` within 4σ (item spread + measurement)?"""
        u = self._unit_g
        for alt in (n - 1, n + 1):
            if alt < 0 and weight_g >= 0.0:
                continue
            r = weight_g - alt * u
            if r * r <= NEIGHBOUR_K * NEIGHBOUR_K * (abs(alt) * self._spread_var + var_g2):
                return True
        return False

    def _zero_check(self, level: float, var_level: float, now: float, out: list[EngineEvent]) -> None:
        """After a counted step: does the absolute level still agree with the count (is the zero sound)?"""
        count = self.count
        if count is None:
            return
        offset = level - count * self._unit_g
        var_off = count * self._spread_var + var_level
        off2 = offset * offset
        tol2 = max(TOL_K * TOL_K * var_off, self._tol_floor2)
        if off2 <= tol2 < self._max_tol2:
            if "drifting" in self._faults:
                self._set_fault(out, now, "drifting", active=False, detail="level agrees with the count")
            return
        limit = DRIFT_FRACTION * self._unit_g
        if "drifting" not in self._faults and off2 > limit * limit and off2 > 16.0 * var_off:
            self.uncertain = True
            self._set_fault(
                out,
                now,
                "drifting",
                active=True,
                detail=f"level is {offset:+.1f} g away from {count} items: zero moved",
            )

    def _range_check(self, level: float, now: float, out: list[EngineEvent]) -> bool:
        """Net weight well below zero (tray lifted, zero lost)? Updates the fault; True if so."""
        bad = level < -OUT_OF_RANGE_FRACTION * self._unit_g
        if bad != ("out_of_range" in self._faults):
            self._set_fault(
                out,
                now,
                "out_of_range",
                active=bad,
                detail=f"net weight {level:.1f} g below zero" if bad else "net weight back in range",
            )
        return bad

    def _check_drift(self, now: float) -> tuple[EngineEvent, ...]:
        """Bounded drift: a baseline that wandered > 0.5 unit since the last event is a fault, not creep."""
        if "drifting" in self._faults:
            return _NO_EVENTS
        d = self._b - self._chain_b
        var_d = self._var * (self._chain_inv_n + self._inv_bn_eff)
        if d * d <= 16.0 * var_d:
            return _NO_EVENTS
        out: list[EngineEvent] = []
        if self.count is not None:
            self.uncertain = True
        self._set_fault(out, now, "drifting", active=True, detail=f"baseline moved {d:+.1f} g without a step")
        return tuple(out)

    def _set_fault(self, out: list[EngineEvent], now: float, kind: str, *, active: bool, detail: str) -> None:
        if active:
            self._faults.add(kind)
        else:
            self._faults.discard(kind)
        out.append(SensorFault(self.bin_id, now, kind, active, detail))

    # --- state changes ---------------------------------------------------------------------------------

    def _anchor(self, level: float, t: float, *, keep_chain: bool) -> None:
        """Adopt `level` as the baseline; the window's samples are already in it (hence the watermark)."""
        self._b = level
        self._bn = min(self._cn, BASELINE_N_MAX)
        self._inv_bn_eff = 1.0 / self._bn if self._bn < BASELINE_N_MAX else 1.0 / (2 * BASELINE_N_MAX - 1)
        if not keep_chain:
            self._chain_b = level
            self._chain_inv_n = 1.0 / self._cn
        self._ct0 = t
        self._cn = 0
        self._state = _STABLE
        self.stable = True

    def _leave(self, y: float, t: float) -> tuple[EngineEvent, ...]:
        self._state = _UNSETTLED
        self.stable = False
        self._reset_window(y, t)
        return _NO_EVENTS

    def _reset_window(self, y: float, t: float) -> None:
        self._w.clear()
        self._wfull = False
        self._ref = y
        self._w.append((t, 0.0))
        self._wsum = 0.0
        self._wsq = 0.0
        self._cn = 0

    def _bad_sample(self, ts: float, *, overload: bool, fault: bool) -> tuple[EngineEvent, ...]:
        """Overload/fault flag or a non-finite value: report the change, forget the level until it is back."""
        out: list[EngineEvent] = []
        for kind, on in (("overload", overload), ("fault", fault)):
            if on != (kind in self._faults):
                detail = f"transmitter reports {kind}" if on else f"{kind} cleared"
                self._set_fault(out, ts, kind, active=on, detail=detail)
        self._flagged = True
        self._p1 = None
        self._p2 = None
        self._w.clear()
        self._wfull = False
        self._wsum = 0.0
        self._wsq = 0.0
        self._cn = 0
        if self._state == _STABLE:
            self._state = _UNSETTLED
        self.stable = False
        return tuple(out) if out else _NO_EVENTS

    def _clear_flags(self, ts: float) -> list[EngineEvent]:
        out: list[EngineEvent] = []
        for kind in ("overload", "fault"):
            if kind in self._faults:
                self._set_fault(out, ts, kind, active=False, detail=f"{kind} cleared")
        self._flagged = False
        return out


def _unit_str(unit_g: float) -> str:
    """A unit weight for messages: '250 g', '12.5 g'."""
    return f"{unit_g:g} g"


def _diff_var(w: Iterable[tuple[float, float]]) -> float:
    """σ² implied by the median of successive differences of the window's values (robust to steps and motion)."""
    values = [v for _, v in w]
    diffs = sorted(abs(b - a) for a, b in pairwise(values))
    if not diffs:
        return math.inf
    sigma = diffs[len(diffs) // 2] / MEDIAN_ABS_DIFF_PER_SIGMA
    return sigma * sigma
