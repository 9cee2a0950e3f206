"""Simulated BLE shelf sensors and the radio between them and the gateway.

    SimShelfSensor ─┐                         ┌─ SimAir.source()        the seam, directly
    SimShelfSensor ─┼─ broadcast ─ SimAir ────┤
    SimAir.replay() ┘   (in memory)           └─ SimAir.bleak_backend()  a bleak scanner backend class, so the
                                                 real `BleakAdvertisementSource` runs over `BleakScanner(backend=…)`

Sensors encode their adverts with `drivers.ble.protocol` (the same codec the gateway decodes with), encrypt
with AES-CCM when they have a key, increment their packet id per new packet and their counter per
encryption, and — like real BTHome firmware — send each packet `repeats` times so the receiver's de-dup
is exercised. Fault knobs: `silent`, `wrong_key` (encrypt with another key), `plaintext` (a downgrade),
`corrupt_next(n)` (flip a bit in the next n adverts).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, ClassVar, Literal, Self

from bleak.backends.scanner import AdvertisementData, AdvertisementDataCallback, BaseBleakScanner
from bleak.exc import BleakError

from drivers.ble.protocol import BTHOME_SERVICE_UUID, build_service_data, encode_objects, normalize_mac
from drivers.ble.scanner import Advertisement, AdvertQueue

Listener = Callable[[Advertisement], None]


class SimAir:
    """The shared radio medium: every broadcast reaches every current listener, synchronously.

    `passive_supported=False` makes the fake bleak backend refuse passive mode the way BlueZ without
    or-patterns (or CoreBluetooth) does, to exercise the source's fallback; `adapter_present=False` makes
    its `start()` fail like BlueZ on a host without bluetoothd.
    """

    def __init__(self, *, passive_supported: bool = True, adapter_present: bool = True) -> None:
        self._listeners: dict[object, Listener] = {}
        self.passive_supported = passive_supported
        self.adapter_present = adapter_present
        """False: the fake bleak backend fails `start()` as BlueZ does without a D-Bus socket."""
        self.broadcasts = 0

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Register a listener; returns the function that unregisters it."""
        token = object()
        self._listeners[token] = listener

        def remove() -> None:
            self._listeners.pop(token, None)

        return remove

    @property
    def listeners(self) -> int:
        """Receivers currently listening."""
        return len(self._listeners)

    def broadcast(
        self,
        mac: str,
        service_data: bytes | Mapping[str, bytes],
        *,
        rssi: int = -60,
        local_name: str | None = None,
    ) -> None:
        """Put one advert on the air (bytes are BTHome service data for UUID 0xFCD2)."""
        by_uuid = (
            {BTHOME_SERVICE_UUID: service_data} if isinstance(service_data, bytes) else dict(service_data)
        )
        adv = Advertisement(
            mac=mac,
            rssi=rssi,
            service_data=by_uuid,
            ts=time.time(),
            mono=time.monotonic(),
            local_name=local_name,
        )
        self.broadcasts += 1
        for listener in list(self._listeners.values()):
            listener(adv)

    async def replay(self, vectors: Iterable[Mapping[str, Any]], *, interval_s: float = 0.0) -> int:
        """Broadcast recorded vectors (`ble_address`, `service_data_hex`, optional `local_name`, `rssi`)."""
        sent = 0
        for vector in vectors:
            if "service_data_hex" not in vector:
                continue
            self.broadcast(
                str(vector["ble_address"]),
                bytes.fromhex(str(vector["service_data_hex"])),
                rssi=int(vector.get("rssi", -60)),
                local_name=vector.get("local_name"),
            )
            sent += 1
            await asyncio.sleep(interval_s)  # yield to receivers even when 0
        return sent

    def source(self, *, queue_size: int = 512) -> SimAdvertisementSource:
        """A receiver implementing the `AdvertisementSource` seam directly."""
        return SimAdvertisementSource(self, queue_size=queue_size)

    def bleak_backend(self) -> type[BaseBleakScanner]:
        """A bleak scanner backend class bound to this air, for `BleakScanner(backend=...)`."""
        air = self

        class _BoundFakeBleakScanner(FakeBleakScanner):
            bound_air: ClassVar[SimAir | None] = air

        return _BoundFakeBleakScanner


