"""The BLE seam (a source of advertisements), its bleak implementation, and the BTHome shelf-sensor monitor.

Layering (STYLE.md rules 4-8)::

    BTHomeMonitor ──────────── filters 0xFCD2, decodes (protocol.py), de-duplicates, per-sensor health,
          │                    availability logged once per change; yields MassReading / SensorAvailability
          │ async for adv in source.advertisements()
    AdvertisementSource ────── the seam: (mac, rssi, service_data_by_uuid, ts, mono)
          ├─ BleakAdvertisementSource   bleak 3.1 BleakScanner, passive where the backend can, no connections
          └─ firmware_sims.ble          an in-memory "air" (and a fake bleak backend) for tests and demos

Why passive scanning: shelf sensors only broadcast; an active scan makes every sensor answer scan requests,
which costs their coin cells and fills the 2.4 GHz band for nothing. BlueZ needs an advertisement-monitor
or-pattern for passive mode (and bluetoothd with experimental features); CoreBluetooth cannot scan passively
at all; if a passive start fails the source falls back to active once, with one warning.

Why our own bounded queue rather than `BleakScanner.advertisement_data()`: that generator's queue is
unbounded; a stalled consumer next to a busy shop's phones would grow it forever. Ours drops the *oldest*
advert when full (a newer advert of the same sensor supersedes it), counts it and warns once per overflow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Final, Literal, Protocol, Self

from bleak import BleakScanner
from bleak.args.bluez import BlueZScannerArgs, OrPattern
from bleak.assigned_numbers import AdvertisementDataType
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.exc import BleakError

from drivers.ble.keys import BindKey
from drivers.ble.protocol import (
    BTHOME_SERVICE_UUID,
    BTHOME_UUID16,
    DecryptionFailed,
    KeyRequired,
    PacketFilter,
    PlaintextRejected,
    ProtocolError,
    normalize_mac,
    parse_advert,
)

_log = logging.getLogger(__name__)

BTHOME_LOGGER: Final = "bthome_ble"
"""bthome-ble logs a WARNING per wrong-key or plaintext advert; see `quiet_bthome_logging`."""
UNKNOWN_SENSORS_CAP: Final = 256
"""Unconfigured BTHome devices remembered for the installer's "found nearby" list (oldest forgotten first)."""


def quiet_bthome_logging() -> None:
    """Raise bthome-ble's logger to CRITICAL: the monitor reports every bad advert itself, once per change.

    bthome-ble logs one WARNING per advert that fails decryption or arrives in plaintext while a key is
    known, which breaks "logged once" (STYLE.md rule 8) when a neighbour's sensor or an attacker sends ten
    adverts a second. Logging is process-wide state, so the process root calls this once at start.
    """
    logging.getLogger(BTHOME_LOGGER).setLevel(logging.CRITICAL)


# --- the seam ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Advertisement:
    """One received advertisement, as any source delivers it.

    `service_data` is keyed by 128-bit UUID string, lower case (bleak's form). `ts` is wall-clock seconds
    for storage; `mono` is `time.monotonic()` for staleness and de-dup windows (NTP steps must not matter).
    """

    mac: str
    rssi: int
    service_data: Mapping[str, bytes]
    ts: float
    mono: float
    local_name: str | None = None


class AdvertisementSource(Protocol):
    """A source of advertisements: `async with source: async for adv in source.advertisements(): ...`.

    The iterator ends when the source does (a finished replay); a real radio never ends on its own.
    """

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def advertisements(self) -> AsyncIterator[Advertisement]: ...


class BleDriverError(Exception):
    """The BLE driver's exception tree root; `reason` is fit for a status page."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ScannerUnavailable(BleDriverError):
    """The Bluetooth adapter cannot scan (no adapter, powered off, bluetoothd down, no permission)."""


@dataclass(frozen=True, slots=True)
class ScannerSettings:
    """How to scan. `adapter` is BlueZ's `hciN` (None: the default adapter)."""

    adapter: str | None = None
    passive: bool = True
    queue_size: int = 512


