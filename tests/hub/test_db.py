"""The hub store on a real SQLite file: at-most-once apply, commutative effects, seq ranges, quarantine."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

from cloud_bridge.contract import AlertState, Event, events_topic
from hub.db import SCHEMA_VERSION, HubDB
from hub.models import SeqRange
from hub.parse import BatchMessage, parse_message
from tests.hub.fakes import alert_event, batch, stock_event

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


async def test_any_delivery_order_converges_to_the_in_order_state(tmp_path: Path) -> None:
    async with HubDB(tmp_path / "ordered.db") as db:
        for events in BATCHES:
            await db.apply_batch(_msg(events), 1.0)
        expected = await _state(db)
    stock, alerts = expected
    assert [(s.bin_id, s.count) for s in stock] == [("A01", 5), ("B01", 7)]  # type: ignore[attr-defined]
    assert [(a.state, a.acknowledged_by, a.count) for a in alerts] == [("resolved", "mei", 5)]  # type: ignore[attr-defined]
    for n, order in enumerate(itertools.permutations(BATCHES)):
        async with HubDB(tmp_path / f"perm{n}.db") as db:
            for events in order:
                await db.apply_batch(_msg(events), 1.0)
            assert await _state(db) == expected, [e[0].seq for e in order]


async def test_a_redelivered_batch_applies_once_even_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    async with HubDB(path) as db:
        first = await db.apply_batch(_msg(BATCHES[0]), 1.0)
        again = await db.apply_batch(_msg(BATCHES[0]), 2.0)
    assert (first.applied, first.duplicates) == (3, 0)
    assert (again.applied, again.duplicates) == (0, 3)
    async with HubDB(path) as db:  # the constraint, not process memory, makes it at-most-once
        after_restart = await db.apply_batch(_msg(BATCHES[0]), 3.0)
        rows = await db.query("SELECT id, received_at FROM events ORDER BY seq")
    assert (after_restart.applied, after_restart.duplicates) == (0, 3)
    assert rows == [(f"{GW}:1", 1.0), (f"{GW}:2", 1.0), (f"{GW}:3", 1.0)]


async def test_a_partially_overlapping_batch_applies_only_the_new_events(tmp_path: Path) -> None:
    async with HubDB(tmp_path / "hub.db") as db:
        await db.apply_batch(_msg([stock_event(GW, 1, "A01", 9), stock_event(GW, 2, "A01", 8)]), 1.0)
        result = await db.apply_batch(_msg([stock_event(GW, 2, "A01", 8), stock_event(GW, 3, "A01", 7)]), 2.0)
        stock = await db.stock("s1")
    assert (result.applied, result.duplicates) == (1, 1)
    assert [(s.bin_id, s.count, s.updated_ts) for s in stock] == [("A01", 7, stock_event(GW, 3, "A01", 7).ts)]


async def test_acknowledgement_after_resolution_keeps_state_and_records_who(tmp_path: Path) -> None:
    async with HubDB(tmp_path / "hub.db") as db:
        await db.apply_batch(_msg([alert_event(GW, 9, "al-2", AlertState.RESOLVED)]), 1.0)
        await db.apply_batch(_msg([alert_event(GW, 8, "al-2", AlertState.ACKNOWLEDGED, by="li")]), 1.0)
        await db.apply_batch(_msg([alert_event(GW, 7, "al-2", AlertState.RAISED)]), 1.0)
        alerts = await db.alerts("s1")
        active = await db.alerts("s1", active=True)
        resolved = await db.alerts("s1", active=False)
    assert [(a.alert_id, a.state, a.acknowledged_by) for a in alerts] == [("al-2", "resolved", "li")]
    assert active == []
    assert resolved == alerts


async def test_seq_ranges_report_gaps_and_close_them(tmp_path: Path) -> None:
    async with HubDB(tmp_path / "hub.db") as db:
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


async def test_quarantine_keeps_text_or_hex(tmp_path: Path) -> None:
    async with HubDB(tmp_path / "hub.db") as db:
        await db.quarantine("t/a", "bad-json: x", b"{oops", 1.0)
        await db.quarantine("t/b", "bad-json: y", b"\xff\x00", 2.0)
        items = await db.quarantined()
    assert [(q.topic, q.payload, q.payload_encoding, q.payload_size) for q in items] == [
        ("t/b", "ff00", "hex", 2),
        ("t/a", "{oops", "utf-8", 5),
    ]


async def test_schema_is_versioned_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    async with HubDB(path):
        pass
    async with HubDB(path):  # reopening does not re-run migrations
        pass
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()
