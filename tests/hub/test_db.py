"""The hub store on both engines: at-most-once apply, seq order, seq ranges, quarantine, migrations."""

from __future__ import annotations

import asyncio
import itertools
import random
import sqlite3

import pytest
from sqlalchemy import create_engine, text

from cloud_bridge.contract import (
    AlertState,
    CommandResult,
    Event,
    EventType,
    command_result_topic,
    events_topic,
    health_topic,
)
from cloud_bridge.resend import ResendResult, SeqSpan
from hub.config import sqlite_file
from hub.db import _MIGRATIONS, EFFECTS, SCHEMA_VERSION, HubDB, ResendPolicy, ddl
from hub.models import SeqRange
from hub.parse import BatchMessage, CommandResultMessage, HeartbeatMessage, parse_message
from tests.hub.conftest import DbUrlFactory
from tests.hub.fakes import alert_event, batch, heartbeat, stock_event

GW = "s1-gw"


def _msg(events: list[Event], store_id: str = "s1") -> BatchMessage:
    parsed = parse_message(events_topic(store_id), batch(store_id, GW, events))
    assert isinstance(parsed, BatchMessage)
    return parsed


# Three batches touching the same bin and alert; seq order is the truth.
BATCHES = (
    [
        stock_event(GW, 1, "A01", 10),
        stock_event(GW, 2, "B01", 7),
        alert_event(GW, 3, "al-1", AlertState.RAISED),
    ],
    [stock_event(GW, 4, "A01", 2), alert_event(GW, 5, "al-1", AlertState.ACKNOWLEDGED, by="mei")],
    [stock_event(GW, 6, "A01", 5), alert_event(GW, 7, "al-1", AlertState.RESOLVED, count=5)],
)


async def _state(db: HubDB) -> tuple[object, ...]:
    return (tuple(await db.stock("s1")), tuple(await db.alerts("s1")))


async def test_any_delivery_order_converges_to_the_in_order_state(new_db_url: DbUrlFactory) -> None:
    async with HubDB(new_db_url()) as db:
        for events in BATCHES:
            await db.apply_batch(_msg(events), 1.0)
        expected = await _state(db)
    stock, alerts = expected
    assert [(s.bin_id, s.count) for s in stock] == [("A01", 5), ("B01", 7)]  # type: ignore[attr-defined]
    assert [(a.state, a.acknowledged_by, a.count) for a in alerts] == [("resolved", "mei", 5)]  # type: ignore[attr-defined]
    for order in itertools.permutations(BATCHES):
        async with HubDB(new_db_url()) as db:
            for events in order:
                await db.apply_batch(_msg(events), 1.0)
            assert await _state(db) == expected, [e[0].seq for e in order]


async def test_a_redelivered_batch_applies_once_even_after_a_restart(db_url: str) -> None:
    async with HubDB(db_url) as db:
        first = await db.apply_batch(_msg(BATCHES[0]), 1.0)
        again = await db.apply_batch(_msg(BATCHES[0]), 2.0)
    assert (first.applied, first.duplicates) == (3, 0)
    assert (again.applied, again.duplicates) == (0, 3)
    async with HubDB(db_url) as db:  # the constraint, not process memory, makes it at-most-once
        after_restart = await db.apply_batch(_msg(BATCHES[0]), 3.0)
        rows = await db.query("SELECT id, received_at FROM events ORDER BY seq")
    assert (after_restart.applied, after_restart.duplicates) == (0, 3)
    assert rows == [(f"{GW}:1", 1.0), (f"{GW}:2", 1.0), (f"{GW}:3", 1.0)]


async def test_a_partially_overlapping_batch_applies_only_the_new_events(db_url: str) -> None:
    async with HubDB(db_url) as db:
        await db.apply_batch(_msg([stock_event(GW, 1, "A01", 9), stock_event(GW, 2, "A01", 8)]), 1.0)
        result = await db.apply_batch(_msg([stock_event(GW, 2, "A01", 8), stock_event(GW, 3, "A01", 7)]), 2.0)
        stock = await db.stock("s1")
    assert (result.applied, result.duplicates) == (1, 1)
    assert [(s.bin_id, s.count, s.updated_ts) for s in stock] == [("A01", 7, stock_event(GW, 3, "A01", 7).ts)]