class AdvertQueue:
    """A bounded advert queue that drops the oldest entry when full (one warning per overflow episode).

    Shared by every source so they all have the same, written overflow policy.
    """

    def __init__(self, maxsize: int, name: str) -> None:
        if maxsize < 1:
            raise ValueError("queue size must be at least 1")
        self._items: deque[Advertisement | None] = deque()
        self._maxsize = maxsize
        self._name = name
        self._ready = asyncio.Event()
        self._overflowing = False
        self.dropped = 0

    def put(self, item: Advertisement | None) -> None:
        """Enqueue without waiting (callable from a bleak detection callback); None marks the end."""
        if len(self._items) >= self._maxsize:
            self._items.popleft()
            self.dropped += 1
            if not self._overflowing:
                self._overflowing = True
                _log.warning(
                    "%s: advert queue full (%d), dropping the oldest adverts", self._name, self._maxsize
                )
        elif self._overflowing and len(self._items) < self._maxsize // 2:
            self._overflowing = False
        self._items.append(item)
        self._ready.set()

    async def get(self) -> Advertisement | None:
        """Wait for the next advert (None: the source has ended)."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()


class BleakAdvertisementSource:
    """Advertisements from a real Bluetooth adapter through bleak (`backend=` swaps in a fake for tests).

    Listens only; never connects. Passive where possible (see the module docstring).
    """

    def __init__(
        self, settings: ScannerSettings | None = None, *, backend: type[BaseBleakScanner] | None = None
    ) -> None:
        self.settings = settings or ScannerSettings()
        self._backend = backend
        self._queue = AdvertQueue(self.settings.queue_size, "ble_scanner")
        self._scanner: BleakScanner | None = None
        self.scanning_mode: Literal["active", "passive"] | None = None
        self.received = 0

    @property
    def dropped(self) -> int:
        """Adverts dropped because the consumer fell behind."""
        return self._queue.dropped

    def _make_scanner(self, mode: Literal["active", "passive"]) -> BleakScanner:
        bluez: BlueZScannerArgs = {}
        if self.settings.adapter is not None:
            bluez["adapter"] = self.settings.adapter
        if mode == "passive":
            # BlueZ passive scanning goes through an AdvertisementMonitor that needs at least one pattern:
            # service data (AD 0x16) starting with BTHome's UUID, little-endian.
            bluez["or_patterns"] = [
                OrPattern(0, AdvertisementDataType.SERVICE_DATA_UUID16, BTHOME_UUID16.to_bytes(2, "little"))
            ]
        return BleakScanner(self._on_advert, None, mode, bluez=bluez, backend=self._backend)

    async def __aenter__(self) -> Self:
        modes: list[Literal["active", "passive"]] = ["active"]
        if self.settings.passive and sys.platform != "darwin":  # CoreBluetooth cannot scan passively
            modes.insert(0, "passive")
        last_error: Exception | None = None
        for mode in modes:
            try:
                scanner = self._make_scanner(mode)
                await scanner.start()
            except BleakError as exc:
                last_error = exc
                if mode == "passive":
                    _log.warning("BLE passive scan unavailable (%s); scanning actively instead", exc)
                continue
            except OSError as exc:  # BlueZ: no D-Bus socket (bluetoothd or dbus not running, or a container)
                raise ScannerUnavailable(
                    f"cannot start a BLE scan: {exc.strerror or exc} (is bluetoothd running?)"
                ) from exc
            self._scanner = scanner
            self.scanning_mode = mode
            return self
        raise ScannerUnavailable(f"cannot start a BLE scan: {last_error}") from last_error

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        scanner, self._scanner = self._scanner, None
        if scanner is not None:
            try:
                await scanner.stop()
            except BleakError as stop_exc:  # the adapter went away first; nothing left to stop
                _log.info("BLE scan stop: %s", stop_exc)
        self._queue.put(None)

    def _on_advert(self, device: BLEDevice, adv: AdvertisementData) -> None:
        self.received += 1
        self._queue.put(
            Advertisement(
                mac=device.address,
                rssi=adv.rssi,
                service_data=dict(adv.service_data),
                ts=time.time(),
                mono=time.monotonic(),
                local_name=adv.local_name,
            )
        )

    async def advertisements(self) -> AsyncIterator[Advertisement]:
        """Adverts in arrival order until the source is closed."""
        while (adv := await self._queue.get()) is not None:
            yield adv


# --- the monitor -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MassReading:
    """One new mass value from a bound shelf sensor; `channel` numbers the load cells of a multi-cell
    sensor (0 for a single cell). `ts` is wall clock, `mono` monotonic, both from the advert's arrival."""

    mac: str
    mass_kg: float
    ts: float
    mono: float
    battery_pct: int | None = None
    temperature_c: float | None = None
    rssi: int | None = None
    packet_id: int | None = None
    channel: int = 0
    encrypted: bool = False


