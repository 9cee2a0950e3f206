"""Sans-IO codec for BTHome v2 adverts from BLE shelf sensors: service data in, typed measurements out.

No asyncio, no radio, no clock, no logging of our own: bytes in, values out (and values in, bytes out for the
simulator). Object decoding and AES-CCM decryption are done by `bthome-ble` (the parser Home Assistant
uses), so the gateway reads every object type it knows; this module frames its input, decides what is an
error for *us* (a keyed sensor sending plaintext, a wrong key, an unknown format version), names the values
with their units, and encodes adverts for the simulator with the same layout.

BTHome v2 service data (https://bthome.io/format/; AD type 0x16 "Service Data - 16-bit UUID", Core Spec
Supplement Part A §1.11, UUID 0xFCD2). Bleak hands us the bytes *after* the little-endian UUID ``d2 fc``::

    adv_info | [MAC, 6 bytes reversed] | object | object | ...                          plaintext
    adv_info | [MAC, 6 bytes reversed] | ciphertext ... | counter (4, LE) | MIC (4)     encrypted

    adv_info  bit 0 encrypted · bit 1 MAC included · bit 2 trigger-based (sleepy) · bits 5-7 version (= 2)
    object    id (1) + fixed-length little-endian value; 0x53 text and 0x54 raw are id + length + bytes
              e.g. 06 5e 1f = mass 0x1f5e × 0.01 kg = 80.30 kg;  00 09 = packet id 9;  01 5d = battery 93 %
    crypto    AES-128-CCM, 4-byte MIC, no associated data,
              nonce = MAC (6, as printed) + d2 fc + adv_info + counter (4)  → 13 bytes

An advert is a datagram, not a stream: there is no "need more bytes" state. A truncated or garbled advert is
either still a valid (shorter) advert or a `ProtocolError`, never another exception.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Final

from bleak.backends.device import BLEDevice
from bthome_ble import BTHomeBluetoothDeviceData, SensorUpdate
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from habluetooth import BluetoothServiceInfoBleak

BTHOME_UUID16: Final = 0xFCD2
"""BTHome's 16-bit service UUID (assigned to Allterco Robotics for BTHome)."""
BTHOME_SERVICE_UUID: Final = "0000fcd2-0000-1000-8000-00805f9b34fb"
"""The same UUID in the 128-bit form bleak uses as the key of `AdvertisementData.service_data`."""
BTHOME_VERSION: Final = 2
KEY_LENGTH: Final = 16
"""AES-128 bind key length in bytes (32 hex digits)."""
MIC_LENGTH: Final = 4
COUNTER_LENGTH: Final = 4
MAX_SERVICE_DATA_LENGTH: Final = 27
"""A legacy advertising PDU carries at most 31 bytes of AD structures (Core Spec v5.4 Vol 6 Part B §2.3.1);
a service-data AD spends 4 of them on length, type and UUID."""
PACKET_ID_WINDOW: Final = 64
"""A packet id ahead of the last one by 1..63 (mod 256) is new; anything else within the de-dup window is a
repeat or a late copy (the rule bthome-ble applies, assuming at most ~16 adverts/s)."""
COUNTER_RESTART_BELOW: Final = 100
"""An encryption counter that drops below this is taken as a device restart (battery swap), not a replay."""
LB_IN_KG: Final = 0.45359237
"""International avoirdupois pound, exact by definition (1959)."""

OBJ_PACKET_ID: Final = 0x00
OBJ_BATTERY: Final = 0x01
OBJ_TEMPERATURE: Final = 0x02
OBJ_MASS_KG: Final = 0x06

_ADV_ENCRYPTED: Final = 0x01
_ADV_MAC_INCLUDED: Final = 0x02
_ADV_TRIGGER_BASED: Final = 0x04
_UUID16_LE: Final = BTHOME_UUID16.to_bytes(2, "little")
_NO_ADDRESS: Final = "00:00:00:00:00:00"
_MAC_RE: Final = re.compile(r"^[0-9A-F]{12}$")

