"""Real SQLite sales rows for the signal tests (the lanes' own `sales` schema, `edge.lanes.ensure_schema`)."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path

from cloud_bridge.contract import SaleCompleted, SaleItem, rfc3339
from edge.lanes import ensure_schema


def sales_db(path: Path) -> sqlite3.Connection:
    """A SQLite file with the lanes' tables."""
    conn = sqlite3.connect(path, isolation_level=None)
    ensure_schema(conn)
    return conn


def insert_sale(
    conn: sqlite3.Connection, transaction_id: str, ts: float, qty: dict[str, int], *, kind: str = "sale"
) -> None:
    """One completed sale (or a row of kind `return`) as the lanes store it: the wire payload as JSON."""
    items = [SaleItem(gtin=g, qty=n, unit_price=Decimal("1.00"), amount=Decimal(n)) for g, n in qty.items()]
    total = sum((i.amount for i in items), Decimal(0))
    payload = SaleCompleted(
        transaction_id=transaction_id, lane="lane1", cashier="c1", items=items, total=total, ts=rfc3339(ts)
    )
    conn.execute(
        "INSERT INTO sales (transaction_id, kind, original_transaction_id, lane, ts, total, json)"
        " VALUES (?, ?, NULL, ?, ?, ?, ?)",
        (transaction_id, kind, "lane1", payload.ts, str(total), payload.model_dump_json()),
    )
