"""Hub-side test helpers on a real broker: a reconnecting subscriber, retained-message reads, polling waits."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiomqtt

from cloud_bridge.aio import reraise_swallowed_cancel
from cloud_bridge.contract import EventBatch
from cloud_bridge.uplink import Uplink
from shelfgate.broker import Mosquitto

WAIT_S = 60.0
"""Generous bound for every wait: it only turns a hang into a failure, it never measures speed."""


async def wait_until(
    predicate: Callable[[], bool],
    what: str,
    timeout_s: float = WAIT_S,
    detail: Callable[[], object] | None = None,
) -> None:
    """Poll `predicate` until it holds; fail with `what` (and `detail()`) if it never does."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f": {detail()}" if detail else ""))
        await asyncio.sleep(0.02)


@dataclass(frozen=True)
class Received:
    """One message as the subscriber saw it."""

    topic: str
    payload: bytes
    retain: bool


class Collector:
    """A subscriber that reconnects until stopped and keeps every message it gets.

    With `client_id` it uses a persistent session (clean_session=False, QoS 1), so messages published while it
    is disconnected wait for it in the broker, as the hub's ingest does.
    """

    def __init__(self, broker: Mosquitto, topic: str, *, client_id: str | None = None) -> None:
        self.broker = broker
        self.topic = topic
        self.client_id = client_id
        self.messages: list[Received] = []
        self.subscribed = asyncio.Event()
        self.received = asyncio.Event()
        self.sessions = 0

    async def run(self) -> None:
        """Connect, subscribe, collect; reconnect after any MQTT error."""
        while True:
            client = aiomqtt.Client(
                self.broker.host,
                self.broker.port,
                identifier=self.client_id,
                clean_session=self.client_id is None,
                timeout=5,
            )
            try:
                async with client:
                    reraise_swallowed_cancel()
                    await client.subscribe(self.topic, qos=1)
                    reraise_swallowed_cancel()
                    self.sessions += 1
                    self.subscribed.set()
                    async for message in client.messages:
                        assert isinstance(message.payload, bytes)
                        self.messages.append(Received(message.topic.value, message.payload, message.retain))
                        self.received.set()
            except aiomqtt.MqttError:
                reraise_swallowed_cancel()  # a cancel lost inside aiomqtt's wait_for must still stop us
                await asyncio.sleep(0.05)
            finally:
                client._client._sock_close()  # aiomqtt leaves a socket open after a CONNACK timeout
                # …and nobody retrieves the disconnect future's exception ("Future exception was never retrieved").
                disconnected = client._disconnected
                if disconnected.done() and not disconnected.cancelled():
                    disconnected.exception()

    def batches(self) -> list[EventBatch]:
        """Every message parsed as an EventBatch (fails the test on an invalid one)."""
        return [EventBatch.model_validate_json(m.payload) for m in self.messages]

    def seqs(self) -> set[int]:
        """The union of event seqs received."""
        return {event.seq for batch in self.batches() for event in batch.events}


@contextlib.asynccontextmanager
async def collecting(
    broker: Mosquitto, topic: str, *, client_id: str | None = None
) -> AsyncIterator[Collector]:
    """Run a Collector for the body of the block, subscribed before the body starts."""
    collector = Collector(broker, topic, client_id=client_id)
    task = asyncio.create_task(collector.run(), name=f"collector[{topic}].run")
    try:
        await asyncio.wait_for(collector.subscribed.wait(), WAIT_S)
        yield collector
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def running(uplink: Uplink) -> AsyncIterator[asyncio.Task[None]]:
    """Run `uplink.run()` for the body of the block and cancel it (gracefully) at the end."""
    task = asyncio.create_task(uplink.run(), name=f"uplink[{uplink.gateway_id}].run")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def read_retained(broker: Mosquitto, topic: str, timeout_s: float = 2.0) -> Received | None:
    """The retained message on `topic` as a fresh clean-session subscriber sees it, or None."""
    async with collecting(broker, topic) as collector:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(collector.received.wait(), timeout_s)
        return collector.messages[0] if collector.messages else None


async def publish(broker: Mosquitto, topic: str, payload: bytes, *, retain: bool = False) -> None:
    """Publish one QoS 1 message as the hub would, waiting for its PUBACK."""
    async with aiomqtt.Client(broker.host, broker.port, timeout=5) as client:
        await client.publish(topic, payload, qos=1, retain=retain)
