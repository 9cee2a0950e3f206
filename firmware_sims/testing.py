"""Helpers for tests and fixtures: a small ready-made layout and a plain-client channel reader.

Fixtures wrap `SimStore` directly (it is an async context manager)::

    @pytest.fixture
    async def sim_store() -> AsyncIterator[SimStore]:
        async with SimStore(small_layout(), run_scenario=False) as sim:
            yield sim

`WT_INT32_ABCD` and `WT_FLOAT32_CDAB` mirror `config/profiles/*.yaml` (a test checks they stay equal); they
live here because the simulator may not import the gateway's config loader.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pymodbus.exceptions import ModbusException

from drivers.modbus.protocol import (
    ChannelReading,
    RegisterMap,
    StatusPoint,
    ValueType,
    WeightPoint,
    WordOrder,
    plan_poll,
)

from .layout import ShelfPhysics, SimBin, SimBus, SimLayout, SimTransmitter

WT_INT32_ABCD = RegisterMap(
    name="wt-int32-abcd",
    description="12-channel load-cell transmitter, int32 counts (ABCD), status word per channel",
    channels=12,
    weight=WeightPoint(address=0, value_type=ValueType.INT32, word_order=WordOrder.ABCD, stride=2, scale=1.0),
    status=StatusPoint(address=100, stride=1, stable_bit=0, overload_bit=1, fault_bit=2),
)
WT_FLOAT32_CDAB = RegisterMap(
    name="wt-float32-cdab",
    description="10-channel load-cell transmitter, float32 counts (CDAB), status word per channel",
    channels=10,
    weight=WeightPoint(
        address=512, value_type=ValueType.FLOAT32, word_order=WordOrder.CDAB, stride=2, scale=1.0
    ),
    status=StatusPoint(address=768, stride=1, stable_bit=5, overload_bit=6, fault_bit=7),
)


def small_layout(
    *,
    noise_g: float = 1.0,
    seed: int = 0,
    physics: ShelfPhysics | None = None,
    tcp_port: int | None = None,
) -> SimLayout:
    """Two buses, three transmitters, six bins: enough to exercise both word orders and both transports.

    rtu1: unit 1 `tx1` (float32 CDAB, bins R1 ch0, R2 ch3) and unit 2 `tx2` (float32 CDAB, bin R3 ch0);
    tcp1: unit 1 `tx3` (int32 ABCD, bins T1 ch0, T2 ch1, T3 ch11).
    """

    def b(bin_id: str, device: str, channel: int, unit_g: float, count: int, span: float) -> SimBin:  # noqa: PLR0917
        return SimBin(
            bin_id=bin_id,
            device_id=device,
            channel=channel,
            unit_weight_g=unit_g,
            unit_weight_spread_g=unit_g * 0.01,
            tare_g=150.0,
            zero=1000.0 + 37 * channel,
            span_g_per_unit=span,
            safety_stock=4,
            max_stock=12,
            initial_count=count,
        )

    return SimLayout(
        buses=(SimBus("rtu1", "rtu"), SimBus("tcp1", "tcp", port=tcp_port)),
        transmitters=(
            SimTransmitter("tx1", "rtu1", 1, WT_FLOAT32_CDAB),
            SimTransmitter("tx2", "rtu1", 2, WT_FLOAT32_CDAB),
            SimTransmitter("tx3", "tcp1", 1, WT_INT32_ABCD),
        ),
        bins=(
            b("R1", "tx1", 0, 350.0, 8, 0.05),
            b("R2", "tx1", 3, 120.0, 10, 0.05),
            b("R3", "tx2", 0, 570.0, 6, 0.05),
            b("T1", "tx3", 0, 78.0, 9, 0.1),
            b("T2", "tx3", 1, 32.0, 12, 0.1),
            b("T3", "tx3", 11, 262.0, 5, 0.1),
        ),
        noise_g=noise_g,
        seed=seed,
        physics=physics or ShelfPhysics(),
    )


async def read_channels(
    client: Any, unit_id: int, register_map: RegisterMap, channels: Iterable[int]
) -> list[ChannelReading]:
    """Read channels with a plain pymodbus async client (TCP or serial), decoded by the gateway's codec.

    Raises `pymodbus.exceptions.ModbusException` on a timeout or an exception response.
    """
    plan = plan_poll(register_map, channels)
    words: list[list[int]] = []
    for block in plan.blocks:
        response = await client.read_holding_registers(block.start, count=block.count, device_id=unit_id)
        if response.isError():
            raise ModbusException(f"unit {unit_id} answered {response}")
        words.append(list(response.registers))
    return plan.decode(words)


def grams(sim_bin: SimBin, reading: ChannelReading) -> float:
    """The gateway's calibration applied to a reading: (value - zero) × span_g_per_unit."""
    return (reading.value - sim_bin.zero) * sim_bin.span_g_per_unit
