"""Scale-out ingest on a real Mosquitto (2.0 hands a shared subscription's messages round-robin to its
members): two hub workers — two `Ingest`s, two MQTT clients, two connections to ONE database — on the same
`$share/hub/…` group. On SQLite the two workers are two connections to one WAL file, which is what two
processes are to SQLite (BEGIN IMMEDIATE + busy_timeout serialise the writers).

A fake gateway publishes hand-built contract payloads. Waits poll the workers' counters with a ceiling that
only turns a hang into a failure.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator

import aiomqtt

from cloud_bridge.contract import (
    AlertState,
    Command,
    CommandResult,
    Event,
    command_result_topic,
    command_topic,
    events_topic,
)
from cloud_bridge.resend import RESEND_COMMAND, ResendArgs, ResendResult, SeqSpan
from hub.db import HubDB
from hub.ingest import subscriptions
from hub.models import SeqRange
from hub.parse import BatchMessage, parse_message
from shelfgate.broker import Mosquitto
from tests.cloud_bridge.mqtt_helpers import Collector, collecting, wait_until
from tests.hub.conftest import DbUrlFactory
from tests.hub.fakes import alert_event, batch, stock_event
from tests.hub.workers import WAIT_S, Worker, total, worker


@contextlib.asynccontextmanager
async def _gateway(broker: Mosquitto) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client(broker.host, broker.port, identifier="fake-gw") as client:
        yield client


async def _wait_batches(workers: tuple[Worker, ...], count: int) -> None:
    await wait_until(
        lambda: total(workers, "batches") >= count,
        f"{count} batches handled",
        WAIT_S,
        lambda: [w.ingest.counters for w in workers],
    )


def _stock_batches(store_id: str, n_batches: int, per_batch: int) -> tuple[list[bytes], dict[str, int]]:
    """Contiguous stock batches of one gateway, and the count each bin ends at."""
    gateway_id = f"{store_id}-gw"
    payloads: list[bytes] = []
    final: dict[str, int] = {}
    for first in range(1, n_batches * per_batch + 1, per_batch):
        events = [
            stock_event(gateway_id, seq, f"B{seq % 4}", 1000 - seq) for seq in range(first, first + per_batch)
        ]
        final.update({f"B{seq % 4}": 1000 - seq for seq in range(first, first + per_batch)})
        payloads.append(batch(store_id, gateway_id, events))
    return payloads, final


def test_events_health_and_results_are_shared_and_status_is_for_everyworker() -> None:
    assert subscriptions("hub") == [
        "$share/hub/shelfgate/v1/stores/+/events",
        "$share/hub/shelfgate/v1/stores/+/health",
        "$share/hub/shelfgate/v1/stores/+/cmd-result",
        "shelfgate/v1/stores/+/status",
    ]
    assert subscriptions(None) == [
        "shelfgate/v1/stores/+/events",
        "shelfgate/v1/stores/+/health",
        "shelfgate/v1/stores/+/cmd-result",
        "shelfgate/v1/stores/+/status",
    ]


async def test_two_workers_split_a_multi_store_load_with_no_double_effect(
    db_url: str, mosquitto: Mosquitto
) -> None:
    rng = random.Random(11)
    stores = [f"s{n}" for n in range(8)]
    per_store = {s: _stock_batches(s, n_batches=15, per_batch=4) for s in stores}
    sends: list[tuple[str, bytes]] = []
    for index in range(15):  # each gateway publishes in order; the fleet interleaves
        sends.extend((s, per_store[s][0][index]) for s in stores)
    redelivered = rng.sample(sends, 10)  # a gateway reconnecting resends what it had not seen acknowledged
    settings = {"gap_timeout_s": 60.0, "reorder_window_events": 10_000}
    async with (
        worker("w1", db_url, mosquitto, **settings) as one,
        worker("w2", db_url, mosquitto, **settings) as two,
        _gateway(mosquitto) as gw,
    ):
        for store_id, payload in sends + redelivered:
            await gw.publish(events_topic(store_id), payload, qos=1)
        await _wait_batches((one, two), len(sends) + len(redelivered))
        stock = {s: {i.bin_id: i.count for i in await one.db.stock(s)} for s in stores}
        records = await two.db.stores()
        unapplied = await one.db.query("SELECT COUNT(*) FROM events WHERE applied_at IS NULL")
        rows = await one.db.query("SELECT COUNT(*) FROM events")
    workers = (one, two)
    assert one.count("batches") > 0, "the shared subscription split the load"
    assert two.count("batches") > 0, "the shared subscription split the load"
    assert total(workers, "events_applied") == 8 * 60, "each event's effect ran exactly once"
    assert total(workers, "duplicates") == 10 * 4
    assert total(workers, "quarantined") == 0
    assert rows == [(8 * 60,)]
    assert unapplied == [(0,)]
    assert stock == {s: per_store[s][1] for s in stores}
    assert [(r.store_id, r.applied_seq, r.missing_ranges) for r in records] == [(s, 60, ()) for s in stores]


def _resend_requests(collector: Collector) -> list[tuple[str, ResendArgs, str]]:
    """(topic, args, command id) of every command the workers published."""
    out = []
    for message in collector.messages:
        command = Command.model_validate_json(message.payload)
        out.append((message.topic, ResendArgs.model_validate(command.args), command.id))
    return out


async def test_a_hole_is_asked_for_once_and_closes_when_the_events_come(
    db_url: str, mosquitto: Mosquitto
) -> None:
    gw_id = "s1-gw"
    settings = {"gap_timeout_s": 0.3, "gap_check_s": 0.1, "resend_retry_s": 600.0}
    async with (
        collecting(mosquitto, "shelfgate/v1/stores/+/cmd/#") as commands,
        worker("w1", db_url, mosquitto, **settings) as one,
        worker("w2", db_url, mosquitto, **settings) as two,
        _gateway(mosquitto) as gw,
    ):
        workers = (one, two)
        for seqs in ((1, 2, 3), (6, 7, 8), (11, 12)):
            events = [stock_event(gw_id, seq, "A01", 100 - seq) for seq in seqs]
            await gw.publish(events_topic("s1"), batch("s1", gw_id, events), qos=1)
        await wait_until(lambda: bool(commands.messages), "a resend request", WAIT_S)
        ((topic, args, command_id),) = _resend_requests(commands)
        assert topic == command_topic("s1", RESEND_COMMAND)
        assert args.ranges == [SeqSpan(first_seq=4, last_seq=5), SeqSpan(first_seq=9, last_seq=10)]
        held = await one.db.store("s1")
        # The gateway re-sends the ranges (same ids), then answers.
        for seqs in ((4, 5), (9, 10)):
            events = [stock_event(gw_id, seq, "A01", 100 - seq) for seq in seqs]
            await gw.publish(events_topic("s1"), batch("s1", gw_id, events), qos=1)
        answer = CommandResult(
            id=command_id, ok=True, result=ResendResult(requested=4, resent=4, already_queued=0).model_dump()
        )
        await gw.publish(command_result_topic("s1"), answer.model_dump_json().encode(), qos=1)
        await wait_until(lambda: total(workers, "resend_answers") == 1, "the answer recorded", WAIT_S)
        await _wait_batches(workers, 5)
        closed = await two.db.store("s1")
        stock = await one.db.stock("s1")
        requests = _resend_requests(commands)
    assert held is not None
    assert (held.applied_seq, held.received_seq) == (3, 12)
    assert closed is not None
    assert (closed.applied_seq, closed.missing_ranges, closed.lost_ranges) == (12, (), ())
    assert [(s.bin_id, s.count) for s in stock] == [("A01", 88)]
    assert len(requests) == 1, "two workers, one request"
    assert total(workers, "resend_requests") == 1
    assert total(workers, "events_lost") == 0


async def test_what_the_gateway_no_longer_has_is_recorded_lost_and_what_followed_is_applied(
    db_url: str, mosquitto: Mosquitto
) -> None:
    gw_id = "s1-gw"
    settings = {"gap_timeout_s": 0.2, "gap_check_s": 0.1}
    async with (
        collecting(mosquitto, command_topic("s1", RESEND_COMMAND)) as commands,
        worker("w1", db_url, mosquitto, **settings) as one,
        _gateway(mosquitto) as gw,
    ):
        for seqs in ((1, 2), (5, 6)):
            events = [stock_event(gw_id, seq, "A01", 100 - seq) for seq in seqs]
            await gw.publish(events_topic("s1"), batch("s1", gw_id, events), qos=1)
        await wait_until(lambda: bool(commands.messages), "a resend request", WAIT_S)
        ((_topic, args, command_id),) = _resend_requests(commands)
        answer = CommandResult(
            id=command_id,
            ok=True,
            result=ResendResult(
                requested=2, resent=0, already_queued=0, not_retained=[SeqSpan(first_seq=3, last_seq=4)]
            ).model_dump(),
        )
        await gw.publish(command_result_topic("s1"), answer.model_dump_json().encode(), qos=1)
        await wait_until(lambda: one.count("resend_answers") == 1, "the answer recorded", WAIT_S)
        store = await one.db.store("s1")
        stock = await one.db.stock("s1")
    assert args.ranges == [SeqSpan(first_seq=3, last_seq=4)]
    assert store is not None
    assert (store.applied_seq, store.lost_ranges) == (6, (SeqRange(first_seq=3, last_seq=4),))
    assert [(s.bin_id, s.count) for s in stock] == [("A01", 94)]
    assert (one.count("events_lost"), one.count("events_released")) == (2, 2)


async def test_a_hole_beyond_the_reorder_window_is_asked_for_at_once(
    db_url: str, mosquitto: Mosquitto
) -> None:
    gw_id = "s1-gw"
    async with (
        collecting(mosquitto, command_topic("s1", RESEND_COMMAND)) as commands,
        worker("w1", db_url, mosquitto, gap_timeout_s=3600.0, reorder_window_events=5) as one,
        _gateway(mosquitto) as gw,
    ):
        await gw.publish(events_topic("s1"), batch("s1", gw_id, [stock_event(gw_id, 1, "A01", 9)]), qos=1)
        await gw.publish(events_topic("s1"), batch("s1", gw_id, [stock_event(gw_id, 7, "A01", 3)]), qos=1)
        await wait_until(lambda: bool(commands.messages), "a resend request", WAIT_S)
        ((_topic, args, _id),) = _resend_requests(commands)
    assert args.ranges == [SeqSpan(first_seq=2, last_seq=6)]
    assert one.count("events_held") == 1


def _lifecycle_events(gateway_id: str, n_alerts: int) -> list[Event]:
    """Stock moves and alerts raised, acknowledged, resolved, interleaved: order-sensitive state."""
    events: list[Event] = []
    seq = 0
    for n in range(n_alerts):
        for state, by in (
            (AlertState.RAISED, None),
            (AlertState.ACKNOWLEDGED, f"staff{n}"),
            (AlertState.RESOLVED, None),
        ):
            seq += 1
            events.append(stock_event(gateway_id, seq, f"B{n % 3}", 50 - n))
            seq += 1
            events.append(alert_event(gateway_id, seq, f"al-{n}", state, bin_id=f"B{n % 3}", by=by))
    return events


async def test_a_shuffled_batch_stream_converges_to_the_in_order_state(
    new_db_url: DbUrlFactory, mosquitto: Mosquitto
) -> None:
    rng = random.Random(23)
    stores = ["s1", "s2", "s3"]
    batches: dict[str, list[list[Event]]] = {}
    for store_id in stores:
        events = _lifecycle_events(f"{store_id}-gw", 12)
        cuts = sorted(rng.sample(range(1, len(events)), 20))
        batches[store_id] = [events[a:b] for a, b in zip([0, *cuts], [*cuts, len(events)], strict=True)]
    reference_url, url = new_db_url(), new_db_url()
    async with HubDB(reference_url) as reference:
        for store_id in stores:
            for events in batches[store_id]:
                parsed = parse_message(events_topic(store_id), batch(store_id, f"{store_id}-gw", events))
                assert isinstance(parsed, BatchMessage)
                await reference.apply_batch(parsed, 1.0)
        expected = {s: (await reference.stock(s), await reference.alerts(s)) for s in stores}
    shuffled = [(s, events) for s in stores for events in batches[s]]
    rng.shuffle(shuffled)
    settings = {"gap_timeout_s": 3600.0, "reorder_window_events": 10_000}
    async with (
        worker("w1", url, mosquitto, **settings) as one,
        worker("w2", url, mosquitto, **settings) as two,
        _gateway(mosquitto) as gw,
    ):
        for store_id, events in shuffled:
            await gw.publish(events_topic(store_id), batch(store_id, f"{store_id}-gw", events), qos=1)
        await _wait_batches((one, two), len(shuffled))
        converged = {s: (await one.db.stock(s), await two.db.alerts(s)) for s in stores}
        records = await one.db.stores()
    assert total((one, two), "events_held") > 0, "the shuffle really delivered events ahead of holes"
    assert converged == expected
    assert [(r.store_id, r.applied_seq) for r in records] == [(s, 72) for s in stores]
    assert total((one, two), "events_applied") == 3 * 72


async def test_a_hole_nobody_fills_is_given_up_and_what_followed_is_applied(
    db_url: str, mosquitto: Mosquitto
) -> None:
    gw_id = "s1-gw"
    settings = {"gap_timeout_s": 3600.0, "gap_check_s": 0.1, "gap_give_up_s": 0.5}
    async with worker("w1", db_url, mosquitto, **settings) as one, _gateway(mosquitto) as gw:
        await gw.publish(events_topic("s1"), batch("s1", gw_id, [stock_event(gw_id, 1, "A01", 9)]), qos=1)
        later = [stock_event(gw_id, 4, "A01", 6), stock_event(gw_id, 5, "A01", 5)]
        await gw.publish(events_topic("s1"), batch("s1", gw_id, later), qos=1)
        await wait_until(lambda: one.count("events_lost") > 0, "the hole given up", WAIT_S)
        store = await one.db.store("s1")
        stock = await one.db.stock("s1")
    assert store is not None
    assert (store.applied_seq, store.lost_ranges) == (5, (SeqRange(first_seq=2, last_seq=3),))
    assert [(s.bin_id, s.count) for s in stock] == [("A01", 5)]
    assert (one.count("events_lost"), one.count("events_released"), one.count("events_applied")) == (2, 2, 3)
