"""MQTT ingest: one hub worker's subscriber. Any number of workers run side by side (`shelfgate hub` per
process, each with its own `hub_id`), sharing the load through MQTT shared subscriptions.

Which topics are shared (`$share/{group}/…`, MQTT 5.0 §4.8.2; Mosquitto ≥ 1.6 offers them to 3.1.1 clients
too) and which every worker subscribes plainly:

- `events`, `health`, `cmd-result`: shared — each message is handled by ONE worker. Batches of one store then
  reach different workers in any order; `hub.db` applies them in seq order anyway (held events wait in the
  database), and each event id at most once, so no worker needs to see all of a store's batches.
- `status`: every worker. It is retained, and shared subscriptions do not reliably get retained messages
  (MQTT 5.0 §4.8.2 forbids sending them; Mosquitto 2.0 sends them to every member). And when two workers
  write the same statuses in the same broker order, the last write is the newest status whatever the lag
  between them; split over workers, a birth could overwrite the will that followed it for good.

Mosquitto 2.0 does not restore shared subscriptions from its persistence file after a restart (measured;
plain ones are restored), so events published before a worker re-subscribes are dropped by the broker. The
resulting hole is repaired like any other, by `cmd/resend` from the gateway's retained ledger.

Holes (`GapState`): after each batch and heartbeat, and every `gap_check_s` for holes nothing new arrives
behind, a hole older than `gap_timeout_s` (or more than `reorder_window_events` behind the newest event) is
asked for on `cmd/resend` (`cloud_bridge.resend`). The request is claimed in the database, so N workers send
one; an unanswered request is re-published with the same id after `resend_retry_s`; after an answer the next
request waits `resend_min_interval_s`; a hole still open after `gap_give_up_s` is recorded as lost.

The worker never crashes on input: whatever `hub.parse` refuses is quarantined with its reason and the next
message is processed. It does stop on a database error — swallowing one would lose data the broker already
considers delivered.

Session: a stable client id with a persistent session (MQTT 3.1.1 §3.1.2.4, Clean Session = 0), so the
broker queues QoS 1 messages while the hub restarts; apply is idempotent, so redeliveries are harmless.

Acknowledge after commit: the PUBACK for a message is sent only once its transaction committed (paho's
manual ack; aiomqtt has no switch for it, so `manual_ack_set` is called on its paho client before connect).
A worker that dies or loses the broker mid-way leaves the message unacknowledged, and the broker delivers it
again on the next connection of that session (MQTT 3.1.1 §4.4) — nothing PUBACKed is ever lost in aiomqtt's
queue, which drops what it holds when the connection ends. PUBACKs go out in receipt order (§4.6), since
messages are handled one at a time.

Incoming queue: bounded by the broker, not by us — it sends a client at most its in-flight window of
unacknowledged QoS 1 messages (Mosquitto `max_inflight_messages`, default 20), so the queue never holds
more, and a slow worker slows only its own share. More throughput means more workers.

Reconnection (STYLE.md rule 7/8): capped exponential backoff with full jitter; one WARNING when the broker is
lost, one INFO when it is back, nothing per failed attempt above DEBUG.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
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
    Command,
    command_topic,
)
from cloud_bridge.resend import RESEND_COMMAND
from hub.config import BrokerConfig, HubConfig
from hub.db import HubDB, ResendClaim, ResendPolicy
from hub.models import GapState, SeqRange
from hub.parse import (
    BatchMessage,
    CommandResultMessage,
    HeartbeatMessage,
    PayloadRejected,
    StatusMessage,
    parse_message,
)

log = logging.getLogger(__name__)

SHARED_TOPICS: Final = (ALL_STORES_EVENTS, ALL_STORES_HEALTH, ALL_STORES_CMD_RESULT)
"""Handled by one worker of the group each."""
EVERY_WORKER_TOPICS: Final = (ALL_STORES_STATUS,)
"""Handled by every worker (see the module docstring)."""
CONNECT_TIMEOUT_S: Final = 10.0
PUBLISH_TIMEOUT_S: Final = 10.0


def subscriptions(share_group: str | None) -> list[str]:
    """The topic filters one worker subscribes to (QoS 1 each)."""
    if share_group is None:
        return [*SHARED_TOPICS, *EVERY_WORKER_TOPICS]
    return [*(f"$share/{share_group}/{topic}" for topic in SHARED_TOPICS), *EVERY_WORKER_TOPICS]


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
    """Messages received (counted on arrival)."""
    handled: int = 0
    """Messages whose apply (or quarantine) has committed — what a reader may already see."""
    batches: int = 0
    events_applied: int = 0
    duplicates: int = 0
    quarantined: int = 0
    statuses: int = 0
    heartbeats: int = 0
    command_results: int = 0
    connects: int = 0
    events_held: int = 0
    """Events that arrived ahead of a hole and waited in the database."""
    events_released: int = 0
    """Held events applied once their hole closed (by this worker; another may close it)."""
    events_late: int = 0
    """Events that arrived after their hole was recorded as lost, applied out of order."""
    resend_requests: int = 0
    resend_retries: int = 0
    resend_answers: int = 0
    events_lost: int = 0
    """Seqs recorded as lost: the gateway no longer had them, or `gap_give_up_s` passed."""

    def as_dict(self) -> dict[str, int]:
        """Plain JSON-able form."""
        return asdict(self)


def _payload_bytes(payload: object) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if payload is None:
        return b""
    return str(payload).encode()


def _tls_context(broker: BrokerConfig) -> ssl.SSLContext | None:
    """TLS when `broker.ca_file` is set, with the hub's client certificate when given (docs/security.md)."""
    if broker.ca_file is None:
        return None
    context = ssl.create_default_context(cafile=str(broker.ca_file))
    if broker.cert_file is not None:
        context.load_cert_chain(str(broker.cert_file), str(broker.key_file) if broker.key_file else None)
    return context