async def test_events_ahead_of_a_hole_wait_and_apply_in_seq_order(db_url: str) -> None:
    async with HubDB(db_url) as db:
        await db.apply_batch(_msg([stock_event(GW, n, "A01", 20 - n) for n in range(1, 7)]), 1.0)
        resolved = await db.apply_batch(_msg([alert_event(GW, 9, "al-2", AlertState.RESOLVED)]), 2.0)
        acked = await db.apply_batch(
            _msg([alert_event(GW, 8, "al-2", AlertState.ACKNOWLEDGED, by="li")]), 3.0
        )
        waiting = await db.alerts("s1")
        raised = await db.apply_batch(_msg([alert_event(GW, 7, "al-2", AlertState.RAISED)]), 4.0)
        alerts = await db.alerts("s1")
        active = await db.alerts("s1", active=True)
        applied_at = await db.query("SELECT seq, applied_at FROM events WHERE seq >= 7 ORDER BY seq")
        store = await db.store("s1")
    assert (resolved.applied, resolved.pending) == (0, 1)
    assert resolved.gap is not None
    assert (resolved.gap.applied_seq, resolved.gap.top_seq, resolved.gap.since) == (6, 9, 2.0)
    assert resolved.gap.missing == (SeqRange(first_seq=7, last_seq=8),)
    assert acked.gap is not None
    assert (acked.pending, acked.gap.since, acked.gap.missing) == (
        1,
        2.0,
        (SeqRange(first_seq=7, last_seq=7),),
    )
    assert waiting == []  # nothing of the alert is applied before its raise
    assert (raised.applied, raised.released, raised.pending, raised.gap) == (3, 2, 0, None)
    assert [(a.alert_id, a.state, a.acknowledged_by) for a in alerts] == [("al-2", "resolved", "li")]
    assert active == []
    assert applied_at == [
        (7, 4.0),
        (8, 4.0),
        (9, 4.0),
    ]  # the held ones applied by the batch that closed the hole
    assert store is not None
    assert (store.applied_seq, store.lost_ranges) == (9, ())


async def test_late_events_after_a_given_up_hole_cannot_roll_state_back(db_url: str) -> None:
    async with HubDB(db_url) as db:
        held = await db.apply_batch(_msg([alert_event(GW, 9, "al-2", AlertState.RESOLVED)]), 100.0)
        assert await db.give_up_gaps(159.0, give_up_s=60.0) == []  # not old enough yet
        assert await db.alerts("s1") == []
        ((gap, released),) = await db.give_up_gaps(160.0, give_up_s=60.0)
        assert await db.give_up_gaps(161.0, give_up_s=60.0) == []  # once
        after_give_up = [(a.state, a.acknowledged_by) for a in await db.alerts("s1")]
        acked = await db.apply_batch(
            _msg([alert_event(GW, 8, "al-2", AlertState.ACKNOWLEDGED, by="li")]), 200.0
        )
        raised = await db.apply_batch(_msg([alert_event(GW, 7, "al-2", AlertState.RAISED)]), 201.0)
        again = await db.apply_batch(_msg([alert_event(GW, 7, "al-2", AlertState.RAISED)]), 202.0)
        alerts = await db.alerts("s1")
        store = await db.store("s1")
    assert (held.applied, held.pending) == (0, 1)
    assert (gap.applied_seq, gap.since, gap.missing) == (0, 100.0, (SeqRange(first_seq=1, last_seq=8),))
    assert released == 1
    assert after_give_up == [("resolved", None)]
    assert (acked.applied, acked.late, acked.gap) == (1, 1, None)
    assert (raised.applied, raised.late) == (1, 1)
    assert (again.applied, again.duplicates) == (0, 1)
    assert [(a.state, a.acknowledged_by) for a in alerts] == [("resolved", "li")]  # forward only; who is kept
    assert store is not None
    assert (store.applied_seq, store.lost_ranges) == (9, (SeqRange(first_seq=1, last_seq=8),))


async def test_seq_ranges_report_gaps_and_close_them(db_url: str) -> None:
    async with HubDB(db_url) as db:
        await db.apply_batch(_msg([stock_event(GW, 1, "A01", 9), stock_event(GW, 2, "A01", 8)]), 1.0)
        await db.apply_batch(_msg([stock_event(GW, 5, "A01", 5)]), 1.0)
        await db.apply_batch(_msg([stock_event(GW, 9, "A01", 1), stock_event(GW, 10, "A01", 0)]), 1.0)
        gapped = await db.store("s1")
        await db.apply_batch(_msg([stock_event(GW, 3, "A01", 7), stock_event(GW, 4, "A01", 6)]), 1.0)
        await db.apply_batch(_msg([stock_event(GW, n, "A01", 10 - n) for n in range(6, 9)]), 1.0)
        closed = await db.store("s1")
        ranges = await db.query("SELECT first_seq, last_seq FROM seq_ranges")
    assert gapped is not None
    assert closed is not None
    assert (gapped.received_seq, gapped.contiguous_seq) == (10, 2)
    assert gapped.missing_ranges == (SeqRange(first_seq=3, last_seq=4), SeqRange(first_seq=6, last_seq=8))
    assert (closed.received_seq, closed.contiguous_seq, closed.missing_ranges) == (10, 10, ())
    assert ranges == [(1, 10)]


