"""ModbusBus and TransmitterPoller against real pymodbus servers: TCP on 127.0.0.1, RTU over pty pairs.

The servers are plain pymodbus `SimDevice`s whose `action` copies a test-owned register image into the
registers on every read, so a test changes a transmitter's values by assigning to a dict. Line faults on RTU
come from `firmware_sims.serial_link.PtyNullModem` (bit flips, late replies, silence).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.backoff import full_jitter_s
from drivers.modbus.client import ModbusBus, TransmitterPoller
from drivers.modbus.models import (
    Availability,
    BusUnavailable,
    DeviceExceptionResponse,
    DeviceTimeout,
    RtuSettings,
    Sample,
    TcpSettings,
)
from drivers.modbus.protocol import (
    Block,
    ChannelReading,
    RegisterMap,
    StatusPoint,
    ValueType,
    WeightPoint,
    WordOrder,
    plan_poll,
    register_image,
    t35_s,
)
from firmware_sims.serial_link import PtyNullModem

CLIENT_LOGGER = "drivers.modbus.client"

INT32_ABCD = RegisterMap(
    name="wt-int32-abcd",
    channels=12,
    weight=WeightPoint(0, ValueType.INT32, WordOrder.ABCD, stride=2),
    status=StatusPoint(100, stride=1, stable_bit=0, overload_bit=1, fault_bit=2),
)
FLOAT32_CDAB = RegisterMap(
    name="wt-float32-cdab",
    channels=10,
    weight=WeightPoint(512, ValueType.FLOAT32, WordOrder.CDAB, stride=2),
    status=StatusPoint(768, stride=1, stable_bit=5, overload_bit=6, fault_bit=7),
)
REGISTERS = 1024
"""Each simulated device answers for holding registers 0..1023; reads beyond are illegal addresses."""


def f32(value: float) -> float:
    """The value a float32 register pair can actually carry."""
    return float(struct.unpack(">f", struct.pack(">f", value))[0])


def int32_readings(offset: int = 0) -> list[ChannelReading]:
    values = [-15889, 0, 1, 354, 132, 1653607, -1, 2_000_000_000, -2_000_000_000, 7, 65536, 42]
    return [ChannelReading(ch, float(v + offset), stable=ch % 3 != 0) for ch, v in enumerate(values)]


def float32_readings(offset: float = 0.0) -> list[ChannelReading]:
    values = [12.345, -0.5, 0.0, 1e6, 3.25, -158.89, 1.32, 99.99, 0.001, 250.0]
    return [
        ChannelReading(ch, f32(v + offset), stable=ch % 2 == 0, overload=ch == 9)
        for ch, v in enumerate(values)
    ]


@dataclass
class Transmitter:
    """A simulated transmitter: a unit id, a register image the test edits, a log of served transactions."""

    unit_id: int
    register_map: RegisterMap
    image: dict[int, int] = field(default_factory=dict)
    hold_s: float = 0.0
    """Time the device spends 'computing' each reply (makes overlapping transactions observable)."""
    fail_with: ExcCodes | None = None
    served: list[tuple[float, float, int]] = field(default_factory=list)
    """(start, end, unit_id) of every read, stamped with the event loop clock on the server side."""

    def show(self, readings: list[ChannelReading]) -> None:
        self.image = register_image(self.register_map, readings)

    async def action(  # noqa: PLR0917 - pymodbus SimAction calls it with six positional arguments
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        if self.hold_s:
            await asyncio.sleep(self.hold_s)
        if self.fail_with is not None:
            return self.fail_with
        for reg in range(address, address + count):
            current_registers[reg - start_address] = self.image.get(reg, 0)
        self.served.append((started, loop.time(), self.unit_id))
        return None

    def sim_device(self) -> SimDevice:
        return SimDevice(
            id=self.unit_id,
            simdata=[SimData(0, count=REGISTERS, values=0, datatype=DataType.REGISTERS)],
            action=self.action,
        )


async def stop_server(server: ModbusTcpServer | ModbusSerialServer) -> None:
    """Stop listening and drop every client connection (pymodbus leaves `shutdown` unannotated)."""
    await server.shutdown()  # type: ignore[no-untyped-call]


async def start_tcp_server(devices: list[Transmitter], port: int = 0) -> tuple[ModbusTcpServer, int]:
    server = ModbusTcpServer([d.sim_device() for d in devices], address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    listener = server.transport
    assert isinstance(listener, asyncio.Server)
    bound_port = int(listener.sockets[0].getsockname()[1])
    return server, bound_port


@contextlib.asynccontextmanager
async def tcp_server(devices: list[Transmitter]) -> AsyncIterator[tuple[ModbusTcpServer, int]]:
    server, port = await start_tcp_server(devices)
    try:
        yield server, port
    finally:
        await stop_server(server)


@contextlib.asynccontextmanager
async def rtu_line(devices: list[Transmitter], baudrate: int = 9600) -> AsyncIterator[PtyNullModem]:
    """A pty 'cable' with a pymodbus RTU server (the transmitters) on its device end."""
    async with PtyNullModem() as link:
        server = ModbusSerialServer(
            [d.sim_device() for d in devices], port=link.device_path, baudrate=baudrate, timeout=1
        )
        await server.serve_forever(background=True)
        try:
            yield link
        finally:
            await stop_server(server)


class Collector:
    """Runs `poller.run()` in a named task and keeps what it yields."""

    def __init__(self, poller: TransmitterPoller) -> None:
        self.poller = poller
        self.items: list[Sample | Availability] = []
        self._task: asyncio.Task[None] | None = None

    async def _consume(self) -> None:
        async for item in self.poller.run():
            self.items.append(item)

    async def __aenter__(self) -> Collector:
        self._task = asyncio.create_task(self._consume(), name=f"test.poller[{self.poller.device_id}]")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        if self._task.done():
            self._task.result()  # surface a crash of the poller as the test failure it is
        self._task.cancel()
        await asyncio.wait([self._task])

    @property
    def samples(self) -> list[Sample]:
        return [i for i in self.items if isinstance(i, Sample)]

    @property
    def availability(self) -> list[Availability]:
        return [i for i in self.items if isinstance(i, Availability)]

    async def sample_where(self, pred: Callable[[Sample], bool], timeout_s: float = 15.0) -> Sample:
        seen = 0
        async with asyncio.timeout(timeout_s):
            while True:
                for item in self.samples[seen:]:
                    if pred(item):
                        return item
                seen = len(self.samples)
                assert self._task is not None
                assert not self._task.done(), "poller stopped"
                await asyncio.sleep(0.01)


async def until(pred: Callable[[], bool], timeout_s: float = 15.0) -> None:
    """Wait for a condition; the timeout only guards against hangs."""
    async with asyncio.timeout(timeout_s):
        while True:
            if pred():
                return
            await asyncio.sleep(0.01)


def values(sample: Sample) -> list[float]:
    return [r.value for r in sample.readings]


def stable_bits(sample: Sample) -> list[bool | None]:
    return [r.stable for r in sample.readings]


@pytest.fixture
def driver_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger=CLIENT_LOGGER)
    return caplog


def driver_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == CLIENT_LOGGER and r.levelno == level]


# --- pure helpers -------------------------------------------------------------------------------------------


def test_full_jitter_stays_within_the_capped_exponential_ceiling() -> None:
    rng = random.Random(7)
    for attempt in range(40):
        ceiling = min(30.0, 0.5 * 2**attempt)
        draws = [full_jitter_s(attempt, 0.5, 30.0, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in draws)
        assert max(draws) > 0.8 * ceiling  # full jitter uses the whole range, not a fixed delay
    assert full_jitter_s(10_000, 0.5, 30.0, rng) <= 30.0


def test_rtu_settings_inter_frame_gap() -> None:
    assert RtuSettings("/dev/x").inter_frame_s == pytest.approx(t35_s(9600))
    assert RtuSettings("/dev/x", parity="E", turnaround_s=0.01).inter_frame_s == pytest.approx(
        t35_s(9600, 11) + 0.01
    )
    assert RtuSettings("/dev/x", baudrate=115200).inter_frame_s == 0.00175


# --- TCP ----------------------------------------------------------------------------------------------------


async def test_tcp_two_unit_ids_two_maps_decode_values_and_stable_bits() -> None:
    tx1 = Transmitter(1, INT32_ABCD)
    tx2 = Transmitter(2, FLOAT32_CDAB)
    tx1.show(int32_readings())
    tx2.show(float32_readings())
    assert [tx1.image[0], tx1.image[1]] == [65535, 49647]  # -15889, as in the read_net_resp vector
    async with (
        tcp_server([tx1, tx2]) as (_, port),
        ModbusBus(TcpSettings("127.0.0.1", port, timeout_s=1.0), "tcp-1") as bus,
    ):
        p1 = TransmitterPoller(bus, "wt-1", 1, plan_poll(INT32_ABCD, range(12)), 0.05)
        p2 = TransmitterPoller(bus, "wt-2", 2, plan_poll(FLOAT32_CDAB, range(10)), 0.05)
        async with Collector(p1) as c1, Collector(p2) as c2:
            s1 = await c1.sample_where(lambda s: True)
            s2 = await c2.sample_where(lambda s: True)
            assert s1.device_id == "wt-1"
            assert values(s1) == [r.value for r in int32_readings()]
            assert stable_bits(s1) == [r.stable for r in int32_readings()]
            assert values(s2) == [r.value for r in float32_readings()]
            assert values(s2)[0] == pytest.approx(12.345, rel=1e-6)
            assert stable_bits(s2) == [r.stable for r in float32_readings()]
            assert [r.overload for r in s2.readings] == [r.overload for r in float32_readings()]
            # New values on the device show up in later samples (no caching anywhere).
            tx1.show(int32_readings(offset=5))
            s1b = await c1.sample_where(lambda s: s.readings[0].value == -15884)
            assert values(s1b) == [r.value for r in int32_readings(offset=5)]
        assert p1.counters.errors == 0
        assert p2.counters.errors == 0
        assert p1.counters.ok >= 2
        assert p1.counters.online
        assert p1.counters.bus_time_s > 0
        assert bus.busy_s >= p1.counters.bus_time_s
        assert bus.transactions == p1.counters.polls * 2 + p2.counters.polls * 2
        snap = p1.counters.snapshot()
        assert snap["ok"] == p1.counters.ok
        assert snap["last_error"] is None
    # Healthy devices: no availability events at all (a first success is not a change).
    assert c1.availability == []
    assert c2.availability == []
    assert len(tx1.served) >= 2 * p1.counters.ok


async def test_tcp_exception_response_is_translated() -> None:
    tx = Transmitter(1, INT32_ABCD)
    async with (
        tcp_server([tx]) as (_, port),
        ModbusBus(TcpSettings("127.0.0.1", port), "tcp-1", backoff_base_s=0.05, backoff_cap_s=0.5) as bus,
    ):
        with pytest.raises(DeviceExceptionResponse) as info:
            await bus.read_block(1, Block(REGISTERS + 10, 2), device_id="wt-1")
        assert info.value.exception_code == ExcCodes.ILLEGAL_ADDRESS
        assert info.value.device_id == "wt-1"
        assert "illegal data address" in info.value.reason
        # The connection survives an exception response.
        tx.image = {0: 0x1234, 1: 0x5678}
        assert await bus.read_block(1, Block(0, 2)) == [0x1234, 0x5678]


async def test_tcp_exception_responses_are_counted_and_take_device_offline(
    driver_logs: pytest.LogCaptureFixture,
) -> None:
    tx = Transmitter(1, INT32_ABCD)
    tx.show(int32_readings())
    async with (
        tcp_server([tx]) as (_, port),
        ModbusBus(TcpSettings("127.0.0.1", port), "tcp-1") as bus,
    ):
        poller = TransmitterPoller(bus, "wt-1", 1, plan_poll(INT32_ABCD, [0, 1]), 0.02, backoff_cap_s=0.1)
        async with Collector(poller) as col:
            await col.sample_where(lambda s: True)
            tx.fail_with = ExcCodes.DEVICE_FAILURE
            await until(lambda: len(col.availability) == 1)
            await until(lambda: poller.counters.exceptions >= 5)
            tx.fail_with = None
            await until(lambda: len(col.availability) == 2)
        assert [a.online for a in col.availability] == [False, True]
        assert "exception 04" in col.availability[0].reason
        assert poller.counters.timeouts == 0
        assert poller.counters.crc_errors == 0
        assert poller.counters.errors == poller.counters.exceptions


async def test_tcp_server_stopped_reconnects_with_backoff_then_recovers(
    driver_logs: pytest.LogCaptureFixture,
) -> None:
    tx = Transmitter(1, INT32_ABCD)
    tx.show(int32_readings())
    server, port = await start_tcp_server([tx])
    try:
        async with ModbusBus(
            TcpSettings("127.0.0.1", port, timeout_s=0.5),
            "tcp-1",
            backoff_base_s=0.05,
            backoff_cap_s=0.4,
            rng=random.Random(3),
        ) as bus:
            poller = TransmitterPoller(
                bus,
                "wt-1",
                1,
                plan_poll(INT32_ABCD, range(12)),
                0.05,
                backoff_cap_s=0.3,
                rng=random.Random(4),
            )
            async with Collector(poller) as col:
                await col.sample_where(lambda s: True)
                assert bus.connects == 1
                await stop_server(server)
                await until(lambda: len(col.availability) == 1)
                # Keep the server away long enough for several reconnect attempts.
                await until(lambda: bus.connect_failures >= 4)
                failures_while_down = bus.connect_failures
                tx.show(int32_readings(offset=100))
                server, _ = await start_tcp_server([tx], port=port)
                fresh = await col.sample_where(lambda s: s.readings[0].value == -15789)
                assert values(fresh) == [r.value for r in int32_readings(offset=100)]
                await until(lambda: len(col.availability) == 2)
            assert [a.online for a in col.availability] == [False, True]
            assert "disconnected" in col.availability[0].reason or "cannot open" in col.availability[0].reason
            assert bus.disconnects == 1
            assert bus.connects == 2
            assert poller.counters.disconnects == 1
            # Backoff, not a tight loop: a refused connect on loopback fails in microseconds, so without a
            # delay the reconnect task would have made thousands of attempts by now.
            assert failures_while_down < 40
            assert bus.connect_failures < 40
    finally:
        await stop_server(server)
    assert len(driver_records(driver_logs, logging.WARNING)) == 1
    assert len(driver_records(driver_logs, logging.INFO)) == 1


async def test_bus_down_at_start_fails_fast_then_connects_when_server_appears() -> None:
    probe, port = await start_tcp_server([Transmitter(9, INT32_ABCD)])
    await stop_server(probe)  # a port that is free right now: connections are refused
    tx = Transmitter(1, INT32_ABCD)
    tx.image = {0: 1, 1: 2}
    async with ModbusBus(
        TcpSettings("127.0.0.1", port), "tcp-1", backoff_base_s=0.05, backoff_cap_s=0.2
    ) as bus:
        assert not bus.connected
        with pytest.raises(BusUnavailable) as info:
            await bus.read_block(1, Block(0, 2), device_id="wt-1")
        assert not info.value.misconfigured
        assert info.value.device_id == "wt-1"
        async with tcp_server_on(port, [tx]):
            await until(lambda: bus.connected)
            assert await bus.read_block(1, Block(0, 2)) == [1, 2]


@contextlib.asynccontextmanager
async def tcp_server_on(port: int, devices: list[Transmitter]) -> AsyncIterator[ModbusTcpServer]:
    server, _ = await start_tcp_server(devices, port=port)
    try:
        yield server
    finally:
        await stop_server(server)


async def test_missing_serial_port_is_misconfiguration_retried_only_at_the_cap() -> None:
    settings = RtuSettings("/dev/shelfgate-test-no-such-port", timeout_s=0.1)
    async with ModbusBus(settings, "rs485-x", backoff_base_s=0.01, backoff_cap_s=5.0) as bus:
        with pytest.raises(BusUnavailable) as info:
            await bus.read_block(1, Block(0, 2), device_id="wt-9")
        assert info.value.misconfigured
        assert "does not exist" in info.value.reason
        await asyncio.sleep(0.3)
        # With base 0.01 s an ordinary failure would have been retried a dozen times by now; a missing path
        # waits for the cap (≥ 2.5 s with jitter).
        assert bus.connect_failures == 1


# --- RTU over a pty pair ------------------------------------------------------------------------------------


async def test_rtu_values_decoded_over_pty() -> None:
    tx1 = Transmitter(1, INT32_ABCD)
    tx2 = Transmitter(2, FLOAT32_CDAB)
    tx1.show(int32_readings())
    tx2.show(float32_readings())
    async with (
        rtu_line([tx1, tx2]) as link,
        ModbusBus(RtuSettings(link.host_path, baudrate=9600, timeout_s=0.5), "rs485-1") as bus,
    ):
        p1 = TransmitterPoller(bus, "wt-1", 1, plan_poll(INT32_ABCD, range(12)), 0.05)
        p2 = TransmitterPoller(bus, "wt-2", 2, plan_poll(FLOAT32_CDAB, [0, 9]), 0.05)
        async with Collector(p1) as c1, Collector(p2) as c2:
            s1 = await c1.sample_where(lambda s: True)
            s2 = await c2.sample_where(lambda s: True)
        assert values(s1) == [r.value for r in int32_readings()]
        assert stable_bits(s1) == [r.stable for r in int32_readings()]
        assert [r.channel for r in s2.readings] == [0, 9]
        assert values(s2) == [f32(12.345), f32(250.0)]
        assert [r.overload for r in s2.readings] == [False, True]
        assert link.bytes_device_to_host > 0
        assert p1.counters.errors == 0
        assert p2.counters.errors == 0


async def test_rtu_crc_corruption_counted_skipped_then_recovered(
    driver_logs: pytest.LogCaptureFixture,
) -> None:
    tx = Transmitter(1, INT32_ABCD)
    tx.show(int32_readings())
    async with (
        rtu_line([tx]) as link,
        ModbusBus(RtuSettings(link.host_path, timeout_s=0.3), "rs485-1") as bus,
    ):
        # One block per poll (the whole map in one read) so one corrupted chunk spoils exactly one poll.
        plan = plan_poll(INT32_ABCD, range(12), max_gap=100)
        assert len(plan.blocks) == 1
        poller = TransmitterPoller(bus, "wt-1", 1, plan, 0.05)
        async with Collector(poller) as col:
            await col.sample_where(lambda s: True)
            ok_before = poller.counters.ok
            link.corrupt_next(2)
            await until(lambda: poller.counters.crc_errors == 2)
            tx.show(int32_readings(offset=1))
            fresh = await col.sample_where(lambda s: s.readings[0].value == -15888)
        assert values(fresh) == [r.value for r in int32_readings(offset=1)]
        assert link.corrupted_chunks == 2
        assert poller.counters.crc_errors == 2
        assert poller.counters.timeouts == 0
        assert poller.counters.errors == 2
        assert poller.counters.ok > ok_before
        assert "CRC" in (poller.counters.last_error or "") or "garbled" in (poller.counters.last_error or "")
        # Two bad frames stay below offline_after=3: no availability change, nothing logged.
        assert col.availability == []
        assert driver_records(driver_logs, logging.WARNING) == []


async def test_rtu_silent_device_goes_offline_once_and_comes_back_once(
    driver_logs: pytest.LogCaptureFixture,
) -> None:
    tx = Transmitter(1, INT32_ABCD)
    tx.show(int32_readings())
    async with (
        rtu_line([tx]) as link,
        ModbusBus(RtuSettings(link.host_path, timeout_s=0.1), "rs485-1") as bus,
    ):
        poller = TransmitterPoller(
            bus, "wt-1", 1, plan_poll(INT32_ABCD, [0]), 0.02, offline_after=3, backoff_cap_s=0.2
        )
        async with Collector(poller) as col:
            await col.sample_where(lambda s: True)
            link.silent = True
            await until(lambda: len(col.availability) == 1)
            # Many more failed polls while offline must not produce more events or log lines.
            await until(lambda: poller.counters.timeouts >= 8)
            assert len(col.availability) == 1
            assert poller.online is False
            assert not poller.counters.online
            link.silent = False
            await until(lambda: len(col.availability) == 2)
            await until(lambda: isinstance(col.items[-1], Sample))
        offline, online = col.availability
        assert (offline.online, online.online) == (False, True)
        assert offline.device_id == online.device_id == "wt-1"
        assert "no reply" in offline.reason
        # The offline event comes after the last good sample and before the next one.
        idx_off = col.items.index(offline)
        idx_on = col.items.index(online)
        assert all(isinstance(i, Sample) for i in col.items[:idx_off])
        assert not any(isinstance(i, Sample) for i in col.items[idx_off:idx_on])
        after = col.items[idx_on + 1]
        assert isinstance(after, Sample)
        assert values(after) == [-15889.0]
        assert poller.counters.online
    warnings = driver_records(driver_logs, logging.WARNING)
    infos = driver_records(driver_logs, logging.INFO)
    assert len(warnings) == 1
    assert "offline" in warnings[0].getMessage()
    assert len(infos) == 1
    assert "back online" in infos[0].getMessage()


async def test_rtu_late_reply_counts_a_timeout_and_does_not_poison_the_next_read() -> None:
    tx = Transmitter(1, INT32_ABCD)
    tx.image = {0: 0x0001, 1: 0x0002}
    async with (
        rtu_line([tx]) as link,
        ModbusBus(RtuSettings(link.host_path, timeout_s=0.15), "rs485-1") as bus,
    ):
        assert await bus.read_block(1, Block(0, 2)) == [1, 2]
        link.delay_s = 0.4
        with pytest.raises(DeviceTimeout) as info:
            await bus.read_block(1, Block(0, 2), device_id="wt-1")
        assert info.value.device_id == "wt-1"
        # The late reply lands while the line is idle; the next transaction must still get its own reply.
        await until(lambda: len(tx.served) == 2)
        await asyncio.sleep(0.4)
        link.delay_s = 0.0
        tx.image = {0: 0x0003, 1: 0x0004}
        assert await bus.read_block(1, Block(0, 2)) == [3, 4]

        # Through the poller: the timeout is counted as a timeout, not as a CRC error.
        poller = TransmitterPoller(bus, "wt-1", 1, plan_poll(INT32_ABCD, [0]), 1.0)
        link.delay_s = 0.4
        async with Collector(poller):
            await until(lambda: poller.counters.timeouts == 1)
            link.delay_s = 0.0
        assert poller.counters.crc_errors == 0
        assert poller.counters.errors == 1
        assert poller.counters.last_error is not None
        assert "no reply" in poller.counters.last_error


async def test_two_pollers_on_one_rtu_bus_never_overlap_and_keep_the_gap() -> None:
    turnaround_s = 0.01
    tx1 = Transmitter(1, INT32_ABCD, hold_s=0.005)
    tx2 = Transmitter(2, FLOAT32_CDAB, hold_s=0.005)
    tx1.show(int32_readings())
    tx2.show(float32_readings())
    async with rtu_line([tx1, tx2]) as link:
        settings = RtuSettings(link.host_path, baudrate=9600, timeout_s=0.5, turnaround_s=turnaround_s)
        async with ModbusBus(settings, "rs485-1") as bus:
            # Both poll far faster than the line can carry, so they constantly contend for it.
            p1 = TransmitterPoller(bus, "wt-1", 1, plan_poll(INT32_ABCD, range(12)), 0.001)
            p2 = TransmitterPoller(bus, "wt-2", 2, plan_poll(FLOAT32_CDAB, range(10)), 0.001)
            async with Collector(p1) as c1, Collector(p2) as c2:
                await until(lambda: len(c1.samples) >= 10 and len(c2.samples) >= 10)
    served = sorted(tx1.served + tx2.served)
    assert {unit for _, _, unit in served} == {1, 2}
    gaps = [nxt[0] - cur[1] for cur, nxt in itertools.pairwise(served)]
    # Never two transactions on the wire at once …
    assert min(gaps) > 0
    # … and between the end of one reply and the next request the device saw at least t3.5 + turnaround
    # (relay latency only adds to it).
    assert min(gaps) >= settings.inter_frame_s
    assert p1.counters.errors == 0
    assert p2.counters.errors == 0
    assert values(c1.samples[-1]) == [r.value for r in int32_readings()]
    assert values(c2.samples[-1]) == [r.value for r in float32_readings()]


class _SwallowingBus:
    """A bus whose read swallows a cancel the way Python 3.11's `asyncio.wait_for` inside pymodbus can
    (CPython gh-86296): the cancel arrives, the read returns registers anyway."""

    def __init__(self) -> None:
        self.reads = 0
        self.polling = asyncio.Event()

    async def read_block(self, unit_id: int, block: Block, **_: object) -> list[int]:
        self.reads += 1
        if self.reads >= 3:
            self.polling.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.01)
        return [0] * block.count


async def test_a_poller_stops_even_when_the_bus_swallows_the_cancel() -> None:
    """Seen as `shelfgate demo` still running 30 s after Ctrl-C: its RTU poller kept polling for ever."""
    bus = _SwallowingBus()
    poller = TransmitterPoller(bus, "wt-1", 1, plan_poll(INT32_ABCD, [0]), 0.001)  # type: ignore[arg-type]

    async def consume() -> None:
        async for _ in poller.run():
            pass

    task = asyncio.create_task(consume())
    async with asyncio.timeout(10):
        await bus.polling.wait()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=10)
    assert done == {task}, "the poller kept polling after its task was cancelled"
    assert task.cancelled()
