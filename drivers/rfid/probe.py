"""Is there a serial UHF module (M100 / JRD-4035 family) on this port, and which firmware? — a bounded probe.

The MagicRF M100 & QM100 firmware manual's "get module information" command (cmd 0x03, one parameter byte:
0x00 hardware version, 0x01 software version, 0x02 manufacturer)::

    host → module  BB 00 03 00 01 00 04 7E                       hardware version
    module → host  BB 01 03 00 10 00 "M100 26dBm V1.0" cs 7E     type 01, cmd 03, info type, ASCII text

`protocol.py` has no builder for it (the reader client never needs it), so this module frames it with the
codec's own `encode_frame`. Modules that do not implement 0x03 answer with the error frame (type 01, cmd FF,
code 0x17 "command error"): a valid frame with a valid checksum is proof enough that the port speaks this
protocol, so the probe reports the module without a version rather than nothing. Tag notices (a module left in
multi-poll inventory) prove it too. Bytes without a single valid frame suggest a wrong baud rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from drivers.rfid.protocol import (
    CMD_ERROR,
    CMD_SINGLE_INVENTORY,
    Frame,
    FrameDecoder,
    FrameType,
    NeedMore,
    ProtocolError,
    encode_frame,
    error_name,
)
from drivers.serial_line import SerialLine, SerialLineError

CMD_GET_MODULE_INFO: Final = 0x03
DEFAULT_BAUDRATE: Final = 115200
"""M100 / JRD-4035 factory setting."""
PROTOCOL: Final = "m100"


class InfoType(IntEnum):
    """The parameter of the get-module-information command."""

    HARDWARE = 0x00
    SOFTWARE = 0x01
    MANUFACTURER = 0x02


def module_info_command(info: InfoType) -> bytes:
    """`BB 00 03 00 01 <info> <checksum> 7E`."""
    return encode_frame(FrameType.COMMAND, CMD_GET_MODULE_INFO, bytes((info,)))


def module_info_response(info: InfoType, text: str) -> bytes:
    """The module's answer (for simulators and tests)."""
    return encode_frame(FrameType.RESPONSE, CMD_GET_MODULE_INFO, bytes((info,)) + text.encode("ascii"))


def parse_module_info(frame: Frame) -> tuple[InfoType, str]:
    """(info type, text) of a get-module-information response; `ProtocolError` for anything else."""
    if frame.frame_type != FrameType.RESPONSE or frame.command != CMD_GET_MODULE_INFO:
        raise ProtocolError(
            f"not a module-info response: type 0x{frame.frame_type:02x} cmd 0x{frame.command:02x}"
        )
    if not frame.params:
        raise ProtocolError("module-info response without an info type")
    try:
        info = InfoType(frame.params[0])
    except ValueError:
        raise ProtocolError(f"unknown module-info type 0x{frame.params[0]:02x}") from None
    raw = frame.params[1:]
    if any(not 0x20 <= b <= 0x7E for b in raw):
        raise ProtocolError("module-info text is not printable ASCII")
    return info, raw.decode("ascii").strip()


@dataclass(frozen=True, slots=True)
class RfidProbeResult:
    """What the probe found on one port; `error` is set when the port could not be used at all."""

    port: str
    baudrate: int
    found: bool
    hardware: str | None = None
    software: str | None = None
    detail: str = ""
    error: str | None = None

    @property
    def firmware(self) -> str | None:
        """The software (firmware) version, else the hardware string, else None."""
        return self.software or self.hardware


class _Collector:
    def __init__(self) -> None:
        self.decoder = FrameDecoder()
        self.frames: list[Frame] = []
        self.bad_frames = 0

    def feed(self, data: bytes) -> None:
        self.decoder.receive_data(data)
        while True:
            try:
                item = self.decoder.next_event()
            except ProtocolError:
                self.bad_frames += 1
                continue
            if isinstance(item, NeedMore):
                return
            self.frames.append(item)


async def probe_m100(
    port: str, *, baudrate: int = DEFAULT_BAUDRATE, timeout_s: float = 0.5
) -> RfidProbeResult:
    """Ask for the hardware and software versions; never waits more than about 2 × `timeout_s`."""
    collector = _Collector()
    versions: dict[InfoType, str] = {}
    refused: list[int] = []
    notices = 0

    def settled(info: InfoType) -> bool:
        nonlocal notices
        for frame in collector.frames:
            if frame.frame_type == FrameType.NOTICE and frame.command == CMD_SINGLE_INVENTORY:
                notices += 1
            elif frame.command == CMD_GET_MODULE_INFO and frame.frame_type == FrameType.RESPONSE:
                try:
                    kind, text = parse_module_info(frame)
                except ProtocolError:
                    continue
                versions[kind] = text
            elif frame.command == CMD_ERROR and len(frame.params) == 1:
                refused.append(frame.params[0])
        collector.frames.clear()
        return info in versions or bool(refused)

    async def ask(line: SerialLine, info: InfoType) -> None:
        line.write(module_info_command(info))

        def done(_: bytes) -> bool:
            collector.feed(line.take())
            return settled(info)

        await line.wait_until(done, timeout_s)

    try:
        async with SerialLine(port, baudrate=baudrate) as line:
            await ask(line, InfoType.HARDWARE)
            if not refused and InfoType.HARDWARE in versions:
                await ask(line, InfoType.SOFTWARE)
            received = line.bytes_in
    except SerialLineError as exc:
        return RfidProbeResult(port, baudrate, False, detail=exc.reason, error=exc.reason)
    hardware, software = versions.get(InfoType.HARDWARE), versions.get(InfoType.SOFTWARE)
    if hardware or software:
        text = ", ".join(f"{k} {v}" for k, v in (("hardware", hardware), ("software", software)) if v)
        return RfidProbeResult(port, baudrate, True, hardware, software, f"M100-family UHF module: {text}")
    if refused:
        return RfidProbeResult(
            port,
            baudrate,
            True,
            detail=f"M100-family UHF module (module info refused: {error_name(refused[0])})",
        )
    if notices:
        return RfidProbeResult(port, baudrate, True, detail="M100-family UHF module (inventory running)")
    if received:
        return RfidProbeResult(
            port,
            baudrate,
            False,
            detail=f"{received} bytes back, no valid M100 frame (wrong baud rate, or another device)",
        )
    return RfidProbeResult(port, baudrate, False, detail=f"no answer to M100 get-info within {timeout_s:g} s")