async def test_quarantine_keeps_text_or_hex(db_url: str) -> None:
    async with HubDB(db_url) as db:
        await db.quarantine("t/a", "bad-json: x", b"{oops", 1.0)
        await db.quarantine("t/b", "bad-json: y", b"\xff\x00", 2.0)
        items = await db.quarantined()
    assert [(q.topic, q.payload, q.payload_encoding, q.payload_size) for q in items] == [
        ("t/b", "ff00", "hex", 2),
        ("t/a", "{oops", "utf-8", 5),
    ]


async def test_schema_is_versioned_and_sqlite_is_wal(db_url: str) -> None:
    async with HubDB(db_url):
        pass
    async with HubDB(db_url) as db:  # reopening does not re-run migrations
        versions = await db.query("SELECT version FROM schema_version")
    assert versions == [(n,) for n in range(1, SCHEMA_VERSION + 1)]
    path = sqlite_file(db_url)
    if path is not None:
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        finally:
            conn.close()


def _heartbeat(store_id: str, *, last_seq: int, outbox_depth: int) -> HeartbeatMessage:
    parsed = parse_message(
        health_topic(store_id), heartbeat(GW, last_seq=last_seq, outbox_depth=outbox_depth)
    )
    assert isinstance(parsed, HeartbeatMessage)
    return parsed


def _answer(command_id: str, result: ResendResult | None, *, ok: bool = True) -> CommandResultMessage:
    payload = CommandResult(
        id=command_id,
        ok=ok,
        error=None if ok else "unknown command 'resend'",
        result=None if result is None else result.model_dump(mode="json"),
    )
    parsed = parse_message(command_result_topic("s1"), payload.model_dump_json(exclude_none=True).encode())
    assert isinstance(parsed, CommandResultMessage)
    return parsed


POLICY = ResendPolicy(retry_s=60.0, min_interval_s=10.0)


async def test_resend_is_claimed_once_retried_with_the_same_id_and_renewed_after_an_answer(
    db_url: str,
) -> None:
    async with HubDB(db_url) as db:
        await db.apply_batch(_msg([stock_event(GW, 1, "A01", 9)]), 100.0)
        await db.apply_batch(_msg([stock_event(GW, 4, "A01", 6)]), 100.0)
        await db.apply_batch(_msg([stock_event(GW, 7, "A01", 3), stock_event(GW, 8, "A01", 2)]), 100.0)
        first = await db.claim_resend("s1", GW, 101.0, POLICY)
        too_soon = await db.claim_resend("s1", GW, 150.0, POLICY)
        retry = await db.claim_resend("s1", GW, 161.0, POLICY)
        assert first is not None
        answer = await db.record_command_result(
            _answer(
                first.command.id,
                ResendResult(
                    requested=4, resent=2, already_queued=0, not_retained=[SeqSpan(first_seq=2, last_seq=3)]
                ),
            ),
            170.0,
        )
        redelivered = await db.record_command_result(_answer(first.command.id, None, ok=False), 171.0)
        store = await db.store("s1")
        right_after = await db.claim_resend("s1", GW, 175.0, POLICY)
        renewed = await db.claim_resend("s1", GW, 181.0, POLICY)
        stock = await db.stock("s1")
    assert first.command.args == {
        "ranges": [{"first_seq": 2, "last_seq": 3}, {"first_seq": 5, "last_seq": 6}]
    }
    assert (first.store_id, first.gateway_id, first.retry) == ("s1", GW, False)
    assert too_soon is None
    assert retry is not None
    assert (retry.retry, retry.command) == (True, first.command)  # same id: the gateway runs it once
    assert answer is not None
    assert answer.lost == (SeqRange(first_seq=2, last_seq=3),)
    assert answer.released == 1  # seq 4 applied once 2..3 were given up; 7..8 still wait for 5..6
    assert redelivered is None
    assert store is not None
    assert (store.applied_seq, store.lost_ranges) == (4, (SeqRange(first_seq=2, last_seq=3),))
    assert right_after is None  # answered 5 s ago
    assert renewed is not None
    assert renewed.command.id != first.command.id
    assert renewed.command.args == {"ranges": [{"first_seq": 5, "last_seq": 6}]}
    assert [(s.bin_id, s.count) for s in stock] == [("A01", 6)]


