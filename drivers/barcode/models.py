"""Settings, health counters and the exception tree of the barcode scanner client.

Settings are frozen: the gateway maps its validated config into them once at start. `ScannerCounters` is the
live, mutable health record of one scanner (mutated only by its client; the gateway reads `snapshot()`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from drivers.barcode.protocol import DEFAULT_MAX_LINE_BYTES, RejectReason

DEFAULT_BAUDRATE: Final = 9600
"""Factory default of RS-232 retail scanners; USB-CDC scanners ignore the baud rate altogether."""


@dataclass(frozen=True, slots=True)
class ScannerSettings:
    """One scanner's port. `port` is a device path; prefer a stable `/dev/serial/by-id/…` link for USB
    scanners, since `/dev/ttyACM0` may come back as `/dev/ttyACM1` after an unplug."""

    port: str
    baudrate: int = DEFAULT_BAUDRATE
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    queue_size: int = 64
    """Decoded scans held for a slow consumer; beyond this the oldest is dropped (see `ScannerClient`)."""


@dataclass(slots=True)
class ScannerCounters:
    """Running health counters of one scanner."""

    lines: int = 0
    """Non-empty lines framed (scans and rejections alike)."""
    scans: int = 0
    """Product scans delivered."""
    members: int = 0
    """Member scans delivered."""
    rejected: dict[str, int] = field(default_factory=lambda: {r.value: 0 for r in RejectReason})
    """Lines (or half lines) that were not scans, by `RejectReason` value."""
    dropped: int = 0
    """Decoded scans dropped because the consumer did not keep up."""
    connects: int = 0
    disconnects: int = 0
    """Times an open port went away (USB unplug, cable pulled, read error)."""
    last_seen_mono: float | None = None
    """`time.monotonic()` of the last framed line."""
    last_error: str | None = None
    online: bool = False

    def snapshot(self) -> dict[str, int | float | str | bool | dict[str, int] | None]:
        """A plain, JSON-ready copy."""
        return {
            "lines": self.lines,
            "scans": self.scans,
            "members": self.members,
            "rejected": dict(self.rejected),
            "dropped": self.dropped,
            "connects": self.connects,
            "disconnects": self.disconnects,
            "last_seen_mono": self.last_seen_mono,
            "last_error": self.last_error,
            "online": self.online,
        }


class ScannerError(Exception):
    """A scanner's port failed; `reason` says how, in words fit for a status page."""

    def __init__(self, scanner_id: str, reason: str) -> None:
        super().__init__(f"{scanner_id}: {reason}")
        self.scanner_id = scanner_id
        self.reason = reason


class ScannerUnavailable(ScannerError):
    """The port cannot be opened or went away.

    `misconfigured` is True when retrying soon cannot help (permission denied, not a tty); the client still
    retries, but only at its backoff cap. A missing path is *not* misconfiguration: a USB scanner being
    replugged looks exactly like that for a second.
    """

    def __init__(self, scanner_id: str, reason: str, *, misconfigured: bool = False) -> None:
        super().__init__(scanner_id, reason)
        self.misconfigured = misconfigured
