"""The uplink against a real Mosquitto: delivery, outages, a frozen broker, birth/will, commands, heartbeats."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from cloud_bridge.contract import (
    Command,
    CommandResult,
    EventBatch,
    Heartbeat,
    Status,
    StockChanged,
    command_result_topic,
    command_topic,
    events_topic,
    health_topic,
    status_topic,
)
from cloud_bridge.outbox import OutboxRow
from cloud_bridge.uplink import UnknownCommandError, Uplink
from shelfgate.broker import Mosquitto
from tests.cloud_bridge.memory_outbox import MemoryOutbox
from tests.cloud_bridge.mqtt_helpers import (
    WAIT_S,
    Collector,
    collecting,
    publish,
    read_retained,
    running,
    wait_until,
)

STORE = "s042"
GATEWAY = "s042-gw"
REPO_ROOT = Path(__file__).resolve().parents[2]


def make_uplink(broker: Mosquitto, outbox: MemoryOutbox, **overrides: Any) -> Uplink:
    """An uplink with test-friendly timings; `overrides` replace any keyword."""
    kwargs: dict[str, Any] = {
        "store_id": STORE,
        "gateway_id": GATEWAY,
        "boot_id": "boot-1",
        "version": "0.1.0-test",
        "config_version": "cfg-7",
        "outbox": outbox,
        "host": broker.host,
        "port": broker.port,
        "publish_timeout_s": 5.0,
        "heartbeat_s": 3600.0,
        "backoff_base_s": 0.05,
        "backoff_cap_s": 0.5,
    }
    kwargs.update(overrides)
    return Uplink(**kwargs)


def assert_well_formed(collector: Collector) -> list[EventBatch]:
    """Every batch is valid, contiguous, of our store/gateway, with ids `{gateway_id}:{seq}`."""
    batches = collector.batches()
    for batch in batches:
        assert batch.store_id == STORE
        assert batch.gateway_id == GATEWAY
        assert [e.seq for e in batch.events] == list(range(batch.first_seq, batch.last_seq + 1))
        assert all(e.id == f"{GATEWAY}:{e.seq}" for e in batch.events)
    return batches


def uplink_warnings(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "cloud_bridge.uplink" and r.levelno == level]


# --- (1) delivery ------------------------------------------------------------------------------------------


async def test_events_arrive_in_seq_order_and_rows_go_only_after_their_batch(mosquitto: Mosquitto) -> None:
    outbox = MemoryOutbox()
    outbox.append_many(450)
    uplink = make_uplink(mosquitto, outbox, batch_max_events=200)
    async with collecting(mosquitto, events_topic(STORE)) as events, running(uplink):
        await wait_until(lambda: events.seqs() == set(range(1, 451)), "the first 450 events")
        outbox.append_many(10)
        await wait_until(lambda: not outbox.seqs and events.seqs() == set(range(1, 461)), "all 460 events")

    batches = assert_well_formed(events)
    delivered = [e.seq for batch in batches for e in batch.events]
    assert delivered == list(range(1, 461))  # in order, once each: nothing failed, so nothing was resent
    assert [b.first_seq for b in batches[:3]] == [1, 201, 401]
    assert max(len(b.events) for b in batches) == 200
    # Every delete names the last seq of a batch the broker took, in the order they went out.
    assert outbox.acks == [b.last_seq for b in batches]
    assert (uplink.published_events, uplink.published_batches) == (460, len(batches))
    assert uplink.last_published_seq == 460
    assert batches[0].events[0].data_as(StockChanged).count == 1


async def test_a_hole_and_an_undeliverable_row_do_not_stall_the_drain(mosquitto: Mosquitto) -> None:
    outbox = MemoryOutbox()
    outbox.append_many(3)  # 1..3
    outbox.append("not.a.contract.type", {"x": 1})  # 4: can never be sent
    outbox.append_many(3)  # 5..7
    outbox.discard(6)  # a quota drop: hole at 6
    uplink = make_uplink(mosquitto, outbox)
    async with collecting(mosquitto, events_topic(STORE)) as events, running(uplink):
        await wait_until(lambda: not outbox.seqs and events.seqs() == {1, 2, 3, 5, 7}, "the deliverable rows")
    assert [(b.first_seq, b.last_seq) for b in assert_well_formed(events)] == [(1, 3), (5, 5), (7, 7)]
    assert uplink.rows_rejected == 1


# --- (2) broker down at start ------------------------------------------------------------------------------


async def test_broker_down_at_start_retries_and_delivers_everything(
    mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="cloud_bridge.uplink")
    outbox = MemoryOutbox()
    outbox.append_many(50)
    uplink = make_uplink(mosquitto, outbox)
    # The hub's subscriber has a persistent session, so it gets what is published while it reconnects.
    async with collecting(mosquitto, events_topic(STORE), client_id="hub-ingest") as events:
        await asyncio.to_thread(mosquitto.stop)
        async with running(uplink):
            await wait_until(lambda: uplink.connection_failures >= 5, "several failed connect attempts")
            assert not uplink.connected
            assert outbox.seqs == list(range(1, 51))
            assert uplink.last_error is not None
            await asyncio.to_thread(mosquitto.start)
            await wait_until(lambda: not outbox.seqs and events.seqs() == set(range(1, 51)), "all 50 events")
            assert uplink.connected

    assert_well_formed(events)
    assert uplink.reconnects == 0  # the first successful connect is not a reconnect
    # Availability is logged once per change, not once per attempt.
    warnings = uplink_warnings(caplog, logging.WARNING)
    assert len(warnings) == 1
    assert "unreachable" in warnings[0]
    infos = uplink_warnings(caplog, logging.INFO)
    assert len(infos) == 1
    assert "reachable again" in infos[0]
    assert len(uplink_warnings(caplog, logging.DEBUG)) >= 4


# --- (3) broker restarted mid-stream ----------------------------------------------------------------------


async def test_broker_restart_mid_stream_loses_nothing(
    mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cloud_bridge.uplink")
    total = 600
    outbox = MemoryOutbox()
    uplink = make_uplink(mosquitto, outbox, batch_max_events=50)

    async def produce() -> None:
        while outbox.last_seq < total:
            outbox.append_many(5)
            await asyncio.sleep(0.01)

    async with collecting(mosquitto, events_topic(STORE), client_id="hub-ingest") as events, running(uplink):
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(produce(), name="test.produce")
            await wait_until(lambda: len(events.seqs()) >= 100, "the stream to be flowing")
            await asyncio.to_thread(mosquitto.stop)
            await wait_until(lambda: not uplink.connected, "the uplink to notice")
            await asyncio.sleep(0.3)  # events keep being appended while the broker is away
            await asyncio.to_thread(mosquitto.start)
        await wait_until(
            lambda: not outbox.seqs and events.seqs() == set(range(1, total + 1)),
            "every seq at least once",
            detail=lambda: (
                f"outbox={outbox.seqs[:5]}…({len(outbox.seqs)}) "
                f"missing={sorted(set(range(1, total + 1)) - events.seqs())[:20]} "
                f"uplink={uplink.stats()} sessions={events.sessions}"
            ),
        )

    assert_well_formed(events)
    assert uplink.reconnects >= 1
    assert events.sessions >= 2  # the subscriber really was cut off too
    assert len(uplink_warnings(caplog, logging.WARNING)) == 1
    assert len([m for m in uplink_warnings(caplog, logging.INFO) if "reachable again" in m]) == 1


# --- (4) broker frozen -------------------------------------------------------------------------------------


async def test_frozen_broker_times_out_reconnects_and_loses_nothing(mosquitto: Mosquitto) -> None:
    outbox = MemoryOutbox()
    outbox.append_many(20)
    uplink = make_uplink(mosquitto, outbox, publish_timeout_s=1.0)
    async with collecting(mosquitto, events_topic(STORE), client_id="hub-ingest") as events, running(uplink):
        await wait_until(
            lambda: not outbox.seqs and events.seqs() == set(range(1, 21)), "the first 20 events"
        )
        acks_before = list(outbox.acks)
        mosquitto.freeze()
        try:
            outbox.append_many(20)  # 21..40 go out in a PUBLISH that the broker never acknowledges
            await wait_until(
                lambda: uplink.connection_failures >= 2, "the publish and a reconnect to time out"
            )
            assert "timed out" in (uplink.last_error or "")
            assert not uplink.connected
            # Sent but not acknowledged: nothing may have been deleted.
            assert outbox.seqs == list(range(21, 41))
            assert outbox.acks == acks_before
        finally:
            mosquitto.thaw()
        await wait_until(lambda: not outbox.seqs and events.seqs() == set(range(1, 41)), "all 40 events")
        await wait_until(lambda: uplink.connected, "the uplink to be back")

    assert_well_formed(events)
    assert uplink.reconnects >= 1
    assert max(outbox.acks) == 40


# --- (5) birth, graceful offline, will ---------------------------------------------------------------------


async def test_retained_birth_on_connect_and_retained_offline_on_graceful_stop(mosquitto: Mosquitto) -> None:
    uplink = make_uplink(mosquitto, MemoryOutbox())
    async with running(uplink):
        await wait_until(lambda: uplink.connected, "the uplink to connect")
        birth = await read_retained(mosquitto, status_topic(STORE))
        assert birth is not None
        assert birth.retain
        status = Status.model_validate_json(birth.payload)
        assert (status.state, status.gateway_id, status.boot_id) == ("online", GATEWAY, "boot-1")
        assert (status.version, status.config_version) == ("0.1.0-test", "cfg-7")
        assert status.ts.endswith("Z")

    goodbye = await read_retained(mosquitto, status_topic(STORE))
    assert goodbye is not None
    assert Status.model_validate_json(goodbye.payload).state == "offline"
    assert not uplink.connected


async def test_sigkilled_gateway_leaves_the_retained_will_offline(mosquitto: Mosquitto) -> None:
    store_id, gateway_id, boot_id = "s043", "s043-gw", f"boot-{uuid.uuid4().hex[:8]}"
    topic = status_topic(store_id)

    async def retained_status(state: str) -> Status:
        """Poll the retained status until it says `state` (while the child, if alive, keeps running)."""
        async with asyncio.timeout(WAIT_S):
            while True:
                message = await read_retained(mosquitto, topic, timeout_s=0.5)
                if message is not None:
                    status = Status.model_validate_json(message.payload)
                    if status.state == state:
                        return status
                assert state == "offline" or child.returncode is None, "the uplink child died"

    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.cloud_bridge.uplink_child",
        mosquitto.host,
        str(mosquitto.port),
        store_id,
        gateway_id,
        boot_id,
        cwd=REPO_ROOT,
    )
    try:
        birth = await retained_status("online")
        assert (birth.gateway_id, birth.boot_id) == (gateway_id, boot_id)
        child.send_signal(signal.SIGKILL)
        await child.wait()
        will = await retained_status("offline")
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    # The broker published the will of the killed session: same gateway and boot, retained.
    assert (will.gateway_id, will.boot_id) == (gateway_id, boot_id)
    assert child.returncode == -signal.SIGKILL


class BrokenOutbox(MemoryOutbox):
    """The gateway's store failing underneath the uplink (not a connection problem)."""

    async def peek(self, limit: int) -> list[OutboxRow]:
        raise RuntimeError("database disk image is malformed")


