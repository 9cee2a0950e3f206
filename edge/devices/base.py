"""What every device coordinator shares: its health record, the engine's weight sink, and a supervisor.

A coordinator owns the driver clients of one family (STYLE.md rule 9: one coordinator per device family, one
task per device) and translates their output for the gateway; it never re-implements driver logic. The
drivers already count bad input, reconnect with backoff and log availability once per change (rules 7, 8);
the coordinator only reads their counters into a `DeviceHealthView`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from cloud_bridge.contract import DeviceHealth
from drivers.backoff import full_jitter_s
from drivers.modbus.protocol import ChannelReading

_log = logging.getLogger(__name__)

Family = Literal["modbus", "scale", "scanner", "rfid", "ble", "camera"]

Publish = Callable[[dict[str, Any]], None]
"""The gateway's live fan-out (`Broadcast.publish`, the SSE stream): never blocks, drops for slow readers."""


@dataclass(frozen=True, slots=True)
class DeviceHealthView:
    """One device's health, the same shape for every family (`GET /api/devices`, the heartbeat).

    `messages` counts the device's exchanges in its family's terms (Modbus polls, scale requests, scanner
    lines, RFID frames, BLE adverts); `errors_by_kind` holds the driver's error counters by name, zeros
    included, so a page can show a stable set of columns. `detail` carries family-specific fields (bus and
    unit id, lane and role, zones, bins) and `counters` the driver's whole snapshot.
    """

    device_id: str
    family: Family
    online: bool
    connected: bool
    last_seen_age_s: float | None
    messages: int
    errors_by_kind: Mapping[str, int]
    last_error: str | None = None
    firmware: str | None = None
    serial: str | None = None
    battery_pct: int | None = None
    temperature_c: float | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)
    counters: Mapping[str, Any] = field(default_factory=dict)
    total_errors: int | None = None
    """The driver's own total where its kinds overlap (e.g. Modbus `errors` counts failed polls, while its
    `disconnects` counts outages); None: the sum of `errors_by_kind`."""

    @property
    def errors(self) -> int:
        """Every error of every kind."""
        return self.total_errors if self.total_errors is not None else sum(self.errors_by_kind.values())

    def as_dict(self) -> dict[str, Any]:
        """The API form: common fields first, then the family's own."""
        out: dict[str, Any] = {
            "device_id": self.device_id,
            "family": self.family,
            "online": self.online,
            "connected": self.connected,
            "last_seen_age_s": self.last_seen_age_s,
            "messages": self.messages,
            "errors": self.errors,
            "errors_by_kind": dict(self.errors_by_kind),
            "last_error": self.last_error,
            "firmware": self.firmware,
            "serial": self.serial,
            "battery_pct": self.battery_pct,
            "temperature_c": self.temperature_c,
        }
        out.update(self.detail)
        out["counters"] = dict(self.counters)
        return out

    def to_contract(self) -> DeviceHealth:
        """The heartbeat form (`cloud_bridge.contract.DeviceHealth`)."""
        return DeviceHealth(
            device_id=self.device_id,
            online=self.online,
            last_seen_age_s=self.last_seen_age_s,
            polls=self.messages,
            errors=self.errors,
            last_error=self.last_error,
            family=self.family,
            connected=self.connected,
            errors_by_kind=dict(self.errors_by_kind),
            firmware=self.firmware,
            serial=self.serial,
            battery_pct=self.battery_pct,
            temperature_c=self.temperature_c,
        )


def age_s(last_mono: float | None, now_mono: float) -> float | None:
    """Seconds since a monotonic timestamp, rounded for display; None when never."""
    return None if last_mono is None else round(max(now_mono - last_mono, 0.0), 3)


def error_counts(snapshot: Mapping[str, Any], kinds: Sequence[str]) -> dict[str, int]:
    """The named error counters of a driver snapshot (missing ones as 0)."""
    return {kind: int(snapshot.get(kind) or 0) for kind in kinds}


class Coordinator(Protocol):
    """One device family inside the gateway."""

    family: Family

    async def run(self) -> None:
        """Run every device of the family until cancelled; never returns on its own."""
        ...

    def health(self, now_mono: float) -> list[DeviceHealthView]:
        """Each device's health now."""
        ...


class WeightSink(Protocol):
    """Where weighing devices deliver readings: the inventory engine (implemented by `Gateway`).

    A BLE sensor's mass goes through exactly the path a Modbus channel sample takes: estimator → counts →
    alert rules → one SQLite transaction (ledger + outbox) → live stream.
    """

    async def weigh(self, device_id: str, ts: float, mono: float, readings: Sequence[ChannelReading]) -> None:
        """Readings of one device taken at `ts` (wall clock) / `mono` (monotonic); values in grams or profile
        units, as the bin's calibration expects."""
        ...

    async def availability(self, device_id: str, online: bool, reason: str, ts: float) -> None:
        """The device went silent (every bin on it gets a `silent` sensor fault) or came back."""
        ...


async def supervise(
    name: str,
    body: Callable[[], Awaitable[None]],
    *,
    backoff_base_s: float = 1.0,
    backoff_cap_s: float = 60.0,
    on_crash: Callable[[str], None] | None = None,
    rng: random.Random | None = None,
) -> None:
    """Run `body()` for ever, restarting it after an unexpected exception or an unexpected return.

    Drivers translate every expected failure into counters and availability; what reaches here is a bug or an
    untranslated library error. It must cost one device, not the gateway: the first crash of a kind is logged
    with its traceback, repeats as one line, `on_crash(reason)` lets the coordinator count it, and the restart
    waits a capped, fully jittered exponential backoff (reset after a run longer than the cap). Cancellation
    is never caught.
    """
    rng = rng or random.Random()  # jitter, not security
    attempt = 0
    logged: set[str] = set()
    while True:
        started = time.monotonic()
        try:
            await body()
            reason = "stopped unexpectedly"
            _log.error("%s %s; restarting", name, reason)
        except Exception as exc:  # noqa: BLE001 - a supervisor: logged (traceback once), counted, restarted
            kind = type(exc).__name__
            reason = f"crashed: {kind}: {exc}"
            if kind in logged:
                _log.error("%s %s; restarting", name, reason)
            else:
                logged.add(kind)
                _log.exception("%s %s; restarting", name, reason)
        if on_crash is not None:
            on_crash(reason)
        if time.monotonic() - started > backoff_cap_s:
            attempt = 0
        delay_s = full_jitter_s(attempt, backoff_base_s, backoff_cap_s, rng)
        attempt += 1
        await asyncio.sleep(max(delay_s, 0.05))
