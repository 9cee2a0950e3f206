"""The gateway store on a real SQLite file: sent events kept for a bounded retention, and resent on request."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cloud_bridge.resend import ResendResult, SeqSpan
from edge.store import PRIORITY_HIGH, PRIORITY_LEVEL, SCHEMA_VERSION, GatewayStore, NewEvent

DAY_S = 86_400.0


class Clock:
    """Epoch seconds the test moves by hand, so ageing needs no waiting."""

    def __init__(self, now: float = 1_790_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _events(n: int, *, priority: int = PRIORITY_HIGH) -> list[NewEvent]:
    return [NewEvent("stock.changed", "2026-11-23T10:00:00.000Z", {"i": i}, priority) for i in range(n)]


async def _send_all(store: GatewayStore) -> list[int]:
    """What the uplink does: peek, publish (here: nothing), ack — until the outbox is empty."""
    sent: list[int] = []
    while rows := await store.peek(50):
        sent.extend(r.seq for r in rows)
        await store.ack_through(rows[-1].seq)
    return sent


def _spans(*pairs: tuple[int, int]) -> list[SeqSpan]:
    return [SeqSpan(first_seq=a, last_seq=b) for a, b in pairs]


async def test_sent_events_stay_in_the_ledger_and_resend_requeues_them_with_their_seq(tmp_path: Path) -> None:
    async with GatewayStore(tmp_path / "gw.db") as store:
        await store.record(_events(3) + _events(2, priority=PRIORITY_LEVEL))
        assert await _send_all(store) == [1, 2, 3, 4, 5]
        assert await store.depth() == (0, None)
        result = await store.resend(_spans((2, 4)))
        requeued = await store.peek(10)
        retained = await store.retained()
    assert result == ResendResult(requested=3, resent=3, already_queued=0)
    assert [(r.seq, r.data, r.priority) for r in requeued] == [
        (2, {"i": 1}, PRIORITY_HIGH),
        (3, {"i": 2}, PRIORITY_HIGH),
        (4, {"i": 0}, PRIORITY_LEVEL),
    ]
    assert retained == (5, 1, 5)


async def test_resend_reports_queued_unretained_and_unallocated_ranges(tmp_path: Path) -> None:
    clock = Clock()
    async with GatewayStore(tmp_path / "gw.db", retention_max_events=4, clock=clock) as store:
        await store.record(_events(10))
        await _send_all(store)  # seqs 1..10 sent; the count limit keeps 7..10
        await store.record(_events(2))  # 11, 12 still waiting in the outbox
        result = await store.resend(_spans((12, 14), (1, 2), (5, 8), (2, 3)))
        again = await store.resend(_spans((7, 8)))  # still queued from the first resend
    assert result == ResendResult(
        requested=10,  # union 1..3, 5..8, 12..14
        resent=2,  # 7, 8
        already_queued=1,  # 12
        not_retained=_spans((1, 3), (5, 6)),
        not_allocated=_spans((13, 14)),
    )
    assert again == ResendResult(requested=2, resent=0, already_queued=2)


async def test_retention_by_count_and_by_age_never_touches_unsent_rows(tmp_path: Path) -> None:
    clock = Clock()
    async with GatewayStore(
        tmp_path / "gw.db", retention_max_events=1000, retention_max_age_s=7 * DAY_S, clock=clock
    ) as store:
        await store.record(_events(5))  # day 0: 1..5
        await _send_all(store)
        clock.now += 3 * DAY_S
        await store.record(_events(5))  # day 3: 6..10, left unsent (the broker is away)
        clock.now += 5 * DAY_S  # day 8: 1..5 are past the week
        pruned = await store.prune()
        after_age = await store.retained()
        clock.now += 30 * DAY_S  # 6..10 are old too, but were never sent
        await store.prune()
        unsent_kept = await store.retained()
        await _send_all(store)  # sent now: the PUBACK applies the retention at once
        after_send = await store.retained()
    assert pruned == 5
    assert after_age == (5, 6, 10)
    assert unsent_kept == (5, 6, 10)
    assert after_send == (0, None, None)


async def test_a_resend_during_an_in_flight_batch_survives_that_batchs_puback(tmp_path: Path) -> None:
    """The uplink peeks 4..6 and publishes; a resend of 1..2 lands before the PUBACK. `ack_through(6)` must
    not delete the resent rows, which the uplink never saw."""
    async with GatewayStore(tmp_path / "gw.db") as store:
        await store.record(_events(3))
        await _send_all(store)
        await store.record(_events(3))
        in_flight = await store.peek(10)
        resent = await store.resend(_spans((1, 2)))
        await store.ack_through(in_flight[-1].seq)
        next_batch = await store.peek(10)
        await store.ack_through(next_batch[-1].seq)
        left = await store.depth()
    assert [r.seq for r in in_flight] == [4, 5, 6]
    assert resent.resent == 2
    assert [r.seq for r in next_batch] == [1, 2]
    assert left == (0, None)


async def test_a_resent_row_survives_a_restart_before_it_is_sent(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    async with GatewayStore(path) as store:
        await store.record(_events(3))
        await _send_all(store)
        await store.resend(_spans((2, 2)))
    async with GatewayStore(path) as store:
        await store.ack_through(3)  # a stale PUBACK path without a peek deletes nothing unseen
        rows = await store.peek(10)
        await store.ack_through(rows[-1].seq)
        later = await store.resend(_spans((3, 3)))  # generations continue after the restart
        await store.ack_through(2)
        still = await store.peek(10)
    assert [r.seq for r in rows] == [2]
    assert later.resent == 1
    assert [r.seq for r in still] == [3]


async def test_a_v1_database_is_migrated_and_its_old_rows_expire_a_retention_after_the_upgrade(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gw.db"
    conn = sqlite3.connect(path)  # the v1 layout, as a gateway of the previous release left it
    conn.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
        INSERT INTO meta VALUES ('schema_version', '1'), ('last_seq', '3');
        CREATE TABLE bins (bin_id TEXT PRIMARY KEY, sku TEXT, count INTEGER, weight_g FLOAT,
                           baseline_g FLOAT, uncertain INTEGER, updated_ts FLOAT);
        CREATE TABLE ledger (seq INTEGER PRIMARY KEY, type TEXT, ts TEXT, data TEXT);
        CREATE TABLE outbox (seq INTEGER PRIMARY KEY, type TEXT, ts TEXT, data TEXT, priority INTEGER,
                             created_at FLOAT);
        CREATE TABLE alerts (alert_id TEXT PRIMARY KEY, bin_id TEXT, sku TEXT, kind TEXT, state TEXT,
                             count INTEGER, message TEXT, raised_at TEXT, updated_at TEXT,
                             acknowledged_by TEXT, acknowledged_at TEXT, resolved_at TEXT);
        INSERT INTO ledger VALUES (1, 'stock.changed', 't', '{}'), (2, 'stock.changed', 't', '{}'),
                                  (3, 'stock.changed', 't', '{}');
        INSERT INTO outbox VALUES (3, 'stock.changed', 't', '{}', 1, 0.0);
        """
    )
    conn.close()
    clock = Clock()
    async with GatewayStore(path, clock=clock) as store:
        ledger = await store.ledger()
        resent = await store.resend(_spans((1, 3)))
        clock.now += 8 * DAY_S
        await _send_all(store)
        after = await store.retained()
    version = sqlite3.connect(path).execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert version == (str(SCHEMA_VERSION),)
    assert [(r.seq, r.priority, r.created_mono) for r in ledger] == [
        (1, PRIORITY_HIGH, Clock().now),
        (2, PRIORITY_HIGH, Clock().now),
        (3, PRIORITY_LEVEL, Clock().now),
    ]
    assert resent == ResendResult(requested=3, resent=2, already_queued=1)
    assert after == (0, None, None)


def test_retention_limits_must_not_be_negative(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="retention"):
        GatewayStore(tmp_path / "gw.db", retention_max_events=-1)