async def test_a_heartbeat_with_an_empty_outbox_reveals_a_missing_tail(db_url: str) -> None:
    async with HubDB(db_url) as db:
        await db.apply_batch(_msg([stock_event(GW, 1, "A01", 9), stock_event(GW, 2, "A01", 8)]), 10.0)
        busy = await db.record_heartbeat(_heartbeat("s1", last_seq=5, outbox_depth=3), 11.0)
        tail = await db.record_heartbeat(_heartbeat("s1", last_seq=5, outbox_depth=0), 12.0)
        due = await db.due_gaps(14.0, 2.0, 1000)
        not_yet = await db.due_gaps(13.0, 2.0, 1000)
        claim = await db.claim_resend("s1", GW, 14.0, POLICY)
        await db.apply_batch(_msg([stock_event(GW, n, "A01", 10 - n) for n in range(3, 6)]), 15.0)
        closed = await db.due_gaps(100.0, 2.0, 1000)
        store = await db.store("s1")
    assert busy is None  # events still queued at the gateway are not missing
    assert tail is not None
    assert (tail.applied_seq, tail.top_seq, tail.since, tail.missing) == (
        2,
        5,
        12.0,
        (SeqRange(first_seq=3, last_seq=5),),
    )
    assert due == [("s1", GW)]
    assert not_yet == []
    assert claim is not None
    assert claim.command.args == {"ranges": [{"first_seq": 3, "last_seq": 5}]}
    assert closed == []
    assert store is not None
    assert store.applied_seq == 5


async def test_a_hole_wider_than_the_window_is_due_at_once(db_url: str) -> None:
    async with HubDB(db_url) as db:
        result = await db.apply_batch(_msg([stock_event(GW, 50, "A01", 1)]), 10.0)
        due_wide = await db.due_gaps(10.0, 60.0, 10)
        due_narrow = await db.due_gaps(10.0, 60.0, 100)
    assert result.gap is not None
    assert result.gap.due(now=10.0, timeout_s=60.0, window_events=10)
    assert not result.gap.due(now=10.0, timeout_s=60.0, window_events=100)
    assert result.gap.due(now=70.0, timeout_s=60.0, window_events=100)
    assert (due_wide, due_narrow) == ([("s1", GW)], [])