async def test_an_outbox_failure_is_not_retried_and_leaves_the_status_offline(mosquitto: Mosquitto) -> None:
    uplink = make_uplink(mosquitto, BrokenOutbox())
    with pytest.raises(ExceptionGroup) as info:
        await asyncio.wait_for(uplink.run(), WAIT_S)
    assert info.group_contains(RuntimeError, match="malformed")
    assert uplink.connection_failures == 0
    status = await read_retained(mosquitto, status_topic(STORE))
    assert status is not None
    assert Status.model_validate_json(status.payload).state == "offline"


# --- (6) commands -------------------------------------------------------------------------------------------


def command(command_id: str, **args: Any) -> bytes:
    return Command(id=command_id, issued_at="2026-11-23T10:00:00.000Z", args=args).model_dump_json().encode()


async def test_ping_round_trip_and_malformed_commands_get_error_results(mosquitto: Mosquitto) -> None:
    uplink = make_uplink(mosquitto, MemoryOutbox())
    # Retained before the gateway subscribes: it would replay on every (re)subscribe, so it is never run.
    await publish(mosquitto, command_topic(STORE, "ping"), command("stale-retained"), retain=True)
    async with collecting(mosquitto, command_result_topic(STORE)) as results, running(uplink):
        await wait_until(lambda: uplink.commands_rejected == 1, "the retained command to be refused")

        def result(command_id: str) -> CommandResult | None:
            found = [CommandResult.model_validate_json(m.payload) for m in results.messages]
            return next((r for r in found if r.id == command_id), None)

        await publish(mosquitto, command_topic(STORE, "ping"), command("p1"))
        await wait_until(lambda: result("p1") is not None, "the ping result")
        assert result("p1") == CommandResult(id="p1", ok=True, result={"pong": True})

        # Schema error with a recoverable id: an error result names the bad field.
        await publish(mosquitto, command_topic(STORE, "calibrate"), b'{"id": "bad-1", "issued_at": 42}')
        await wait_until(lambda: result("bad-1") is not None, "the error result for bad-1")
        bad = result("bad-1")
        assert bad is not None
        assert not bad.ok
        assert "issued_at" in (bad.error or "")

        # No id to answer to: dropped and counted.
        await publish(mosquitto, command_topic(STORE, "diagnostics"), b"\xff definitely not json")
        await wait_until(lambda: uplink.commands_rejected == 3, "the garbage to be dropped")

        # An unknown command gets an error result, and the uplink is still serving.
        await publish(mosquitto, command_topic(STORE, "self-destruct"), command("u1"))
        await publish(mosquitto, command_topic(STORE, "ping"), command("p2"))
        await wait_until(lambda: result("p2") is not None, "the second ping result")
        unknown = result("u1")
        assert unknown is not None
        assert not unknown.ok
        assert "unknown command" in (unknown.error or "")
        assert uplink.connected

    assert result("stale-retained") is None
    assert {CommandResult.model_validate_json(m.payload).id for m in results.messages} == {
        "p1",
        "bad-1",
        "u1",
        "p2",
    }
    wire = next(m.payload for m in results.messages if b'"p1"' in m.payload)
    assert b"error" not in wire  # absent optional fields are left out on the wire


