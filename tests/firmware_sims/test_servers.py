"""Real pymodbus servers read by plain pymodbus clients: TCP on 127.0.0.1 and RTU through a pty null modem.

Values are decoded with the gateway's codec (`drivers.modbus.protocol`) and compared with the shelf physics.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from drivers.modbus.protocol import plan_poll
from firmware_sims.layout import ShelfPhysics
from firmware_sims.runner import SimStore
from firmware_sims.scenario import ScriptStep
from firmware_sims.testing import WT_FLOAT32_CDAB, WT_INT32_ABCD, grams, read_channels, small_layout

EXACT = ShelfPhysics(creep_g_per_h=0.0)


def tcp_port(sim: SimStore) -> int:
    endpoint = sim.endpoints["tcp1"]
    assert endpoint.startswith("tcp://127.0.0.1:")
    return int(endpoint.rsplit(":", 1)[1])


@pytest.fixture
async def sim() -> AsyncIterator[SimStore]:
    async with SimStore(small_layout(noise_g=0.0, physics=EXACT), run_scenario=False) as store:
        yield store


@pytest.fixture
async def tcp(sim: SimStore) -> AsyncIterator[AsyncModbusTcpClient]:
    client = AsyncModbusTcpClient("127.0.0.1", port=tcp_port(sim), timeout=0.5, retries=0)
    assert await client.connect()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
async def rtu(sim: SimStore) -> AsyncIterator[AsyncModbusSerialClient]:
    client = AsyncModbusSerialClient(sim.endpoints["rtu1"], baudrate=19200, timeout=0.5, retries=0)
    assert await client.connect()
    try:
        yield client
    finally:
        client.close()


async def test_tcp_registers_decode_to_the_physics(sim: SimStore, tcp: AsyncModbusTcpClient) -> None:
    readings = await read_channels(tcp, 1, WT_INT32_ABCD, [0, 1, 11])
    for reading, bin_id in zip(readings, ["T1", "T2", "T3"], strict=True):
        shelf = sim.shelves[bin_id]
        expected_g = shelf.bin.tare_g + sum(shelf.item_masses_g)
        # int32 counts at 0.1 g per count: the gateway recovers the load to within one count
        assert grams(shelf.bin, reading) == pytest.approx(expected_g, abs=0.1)
        assert reading.stable is True
        assert reading.overload is False
        assert reading.fault is False
    # every block read reached the unit once: weights 0–3 and 22–23, status 100–101 and 111
    assert sim.units["tx3"].reads == len(plan_poll(WT_INT32_ABCD, [0, 1, 11]).blocks) == 4


async def test_channel_without_a_bin_reads_as_zero_counts(tcp: AsyncModbusTcpClient) -> None:
    (reading,) = await read_channels(tcp, 1, WT_INT32_ABCD, [5])
    assert reading.value == 0


async def test_values_move_in_real_time_after_a_pick(sim: SimStore, tcp: AsyncModbusTcpClient) -> None:
    bin_ = sim.shelves["T3"].bin
    (before,) = await read_channels(tcp, 1, WT_INT32_ABCD, [11])
    change = sim.pick("T3", 2)
    assert change.count_after == 3
    expected_g = bin_.tare_g + sum(sim.shelves["T3"].item_masses_g)
    saw_unstable = False
    async with asyncio.timeout(10):
        while True:
            (r,) = await read_channels(tcp, 1, WT_INT32_ABCD, [11])
            saw_unstable = saw_unstable or r.stable is False
            if r.stable and abs(grams(bin_, r) - expected_g) < 0.2:
                break
            await asyncio.sleep(0.05)
    assert saw_unstable
    assert grams(bin_, before) - grams(bin_, r) == pytest.approx(2 * 262.0, abs=10.0)


async def test_faults_show_in_the_status_word(sim: SimStore, tcp: AsyncModbusTcpClient) -> None:
    sim.set_fault_bit("T2")
    sim.set_stuck("T1")
    (t1_before,) = await read_channels(tcp, 1, WT_INT32_ABCD, [0])
    sim.pick("T1", 4)
    t1, t2 = await read_channels(tcp, 1, WT_INT32_ABCD, [0, 1])
    assert t2.fault is True
    assert t1.fault is False
    assert t1.value == t1_before.value


async def test_silent_unit_times_out_and_recovers(sim: SimStore, tcp: AsyncModbusTcpClient) -> None:
    sim.faults("tx3").silent = True
    with pytest.raises(ModbusException, match="No response"):
        await read_channels(tcp, 1, WT_INT32_ABCD, [0])
    sim.faults("tx3").silent = False
    (reading,) = await read_channels(tcp, 1, WT_INT32_ABCD, [0])
    assert reading.stable is True


async def test_unknown_unit_gets_no_reply(tcp: AsyncModbusTcpClient) -> None:
    with pytest.raises(ModbusException, match="No response"):
        await read_channels(tcp, 7, WT_INT32_ABCD, [0])


async def test_late_reply_arrives_late_or_misses_a_short_timeout(sim: SimStore) -> None:
    sim.faults("tx3").late_s = 0.4
    patient = AsyncModbusTcpClient("127.0.0.1", port=tcp_port(sim), timeout=3.0, retries=0)
    hasty = AsyncModbusTcpClient("127.0.0.1", port=tcp_port(sim), timeout=0.1, retries=0)
    try:
        assert await patient.connect()
        assert await hasty.connect()
        loop = asyncio.get_running_loop()
        started = loop.time()
        (reading,) = await read_channels(patient, 1, WT_INT32_ABCD, [0])
        assert loop.time() - started >= 0.4  # lower bound only: the reply was held back
        assert reading.stable is True
        with pytest.raises(ModbusException, match="No response"):
            await read_channels(hasty, 1, WT_INT32_ABCD, [0])
    finally:
        patient.close()
        hasty.close()


async def test_registers_are_read_only(tcp: AsyncModbusTcpClient) -> None:
    response = await tcp.write_register(0, 1234, device_id=1)
    assert response.isError()
    assert response.exception_code == 2  # illegal data address


async def test_rtu_units_decode_float32_cdab(sim: SimStore, rtu: AsyncModbusSerialClient) -> None:
    r1, r2 = await read_channels(rtu, 1, WT_FLOAT32_CDAB, [0, 3])
    (r3,) = await read_channels(rtu, 2, WT_FLOAT32_CDAB, [0])
    for reading, bin_id in ((r1, "R1"), (r2, "R2"), (r3, "R3")):
        shelf = sim.shelves[bin_id]
        assert grams(shelf.bin, reading) == pytest.approx(
            shelf.bin.tare_g + sum(shelf.item_masses_g), abs=0.01
        )
        assert reading.stable is True


async def test_rtu_silent_unit_bad_crc_and_line_faults(sim: SimStore, rtu: AsyncModbusSerialClient) -> None:
    sim.faults("tx2").silent = True
    with pytest.raises(ModbusException):
        await read_channels(rtu, 2, WT_FLOAT32_CDAB, [0])
    (ok,) = await read_channels(rtu, 1, WT_FLOAT32_CDAB, [0])  # its neighbour on the line still answers
    assert ok.stable is True
    sim.faults("tx2").silent = False

    sim.faults("tx1").bad_crc = True
    with pytest.raises(ModbusException):
        await read_channels(rtu, 1, WT_FLOAT32_CDAB, [0])
    sim.faults("tx1").bad_crc = False

    link = sim.link("rtu1")
    link.silent = True
    with pytest.raises(ModbusException):
        await read_channels(rtu, 1, WT_FLOAT32_CDAB, [0])
    link.silent = False
    await asyncio.sleep(0.1)  # let a late answer drain before the next request
    (again,) = await read_channels(rtu, 1, WT_FLOAT32_CDAB, [0])
    assert again.value == ok.value  # noise 0, no creep: the same plate reads the same


async def test_rtu_unknown_unit_gets_no_reply(rtu: AsyncModbusSerialClient) -> None:
    with pytest.raises(ModbusException):
        await read_channels(rtu, 9, WT_FLOAT32_CDAB, [0])


async def test_tasks_are_named_and_gone_after_exit() -> None:
    layout = small_layout()
    async with SimStore(layout, script=[ScriptStep(0.2, "T1", -1)]) as sim:
        names = {t.get_name() for t in asyncio.all_tasks()}
        assert {"sim[rtu1].server", "sim[tcp1].server", "sim.scenario"} <= names
        async with asyncio.timeout(10):
            await sim.scenario.wait_for_changes(1)
        assert sim.scenario.log[0][1:] == ("T1", -1, 8)
        assert sim.scenario_error() is None
    left = {t.get_name() for t in asyncio.all_tasks()}
    assert not {n for n in left if n.startswith("sim")}


async def test_fixed_tcp_port_is_used() -> None:
    async with SimStore(small_layout(), run_scenario=False) as first:
        port = tcp_port(first)
    async with SimStore(small_layout(tcp_port=port), run_scenario=False) as second:
        assert second.endpoints["tcp1"] == f"tcp://127.0.0.1:{port}"
