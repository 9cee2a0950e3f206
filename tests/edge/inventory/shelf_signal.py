"""A synthetic weighed bin with known ground truth, for scoring the estimator.

Model (grams): the plate carries `tare_g` plus real items, each with its own mass ~ N(unit, spread²).
A session is rest → move → rest → move …; a move is a hand on the plate for 0.2–0.6 s (the reading
wanders, pressed and lifted), then the plate rings down as a damped oscillation (τ 0.04–0.12 s, 2–6 Hz)
onto the new mass.
Every sample gets Gaussian noise σ, optionally a single-sample spike and a slow linear creep; samples are
taken at `rate_hz` with ±10 % timing jitter and mapped back to transmitter units through the calibration.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from edge.inventory import Ambiguous, BinEstimator, CountChanged, EngineEvent


@dataclass(frozen=True, slots=True)
class Move:
    """One pick or put in the ground truth."""

    t_start: float
    t_end: float
    """When the hand left the plate (the ring-down starts)."""
    delta: int
    count_after: int


@dataclass(slots=True)
class Session:
    """Samples (ts, value in transmitter units) and what really happened."""

    samples: list[tuple[float, float]] = field(default_factory=list)
    moves: list[Move] = field(default_factory=list)
    initial_count: int = 0
    spikes: int = 0


@dataclass(frozen=True, slots=True)
class ShelfModel:
    """Parameters of one synthetic bin."""

    unit_g: float = 250.0
    spread_g: float = 2.5
    noise_g: float = 10.0
    rate_hz: float = 10.0
    tare_g: float = 120.0
    zero: float = 1000.0
    span_g_per_unit: float = 0.5
    initial_count: int = 12
    max_count: int = 24
    rest_s: tuple[float, float] = (1.6, 3.5)
    spike_prob: float = 0.0
    spike_g: tuple[float, float] = (300.0, 3000.0)
    creep_g_per_s: float = 0.0


def _move_sizes(rng: random.Random) -> int:
    return rng.choice((1, 1, 1, 1, 1, 2, 2, 3))


def generate(model: ShelfModel, moves: int, seed: int, *, lead_s: float = 3.0) -> Session:
    """`moves` picks/puts after `lead_s` of rest; deterministic for one seed."""
    rng = random.Random(seed)
    m = model
    items = [rng.gauss(m.unit_g, m.spread_g) for _ in range(m.initial_count)]
    session = Session(initial_count=len(items))
    # Build the timeline of moves first: (t_start, t_end, mass_before, mass_after, A, tau, f, press).
    timeline: list[tuple[float, float, float, float, float, float, float, float]] = []
    t = lead_s
    for _ in range(moves):
        before = m.tare_g + sum(items)
        k = _move_sizes(rng)
        if len(items) - k < 0 or (len(items) + k <= m.max_count and rng.random() < 0.5):
            for _ in range(k):
                items.append(rng.gauss(m.unit_g, m.spread_g))
            delta = k
        else:
            for _ in range(k):
                items.pop(rng.randrange(len(items)))
            delta = -k
        after = m.tare_g + sum(items)
        duration = rng.uniform(0.2, 0.6)
        ring = (after - before) * rng.uniform(0.2, 0.5) * rng.choice((-1.0, 1.0))
        tau = rng.uniform(0.04, 0.12)
        freq = rng.uniform(2.0, 6.0)
        press = rng.uniform(-0.5, 1.5) * m.unit_g * abs(delta)
        timeline.append((t, t + duration, before, after, ring, tau, freq, press))
        session.moves.append(Move(t, t + duration, delta, len(items)))
        t += duration + rng.uniform(*m.rest_s)
    end_s = t + 2.0

    period = 1.0 / m.rate_hz
    ts = 0.0
    idx = 0  # the move in progress or the next one
    mass_now = timeline[0][2] if timeline else m.tare_g + sum(items)
    ring_a, ring_tau, ring_f, ring_t0 = 0.0, 1.0, 1.0, -1e9
    while ts < end_s:
        while idx < len(timeline) and ts >= timeline[idx][1]:
            _, t_end, _, after, ring_a, ring_tau, ring_f, _ = timeline[idx]
            mass_now = after
            ring_t0 = t_end
            idx += 1
        if idx < len(timeline) and ts >= timeline[idx][0]:
            t0, t1, before, after, _, _, _, press = timeline[idx]
            frac = (ts - t0) / (t1 - t0)
            grams = (
                before
                + (after - before) * frac
                + press * math.sin(math.pi * frac)
                + rng.gauss(0, 3 * m.noise_g)
            )
        else:
            dt = ts - ring_t0
            grams = mass_now + (
                ring_a * math.exp(-dt / ring_tau) * math.cos(2 * math.pi * ring_f * dt) if dt < 2 else 0
            )
        grams += rng.gauss(0.0, m.noise_g) + m.creep_g_per_s * ts
        if m.spike_prob and rng.random() < m.spike_prob:
            grams += rng.uniform(*m.spike_g) * rng.choice((-1.0, 1.0))
            session.spikes += 1
        session.samples.append((ts, m.zero + grams / m.span_g_per_unit))
        ts += period * rng.uniform(0.9, 1.1)
    return session


@dataclass(slots=True)
class Score:
    """How an estimator did on a session, move by move."""

    moves: int = 0
    exact: int = 0
    """The move produced exactly one pick/put event with the true delta, no ambiguity."""
    ambiguous: int = 0
    """The move produced an `Ambiguous` (the honest outcome when it cannot be counted)."""
    wrong: int = 0
    """At the end of the move's rest, the estimator sat on a stable level and claimed a confirmed count that
    is not the truth (still settling is "pending", not wrong)."""
    wrong_events: int = 0
    """Confirmed count events whose count is neither the truth of their interval nor of the one before (a
    decision on the previous level may land just after the next hand touches the plate)."""
    initial_ok: bool = False
    events: list[EngineEvent] = field(default_factory=list)

    @property
    def exact_fraction(self) -> float:
        return self.exact / self.moves if self.moves else 0.0

    @property
    def wrong_fraction(self) -> float:
        return self.wrong / self.moves if self.moves else 0.0


def run(est: BinEstimator, session: Session) -> Score:
    """Feed the session to `est` and score every move against the ground truth."""
    score = Score(moves=len(session.moves))
    moves = session.moves
    i = -1
    interval: list[EngineEvent] = []

    def truth_at(i: int) -> int:
        return moves[i].count_after if i >= 0 else session.initial_count

    def close(i: int) -> None:
        truth = truth_at(i)
        counted = [e for e in interval if isinstance(e, CountChanged)]
        ambiguous = any(isinstance(e, Ambiguous) for e in interval)
        score.wrong_events += sum(
            1 for e in counted if not e.uncertain and e.count not in (truth, truth_at(max(i - 1, -1)))
        )
        if est.stable and est.count is not None and not est.uncertain and est.count != truth:
            score.wrong += 1
        if i < 0:
            score.initial_ok = est.count == truth and not est.uncertain
            return
        score.ambiguous += ambiguous
        if (
            not ambiguous
            and len(counted) == 1
            and counted[0].cause in ("pick", "put")
            and counted[0].delta == moves[i].delta
            and not counted[0].uncertain
        ):
            score.exact += 1

    for ts, value in session.samples:
        while i + 1 < len(moves) and ts >= moves[i + 1].t_start:
            close(i)
            interval = []
            i += 1
        out = est.feed(value, ts)
        interval.extend(out)
        score.events.extend(out)
    close(i)
    return score


def plateaus(
    model: ShelfModel,
    segments: list[tuple[float, float]],
    seed: int,
    *,
    t0: float = 0.0,
    creep_g_per_s: float = 0.0,
) -> list[tuple[float, float]]:
    """Samples of piecewise-constant net weights, `segments` = [(duration_s, net_g), …], with noise."""
    rng = random.Random(seed)
    out: list[tuple[float, float]] = []
    t = t0
    period = 1.0 / model.rate_hz
    for duration, net_g in segments:
        end = t + duration
        while t < end:
            grams = model.tare_g + net_g + rng.gauss(0.0, model.noise_g) + creep_g_per_s * (t - t0)
            out.append((t, model.zero + grams / model.span_g_per_unit))
            t += period * rng.uniform(0.9, 1.1)
    return out
