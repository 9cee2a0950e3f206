"""ScaleClient against the MT-SICS simulator over a real pty null modem; the NCI simulator over a pty too.

Everything real: `PtyNullModem` pty pairs, pyserial-asyncio-fast on both ends, the simulator speaking the
device side with the same codec. Faults come from the simulator (silence, garbage, power-cycle, late reply,
stuck in motion). No timed assertions: timeouts are generous and only stop hangs.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
import serial_asyncio_fast

from drivers.backoff import full_jitter_s
from drivers.scale.client import ScaleClient
from drivers.scale.models import (
    Availability,
    ScaleCommandError,
    ScaleNotStable,
    ScaleRangeError,
    ScaleSettings,
    ScaleTimeout,
    ScaleUnavailable,
)
from drivers.scale.protocol import (
    NEED_MORE,
    MtResponse,
    MtSicsDecoder,
    NciDecoder,
    NciReply,
    NciStatus,
    encode_mtsics_command,
    encode_nci_command,
)
from firmware_sims.scale import MtSicsScaleSim, NciScaleSim
from firmware_sims.serial_link import PtyNullModem

CLIENT_LOGGER = "drivers.scale.client"
SERIAL = "B123456789"


@dataclass
class Rig:
    link: PtyNullModem
    sim: MtSicsScaleSim
    client: ScaleClient
    events: list[Availability] = field(default_factory=list)


async def eventually(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait until `predicate()` holds (a hang guard, not a timing assertion)."""
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - polls state a transport callback sets; no event to await
            await asyncio.sleep(0.01)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    events: list[Availability] = []
    async with (
        PtyNullModem() as link,
        MtSicsScaleSim(link.device_path, serial_number=SERIAL, settle_s=0.15, stability_timeout_s=0.6) as sim,
    ):
        settings = ScaleSettings(
            link.host_path,
            request_timeout_s=0.5,
            command_timeout_s=3.0,
            stable_timeout_s=5.0,
            poll_interval_s=0.03,
            offline_after=3,
        )
        async with ScaleClient(settings, "scale-1", on_availability=events.append) as client:
            yield Rig(link, sim, client, events)


# --- weighing ------------------------------------------------------------------------------------------------


async def test_stable_weight_is_returned_after_motion(rig: Rig) -> None:
    rig.sim.put(250.0)
    weight = await rig.client.weigh_stable()
    assert (weight.value, weight.unit, weight.weight_g) == (250.0, "g", 250.0)
    assert weight.device_id == "scale-1"
    c = rig.client.counters
    assert c.dynamic_replies >= 1  # it polled through the settling time ...
    assert c.not_stable == 0  # ... and returned the stable value
    assert c.resets == 1  # the first command was preceded by @
    assert rig.sim.commands[0] == "@"
    assert rig.client.serial_number == SERIAL
    assert rig.client.online is True
    assert rig.events == []  # the first reply is no availability change


async def test_scale_stuck_in_motion_never_yields_a_weight(rig: Rig) -> None:
    rig.sim.put(120.0)
    rig.sim.stuck_in_motion = True
    with pytest.raises(ScaleNotStable, match="no stable weight"):
        await rig.client.weigh_stable(timeout_s=0.5)
    c = rig.client.counters
    assert c.not_stable == 1
    assert c.dynamic_replies >= 1
    assert c.timeouts == 0
    assert rig.client.online is True  # a moving scale is a present scale
    rig.sim.stuck_in_motion = False
    assert (await rig.client.weigh_stable()).value == 120.0


async def test_dynamic_weights_are_never_returned(rig: Rig) -> None:
    """Each weight change puts the scale in motion; every returned weight is the settled one."""
    for grams in (10.0, 510.5, 33.25, 0.0, 1999.99):
        rig.sim.put(grams)
        weight = await rig.client.weigh_stable()
        assert weight.value == grams
    assert rig.client.counters.dynamic_replies >= 5


async def test_overload_raises_range_error(rig: Rig) -> None:
    rig.sim.put(7000.0)
    with pytest.raises(ScaleRangeError) as info:
        await rig.client.weigh_stable()
    assert info.value.overload is True
    assert rig.client.counters.overloads == 1


async def test_identify_returns_the_serial_number(rig: Rig) -> None:
    assert await rig.client.identify() == SERIAL
    assert "I4" in rig.sim.commands


# --- zero and tare -------------------------------------------------------------------------------------------


async def test_zero_tare_and_clear_tare(rig: Rig) -> None:
    rig.sim.put(12.0)  # a little dirt on the pan
    await rig.client.zero()
    assert (await rig.client.weigh_stable()).value == 0.0
    rig.sim.put(62.0)  # a 50 g container
    tare = await rig.client.tare()
    assert tare.value == 50.0
    assert (await rig.client.weigh_stable()).value == 0.0
    rig.sim.put(162.0)
    assert (await rig.client.weigh_stable()).value == 100.0
    await rig.client.clear_tare()
    assert (await rig.client.weigh_stable()).value == 150.0


