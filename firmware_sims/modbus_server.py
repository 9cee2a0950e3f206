"""Simulated Modbus weight transmitters on real pymodbus 3.16 servers (TCP on 127.0.0.1, or RTU on a path).

Each transmitter is a `SimDevice` whose holding registers are recomputed on every read by its `action` hook
(pymodbus `pymodbus/simulator/simdevice.py`: "action can update registers (affect the current and future
responses)"). The words come from the shelf physics through `drivers.modbus.protocol.register_image`, the same
codec the gateway decodes with, so values move in real time and can never disagree with the gateway's map.

RS-485 behaviour the gateway must survive (Modbus over Serial Line v1.02 §2.1: a slave that is not addressed,
or cannot answer, stays silent and the master times out):

- unknown unit ids get no reply: a catch-all `SimDevice(id=0)` (pymodbus: id 0 = "all devices, except those
  specifically defined") refuses every request with `NoSuchIdException`, which the server drops when
  `ignore_missing_devices=True` ("the client will simply timeout waiting for a response");
- a `silent` transmitter refuses the same way, a `late_s` one sleeps before answering, and on RTU a `bad_crc`
  one answers with a corrupted CRC (byte-level faults on the whole line live on `PtyNullModem`).

Registers are read-only: a write gets exception 02 (illegal data address), as on transmitters whose weight and
status registers are input-like.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.modbus.protocol import RegisterMap, register_image

from .layout import SimBus, SimTransmitter
from .shelf import Shelf

_log = logging.getLogger(__name__)

Clock = Callable[[], float]
"""Simulation time in seconds (the shelves' `t`)."""

_MERGE_GAP = 8
"""Register areas this close are served as one readable range, so a coalesced block read across the gap
works (the gateway's planner reads through gaps of up to 8 unused registers, protocol.plan_blocks)."""


@dataclass(slots=True)
class TransmitterFaults:
    """Faults of one transmitter as a whole (channel faults live on `Shelf`: `set_stuck`, `fault_bit`)."""

    silent: bool = False
    """The transmitter does not answer at all; the client times out."""
    late_s: float = 0.0
    """Extra delay before each reply (a slow turnaround; beyond the client timeout it is a missed reply)."""
    bad_crc: bool = False
    """RTU only: every reply carries a wrong CRC (garbage on the line for this unit)."""


def register_areas(register_map: RegisterMap) -> list[tuple[int, int]]:
    """The (start, count) ranges a transmitter with this map answers for: weights, status, merged if close."""
    w = register_map.weight
    last_start, width = register_map.weight_span(register_map.channels - 1)
    spans = [(w.address, last_start + width - w.address)]
    status_last = register_map.status_span(register_map.channels - 1)
    if status_last is not None and register_map.status is not None:
        s = register_map.status
        spans.append((s.address, status_last[0] + 1 - s.address))
    spans.sort()
    merged: list[tuple[int, int]] = []
    for start, count in spans:
        if merged and start - (merged[-1][0] + merged[-1][1]) <= _MERGE_GAP:
            m_start, m_count = merged[-1]
            merged[-1] = (m_start, max(m_start + m_count, start + count) - m_start)
        else:
            merged.append((start, count))
    return merged


class SimUnit:
    """One simulated transmitter: its register map, the shelves on its channels, and its faults."""

    def __init__(self, transmitter: SimTransmitter, shelves: Sequence[Shelf], clock: Clock) -> None:
        self.transmitter = transmitter
        self.shelves: dict[int, Shelf] = {s.channel: s for s in shelves}
        self.clock = clock
        self.faults = TransmitterFaults()
        self.reads = 0
        """Read requests answered (a test can check that a poll really reached this unit)."""
        self._late_tasks: set[asyncio.Task[object]] = set()
        rmap = transmitter.register_map
        self._spans: dict[int, list[tuple[int, int]]] = {}
        for channel in self.shelves:
            spans = [rmap.weight_span(channel)]
            st = rmap.status_span(channel)
            if st is not None:
                spans.append(st)
            self._spans[channel] = spans

    @property
    def unit_id(self) -> int:
        """The Modbus device address."""
        return self.transmitter.unit_id

    def image(self, t: float, first: int = 0, count: int = 0x10000) -> dict[int, int]:
        """Register words of the channels overlapping [first, first + count) at time `t`.

        Channels without a bin present an empty plate at zero counts (the transmitter still answers for them).
        """
        end = first + count
        readings = [
            shelf.reading(t)
            for channel, shelf in self.shelves.items()
            if any(s < end and first < s + n for s, n in self._spans[channel])
        ]
        return register_image(self.transmitter.register_map, readings)

    def sim_device(self) -> SimDevice:
        """The pymodbus device: read-only register areas whose words the action hook fills at read time."""
        simdata = [
            SimData(address=start, count=count, datatype=DataType.REGISTERS, readonly=True)
            for start, count in register_areas(self.transmitter.register_map)
        ]
        return SimDevice(id=self.unit_id, simdata=simdata, action=self._action)

    async def _action(  # noqa: PLR0917 - pymodbus calls SimAction with six positional arguments
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """Fill the requested registers from the physics, or stay silent / answer late as the faults say."""
        del function_code
        if self.faults.silent:
            raise NoSuchIdException(f"unit {self.unit_id} is silent")
        if set_values is None:
            for addr, word in self.image(self.clock(), address, count).items():
                offset = addr - start_address
                if 0 <= offset < len(current_registers):
                    current_registers[offset] = word
            self.reads += 1
        if self.faults.late_s > 0:
            task = asyncio.current_task()
            if task is not None:
                self._late_tasks.add(task)
            try:
                await asyncio.sleep(self.faults.late_s)
            finally:
                if task is not None:
                    self._late_tasks.discard(task)
        return None

    def cancel_late_replies(self) -> None:
        """Cancel replies still waiting out `late_s` (pymodbus runs each request in its own task)."""
        for task in list(self._late_tasks):
            task.cancel()


async def _no_such_unit(  # noqa: PLR0917 - pymodbus calls SimAction with six positional arguments
    function_code: int,
    start_address: int,
    address: int,
    count: int,
    current_registers: list[int],
    set_values: list[int] | list[bool] | None,
) -> ExcCodes | None:
    """Catch-all device: nobody on the line has this address, so nobody answers."""
    del function_code, start_address, count, current_registers, set_values
    raise NoSuchIdException(f"no unit answers at address {address}")


def _catch_all_device() -> SimDevice:
    return SimDevice(
        id=0,
        simdata=[SimData(address=0, count=0x10000, datatype=DataType.REGISTERS, readonly=True)],
        action=_no_such_unit,
    )


class ModbusSimServer:
    """One bus's pymodbus server as an async context manager; its task is named `sim[bus_id].server`.

    `async with ModbusSimServer(bus, units) as server:` (TCP: `server.port`, `server.endpoint`), or with
    `serial_path=` for RTU (the device end of a `PtyNullModem`).
    """

    def __init__(
        self,
        bus: SimBus,
        units: Sequence[SimUnit],
        *,
        serial_path: str | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        if bus.kind == "rtu" and not serial_path:
            raise ValueError(f"bus {bus.bus_id}: an RTU server needs serial_path")
        self.bus = bus
        self.units: dict[int, SimUnit] = {u.unit_id: u for u in units}
        self.serial_path = serial_path
        self.host = host
        self.port: int | None = None
        """TCP: the port actually listened on (a free one when the layout gave none)."""
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def endpoint(self) -> str:
        """`tcp://127.0.0.1:PORT`, or the serial path the server opened."""
        if self.bus.kind == "tcp":
            return f"tcp://{self.host}:{self.port}"
        return str(self.serial_path)

    def _build(self) -> ModbusTcpServer | ModbusSerialServer:
        devices = [u.sim_device() for u in self.units.values()] + [_catch_all_device()]
        if self.bus.kind == "tcp":
            return ModbusTcpServer(
                devices, address=(self.host, self.bus.port or 0), ignore_missing_devices=True
            )
        return ModbusSerialServer(
            devices,
            port=str(self.serial_path),
            baudrate=self.bus.baudrate,
            ignore_missing_devices=True,
            trace_packet=self._trace_packet,
        )

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        """RTU replies start with the unit id (Serial Line v1.02 §2.3); corrupt the CRC of `bad_crc` units."""
        if sending and len(data) >= 4:
            unit = self.units.get(data[0])
            if unit is not None and unit.faults.bad_crc:
                return data[:-1] + bytes((data[-1] ^ 0xFF,))
        return data

    async def _serve(self, server: ModbusTcpServer | ModbusSerialServer, ready: asyncio.Future[None]) -> None:
        try:
            await server.serve_forever(background=True)
            if not ready.done():
                ready.set_result(None)
            await server.serving
        finally:
            for unit in self.units.values():
                unit.cancel_late_replies()
            await server.shutdown()  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> ModbusSimServer:
        server = self._server = self._build()
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._serve(server, ready), name=f"sim[{self.bus.bus_id}].server")
        await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            await self._task  # re-raises why the server could not start
            raise RuntimeError(f"bus {self.bus.bus_id}: server stopped before listening")
        if self.bus.kind == "tcp":
            listener = server.transport
            if not isinstance(listener, asyncio.Server):
                raise RuntimeError(f"bus {self.bus.bus_id}: TCP server has no listening socket")
            self.port = int(listener.sockets[0].getsockname()[1])
        _log.info("sim bus %s serving units %s at %s", self.bus.bus_id, sorted(self.units), self.endpoint)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop serving and wait for the server task to finish."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def units_for_bus(
    bus_id: str, transmitters: Sequence[SimTransmitter], shelves: Mapping[str, Shelf], clock: Clock
) -> list[SimUnit]:
    """Build the `SimUnit`s of one bus from its transmitters and the shelves keyed by bin id."""
    out = []
    for tx in transmitters:
        if tx.bus_id != bus_id:
            continue
        own = [s for s in shelves.values() if s.bin.device_id == tx.device_id]
        out.append(SimUnit(tx, own, clock))
    return out


__all__ = [
    "Clock",
    "ModbusSimServer",
    "SimUnit",
    "TransmitterFaults",
    "register_areas",
    "units_for_bus",
]
