"""The Modbus TCP (MBAP) codec and client the peer bench led to (drivers/modbus: protocol.py, client.py).

Kept here with the bench that motivated it; it belongs in tests/drivers/modbus/ (the lead moves it). Vectors
are built from the MBAP layout of the Modbus Messaging on TCP/IP Implementation Guide v1.0b §3.1.3 and
checked against pymodbus' own socket framer, an independent implementation.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerSocket
from pymodbus.pdu import DecodePDU
from pymodbus.pdu.register_message import ReadHoldingRegistersRequest, ReadHoldingRegistersResponse
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.modbus.client import ModbusBus
from drivers.modbus.models import DeviceExceptionResponse, DeviceTimeout, TcpSettings
from drivers.modbus.protocol import (
    Block,
    MbapDecoder,
    MbapFrame,
    ProtocolError,
    exception_code,
    fc03_registers,
    mbap_read_request,
)

# tid 1, protocol 0, length 6, unit 1 | FC03 start 0 quantity 2 (MBAP §3.1.3 + MAP v1.1b3 §6.3)
READ_2_AT_0 = bytes.fromhex("0001 0000 0006 01 03 0000 0002")
# tid 0x0201, length 7, unit 7 | FC03 byte count 4, registers 0x1234 0xFFFF
REPLY_2 = bytes.fromhex("0201 0000 0007 07 03 04 1234 ffff")
# tid 5, length 3, unit 1 | exception response 0x83, code 02 illegal data address (MAP v1.1b3 §7)
EXCEPTION_02 = bytes.fromhex("0005 0000 0003 01 83 02")

_FRAMER = FramerSocket(DecodePDU(False))


def test_read_request_vector_and_pymodbus_agree() -> None:
    assert mbap_read_request(1, 1, Block(0, 2)) == READ_2_AT_0
    assert (
        _FRAMER.buildFrame(ReadHoldingRegistersRequest(address=0, count=2, dev_id=1, transaction_id=1))
        == READ_2_AT_0
    )


@given(
    tid=st.integers(0, 0xFFFF),
    unit=st.integers(0, 247),
    start=st.integers(0, 0xFFFF - 125),
    count=st.integers(1, 125),
)
def test_read_request_matches_pymodbus_for_any_fields(tid: int, unit: int, start: int, count: int) -> None:
    ours = mbap_read_request(tid, unit, Block(start, count))
    theirs = _FRAMER.buildFrame(
        ReadHoldingRegistersRequest(address=start, count=count, dev_id=unit, transaction_id=tid)
    )
    assert ours == theirs


def test_out_of_range_requests_are_refused() -> None:
    with pytest.raises(ProtocolError):
        mbap_read_request(0x10000, 1, Block(0, 2))
    with pytest.raises(ProtocolError):
        mbap_read_request(1, 1, Block(0, 126))


def test_reply_vectors_decode() -> None:
    frames = MbapDecoder().feed(REPLY_2 + EXCEPTION_02)
    assert frames == [
        MbapFrame(0x0201, 7, bytes.fromhex("03041234ffff")),
        MbapFrame(5, 1, bytes.fromhex("8302")),
    ]
    assert fc03_registers(frames[0].pdu, 2) == [0x1234, 0xFFFF]
    assert exception_code(frames[0].pdu) is None
    assert exception_code(frames[1].pdu) == 2
    built = _FRAMER.buildFrame(
        ReadHoldingRegistersResponse(registers=[0x1234, 0xFFFF], dev_id=7, transaction_id=0x0201)
    )
    assert built == REPLY_2


def test_every_proper_prefix_needs_more_and_byte_at_a_time_gives_the_same_frames() -> None:
    stream = REPLY_2 + EXCEPTION_02 + READ_2_AT_0
    whole = MbapDecoder().feed(stream)
    assert len(whole) == 3
    for cut in range(1, len(REPLY_2)):
        d = MbapDecoder()
        assert d.feed(REPLY_2[:cut]) == []
        assert d.pending == cut
    d = MbapDecoder()
    one_by_one = [f for i in range(len(stream)) for f in d.feed(stream[i : i + 1])]
    assert one_by_one == whole
    assert d.pending == 0


@given(st.binary(max_size=64))
def test_garbage_never_raises_and_is_dropped(junk: bytes) -> None:
    d = MbapDecoder()
    frames = d.feed(junk)
    assert d.pending <= len(junk)
    for f in frames:
        assert 0 <= f.unit_id <= 0xFF
        assert 1 <= len(f.pdu) <= 253


def test_a_bad_header_drops_the_buffer_and_is_counted() -> None:
    d = MbapDecoder()
    assert d.feed(REPLY_2 + bytes.fromhex("0009 0001 0006 01 03 0000 0002")) == [
        MbapFrame(0x0201, 7, REPLY_2[7:])
    ]
    assert (d.errors, d.pending) == (1, 0)
    assert d.last_error is not None
    assert "MBAP" in d.last_error
    assert d.feed(EXCEPTION_02) == [MbapFrame(5, 1, b"\x83\x02")]  # the next frame decodes again


def test_fc03_registers_refuses_a_wrong_byte_count() -> None:
    with pytest.raises(ProtocolError, match="asked for 3 registers"):
        fc03_registers(bytes.fromhex("03041234ffff"), 3)
    with pytest.raises(ProtocolError, match="not an FC03"):
        fc03_registers(b"\x04\x02\x00\x01", 1)


# --- the client against a real pymodbus server -----------------------------------------------------------------


class SlowDevice:
    """A pymodbus SimDevice whose next reads can be made late, to test replies that come after the timeout."""

    def __init__(self, unit_id: int) -> None:
        self.unit_id = unit_id
        self.words = [random.randrange(0x10000) for _ in range(8)]
        self.late_s = 0.0

    async def action(  # noqa: PLR0917 - pymodbus calls SimAction with six positional arguments
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        del function_code, start_address, address, count, set_values
        current_registers[:] = self.words
        if self.late_s:
            late, self.late_s = self.late_s, 0.0
            await asyncio.sleep(late)
        return None

    def sim_device(self) -> SimDevice:
        return SimDevice(
            id=self.unit_id,
            simdata=[SimData(address=0, count=8, datatype=DataType.REGISTERS, readonly=True)],
            action=self.action,
        )


@contextlib.asynccontextmanager
async def server(device: SlowDevice) -> AsyncIterator[int]:
    srv = ModbusTcpServer([device.sim_device()], address=("127.0.0.1", 0), ignore_missing_devices=True)
    task = asyncio.create_task(srv.serve_forever(background=True))
    await task
    listener = srv.transport
    assert isinstance(listener, asyncio.Server)
    try:
        yield int(listener.sockets[0].getsockname()[1])
    finally:
        await srv.shutdown()  # type: ignore[no-untyped-call]


async def test_a_late_reply_is_a_timeout_and_does_not_answer_the_next_request() -> None:
    dev = SlowDevice(3)
    async with server(dev) as port, ModbusBus(TcpSettings("127.0.0.1", port, timeout_s=0.2), "tcp-x") as bus:
        assert await bus.read_block(3, Block(0, 8)) == dev.words
        dev.late_s = 0.5
        with pytest.raises(DeviceTimeout):
            await bus.read_block(3, Block(0, 8), device_id="wt-3")
        dev.words = [w ^ 0x5555 for w in dev.words]
        await asyncio.sleep(0.5)  # the late reply (old words, old transaction id) arrives meanwhile
        assert await bus.read_block(3, Block(0, 8)) == dev.words
        assert bus.connected


async def test_an_address_outside_the_device_is_an_exception_response() -> None:
    dev = SlowDevice(1)
    async with server(dev) as port, ModbusBus(TcpSettings("127.0.0.1", port, timeout_s=0.5), "tcp-x") as bus:
        with pytest.raises(DeviceExceptionResponse) as info:
            await bus.read_block(1, Block(100, 2))
        assert info.value.exception_code == ExcCodes.ILLEGAL_ADDRESS