@dataclass(frozen=True, slots=True)
class SensorAvailability:
    """A change of a sensor's availability; yielded once per change."""

    mac: str
    online: bool
    reason: str
    ts: float


@dataclass(slots=True)
class SensorHealth:
    """Running health counters of one bound sensor (mutated only by its monitor)."""

    adverts: int = 0
    """BTHome adverts received from this MAC, good or bad."""
    parsed: int = 0
    """Decoded, verified and new."""
    duplicates: int = 0
    replays: int = 0
    """Encrypted adverts with a counter older than the last accepted one."""
    decrypt_failures: int = 0
    plaintext_rejected: int = 0
    key_missing: int = 0
    """Encrypted adverts from a sensor configured without a key."""
    malformed: int = 0
    last_seen_mono: float | None = None
    last_valid_mono: float | None = None
    last_seen_ts: float | None = None
    rssi: int | None = None
    battery_pct: int | None = None
    online: bool = False
    last_error: str | None = None

    def snapshot(self) -> dict[str, int | float | str | bool | None]:
        """A plain, JSON-ready copy."""
        return asdict(self)


@dataclass(slots=True)
class UnknownSensor:
    """A BTHome device heard nearby but not bound to a bin (what an installer picks from)."""

    adverts: int = 0
    rssi: int | None = None
    encrypted: bool = False
    last_seen_ts: float | None = None


@dataclass(slots=True)
class _Sensor:
    key: BindKey | None
    health: SensorHealth = field(default_factory=SensorHealth)
    dedup: PacketFilter = field(default_factory=PacketFilter)
    available: bool | None = None
    offline_since_mono: float | None = None
    complaint: str | None = None


_END: Final = object()


