"""Test helper: simulated weight transmitters for bus-scan tests, built from `firmware_sims` parts.

Each `sim_unit` is a `firmware_sims.modbus_server.SimUnit` with one loaded shelf on channel 0, so its weight
registers carry live, profile-encoded values (the same codec the gateway and the scan decode with); the other
channels read zero, as an unloaded transmitter input does in the simulator.
"""

from __future__ import annotations

import time

from drivers.modbus.protocol import RegisterMap
from firmware_sims.layout import SimBin, SimTransmitter
from firmware_sims.modbus_server import SimUnit
from firmware_sims.shelf import Shelf
from firmware_sims.testing import WT_FLOAT32_CDAB, WT_INT32_ABCD

PROFILES: tuple[RegisterMap, ...] = (WT_INT32_ABCD, WT_FLOAT32_CDAB)
"""The project's two profiles (`firmware_sims.testing` keeps them equal to config/profiles/*.yaml)."""

_T0 = time.monotonic()


def sim_clock() -> float:
    """Seconds since this module was imported: the shelves' simulation time."""
    return time.monotonic() - _T0


def sim_unit(unit_id: int, register_map: RegisterMap, *, zero: float = 1000.0, count: int = 5) -> SimUnit:
    """A transmitter at `unit_id` with `count` items of 100 g on channel 0 (`zero` counts when empty)."""
    device = f"tx{unit_id}-{register_map.name}-{zero:g}"
    b = SimBin(
        bin_id=f"bin-{device}",
        device_id=device,
        channel=0,
        unit_weight_g=100.0,
        unit_weight_spread_g=1.0,
        tare_g=20.0,
        zero=zero,
        span_g_per_unit=0.1,
        safety_stock=2,
        max_stock=10,
        initial_count=count,
    )
    return SimUnit(SimTransmitter(device, "bus", unit_id, register_map), [Shelf(b)], sim_clock)
