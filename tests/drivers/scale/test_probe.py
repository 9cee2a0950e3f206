"""The MT-SICS probe over real pty pairs: the scale simulator, a replay of recorded replies, silence, garbage.

No timed assertions: a probe on a silent port must *return* (the pytest timeout is the hang guard).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import serial_asyncio_fast

from drivers.scale.probe import DEFAULT_BAUDRATE, probe_mtsics
from firmware_sims.rfid import UhfModuleSim
from firmware_sims.scale import MtSicsScaleSim
from firmware_sims.serial_link import PtyNullModem

VECTORS_FILE = Path(__file__).resolve().parents[2] / "vectors" / "scale_serial_protocols.json"
MT_SICS: list[dict[str, Any]] = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))["mt_sics"]


def _vector(request: str) -> dict[str, Any]:
    return next(v for v in MT_SICS if v["request"] == request)


class _ReplayDevice(asyncio.Protocol):
    """A device end that answers each known request line with a recorded reply (and ignores the rest)."""

    def __init__(self, replies: Mapping[bytes, bytes]) -> None:
        self.replies = replies
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.received: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            request = line + b"\n"
            self.received.append(request)
            reply = self.replies.get(request)
            if reply is not None and self.transport is not None:
                self.transport.write(reply)


async def test_finds_the_simulated_balance_and_its_serial_number() -> None:
    async with PtyNullModem() as link, MtSicsScaleSim(link.device_path, serial_number="B123456789") as sim:
        result = await probe_mtsics(link.host_path, timeout_s=2.0)
    assert result.found
    assert result.serial_number == "B123456789"
    assert result.error is None
    assert result.lines == ("I4 A B123456789",)
    assert sim.commands == ["@"]  # the reset answered with the I4 line: no second command needed
    assert result.baudrate == DEFAULT_BAUDRATE == 9600


@pytest.mark.parametrize(
    ("answers_to", "expected_commands"),
    [("I4\r\n", [b"@\r\n", b"I4\r\n"]), ("@\r\n", [b"@\r\n"])],
    ids=["i4-only-firmware", "at-reply-carries-serial"],
)
async def test_recorded_replies_yield_the_serial_number(
    answers_to: str, expected_commands: list[bytes]
) -> None:
    """Vectors from tests/vectors/scale_serial_protocols.json (InstrumentKit's MT-SICS test suite).

    `@ A "123456789"` (the InstrumentKit mock's reset reply) already carries the serial number; a balance
    that answers `@` with `ES` (no reset command) is asked `I4` next.
    """
    vector = _vector(answers_to)
    replies = {vector["request"].encode(): vector["response"].encode()}
    if answers_to == "I4\r\n":
        replies[b"@\r\n"] = b"ES\r\n"  # a balance without the reset command: syntax error, then I4
    async with PtyNullModem() as link:
        loop = asyncio.get_running_loop()
        transport, device = await serial_asyncio_fast.create_serial_connection(
            loop, lambda: _ReplayDevice(replies), link.device_path, baudrate=9600
        )
        try:
            result = await probe_mtsics(link.host_path, timeout_s=2.0)
        finally:
            transport.close()
    assert isinstance(device, _ReplayDevice)
    assert result.found
    assert result.serial_number == vector["expected"]["args"][0]
    assert device.received == expected_commands


async def test_a_silent_port_returns_not_found_within_its_timeout() -> None:
    async with PtyNullModem() as link:  # nothing on the device end at all
        result = await probe_mtsics(link.host_path, timeout_s=0.3)
    assert not result.found
    assert result.error is None
    assert result.detail == "no answer to MT-SICS @ within 0.3 s"


async def test_a_powered_off_scale_is_silent_too() -> None:
    async with PtyNullModem() as link, MtSicsScaleSim(link.device_path) as sim:
        sim.silent = True
        result = await probe_mtsics(link.host_path, timeout_s=0.3)
    assert not result.found
    assert "no answer" in result.detail


async def test_line_noise_is_reported_as_bytes_that_are_not_mt_sics() -> None:
    async with PtyNullModem() as link, MtSicsScaleSim(link.device_path) as sim:
        sim.garbage_replies = 5
        result = await probe_mtsics(link.host_path, timeout_s=0.3)
    assert not result.found
    assert "none an MT-SICS line" in result.detail


async def test_an_rfid_module_is_not_taken_for_a_scale() -> None:
    async with PtyNullModem() as link, UhfModuleSim(link.device_path) as module:
        result = await probe_mtsics(link.host_path, timeout_s=0.3)
    assert not result.found
    assert module.commands_seen == []  # "@\r\n" holds no 0xBB frame head: the module saw no command


async def test_a_missing_port_is_an_error_not_an_exception(tmp_path: Path) -> None:
    result = await probe_mtsics(str(tmp_path / "ttyUSB7"), timeout_s=0.3)
    assert not result.found
    assert result.error is not None
    assert result.error.startswith("cannot open")