_UNIT_SUFFIX: Final = {
    "%": "pct",
    "°C": "c",
    "kg": "kg",
    "lb": "lb",
    "mbar": "mbar",
    "lx": "lx",
    "kWh": "kwh",
    "W": "w",
    "V": "v",
    "A": "a",
    "µg/m³": "ug_m3",
    "ppm": "ppm",
    "mm": "mm",
    "m": "m",
    "s": "s",
    "m/s": "m_s",
    "m/s²": "m_s2",
    "L": "l",
    "mL": "ml",
    "m³": "m3",
    "m³/h": "m3_h",
    "°": "deg",
    "°/s": "deg_s",
    "µS/cm": "us_cm",
    "rpm": "rpm",
}
"""How a bthome-ble unit becomes a name suffix (STYLE.md: units in names, e.g. `mass_kg`, `battery_pct`)."""

MeasurementValue = float | int | bool | str
"""JSON-ready: numbers, binary-sensor states, text, raw hex, ISO timestamps, event types."""


class ProtocolError(ValueError):
    """Service data that is not a usable BTHome v2 advert; the message is one line, fit for a status page."""


class UnsupportedVersion(ProtocolError):
    """The adv_info version bits are not 2 (BTHome v1 uses other UUIDs; anything else is not BTHome)."""


class KeyRequired(ProtocolError):
    """An encrypted advert and no key for it (or no MAC to build the nonce)."""


class DecryptionFailed(ProtocolError):
    """The MIC did not verify: a wrong key, a corrupted advert, or a forgery."""


class PlaintextRejected(ProtocolError):
    """A plaintext advert for a sensor configured with a key: a downgrade, or an impostor."""


@dataclass(frozen=True, slots=True)
class AdvInfo:
    """The first service-data byte, unpacked."""

    encrypted: bool
    mac_included: bool
    trigger_based: bool
    version: int

    @classmethod
    def parse(cls, byte: int) -> AdvInfo:
        """Unpack an adv_info byte (bthome.io/format "BTHome Device Information")."""
        return cls(
            encrypted=bool(byte & _ADV_ENCRYPTED),
            mac_included=bool(byte & _ADV_MAC_INCLUDED),
            trigger_based=bool(byte & _ADV_TRIGGER_BASED),
            version=(byte >> 5) & 0x07,
        )

    def to_byte(self) -> int:
        """Pack back into one byte."""
        return (
            (self.version & 0x07) << 5
            | (_ADV_ENCRYPTED if self.encrypted else 0)
            | (_ADV_MAC_INCLUDED if self.mac_included else 0)
            | (_ADV_TRIGGER_BASED if self.trigger_based else 0)
        )


@dataclass(frozen=True, slots=True)
class BTHomeAdvert:
    """One decoded advert. `measurements` are named `<kind>[_<n>]_<unit>` (e.g. `mass_kg`, `mass_2_kg`,
    `temperature_c`, `battery_pct`); binary sensors keep their bare name; events are `event_<kind>`.

    `mac` is the MAC carried in the advert when it has one, else the address it was received from (or
    None when decoded without one). `counter` is the AES-CCM counter of an encrypted advert.
    """

    mac: str | None
    encrypted: bool
    trigger_based: bool
    packet_id: int | None
    counter: int | None
    measurements: Mapping[str, MeasurementValue]
    masses_kg: tuple[float, ...] = ()
    """Every mass object in advert order, in kg (0x07 pounds converted), for multi-cell shelves."""

    @property
    def mass_kg(self) -> float | None:
        """The first (usually only) mass in kg, or None when the advert has no mass object."""
        return self.masses_kg[0] if self.masses_kg else None

    @property
    def battery_pct(self) -> int | None:
        """Battery level (object 0x01), or None."""
        value = self.measurements.get("battery_pct")
        return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    @property
    def temperature_c(self) -> float | None:
        """The first temperature in °C, or None."""
        for name in ("temperature_c", "temperature_1_c"):
            value = self.measurements.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
        return None


