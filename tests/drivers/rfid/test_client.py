"""UhfReaderClient against the simulated M100 module over a real pty null modem, including its faults.

Nothing is mocked: the simulator (`firmware_sims.rfid.UhfModuleSim`) opens the device end of a
`PtyNullModem` with pyserial, the client opens the host end, and line faults come from the relay. Waits poll
a condition with a generous deadline (no timing assertions).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from drivers.rfid.client import UhfReaderClient
from drivers.rfid.epc import RawEpc, Sgtin96, encode_sgtin96
from drivers.rfid.models import Availability, ReaderUnavailable, TagRead
from firmware_sims.rfid import SimTag, UhfModuleSim
from firmware_sims.serial_link import PtyNullModem

CLIENT_LOGGER = "drivers.rfid.client"
DEADLINE_S = 30.0
SILENCE_S = 0.4

TAGS = [encode_sgtin96(1, "0614141", "812345", n) for n in range(1, 4)]
MALFORMED_SGTIN = "303C83F1B7DD441678901234"  # header 0x30, partition 7 (epctagcoder negative vector)
NON_GS1 = "F45349FB11DF49FA935AB6FF"


async def wait_until(cond: Callable[[], bool], what: str) -> None:
    """Poll `cond` until true; fail (not hang) after a generous deadline."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + DEADLINE_S
    while not cond():
        if loop.time() > give_up:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class Collector:
    """Drains a client's events in a named task, as a gateway coordinator would."""

    def __init__(self, client: UhfReaderClient) -> None:
        self.reads: list[TagRead] = []
        self.availability: list[Availability] = []
        self._task = asyncio.create_task(self._run(client), name="test.collector")

    async def _run(self, client: UhfReaderClient) -> None:
        async for event in client.events():
            if isinstance(event, TagRead):
                self.reads.append(event)
            else:
                self.availability.append(event)

    def epcs(self) -> set[str]:
        return {r.epc for r in self.reads}

    def done(self) -> bool:
        return self._task.done()

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.wait([self._task])


def client_for(link: PtyNullModem) -> UhfReaderClient:
    return UhfReaderClient(
        link.host_path, "rfid-1", silence_s=SILENCE_S, backoff_base_s=0.05, backoff_cap_s=0.5
    )


async def test_reads_flow_with_decoded_identities() -> None:
    async with (
        PtyNullModem() as link,
        UhfModuleSim(link.device_path, tags=[*TAGS, SimTag(NON_GS1, rssi_dbm=-70)]) as sim,
        client_for(link) as client,
    ):
        got = Collector(client)
        await wait_until(lambda: got.epcs() >= {*TAGS, NON_GS1}, "reads of every tag")
        await got.stop()
        assert sim.commands_seen[0] == 0x27  # multi-poll started on connect
        by_epc = {r.epc: r for r in got.reads}
        tagged = by_epc[TAGS[0]]
        assert isinstance(tagged.identity, Sgtin96)
        assert tagged.identity.gtin == "80614141123458"
        assert tagged.identity.serial == 1
        assert -58 <= tagged.rssi_dbm <= -52
        assert tagged.reader_id == "rfid-1"
        assert tagged.malformed is None
        assert by_epc[NON_GS1].identity == RawEpc(NON_GS1)
        assert got.availability[0].online is True
        assert client.available is True
        c = client.counters
        assert c.tag_reads >= len(got.reads)  # reads may have arrived after the collector stopped
        assert c.frames >= c.tag_reads
        assert c.checksum_errors == c.crc_errors == c.malformed_epc == 0
        assert c.last_seen_mono is not None
        snapshot = c.snapshot()
        assert snapshot["online"] is True
        json.dumps(snapshot)


async def test_stop_and_restart_inventory() -> None:
    async with (
        PtyNullModem() as link,
        UhfModuleSim(link.device_path, tags=TAGS) as sim,
        client_for(link) as client,
    ):
        got = Collector(client)
        await wait_until(lambda: len(got.reads) > 10, "reads")
        await client.stop_inventory()
        await wait_until(lambda: not sim.inventory_running, "the module to stop")
        await asyncio.sleep(
            SILENCE_S * 3
        )  # long enough for probes: they must not restart a stopped inventory
        assert not sim.inventory_running
        assert client.available is True  # probes are answered, the module is alive
        stopped_at = sim.notices_sent
        await client.start_inventory()
        await wait_until(lambda: sim.notices_sent > stopped_at + 10, "reads after the restart")
        await wait_until(lambda: len(got.reads) >= stopped_at + 10, "the client to see them")
        await got.stop()
        assert sim.commands_seen[-1] == 0x27