class SimAdvertisementSource:
    """An in-memory receiver: `async with air.source() as src: async for adv in src.advertisements()`."""

    def __init__(self, air: SimAir, *, queue_size: int = 512) -> None:
        self.air = air
        self._queue = AdvertQueue(queue_size, "sim_ble_source")
        self._unlisten: Callable[[], None] | None = None

    @property
    def dropped(self) -> int:
        """Adverts dropped because the consumer fell behind."""
        return self._queue.dropped

    async def __aenter__(self) -> Self:
        self._unlisten = self.air.listen(self._queue.put)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop listening; the iterator ends after the adverts already queued (a finished replay)."""
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
            self._queue.put(None)

    async def advertisements(self) -> AsyncIterator[Advertisement]:
        """Adverts in arrival order until `close()`."""
        while (adv := await self._queue.get()) is not None:
            yield adv


class FakeBleakScanner(BaseBleakScanner):
    """A bleak backend that "hears" a `SimAir` instead of an adapter. Use `SimAir.bleak_backend()`.

    Records the arguments bleak passed (`scanning_mode`, `bluez`) so tests can check what the real
    source asked the OS for.
    """

    bound_air: ClassVar[SimAir | None] = None
    instances: ClassVar[list[FakeBleakScanner]] = []

    def __init__(
        self,
        detection_callback: AdvertisementDataCallback | None,
        service_uuids: list[str] | None,
        scanning_mode: Literal["active", "passive"] = "active",
        **kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        air = type(self).bound_air
        if air is None:
            raise BleakError("FakeBleakScanner is not bound to a SimAir (use SimAir.bleak_backend())")
        self.scanning_mode = scanning_mode
        self.bluez: Mapping[str, Any] = kwargs.get("bluez", {})
        if scanning_mode == "passive" and not (air.passive_supported and self.bluez.get("or_patterns")):
            raise BleakError("passive scanning mode requires bluez or_patterns")
        self._air = air
        self._unlisten: Callable[[], None] | None = None
        type(self).instances.append(self)

    async def start(self) -> None:
        """Start hearing the air (bleak clears `seen_devices` on start)."""
        if not self._air.adapter_present:
            raise FileNotFoundError(2, "No such file or directory")
        self.seen_devices = {}
        self._unlisten = self._air.listen(self._on_air)

    async def stop(self) -> None:
        """Stop hearing the air."""
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None

    def _on_air(self, adv: Advertisement) -> None:
        data = AdvertisementData(
            local_name=adv.local_name,
            manufacturer_data={},
            service_data=dict(adv.service_data),
            service_uuids=list(adv.service_data),
            tx_power=None,
            rssi=adv.rssi,
            platform_data=(),
        )
        device = self.create_or_update_device(adv.mac, adv.mac, adv.local_name, None, data)
        if self.is_allowed_uuid(data.service_uuids):
            self.call_detection_callbacks(device, data)


class SimShelfSensor:
    """A BTHome v2 weight-shelf sensor broadcasting mass, battery and temperature.

    ``async with SimShelfSensor(air, "A4:C1:38:00:00:01", key=k, interval_s=0.1) as s: s.masses_kg = [1.2]``
    advertises every `interval_s` from a task named `sim_ble[<mac>].advertise` (no task when `interval_s`
    is None: call `send()` yourself). Each packet goes out `repeats` times with the same packet id (and,
    when encrypted, the same counter), as BTHome firmware does for reliability.
    """

    def __init__(
        self,
        air: SimAir,
        mac: str,
        *,
        key: bytes | None = None,
        masses_kg: Sequence[float] = (0.0,),
        battery_pct: int | None = 100,
        temperature_c: float | None = 21.5,
        interval_s: float | None = None,
        repeats: int = 3,
        include_mac: bool = False,
        packet_id: int = 0,
        counter: int | None = None,
        rssi: int = -60,
        rng: random.Random | None = None,
    ) -> None:
        if repeats < 1:
            raise ValueError("repeats must be at least 1")
        self.air = air
        self.mac = normalize_mac(mac)
        self.key = key
        self.masses_kg = list(masses_kg)
        self.battery_pct = battery_pct
        self.temperature_c = temperature_c
        self.interval_s = interval_s
        self.repeats = repeats
        self.include_mac = include_mac
        self.packet_id = packet_id % 256
        self._rng = rng or random.Random()
        self.counter = counter if counter is not None else self._rng.randrange(1000, 2**31)
        self.rssi = rssi
        self.silent = False
        self.wrong_key: bytes | None = None
        """When set (and the sensor has a key), encrypt with this key instead: the gateway's key is wrong."""
        self.plaintext = False
        """Send unencrypted even though the sensor has a key (a downgrade the gateway must refuse)."""
        self._corrupt = 0
        self.packets_sent = 0
        self._task: asyncio.Task[None] | None = None

    def corrupt_next(self, n: int = 1) -> None:
        """Flip one bit in each of the next n adverts (every repeat counts as one).

        A real controller drops most corrupted packets on the link-layer CRC-24, so this models a tampered
        or forged advert: on a keyed sensor the MIC fails; on a plaintext one it may decode to other values.
        """
        self._corrupt += n

    def next_service_data(self) -> bytes:
        """Encode the next packet (advancing packet id and counter)."""
        self.packet_id = (self.packet_id + 1) % 256
        objects = encode_objects(
            packet_id=self.packet_id,
            battery_pct=self.battery_pct,
            temperature_c=self.temperature_c,
            masses_kg=self.masses_kg,
        )
        key = None if self.plaintext else (self.wrong_key or self.key)
        if key is not None:
            self.counter = (self.counter + 1) % 2**32
        return build_service_data(
            objects, key=key, mac=self.mac, counter=self.counter, include_mac=self.include_mac
        )

    def send(self) -> bytes:
        """Broadcast one packet `repeats` times now (nothing when `silent`); returns the clean service data."""
        data = self.next_service_data()
        self.packets_sent += 1
        if self.silent:
            return data
        for _ in range(self.repeats):
            wire = data
            if self._corrupt > 0:
                self._corrupt -= 1
                bit = self._rng.randrange(8 * (len(data) - 1)) + 8  # keep adv_info: stay a v2 advert
                flipped = bytearray(data)
                flipped[bit // 8] ^= 1 << (bit % 8)
                wire = bytes(flipped)
            self.air.broadcast(self.mac, wire, rssi=self.rssi)
        return data

    async def __aenter__(self) -> Self:
        if self.interval_s is not None:
            self._task = asyncio.create_task(
                self._advertise_loop(self.interval_s), name=f"sim_ble[{self.mac}].advertise"
            )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _advertise_loop(self, interval_s: float) -> None:
        while True:
            self.send()
            await asyncio.sleep(interval_s)
