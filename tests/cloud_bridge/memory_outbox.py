"""A real in-memory `cloud_bridge.outbox.Outbox`: the seam the uplink drains, without SQLite.

It honours the protocol exactly as `edge/store.py` does: rows in seq order, `ack_through` deletes every
row ≤ seq, `wait_for_rows` returns after an append (an `asyncio.Event`) or after its timeout.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from cloud_bridge.contract import rfc3339
from cloud_bridge.outbox import Outbox, OutboxRow


def stock_changed(seq: int) -> dict[str, Any]:
    """A plausible `stock.changed` payload whose count encodes the seq (handy when reading failures)."""
    return {
        "bin_id": f"A-{seq % 7:02d}",
        "sku": "4006381333931",
        "count": seq % 50,
        "delta": -1,
        "cause": "pick",
        "weight_g": 125.0 * (seq % 50),
        "safety_stock": 5,
        "max_stock": 48,
    }


class MemoryOutbox:
    """Durable-in-RAM outbox with gap-free seqs; records every `ack_through` for the tests."""

    def __init__(self) -> None:
        self._rows: dict[int, OutboxRow] = {}
        self._last_seq = 0
        self._rows_waiting = asyncio.Event()
        self.acks: list[int] = []
        """Every `ack_through(last_seq)` argument, in call order."""

    # --- the gateway side ------------------------------------------------------------------------------

    def append(self, event_type: str = "stock.changed", data: dict[str, Any] | None = None) -> int:
        """Allocate the next seq and store a row, as the gateway does in one transaction."""
        self._last_seq += 1
        seq = self._last_seq
        self._rows[seq] = OutboxRow(
            seq=seq,
            event_type=event_type,
            ts=rfc3339(time.time()),
            data=stock_changed(seq) if data is None else data,
            priority=0,
            created_mono=time.monotonic(),
        )
        self._rows_waiting.set()
        return seq

    def append_many(self, count: int) -> list[int]:
        """`count` stock.changed rows."""
        return [self.append() for _ in range(count)]

    def discard(self, seq: int) -> None:
        """Drop one row without an ack, as a disk quota would (makes a hole in seq)."""
        del self._rows[seq]

    @property
    def seqs(self) -> list[int]:
        """Seqs still waiting, in order."""
        return sorted(self._rows)

    @property
    def last_seq(self) -> int:
        """The last seq ever allocated."""
        return self._last_seq

    # --- the Outbox protocol ---------------------------------------------------------------------------

    async def peek(self, limit: int) -> list[OutboxRow]:
        """The oldest `limit` rows in seq order."""
        return [self._rows[seq] for seq in sorted(self._rows)[:limit]]

    async def ack_through(self, last_seq: int) -> int:
        """Delete every row with seq ≤ last_seq."""
        self.acks.append(last_seq)
        doomed = [seq for seq in self._rows if seq <= last_seq]
        for seq in doomed:
            del self._rows[seq]
        return len(doomed)

    async def depth(self) -> tuple[int, float | None]:
        """(rows waiting, age of the oldest in seconds)."""
        if not self._rows:
            return 0, None
        oldest = self._rows[min(self._rows)]
        return len(self._rows), max(0.0, time.monotonic() - oldest.created_mono)

    async def wait_for_rows(self, timeout_s: float) -> None:
        """Return after an append, or after timeout_s."""
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancel that lands as the event fires
        # (CPython gh-86296), and the uplink's drain task would then never stop.
        try:
            async with asyncio.timeout(timeout_s):
                await self._rows_waiting.wait()
        except TimeoutError:
            return
        self._rows_waiting.clear()


def _conforms(outbox: MemoryOutbox) -> Outbox:
    """mypy proves here that MemoryOutbox satisfies the protocol."""
    return outbox