async def test_module_faults_are_counted_logged_once_and_reads_continue(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=CLIENT_LOGGER)
    async with (
        PtyNullModem() as link,
        UhfModuleSim(link.device_path, tags=[*TAGS, MALFORMED_SGTIN], seed=3) as sim,
        client_for(link) as client,
    ):
        got = Collector(client)
        await wait_until(lambda: len(got.reads) > 5, "first reads")
        c = client.counters
        # One fault at a time, so each lands on a frame of its own and its counter is exact.
        sim.bad_checksum_next(3)
        await wait_until(lambda: c.checksum_errors >= 3, "checksum errors counted")
        sim.bad_crc_next(3)
        await wait_until(lambda: c.crc_errors >= 3, "tag CRC errors counted")
        sim.garbage_next(40)
        await wait_until(lambda: c.garbage_bytes >= 1, "garbage counted")
        damaged = c.frame_errors + c.checksum_errors + c.truncated_frames
        sim.half_frame_next()
        await wait_until(
            lambda: c.frame_errors + c.checksum_errors + c.truncated_frames > damaged, "half frame"
        )
        await wait_until(lambda: c.malformed_epc >= 2, "malformed EPC counted")
        before = len(got.reads)
        await wait_until(lambda: len(got.reads) > before + 20, "reads after the faults")
        await got.stop()
    # The malformed SGTIN is still a tag in the field: yielded raw, flagged, counted.
    bad = [r for r in got.reads if r.epc == MALFORMED_SGTIN]
    assert bad
    assert all(r.malformed is not None and "partition" in r.malformed for r in bad)
    assert all(isinstance(r.identity, RawEpc) for r in bad)
    assert {r.epc for r in got.reads} >= set(TAGS)
    messages = [r.getMessage() for r in caplog.records if r.name == CLIENT_LOGGER]
    assert sum("checksum" in m for m in messages) == 1
    assert sum("tag CRC" in m for m in messages) == 1
    assert sum(MALFORMED_SGTIN in m for m in messages) == 1
    assert client.counters.tag_reads >= len(got.reads)


async def test_line_bit_flips_never_stop_the_stream() -> None:
    async with (
        PtyNullModem(seed=5) as link,
        UhfModuleSim(link.device_path, tags=TAGS) as sim,
        client_for(link) as client,
    ):
        got = Collector(client)
        await wait_until(lambda: len(got.reads) > 5, "first reads")
        link.corrupt_next(30)
        await wait_until(lambda: link.corrupted_chunks >= 30, "corruption injected")
        c = client.counters
        await wait_until(
            lambda: c.checksum_errors + c.frame_errors + c.crc_errors + c.garbage_bytes > 0, "errors counted"
        )
        before = len(got.reads)
        await wait_until(lambda: len(got.reads) > before + 20, "clean reads after the corruption")
        await got.stop()
        assert sim.inventory_running
    # Whatever the bit flips did, every EPC delivered is one that is really in the field (checksum + CRC).
    assert got.epcs() <= set(TAGS)


async def test_silent_module_goes_offline_once_and_returns_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=CLIENT_LOGGER)
    async with (
        PtyNullModem() as link,
        UhfModuleSim(link.device_path, tags=TAGS) as sim,
        client_for(link) as client,
    ):
        got = Collector(client)
        await wait_until(lambda: client.available is True, "online")
        sim.silent = True
        await wait_until(lambda: client.available is False, "offline")
        probes = client.counters.probes
        await wait_until(lambda: client.counters.probes >= probes + 3, "several unanswered probes")
        sim.silent = False
        await wait_until(lambda: client.available is True, "back online")
        before = len(got.reads)
        await wait_until(lambda: len(got.reads) > before + 10, "reads after the return")
        await got.stop()
    assert [a.online for a in got.availability] == [True, False, True]
    records = [r for r in caplog.records if r.name == CLIENT_LOGGER and "offline" in r.getMessage()]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    assert sum("online" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO) == 2