class Ingest:
    """One worker's subscriber; `run()` is the task body (named ``hub[{hub_id}].ingest`` by the service)."""

    def __init__(self, config: HubConfig, db: HubDB, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.db = db
        self.counters = IngestCounters()
        self._clock = clock
        self._connected = False
        self._available: bool | None = None  # None until the first attempt, so the first outcome is logged
        self._subscribed = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._policy = ResendPolicy(
            retry_s=config.ingest.resend_retry_s, min_interval_s=config.ingest.resend_min_interval_s
        )

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
        """Consume the broker and sweep for old holes until cancelled; a database error ends both."""
        hub_id = self.config.hub_id
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._consume(), name=f"hub[{hub_id}].ingest.mqtt")
            tasks.create_task(self._sweep_forever(), name=f"hub[{hub_id}].ingest.gaps")

    async def _consume(self) -> None:
        """Connect, subscribe, apply; reconnect forever on broker errors."""
        broker = self.config.broker
        share_group = self.config.ingest.share_group
        backoff = Backoff(cap_s=broker.reconnect_max_s)
        while True:
            client = aiomqtt.Client(
                broker.host,
                broker.port,
                identifier=self.config.mqtt_client_id,
                clean_session=False,
                keepalive=broker.keepalive_s,
                timeout=CONNECT_TIMEOUT_S,
                logger=logging.getLogger("hub.ingest.mqtt"),
                tls_context=_tls_context(broker),
            )
            # Before CONNACK: a persistent session's queued messages follow it at once.
            paho = client._client  # aiomqtt exposes no manual-ack switch; paho has a public one
            paho.manual_ack_set(True)
            try:
                async with client:
                    if share_group is not None:
                        # A persistent session made before sharing was configured still holds the plain
                        # filters; they would hand this worker every message a second time.
                        await client.unsubscribe(list(SHARED_TOPICS))
                        reraise_swallowed_cancel()
                    await client.subscribe([(topic, 1) for topic in subscriptions(share_group)])
                    reraise_swallowed_cancel()
                    self.counters.connects += 1
                    self._set_available(True)
                    self._client = client
                    self._subscribed.set()
                    backoff.reset()
                    try:
                        async for message in client.messages:
                            await self.handle(message.topic.value, _payload_bytes(message.payload))
                            paho.ack(message.mid, message.qos)  # committed: now the broker may forget it
                    finally:
                        self._client = None
            except aiomqtt.MqttError as exc:
                reraise_swallowed_cancel()
                self._set_available(False, str(exc) or type(exc).__name__)
            delay_s = backoff.next_delay_s()
            log.debug("hub ingest reconnect attempt %d in %.2f s", backoff.attempt, delay_s)
            await asyncio.sleep(delay_s)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.ingest.gap_check_s)
            await self.sweep_gaps()

    async def sweep_gaps(self) -> None:
        """Give up on holes past `gap_give_up_s`, then ask for holes that are due and nothing else will
        trigger (no batch or heartbeat arrives behind them). Broker errors are left to the consumer."""
        settings = self.config.ingest
        now = self._clock()
        for gap, released in await self.db.give_up_gaps(now, settings.gap_give_up_s):
            lost = sum(r.last_seq - r.first_seq + 1 for r in gap.missing)
            self.counters.events_lost += lost
            self.counters.events_released += released
            self.counters.events_applied += released
            log.warning(
                "store %s: gave up waiting for %d event(s) of %s after %.0f s (%s); applying what followed",
                gap.store_id,
                lost,
                gap.gateway_id,
                now - gap.since,
                _spans(gap.missing),
            )
        if self._client is None:
            return  # a request claimed now could not be sent; it is claimed again once connected
        for store_id, gateway_id in await self.db.due_gaps(
            now, settings.gap_timeout_s, settings.reorder_window_events
        ):
            try:
                await self._request_resend(store_id, gateway_id, now)
            except aiomqtt.MqttError as exc:
                log.debug("hub ingest: resend for %s not published (%s); retried later", store_id, exc)
                return

    async def _maybe_request(self, gap: GapState | None, now: float) -> None:
        settings = self.config.ingest
        if gap is not None and gap.due(
            now=now, timeout_s=settings.gap_timeout_s, window_events=settings.reorder_window_events
        ):
            await self._request_resend(gap.store_id, gap.gateway_id, now)

    async def _request_resend(self, store_id: str, gateway_id: str, now: float) -> None:
        claim = await self.db.claim_resend(store_id, gateway_id, now, self._policy)
        if claim is not None:
            await self._publish_resend(claim)

    async def _publish_resend(self, claim: ResendClaim) -> None:
        client = self._client
        if client is None:
            log.debug(
                "resend %s for %s claimed while offline; re-sent after resend_retry_s",
                claim.command.id,
                claim.store_id,
            )
            return
        if claim.retry:
            self.counters.resend_retries += 1
            log.info("store %s: no answer to %s yet; asking again", claim.store_id, claim.command.id)
        else:
            self.counters.resend_requests += 1
            log.info(
                "store %s: asking gateway %s to resend %s (%s)",
                claim.store_id,
                claim.gateway_id,
                _spans_from_args(claim.command.args),
                claim.command.id,
            )
        await client.publish(
            command_topic(claim.store_id, RESEND_COMMAND),
            claim.command.model_dump_json().encode(),
            qos=1,
            timeout=PUBLISH_TIMEOUT_S,
        )
        reraise_swallowed_cancel()

    async def publish_command(self, store_id: str, name: str, command: Command) -> bool:
        """Publish `cmd/{name}` to a store (QoS 1, never retained) on this worker's connection; False when not
        connected (the caller retries later). Used by `hub.config_rollout`."""
        client = self._client
        if client is None:
            return False
        await client.publish(
            command_topic(store_id, name),
            command.model_dump_json().encode(),
            qos=1,
            timeout=PUBLISH_TIMEOUT_S,
        )
        reraise_swallowed_cancel()
        return True

    async def handle(self, topic: str, payload: bytes) -> None:
        """Parse and apply one message; refused ones go to quarantine. Database errors propagate."""
        self.counters.messages += 1
        await self._handle(topic, payload)
        self.counters.handled += 1

    async def _handle(self, topic: str, payload: bytes) -> None:
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
                self.counters.events_held += result.pending
                self.counters.events_released += result.released
                self.counters.events_late += result.late
                if result.duplicates:
                    log.debug(
                        "store %s batch %d..%d: %d duplicate event(s) ignored",
                        parsed.store_id,
                        parsed.batch.first_seq,
                        parsed.batch.last_seq,
                        result.duplicates,
                    )
                await self._maybe_request(result.gap, received_at)
            case StatusMessage():
                await self.db.record_status(parsed, received_at)
                self.counters.statuses += 1
            case HeartbeatMessage():
                gap = await self.db.record_heartbeat(parsed, received_at)
                self.counters.heartbeats += 1
                await self._maybe_request(gap, received_at)
            case CommandResultMessage():
                answer = await self.db.record_command_result(parsed, received_at)
                self.counters.command_results += 1
                if answer is not None:
                    self.counters.resend_answers += 1
                    lost = sum(r.last_seq - r.first_seq + 1 for r in answer.lost)
                    self.counters.events_lost += lost
                    self.counters.events_released += answer.released
                    self.counters.events_applied += answer.released
                    if answer.result is None:
                        log.warning(
                            "store %s: gateway %s refused resend %s: %s",
                            answer.store_id,
                            answer.gateway_id,
                            parsed.result.id,
                            parsed.result.error,
                        )
                    elif lost:
                        log.warning(
                            "store %s: gateway %s no longer has %d event(s) (%s); recorded as lost",
                            answer.store_id,
                            answer.gateway_id,
                            lost,
                            _spans(answer.lost),
                        )


def _spans(ranges: tuple[SeqRange, ...] | list[SeqRange]) -> str:
    shown = ", ".join(f"{r.first_seq}..{r.last_seq}" for r in ranges[:5])
    return shown + (f" and {len(ranges) - 5} more" if len(ranges) > 5 else "")


def _spans_from_args(args: dict[str, object]) -> str:
    ranges = args.get("ranges")
    if not isinstance(ranges, list):
        return "?"
    return ", ".join(
        f"{r.get('first_seq')}..{r.get('last_seq')}" for r in ranges[:5] if isinstance(r, dict)
    ) + (f" and {len(ranges) - 5} more" if len(ranges) > 5 else "")