async def test_handler_commands_failures_and_redelivery(mosquitto: Mosquitto) -> None:
    calls: list[tuple[str, str]] = []

    async def on_command(name: str, cmd: Command) -> CommandResult:
        calls.append((name, cmd.id))
        if name == "calibrate":
            return CommandResult(id=cmd.id, ok=True, result={"bin_id": cmd.args["bin_id"], "zeroed": True})
        if name == "explode":
            raise RuntimeError("load cell bus busy")
        raise UnknownCommandError(name)

    uplink = make_uplink(mosquitto, MemoryOutbox(), on_command=on_command)
    async with collecting(mosquitto, command_result_topic(STORE)) as results, running(uplink):
        await wait_until(lambda: uplink.connected, "the uplink to connect")
        await publish(mosquitto, command_topic(STORE, "calibrate"), command("c1", bin_id="A-01"))
        await publish(mosquitto, command_topic(STORE, "explode"), command("e1"))
        await publish(mosquitto, command_topic(STORE, "ping"), command("p1"))
        await publish(
            mosquitto, command_topic(STORE, "calibrate"), command("c1", bin_id="A-01")
        )  # redelivery
        await wait_until(lambda: len(results.messages) >= 4, "four results")

    got = [CommandResult.model_validate_json(m.payload) for m in results.messages]
    assert got[0] == CommandResult(id="c1", ok=True, result={"bin_id": "A-01", "zeroed": True})
    assert got[1].id == "e1"
    assert not got[1].ok
    assert got[1].error == "RuntimeError: load cell bus busy"
    assert got[2] == CommandResult(
        id="p1", ok=True, result={"pong": True}
    )  # built-in after UnknownCommandError
    assert got[3] == got[0]  # same answer…
    assert calls == [("calibrate", "c1"), ("explode", "e1"), ("ping", "p1")]  # …without running it twice