async def test_power_cycle_is_recovered_by_a_probe() -> None:
    async with (
        PtyNullModem() as link,
        UhfModuleSim(link.device_path, tags=TAGS) as sim,
        client_for(link) as client,
    ):
        got = Collector(client)
        await wait_until(lambda: len(got.reads) > 5, "first reads")
        sim.power_cycle()
        assert not sim.inventory_running
        await wait_until(lambda: sim.inventory_running, "the client to restart the inventory")
        before = len(got.reads)
        await wait_until(lambda: len(got.reads) > before + 10, "reads after the power cycle")
        await got.stop()
        assert client.counters.probes >= 1
        assert sim.commands_seen[-2:] == [0x28, 0x27]  # probe (stop), answered, then restart
        assert [a.online for a in got.availability] == [True]  # answered probe: never offline


async def test_empty_field_is_not_an_outage() -> None:
    async with (
        PtyNullModem() as link,
        UhfModuleSim(link.device_path, tags=[]) as sim,
        client_for(link) as client,
    ):
        await wait_until(lambda: client.counters.probes >= 3, "probes during silence")
        assert client.available is True
        assert sim.commands_seen.count(0x27) >= 3
        assert client.counters.tag_reads == 0


async def test_late_replies_on_a_slow_line_still_decode() -> None:
    async with (
        PtyNullModem() as link,
        UhfModuleSim(link.device_path, tags=TAGS) as sim,
        client_for(link) as client,
    ):
        link.delay_s = 0.05
        got = Collector(client)
        await wait_until(lambda: got.epcs() == set(TAGS), "reads through the delayed line")
        await got.stop()
        assert sim.inventory_running
        assert client.counters.checksum_errors == 0


async def test_missing_port_is_offline_and_commands_fail_fast(tmp_path: Path) -> None:
    path = str(tmp_path / "ttyUSB9")
    async with UhfReaderClient(path, "rfid-x", backoff_base_s=0.05, backoff_cap_s=0.2) as client:
        await wait_until(lambda: client.counters.connect_failures >= 2, "retries")
        assert client.available is False
        assert not client.connected
        assert "does not exist" in (client.counters.last_error or "")
        with pytest.raises(ReaderUnavailable, match="rfid-x"):
            await client.start_inventory()


async def test_port_appearing_later_connects(tmp_path: Path) -> None:
    """The device path is a symlink (like a udev name) that appears after the client started."""
    async with PtyNullModem() as link, UhfModuleSim(link.device_path, tags=TAGS):
        alias = str(tmp_path / "rfid-shelf")
        client = UhfReaderClient(
            alias, "rfid-late", silence_s=SILENCE_S, backoff_base_s=0.05, backoff_cap_s=0.2
        )
        async with client:  # the symlink goes away with tmp_path
            await wait_until(lambda: client.counters.connect_failures >= 1, "a failed open")
            assert client.available is False
            os.symlink(link.host_path, alias)
            await wait_until(lambda: client.counters.tag_reads > 5, "reads after the port appeared")
            assert client.available is True


async def test_slow_consumer_drops_reads_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=CLIENT_LOGGER)
    async with (
        PtyNullModem() as link,
        UhfModuleSim(link.device_path, tags=TAGS, read_probability=1.0),
        UhfReaderClient(link.host_path, "rfid-1", silence_s=SILENCE_S, queue_size=8) as client,
    ):
        await wait_until(lambda: client.counters.dropped_reads > 50, "overflow")
        first = [item async for item in _take(client, 8)]
    assert isinstance(first[0], Availability)  # the online change went in first and was kept
    assert sum("dropping reads" in r.getMessage() for r in caplog.records) == 1


async def _take(client: UhfReaderClient, n: int) -> AsyncIterator[TagRead | Availability]:
    count = 0
    async for item in client.events():
        yield item
        count += 1
        if count >= n:
            return


async def test_close_ends_event_iterators() -> None:
    async with PtyNullModem() as link, UhfModuleSim(link.device_path, tags=TAGS):
        client = client_for(link)
        async with client:
            got = Collector(client)
            await wait_until(lambda: len(got.reads) > 3, "reads")
        await wait_until(got.done, "the iterator to end")
        assert not client.connected
