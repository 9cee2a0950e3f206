"""NciScaleClient against the NCI simulator over a real pty null modem.

Everything real: `PtyNullModem` pty pairs, pyserial-asyncio-fast on both ends, the simulator speaking the
device side with the same codec (`drivers.scale.protocol`). Faults come from the simulator: silence, garbage,
power-cycle, late reply, stuck in motion, over/under capacity. No timed assertions: timeouts are generous and
only stop hangs.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from drivers.scale import NciScaleClient, ScaleClient
from drivers.scale.models import (
    Availability,
    ScaleCommandError,
    ScaleNotStable,
    ScaleRangeError,
    ScaleSettings,
    ScaleTimeout,
    ScaleUnavailable,
)
from drivers.scale.protocol import ETX, NciStatus
from firmware_sims.scale import NciScaleSim
from firmware_sims.serial_link import PtyNullModem

CLIENT_LOGGERS = ("drivers.scale.client", "drivers.scale.nci_client")


@dataclass
class Rig:
    link: PtyNullModem
    sim: NciScaleSim
    client: NciScaleClient
    events: list[Availability] = field(default_factory=list)


async def eventually(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait until `predicate()` holds (a hang guard, not a timing assertion)."""
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - polls state a transport callback sets; no event to await
            await asyncio.sleep(0.01)


def _settings(path: str, **overrides: float) -> ScaleSettings:
    values: dict[str, float] = {
        "request_timeout_s": 0.5,
        "command_timeout_s": 1.0,
        "stable_timeout_s": 5.0,
        "poll_interval_s": 0.03,
    }
    values.update(overrides)
    return ScaleSettings(
        path,
        request_timeout_s=values["request_timeout_s"],
        command_timeout_s=values["command_timeout_s"],
        stable_timeout_s=values["stable_timeout_s"],
        poll_interval_s=values["poll_interval_s"],
        offline_after=3,
    )


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    events: list[Availability] = []
    async with (
        PtyNullModem() as link,
        NciScaleSim(link.device_path, unit="g", decimals=1, width=8, settle_s=0.15) as sim,
        NciScaleClient(_settings(link.host_path), "nci-1", on_availability=events.append) as client,
    ):
        yield Rig(link, sim, client, events)


def _caplog_both(caplog: pytest.LogCaptureFixture, level: int) -> None:
    for name in CLIENT_LOGGERS:
        caplog.set_level(level, logger=name)


# --- weighing ------------------------------------------------------------------------------------------------


async def test_stable_weight_is_returned_after_motion(rig: Rig) -> None:
    rig.sim.put(250.0)
    weight = await rig.client.weigh_stable()
    assert (weight.value, weight.unit, weight.weight_g) == (250.0, "g", 250.0)
    assert weight.device_id == "nci-1"
    c = rig.client.counters
    assert c.dynamic_replies >= 1  # it polled through the settling time ...
    assert c.not_stable == 0  # ... and returned only the settled value
    assert set(rig.sim.commands) == {"W"}
    assert rig.client.online is True
    assert rig.client.last_status == NciStatus()
    assert rig.events == []  # the first reply is no availability change


async def test_dynamic_weights_are_never_returned(rig: Rig) -> None:
    for grams in (10.0, 510.5, 33.2, 0.0, 1999.9):
        rig.sim.put(grams)
        assert (await rig.client.weigh_stable()).value == grams
    assert rig.client.counters.dynamic_replies >= 5


async def test_pounds_are_converted_to_grams() -> None:
    async with (
        PtyNullModem() as link,
        NciScaleSim(link.device_path, unit="lb", settle_s=0.05) as sim,
        NciScaleClient(_settings(link.host_path), "nci-lb") as client,
    ):
        sim.put(566.9904625)  # 1.25 lb, the manual's example frame
        weight = await client.weigh_stable()
        assert (weight.value, weight.unit) == (1.25, "lb")
        assert weight.weight_g == pytest.approx(566.9904625)