def normalize_mac(text: str) -> str:
    """`a4c1388d18b2`, `a4-c1-…` or `A4:C1:…` → `A4:C1:38:8D:18:B2`; ProtocolError when it is not a MAC."""
    digits = re.sub(r"[:\-\s.]", "", text).upper()
    if not _MAC_RE.match(digits):
        raise ProtocolError(f"not a Bluetooth MAC address: {text!r}")
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def parse_key_hex(key_hex: str) -> bytes:
    """32 hex digits → 16 key bytes. The message never repeats the input (it is secret)."""
    cleaned = re.sub(r"\s", "", key_hex)
    if len(cleaned) != 2 * KEY_LENGTH:
        raise ProtocolError(f"a BTHome key is {2 * KEY_LENGTH} hex digits, got {len(cleaned)} characters")
    try:
        return bytes.fromhex(cleaned)
    except ValueError:
        raise ProtocolError("a BTHome key must be hex digits only") from None


def strip_uuid(data: bytes) -> bytes:
    """Drop a leading `d2 fc` (UUID, little-endian) if the caller pasted the whole AD payload.

    Unambiguous: an adv_info byte of 0xD2 would announce version 6, which does not exist.
    """
    return data[2:] if data[:2] == _UUID16_LE else data


# --- decoding ----------------------------------------------------------------------------------------------


def parse_advert(service_data: bytes, *, mac: str | None = None, key: bytes | None = None) -> BTHomeAdvert:
    """Decode one advert's service data (the bytes after the UUID).

    `key` is the sensor's 16-byte bind key when it has one: then plaintext adverts are refused
    (`PlaintextRejected`) and adverts whose MIC does not verify raise `DecryptionFailed`. `mac` is the
    address the advert came from; an encrypted advert needs it for the nonce unless it carries its own MAC.
    Stateless: de-duplication and replay checks belong to `PacketFilter`, which sees the advert stream.
    """
    if not service_data:
        raise ProtocolError("empty BTHome service data")
    if key is not None and len(key) != KEY_LENGTH:
        raise ProtocolError(f"a BTHome key is {KEY_LENGTH} bytes, got {len(key)}")
    info = AdvInfo.parse(service_data[0])
    if info.version != BTHOME_VERSION:
        raise UnsupportedVersion(
            f"adv_info 0x{service_data[0]:02x} announces BTHome version {info.version}, expected 2"
        )
    header_len = 1
    own_mac = normalize_mac(mac) if mac is not None else None
    if info.mac_included:
        header_len = 7
        if len(service_data) < header_len:
            raise ProtocolError("advert says it carries a MAC but is shorter than 7 bytes")
        own_mac = ":".join(f"{b:02X}" for b in reversed(service_data[1:7]))
    payload_len = len(service_data) - header_len
    counter: int | None = None
    if info.encrypted:
        if key is None:
            raise KeyRequired("encrypted advert and no key for this sensor")
        if own_mac is None:
            raise KeyRequired("encrypted advert: the sensor's MAC is needed to build the nonce")
        if payload_len < COUNTER_LENGTH + MIC_LENGTH + 2:
            raise ProtocolError(
                f"encrypted advert too short: {payload_len} bytes after the header, "
                f"need at least {COUNTER_LENGTH + MIC_LENGTH + 2} (object, counter, MIC)"
            )
        counter = int.from_bytes(service_data[-8:-4], "little")
    elif key is not None:
        raise PlaintextRejected("plaintext advert from a sensor that has a key")
    parser = BTHomeBluetoothDeviceData(bindkey=key)
    address = own_mac or _NO_ADDRESS
    service_info = BluetoothServiceInfoBleak(
        address,  # name: bthome-ble only derives a display title from it
        address,
        0,
        {},
        {BTHOME_SERVICE_UUID: bytes(service_data)},
        [],
        "shelfgate",
        BLEDevice(address, None, None),
        None,
        False,
        0.0,
        None,
    )
    try:
        update = parser.update(service_info)
    except (ValueError, TypeError, IndexError, OverflowError) as exc:
        raise ProtocolError(f"undecodable BTHome objects ({type(exc).__name__})") from None
    if info.encrypted and (parser.decryption_failed or not parser.bindkey_verified):
        raise DecryptionFailed("decryption failed: wrong key for this sensor, or a corrupted advert")
    return _advert_from_update(update, info, own_mac, counter)


def _unit_suffix(unit_text: str) -> str:
    return _UNIT_SUFFIX.get(unit_text) or re.sub(r"[^a-z0-9]+", "_", unit_text.lower()).strip("_")


def _json_value(value: object) -> MeasurementValue | None:
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return None


