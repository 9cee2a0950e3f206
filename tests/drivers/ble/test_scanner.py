"""The BTHome monitor over the simulated air, and the bleak source over a fake bleak backend.

Real components throughout: the sensors encode with the production codec, the monitor decodes through
bthome-ble, and `BleakAdvertisementSource` runs the real `bleak.BleakScanner` with `backend=` pointing at
an in-memory scanner backend. Waits are bounded by generous timeouts only to avoid hangs.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from drivers.ble.keys import BindKey, KeyFileError, load_keys
from drivers.ble.protocol import LB_IN_KG, ProtocolError, decode_bthome
from drivers.ble.scanner import (
    BTHOME_LOGGER,
    BleakAdvertisementSource,
    BleDriverError,
    BTHomeMonitor,
    MassReading,
    ScannerSettings,
    ScannerUnavailable,
    SensorAvailability,
    quiet_bthome_logging,
)
from firmware_sims.ble import FakeBleakScanner, SimAir, SimShelfSensor

SCANNER_LOGGER = "drivers.ble.scanner"
KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
OTHER_KEY = bytes.fromhex("814aac74c4f17b6c1581e1ab87816b99")
SHELF_A = "A4:C1:38:00:00:0A"
SHELF_B = "A4:C1:38:00:00:0B"
HANG_GUARD_S = 15.0

VECTORS_FILE = Path(__file__).resolve().parents[2] / "vectors" / "bthome_v2.json"
VECTORS: list[dict[str, Any]] = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))["vectors"]

Event = MassReading | SensorAvailability


async def next_event(events: AsyncIterator[Event]) -> Event:
    return await asyncio.wait_for(anext(events), HANG_GUARD_S)


async def wait_until(condition: Callable[[], bool], what: str = "condition") -> None:
    """Poll until true; fail (not hang) after a generous deadline. Never measures speed."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + HANG_GUARD_S
    while not condition():
        if loop.time() > give_up:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def warnings_from_monitor(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == SCANNER_LOGGER and r.levelno == level]


@pytest.fixture
def monitor_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger=SCANNER_LOGGER)
    return caplog


async def test_encrypted_shelf_readings_with_repeats_dropped() -> None:
    air = SimAir()
    sensor = SimShelfSensor(air, SHELF_A, key=KEY, masses_kg=[1.25], repeats=3)
    async with BTHomeMonitor(air.source(), {SHELF_A: BindKey(KEY)}) as monitor:
        events = monitor.events()
        sensor.send()
        first = await next_event(events)
        sensor.masses_kg = [0.5]
        sensor.send()
        second = await next_event(events)
        await wait_until(lambda: monitor.health[SHELF_A].adverts == 6)
    assert isinstance(first, MassReading)
    assert isinstance(second, MassReading)
    assert (first.mac, first.mass_kg, first.battery_pct, first.temperature_c) == (SHELF_A, 1.25, 100, 21.5)
    assert first.encrypted is True
    assert (first.packet_id, second.packet_id, second.mass_kg) == (1, 2, 0.5)
    health = monitor.health[SHELF_A]
    assert (health.parsed, health.duplicates, health.decrypt_failures) == (2, 4, 0)
    assert health.online is True
    assert health.rssi == -60


async def test_multi_cell_sensor_yields_one_reading_per_channel() -> None:
    air = SimAir()
    sensor = SimShelfSensor(air, SHELF_A, masses_kg=[1.0, 2.5, 0.0], repeats=1)
    async with BTHomeMonitor(air.source(), {SHELF_A: None}) as monitor:
        events = monitor.events()
        sensor.send()
        readings = [await next_event(events) for _ in range(3)]
    assert [(r.channel, r.mass_kg) for r in readings if isinstance(r, MassReading)] == [
        (0, 1.0),
        (1, 2.5),
        (2, 0.0),
    ]