async def test_scale_stuck_in_motion_ends_in_not_stable(rig: Rig) -> None:
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


async def test_over_and_under_capacity_raise_range_errors(rig: Rig) -> None:
    rig.sim.put(20_000.0)  # capacity 15 kg
    with pytest.raises(ScaleRangeError) as over:
        await rig.client.weigh_stable()
    assert over.value.overload is True
    rig.sim.put(-500.0)  # the pan lifted off: gross far below the zero point
    with pytest.raises(ScaleRangeError) as under:
        await rig.client.weigh_stable()
    assert under.value.overload is False
    assert (rig.client.counters.overloads, rig.client.counters.underloads) == (1, 1)
    rig.sim.put(300.0)
    assert (await rig.client.weigh_stable()).value == 300.0


# --- zero, status, unsupported commands -----------------------------------------------------------------------


async def test_zero_and_status(rig: Rig) -> None:
    rig.sim.put(12.0)  # a little dirt on the pan
    await eventually(rig.sim.is_stable)
    await rig.client.zero()
    assert (await rig.client.weigh_stable()).value == 0.0
    assert (await rig.client.read_status()).at_zero is True
    rig.sim.put(112.0)
    assert (await rig.client.weigh_stable()).value == 100.0
    assert "Z" in rig.sim.commands
    assert "S" in rig.sim.commands


async def test_zero_while_in_motion_is_refused(rig: Rig) -> None:
    rig.sim.put(80.0)
    rig.sim.stuck_in_motion = True
    with pytest.raises(ScaleCommandError) as info:
        await rig.client.zero()
    assert info.value.kind == "not executable"
    assert rig.client.counters.not_executable == 1
    rig.sim.stuck_in_motion = False
    assert (await rig.client.weigh_stable()).value == 80.0  # the zero was not taken


@pytest.mark.parametrize("command", ["identify", "tare", "clear_tare", "reset"])
async def test_commands_nci_lacks_are_refused_without_touching_the_line(rig: Rig, command: str) -> None:
    with pytest.raises(ScaleCommandError, match="not supported by the NCI protocol") as info:
        await getattr(rig.client, command)()
    assert info.value.kind == "not supported"
    assert rig.sim.commands == []
    assert rig.client.counters.requests == 0


def test_both_clients_offer_the_gateway_the_same_surface() -> None:
    shared = {
        "__aenter__",
        "__aexit__",
        "aclose",
        "online",
        "counters",
        "weigh_stable",
        "zero",
        "tare",
        "clear_tare",
        "identify",
        "reset",
        "serial_number",
        "tare_lost",
        "unread_lines",
    }
    settings = ScaleSettings("/dev/null")
    for cls in (ScaleClient, NciScaleClient):
        client = cls(settings, "x")
        assert shared <= set(dir(client)), cls.__name__


# --- garbage -------------------------------------------------------------------------------------------------


