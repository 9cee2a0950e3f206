"""`edge.bookstock` on a real SQLite file: moves inside the caller's transaction, idempotent per (cause, ref, gtin)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from edge import bookstock

COLA, APPLES = "06901234567892", "02200001000001"


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    c = sqlite3.connect(tmp_path / "gateway.db", isolation_level=None)
    try:
        bookstock.ensure_schema(c)
        bookstock.ensure_schema(c)  # idempotent
        yield c
    finally:
        c.close()


def test_moves_add_up_exactly_and_repeat_nothing(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN")
    assert bookstock.apply_deltas(
        conn, {COLA: 24, APPLES: Decimal("5.000")}, cause="received", ref="R1", ts=1.0
    ) == {
        COLA: Decimal(24),
        APPLES: Decimal(5),
    }
    conn.execute("COMMIT")
    for i in range(10):  # 10 × 0.123 kg: kept to the gram, no float drift
        bookstock.apply_deltas(conn, {APPLES: Decimal("-0.123")}, cause="sale", ref=f"T{i}", ts=2.0 + i)
    # The same delivery note again (a retry that cannot tell whether the first attempt committed): no change.
    assert bookstock.apply_deltas(conn, {COLA: 24}, cause="received", ref="R1", ts=20.0) == {}
    # A stocktake finds one cola less; a zero delta is no move.
    assert bookstock.apply_deltas(conn, {COLA: -1, APPLES: 0}, cause="stocktake", ref="S1", ts=21.0) == {
        COLA: Decimal(-1)
    }
    assert bookstock.book_stock(conn) == {APPLES: Decimal("3.770"), COLA: Decimal("23.000")}
    assert bookstock.book_stock(conn, [COLA, "06900000000007"]) == {COLA: Decimal("23.000")}
    assert [(m.cause, m.ref, m.delta) for m in bookstock.moves(conn, gtin=COLA)] == [
        ("stocktake", "S1", Decimal("-1.000")),
        ("received", "R1", Decimal("24.000")),
    ]
    assert len(bookstock.moves(conn, ref="T3")) == 1


def test_a_rolled_back_caller_leaves_no_move(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN")
    bookstock.apply_deltas(conn, {COLA: -2}, cause="sale", ref="T1", ts=1.0)
    conn.execute("ROLLBACK")
    assert bookstock.book_stock(conn) == {}
    assert bookstock.moves(conn) == []
    # ...so the retry applies it (the unique key did not survive the rollback either).
    assert bookstock.apply_deltas(conn, {COLA: -2}, cause="sale", ref="T1", ts=2.0) == {COLA: Decimal(-2)}


def test_unknown_cause_and_empty_ref_are_refused(conn: sqlite3.Connection) -> None:
    with pytest.raises(ValueError, match="unknown book-stock cause 'sold'"):
        bookstock.apply_deltas(conn, {COLA: 1}, cause="sold", ref="T1", ts=1.0)
    with pytest.raises(ValueError, match="needs a ref"):
        bookstock.apply_deltas(conn, {COLA: 1}, cause="sale", ref="", ts=1.0)
    assert bookstock.moves(conn) == []
