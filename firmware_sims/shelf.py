"""Shelf physics for one transmitter channel: items on a plate, a load cell, and the transmitter's output.

Everything is a pure function of an explicit clock value `t` (seconds) and the seed, so a test can ask for the
reading at t = 1.234 twice and get the same answer, and two runs with one seed produce the same store.

Model (grams unless named otherwise)::

    gross(t)  = tare + Σ_events Δm_e · step(t - t_e) + creep_g_per_h · t / 3600
    sample_k  = gross(k / rate) + noise_k,            noise_k ~ N(0, noise_g²), fixed per (seed, bin, k)
    value(t)  = zero + sample_k / span_g_per_unit,    k = ⌊t · rate⌋   (the output holds between samples)

`step` is the unit step response of an underdamped second-order system (a plate on a spring with damping):
peak overshoot `overshoot`, 2 % settling time `settle_s`, i.e. ζ = -ln(OS)/√(π² + ln²(OS)) and
ω_n = 4 / (ζ · settle_s) (Ogata, *Modern Control Engineering*, §5-3). Each pick or put is one step of Δm, so
overlapping moves superpose as they do on a real plate.

The transmitter's `stable` flag is computed the way a transmitter's motion detector does it: true when
its own samples over the last `stable_window_s` span less than the motion band. It is derived from the same
samples the registers show, not guessed from the time since the last move.
"""

from __future__ import annotations

import hashlib
import math
import random
import struct
from dataclasses import dataclass

from drivers.modbus.protocol import ChannelReading

from .layout import ShelfPhysics, SimBin

_SETTLED_ENVELOPE = 4.0
"""Events older than this many `settle_s` are folded into the settled mass (envelope < 1e-7 by then)."""


_SAMPLE_CACHE = 256
"""Samples kept per shelf (~5 s at 50 samples/s); the cache is a pure speed-up, values never depend on it."""