async def test_garbage_frames_are_counted_logged_once_and_skipped(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.sim.put(40.0)
    await rig.client.weigh_stable()
    _caplog_both(caplog, logging.WARNING)
    rig.sim.inject_garbage(b"\x00\x01junk" + ETX + b"\n\xff\x7f" + ETX + b"zz" + ETX)
    await eventually(lambda: rig.client.counters.garbage_lines == 3)
    assert (await rig.client.weigh_stable()).value == 40.0
    assert rig.client.counters.garbage_lines == 3
    garbage_logs = [r for r in caplog.records if "garbage" in r.getMessage()]
    assert len(garbage_logs) == 1


async def test_unterminated_garbage_and_garbled_replies_resync(rig: Rig) -> None:
    rig.sim.put(75.5)
    await rig.client.weigh_stable()
    c = rig.client.counters
    # junk without an ETX would glue onto the next reply: it is dropped when the next request goes out
    rig.sim.inject_garbage(b"\xff\xfe\r\n")
    await eventually(lambda: rig.client._decoder.buffered > 0)
    assert (await rig.client.weigh_stable()).value == 75.5
    assert c.garbage_lines == 1
    assert c.timeouts == 0  # the reply itself was not lost
    # the next two replies are pure noise (no ETX): each poll times out, the third succeeds
    rig.sim.garbage_replies = 2
    assert (await rig.client.weigh_stable()).value == 75.5
    assert c.timeouts == 2
    assert c.garbage_lines == 3
    assert rig.client.online is True  # 2 misses in a row stay below offline_after=3


# --- availability, power-cycles, late replies ----------------------------------------------------------------


async def test_silence_goes_offline_once_then_online_once(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    _caplog_both(caplog, logging.INFO)
    rig.sim.put(300.0)
    await rig.client.weigh_stable()
    rig.sim.silent = True
    for _ in range(3):
        with pytest.raises(ScaleTimeout) as info:
            await rig.client.weigh_stable(timeout_s=0.7)
        assert not isinstance(info.value, ScaleNotStable)  # silence is not "in motion"
    assert rig.client.online is False
    assert [e.online for e in rig.events] == [False]
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


async def test_power_cycle_is_detected_and_the_lost_zero_reported(rig: Rig) -> None:
    rig.sim.put(112.0)
    await eventually(rig.sim.is_stable)
    await rig.client.zero()
    assert (await rig.client.weigh_stable()).value == 0.0
    assert rig.client.zero_lost is False
    rig.sim.power_off()
    for _ in range(2):
        with pytest.raises(ScaleTimeout):
            await rig.client.weigh_stable(timeout_s=0.6)
    assert rig.client.online is False
    rig.sim.power_on()  # power-up zero: the dirt is part of the weight again
    assert (await rig.client.weigh_stable()).value == 112.0
    assert rig.client.counters.power_cycles == 1
    assert rig.client.zero_lost is True
    assert [e.online for e in rig.events] == [False, True]
    await eventually(rig.sim.is_stable)
    await rig.client.zero()
    assert rig.client.zero_lost is False
    assert (await rig.client.weigh_stable()).value == 0.0


async def test_late_replies_are_discarded_not_taken_for_the_next_reply(rig: Rig) -> None:
    rig.sim.put(90.0)
    await rig.client.weigh_stable()
    rig.sim.late_reply_s = 0.1  # late, but within the request timeout
    assert (await rig.client.read_status()).motion is False
    rig.sim.late_reply_s = 1.0  # later than the request timeout
    timeouts_before = rig.client.counters.timeouts
    with pytest.raises(ScaleTimeout):
        await rig.client.read_status()
    assert rig.client.counters.timeouts == timeouts_before + 1
    await eventually(lambda: rig.client.unread_lines > 0)  # the late reply arrives after all
    rig.sim.late_reply_s = 0.0
    stale_before = rig.client.counters.stale_lines
    assert (await rig.client.weigh_stable()).value == 90.0
    assert rig.client.counters.stale_lines == stale_before + 1  # discarded, not taken for the W reply
    assert rig.client.counters.power_cycles == 0


async def test_missing_port_is_unavailable_with_backoff() -> None:
    settings = ScaleSettings("/dev/shelfgate-no-such-nci-scale", request_timeout_s=0.2)
    rng = random.Random(1)
    async with NciScaleClient(settings, "nci-x", backoff_base_s=30.0, backoff_cap_s=60.0, rng=rng) as client:
        assert client.counters.open_failures == 1  # tried at start, did not fail the start
        for _ in range(3):  # within the backoff delay no new open is attempted
            with pytest.raises(ScaleUnavailable, match="cannot open"):
                await client.weigh_stable(timeout_s=0.2)
        assert client.counters.open_failures == 1
        assert client.counters.requests == 0
        assert client.online is None