def _advert_from_update(
    update: SensorUpdate, info: AdvInfo, mac: str | None, counter: int | None
) -> BTHomeAdvert:
    measurements: dict[str, MeasurementValue] = {}
    masses_kg: list[float] = []
    packet_id: int | None = None
    for device_key, sensor_value in update.entity_values.items():
        key = device_key.key
        if key == "signal_strength":  # bthome-ble adds the RSSI it was given; we pass none
            continue
        value = _json_value(sensor_value.native_value)
        if value is None:
            continue
        if key == "packet_id":
            packet_id = int(value)
            continue
        description = update.entity_descriptions.get(device_key)
        unit = description.native_unit_of_measurement if description is not None else None
        unit_text = None if unit is None else str(unit)
        suffix = None if unit_text is None else _unit_suffix(unit_text)
        name = key if suffix is None else f"{key}_{suffix}"
        measurements[name] = value
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        if (key == "mass" or key.startswith("mass_")) and is_number:
            masses_kg.append(float(value) * (LB_IN_KG if suffix == "lb" else 1.0))
    for device_key, binary_value in update.binary_entity_values.items():
        if binary_value.native_value is not None:
            measurements[device_key.key] = bool(binary_value.native_value)
    for device_key, event in update.events.items():
        measurements[f"event_{device_key.key}"] = event.event_type
        for prop, prop_value in (event.event_properties or {}).items():
            json_prop = _json_value(prop_value)
            if json_prop is not None:
                measurements[f"event_{device_key.key}_{prop}"] = json_prop
    return BTHomeAdvert(
        mac=mac,
        encrypted=info.encrypted,
        trigger_based=info.trigger_based,
        packet_id=packet_id,
        counter=counter,
        measurements=measurements,
        masses_kg=tuple(masses_kg),
    )


def decode_bthome(
    service_data_hex: str, *, key_hex: str | None = None, mac: str | None = None
) -> dict[str, object]:
    """`shelfgate decode bthome HEX [--key K --mac M]`: the one function the CLI calls.

    Accepts the service data with or without the leading UUID bytes `d2fc`. Returns exactly
    `{"measurements": {...}, "encrypted": bool, "packet_id": int | None}`; raises `ProtocolError` with a
    one-line reason. The reason never contains the key.
    """
    cleaned = re.sub(r"\s", "", service_data_hex)
    try:
        data = strip_uuid(bytes.fromhex(cleaned))
    except ValueError:
        raise ProtocolError("service data must be hex digits") from None
    key = parse_key_hex(key_hex) if key_hex is not None else None
    try:
        advert = parse_advert(data, mac=mac, key=key)
    except KeyRequired:
        raise KeyRequired("encrypted advert: --key and --mac needed") from None
    except PlaintextRejected:
        raise PlaintextRejected("plaintext advert but --key given: a keyed sensor must encrypt") from None
    return {
        "measurements": dict(advert.measurements),
        "encrypted": advert.encrypted,
        "packet_id": advert.packet_id,
    }


# --- encoding (the simulator's side) -----------------------------------------------------------------------


def _pack(object_id: int, value: float, factor: float, length: int, *, signed: bool, what: str) -> bytes:
    raw = round(value / factor)
    try:
        return bytes([object_id]) + raw.to_bytes(length, "little", signed=signed)
    except OverflowError:
        raise ProtocolError(f"{what} {value!r} does not fit object 0x{object_id:02x}") from None


def encode_objects(
    *,
    packet_id: int | None = None,
    battery_pct: int | None = None,
    temperature_c: float | None = None,
    masses_kg: Sequence[float] = (),
) -> bytes:
    """Plaintext BTHome objects for a shelf sensor, in ascending object id as the format asks.

    0x00 packet id (uint8) · 0x01 battery % (uint8) · 0x02 temperature (sint16 × 0.01 °C) ·
    0x06 mass (uint16 × 0.01 kg, once per load cell).
    """
    parts: list[bytes] = []
    if packet_id is not None:
        parts.append(_pack(OBJ_PACKET_ID, packet_id, 1, 1, signed=False, what="packet id"))
    if battery_pct is not None:
        if not 0 <= battery_pct <= 100:
            raise ProtocolError(f"battery {battery_pct}% outside 0..100")
        parts.append(_pack(OBJ_BATTERY, battery_pct, 1, 1, signed=False, what="battery"))
    if temperature_c is not None:
        parts.append(_pack(OBJ_TEMPERATURE, temperature_c, 0.01, 2, signed=True, what="temperature"))
    parts.extend(_pack(OBJ_MASS_KG, m, 0.01, 2, signed=False, what="mass") for m in masses_kg)
    return b"".join(parts)


