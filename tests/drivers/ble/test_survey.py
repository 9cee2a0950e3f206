"""The installer's BTHome survey over the real bleak source with the fake bleak backend (`firmware_sims.ble`).

Sensors encode with the production codec and broadcast on a `SimAir`; the survey listens through
`BleakAdvertisementSource(backend=...)`, i.e. the real `bleak.BleakScanner` over an in-memory backend.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from drivers.ble.scanner import BleakAdvertisementSource, ScannerUnavailable
from drivers.ble.survey import WEAK_RSSI_DBM, survey_bthome
from firmware_sims.ble import SimAir, SimShelfSensor

KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
PLAIN = "A4:C1:38:00:00:01"
KEYED = "A4:C1:38:00:00:02"
PHONE_SERVICE = {"0000180f-0000-1000-8000-00805f9b34fb": b"\x64"}  # Battery Service data, not BTHome


async def _phone(air: SimAir) -> None:
    while True:
        air.broadcast("11:22:33:44:55:66", PHONE_SERVICE, rssi=-40)
        await asyncio.sleep(0.05)


async def test_survey_lists_sensors_with_rssi_encryption_and_plaintext_mass() -> None:
    air = SimAir()
    source = BleakAdvertisementSource(backend=air.bleak_backend())
    async with (
        SimShelfSensor(air, PLAIN, masses_kg=[1.25], battery_pct=87, rssi=-61, interval_s=0.05),
        SimShelfSensor(air, KEYED, key=KEY, masses_kg=[3.5], rssi=-91, interval_s=0.05),
    ):
        phone = asyncio.create_task(_phone(air), name="test.phone")
        try:
            survey = await survey_bthome(source, 1.0)
        finally:
            phone.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await phone
    assert set(survey.sensors) == {PLAIN, KEYED}
    plain, keyed = survey.sensors[PLAIN], survey.sensors[KEYED]
    assert plain.adverts >= 1
    assert keyed.adverts >= 1
    assert (plain.rssi, plain.rssi_max, plain.encrypted) == (-61, -61, False)
    assert (plain.mass_kg, plain.battery_pct) == (1.25, 87)
    assert not plain.weak
    assert keyed.encrypted
    assert keyed.mass_kg is None  # no bind key during discovery: listed, not read
    assert keyed.weak
    assert keyed.rssi_max is not None
    assert keyed.rssi_max < WEAK_RSSI_DBM
    assert survey.other_adverts >= 1
    assert survey.duration_s == 1.0
    assert air.listeners == 0  # the scan was stopped


async def test_no_adapter_is_reported_not_swallowed() -> None:
    air = SimAir(adapter_present=False)
    with pytest.raises(ScannerUnavailable, match="cannot start a BLE scan"):
        await survey_bthome(BleakAdvertisementSource(backend=air.bleak_backend()), 0.2)


async def test_an_empty_air_gives_an_empty_survey() -> None:
    air = SimAir()
    survey = await survey_bthome(air.source(), 0.2)
    assert survey.sensors == {}
    assert survey.other_adverts == 0


async def test_duration_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        await survey_bthome(SimAir().source(), 0)