def derive_seed(seed: int, *parts: str) -> int:
    """A stable 64-bit sub-seed for one component (Python's `hash()` is salted per process; this is not)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(seed.to_bytes(16, "big", signed=True))
    for p in parts:
        h.update(b"\x00" + p.encode())
    return int.from_bytes(h.digest(), "big")


@dataclass(frozen=True, slots=True)
class _Move:
    t: float
    delta_g: float


class Shelf:
    """One bin's plate as the transmitter sees it. Mutated only by `pick`/`put` and the fault setters."""

    def __init__(
        self, sim_bin: SimBin, *, noise_g: float = 1.0, physics: ShelfPhysics | None = None, seed: int = 0
    ):
        self.bin = sim_bin
        self.physics = physics or ShelfPhysics()
        self.noise_g = noise_g
        self._band_g = self.physics.band_g(noise_g)
        self._rng = random.Random(derive_seed(seed, "items", sim_bin.bin_id))
        self._noise_key = derive_seed(seed, "noise", sim_bin.bin_id).to_bytes(8, "big")
        os_ = self.physics.overshoot
        self._zeta = -math.log(os_) / math.sqrt(math.pi**2 + math.log(os_) ** 2)
        self._omega_n = 4.0 / (self._zeta * self.physics.settle_s)
        self._omega_d = self._omega_n * math.sqrt(1.0 - self._zeta**2)
        self._horizon_s = _SETTLED_ENVELOPE * self.physics.settle_s
        self._items_g: list[float] = [self._draw_item() for _ in range(sim_bin.initial_count)]
        self._settled_g = sum(self._items_g)
        self._moves: list[_Move] = []
        self._last_move_t = -math.inf
        self._stuck_reading: ChannelReading | None = None
        self._samples: dict[int, float] = {}
        """Sample k → grams. Successive reads share most of the stability window (weight and status blocks
        of one poll, and polls 0.2 s apart over a 0.3 s window), so each sample is computed about once."""
        self.fault_bit = False
        """Set the transmitter's per-channel fault bit (e.g. a broken load-cell wire)."""

    # --- stock ------------------------------------------------------------------------------------------

    @property
    def channel(self) -> int:
        """The transmitter channel this plate is wired to."""
        return self.bin.channel

    @property
    def count(self) -> int:
        """The true number of items on the plate."""
        return len(self._items_g)

    @property
    def item_masses_g(self) -> tuple[float, ...]:
        """Each item's own mass (drawn once from N(unit_weight_g, unit_weight_spread_g²))."""
        return tuple(self._items_g)

    def _draw_item(self) -> float:
        b = self.bin
        return max(0.1 * b.unit_weight_g, self._rng.gauss(b.unit_weight_g, b.unit_weight_spread_g))

    def _move(self, t: float, delta_g: float) -> None:
        # Moves are applied in time order; one stamped slightly earlier than the last (a scenario event that
        # was due while a test moved items by hand) starts with it instead of rewriting history.
        t = max(t, self._last_move_t)
        self._last_move_t = t
        self._samples.clear()
        keep = []
        for m in self._moves:
            if t - m.t > self._horizon_s:
                self._settled_g += m.delta_g
            else:
                keep.append(m)
        keep.append(_Move(t, delta_g))
        self._moves = keep

    def pick(self, n: int, t: float) -> float:
        """Take `n` random items off the plate at time `t`; return the mass removed. Never below zero."""
        if n < 0 or n > self.count:
            raise ValueError(f"bin {self.bin.bin_id}: cannot pick {n} of {self.count} items")
        removed = 0.0
        for _ in range(n):
            removed += self._items_g.pop(self._rng.randrange(len(self._items_g)))
        if n:
            self._move(t, -removed)
        return removed

    def put(self, n: int, t: float) -> float:
        """Place `n` new items (each with its own drawn mass) at time `t`; return the mass added."""
        if n < 0:
            raise ValueError(f"bin {self.bin.bin_id}: cannot put {n} items")
        added = [self._draw_item() for _ in range(n)]
        self._items_g.extend(added)
        if n:
            self._move(t, sum(added))
        return sum(added)

    # --- physics ----------------------------------------------------------------------------------------

    def _step(self, tau: float) -> float:
        """Unit step response of the plate, 0 before the move and → 1 after it settles."""
        if tau <= 0:
            return 0.0
        if tau >= self._horizon_s:
            return 1.0
        z, wd = self._zeta, self._omega_d
        decay = math.exp(-z * self._omega_n * tau)
        return 1.0 - decay * (math.cos(wd * tau) + z / math.sqrt(1.0 - z * z) * math.sin(wd * tau))

    def gross_g(self, t: float) -> float:
        """Noise-free load on the cell at time `t`: tare + items (with their settling transient) + creep."""
        moving = sum(m.delta_g * self._step(t - m.t) for m in self._moves)
        creep = self.physics.creep_g_per_h * t / 3600.0
        return self.bin.tare_g + self._settled_g + moving + creep

    def _noise(self, k: int) -> float:
        """Gaussian noise of sample k, fixed by (seed, bin, k) so any read order sees the same samples."""
        if self.noise_g == 0:
            return 0.0
        digest = hashlib.blake2b(self._noise_key + k.to_bytes(8, "big", signed=True), digest_size=16).digest()
        a, b = struct.unpack(">QQ", digest)
        u1 = (a + 1) / 2.0**64  # (0, 1]: log is finite
        u2 = b / 2.0**64
        return self.noise_g * math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)

    def sample_index(self, t: float) -> int:
        """The transmitter sample whose value the registers hold at time `t`."""
        return math.floor(t * self.physics.sample_rate_hz)

    def sample_g(self, k: int) -> float:
        """Sample k as the load cell measured it (grams, noise included)."""
        cached = self._samples.get(k)
        if cached is not None:
            return cached
        if len(self._samples) >= _SAMPLE_CACHE:
            self._samples.clear()
        value = self._samples[k] = self.gross_g(k / self.physics.sample_rate_hz) + self._noise(k)
        return value

    def measured_g(self, t: float) -> float:
        """What the transmitter shows at time `t`, in grams."""
        return self.sample_g(self.sample_index(t))

    def stable(self, t: float) -> bool:
        """The transmitter's motion detector: its samples over the last `stable_window_s` span < the band."""
        k = self.sample_index(t)
        n = max(1, round(self.physics.stable_window_s * self.physics.sample_rate_hz))
        window = [self.sample_g(i) for i in range(k - n, k + 1)]
        return max(window) - min(window) < self._band_g

    def reading(self, t: float) -> ChannelReading:
        """The channel as its registers present it at time `t` (value in profile units)."""
        if self._stuck_reading is not None:
            return ChannelReading(
                channel=self.channel,
                value=self._stuck_reading.value,
                stable=True,  # a frozen output does not move, so the motion detector calls it stable
                overload=self._stuck_reading.overload,
                fault=self.fault_bit,
            )
        grams = self.measured_g(t)
        return ChannelReading(
            channel=self.channel,
            value=self.bin.zero + grams / self.bin.span_g_per_unit,
            stable=self.stable(t),
            overload=grams > self.bin.effective_capacity_g,
            fault=self.fault_bit,
        )

    # --- faults -----------------------------------------------------------------------------------------

    @property
    def stuck(self) -> bool:
        """Whether the output is frozen (a hung ADC: the registers keep their value whatever happens)."""
        return self._stuck_reading is not None

    def set_stuck(self, stuck: bool, t: float) -> None:
        """Freeze the output at its value at time `t`, or release it."""
        self._stuck_reading = None
        if stuck:
            self._stuck_reading = self.reading(t)
