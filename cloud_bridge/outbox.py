"""The seam between the gateway's durable outbox (edge/store.py, SQLite) and the uplink that drains it.

cloud_bridge may not import edge, so the uplink sees the outbox only through this protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One durable event waiting for the broker's PUBACK."""

    seq: int
    """Per-gateway, gap-free, monotonic; allocated in the same transaction that wrote the row."""
    event_type: str
    ts: str
    """RFC 3339 UTC."""
    data: dict[str, Any]
    priority: int
    """0 = sales/alerts (never dropped first), 1 = level updates."""
    created_mono: float = 0.0


class Outbox(Protocol):
    """What the uplink needs from the store. Implementations must be safe to call from the event loop."""

    async def peek(self, limit: int) -> list[OutboxRow]:
        """The oldest `limit` rows in seq order, without removing them."""
        ...

    async def ack_through(self, last_seq: int) -> int:
        """Delete every row with seq ≤ last_seq after the broker acknowledged them; return rows deleted."""
        ...

    async def depth(self) -> tuple[int, float | None]:
        """(rows waiting, age in seconds of the oldest row or None)."""
        ...

    async def wait_for_rows(self, timeout_s: float) -> None:
        """Return when rows may be waiting (after an append) or after timeout_s, whichever is first."""
        ...
