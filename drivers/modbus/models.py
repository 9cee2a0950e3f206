"""Typed values the Modbus bus client hands to the gateway, and the one exception tree it raises.

Settings are frozen: the gateway maps its validated config (`edge.config.RtuBus`/`TcpBus`) into them once at
start. Samples and availability changes are what `TransmitterPoller.run()` yields; `DeviceCounters` is the
live, mutable health record of one transmitter (the gateway reads `snapshot()` for its status page).

Exceptions (STYLE.md rule 10): every failure of a transaction surfaces as one `ModbusDriverError` subclass
carrying the device id and a human reason; pymodbus' own exceptions never leak past `client.py`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Final, Literal

from drivers.modbus.protocol import ChannelReading, t35_s

Parity = Literal["N", "E", "O"]

DEFAULT_TCP_PORT: Final = 502
"""IANA-registered Modbus/TCP port (Modbus Messaging on TCP/IP Implementation Guide v1.0b §3.1.3)."""


@dataclass(frozen=True, slots=True)
class RtuSettings:
    """An RS-485 line behind a serial port (or a pty in the simulator).

    `turnaround_s` is extra quiet time held after every exchange, for transmitters that need longer than
    t3.5 to switch their RS-485 driver back to receive.
    """

    port: str
    baudrate: int = 9600
    parity: Parity = "N"
    stopbits: int = 1
    bytesize: int = 8
    timeout_s: float = 0.3
    turnaround_s: float = 0.0

    @property
    def bits_per_char(self) -> int:
        """Start bit + data bits + optional parity + stop bits (Modbus over Serial Line v1.02 §2.5.1)."""
        return 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits

    @property
    def inter_frame_s(self) -> float:
        """Silence to keep on the line between two transactions: t3.5 plus the configured turnaround."""
        return t35_s(self.baudrate, self.bits_per_char) + self.turnaround_s


@dataclass(frozen=True, slots=True)
class TcpSettings:
    """A Modbus TCP transmitter or RTU-over-TCP gateway (MBAP framing, transaction ids)."""

    host: str
    port: int = DEFAULT_TCP_PORT
    timeout_s: float = 1.0


BusSettings = RtuSettings | TcpSettings


@dataclass(frozen=True, slots=True)
class Sample:
    """One successful poll of one transmitter: every planned channel, decoded.

    `ts` is wall-clock seconds (`time.time()`) for storage and the uplink; `mono` is `time.monotonic()` for
    rates and staleness, which must not jump when NTP steps the clock on a freshly booted Pi.
    """

    device_id: str
    ts: float
    mono: float
    readings: tuple[ChannelReading, ...]


@dataclass(frozen=True, slots=True)
class Availability:
    """A change of a transmitter's availability; yielded once per change, never per failed poll."""

    device_id: str
    online: bool
    reason: str
    ts: float


@dataclass(slots=True)
class DeviceCounters:
    """Running health counters of one transmitter (mutated only by its poller)."""

    polls: int = 0
    ok: int = 0
    errors: int = 0
    """Failed polls of any kind; the specific counters below break them down."""
    timeouts: int = 0
    crc_errors: int = 0
    """Garbled replies: bad CRC, wrong unit id, wrong register count."""
    exceptions: int = 0
    """Modbus exception responses (spec §7), e.g. 02 illegal data address."""
    disconnects: int = 0
    """Times this device found its bus transport down after it had been reachable."""
    decode_errors: int = 0
    last_seen_mono: float | None = None
    last_error: str | None = None
    online: bool = False
    bus_time_s: float = 0.0
    """Wire time this device's transactions occupied, summed (for the RTU bus-time report)."""

    def snapshot(self) -> dict[str, int | float | str | bool | None]:
        """A plain, JSON-ready copy."""
        return asdict(self)


# --- exceptions --------------------------------------------------------------------------------------------


class ModbusDriverError(Exception):
    """A transaction with one transmitter failed; `reason` says how, in words fit for a status page."""

    def __init__(self, device_id: str, reason: str) -> None:
        super().__init__(f"{device_id}: {reason}")
        self.device_id = device_id
        self.reason = reason


class DeviceTimeout(ModbusDriverError):
    """No reply within the bus timeout (device off, wrong unit id, cable cut, or a reply that came late)."""


class FrameError(ModbusDriverError):
    """Bytes came back but no valid reply: CRC mismatch, garbled frame, wrong unit id or register count."""


class DeviceExceptionResponse(ModbusDriverError):
    """The device answered with a Modbus exception (Modbus Application Protocol v1.1b3 §7)."""

    def __init__(self, device_id: str, reason: str, exception_code: int) -> None:
        super().__init__(device_id, reason)
        self.exception_code = exception_code


class BusUnavailable(ModbusDriverError):
    """The transport is down: serial port missing or unopenable, TCP connection refused or lost.

    `misconfigured` is True when retrying soon cannot help (e.g. the serial device path does not exist);
    the bus still retries, but only at its backoff cap.
    """

    def __init__(self, device_id: str, reason: str, *, misconfigured: bool = False) -> None:
        super().__init__(device_id, reason)
        self.misconfigured = misconfigured
