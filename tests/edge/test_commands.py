"""`cmd/resend` on the gateway: the handler on a real store, then the whole round trip through a real uplink
and a real Mosquitto, the hub played by a plain MQTT client."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cloud_bridge.contract import Command, CommandResult, command_result_topic, command_topic, events_topic
from cloud_bridge.resend import MAX_RESEND_EVENTS, RESEND_COMMAND, ResendResult, SeqSpan
from cloud_bridge.uplink import UnknownCommandError, Uplink
from edge.commands import handle_resend
from edge.store import GatewayStore, NewEvent
from shelfgate.broker import Mosquitto
from tests.cloud_bridge.mqtt_helpers import collecting, publish, running, wait_until


def _events(n: int) -> list[NewEvent]:
    return [NewEvent("stock.changed", "2026-11-23T10:00:00.000Z", {"n": i}) for i in range(n)]


def _command(args: dict[str, Any], command_id: str = "rs-1") -> Command:
    return Command(id=command_id, issued_at="2026-11-23T10:05:00.000Z", args=args)


@contextlib.asynccontextmanager
async def _sent_store(path: Path, n: int) -> AsyncIterator[GatewayStore]:
    """A store whose events 1..n were all published and acknowledged."""
    async with GatewayStore(path) as store:
        await store.record(_events(n))
        while rows := await store.peek(100):
            await store.ack_through(rows[-1].seq)
        yield store


async def test_resend_requeues_the_ranges_and_answers_with_the_counts(tmp_path: Path) -> None:
    async with _sent_store(tmp_path / "gw.db", 6) as store:
        answer = await handle_resend(
            store, _command({"ranges": [{"first_seq": 2, "last_seq": 3}, {"first_seq": 6, "last_seq": 8}]})
        )
        shorthand = await handle_resend(store, _command({"first_seq": 5, "last_seq": 5}, "rs-2"))
        queued = [row.seq for row in await store.peek(100)]
    assert answer.id == "rs-1"
    assert answer.ok
    assert answer.result is not None
    assert ResendResult.model_validate(answer.result) == ResendResult(
        requested=5, resent=3, already_queued=0, not_allocated=[SeqSpan(first_seq=7, last_seq=8)]
    )
    assert answer.result["not_retained"] == []
    assert shorthand.ok
    assert shorthand.result is not None
    assert shorthand.result["resent"] == 1
    assert queued == [2, 3, 5, 6]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ({}, "ranges: Field required"),
        ({"ranges": []}, "ranges: List should have at least 1 item"),
        ({"ranges": [{"first_seq": 5, "last_seq": 4}]}, "first_seq 5 > last_seq 4"),
        ({"ranges": [{"first_seq": 0, "last_seq": 4}]}, "ranges.0.first_seq"),
        ({"first_seq": "x", "last_seq": 2}, "ranges.0.first_seq"),
        ({"ranges": [{"first_seq": 1, "last_seq": 2}], "extra": 1}, "extra: Extra inputs are not permitted"),
        ({"first_seq": 1, "last_seq": MAX_RESEND_EVENTS + 1}, f"at most {MAX_RESEND_EVENTS} per command"),
    ],
)
async def test_bad_arguments_are_refused_with_the_reason_and_change_nothing(
    tmp_path: Path, args: dict[str, Any], fragment: str
) -> None:
    async with _sent_store(tmp_path / "gw.db", 3) as store:
        answer = await handle_resend(store, _command(args))
        depth = await store.depth()
    assert (answer.id, answer.ok, answer.result) == ("rs-1", False, None)
    assert answer.error is not None
    assert answer.error.startswith("invalid resend args: ")
    assert fragment in answer.error
    assert depth == (0, None)


async def test_resend_round_trip_through_the_uplink(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """The hub asks for 2..3 after they were published and acknowledged; the same events (same ids) come
    again, and the answer says so."""
    async with GatewayStore(tmp_path / "gw.db") as store:

        async def on_command(name: str, command: Command) -> CommandResult:
            if name == RESEND_COMMAND:
                return await handle_resend(store, command)
            raise UnknownCommandError(name)

        uplink = Uplink(
            store_id="s1",
            gateway_id="s1-gw",
            boot_id="b1",
            version="test",
            config_version="c1",
            outbox=store,
            host=mosquitto.host,
            port=mosquitto.port,
            heartbeat_s=3600,
            on_command=on_command,
        )
        async with (
            collecting(mosquitto, events_topic("s1")) as events,
            collecting(mosquitto, command_result_topic("s1")) as results,
            running(uplink),
        ):
            await store.record(_events(4))
            await wait_until(lambda: events.seqs() == {1, 2, 3, 4}, "first delivery")
            await wait_until(lambda: uplink.connected, "uplink subscribed to its commands")
            first_delivery = len(events.messages)
            command = _command({"ranges": [{"first_seq": 2, "last_seq": 3}]}, "rs-round-trip")
            await publish(mosquitto, command_topic("s1", RESEND_COMMAND), command.model_dump_json().encode())
            await wait_until(lambda: bool(results.messages), "the resend's result")
            await wait_until(lambda: len(events.messages) > first_delivery, "the re-sent batch")
            await wait_until(lambda: uplink.published_events >= 6, "re-sent rows acknowledged")
        resent_batches = events.batches()[first_delivery:]
        depth = await store.depth()
    result = CommandResult.model_validate_json(results.messages[0].payload)
    assert (result.id, result.ok) == ("rs-round-trip", True)
    assert result.result is not None
    assert ResendResult.model_validate(result.result) == ResendResult(requested=2, resent=2, already_queued=0)
    assert [[e.id for e in b.events] for b in resent_batches] == [["s1-gw:2", "s1-gw:3"]]
    assert depth == (0, None)