async def test_wrong_key_is_counted_logged_once_and_recovers(monitor_logs: pytest.LogCaptureFixture) -> None:
    air = SimAir()
    sensor = SimShelfSensor(air, SHELF_A, key=KEY, masses_kg=[3.0], repeats=2)
    async with BTHomeMonitor(air.source(), {SHELF_A: BindKey(KEY)}) as monitor:
        events = monitor.events()
        sensor.wrong_key = OTHER_KEY
        for _ in range(5):
            sensor.send()
        await wait_until(lambda: monitor.health[SHELF_A].adverts == 10)
        health = monitor.health[SHELF_A]
        assert health.decrypt_failures == 10
        assert health.parsed == 0
        logged = warnings_from_monitor(monitor_logs)
        assert len(logged) == 1
        assert SHELF_A in logged[0]
        assert "decryption failed" in logged[0]
        sensor.wrong_key = None
        sensor.send()
        reading = await next_event(events)
    assert isinstance(reading, MassReading)
    assert reading.mass_kg == 3.0
    assert monitor.health[SHELF_A].last_error is not None


async def test_plaintext_from_a_keyed_sensor_is_rejected(monitor_logs: pytest.LogCaptureFixture) -> None:
    air = SimAir()
    impostor = SimShelfSensor(air, SHELF_A, key=KEY, masses_kg=[9.99], repeats=1)
    impostor.plaintext = True
    unkeyed = SimShelfSensor(air, SHELF_B, key=KEY, masses_kg=[1.0], repeats=1)
    async with BTHomeMonitor(air.source(), {SHELF_A: BindKey(KEY), SHELF_B: None}) as monitor:
        for _ in range(4):
            impostor.send()
            unkeyed.send()
        await wait_until(
            lambda: monitor.health[SHELF_A].adverts == 4 and monitor.health[SHELF_B].adverts == 4
        )
    a, b = monitor.health[SHELF_A], monitor.health[SHELF_B]
    assert (a.plaintext_rejected, a.parsed) == (4, 0)
    assert (b.key_missing, b.parsed) == (4, 0)
    logged = warnings_from_monitor(monitor_logs)
    assert len(logged) == 2
    assert any(SHELF_A in m and "plaintext" in m for m in logged)
    assert any(SHELF_B in m and "no key" in m for m in logged)


async def test_corrupted_encrypted_adverts_fail_the_mic_and_never_stall() -> None:
    air = SimAir()
    sensor = SimShelfSensor(air, SHELF_A, key=KEY, masses_kg=[2.0], repeats=1)
    async with BTHomeMonitor(air.source(), {SHELF_A: BindKey(KEY)}) as monitor:
        events = monitor.events()
        sensor.corrupt_next(3)
        for _ in range(3):
            sensor.send()
        sensor.send()
        reading = await next_event(events)
    health = monitor.health[SHELF_A]
    assert isinstance(reading, MassReading)
    assert reading.mass_kg == 2.0
    assert health.decrypt_failures + health.malformed == 3
    assert health.parsed == 1


async def test_unbound_and_non_bthome_adverts_only_tallied() -> None:
    air = SimAir()
    stranger = SimShelfSensor(air, SHELF_B, masses_kg=[5.0], repeats=1)
    mine = SimShelfSensor(air, SHELF_A, masses_kg=[1.0], repeats=1)
    async with BTHomeMonitor(air.source(), {SHELF_A: None}) as monitor:
        events = monitor.events()
        stranger.send()
        air.broadcast("11:22:33:44:55:66", {"0000feaa-0000-1000-8000-00805f9b34fb": b"\x10\x00"})
        mine.send()
        reading = await next_event(events)
    assert isinstance(reading, MassReading)
    assert reading.mac == SHELF_A
    assert monitor.unknown[SHELF_B].adverts == 1
    assert monitor.ignored == 1
    snapshot = json.loads(json.dumps(monitor.snapshot()))
    assert set(snapshot["sensors"]) == {SHELF_A}
    assert snapshot["sensors"][SHELF_A]["parsed"] == 1


