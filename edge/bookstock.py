"""Book stock: what the store's records say it holds per GTIN, and the ledger of every move that changed it.

Book stock is the *recorded* quantity (sales subtract, returns and deliveries add, a stocktake corrects);
the shelf's *counted* stock comes from the weighing engine. Both live in the gateway database; this module
owns two tables in it, created idempotently by `ensure_schema`:

    book_stock(gtin TEXT PRIMARY KEY, qty REAL NOT NULL, updated_at REAL NOT NULL)
    book_stock_moves(id INTEGER PRIMARY KEY, gtin TEXT, delta REAL, cause TEXT, ref TEXT, ts REAL,
                     UNIQUE(cause, ref, gtin))

Units: counted goods in units, variable-measure goods in kg (`edge.retail.lane.stock_deltas`,
docs/store-workflows.md "Book stock"). Quantities are added as `Decimal` and stored rounded to 0.001 (1 g), so
a REAL column holds them exactly enough that `Decimal(repr(qty))` gives the value back; a GTIN never moved
has no row (its book stock is unknown, not zero).

**Every function takes the caller's `sqlite3.Connection` and runs inside the caller's transaction** — it never
begins or commits. That is the point: a sale's outbox row, its journal entry and its stock moves commit
together or not at all (`GatewayStore.transact` runs a function on the store thread in one transaction):

    await store.transact(lambda conn: bookstock.apply_deltas(conn, {"06901234567892": 24},
                                                             cause="received", ref=receipt_id, ts=now))

**Idempotent per (cause, ref, gtin)**: applying the same move twice (a retried delivery note, a replayed
stocktake confirm) changes nothing the second time, so a caller that cannot tell whether its first attempt
committed may simply apply again. `ref` must therefore identify the business fact (transaction id, receipt
id, stocktake session id), never a fresh UUID per attempt.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Final

QTY_STEP: Final = Decimal("0.001")
"""Book quantities are kept to 1 g (kg goods) / 0.001 unit; counted goods move by whole units anyway."""

CAUSE_SALE: Final = "sale"
CAUSE_RETURN: Final = "return"
CAUSE_RECEIVED: Final = "received"
CAUSE_STOCKTAKE: Final = "stocktake"
CAUSE_ADJUSTMENT: Final = "adjustment"
CAUSES: Final = frozenset({CAUSE_SALE, CAUSE_RETURN, CAUSE_RECEIVED, CAUSE_STOCKTAKE, CAUSE_ADJUSTMENT})
"""The known causes of a move (a move with another cause is refused: a typo must not hide a move)."""

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS book_stock (gtin TEXT PRIMARY KEY, qty REAL NOT NULL, updated_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS book_stock_moves (id INTEGER PRIMARY KEY, gtin TEXT NOT NULL,"
    " delta REAL NOT NULL, cause TEXT NOT NULL, ref TEXT NOT NULL, ts REAL NOT NULL, UNIQUE(cause, ref, gtin))",
    "CREATE INDEX IF NOT EXISTS book_stock_moves_gtin ON book_stock_moves (gtin, id)",
)


@dataclass(frozen=True, slots=True)
class Move:
    """One ledger entry: `delta` of `gtin` because of `cause` (`ref` names the sale, receipt, session…)."""

    id: int
    gtin: str
    delta: Decimal
    cause: str
    ref: str
    ts: float


def _dec(value: float | int) -> Decimal:
    return Decimal(repr(float(value))).quantize(QTY_STEP, rounding=ROUND_HALF_UP)


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the two tables if missing (idempotent; safe inside or outside a transaction)."""
    for statement in _SCHEMA:
        conn.execute(statement)


def apply_deltas(
    conn: sqlite3.Connection,
    deltas: Mapping[str, Decimal | int],
    *,
    cause: str,
    ref: str,
    ts: float,
) -> dict[str, Decimal]:
    """Add `deltas` (GTIN → signed quantity) to book stock and the ledger, in the caller's transaction.

    Returns the moves applied (GTIN → delta); a GTIN whose (cause, ref, gtin) move already exists is skipped
    (idempotent retry) and zero deltas are left out. Negative results are kept: book stock below zero is a
    fact worth a stocktake, not an error. `ValueError` for an unknown `cause` or an empty `ref`.
    """
    if cause not in CAUSES:
        raise ValueError(f"unknown book-stock cause {cause!r} (one of {sorted(CAUSES)})")
    if not ref:
        raise ValueError("a book-stock move needs a ref (the sale, receipt or session it belongs to)")
    applied: dict[str, Decimal] = {}
    for gtin, raw in deltas.items():
        delta = Decimal(raw).quantize(QTY_STEP, rounding=ROUND_HALF_UP)
        if delta == 0:
            continue
        inserted = conn.execute(
            "INSERT OR IGNORE INTO book_stock_moves (gtin, delta, cause, ref, ts) VALUES (?, ?, ?, ?, ?)",
            (gtin, float(delta), cause, ref, ts),
        ).rowcount
        if not inserted:
            continue
        row = conn.execute("SELECT qty FROM book_stock WHERE gtin = ?", (gtin,)).fetchone()
        qty = (_dec(row[0]) if row is not None else Decimal(0)) + delta
        conn.execute(
            "INSERT INTO book_stock (gtin, qty, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT(gtin) DO UPDATE SET qty = excluded.qty, updated_at = excluded.updated_at",
            (gtin, float(qty), ts),
        )
        applied[gtin] = delta
    return applied


def book_stock(conn: sqlite3.Connection, gtins: list[str] | None = None) -> dict[str, Decimal]:
    """Book stock per GTIN (all GTINs ever moved, or only `gtins`; a GTIN never moved is absent)."""
    if gtins is None:
        rows = conn.execute("SELECT gtin, qty FROM book_stock ORDER BY gtin").fetchall()
    else:
        marks = ",".join("?" * len(gtins))
        # Only "?" placeholders are interpolated; the GTINs go in as parameters.
        rows = conn.execute(
            f"SELECT gtin, qty FROM book_stock WHERE gtin IN ({marks}) ORDER BY gtin",  # noqa: S608
            gtins,
        ).fetchall()
    return {str(g): _dec(q) for g, q in rows}


def moves(
    conn: sqlite3.Connection, *, gtin: str | None = None, ref: str | None = None, limit: int = 100
) -> list[Move]:
    """Ledger entries, newest first, optionally of one GTIN and/or one ref."""
    where, args = [], []
    if gtin is not None:
        where.append("gtin = ?")
        args.append(gtin)
    if ref is not None:
        where.append("ref = ?")
        args.append(ref)
    # The WHERE parts are the constants above; values go in as parameters.
    sql = "SELECT id, gtin, delta, cause, ref, ts FROM book_stock_moves" + (  # noqa: S608
        " WHERE " + " AND ".join(where) if where else ""
    )
    rows = conn.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
    return [Move(int(r[0]), str(r[1]), _dec(r[2]), str(r[3]), str(r[4]), float(r[5])) for r in rows]


__all__ = [
    "CAUSES",
    "CAUSE_ADJUSTMENT",
    "CAUSE_RECEIVED",
    "CAUSE_RETURN",
    "CAUSE_SALE",
    "CAUSE_STOCKTAKE",
    "Move",
    "apply_deltas",
    "book_stock",
    "ensure_schema",
    "moves",
]
