"""BLE shelf sensors: one passive scan (bleak, behind the driver's seam) and one BTHome monitor for all sensors.

Each new mass reading goes into the inventory engine exactly like a Modbus channel sample
(`WeightSink.weigh`: estimator → counts → alert rules → ledger + outbox → live stream): the sensor is the
bin's `device`, the mass object its `channel`, and the value is the mass in grams (so a bin's calibration is
zero = empty-plate grams, span = 1). A sensor going silent is a `silent` sensor fault on its bins, as for a
transmitter. Battery, temperature and RSSI are kept for the health view.

Keys: keyed sensors' AES-CCM bind keys come from the secrets file `ble.keys_file` (mode 0600, checked by
`drivers.ble.keys`), read once at start off the event loop. A keyed sensor without a usable key is *not*
monitored — monitoring it keyless would accept a forged plaintext advert — and reports the key problem as
its error (its bins get a sensor fault); the other sensors run normally.

The adapter: `BleakAdvertisementSource` (passive where the OS allows). Where it cannot scan (no adapter,
bluetoothd down) the coordinator logs once per change, marks every sensor offline, and retries with capped
full-jitter backoff. Tests and the demo inject a fake bleak backend through `backend=` (the seam,
STYLE.md rule 4); `shelfgate run` never does.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bleak.backends.scanner import BaseBleakScanner

from drivers.backoff import full_jitter_s
from drivers.ble.keys import BindKey, KeyFileError, load_keys
from drivers.ble.scanner import (
    BleakAdvertisementSource,
    BleDriverError,
    BTHomeMonitor,
    MassReading,
    ScannerSettings,
    SensorAvailability,
    SensorHealth,
)
from drivers.modbus.protocol import ChannelReading
from edge.config import Ble, BleSensor
from edge.devices.base import DeviceHealthView, Family, Publish, WeightSink, age_s, error_counts, supervise

_log = logging.getLogger(__name__)

ERROR_KINDS: Final = ("decrypt_failures", "plaintext_rejected", "key_missing", "malformed", "replays")
"""`SensorHealth` counters of bad adverts (duplicates are BTHome's deliberate repeats, not errors)."""

GRAMS_PER_KG: Final = 1000.0


@dataclass(slots=True)
class _SensorState:
    cfg: BleSensor
    key: BindKey | None = None
    key_problem: str | None = None
    """Why a keyed sensor is not monitored (no key file, no key for its MAC); never the key itself."""
    temperature_c: float | None = None
    masses_kg: dict[int, float] = field(default_factory=dict)


class BleCoordinator:
    """Every configured BLE sensor; `run()` under the gateway's TaskGroup (task `ble.scanner`)."""

    family: Family = "ble"

    def __init__(
        self,
        ble: Ble,
        sensors: Sequence[BleSensor],
        sink: WeightSink,
        publish: Publish,
        *,
        backend: type[BaseBleakScanner] | None = None,
        backoff_base_s: float = 1.0,
        backoff_cap_s: float = 60.0,
        rng: random.Random | None = None,
    ) -> None:
        self._ble = ble
        self._sink = sink
        self._publish = publish
        self._backend = backend
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        self._rng = rng or random.Random()  # jitter, not security
        self._sensors: dict[str, _SensorState] = {s.mac: _SensorState(s) for s in sensors}
        self._ids = {s.id: s.mac for s in sensors}
        self._health: Mapping[str, SensorHealth] = {}
        """The running (or last) monitor's per-MAC counters."""
        self._offline: set[str] = set()
        """Sensor ids whose bins were told the sensor is silent (so the first reading tells them it is back)."""
        self.scanning = False
        self.scanning_mode: str | None = None
        self.scanner_error: str | None = None
        self.scanner_failures = 0
        self.crashes = 0

    # --- the loop ------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Load the keys, then scan until cancelled."""
        await self._load_keys()
        for state in self._sensors.values():
            if state.key_problem is not None:
                await self._mark_offline(state.cfg.id, state.key_problem)
        watched = {
            mac: state.key
            for mac, state in self._sensors.items()
            if not state.cfg.keyed or state.key is not None
        }
        if not watched:
            _log.error("BLE: no sensor can be monitored (every keyed sensor lacks its key)")
            await asyncio.Event().wait()
        await supervise("ble scanner", functools.partial(self._scan, watched), on_crash=self._crashed)

    def _crashed(self, reason: str) -> None:
        self.crashes += 1

    async def _load_keys(self) -> None:
        """Read the keyed sensors' bind keys off the loop; a problem is logged once per sensor, never a key."""
        keyed = [s for s in self._sensors.values() if s.cfg.keyed]
        if not keyed:
            return
        path = self._ble.keys_file
        keys: dict[str, BindKey] = {}
        if path is None:  # the config refuses this; kept for a config built in code
            problem = "no ble.keys_file configured"
        else:
            try:
                keys = await asyncio.to_thread(load_keys, Path(path))
                problem = f"no key for its MAC in {path}"
            except KeyFileError as exc:
                problem = f"keys file unusable: {exc.reason}"
        for state in keyed:
            state.key = keys.get(state.cfg.mac)
            state.key_problem = None if state.key is not None else problem
            if state.key is None:
                _log.error("BLE sensor %s (%s) not monitored: %s", state.cfg.id, state.cfg.mac, problem)

    async def _scan(self, watched: Mapping[str, BindKey | None]) -> None:
        attempt = 0
        while True:
            source = BleakAdvertisementSource(
                ScannerSettings(adapter=self._ble.adapter, passive=self._ble.passive), backend=self._backend
            )
            monitor = BTHomeMonitor(
                source, watched, silent_after_s=self._ble.silent_after_s, monitor_id="ble"
            )
            try:
                async with monitor:
                    self._health = monitor.health
                    self.scanning_mode = source.scanning_mode
                    self._set_scanning(True, "scanning")
                    attempt = 0
                    async for event in monitor.events():
                        await self._handle(event)
                reason = "the advertisement source ended"
            except BleDriverError as exc:
                reason = exc.reason
            self.scanner_failures += 1
            self._set_scanning(False, reason)
            for sensor_id in self._ids:
                await self._mark_offline(sensor_id, f"BLE scan stopped: {reason}")
            await asyncio.sleep(full_jitter_s(attempt, self._backoff_base_s, self._backoff_cap_s, self._rng))
            attempt += 1

    def _set_scanning(self, scanning: bool, reason: str) -> None:
        """Availability of the adapter, logged once per change (STYLE.md rule 8)."""
        if scanning == self.scanning and (scanning or self.scanner_error is not None):
            return
        self.scanning = scanning
        if scanning:
            self.scanner_error = None
            _log.info("BLE scanning (%s) for %d sensors", self.scanning_mode, len(self._sensors))
        else:
            self.scanner_error = reason
            _log.warning("BLE scanning unavailable: %s; retrying with backoff", reason)

    async def _handle(self, event: MassReading | SensorAvailability) -> None:
        state = self._sensors.get(event.mac)
        if state is None:
            return
        sensor_id = state.cfg.id
        if isinstance(event, SensorAvailability):
            if event.online:
                await self._mark_online(sensor_id, event.reason, event.ts)
            else:
                await self._mark_offline(sensor_id, event.reason, event.ts)
            return
        if event.temperature_c is not None:
            state.temperature_c = event.temperature_c
        state.masses_kg[event.channel] = event.mass_kg
        await self._mark_online(sensor_id, "valid advert received", event.ts)
        if event.channel < state.cfg.channels:
            reading = ChannelReading(event.channel, event.mass_kg * GRAMS_PER_KG)
            await self._sink.weigh(sensor_id, event.ts, event.mono, (reading,))

    async def _mark_offline(self, sensor_id: str, reason: str, ts: float | None = None) -> None:
        if sensor_id in self._offline:
            return
        self._offline.add(sensor_id)
        await self._sink.availability(sensor_id, False, reason, ts if ts is not None else time.time())
        self._publish({"type": "device", "device_id": sensor_id, "family": self.family, "online": False})

    async def _mark_online(self, sensor_id: str, reason: str, ts: float) -> None:
        if sensor_id not in self._offline:
            return
        self._offline.discard(sensor_id)
        await self._sink.availability(sensor_id, True, reason, ts)
        self._publish({"type": "device", "device_id": sensor_id, "family": self.family, "online": True})

    # --- views ---------------------------------------------------------------------------------------------

    def health(self, now_mono: float) -> list[DeviceHealthView]:
        """Each sensor's health: the monitor's counters, battery and temperature, the key and adapter state."""
        out = []
        for mac, state in self._sensors.items():
            h = self._health.get(mac)
            snap: dict[str, Any] = dict(h.snapshot()) if h is not None else {}
            errors = error_counts(snap, ERROR_KINDS)
            errors["key_unavailable"] = int(state.key_problem is not None)
            errors["scanner_failures"] = self.scanner_failures
            errors["internal"] = self.crashes
            last_error = state.key_problem or snap.get("last_error") or self.scanner_error
            out.append(
                DeviceHealthView(
                    device_id=state.cfg.id,
                    family=self.family,
                    online=bool(h is not None and h.online and self.scanning and state.key_problem is None),
                    connected=self.scanning and state.key_problem is None,
                    last_seen_age_s=age_s(snap.get("last_valid_mono"), now_mono),
                    messages=int(snap.get("adverts") or 0),
                    errors_by_kind=errors,
                    last_error=last_error,
                    battery_pct=h.battery_pct if h is not None else None,
                    temperature_c=state.temperature_c,
                    detail={
                        "mac": mac,
                        "keyed": state.cfg.keyed,
                        "rssi": snap.get("rssi"),
                        "masses_kg": [state.masses_kg[c] for c in sorted(state.masses_kg)],
                        "scanning_mode": self.scanning_mode,
                    },
                    counters=snap,
                )
            )
        return out