def nonce(mac: str, adv_info: int, counter: int) -> bytes:
    """The 13-byte AES-CCM nonce: MAC (as printed) + UUID (LE) + adv_info + counter (LE)."""
    mac_bytes = bytes.fromhex(normalize_mac(mac).replace(":", ""))
    return mac_bytes + _UUID16_LE + bytes([adv_info]) + counter.to_bytes(COUNTER_LENGTH, "little")


def build_service_data(
    objects: bytes,
    *,
    key: bytes | None = None,
    mac: str | None = None,
    counter: int = 0,
    include_mac: bool = False,
    trigger_based: bool = False,
) -> bytes:
    """Frame (and with `key`, encrypt) plaintext objects into BTHome v2 service data (without the UUID)."""
    info = AdvInfo(
        encrypted=key is not None, mac_included=include_mac, trigger_based=trigger_based, version=2
    )
    adv_info = info.to_byte()
    head = bytes([adv_info])
    if include_mac:
        if mac is None:
            raise ProtocolError("include_mac needs the MAC")
        head += bytes.fromhex(normalize_mac(mac).replace(":", ""))[::-1]
    if key is None:
        body = objects
    else:
        if len(key) != KEY_LENGTH:
            raise ProtocolError(f"a BTHome key is {KEY_LENGTH} bytes, got {len(key)}")
        if mac is None:
            raise ProtocolError("encrypting needs the MAC (it is part of the nonce)")
        if not 0 <= counter < 2**32:
            raise ProtocolError(f"counter {counter} is not a uint32")
        sealed = AESCCM(key, tag_length=MIC_LENGTH).encrypt(nonce(mac, adv_info, counter), objects, None)
        body = sealed[:-MIC_LENGTH] + counter.to_bytes(COUNTER_LENGTH, "little") + sealed[-MIC_LENGTH:]
    data = head + body
    if len(data) > MAX_SERVICE_DATA_LENGTH:
        raise ProtocolError(f"{len(data)} bytes of service data do not fit a legacy advert (max 27)")
    return data


# --- de-duplication ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class PacketFilter:
    """Drops repeats of one sensor's adverts (BTHome devices send each packet several times) and replays.

    Sans-IO: the caller passes its monotonic clock. Rules, per device:
    - encrypted adverts: the same counter is the same advert (a repeat, whatever the time); a counter below
      the last accepted one is a replay, unless it fell under `COUNTER_RESTART_BELOW` (device restarted);
    - packet ids: within `window_s` of the last accepted advert, an id not 1..63 ahead (mod 256) of the last
      one is a repeat or a late copy; after `window_s` of quiet any id is new (the device may have rebooted).
    Adverts with neither are never called duplicates.
    """

    window_s: float = 4.0
    last_packet_id: int | None = None
    last_counter: int | None = None
    last_accepted_mono: float | None = field(default=None)

    def classify(self, advert: BTHomeAdvert, now_mono: float) -> str:
        """`"new"` (and remember it), `"duplicate"` or `"replay"`."""
        if advert.counter is not None and self.last_counter is not None:
            if advert.counter == self.last_counter:
                return "duplicate"
            if advert.counter < self.last_counter and advert.counter >= COUNTER_RESTART_BELOW:
                return "replay"
        recent = self.last_accepted_mono is not None and now_mono - self.last_accepted_mono <= self.window_s
        if advert.packet_id is not None and self.last_packet_id is not None and recent:
            ahead = (advert.packet_id - self.last_packet_id) % 256
            if not 0 < ahead < PACKET_ID_WINDOW:
                return "duplicate"
        if advert.packet_id is not None:
            self.last_packet_id = advert.packet_id
        if advert.counter is not None:
            self.last_counter = advert.counter
        self.last_accepted_mono = now_mono
        return "new"
