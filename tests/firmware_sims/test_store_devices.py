"""`SimStore` serves every device family: each simulator read by the gateway's own driver client, over the same
transport the gateway uses (pty null modems; the fake bleak backend for BLE)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

import pytest

from drivers.barcode.client import ScannerClient
from drivers.barcode.models import ScannerSettings
from drivers.barcode.protocol import MemberScan, ProductScan
from drivers.ble.keys import BindKey
from drivers.ble.scanner import BleakAdvertisementSource, BTHomeMonitor, MassReading
from drivers.rfid.client import UhfReaderClient
from drivers.scale.client import ScaleClient
from drivers.scale.models import ScaleSettings
from firmware_sims.layout import (
    ShelfPhysics,
    SimBleSensor,
    SimLayout,
    SimRfidReader,
    SimScale,
    SimScanner,
    sgtin_tags,
)
from firmware_sims.runner import SimStore
from firmware_sims.scenario import DeviceAction
from firmware_sims.testing import small_layout

HANG_GUARD_S = 20.0
KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
MAC = "A4:C1:38:00:00:2B"
TAGS = sgtin_tags("06901234567892", range(3))


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll until true; fail (not hang) after a generous deadline. Never measures speed."""
    give_up = asyncio.get_running_loop().time() + HANG_GUARD_S
    while not condition():
        if asyncio.get_running_loop().time() > give_up:
            pytest.fail("timed out waiting for the scanner's port")
        await asyncio.sleep(0.02)


def device_layout() -> SimLayout:
    base = small_layout(noise_g=0.0, physics=ShelfPhysics(creep_g_per_h=0.0))
    ble_bin = dataclasses.replace(
        base.bins[0], bin_id="E1", device_id="ble1", channel=0, zero=0.0, span_g_per_unit=1.0, initial_count=4
    )
    return dataclasses.replace(
        base,
        bins=(*base.bins, ble_bin),
        scales=(SimScale("scale1", serial_number="SIM0001", lane="L1"),),
        scanners=(SimScanner("lane1", "lane", "L1"),),
        rfid_readers=(SimRfidReader("rfid1", "shelf-a", "shelf", TAGS),),
        ble_sensors=(SimBleSensor("ble1", MAC, keyed=True),),
    )


async def test_every_device_answers_its_driver() -> None:
    layout = device_layout()
    with pytest.raises(ValueError, match="keyed"):
        SimStore(layout)
    async with SimStore(layout, run_scenario=False, ble_keys={MAC: KEY}) as sim:
        assert set(sim.device_endpoints) == {"scale1", "lane1", "rfid1", "ble1"}
        assert sim.device_endpoints["ble1"] == f"ble://{MAC}"
        async with asyncio.timeout(HANG_GUARD_S):
            # Scale: a load performed by the scenario's action type, weighed stable by the MT-SICS client.
            await sim.perform(DeviceAction(0.0, "scale1", "load", grams=420.5))
            async with ScaleClient(ScaleSettings(sim.device_endpoints["scale1"]), "scale1") as scale:
                weight = await scale.weigh_stable()
                assert (weight.value, weight.unit) == (420.5, "g")
                assert scale.serial_number == "SIM0001"

            # Scanner: a product and a member code, classified by the client.
            settings = ScannerSettings(sim.device_endpoints["lane1"])
            async with ScannerClient(settings, "lane1") as scanner:
                await wait_until(lambda: scanner.available)
                await sim.perform(DeviceAction(0.0, "lane1", "scan", "6901234567892", "]E0"))
                await sim.perform(DeviceAction(0.0, "lane1", "scan", "MBR0000000042", "]C0"))
                product, member = await scanner.get(), await scanner.get()
            assert isinstance(product, ProductScan)
            assert product.gtin == "06901234567892"
            assert isinstance(member, MemberScan)

            # RFID: the tags in the module's field are read; one taken out is no longer.
            await sim.perform(DeviceAction(0.0, "rfid1", "tag_out", epc=TAGS[0]))
            async with UhfReaderClient(sim.device_endpoints["rfid1"], "rfid1") as reader:
                seen: set[str] = set()
                async for read in reader.reads():
                    seen.add(read.epc)
                    if len(seen) == 2 and sim.rfid["rfid1"].rounds_done > 20:
                        break
            assert seen == set(TAGS[1:])

            # BLE: the keyed sensor broadcasts its bin's plate load (grams → kg), heard through fake bleak.
            source = BleakAdvertisementSource(backend=sim.ble_backend())
            async with BTHomeMonitor(source, {MAC: BindKey(KEY)}) as monitor:
                events = monitor.events()
                sim.advertise()
                event = await anext(events)
        assert isinstance(event, MassReading)
        expected_kg = sim.shelves["E1"].gross_g(sim.now()) / 1000.0
        assert event.mass_kg == pytest.approx(expected_kg, abs=0.01)  # BTHome mass resolution: 10 g
        assert event.encrypted is True
