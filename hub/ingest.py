"""MQTT ingest: subscribe to every store's events/status/health/cmd-result and apply them to the hub DB.

The worker never crashes on input: whatever `hub.parse` refuses is quarantined with its reason and the next
message is processed. It does stop on a database error — swallowing one would lose data the broker already
considers delivered.

Session: a stable client id with a persistent session (MQTT 3.1.1 §3.1.2.4, Clean Session = 0), so the
broker queues QoS 1 messages while the hub restarts; apply is idempotent, so redeliveries are harmless.
The hub acknowledges on receipt (paho's default), which opens a crash window between PUBACK and COMMIT; seq
gap tracking (`missing_ranges`) makes such a loss visible, and a resend request (a later issue) repairs it.

Incoming queue: aiomqtt's queue is left unbounded on purpose. Its only overflow policy is "discard", and by
then the message has been PUBACKed — discarding would be silent loss. It grows only while applying is slower
than the fleet publishes (one SQLite transaction per batch is far faster); backpressure proper needs
ack-after-commit, noted above as a later step.

Reconnection (STYLE.md rule 7/8): capped exponential backoff with full jitter; one WARNING when the broker is
lost, one INFO when it is back, nothing per failed attempt above DEBUG.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Final

import aiomqtt

from cloud_bridge.aio import reraise_swallowed_cancel
from cloud_bridge.contract import (
    ALL_STORES_CMD_RESULT,
    ALL_STORES_EVENTS,
    ALL_STORES_HEALTH,
    ALL_STORES_STATUS,
)
from hub.config import HubConfig
from hub.db import HubDB
from hub.parse import (
    BatchMessage,
    CommandResultMessage,
    HeartbeatMessage,
    PayloadRejected,
    StatusMessage,
    parse_message,
)

log = logging.getLogger(__name__)

SUBSCRIPTIONS: Final = (ALL_STORES_EVENTS, ALL_STORES_STATUS, ALL_STORES_HEALTH, ALL_STORES_CMD_RESULT)
CONNECT_TIMEOUT_S: Final = 10.0


class Backoff:
    """Capped exponential backoff with full jitter: sleep U(0, min(cap, base·2^attempt)) (AWS Architecture
    Blog, "Exponential Backoff and Jitter", 2015) — spreads a fleet's reconnects after a broker restart."""

    def __init__(self, base_s: float = 0.2, cap_s: float = 30.0, rng: random.Random | None = None) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay_s(self) -> float:
        """The next sleep; each call doubles the ceiling until the cap."""
        ceiling = min(self.cap_s, self.base_s * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return self._rng.uniform(0, ceiling)

    def reset(self) -> None:
        """After a success the next failure starts small again."""
        self.attempt = 0


@dataclass
class IngestCounters:
    """Monotonic counters since start, exposed by `GET /api/health`."""

    messages: int = 0
    batches: int = 0
    events_applied: int = 0
    duplicates: int = 0
    quarantined: int = 0
    statuses: int = 0
    heartbeats: int = 0
    command_results: int = 0
    connects: int = 0

    def as_dict(self) -> dict[str, int]:
        """Plain JSON-able form."""
        return asdict(self)


def _payload_bytes(payload: object) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if payload is None:
        return b""
    return str(payload).encode()


class Ingest:
    """The subscriber worker; `run()` is the task body (named ``hub[{hub_id}].ingest`` by the service)."""

    def __init__(self, config: HubConfig, db: HubDB, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.db = db
        self.counters = IngestCounters()
        self._clock = clock
        self._connected = False
        self._available: bool | None = None  # None until the first attempt, so the first outcome is logged
        self._subscribed = asyncio.Event()

    @property
    def connected(self) -> bool:
        """True while subscribed to the broker."""
        return self._connected

    async def wait_subscribed(self) -> None:
        """Return once the first subscription is in place (tests, readiness)."""
        await self._subscribed.wait()

    def _set_available(self, available: bool, detail: str = "") -> None:
        self._connected = available
        if available == self._available:
            return
        self._available = available
        broker = f"{self.config.broker.host}:{self.config.broker.port}"
        if available:
            log.info("hub ingest connected to MQTT broker %s as %s", broker, self.config.mqtt_client_id)
        else:
            log.warning("hub ingest lost the MQTT broker %s (%s); reconnecting with backoff", broker, detail)

    async def run(self) -> None:
        """Connect, subscribe, apply; reconnect forever on broker errors. Ends only by cancellation."""
        broker = self.config.broker
        backoff = Backoff(cap_s=broker.reconnect_max_s)
        while True:
            try:
                async with aiomqtt.Client(
                    broker.host,
                    broker.port,
                    identifier=self.config.mqtt_client_id,
                    clean_session=False,
                    keepalive=broker.keepalive_s,
                    timeout=CONNECT_TIMEOUT_S,
                    logger=logging.getLogger("hub.ingest.mqtt"),
                ) as client:
                    await client.subscribe([(topic, 1) for topic in SUBSCRIPTIONS])
                    reraise_swallowed_cancel()
                    self.counters.connects += 1
                    self._set_available(True)
                    self._subscribed.set()
                    backoff.reset()
                    async for message in client.messages:
                        await self.handle(message.topic.value, _payload_bytes(message.payload))
            except aiomqtt.MqttError as exc:
                reraise_swallowed_cancel()
                self._set_available(False, str(exc) or type(exc).__name__)
            delay_s = backoff.next_delay_s()
            log.debug("hub ingest reconnect attempt %d in %.2f s", backoff.attempt, delay_s)
            await asyncio.sleep(delay_s)

    async def handle(self, topic: str, payload: bytes) -> None:
        """Parse and apply one message; refused ones go to quarantine. Database errors propagate."""
        self.counters.messages += 1
        received_at = self._clock()
        try:
            parsed = parse_message(topic, payload)
        except PayloadRejected as exc:
            self.counters.quarantined += 1
            quarantine_id = await self.db.quarantine(topic, exc.reason, payload, received_at)
            log.warning("quarantined message #%d on %s: %s", quarantine_id, topic, exc.reason)
            return
        match parsed:
            case BatchMessage():
                result = await self.db.apply_batch(parsed, received_at)
                self.counters.batches += 1
                self.counters.events_applied += result.applied
                self.counters.duplicates += result.duplicates
                if result.duplicates:
                    log.debug(
                        "store %s batch %d..%d: %d duplicate event(s) ignored",
                        parsed.store_id,
                        parsed.batch.first_seq,
                        parsed.batch.last_seq,
                        result.duplicates,
                    )
            case StatusMessage():
                await self.db.record_status(parsed, received_at)
                self.counters.statuses += 1
            case HeartbeatMessage():
                await self.db.record_heartbeat(parsed, received_at)
                self.counters.heartbeats += 1
            case CommandResultMessage():
                await self.db.record_command_result(parsed, received_at)
                self.counters.command_results += 1