async def test_an_event_type_without_an_effect_is_stored_and_does_not_block_its_store(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """How a type the contract gained before the hub has a service for it (e.g. a sale) behaves."""
    monkeypatch.delitem(EFFECTS, EventType.STOCK_CHANGED.value)
    async with HubDB(db_url) as db:
        result = await db.apply_batch(
            _msg([stock_event(GW, 1, "A01", 9), alert_event(GW, 2, "al", AlertState.RAISED)]), 1.0
        )
        events = await db.query("SELECT seq, applied_at FROM events ORDER BY seq")
        stock = await db.stock("s1")
        alerts = await db.alerts("s1")
    assert (result.applied, result.gap) == (2, None)
    assert events == [(1, 1.0), (2, 1.0)]
    assert stock == []
    assert [a.alert_id for a in alerts] == ["al"]


async def test_a_payload_with_nul_is_quarantined_as_hex(db_url: str) -> None:
    async with HubDB(db_url) as db:
        quarantine_id = await db.quarantine("t/n", "bad: a\x00b", b'{"a": "\x00"}', 1.0)
        (item,) = await db.quarantined()
    assert item.id == quarantine_id
    assert (item.reason, item.payload_encoding, item.payload) == (
        "bad: a\\x00b",
        "hex",
        b'{"a": "\x00"}'.hex(),
    )


async def test_a_v1_database_is_migrated_in_place(new_db_url: DbUrlFactory) -> None:
    """A hub of the previous release applied events on arrival; its cursor starts at their contiguous
    prefix, the rows past a v1 hole count as applied, and the hole is still asked for."""
    url = new_db_url()
    probe = HubDB(url)
    engine = create_engine(probe.url)
    try:
        with engine.begin() as conn:
            for statement in ddl(_MIGRATIONS[0], probe.dialect):
                conn.execute(text(statement))
            conn.execute(text("CREATE TABLE schema_version (version INTEGER NOT NULL)"))
            conn.execute(text("INSERT INTO schema_version (version) VALUES (1)"))
            conn.execute(text("INSERT INTO stores (store_id, first_seen_at) VALUES ('s1', 1.0)"))
            for seq in (1, 2, 3, 6):
                conn.execute(
                    text(
                        "INSERT INTO events (id, store_id, gateway_id, seq, type, ts, data, received_at)"
                        " VALUES (:id, 's1', :gw, :seq, 'stock.changed', 't', '{}', 5.0)"
                    ),
                    {"id": f"{GW}:{seq}", "gw": GW, "seq": seq},
                )
            conn.execute(
                text(
                    "INSERT INTO seq_ranges (store_id, gateway_id, first_seq, last_seq)"
                    " VALUES ('s1', :gw, 1, 3), ('s1', :gw, 6, 6)"
                ),
                {"gw": GW},
            )
    finally:
        engine.dispose()
    async with HubDB(url) as db:
        versions = await db.query("SELECT version FROM schema_version ORDER BY version")
        applied = await db.query("SELECT seq, applied_at FROM events ORDER BY seq")
        filled = await db.apply_batch(_msg([stock_event(GW, 4, "A01", 4), stock_event(GW, 5, "A01", 3)]), 9.0)
        store = await db.store("s1")
    assert versions == [(n,) for n in range(1, SCHEMA_VERSION + 1)]
    assert applied == [(1, 5.0), (2, 5.0), (3, 5.0), (6, 5.0)]
    assert (filled.applied, filled.released) == (2, 0)  # 6 was applied by v1: passed over, not re-applied
    assert store is not None
    assert store.applied_seq == 6


async def test_workers_starting_together_migrate_once(new_db_url: DbUrlFactory) -> None:
    url = new_db_url()
    dbs = [HubDB(url) for _ in range(4)]
    await asyncio.gather(*(db.__aenter__() for db in dbs))
    try:
        versions = await dbs[0].query("SELECT version FROM schema_version ORDER BY version")
    finally:
        for db in dbs:
            await db.__aexit__(None, None, None)
    assert versions == [(n,) for n in range(1, SCHEMA_VERSION + 1)]


async def test_two_workers_on_one_database_apply_each_event_once_in_order(new_db_url: DbUrlFactory) -> None:
    """Two connections (as two worker processes) get alternate batches of six stores, shuffled, some twice:
    the final stock is exact and every event's effect ran once."""
    url = new_db_url()
    rng = random.Random(4)
    stores = [f"s{n}" for n in range(6)]
    payloads: list[BatchMessage] = []
    for store_id in stores:
        counts = iter(range(10_000, 0, -1))
        gateway_id = f"{store_id}-gw"
        for first in range(1, 61, 5):
            events = [
                stock_event(gateway_id, seq, f"B{seq % 3}", next(counts)) for seq in range(first, first + 5)
            ]
            parsed = parse_message(events_topic(store_id), batch(store_id, gateway_id, events))
            assert isinstance(parsed, BatchMessage)
            payloads.append(parsed)
    deliveries = payloads + rng.sample(payloads, 15)
    rng.shuffle(deliveries)
    async with HubDB(url) as one, HubDB(url) as two:
        results = await asyncio.gather(
            *((one if n % 2 else two).apply_batch(message, float(n)) for n, message in enumerate(deliveries))
        )
        stock = {s: [(i.bin_id, i.count) for i in await one.stock(s)] for s in stores}
        records = await two.stores()
    assert sum(r.applied for r in results) == 6 * 60
    assert sum(r.duplicates for r in results) == 15 * 5
    last_counts = [("B0", 10_000 - 59), ("B1", 10_000 - 57), ("B2", 10_000 - 58)]  # seqs 60, 58, 59
    assert stock == dict.fromkeys(stores, last_counts)
    assert [(r.store_id, r.applied_seq, r.missing_ranges) for r in records] == [(s, 60, ()) for s in stores]


async def test_one_gateway_id_under_two_stores_never_applies_an_event_twice(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Event ids are `{gateway_id}:{seq}`, unique only while each gateway id belongs to one store. A second
    store reusing one (a config mistake) must not apply the first store's events again."""
    events = [stock_event("shared-gw", 1, "A01", 9), stock_event("shared-gw", 2, "A01", 8)]
    first = parse_message(events_topic("s1"), batch("s1", "shared-gw", events))
    second = parse_message(events_topic("s2"), batch("s2", "shared-gw", events))
    assert isinstance(first, BatchMessage)
    assert isinstance(second, BatchMessage)
    async with HubDB(db_url) as db:
        applied = await db.apply_batch(first, 1.0)
        reused = await db.apply_batch(second, 2.0)
        stock = {s: await db.stock(s) for s in ("s1", "s2")}
    assert (applied.applied, reused.applied, reused.duplicates) == (2, 0, 2)
    assert [i.count for i in stock["s1"]] == [8]
    assert stock["s2"] == []
    assert "used by two stores" in caplog.text
