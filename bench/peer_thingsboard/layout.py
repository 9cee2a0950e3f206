"""The simulated store both gateways poll: N transmitters × 4 weight channels, one register layout.

Every transmitter presents the same 12 holding registers (FC03, Modbus Application Protocol v1.1b3 §6.3)::

    0..7    channel n's weight at 2n: int32, high word first (ABCD), 1 count = 1 g
    8..11   channel n's status word at 8 + n: bit 0 stable, bit 1 overload, bit 2 fault

shelfgate reads it as one 12-register block per poll (its planner coalesces, `drivers.modbus.protocol`); the
peer is configured the way its Modbus connector works — one request per tag, one tag per channel weight
(`32int`, 2 registers) — so one peer poll of a transmitter is 4 requests. Status words are not given to the
peer: its telemetry would carry them as 4 more requests per poll and nothing in its pipeline uses them.

A Modbus unit id is 1..247 (Modbus over Serial Line v1.02 §2.2), so large stores are split over several
TCP endpoints of at most `UNITS_PER_ENDPOINT` unit ids each (a store has several Modbus TCP gateways): on
shelfgate each endpoint is one bus (one connection, one lock); on the peer each device names its endpoint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

CHANNELS: Final = 4
WEIGHT_ADDRESS: Final = 0
STATUS_ADDRESS: Final = 8
REGISTERS: Final = 12
"""Registers per transmitter: 4 × int32 weights + 4 status words, read by shelfgate as one block."""
STABLE_BIT: Final = 0
UNIT_WEIGHT_G: Final = 250
"""Every item weighs exactly this in the simulator; the bins say a 1 % spread (2.5 g), as for packaged goods."""
UNIT_SPREAD_G: Final = 2.5
INITIAL_COUNT: Final = 12
UNITS_PER_ENDPOINT: Final = 50
RTU_BAUD: Final = 19200
"""The demo store's RS-485 line (config/demo-store.yaml `rtu1`)."""
PROFILE_NAME: Final = "bench-peer-4ch-int32"

Transport = Literal["tcp", "rtu"]

_LEVEL_RE: Final = re.compile(r"^(?:(tcp|rtu):)?(\d+)x(\d+(?:\.\d+)?)$")


@dataclass(frozen=True, slots=True)
class Level:
    """One load level: `devices` transmitters polled at `rate_hz` over `transport`."""

    devices: int
    rate_hz: float
    transport: Transport = "tcp"

    @classmethod
    def parse(cls, text: str) -> Level:
        """`20x10` (TCP), `tcp:500x10`, `rtu:4x5` → Level; ValueError with the accepted form otherwise."""
        m = _LEVEL_RE.match(text.strip())
        if m is None:
            raise ValueError(f"level {text!r}: expected [tcp:|rtu:]DEVICESxHZ, e.g. 20x10 or rtu:4x5")
        transport: Transport = "rtu" if m.group(1) == "rtu" else "tcp"
        devices, rate = int(m.group(2)), float(m.group(3))
        if devices < 1 or rate <= 0:
            raise ValueError(f"level {text!r}: need at least one device and a positive rate")
        if transport == "rtu" and devices > 247:
            raise ValueError(f"level {text!r}: one RTU line carries at most 247 unit ids")
        return cls(devices, rate, transport)

    @property
    def name(self) -> str:
        """`20x10`, `rtu:4x5`: what the tables and the --levels flag say."""
        rate = f"{self.rate_hz:g}"
        return f"{self.devices}x{rate}" if self.transport == "tcp" else f"rtu:{self.devices}x{rate}"

    @property
    def readings_per_s(self) -> float:
        """Expected readings/s: one reading = one poll of one transmitter (all 4 channel values)."""
        return self.devices * self.rate_hz

    @property
    def poll_interval_s(self) -> float:
        """Seconds between two polls of one transmitter."""
        return 1.0 / self.rate_hz

    @property
    def endpoints(self) -> int:
        """TCP endpoints the simulator serves (RTU: one line)."""
        if self.transport == "rtu":
            return 1
        return (self.devices + UNITS_PER_ENDPOINT - 1) // UNITS_PER_ENDPOINT

    @property
    def min_change_gap_s(self) -> float:
        """Quiet time on a channel after each change, so every change can be seen on its own.

        At least 3 s, and 8 polls: the engine needs a settle window of stable samples (and at 1 Hz a few
        seconds) before it counts, and the peer needs one poll.
        """
        return max(3.0, 8.0 / self.rate_hz)

    @property
    def change_interval_s(self) -> float:
        """Mean time between two changes of one channel (a busy store: every bin about every 20 s)."""
        return max(20.0, 3.0 * self.min_change_gap_s)


def device_name(index: int) -> str:
    """Transmitter `index` (0-based across the store) → its name on both sides (peer deviceName, shelfgate id)."""
    return f"tx{index:03d}"


def bin_id(index: int, channel: int) -> str:
    """The shelfgate bin on one transmitter channel."""
    return f"{device_name(index)}-c{channel}"


def parse_bin_id(text: str) -> tuple[int, int]:
    """`tx007-c2` → (7, 2); ValueError for anything else."""
    m = re.fullmatch(r"tx(\d+)-c(\d+)", text)
    if m is None:
        raise ValueError(f"not a bench bin id: {text!r}")
    return int(m.group(1)), int(m.group(2))


def endpoint_of(index: int, level: Level) -> tuple[int, int]:
    """Transmitter `index` → (endpoint number, unit id) in the simulator."""
    if level.transport == "rtu":
        return 0, index + 1
    return index // UNITS_PER_ENDPOINT, index % UNITS_PER_ENDPOINT + 1


def weight_words(grams: int) -> tuple[int, int]:
    """int32 ABCD: high word first (the layout above)."""
    raw = grams & 0xFFFFFFFF
    return raw >> 16, raw & 0xFFFF


DEFAULT_LEVELS: Final = ("2x1", "20x10", "50x10", "100x10", "200x10", "500x10", "rtu:4x5")
QUICK_LEVELS: Final = ("2x1", "50x10", "rtu:4x5")
