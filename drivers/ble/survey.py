"""Which BTHome sensors are in radio range, and how well are they heard? — a timed listen for installers.

It listens to any `AdvertisementSource` (the bleak one on site, `firmware_sims.ble` in tests) for a fixed time
and tallies every advert carrying BTHome service data (UUID 0xFCD2, bthome.io/format) per MAC: how many were
heard, the last and the strongest RSSI, whether the sensor encrypts (adv_info bit 0), and — for plaintext
sensors — the mass and battery it reports, decoded with the gateway's own codec. Encrypted adverts cannot be
read without the bind key, which the installer enters later; they are listed all the same.

RSSI guidance for the installer: BLE receivers lose adverts noticeably below about -85 dBm; a shelf sensor that
is heard only at -90 dBm wants the gateway (or an antenna) closer.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from drivers.ble.protocol import BTHOME_SERVICE_UUID, AdvInfo, ProtocolError, normalize_mac, parse_advert
from drivers.ble.scanner import AdvertisementSource

WEAK_RSSI_DBM = -85
"""Below this, expect lost adverts (see the module docstring)."""


@dataclass(slots=True)
class BTHomeSighting:
    """One BTHome device heard during the survey."""

    mac: str
    adverts: int = 0
    rssi: int | None = None
    """RSSI of the last advert, dBm."""
    rssi_max: int | None = None
    encrypted: bool = False
    local_name: str | None = None
    mass_kg: float | None = None
    """Last mass reported in plaintext (None when encrypted or absent)."""
    battery_pct: int | None = None
    decode_error: str | None = None
    """Why the last plaintext advert did not decode, if it did not."""

    @property
    def weak(self) -> bool:
        """The strongest advert was still below `WEAK_RSSI_DBM`."""
        return self.rssi_max is not None and self.rssi_max < WEAK_RSSI_DBM

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "mac": self.mac,
            "adverts": self.adverts,
            "rssi": self.rssi,
            "rssi_max": self.rssi_max,
            "encrypted": self.encrypted,
            "local_name": self.local_name,
            "mass_kg": self.mass_kg,
            "battery_pct": self.battery_pct,
            "decode_error": self.decode_error,
            "weak": self.weak,
        }


@dataclass(slots=True)
class BleSurvey:
    """The outcome of one listen."""

    duration_s: float
    sensors: dict[str, BTHomeSighting] = field(default_factory=dict)
    other_adverts: int = 0
    """Adverts without BTHome service data (phones, beacons, …)."""


def _note(survey: BleSurvey, mac_text: str, rssi: int, data: bytes, local_name: str | None) -> None:
    try:
        mac = normalize_mac(mac_text)
    except ProtocolError:
        mac = mac_text.upper()  # e.g. a CoreBluetooth UUID
    s = survey.sensors.setdefault(mac, BTHomeSighting(mac))
    s.adverts += 1
    s.rssi = rssi
    s.rssi_max = rssi if s.rssi_max is None else max(s.rssi_max, rssi)
    s.local_name = local_name or s.local_name
    s.encrypted = bool(data) and AdvInfo.parse(data[0]).encrypted
    if s.encrypted:
        return
    try:
        advert = parse_advert(data, mac=mac if ":" in mac else None)
    except ProtocolError as exc:
        s.decode_error = str(exc)
        return
    s.decode_error = None
    s.mass_kg = advert.mass_kg if advert.mass_kg is not None else s.mass_kg
    s.battery_pct = advert.battery_pct if advert.battery_pct is not None else s.battery_pct


async def survey_bthome(source: AdvertisementSource, duration_s: float) -> BleSurvey:
    """Listen for `duration_s` seconds (or until the source ends) and tally the BTHome devices heard.

    The source is entered and left here; its errors (e.g. `ScannerUnavailable`) propagate to the caller.
    """
    if duration_s <= 0:
        raise ValueError("duration_s must be positive")
    survey = BleSurvey(duration_s)
    async with source:
        adverts = source.advertisements()
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(duration_s):
                    async for adv in adverts:
                        data = adv.service_data.get(BTHOME_SERVICE_UUID)
                        if data is None:
                            survey.other_adverts += 1
                            continue
                        _note(survey, adv.mac, adv.rssi, data, adv.local_name)
        finally:
            aclose = getattr(adverts, "aclose", None)
            if aclose is not None:
                await aclose()
    return survey
