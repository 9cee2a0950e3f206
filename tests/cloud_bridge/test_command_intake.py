"""Command intake under hostile input: every malformed `cmd/{name}` is refused with a reason, never a crash.

Three layers: `parse_command` on a table of malformed payloads (each with the reason and whether its id is
recoverable); the real uplink on a real Mosquitto answering each of them on `cmd-result` (or counting the
ones it cannot answer) and still serving afterwards; and Hypothesis properties — on the intake function
itself, and end to end through the broker — that arbitrary bytes on `cmd/x` never stop the uplink and never
produce more than one result.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

import aiomqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_bridge.aio import reraise_swallowed_cancel
from cloud_bridge.contract import Command, CommandResult, command_result_topic, command_topic
from cloud_bridge.uplink import (
    MAX_COMMAND_BYTES,
    MAX_COMMAND_DEPTH,
    CommandRefusedError,
    Uplink,
    parse_command,
)
from shelfgate.broker import Mosquitto
from tests.cloud_bridge.memory_outbox import MemoryOutbox
from tests.cloud_bridge.mqtt_helpers import WAIT_S, collecting, publish, running, wait_until

STORE = "s-intake"
GATEWAY = "s-intake-gw"
ISSUED = "2026-11-23T10:00:00.000Z"
T = TypeVar("T")


def make_uplink(broker: Mosquitto, **overrides: Any) -> Uplink:
    kwargs: dict[str, Any] = {
        "store_id": STORE,
        "gateway_id": GATEWAY,
        "boot_id": "boot-1",
        "version": "0.1.0-test",
        "config_version": "cfg-1",
        "outbox": MemoryOutbox(),
        "host": broker.host,
        "port": broker.port,
        "publish_timeout_s": 5.0,
        "heartbeat_s": 3600.0,
        "backoff_base_s": 0.05,
        "backoff_cap_s": 0.5,
    }
    kwargs.update(overrides)
    return Uplink(**kwargs)


def nested(depth: int) -> str:
    """A JSON array nested `depth` levels deep."""
    return "[" * depth + "]" * depth


# (case id, payload, the id a result must carry or None when nobody can be answered, a fragment of the reason)
MALFORMED: list[tuple[str, bytes, str | None, str]] = [
    ("empty", b"", None, "invalid JSON"),
    ("not-json", b"reboot now", None, "invalid JSON"),
    ("truncated", b'{"id": "t1", "issued_at": "' + ISSUED.encode(), None, "invalid JSON"),
    ("not-utf8", b'{"id": "u1", "issued_at": "\xff"}', None, "not UTF-8"),
    ("utf8-bom", b'\xef\xbb\xbf{"id": "b1", "issued_at": "x"}', None, "invalid JSON"),
    ("top-level-array", b'[{"id": "a1"}]', None, "Input should be a valid dictionary"),
    ("missing-id", b'{"issued_at": "' + ISSUED.encode() + b'"}', None, "id: Field required"),
    ("id-not-a-string", b'{"id": 7, "issued_at": "x"}', None, "id: Input should be a valid string"),
    ("id-too-long", json.dumps({"id": "x" * 129, "issued_at": ISSUED}).encode(), None, "at most 128"),
    ("id-lone-surrogate", b'{"id": "\\ud800", "issued_at": "x"}', None, "surrogate"),
    ("missing-issued-at", b'{"id": "m1"}', "m1", "issued_at: Field required"),
    ("issued-at-number", b'{"id": "w1", "issued_at": 42}', "w1", "issued_at: Input should be a valid string"),
    (
        "args-a-list",
        b'{"id": "w2", "issued_at": "x", "args": [1]}',
        "w2",
        "args: Input should be a valid dict",
    ),
    ("unknown-field", b'{"id": "w3", "issued_at": "x", "sudo": true}', "w3", "sudo: Extra inputs"),
    ("nan", b'{"id": "n1", "issued_at": "x", "args": {"v": NaN}}', None, "NaN is not JSON"),
    ("infinity", b'{"id": "n2", "issued_at": "x", "args": {"v": -Infinity}}', None, "Infinity is not JSON"),
    ("number-out-of-range", b'{"id": "n3", "issued_at": "x", "args": {"v": 1e999}}', "n3", "IEEE 754"),
    ("huge-integer", b'{"id": "n4", "issued_at": "x", "args": {"v": ' + b"9" * 5000 + b"}}", None, "limit"),
    ("duplicate-id", b'{"id": "d1", "id": "d2", "issued_at": "x"}', None, "duplicate member name 'id'"),
    ("surrogate-in-args", b'{"id": "s1", "issued_at": "x", "args": {"k": "\\udc00"}}', "s1", "surrogate"),
    (
        "too-deep",
        f'{{"id": "deep1", "issued_at": "x", "args": {{"v": {nested(MAX_COMMAND_DEPTH)}}}}}'.encode(),
        "deep1",
        f"deeper than {MAX_COMMAND_DEPTH}",
    ),
    (
        "far-too-deep",
        f'{{"id": "deep2", "issued_at": "x", "args": {{"v": {nested(5000)}}}}}'.encode(),
        None,
        "deeper than",
    ),
    (
        "oversized-id-first",
        b'{"id": "big1", "issued_at": "x", "args": {"blob": "' + b"a" * MAX_COMMAND_BYTES + b'"}}',
        "big1",
        f"exceeds the limit of {MAX_COMMAND_BYTES} bytes",
    ),
    (
        "oversized-id-last",
        b'{"args": {"blob": "' + b"a" * MAX_COMMAND_BYTES + b'"}, "id": "big2", "issued_at": "x"}',
        None,
        "exceeds the limit",
    ),
]


@pytest.mark.parametrize(
    ("payload", "command_id", "reason"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED]
)
def test_parse_command_refuses_with_a_reason(payload: bytes, command_id: str | None, reason: str) -> None:
    with pytest.raises(CommandRefusedError) as info:
        parse_command(payload)
    assert info.value.command_id == command_id
    assert reason in info.value.reason


def test_parse_command_takes_a_valid_command() -> None:
    deepest_allowed = json.loads(nested(MAX_COMMAND_DEPTH - 2))  # payload object + args object + this
    payload = json.dumps({"id": "ok-1", "issued_at": ISSUED, "args": {"v": deepest_allowed}}).encode()
    assert parse_command(payload) == Command(id="ok-1", issued_at=ISSUED, args={"v": deepest_allowed})
    at_limit = b'{"id": "ok-2", "issued_at": "x", "args": {"p": "'
    at_limit += b"a" * (MAX_COMMAND_BYTES - len(at_limit) - 3) + b'"}}'
    assert len(at_limit) == MAX_COMMAND_BYTES
    assert parse_command(at_limit).id == "ok-2"


async def test_the_uplink_answers_every_malformed_command_it_can_and_keeps_serving(
    mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="cloud_bridge.uplink")
    uplink = make_uplink(mosquitto)
    async with collecting(mosquitto, command_result_topic(STORE)) as results, running(uplink) as task:
        await wait_until(lambda: uplink.connected, "the uplink to connect")
        for _case, payload, _command_id, _reason in MALFORMED:
            await publish(mosquitto, command_topic(STORE, "calibrate"), payload)
        # An unknown command with a valid envelope is answered too (by the built-ins' fallback).
        unknown = Command(id="u-1", issued_at=ISSUED).model_dump_json().encode()
        await publish(mosquitto, command_topic(STORE, "self-destruct"), unknown)
        ping = Command(id="alive", issued_at=ISSUED).model_dump_json().encode()
        await publish(mosquitto, command_topic(STORE, "ping"), ping)

        def answered() -> dict[str, CommandResult]:
            found = (CommandResult.model_validate_json(m.payload) for m in results.messages)
            return {r.id: r for r in found}

        await wait_until(lambda: "alive" in answered(), "the ping after the malformed commands")
        assert not task.done()
        assert uplink.connected

    got = answered()
    expected = {command_id: reason for _case, _p, command_id, reason in MALFORMED if command_id}
    assert set(got) == {*expected, "u-1", "alive"}
    assert len(results.messages) == len(got)  # one result per answerable command, never two
    for command_id, reason in expected.items():
        error = got[command_id].error
        assert not got[command_id].ok
        assert error is not None
        assert error.startswith("invalid command: ")
        assert reason in error
    assert got["u-1"] == CommandResult(id="u-1", ok=False, error="unknown command 'self-destruct'")
    assert got["alive"] == CommandResult(id="alive", ok=True, result={"pong": True})
    assert uplink.commands_rejected == len(MALFORMED)
    assert uplink.commands_handled == 2
    unanswerable = [m for m in caplog.messages if "dropped command" in m]
    assert len(unanswerable) == sum(1 for c in MALFORMED if c[2] is None)
    assert sum(r.levelname == "WARNING" for r in caplog.records if "dropped command" in r.message) == 1


async def test_a_result_that_cannot_be_serialised_becomes_an_error_result(mosquitto: Mosquitto) -> None:
    async def on_command(name: str, command: Command) -> CommandResult:
        return CommandResult(id=command.id, ok=True, result={"handle": object()})

    uplink = make_uplink(mosquitto, on_command=on_command)
    async with collecting(mosquitto, command_result_topic(STORE)) as results, running(uplink) as task:
        await wait_until(lambda: uplink.connected, "the uplink to connect")
        payload = Command(id="x-1", issued_at=ISSUED).model_dump_json().encode()
        await publish(mosquitto, command_topic(STORE, "diagnostics"), payload)
        await wait_until(lambda: bool(results.messages), "the result")
        assert not task.done()
    assert [CommandResult.model_validate_json(m.payload) for m in results.messages] == [
        CommandResult(id="x-1", ok=False, error="the command's result could not be serialised")
    ]


# --- properties ---------------------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=16,
)
COMMAND_LIKE = st.fixed_dictionaries(
    {
        "id": st.one_of(st.text(max_size=140), st.integers(), st.none()),
        "issued_at": st.text(max_size=30) | st.integers(),
    },
    optional={"args": JSON_VALUES, "extra": JSON_VALUES},
).map(lambda doc: json.dumps(doc).encode())  # json.dumps writes NaN/Infinity and escapes lone surrogates
PAYLOADS = st.one_of(
    st.binary(max_size=512),
    JSON_VALUES.map(lambda value: json.dumps(value).encode()),
    COMMAND_LIKE,
    st.tuples(COMMAND_LIKE, st.integers(min_value=0, max_value=120)).map(lambda t: t[0][: t[1]]),
)


@given(payload=PAYLOADS)
def test_property_parse_command_raises_only_its_refusal(payload: bytes) -> None:
    refusal: CommandRefusedError | None = None
    try:
        command = parse_command(payload)
    except CommandRefusedError as exc:
        refusal = exc
    if refusal is None:
        assert command.model_dump_json()  # what is accepted can always be written back
        return
    assert refusal.reason
    if refusal.command_id is not None:  # what a refusal answers to can always be written back
        assert CommandResult(id=refusal.command_id, ok=False, error=refusal.reason).model_dump_json()


@given(payload=PAYLOADS, retained=st.booleans())
async def test_property_one_message_yields_at_most_one_serialisable_result(
    payload: bytes, retained: bool
) -> None:
    uplink = Uplink(
        store_id=STORE,
        gateway_id=GATEWAY,
        boot_id="b",
        version="v",
        config_version="c",
        outbox=MemoryOutbox(),
        host="127.0.0.1",
        port=1,
    )
    before = uplink.commands_handled + uplink.commands_rejected
    result = await uplink._handle_command(f"shelfgate/v1/stores/{STORE}/cmd/x", payload, retained=retained)
    assert uplink.commands_handled + uplink.commands_rejected == before + 1  # every message is accounted for
    if result is None:
        assert uplink.commands_rejected == 1
    else:
        assert isinstance(result, CommandResult)
        assert result.ok is False  # `x` is not a command: malformed or unknown
        assert result.error
        assert result.model_dump_json(exclude_none=True)


class BrokerHarness:
    """The real uplink and a hub-side client on a real broker, in an event loop on a thread of its own.

    Hypothesis drives synchronous tests example by example; this keeps one connection of each for the whole
    run, so an example costs two round trips through Mosquitto instead of a reconnect.
    """

    def __init__(self, broker: Mosquitto) -> None:
        self.broker = broker
        self.uplink = make_uplink(broker)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="intake-harness.loop", daemon=True)
        self._stack = contextlib.AsyncExitStack()
        self._results: asyncio.Queue[CommandResult] = asyncio.Queue()
        self._uplink_task: asyncio.Task[None] | None = None
        self._hub: aiomqtt.Client | None = None

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT_S)

    def __enter__(self) -> BrokerHarness:
        self.thread.start()
        self.run(self._start())
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.run(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(WAIT_S)
            self.loop.close()

    async def _start(self) -> None:
        self._uplink_task = asyncio.create_task(self.uplink.run(), name="uplink[intake].run")
        hub = aiomqtt.Client(self.broker.host, self.broker.port, timeout=5)
        await self._stack.enter_async_context(hub)
        await hub.subscribe(command_result_topic(STORE), qos=1)
        self._hub = hub
        reader = asyncio.create_task(self._read(hub), name="hub[intake].read")
        self._stack.push_async_callback(self._cancel, reader)
        await wait_until(lambda: self.uplink.connected, "the uplink to connect")

    async def _read(self, hub: aiomqtt.Client) -> None:
        async for message in hub.messages:
            assert isinstance(message.payload, bytes)
            await self._results.put(CommandResult.model_validate_json(message.payload))

    @staticmethod
    async def _cancel(task: asyncio.Task[None]) -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _stop(self) -> None:
        await self._stack.aclose()
        if self._uplink_task is not None:
            await self._cancel(self._uplink_task)

    async def exchange(self, payload: bytes) -> tuple[list[CommandResult], CommandResult]:
        """Publish `payload` on cmd/x, then a ping marker; return the results before the marker, and it.

        The uplink takes commands one at a time in arrival order and Mosquitto keeps one publisher's order
        to one subscriber, so everything `payload` caused has arrived once the marker's result has.
        """
        assert self._hub is not None
        marker = f"marker-{uuid.uuid4().hex}"
        await self._hub.publish(command_topic(STORE, "x"), payload, qos=1)
        ping = Command(id=marker, issued_at=ISSUED).model_dump_json().encode()
        await self._hub.publish(command_topic(STORE, "ping"), ping, qos=1)
        before: list[CommandResult] = []
        async with asyncio.timeout(WAIT_S):
            while (result := await self._results.get()).id != marker:
                before.append(result)
        reraise_swallowed_cancel()
        return before, result

    @property
    def uplink_alive(self) -> bool:
        return self._uplink_task is not None and not self._uplink_task.done() and self.uplink.connected


def test_property_arbitrary_bytes_through_the_broker_never_crash_the_uplink(mosquitto: Mosquitto) -> None:
    exchanged: list[bytes] = []
    with BrokerHarness(mosquitto) as harness:

        @settings(max_examples=80)
        @given(payload=PAYLOADS)
        def check(payload: bytes) -> None:
            results, marker = harness.run(harness.exchange(payload))
            exchanged.append(payload)
            assert len(results) <= 1
            assert marker.ok
            assert harness.uplink_alive
            for result in results:
                assert result.ok is False
                assert result.error

        check()
        assert len(exchanged) >= 50  # Hypothesis really drove the broker (80 unless the strategy ran dry)
        # The surrogate id that used to reach `CommandResult.model_dump_json` and end the uplink's TaskGroup.
        results, marker = harness.run(harness.exchange(b'{"id": "\\ud800", "issued_at": 1}'))
        assert results == []
        assert marker.ok
        assert harness.uplink_alive
