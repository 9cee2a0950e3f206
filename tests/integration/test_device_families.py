"""Every device family through the real gateway, each over its simulator on a real transport.

Modbus TCP (pymodbus server), an MT-SICS scale, barcode scanners and two UHF RFID modules each on a pty null
modem, two BTHome shelf sensors (one AES-CCM keyed, its key in a 0600 secrets file) on the simulated air the
gateway hears through a fake bleak backend — the driver's seam, injected only here and in the demo. A scale and
a scanner whose ports do not exist at start are plugged in later (a `HotplugPort` symlink appearing).

Waits are generous hang guards, never timing claims.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud_bridge.contract import EventType, Heartbeat
from edge.config import load_config
from edge.gateway import Gateway
from firmware_sims.barcode import BarcodeScannerSim, HotplugPort
from firmware_sims.runner import SimStore
from firmware_sims.scale import MtSicsScaleSim
from shelfgate.demo import layout_from_config, point_config_at, write_keys_file

pytestmark = pytest.mark.timeout(240)

KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
MAC_PLAIN = "A4:C1:38:00:00:01"
MAC_KEYED = "A4:C1:38:00:00:02"
LATE_SCALE = "usb-late-scale"
LATE_SCANNER = "usb-late-scanner"

STORE_YAML = """\
store_id: fam-001
data_dir: data
buses:
  - {{id: tcp1, kind: tcp, host: 127.0.0.1, port: 1}}
transmitters:
  - {{id: tx1, bus: tcp1, unit_id: 1, profile: wt-int32-abcd, poll_interval_s: 0.1}}
scales:
  - {{id: scale1, port: /dev/shelfgate-test-scale1, lane: lane1, poll_interval_s: 0.2, request_timeout_s: 0.5}}
  - {{id: scale-late, port: {late_scale}, poll_interval_s: 0.2, request_timeout_s: 0.5}}
scanners:
  - {{id: lane1, port: /dev/shelfgate-test-lane1, role: lane, lane: lane1}}
  - {{id: handheld1, port: /dev/shelfgate-test-handheld1, role: handheld}}
  - {{id: scanner-late, port: {late_scanner}, role: receiving}}
rfid_readers:
  - id: rfid-shelf
    port: /dev/shelfgate-test-rfid-shelf
    silence_s: 1.0
    antennas: [{{antenna: 1, zone: shelf-a, kind: shelf}}]
  - id: rfid-exit
    port: /dev/shelfgate-test-rfid-exit
    silence_s: 1.0
    antennas: [{{zone: exit-1, kind: exit}}]
rfid_presence: {{min_reads: 3, enter_window_s: 2.0, max_window_s: 4.0}}
ble: {{keys_file: ble-keys.yaml, silent_after_s: 20}}
ble_sensors:
  - {{id: ble1, mac: "{mac_plain}", settle_window_s: 1.0}}
  - {{id: ble2, mac: "{mac_keyed}", keyed: true, settle_window_s: 1.0}}
alerts: {{dwell_s: 0.5, hysteresis_items: 1, silent_after_s: 5}}
api: {{host: 127.0.0.1, port: 0}}
bins:
  - {{id: T1, sku: "06901234567892", name: {{zh: 可乐, en: Cola}}, unit_weight_g: 350, unit_weight_spread_g: 3,
     calibration: {{zero: 1000, span_g_per_unit: 0.1}}, safety_stock: 3, max_stock: 12, device: tx1, channel: 0}}
  - {{id: B1, sku: "06902083886417", name: {{zh: 水, en: Water}}, unit_weight_g: 570, unit_weight_spread_g: 4,
     safety_stock: 3, max_stock: 10, device: ble1, channel: 0}}
  - {{id: B2, sku: "06901939621608", name: {{zh: 王老吉, en: Wong Lo Kat}}, unit_weight_g: 345,
     unit_weight_spread_g: 3, safety_stock: 3, max_stock: 10, device: ble2, channel: 0}}
