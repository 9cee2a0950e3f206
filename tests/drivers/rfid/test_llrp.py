"""LlrpReaderClient (sllurp's state machine on an asyncio TCP stream) against the LLRP reader simulator.

Real TCP on 127.0.0.1, the simulator written independently of sllurp from the LLRP 1.0.1 spec. Skipped when
the optional `llrp` extra (sllurp, GPLv3) is not installed; `test_llrp_optional.py` covers that install.
No timed assertions: every wait is a hang guard on a condition.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from stdnum import ean

pytest.importorskip("sllurp")

from drivers.rfid.epc import Sgtin96, encode_sgtin96
from drivers.rfid.llrp import LlrpReaderClient, LlrpTagRead
from drivers.rfid.models import Availability, TagRead
from drivers.rfid.presence import PresencePolicy, PresenceTracker
from firmware_sims.llrp import LlrpReaderSim, LlrpSimTag

CLIENT_LOGGER = "drivers.rfid.llrp"
SHELF_EPC = encode_sgtin96(1, "0614141", "812345", 6789)
ASSET_EPC = "E2801160600002054C00A1B2"  # not GS1: passes through raw
FAR_EPC = encode_sgtin96(1, "0614141", "812345", 1)


class Collector:
    """Consumes `client.events()` in a named task the test owns."""

    def __init__(self, client: LlrpReaderClient) -> None:
        self.client = client
        self.reads: list[LlrpTagRead] = []
        self.availability: list[bool] = []
        self._task = asyncio.create_task(self._consume(), name="test.llrp_collector")

    async def _consume(self) -> None:
        async for event in self.client.events():
            if isinstance(event, Availability):
                self.availability.append(event.online)
            else:
                assert isinstance(event, LlrpTagRead)
                self.reads.append(event)

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.wait([self._task])


async def eventually(predicate: Callable[[], bool], timeout_s: float = 15.0) -> None:
    """Wait until `predicate()` holds (a hang guard, not a timing assertion)."""
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - polls state the client's loop sets; no event to await
            await asyncio.sleep(0.01)


def _tags() -> list[LlrpSimTag]:
    return [
        LlrpSimTag(SHELF_EPC, antenna=1, rssi_dbm=-48, read_probability=1.0),
        LlrpSimTag(ASSET_EPC, antenna=2, rssi_dbm=-61, read_probability=1.0),
        LlrpSimTag(FAR_EPC, antenna=3, read_probability=1.0),  # an antenna this client does not use
    ]


@asynccontextmanager
async def rig(
    sim: LlrpReaderSim, reader_id: str = "dock-1", **overrides: float
) -> AsyncIterator[tuple[LlrpReaderClient, Collector]]:
    client = LlrpReaderClient(
        sim.host,
        reader_id,
        port=sim.port,
        antennas=[1, 2],
        keepalive_s=overrides.get("keepalive_s", 0.2),
        setup_timeout_s=overrides.get("setup_timeout_s", 5.0),
        backoff_base_s=0.05,
        backoff_cap_s=overrides.get("backoff_cap_s", 0.3),
        rng=random.Random(3),
    )
    async with client:
        collector = Collector(client)
        try:
            yield client, collector
        finally:
            await collector.stop()


@pytest.fixture
async def sim() -> AsyncIterator[LlrpReaderSim]:
    async with LlrpReaderSim(antennas=4, tags=_tags(), round_s=0.03, rssi_jitter_db=2) as reader:
        yield reader


# --- reads ---------------------------------------------------------------------------------------------------


async def test_reported_tags_come_out_with_epc_antenna_rssi_and_sgtin(sim: LlrpReaderSim) -> None:
    async with rig(sim) as (client, got):
        await eventually(lambda: {r.epc for r in got.reads} >= {SHELF_EPC, ASSET_EPC})
        assert got.availability == [True]
        shelf = next(r for r in got.reads if r.epc == SHELF_EPC)
        asset = next(r for r in got.reads if r.epc == ASSET_EPC)
        assert isinstance(shelf, TagRead)  # the serial client's model, so presence and GTINs work unchanged
        assert (shelf.antenna, asset.antenna) == (1, 2)
        assert -50 <= shelf.rssi_dbm <= -46
        assert -63 <= asset.rssi_dbm <= -59
        assert shelf.pc == 0x3000  # PC bits reported: 6 EPC words
        assert shelf.first_seen_utc_us is not None
        assert shelf.reader_id == "dock-1"
        assert isinstance(shelf.identity, Sgtin96)
        assert (shelf.identity.company_prefix, shelf.identity.item_reference) == ("0614141", "812345")
        assert (shelf.identity.serial, shelf.identity.filter) == (6789, 1)
        body = "8" + "0614141" + "12345"  # indicator digit, company prefix, rest of the item reference
        assert shelf.identity.gtin == body + ean.calc_check_digit(body)
        assert asset.identity.__class__.__name__ == "RawEpc"
        assert all(r.epc != FAR_EPC for r in got.reads)  # antenna 3 is not in our ROSpec
        c = client.counters
        assert c.tag_reads == len(got.reads)
        assert c.errors == {}
        assert c.connects == 1
        assert c.reconnects == 0
        assert client.inventorying is True


async def test_reads_feed_the_presence_windows_unchanged(sim: LlrpReaderSim) -> None:
    tracker = PresenceTracker(PresencePolicy(min_reads=3, enter_window_s=2.0))
    async with rig(sim) as (_client, got):
        await eventually(lambda: sum(r.epc == SHELF_EPC for r in got.reads) >= 3)
        events = [e for r in list(got.reads) for e in tracker.feed(r.epc, f"antenna-{r.antenna}", r.mono)]
    enter = next(e for e in events if e.epc == SHELF_EPC)
    assert (enter.kind, enter.zone) == ("enter", "antenna-1")
    assert enter.gtin is not None
    assert tracker.zone_counts("antenna-1") == {enter.gtin: 1}


async def test_keepalives_are_answered(sim: LlrpReaderSim) -> None:
    async with rig(sim) as (client, _got):
        await eventually(lambda: sim.keepalive_acks >= 2)
        assert client.counters.keepalives >= 2


async def test_close_is_polite_and_ends_the_iterators(sim: LlrpReaderSim) -> None:
    client = LlrpReaderClient(sim.host, "dock-1", port=sim.port, keepalive_s=0.2)
    async with client:
        await eventually(lambda: client.inventorying)
        events = client.events()
    assert sim.messages_seen[-3:] == ["DELETE_ACCESSSPEC", "DELETE_ROSPEC", "CLOSE_CONNECTION"]
    async with asyncio.timeout(10):
        assert [e async for e in events if isinstance(e, Availability) and not e.online] == []
    await eventually(lambda: not sim.client_connected)


# --- bad input -----------------------------------------------------------------------------------------------


async def test_a_malformed_report_is_counted_not_fatal(
    sim: LlrpReaderSim, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=CLIENT_LOGGER)
    async with rig(sim) as (client, got):
        await eventually(lambda: len(got.reads) > 0)
        sim.malformed_report_next(2)  # a TagReportData whose EPC is torn (sllurp itself accepts it)
        await eventually(lambda: client.counters.errors.get("malformed_report") == 2)
        seen = len(got.reads)
        await eventually(lambda: len(got.reads) > seen + 2)  # still reading
        assert all(len(r.epc) == 24 for r in got.reads)  # the torn EPC never came out
        assert client.counters.connects == 1
        assert got.availability == [True]
    assert len([r for r in caplog.records if "tag report skipped" in r.getMessage()]) == 1  # logged once


async def test_an_undecodable_message_is_skipped_without_losing_the_stream(sim: LlrpReaderSim) -> None:
    async with rig(sim) as (client, got):
        await eventually(lambda: len(got.reads) > 0)
        sim.undecodable_report_next()
        await eventually(lambda: client.counters.errors.get("decode") == 1)
        seen = len(got.reads)
        await eventually(lambda: len(got.reads) > seen)
        assert client.counters.connects == 1
        assert got.availability == [True]


async def test_garbage_on_the_stream_forces_one_clean_reconnect(sim: LlrpReaderSim) -> None:
    async with rig(sim) as (client, got):
        await eventually(lambda: len(got.reads) > 0)
        sim.inject(b"\xff" * 16)  # LLRP has no sync marker: the framing is lost for good
        await eventually(lambda: client.counters.errors.get("framing") == 1)
        await eventually(lambda: got.availability == [True, False, True])
        assert client.counters.reconnects == 1
        seen = len(got.reads)
        await eventually(lambda: len(got.reads) > seen)


# --- availability --------------------------------------------------------------------------------------------


async def test_killed_reader_is_offline_once_and_reconnected_when_back(
    sim: LlrpReaderSim, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=CLIENT_LOGGER)
    async with rig(sim) as (client, got):
        await eventually(lambda: client.inventorying)
        await sim.stop()
        await eventually(lambda: client.available is False)
        await eventually(lambda: client.counters.connect_failures >= 3)  # retrying with backoff meanwhile
        assert got.availability == [True, False]  # one offline, however many retries failed
        await sim.start()  # same port
        await eventually(lambda: client.available is True)
        assert got.availability == [True, False, True]
        assert client.counters.reconnects == 1
        seen = len(got.reads)
        await eventually(lambda: len(got.reads) > seen)
    offline = [r for r in caplog.records if "offline" in r.getMessage()]
    online = [r for r in caplog.records if " online:" in r.getMessage()]
    assert [r.levelno for r in offline] == [logging.WARNING]
    assert [r.levelno for r in online] == [logging.INFO, logging.INFO]  # first start, and back


async def test_a_hung_reader_is_detected_by_missing_keepalives(sim: LlrpReaderSim) -> None:
    async with rig(sim, keepalive_s=0.1, setup_timeout_s=0.5) as (client, got):
        await eventually(lambda: client.inventorying)
        sim.silent = True
        await eventually(lambda: client.counters.errors.get("silence") == 1)
        await eventually(lambda: client.available is False)
        sim.silent = False
        await eventually(lambda: client.available is True)
        assert got.availability == [True, False, True]


async def test_a_second_client_is_refused_and_the_first_keeps_reading(sim: LlrpReaderSim) -> None:
    async with rig(sim, reader_id="first") as (first, first_got):
        await eventually(lambda: first.inventorying)
        async with rig(sim, reader_id="second", backoff_cap_s=0.2) as (second, second_got):
            await eventually(lambda: second.counters.errors.get("refused", 0) >= 2)
            assert second.available is False
            assert second_got.reads == []
        seen = len(first_got.reads)
        await eventually(lambda: len(first_got.reads) > seen)
        assert first_got.availability == [True]


async def test_an_unreachable_reader_is_reported_offline_once() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once the probe is closed
    client = LlrpReaderClient("127.0.0.1", "dock-x", port=port, backoff_base_s=0.02, backoff_cap_s=0.05)
    async with client:
        got = Collector(client)
        await eventually(lambda: client.counters.connect_failures >= 4)
        assert got.availability == [False]
        assert client.counters.errors["connect"] == client.counters.connect_failures
        await got.stop()


async def test_antennas_the_reader_lacks_are_a_configuration_error(sim: LlrpReaderSim) -> None:
    client = LlrpReaderClient(
        sim.host,
        "dock-y",
        port=sim.port,
        antennas=[5],
        keepalive_s=0.2,
        backoff_base_s=0.02,
        backoff_cap_s=0.1,
    )
    async with client:
        await eventually(lambda: client.counters.errors.get("setup", 0) >= 2)  # retried, at the backoff cap
        assert client.available is False
        assert "antenna" in (client.counters.last_error or "").lower()
        assert client.counters.tag_reads == 0


def test_constructor_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="antenna"):
        LlrpReaderClient("127.0.0.1", "x", antennas=[0])
    with pytest.raises(ValueError, match="silence_s"):
        LlrpReaderClient("127.0.0.1", "x", keepalive_s=5.0, silence_s=2.0)
