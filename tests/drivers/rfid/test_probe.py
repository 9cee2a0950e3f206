"""The M100 probe: the get-module-information frames, and probes over real pty pairs against the module
simulator, a module that reports its versions, a scale, and silence."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import ClassVar

import pytest
import serial_asyncio_fast

from drivers.rfid.probe import (
    DEFAULT_BAUDRATE,
    InfoType,
    module_info_command,
    module_info_response,
    parse_module_info,
    probe_m100,
)
from drivers.rfid.protocol import (
    FrameDecoder,
    FrameType,
    NeedMore,
    ProtocolError,
    decode_frame,
    encode_frame,
    stop_multi_inventory,
)
from firmware_sims.rfid import UhfModuleSim
from firmware_sims.scale import MtSicsScaleSim
from firmware_sims.serial_link import PtyNullModem

# The command list printed in M5Stack's "Unit UHF-RFID" documentation (after the MagicRF M100 & QM100
# firmware manual): 0 hardware version, 1 software version, 2 manufacturer.
INFO_COMMANDS = {
    InfoType.HARDWARE: "BB 00 03 00 01 00 04 7E",
    InfoType.SOFTWARE: "BB 00 03 00 01 01 05 7E",
    InfoType.MANUFACTURER: "BB 00 03 00 01 02 06 7E",
}


@pytest.mark.parametrize("info", list(INFO_COMMANDS), ids=[i.name.lower() for i in INFO_COMMANDS])
def test_module_info_command_matches_the_manual(info: InfoType) -> None:
    assert module_info_command(info) == bytes.fromhex(INFO_COMMANDS[info])


def test_module_info_response_round_trips_through_the_codec() -> None:
    wire = module_info_response(InfoType.HARDWARE, "M100 26dBm V1.0")
    frame = decode_frame(wire)  # checksum and end byte verified by the reader's own codec
    assert (frame.frame_type, frame.command) == (FrameType.RESPONSE, 0x03)
    assert parse_module_info(frame) == (InfoType.HARDWARE, "M100 26dBm V1.0")


def test_parse_module_info_refuses_other_frames() -> None:
    with pytest.raises(ProtocolError, match="not a module-info response"):
        parse_module_info(decode_frame(stop_multi_inventory()))
    with pytest.raises(ProtocolError, match="not printable"):
        parse_module_info(decode_frame(encode_frame(FrameType.RESPONSE, 0x03, b"\x01V1\x00")))
    with pytest.raises(ProtocolError, match="unknown module-info type"):
        parse_module_info(decode_frame(encode_frame(FrameType.RESPONSE, 0x03, b"\x09V1")))


class _InfoModule(asyncio.Protocol):
    """A module end that implements get-module-information (the stock simulator refuses it)."""

    TEXT: ClassVar[dict[InfoType, str]] = {
        InfoType.HARDWARE: "M100 26dBm V1.0",
        InfoType.SOFTWARE: "V2.3.5",
        InfoType.MANUFACTURER: "MagicRF",
    }

    def __init__(self) -> None:
        self.decoder = FrameDecoder()
        self.transport: asyncio.Transport | None = None
        self.asked: list[InfoType] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.decoder.receive_data(data)
        while not isinstance(frame := self.decoder.next_event(), NeedMore):
            if frame.command == 0x03 and frame.params and self.transport is not None:
                info = InfoType(frame.params[0])
                self.asked.append(info)
                self.transport.write(module_info_response(info, self.TEXT[info]))


async def test_a_module_that_reports_its_versions() -> None:
    async with PtyNullModem() as link:
        loop = asyncio.get_running_loop()
        transport, module = await serial_asyncio_fast.create_serial_connection(
            loop, _InfoModule, link.device_path, baudrate=DEFAULT_BAUDRATE
        )
        try:
            result = await probe_m100(link.host_path, timeout_s=2.0)
        finally:
            transport.close()
    assert isinstance(module, _InfoModule)
    assert result.found
    assert (result.hardware, result.software) == ("M100 26dBm V1.0", "V2.3.5")
    assert result.firmware == "V2.3.5"
    assert module.asked == [InfoType.HARDWARE, InfoType.SOFTWARE]


async def test_the_module_simulator_is_found_although_it_refuses_module_info() -> None:
    async with PtyNullModem() as link, UhfModuleSim(link.device_path) as module:
        result = await probe_m100(link.host_path, timeout_s=2.0)
    assert result.found
    assert result.firmware is None
    assert "module info refused: command error" in result.detail
    assert module.commands_seen == [0x03]


async def test_a_silent_port_returns_not_found() -> None:
    async with PtyNullModem() as link:
        result = await probe_m100(link.host_path, timeout_s=0.3)
    assert not result.found
    assert result.detail == "no answer to M100 get-info within 0.3 s"


async def test_a_scale_is_not_taken_for_an_rfid_module() -> None:
    async with PtyNullModem() as link, MtSicsScaleSim(link.device_path):
        result = await probe_m100(link.host_path, timeout_s=0.3)
    assert not result.found


async def test_a_missing_port_is_an_error_not_an_exception(tmp_path: Path) -> None:
    result = await probe_m100(str(tmp_path / "ttyUSB3"), timeout_s=0.3)
    assert not result.found
    assert result.error is not None
    assert result.error.startswith("cannot open")