# --- (7) heartbeat ------------------------------------------------------------------------------------------


async def test_default_heartbeat_validates_and_reports_the_outbox(mosquitto: Mosquitto) -> None:
    outbox = MemoryOutbox()
    outbox.append_many(3)
    uplink = make_uplink(mosquitto, outbox, heartbeat_s=0.2)
    async with collecting(mosquitto, health_topic(STORE)) as health, running(uplink):
        await wait_until(lambda: len(health.messages) >= 3, "three heartbeats")
    beats = [Heartbeat.model_validate_json(m.payload) for m in health.messages]
    assert {(b.gateway_id, b.boot_id) for b in beats} == {(GATEWAY, "boot-1")}
    assert all(b.ts.endswith("Z") for b in beats)
    assert [b.uptime_s for b in beats] == sorted(b.uptime_s for b in beats)
    assert beats[-1].outbox_depth == 0
    assert beats[-1].last_seq == 3
    assert beats[-1].mem_rss_mb > 0
    assert beats[-1].disk_free_mb > 0
    assert all(0.0 <= b.cpu_pct <= 100.0 for b in beats)
    assert not any(m.retain for m in health.messages)
    assert uplink.heartbeats_sent >= 3


async def test_heartbeat_provider_is_published_and_its_failures_do_not_stop_the_uplink(
    mosquitto: Mosquitto,
) -> None:
    beats_built = 0

    async def provider() -> Heartbeat:
        nonlocal beats_built
        beats_built += 1
        if beats_built == 2:
            raise OSError("thermal sensor went away")
        return Heartbeat(
            gateway_id=GATEWAY,
            boot_id="boot-1",
            ts="2026-11-23T10:00:00.000Z",
            uptime_s=float(beats_built),
            cpu_pct=12.5,
            mem_rss_mb=80.0,
            disk_free_mb=1000.0,
            temperature_c=51.2,
            outbox_depth=0,
            outbox_oldest_age_s=None,
            last_seq=0,
            devices=[],
            active_alerts=2,
        )

    uplink = make_uplink(mosquitto, MemoryOutbox(), heartbeat_s=0.1, heartbeat=provider)
    async with collecting(mosquitto, health_topic(STORE)) as health, running(uplink):
        await wait_until(lambda: len(health.messages) >= 3, "three heartbeats")
    beats = [Heartbeat.model_validate_json(m.payload) for m in health.messages]
    assert [b.uptime_s for b in beats[:3]] == [1.0, 3.0, 4.0]  # the failed second beat was skipped
    assert beats[0].active_alerts == 2
    assert uplink.connected is False  # stopped by the test, not by the failure


async def test_the_uplink_stops_whenever_it_is_cancelled(mosquitto: Mosquitto) -> None:
    """Cancel at many points of connect/subscribe/birth/first publish: the task must always end.

    On Python 3.11 aiomqtt's internal wait_for can swallow a cancel (CPython gh-86296); without
    `reraise_swallowed_cancel` after those awaits, the uplink (and a gateway shutdown) could hang. This is a
    smoke test: it hits the race only by chance; tests/hub/test_ingest.py reproduces the race exactly.
    """
    for i in range(25):
        outbox = MemoryOutbox()
        outbox.append_many(5)
        uplink = make_uplink(mosquitto, outbox)
        task = asyncio.create_task(uplink.run(), name=f"uplink.cancel-{i}")
        await asyncio.sleep(0.002 * i)
        task.cancel()
        async with asyncio.timeout(15):  # a swallowed cancel would hang here and fail the test
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert task.done()