async def test_availability_changes_once_each_way(monitor_logs: pytest.LogCaptureFixture) -> None:
    air = SimAir()
    sensor = SimShelfSensor(air, SHELF_A, masses_kg=[1.0], repeats=1)
    silent_after_s = 0.3
    async with BTHomeMonitor(
        air.source(), {SHELF_A: None, SHELF_B: None}, silent_after_s=silent_after_s
    ) as monitor:
        events = monitor.events()
        sensor.send()
        assert isinstance(await next_event(events), MassReading)
        offline = [await next_event(events), await next_event(events)]
        # Several silent periods pass; a sensor already offline must not be reported again.
        await asyncio.sleep(4 * silent_after_s)
        sensor.send()
        back = await next_event(events)
        after = await next_event(events)
    by_mac = {e.mac: e for e in offline}
    assert all(isinstance(e, SensorAvailability) and not e.online for e in offline)
    assert set(by_mac) == {SHELF_A, SHELF_B}
    assert "not heard since start" in by_mac[SHELF_B].reason  # type: ignore[union-attr]
    assert isinstance(back, SensorAvailability)
    assert (back.mac, back.online) == (SHELF_A, True)
    assert isinstance(after, MassReading)
    offline_logs = warnings_from_monitor(monitor_logs)
    assert len(offline_logs) == 2
    online_logs = warnings_from_monitor(monitor_logs, logging.INFO)
    assert len(online_logs) == 1
    assert SHELF_A in online_logs[0]
    assert monitor.health[SHELF_B].online is False


async def test_replayed_vectors_end_to_end() -> None:
    """Every recorded advert through the monitor: two bound MACs, one keyed; the stream ends with the replay."""
    air = SimAir()
    atc, shelly = "A4:C1:38:8D:18:B2", "54:48:E6:8F:80:A5"
    readings: list[MassReading] = []
    source = air.source()
    async with BTHomeMonitor(source, {atc: None, shelly: BindKey(KEY)}, silent_after_s=60) as monitor:
        sent = await air.replay(VECTORS)
        source.close()
        async with asyncio.timeout(HANG_GUARD_S):
            readings.extend([e async for e in monitor.events() if isinstance(e, MassReading)])
    assert sent == 84
    assert [(r.mac, round(r.mass_kg, 4)) for r in readings] == [
        (atc, 80.3),
        (atc, round(74.86 * LB_IN_KG, 4)),
    ]
    atc_health, shelly_health = monitor.health[atc], monitor.health[shelly]
    expected_atc = sum(1 for v in VECTORS if v.get("ble_address") == atc)
    assert atc_health.adverts == expected_atc
    assert atc_health.key_missing == 2  # encryption_key_needed, bindkey_wrong: no key configured for it
    assert atc_health.malformed == 2  # version 7 and version 0
    # Shelly: one good encrypted advert, two more with the same counter (repeats), one plaintext, one too short.
    assert (shelly_health.parsed, shelly_health.duplicates) == (1, 2)
    assert (shelly_health.plaintext_rejected, shelly_health.malformed) == (1, 1)
    assert "B4:35:22:F5:3D:A4" in monitor.unknown


async def test_bleak_source_scans_passively_over_the_fake_backend() -> None:
    air = SimAir()
    backend = air.bleak_backend()
    sensor = SimShelfSensor(air, SHELF_A, key=KEY, masses_kg=[4.2], repeats=2)
    source = BleakAdvertisementSource(ScannerSettings(adapter="hci1"), backend=backend)
    async with BTHomeMonitor(source, {SHELF_A: BindKey(KEY)}) as monitor:
        fake = FakeBleakScanner.instances[-1]
        assert source.scanning_mode == "passive"
        assert fake.scanning_mode == "passive"
        assert fake.bluez["adapter"] == "hci1"
        patterns = fake.bluez["or_patterns"]
        assert [(p.start_position, int(p.ad_data_type), p.content_of_pattern) for p in patterns] == [
            (0, 0x16, b"\xd2\xfc")
        ]
        events = monitor.events()
        sensor.send()
        reading = await next_event(events)
        await wait_until(lambda: monitor.health[SHELF_A].adverts == 2)
    assert isinstance(reading, MassReading)
    assert reading.mass_kg == 4.2
    assert source.received == 2
    assert monitor.health[SHELF_A].duplicates == 1
    assert air.listeners == 0  # the scanner was stopped


async def test_bleak_source_falls_back_to_active_once(monitor_logs: pytest.LogCaptureFixture) -> None:
    air = SimAir(passive_supported=False)
    source = BleakAdvertisementSource(backend=air.bleak_backend())
    async with source:
        assert source.scanning_mode == "active"
        assert air.listeners == 1
    logged = warnings_from_monitor(monitor_logs)
    assert len(logged) == 1
    assert "passive" in logged[0]


