"""Typed values the scale client hands to the gateway, its health counters, and its one exception tree.

Settings are frozen: the gateway maps its validated config into them once at start. `ScaleCounters` is the
live, mutable health record of one scale (the gateway reads `snapshot()` for its status page).

Exceptions (STYLE.md rule 10): every failed exchange surfaces as one `ScaleError` subclass carrying the device
id and a human reason; pyserial's exceptions never leak past `client.py`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

Parity = Literal["N", "E", "O"]


@dataclass(frozen=True, slots=True)
class ScaleSettings:
    """One MT-SICS scale behind a serial port (or a pty in the simulator).

    Defaults are the MT-SICS factory settings (9600 baud, 8 data bits, no parity, 1 stop bit).
    `request_timeout_s` bounds replies that need no settling (SI, I4, @, TAC); `command_timeout_s` bounds Z
    and T, which the scale itself holds until the weight is stable. `poll_interval_s` is the pause between
    two SI polls while the weight is still moving.
    """

    port: str
    baudrate: int = 9600
    bytesize: int = 8
    parity: Parity = "N"
    stopbits: int = 1
    request_timeout_s: float = 1.0
    command_timeout_s: float = 5.0
    stable_timeout_s: float = 5.0
    poll_interval_s: float = 0.1
    offline_after: int = 3
    """Consecutive unanswered requests before the scale is reported offline."""

    def __post_init__(self) -> None:
        if min(self.request_timeout_s, self.command_timeout_s, self.stable_timeout_s) <= 0:
            raise ValueError("timeouts must be positive")
        if self.poll_interval_s < 0:
            raise ValueError("poll_interval_s must not be negative")
        if self.offline_after < 1:
            raise ValueError("offline_after must be at least 1")


@dataclass(frozen=True, slots=True)
class StableWeight:
    """A weight the scale itself declared stable (MT-SICS status S) — the only kind a sale may use.

    `value`/`unit` are as displayed; `weight_g` is the same in grams, or None for a non-mass unit. `ts` is
    wall-clock seconds for storage, `mono` is `time.monotonic()` for staleness checks.
    """

    device_id: str
    value: float
    unit: str
    weight_g: float | None
    ts: float
    mono: float


@dataclass(frozen=True, slots=True)
class Availability:
    """A change of a scale's availability; reported once per change, never per failed request."""

    device_id: str
    online: bool
    reason: str
    ts: float


@dataclass(slots=True)
class ScaleCounters:
    """Running health counters of one scale (mutated only by its client)."""

    requests: int = 0
    replies: int = 0
    timeouts: int = 0
    """Requests that got no matching reply in time (silence, a lost or a late reply)."""
    garbage_lines: int = 0
    """Received lines that are not MT-SICS (line noise, boot junk, over-long lines)."""
    stale_lines: int = 0
    """Valid lines nobody asked for (late replies to timed-out requests, leftovers of a stream)."""
    dropped_lines: int = 0
    """Lines dropped because the receive queue was full (a babbling scale)."""
    errors_syntax: int = 0
    """ES replies."""
    errors_transmission: int = 0
    """ET replies."""
    errors_logical: int = 0
    """EL replies and replies with status L."""
    not_executable: int = 0
    """Replies with status I (busy, or the scale's own stability timeout)."""
    overloads: int = 0
    underloads: int = 0
    dynamic_replies: int = 0
    """SI replies with status D (weight in motion) — read, never returned as a stable weight."""
    not_stable: int = 0
    """`weigh_stable` calls that ended without a stable weight (scale stuck in motion)."""
    resets: int = 0
    """`@` resets sent and answered (at start, after a power-cycle, after an outage)."""
    power_cycles: int = 0
    """Power-ups noticed: the scale's unsolicited I4 line, or a return after being offline."""
    disconnects: int = 0
    """Times the serial port itself was lost (USB unplugged) after it had been open."""
    open_failures: int = 0
    last_seen_mono: float | None = None
    last_error: str | None = None
    online: bool = False

    def snapshot(self) -> dict[str, int | float | str | bool | None]:
        """A plain, JSON-ready copy."""
        return asdict(self)


# --- exceptions --------------------------------------------------------------------------------------------


class ScaleError(Exception):
    """An exchange with one scale failed; `reason` says how, in words fit for a status page."""

    def __init__(self, device_id: str, reason: str) -> None:
        super().__init__(f"{device_id}: {reason}")
        self.device_id = device_id
        self.reason = reason


class ScaleTimeout(ScaleError):
    """No usable reply in time: the scale is silent, or its reply was lost or came late."""


class ScaleNotStable(ScaleTimeout):
    """The scale answered, but never with a stable weight before the deadline (stuck in motion)."""


class ScaleRangeError(ScaleError):
    """The load is outside the scale's range: overload (`+`) or underload (`-`)."""

    def __init__(self, device_id: str, reason: str, *, overload: bool) -> None:
        super().__init__(device_id, reason)
        self.overload = overload


class ScaleCommandError(ScaleError):
    """The scale refused a command: `kind` is syntax / transmission / logical / not executable."""

    def __init__(self, device_id: str, reason: str, *, kind: str) -> None:
        super().__init__(device_id, reason)
        self.kind = kind


class ScaleUnavailable(ScaleError):
    """The serial port cannot be opened or was lost; the client retries with backoff on later calls."""