"""
INITIAL = {"T1": 8, "B1": 6, "B2": 5}
FAMILIES = {
    "tx1": "modbus",
    "scale1": "scale",
    "scale-late": "scale",
    "lane1": "scanner",
    "handheld1": "scanner",
    "scanner-late": "scanner",
    "rfid-shelf": "rfid",
    "rfid-exit": "rfid",
    "ble1": "ble",
    "ble2": "ble",
}
LATE = {"scale-late", "scanner-late"}


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    """Poll until `check()` is true; fail naming `what` after `timeout_s` (a hang guard)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for: {what}")
        await asyncio.sleep(0.2)


@dataclasses.dataclass
class Running:
    sim: SimStore
    gateway: Gateway
    http: httpx.AsyncClient

    async def get(self, path: str) -> Any:
        r = await self.http.get(path)
        r.raise_for_status()
        return r.json()

    async def devices(self) -> dict[str, dict[str, Any]]:
        return {d["device_id"]: d for d in await self.get("/api/devices")}

    async def counts(self) -> dict[str, int | None]:
        return {b["bin_id"]: b["count"] for b in await self.get("/api/stock")}

    async def zones(self) -> dict[str, dict[str, Any]]:
        return {z["zone"]: z for z in await self.get("/api/rfid/zones")}


@asynccontextmanager
async def running_store(tmp_path: Path) -> AsyncIterator[Running]:
    cfg_file = tmp_path / "store.yaml"
    cfg_file.write_text(
        STORE_YAML.format(
            late_scale=tmp_path / LATE_SCALE,
            late_scanner=tmp_path / LATE_SCANNER,
            mac_plain=MAC_PLAIN,
            mac_keyed=MAC_KEYED,
        ),
        encoding="utf-8",
    )
    keys_file = write_keys_file(tmp_path / "ble-keys.yaml", {MAC_KEYED: KEY})
    assert keys_file.stat().st_mode & 0o777 == 0o600
    base = load_config(cfg_file)
    assert base.store.ble.keys_file == keys_file.resolve()
    layout = layout_from_config(base, seed=11, initial_counts=INITIAL)
    # The late devices are not there at start: the sim serves every other one.
    layout = dataclasses.replace(
        layout,
        scales=tuple(s for s in layout.scales if s.device_id not in LATE),
        scanners=tuple(s for s in layout.scanners if s.device_id not in LATE),
    )
    async with SimStore(layout, run_scenario=False, ble_keys={MAC_KEYED: KEY}, ble_interval_s=0.2) as sim:
        cfg = point_config_at(
            base,
            dict(sim.endpoints),
            broker=("127.0.0.1", 1),
            api_port=0,
            data_dir=tmp_path / "gw",
            device_ports=sim.device_endpoints,
        )
        ready = asyncio.Event()
        gateway = Gateway(cfg, on_ready=lambda _g: ready.set(), ble_backend=sim.ble_backend())
        task = asyncio.create_task(gateway.run(uplink=False), name="families.gateway")
        try:
            await asyncio.wait_for(ready.wait(), 30)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.api_port}", timeout=5) as http:
                yield Running(sim, gateway, http)
        finally:
            task.cancel()
            results = await asyncio.gather(task, return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                    raise r


def warnings_about(caplog: pytest.LogCaptureFixture, device_id: str) -> list[str]:
    """WARNING (or worse) lines naming the device (as a whole word: `scale-late`, not `usb-late-scale`)."""
    named = re.compile(rf"(?<![\w-]){re.escape(device_id)}(?![\w-])")
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and named.search(r.getMessage())
    ]