async def test_bleak_source_without_an_adapter_raises_our_error() -> None:
    air = SimAir(adapter_present=False)
    source = BleakAdvertisementSource(backend=air.bleak_backend())
    with pytest.raises(ScannerUnavailable, match="bluetoothd") as info:
        await source.__aenter__()
    assert isinstance(info.value, BleDriverError)
    assert air.listeners == 0


async def test_bleak_source_queue_drops_oldest_when_consumer_stalls(
    monitor_logs: pytest.LogCaptureFixture,
) -> None:
    air = SimAir()
    source = BleakAdvertisementSource(ScannerSettings(queue_size=4), backend=air.bleak_backend())
    sensor = SimShelfSensor(air, SHELF_A, repeats=1)
    async with source:
        for _ in range(10):
            sensor.send()
        got = []
        async with asyncio.timeout(HANG_GUARD_S):
            async for adv in source.advertisements():
                got.append(adv)
                if len(got) == 4:
                    break
    assert source.dropped == 6
    assert len(warnings_from_monitor(monitor_logs)) == 1
    # The newest adverts survive.
    ids = [
        decode_bthome(a.service_data["0000fcd2-0000-1000-8000-00805f9b34fb"].hex())["packet_id"] for a in got
    ]
    assert ids == [7, 8, 9, 10]


async def test_keys_never_appear_in_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Everything that touches a key, at DEBUG for every logger (bthome-ble's included)."""
    caplog.set_level(logging.DEBUG)
    # Explicitly: `shelfgate` commands run by other tests (setup_logging) leave bthome-ble's logger at CRITICAL.
    caplog.set_level(logging.DEBUG, logger=BTHOME_LOGGER)
    path = tmp_path / "ble-keys.yaml"
    path.write_text(f'"{SHELF_A}": "{KEY.hex()}"\n"{SHELF_B}": "{OTHER_KEY.hex()}"\n', encoding="utf-8")
    path.chmod(0o644)
    with pytest.raises(KeyFileError) as refused:
        load_keys(path)
    logging.getLogger("test").error("refused: %s", refused.value)
    path.chmod(0o600)
    keys = load_keys(path)
    logging.getLogger("test").info("keys loaded: %r", keys)
    air = SimAir()
    good = SimShelfSensor(air, SHELF_A, key=KEY, masses_kg=[1.0], repeats=2)
    bad = SimShelfSensor(air, SHELF_B, key=OTHER_KEY, masses_kg=[1.0], repeats=2)
    bad.wrong_key = KEY
    async with BTHomeMonitor(air.source(), keys) as monitor:
        events = monitor.events()
        bad.send()
        good.send()
        assert isinstance(await next_event(events), MassReading)
        await wait_until(lambda: monitor.health[SHELF_B].decrypt_failures == 2)
        logging.getLogger("test").info("health: %s", monitor.snapshot())
    with pytest.raises(ProtocolError) as wrong:
        decode_bthome(good.next_service_data().hex(), key_hex=OTHER_KEY.hex(), mac=SHELF_A)
    logging.getLogger("test").warning("decode: %s", wrong.value)
    text = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert "Decryption failed" in text  # bthome-ble's own DEBUG/WARNING lines were captured too
    for key in (KEY, OTHER_KEY):
        assert key.hex() not in text
        assert key.hex().upper() not in text
        assert repr(key) not in text


async def test_quiet_bthome_logging_silences_the_per_advert_library_warnings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    library = logging.getLogger(BTHOME_LOGGER)
    saved = library.level
    caplog.set_level(logging.DEBUG, logger=SCANNER_LOGGER)
    try:
        quiet_bthome_logging()
        air = SimAir()
        sensor = SimShelfSensor(air, SHELF_A, key=KEY, repeats=1)
        sensor.wrong_key = OTHER_KEY
        async with BTHomeMonitor(air.source(), {SHELF_A: BindKey(KEY)}) as monitor:
            for _ in range(3):
                sensor.send()
            await wait_until(lambda: monitor.health[SHELF_A].decrypt_failures == 3)
    finally:
        library.setLevel(saved)
    assert not [r for r in caplog.records if r.name.startswith(BTHOME_LOGGER)]
    assert len(warnings_from_monitor(caplog)) == 1
