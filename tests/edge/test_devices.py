"""Device coordinators on their own: supervision, scan records, tag views, health in the wire contract, the BLE
coordinator's key and adapter handling, and both scale protocols — over the simulators' real transports.

The engine behind the coordinators is the `WeightSink` seam; `RecordingSink` is a real implementation of it
that keeps what it was given (the gateway's own implementation is exercised in tests/integration).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from cloud_bridge.contract import DeviceHealth, Heartbeat
from drivers.barcode.protocol import decode_scan
from drivers.modbus.protocol import ChannelReading
from drivers.rfid.epc import encode_sgtin96
from edge.config import Ble, BleSensor, Scale, Scanner
from edge.devices.base import DeviceHealthView, supervise
from edge.devices.ble import BleCoordinator
from edge.devices.rfid import tag_view
from edge.devices.scales import ScaleCoordinator
from edge.devices.scanners import ScanLog, scan_record
from firmware_sims.ble import SimAir, SimShelfSensor
from firmware_sims.scale import MtSicsScaleSim, NciScaleSim
from firmware_sims.serial_link import PtyNullModem
from shelfgate.demo import write_keys_file

HANG_GUARD_S = 20.0
KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
PLAIN_MAC = "A4:C1:38:00:00:0A"
KEYED_MAC = "A4:C1:38:00:00:0B"


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll until true; fail (not hang) after a generous deadline. Never measures speed."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + HANG_GUARD_S
    while not condition():
        if loop.time() > give_up:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class RecordingSink:
    """A `WeightSink` that keeps every call, in order."""

    def __init__(self) -> None:
        self.readings: list[tuple[str, int, float]] = []
        self.availability_changes: list[tuple[str, bool, str]] = []

    async def weigh(self, device_id: str, ts: float, mono: float, readings: Sequence[ChannelReading]) -> None:
        self.readings.extend((device_id, r.channel, r.value) for r in readings)

    async def availability(self, device_id: str, online: bool, reason: str, ts: float) -> None:
        self.availability_changes.append((device_id, online, reason))


# --- supervision -------------------------------------------------------------------------------------------


async def test_supervise_restarts_a_crashing_device_and_logs_the_traceback_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs = 0
    crashes: list[str] = []
    settled = asyncio.Event()

    async def body() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            raise KeyError(f"bug {runs}")
        settled.set()
        await asyncio.Event().wait()

    caplog.set_level(logging.ERROR, logger="edge.devices.base")
    task = asyncio.create_task(
        supervise("scale s1", body, backoff_base_s=0.01, backoff_cap_s=0.02, on_crash=crashes.append)
    )
    async with asyncio.timeout(HANG_GUARD_S):
        await settled.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert runs == 4
    assert crashes == [
        "crashed: KeyError: 'bug 1'",
        "crashed: KeyError: 'bug 2'",
        "crashed: KeyError: 'bug 3'",
    ]
    records = [r for r in caplog.records if r.name == "edge.devices.base"]
    assert len(records) == 3
    assert [r.exc_info is not None for r in records] == [True, False, False], "traceback once per kind"


# --- scans and tags ----------------------------------------------------------------------------------------


def test_scan_records_classify_and_keep_no_member_raw_text() -> None:
    lane = Scanner(id="lane1", port="/dev/null", role="lane", lane="L1")
    gs1 = scan_record(decode_scan("]d2010690123456789210LOT42\x1d17271231"), lane, 0.0)
    assert gs1 == {
        "ts": "1970-01-01T00:00:00.000Z",
        "device": "lane1",
        "role": "lane",
        "lane": "L1",
        "kind": "product",
        "gtin": "06901234567892",
        "batch": "LOT42",
        "expiry": "2027-12-31",
        "symbology": "GS1 DataMatrix",
        "raw": "]d2010690123456789210LOT42\x1d17271231",
    }
    member = scan_record(decode_scan("]Q1shelfgate://member/m-7"), lane, 0.0)
    assert member["kind"] == "member"
    assert member["member_id"] == "m-7"
    assert "raw" not in member


def test_scan_log_is_bounded_newest_first_and_filters_by_device() -> None:
    log = ScanLog(maxlen=3)
    for i in range(5):
        log.add({"device": "a" if i % 2 else "b", "n": i})
    assert [r["n"] for r in log.recent()] == [4, 3, 2]
    assert [r["n"] for r in log.recent("a")] == [3]
    assert [r["n"] for r in log.recent(limit=1)] == [4]


def test_tag_view_keeps_the_filter_and_passes_other_epcs_raw() -> None:
    epc = encode_sgtin96(3, "6901234", "056789", 42)
    assert tag_view(epc) == {
        "epc": epc,
        "scheme": "sgtin-96",
        "gtin": "06901234567892",
        "serial": "42",
        "filter": 3,
        "company_prefix": "6901234",
        "item_reference": "056789",
        "tag_uri": "urn:epc:tag:sgtin-96:3.6901234.056789.42",
    }
    assert tag_view("E2801160600002084F0A1B2C") == {"epc": "E2801160600002084F0A1B2C", "scheme": "raw"}
    broken = tag_view("30" + "F" * 22)  # SGTIN-96 header, partition 7: not a valid SGTIN
    assert broken["scheme"] == "sgtin-96"
    assert "partition" in broken["malformed"]


# --- health on the wire ------------------------------------------------------------------------------------


def test_health_view_fills_the_optional_contract_fields_and_old_heartbeats_still_parse() -> None:
    view = DeviceHealthView(
        device_id="ble1",
        family="ble",
        online=True,
        connected=True,
        last_seen_age_s=0.4,
        messages=120,
        errors_by_kind={"decrypt_failures": 2, "malformed": 1},
        battery_pct=87,
        temperature_c=21.5,
    )
    wire = view.to_contract()
    assert (wire.polls, wire.errors, wire.family, wire.battery_pct) == (120, 3, "ble", 87)
    assert wire.errors_by_kind == {"decrypt_failures": 2, "malformed": 1}
    assert view.as_dict()["errors"] == 3
    # A heartbeat from a gateway that predates the family fields still validates (the new ones are null).
    old = {
        "schema": "shelfgate.health/1",
        "gateway_id": "g",
        "boot_id": "b",
        "ts": "2026-11-23T10:00:30.000Z",
        "uptime_s": 1.0,
        "cpu_pct": 0.0,
        "mem_rss_mb": 1.0,
        "disk_free_mb": 1.0,
        "temperature_c": None,
        "outbox_depth": 0,
        "outbox_oldest_age_s": None,
        "last_seq": 0,
        "devices": [{"device_id": "tx1", "online": True, "last_seen_age_s": 0.1, "polls": 5, "errors": 0}],
        "active_alerts": 0,
    }
    (device,) = Heartbeat.model_validate(old).devices
    assert device == DeviceHealth(device_id="tx1", online=True, last_seen_age_s=0.1, polls=5, errors=0)
    assert device.family is None


# --- BLE ---------------------------------------------------------------------------------------------------


def _sensors() -> list[BleSensor]:
    return [
        BleSensor(id="plain", mac=PLAIN_MAC),
        BleSensor(id="keyed", mac=KEYED_MAC, keyed=True),
    ]


async def _run_until(coordinator: BleCoordinator, condition: Callable[[], bool], what: str) -> None:
    task = asyncio.create_task(coordinator.run(), name="test.ble")
    try:
        await wait_until(condition, what)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_ble_masses_reach_the_sink_in_grams_and_a_keyed_sensor_decrypts(tmp_path: Path) -> None:
    air = SimAir()
    keys = write_keys_file(tmp_path / "keys.yaml", {KEYED_MAC: KEY})
    sink = RecordingSink()
    published: list[dict[str, Any]] = []
    coordinator = BleCoordinator(
        Ble(keys_file=keys), _sensors(), sink, published.append, backend=air.bleak_backend()
    )
    plain = SimShelfSensor(air, PLAIN_MAC, masses_kg=[1.25], battery_pct=81, repeats=2)
    keyed = SimShelfSensor(air, KEYED_MAC, key=KEY, masses_kg=[2.5], temperature_c=4.5, repeats=2)

    def both_heard() -> bool:
        if air.listeners:
            plain.send()
            keyed.send()
        return {d for d, _, _ in sink.readings} == {"plain", "keyed"}

    await _run_until(coordinator, both_heard, "readings from both sensors")
    assert ("plain", 0, 1250.0) in sink.readings
    assert ("keyed", 0, 2500.0) in sink.readings
    health = {v.device_id: v for v in coordinator.health(0.0)}
    assert health["plain"].battery_pct == 81
    assert health["keyed"].temperature_c == 4.5
    assert health["keyed"].errors_by_kind["decrypt_failures"] == 0
    assert sink.availability_changes == []


async def test_a_keyed_sensor_without_its_key_is_not_monitored_and_others_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    air = SimAir()
    keys = tmp_path / "keys.yaml"
    keys.write_text(f'"{KEYED_MAC}": "{KEY.hex()}"\n', encoding="utf-8")
    os.chmod(keys, 0o644)  # readable by others: the driver refuses the file
    sink = RecordingSink()
    coordinator = BleCoordinator(
        Ble(keys_file=keys), _sensors(), sink, lambda _: None, backend=air.bleak_backend()
    )
    plain = SimShelfSensor(air, PLAIN_MAC, masses_kg=[0.7], repeats=1)
    forged = SimShelfSensor(air, KEYED_MAC, masses_kg=[9.9], repeats=1)  # plaintext "from" the keyed sensor
    caplog.set_level(logging.INFO)

    def plain_heard() -> bool:
        if air.listeners:
            plain.send()
            forged.send()
        return any(d == "plain" for d, _, _ in sink.readings)

    await _run_until(coordinator, plain_heard, "the unkeyed sensor's reading")
    assert all(d == "plain" for d, _, _ in sink.readings), "nothing accepted from the keyed sensor"
    (change,) = sink.availability_changes
    assert change[:2] == ("keyed", False)
    assert "mode 0644" in change[2]
    assert KEY.hex() not in caplog.text
    health = {v.device_id: v for v in coordinator.health(0.0)}
    assert health["keyed"].online is False
    assert health["keyed"].errors_by_kind["key_unavailable"] == 1
    assert health["plain"].online is True


async def test_no_adapter_is_one_warning_then_scanning_resumes(caplog: pytest.LogCaptureFixture) -> None:
    air = SimAir(adapter_present=False)
    sink = RecordingSink()
    sensors = [BleSensor(id="plain", mac=PLAIN_MAC)]
    coordinator = BleCoordinator(
        Ble(),
        sensors,
        sink,
        lambda _: None,
        backend=air.bleak_backend(),
        backoff_base_s=0.01,
        backoff_cap_s=0.05,
    )
    plain = SimShelfSensor(air, PLAIN_MAC, masses_kg=[0.3], repeats=1)
    caplog.set_level(logging.INFO, logger="edge.devices.ble")
    task = asyncio.create_task(coordinator.run(), name="test.ble")
    try:
        await wait_until(lambda: coordinator.scanner_failures >= 5, "repeated failed scan starts")
        assert sink.availability_changes == [
            ("plain", False, "BLE scan stopped: " + str(coordinator.scanner_error))
        ]
        air.adapter_present = True

        def heard() -> bool:
            if air.listeners:
                plain.send()
            return bool(sink.readings)

        await wait_until(heard, "scanning again once the adapter is back")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert sink.availability_changes[-1][:2] == ("plain", True)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "bluetoothd" in warnings[0]


# --- scales ------------------------------------------------------------------------------------------------


async def test_both_scale_protocols_report_their_stable_weight() -> None:
    published: list[dict[str, Any]] = []
    async with (
        PtyNullModem() as mt_link,
        PtyNullModem() as nci_link,
        MtSicsScaleSim(mt_link.device_path, serial_number="MT0001") as mt,
        NciScaleSim(nci_link.device_path, unit="kg", decimals=3) as nci,
    ):
        mt.put(250.0)
        nci.put(1234.0)
        coordinator = ScaleCoordinator(
            [
                Scale(id="mt", port=mt_link.host_path, poll_interval_s=0.1, request_timeout_s=0.5),
                Scale(id="nci", port=nci_link.host_path, protocol="nci", poll_interval_s=0.1),
            ],
            published.append,
        )
        task = asyncio.create_task(coordinator.run(), name="test.scales")
        try:

            def weights() -> dict[str, Any]:
                return {v["device_id"]: v["weight"] and v["weight"]["weight_g"] for v in coordinator.views()}

            await wait_until(lambda: weights() == {"mt": 250.0, "nci": 1234.0}, "both stable weights")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    health = {v.device_id: v for v in coordinator.health(0.0)}
    assert health["mt"].serial == "MT0001"
    assert health["nci"].serial is None
    assert {p["scale"]["device_id"] for p in published if p["type"] == "scale"} == {"mt", "nci"}
