"""ScannerClient against the simulated scanner over real pty pairs (and a vanishing USB-style port)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path

import pytest

from drivers.backoff import full_jitter_s
from drivers.barcode.client import ScannerClient
from drivers.barcode.models import ScannerSettings
from drivers.barcode.protocol import GS, MemberScan, ProductScan, Scan, ScanConfig, Terminator
from firmware_sims.barcode import BarcodeScannerSim, HotplugPort
from firmware_sims.serial_link import PtyNullModem

TIMEOUT_S = 15.0
"""Only a guard against hangs on a loaded machine; no test asserts on timing."""

CLIENT_LOGGER = "drivers.barcode.client"


async def until(pred: Callable[[], bool], timeout_s: float = TIMEOUT_S) -> None:
    """Wait for a condition polled from outside the client; the timeout only guards against hangs."""
    async with asyncio.timeout(timeout_s):
        while True:
            if pred():
                return
            await asyncio.sleep(0.01)


async def next_scan(client: ScannerClient) -> Scan:
    async with asyncio.timeout(TIMEOUT_S):
        return await client.get()


def client_for(path: str, *, config: ScanConfig | None = None, **settings: int) -> ScannerClient:
    return ScannerClient(
        ScannerSettings(path, **settings),
        "lane-1",
        config=config or ScanConfig(rcn_region="no"),
        backoff_base_s=0.02,
        backoff_cap_s=0.2,
        rng=random.Random(1),
    )


@pytest.fixture
async def usb(tmp_path: Path) -> AsyncIterator[tuple[HotplugPort, BarcodeScannerSim]]:
    async with HotplugPort(tmp_path) as port, BarcodeScannerSim(port) as scanner:
        yield port, scanner


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == CLIENT_LOGGER and r.levelno == level]


def test_full_jitter_stays_within_the_capped_exponential_ceiling() -> None:
    rng = random.Random(7)
    for attempt in range(12):
        ceiling = min(2.0, 0.1 * 2**attempt)
        delays = [full_jitter_s(attempt, 0.1, 2.0, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling / 2  # full jitter, not a fixed delay


async def test_product_and_member_scans_in_order(usb: tuple[HotplugPort, BarcodeScannerSim]) -> None:
    port, scanner = usb
    async with client_for(port.host_path) as client:
        await until(lambda: client.available)
        await scanner.scan("5901234123457", "]E0")
        await scanner.scan("0109501101020917" + "17261231" + "10LOT7" + GS + "21SN1", "]C1")
        await scanner.scan("2302148210869", "]E0")  # Norwegian in-store weight code: 1.086 kg
        await scanner.scan("MBR0123456789", "]C0")
        await scanner.scan("shelfgate://member/alice", "]Q1")
        got = [await next_scan(client) for _ in range(5)]
    assert got == [
        ProductScan(gtin="05901234123457", symbology="EAN-13", raw="]E05901234123457"),
        ProductScan(
            gtin="09501101020917",
            batch="LOT7",
            expiry=dt.date(2026, 12, 31),
            serial="SN1",
            symbology="GS1-128",
            raw=f"]C101095011010209171726123110LOT7{GS}21SN1",
        ),
        ProductScan(
            gtin="02302148210869",
            net_weight_kg=Decimal("1.086"),
            symbology="EAN-13",
            raw="]E02302148210869",
        ),
        MemberScan(member_id="MBR0123456789", raw="]C0MBR0123456789"),
        MemberScan(member_id="alice", raw="]Q1shelfgate://member/alice"),
    ]
    c = client.counters
    assert (c.lines, c.scans, c.members, sum(c.rejected.values())) == (5, 3, 2, 0)
    assert c.last_seen_mono is not None
    assert c.snapshot()["online"] is True


@pytest.mark.parametrize("terminator", [Terminator.LF, Terminator.CRLF])
async def test_no_aim_prefix_and_other_terminators(tmp_path: Path, terminator: Terminator) -> None:
    async with (
        HotplugPort(tmp_path) as port,
        BarcodeScannerSim(port, aim_prefix=False, terminator=terminator) as scanner,
        client_for(port.host_path) as client,
    ):
        await until(lambda: client.available)
        await scanner.scan("96385074", "]E4")
        await scanner.scan("(01)05901234123457(17)270100", None)
        first, second = await next_scan(client), await next_scan(client)
    assert first == ProductScan(gtin="00000096385074", symbology="EAN-8", raw="96385074")
    assert isinstance(second, ProductScan)
    assert (second.gtin, second.expiry) == ("05901234123457", dt.date(2027, 1, 31))
    assert sum(client.counters.rejected.values()) == 0


async def test_bad_check_digit_and_garbage_are_counted_logged_once_and_resynced(
    usb: tuple[HotplugPort, BarcodeScannerSim], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=CLIENT_LOGGER)
    port, scanner = usb
    async with client_for(port.host_path, max_line_bytes=64) as client:
        await until(lambda: client.available)
        await scanner.scan("5901234123458", "]E0")  # bad check digit
        await scanner.scan("5901234123459", "]E0")  # and another
        await scanner.garbage(20)  # noise as its own line
        await scanner.garbage(200, as_line=False)  # runaway noise with no terminator
        await scanner.send_raw(b"\r")
        await scanner.scan("5901234123457", "]E0")
        scan = await next_scan(client)
    assert isinstance(scan, ProductScan)
    assert scan.gtin == "05901234123457"
    rejected = client.counters.rejected
    assert rejected["bad_check_digit"] == 2
    assert rejected["not_text"] >= 1
    assert rejected["too_long"] == 1
    assert client.counters.scans == 1
    warnings = records(caplog, logging.WARNING)
    assert sum("bad_check_digit" in m for m in warnings) == 1  # logged once per reason, then DEBUG
    assert sum("too_long" in m for m in warnings) == 1


async def test_rejected_lines_reach_the_on_rejected_hook_with_their_text(
    usb: tuple[HotplugPort, BarcodeScannerSim],
) -> None:
    """A receiving dock books SSCC pallet labels from their text: the client hands every well-framed rejected
    line to `on_rejected`, and still counts it and yields only real scans."""
    port, scanner = usb
    heard: list[tuple[str, str]] = []
    client = ScannerClient(
        ScannerSettings(port.host_path),
        "dock-1",
        config=ScanConfig(rcn_region="no"),
        backoff_base_s=0.02,
        backoff_cap_s=0.2,
        rng=random.Random(1),
        on_rejected=lambda text, reason: heard.append((text, reason)),
    )
    async with client:
        await until(lambda: client.available)
        await scanner.scan("00106141411234567899", "]C1")  # SSCC (GS1 GenSpecs §2.2.1): not a product
        await scanner.scan("5901234123458", "]E0")  # bad check digit
        await scanner.scan("5901234123457", "]E0")
        scan = await next_scan(client)
    assert isinstance(scan, ProductScan)
    assert heard == [
        ("]C100106141411234567899", "not_a_product"),
        ("]E05901234123458", "bad_check_digit"),
    ]
    assert client.counters.rejected["not_a_product"] == 1


async def test_unplug_with_half_line_then_replug(
    usb: tuple[HotplugPort, BarcodeScannerSim], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=CLIENT_LOGGER)
    port, scanner = usb
    async with client_for(port.host_path) as client:
        await until(lambda: client.available)
        await scanner.scan("5901234123457")
        assert isinstance(await next_scan(client), ProductScan)
        await scanner.half_line("96385074", "]E4")
        await until(lambda: client.counters.lines == 1 and client.pending_bytes > 0)
        await scanner.unplug()
        await until(lambda: not client.available)
        await asyncio.sleep(0.3)  # several failed reopen attempts while the port is gone
        await scanner.replug()
        await until(lambda: client.available)
        await scanner.scan("96385074", "]E4")
        after = await next_scan(client)
    assert after == ProductScan(gtin="00000096385074", symbology="EAN-8", raw="]E496385074")
    c = client.counters
    assert c.rejected["partial"] == 1  # the half line is counted, never glued to the next scan
    assert (c.connects, c.disconnects, c.scans) == (2, 1, 2)
    warnings = records(caplog, logging.WARNING)
    assert len([m for m in warnings if "unavailable" in m]) == 1  # once per change, not per retry
    assert len([m for m in records(caplog, logging.INFO) if "available on" in m]) == 2


async def test_port_missing_at_start_connects_when_plugged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=CLIENT_LOGGER)
    port = HotplugPort(tmp_path)
    async with client_for(port.host_path) as client:
        await asyncio.sleep(0.2)
        assert not client.available
        async with port, BarcodeScannerSim(port) as scanner:
            await until(lambda: client.available)
            await scanner.scan("5901234123457")
            assert isinstance(await next_scan(client), ProductScan)
    unavailable = [m for m in records(caplog, logging.WARNING) if "unavailable" in m]
    assert len(unavailable) == 1
    assert "cannot open" in unavailable[0]


async def test_scanner_side_unplug_on_a_fixed_adapter_is_silence_not_an_outage() -> None:
    """An RS-232 scanner pulled from a USB-serial adapter that stays plugged: the tty stays, bytes stop."""
    async with PtyNullModem() as link, client_for(link.host_path) as client:
        async with BarcodeScannerSim(link.device_path) as scanner:
            await until(lambda: client.available)
            await scanner.unplug()
            assert not scanner.plugged
            await scanner.replug()
            await scanner.scan("5901234123457")
            assert isinstance(await next_scan(client), ProductScan)
        assert client.available
        assert client.counters.disconnects == 0


async def test_slow_consumer_drops_oldest_scans(
    usb: tuple[HotplugPort, BarcodeScannerSim], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=CLIENT_LOGGER)
    port, scanner = usb
    codes = ["5901234123457", "96385074", "0123601057072", "2302148210869"]
    async with client_for(port.host_path, queue_size=2) as client:
        await until(lambda: client.available)
        for code in codes:
            await scanner.scan(code, "]E4" if len(code) == 8 else "]E0")
        await until(lambda: client.counters.scans == 4)
        kept = [await next_scan(client), await next_scan(client)]
    assert [s.gtin for s in kept if isinstance(s, ProductScan)] == ["00123601057072", "02302148210869"]
    assert client.counters.dropped == 2
    assert len([m for m in records(caplog, logging.WARNING) if "dropping oldest" in m]) == 1


async def test_get_outside_the_context_is_an_error() -> None:
    client = client_for("/nonexistent/tty")
    with pytest.raises(RuntimeError, match="async with"):
        await client.get()
    with pytest.raises(ValueError, match="backoff"):
        ScannerClient(ScannerSettings("/dev/null"), "x", backoff_base_s=0)