async def test_tare_while_stuck_in_motion_is_not_executable(rig: Rig) -> None:
    rig.sim.put(80.0)
    rig.sim.stuck_in_motion = True
    with pytest.raises(ScaleCommandError) as info:
        await rig.client.tare()
    assert info.value.kind == "not executable"
    assert rig.client.counters.not_executable == 1
    assert rig.sim.tare_g == 0.0


# --- garbage -------------------------------------------------------------------------------------------------


async def test_garbage_lines_are_counted_logged_once_and_skipped(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.sim.put(40.0)
    await rig.client.weigh_stable()
    caplog.set_level(logging.WARNING, logger=CLIENT_LOGGER)
    rig.sim.inject_garbage(b"\x00\x01junk\r\n" * 3)
    assert (await rig.client.weigh_stable()).value == 40.0
    assert rig.client.counters.garbage_lines == 3
    garbage_logs = [r for r in caplog.records if "garbage" in r.getMessage()]
    assert len(garbage_logs) == 1


async def test_glued_garbage_and_garbled_replies_resync(rig: Rig) -> None:
    rig.sim.put(75.5)
    await rig.client.weigh_stable()
    c = rig.client.counters
    # junk without a terminator glues onto the next reply: that reply is lost, the next poll succeeds
    rig.sim.inject_garbage(b"\xff\xfe")
    assert (await rig.client.weigh_stable()).value == 75.5
    assert c.garbage_lines == 1
    assert c.timeouts >= 1
    # the next two replies are pure noise
    rig.sim.garbage_replies = 2
    assert (await rig.client.weigh_stable()).value == 75.5
    assert c.garbage_lines == 3
    assert c.timeouts >= 3
    assert rig.client.online is True  # 2 misses in a row stay below offline_after=3


# --- availability, power-cycles, late replies ----------------------------------------------------------------


async def test_silence_goes_offline_once_then_online_once(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=CLIENT_LOGGER)
    rig.sim.put(300.0)
    await rig.client.weigh_stable()
    resets_before = rig.client.counters.resets
    rig.sim.silent = True
    for _ in range(3):
        with pytest.raises(ScaleTimeout) as info:
            await rig.client.weigh_stable(timeout_s=0.7)
        assert not isinstance(info.value, ScaleNotStable)  # silence is not "in motion"
    assert rig.client.online is False
    assert [e.online for e in rig.events] == [False]
    assert rig.client.counters.timeouts >= 6
    rig.sim.silent = False
    for _ in range(3):
        assert (await rig.client.weigh_stable()).value == 300.0
    assert [e.online for e in rig.events] == [False, True]
    offline_logs = [r for r in caplog.records if "offline" in r.getMessage()]
    online_logs = [r for r in caplog.records if "back online" in r.getMessage()]
    assert len(offline_logs) == 1
    assert offline_logs[0].levelno == logging.WARNING
    assert len(online_logs) == 1
    assert online_logs[0].levelno == logging.INFO
    # back from silence the client re-established a known state with @
    assert rig.client.counters.resets == resets_before + 1
    assert rig.client.counters.power_cycles == 1


async def test_power_cycle_announced_by_i4_is_recovered(rig: Rig) -> None:
    rig.sim.put(62.0)
    await rig.client.tare()
    rig.sim.put(162.0)
    assert (await rig.client.weigh_stable()).value == 100.0
    resets_before = rig.client.counters.resets
    sim_resets_before = rig.sim.resets
    await rig.sim.power_cycle(off_s=0.05)
    await eventually(lambda: rig.client.counters.power_cycles == 1)
    assert rig.client.tare_lost is True
    assert rig.client.counters.garbage_lines == 1  # the boot junk line
    # the tare is gone on the scale: the full load shows again, after a reset the client sent first
    first_new = len(rig.sim.commands)
    assert (await rig.client.weigh_stable()).value == 162.0
    assert rig.sim.commands[first_new] == "@"  # reset before anything else
    assert rig.client.counters.resets == resets_before + 1
    assert rig.sim.resets == sim_resets_before + 1
    await rig.client.tare()
    assert rig.client.tare_lost is False


async def test_silent_power_cycle_is_recovered_with_a_reset() -> None:
    events: list[Availability] = []
    async with (
        PtyNullModem() as link,
        MtSicsScaleSim(link.device_path, settle_s=0.05, announce_power_up=False) as sim,
    ):
        settings = ScaleSettings(link.host_path, request_timeout_s=0.2, poll_interval_s=0.02, offline_after=2)
        async with ScaleClient(settings, "scale-2", on_availability=events.append) as client:
            sim.put(55.0)
            await client.weigh_stable()
            sim.power_off()
            with pytest.raises(ScaleTimeout):
                await client.weigh_stable(timeout_s=0.5)
            sim.power_on()
            sim.put(55.0)
            assert (await client.weigh_stable()).value == 55.0
            assert [e.online for e in events] == [False, True]
            assert client.counters.power_cycles == 1
            assert client.counters.resets == 2  # at start and after the outage
            assert sim.commands.count("@") == 2


async def test_late_replies(rig: Rig) -> None:
    rig.sim.put(90.0)
    await rig.client.weigh_stable()
    rig.sim.late_reply_s = 0.1  # late, but within the request timeout
    assert await rig.client.identify() == SERIAL
    rig.sim.late_reply_s = 1.0  # later than the request timeout
    timeouts_before = rig.client.counters.timeouts
    with pytest.raises(ScaleTimeout):
        await rig.client.identify()
    assert rig.client.counters.timeouts == timeouts_before + 1
    assert rig.client.counters.power_cycles == 0  # a late I4 reply is not a power-up announcement
    await eventually(lambda: rig.client.unread_lines > 0)  # the late reply arrives after all
    rig.sim.late_reply_s = 0.0
    assert await rig.client.identify() == SERIAL
    assert rig.client.counters.stale_lines >= 1  # and was discarded, not taken for the next reply


async def test_missing_port_is_unavailable_with_backoff() -> None:
    settings = ScaleSettings("/dev/shelfgate-no-such-scale", request_timeout_s=0.2)
    rng = random.Random(1)
    async with ScaleClient(settings, "scale-x", backoff_base_s=30.0, backoff_cap_s=60.0, rng=rng) as client:
        assert client.counters.open_failures == 1  # tried at start, did not fail the start
        for _ in range(3):  # within the backoff delay no new open is attempted
            with pytest.raises(ScaleUnavailable, match="cannot open"):
                await client.weigh_stable(timeout_s=0.2)
        assert client.counters.open_failures == 1
        assert client.counters.requests == 0
        assert client.online is None


def test_full_jitter_stays_within_the_cap() -> None:
    rng = random.Random(7)
    delays = [full_jitter_s(attempt, 0.5, 4.0, rng) for attempt in range(50)]
    assert all(0.0 <= d <= 4.0 for d in delays)
    assert max(delays) > 2.0  # the cap is reachable, the ceiling grows


# --- simulator protocol features without the client -----------------------------------------------------------


async def _raw_port(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await serial_asyncio_fast.open_serial_connection(url=path, baudrate=9600)


async def test_mtsics_sim_streams_with_sir_until_reset() -> None:
    async with (
        PtyNullModem() as link,
        MtSicsScaleSim(link.device_path, settle_s=0.0, stream_interval_s=0.02) as sim,
    ):
        sim.put(5.0)
        reader, writer = await _raw_port(link.host_path)
        try:
            dec = MtSicsDecoder()
            writer.write(encode_mtsics_command("SIR"))
            seen: list[MtResponse] = []
            async with asyncio.timeout(10):
                while len(seen) < 5:
                    dec.feed(await reader.read(256))
                    while (item := dec.next_response()) is not NEED_MORE:
                        assert isinstance(item, MtResponse)
                        seen.append(item)
            assert all(r.cmd == "S" and r.value == 5.0 for r in seen)
            writer.write(encode_mtsics_command("@"))
            async with asyncio.timeout(10):
                while True:
                    dec.feed(await reader.read(256))
                    found = False
                    while (item := dec.next_response()) is not NEED_MORE:
                        assert isinstance(item, MtResponse)
                        found = found or item.cmd == "I4"
                    if found:
                        break
            sent = sim.replies_sent
            await asyncio.sleep(0.1)
            assert sim.replies_sent == sent  # the stream stopped
        finally:
            writer.close()
            await asyncio.sleep(0.05)


async def test_nci_sim_weight_status_zero_and_bad_command() -> None:
    async with PtyNullModem() as link, NciScaleSim(link.device_path, settle_s=0.1, width=6) as sim:
        reader, writer = await _raw_port(link.host_path)
        dec = NciDecoder()

        async def ask(cmd: str) -> NciReply:
            writer.write(encode_nci_command(cmd) if cmd.isupper() else cmd.encode() + b"\r")
            async with asyncio.timeout(10):
                while True:
                    item = dec.next_reply()
                    if item is not NEED_MORE:
                        assert isinstance(item, NciReply)
                        return item
                    dec.feed(await reader.read(64))

        try:
            sim.put(566.9904625)  # 1.25 lb
            moving = await ask("W")
            assert moving.status is not None
            assert moving.status.motion is True
            await eventually(sim.is_stable)
            settled = await ask("W")
            assert (settled.weight, settled.unit, settled.status) == (1.25, "lb", NciStatus())
            assert (await ask("S")).status == NciStatus()
            zeroed = await ask("Z")
            assert zeroed.status == NciStatus(at_zero=True)
            assert (await ask("W")).weight == 0.0
            assert (await ask("x")).error == "bad command"
            sim.put(20_000.0)
            await eventually(sim.is_stable)
            over = await ask("W")
            assert over.weight is None
            assert over.status == NciStatus(over_capacity=True)
        finally:
            writer.close()
            await asyncio.sleep(0.05)