class BTHomeMonitor:
    """Turns advertisements from any source into `MassReading`s for the bound sensors.

    ``async with BTHomeMonitor(source, {"A4:C1:…": key_or_None}) as monitor: async for event in
    monitor.events(): ...`` yields `MassReading` per new advert with a mass object and `SensorAvailability`
    on each change: offline (one WARNING) after `silent_after_s` without a valid advert — including a
    sensor never heard since start — and online again (one INFO) at the next valid advert. A first advert
    at start yields no `SensorAvailability` (the reading says the sensor is there).

    Bad adverts never end the iterator: a wrong key, plaintext from a keyed sensor, an encrypted advert
    with no key configured, a malformed advert or a replay is counted in `health[mac]` and logged once per
    change of complaint (the first one after a good advert, or a different kind); repeats are counted as
    duplicates. Adverts from unbound BTHome devices are only tallied in `unknown`.

    Tasks: `ble_monitor[<id>].rx` reads the source, `ble_monitor[<id>].watchdog` marks silent sensors
    offline. Both write into one bounded event queue; when the consumer falls behind they wait (the
    source's own queue then drops its oldest adverts, counted there).
    """

    def __init__(
        self,
        source: AdvertisementSource,
        sensors: Mapping[str, BindKey | None],
        *,
        silent_after_s: float = 60.0,
        dedup_window_s: float = 4.0,
        queue_size: int = 256,
        monitor_id: str = "ble",
    ) -> None:
        if silent_after_s <= 0:
            raise ValueError("silent_after_s must be positive")
        self.source = source
        self.monitor_id = monitor_id
        self.silent_after_s = silent_after_s
        self._sensors: dict[str, _Sensor] = {}
        for mac, key in sensors.items():
            normalized = normalize_mac(mac)
            if normalized in self._sensors:
                raise ValueError(f"sensor {normalized} is listed twice")
            self._sensors[normalized] = _Sensor(key=key, dedup=PacketFilter(window_s=dedup_window_s))
        self.unknown: OrderedDict[str, UnknownSensor] = OrderedDict()
        self.ignored = 0
        """Adverts without BTHome service data (phones, beacons, …)."""
        self._events: asyncio.Queue[MassReading | SensorAvailability | object] = asyncio.Queue(queue_size)
        self._tasks: list[asyncio.Task[None]] = []
        self._start_mono = 0.0
        self._wake = asyncio.Event()
        self._error: BaseException | None = None

    @property
    def health(self) -> dict[str, SensorHealth]:
        """Per-sensor counters, by normalised MAC."""
        return {mac: s.health for mac, s in self._sensors.items()}

    def snapshot(self) -> dict[str, object]:
        """JSON-ready status: every bound sensor's health, unknown devices, and monitor-level counters."""
        return {
            "sensors": {mac: s.health.snapshot() for mac, s in self._sensors.items()},
            "unknown": {mac: asdict(u) for mac, u in self.unknown.items()},
            "ignored": self.ignored,
        }

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.source.__aenter__()
        self._start_mono = time.monotonic()
        self._tasks = [
            asyncio.create_task(self._rx_loop(), name=f"ble_monitor[{self.monitor_id}].rx"),
            asyncio.create_task(self._watchdog_loop(), name=f"ble_monitor[{self.monitor_id}].watchdog"),
        ]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        await self.source.__aexit__(exc_type, exc, tb)

    async def events(self) -> AsyncIterator[MassReading | SensorAvailability]:
        """Readings and availability changes, until the source ends (or forever, on a real radio)."""
        while True:
            item = await self._events.get()
            if item is _END:
                if self._error is not None:
                    raise self._error
                return
            if isinstance(item, MassReading | SensorAvailability):
                yield item

    # --- tasks ---------------------------------------------------------------------------------------------

    async def _rx_loop(self) -> None:
        try:
            async for adv in self.source.advertisements():
                for event in self._handle(adv):
                    await self._events.put(event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - not swallowed: events() re-raises it to the consumer
            self._error = exc
        await self._events.put(_END)

    async def _watchdog_loop(self) -> None:
        while True:
            now = time.monotonic()
            next_deadline = now + self.silent_after_s
            for mac, sensor in self._sensors.items():
                if sensor.available is False:
                    continue
                last = sensor.health.last_valid_mono or self._start_mono
                deadline = last + self.silent_after_s
                if now >= deadline:
                    await self._events.put(self._go_offline(mac, sensor, now))
                else:
                    next_deadline = min(next_deadline, deadline)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(next_deadline - time.monotonic(), 0.0) + 0.001):
                    await self._wake.wait()

    def _go_offline(self, mac: str, sensor: _Sensor, now_mono: float) -> SensorAvailability:
        h = sensor.health
        sensor.available = False
        sensor.offline_since_mono = now_mono
        h.online = False
        if h.last_valid_mono is None:
            reason = f"not heard since start ({self.silent_after_s:g} s)"
        else:
            reason = f"no valid advert for {now_mono - h.last_valid_mono:.0f} s"
        if sensor.complaint is not None:
            reason += f"; last problem: {sensor.complaint}"
        _log.warning("BLE sensor %s offline: %s", mac, reason)
        return SensorAvailability(mac, online=False, reason=reason, ts=time.time())

    # --- one advert ----------------------------------------------------------------------------------------

    def _handle(self, adv: Advertisement) -> list[MassReading | SensorAvailability]:
        data = adv.service_data.get(BTHOME_SERVICE_UUID)
        if data is None:
            self.ignored += 1
            return []
        try:
            mac = normalize_mac(adv.mac)
        except ProtocolError:
            mac = adv.mac.upper()  # e.g. a CoreBluetooth UUID; never a bound sensor
        sensor = self._sensors.get(mac)
        if sensor is None:
            self._note_unknown(mac, adv, data)
            return []
        h = sensor.health
        h.adverts += 1
        h.last_seen_mono = adv.mono
        h.last_seen_ts = adv.ts
        h.rssi = adv.rssi
        try:
            advert = parse_advert(data, mac=mac, key=sensor.key.raw if sensor.key is not None else None)
        except DecryptionFailed as exc:
            h.decrypt_failures += 1
            self._complain(mac, sensor, "decrypt", exc)
            return []
        except PlaintextRejected as exc:
            h.plaintext_rejected += 1
            self._complain(mac, sensor, "plaintext", exc)
            return []
        except KeyRequired as exc:
            h.key_missing += 1
            self._complain(mac, sensor, "key_missing", exc)
            return []
        except ProtocolError as exc:
            h.malformed += 1
            self._complain(mac, sensor, "malformed", exc)
            return []
        verdict = sensor.dedup.classify(advert, adv.mono)
        if verdict == "replay":
            h.replays += 1
            self._complain(
                mac, sensor, "replay", ProtocolError("encryption counter went backwards (replay?)")
            )
            return []
        h.last_valid_mono = adv.mono
        if verdict == "duplicate":
            h.duplicates += 1
            return self._come_online(mac, sensor, adv)
        h.parsed += 1
        sensor.complaint = None
        if advert.battery_pct is not None:
            h.battery_pct = advert.battery_pct
        events = self._come_online(mac, sensor, adv)
        events.extend(
            MassReading(
                mac=mac,
                mass_kg=mass_kg,
                ts=adv.ts,
                mono=adv.mono,
                battery_pct=advert.battery_pct,
                temperature_c=advert.temperature_c,
                rssi=adv.rssi,
                packet_id=advert.packet_id,
                channel=channel,
                encrypted=advert.encrypted,
            )
            for channel, mass_kg in enumerate(advert.masses_kg)
        )
        return events

    def _come_online(
        self, mac: str, sensor: _Sensor, adv: Advertisement
    ) -> list[MassReading | SensorAvailability]:
        sensor.health.online = True
        was = sensor.available
        sensor.available = True
        self._wake.set()  # the watchdog recomputes its next deadline
        if was is not False:
            return []
        offline_s = adv.mono - (sensor.offline_since_mono or adv.mono)
        _log.info("BLE sensor %s back online after %.1f s", mac, offline_s)
        return [SensorAvailability(mac, online=True, reason="valid advert received", ts=adv.ts)]

    def _complain(self, mac: str, sensor: _Sensor, kind: str, exc: ProtocolError) -> None:
        """Log a bad advert once per change of complaint; the counters carry the rest."""
        reason = str(exc)
        sensor.health.last_error = reason
        if sensor.complaint == kind:
            return
        sensor.complaint = kind
        _log.warning("BLE sensor %s: %s (further ones counted, not logged)", mac, reason)

    def _note_unknown(self, mac: str, adv: Advertisement, data: bytes) -> None:
        entry = self.unknown.pop(mac, None) or UnknownSensor()
        entry.adverts += 1
        entry.rssi = adv.rssi
        entry.encrypted = bool(data) and bool(data[0] & 0x01)
        entry.last_seen_ts = adv.ts
        self.unknown[mac] = entry
        while len(self.unknown) > UNKNOWN_SENSORS_CAP:
            self.unknown.popitem(last=False)