async def test_every_family_through_the_gateway(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with AsyncExitStack() as late_devices, running_store(tmp_path) as s:
        # --- every present device healthy, with its family's fields ------------------------------------------
        async def all_present_online() -> bool:
            devices = await s.devices()
            return all(devices[d]["online"] for d in FAMILIES if d not in LATE)

        await eventually(all_present_online, 60, "every simulated device online")
        devices = await s.devices()
        assert {d: v["family"] for d, v in devices.items()} == FAMILIES
        for device_id, view in devices.items():
            assert {"connected", "last_seen_age_s", "errors_by_kind", "firmware", "serial"} <= view.keys()
            if device_id not in LATE:
                assert view["connected"] is True, device_id
        assert devices["tx1"]["bus"] == "tcp1"
        assert devices["lane1"]["role"] == "lane"
        assert devices["lane1"]["lane"] == "lane1"
        assert devices["rfid-exit"]["zone_kind"] == "exit"
        for late in LATE:
            assert devices[late]["online"] is False
            assert devices[late]["connected"] is False

        async def ble_health_known() -> bool:
            d = await s.devices()
            return all(d[b]["battery_pct"] == 100 and d[b]["temperature_c"] == 21.5 for b in ("ble1", "ble2"))

        await eventually(ble_health_known, 30, "BLE battery and temperature in the health view")
        devices = await s.devices()
        assert devices["ble2"]["keyed"] is True
        assert devices["ble2"]["errors_by_kind"]["decrypt_failures"] == 0

        # The heartbeat carries the same, in the contract's optional fields.
        heartbeat = Heartbeat.model_validate_json((await s.gateway.heartbeat()).to_json())
        by_id = {d.device_id: d for d in heartbeat.devices}
        assert {d: h.family for d, h in by_id.items()} == FAMILIES
        assert by_id["ble1"].battery_pct == 100
        assert by_id["rfid-shelf"].errors_by_kind is not None
        assert "crc_errors" in by_id["rfid-shelf"].errors_by_kind

        # --- scanners: classified scans visible in /api/scans -------------------------------------------------
        lane = s.sim.scanners["lane1"]
        await lane.scan("MBR0000001001", "]C0")
        await lane.scan("6901234567892", "]E0")
        await lane.scan("0106902083886417" + "10LOT42\x1d17271231", "]d2")
        await s.sim.scanners["handheld1"].scan("6901939621608", "]E0")

        async def scans_seen() -> bool:
            return len(await s.get("/api/scans?device=lane1")) >= 3

        await eventually(scans_seen, 20, "three lane scans in /api/scans")
        gs1, product, member = await s.get("/api/scans?device=lane1&limit=3")
        assert member["kind"] == "member"
        assert member["member_id"] == "MBR0000001001"
        assert "raw" not in member, "a member scan's raw text is not kept"
        assert product["kind"] == "product"
        assert product["gtin"] == "06901234567892"
        assert product["lane"] == "lane1"
        assert gs1["gtin"] == "06902083886417"
        assert gs1["batch"] == "LOT42"
        assert gs1["expiry"] == "2027-12-31"

        async def handheld_scan_seen() -> bool:
            return [x["gtin"] for x in await s.get("/api/scans?device=handheld1")] == ["06901939621608"]

        await eventually(handheld_scan_seen, 20, "the handheld scan")
        assert len(await s.get("/api/scans?limit=2")) == 2
        assert (await s.http.get("/api/scans?device=nope")).status_code == 404

        # Garbage on a scanner line is counted, not fatal: the next scan still arrives.
        await lane.garbage(24)
        await lane.scan("6920202888883", "]E0")

        async def garbage_counted_and_next_scan_seen() -> bool:
            d = (await s.devices())["lane1"]
            latest = (await s.get("/api/scans?device=lane1&limit=1"))[0]
            return bool(
                d["errors_by_kind"]["not_text"] >= 1
                and d["online"]
                and latest.get("gtin") == "06920202888883"
            )

        await eventually(garbage_counted_and_next_scan_seen, 20, "garbage counted, next scan delivered")

        # --- scale: the last stable weight ----------------------------------------------------------------------
        s.sim.scales["scale1"].put(523.4)

        async def stable_weight_shown() -> bool:
            (scale,) = [x for x in await s.get("/api/scales") if x["device_id"] == "scale1"]
            w = scale["weight"]
            return w is not None and w["value"] == pytest.approx(523.4) and w["unit"] == "g"

        await eventually(stable_weight_shown, 20, "scale1's stable 523.4 g in /api/scales")
        assert (await s.devices())["scale1"]["serial"] == "SG00000001"

        # --- RFID: tags on the shelf, one carried into the exit zone ------------------------------------------
        shelf_tags = s.sim.layout.rfid_readers[0].tags
        assert len(shelf_tags) == 9

        async def shelf_stocked() -> bool:
            return bool((await s.zones())["shelf-a"]["total"] == len(shelf_tags))

        await eventually(shelf_stocked, 30, "every shelf tag present in shelf-a")
        zones = await s.zones()
        assert sum(zones["shelf-a"]["counts"].values()) == 9
        tag = zones["shelf-a"]["tags"][0]
        assert {"gtin", "serial", "filter", "company_prefix", "item_reference"} <= tag.keys()
        assert tag["filter"] == 1
        epc, gtin = tag["epc"], tag["gtin"]
        s.sim.rfid["rfid-shelf"].remove(epc)
        s.sim.rfid["rfid-exit"].add(epc)

        async def tag_at_exit() -> bool:
            z = await s.zones()
            return [t["epc"] for t in z["exit-1"]["tags"]] == [epc] and epc not in {
                t["epc"] for t in z["shelf-a"]["tags"]
            }

        await eventually(tag_at_exit, 30, f"tag {epc} moved from shelf-a to exit-1")
        zones = await s.zones()
        assert zones["exit-1"]["counts"] == {gtin: 1}
        assert zones["shelf-a"]["counts"][gtin] == 2

        # --- BLE: a keyed sensor's bin counts the pick exactly and raises `low` into the outbox ------------------
        async def initial_counts() -> bool:
            return await s.counts() == INITIAL

        await eventually(initial_counts, 60, f"initial counts {INITIAL}")
        s.sim.pick("B2", 3)  # 5 → 2, below safety stock 3

        async def picked_and_low() -> bool:
            alerts = await s.get("/api/alerts?active=true")
            return (await s.counts())["B2"] == 2 and any(
                a["bin_id"] == "B2" and a["kind"] == "low" for a in alerts
            )

        await eventually(picked_and_low, 30, "B2 counted 2 and a low alert raised")
        outbox = await s.gateway.store.peek(10_000)
        b2_stock = [
            r.data for r in outbox if r.event_type == EventType.STOCK_CHANGED and r.data["bin_id"] == "B2"
        ]
        assert [d["cause"] for d in b2_stock] == ["initial", "pick"]
        assert b2_stock[1]["delta"] == -3
        assert b2_stock[1]["count"] == 2
        assert any(
            r.event_type == EventType.ALERT_RAISED and r.data["bin_id"] == "B2" and r.data["kind"] == "low"
            for r in outbox
        ), "the low alert waits in the outbox"
        assert (await s.counts())["B1"] == INITIAL["B1"]

        # --- late devices: reported offline once, online when their simulators appear ------------------------
        for late in LATE:
            assert len(warnings_about(caplog, late)) == 1, (late, warnings_about(caplog, late))
        scale_port = HotplugPort(tmp_path, LATE_SCALE)
        scanner_port = HotplugPort(tmp_path, LATE_SCANNER)
        # Plugged into the outer stack: they stay until the gateway has stopped (unplugging them is the
        # scanner test's business, not this one's).
        await late_devices.enter_async_context(scale_port)
        await late_devices.enter_async_context(scanner_port)
        late_scale = await late_devices.enter_async_context(
            MtSicsScaleSim(scale_port.device_path, serial_number="LATE000001")
        )
        late_scanner = await late_devices.enter_async_context(BarcodeScannerSim(scanner_port))
        late_scale.put(100.0)

        async def late_online() -> bool:
            d = await s.devices()
            return bool(d["scale-late"]["online"] and d["scanner-late"]["online"])

        await eventually(late_online, 60, "late scale and scanner online once plugged in")
        await late_scanner.scan("6901234567892", "]E0")

        async def late_scan_seen() -> bool:
            return len(await s.get("/api/scans?device=scanner-late")) == 1

        await eventually(late_scan_seen, 20, "a scan from the late scanner")
        assert (await s.devices())["scale-late"]["serial"] == "LATE000001"
        for late in LATE:
            assert len(warnings_about(caplog, late)) == 1, (late, warnings_about(caplog, late))
