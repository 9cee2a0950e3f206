"""What the serial (`client.py`) and LLRP (`llrp.py`) reader clients share: the consumer's event queue.

Both hand tag reads and availability changes to one consumer through a bounded queue with the same overflow
policy (STYLE.md rule 6): when the consumer falls behind, new reads are dropped and counted with one warning
per episode; an availability change evicts the oldest read instead, so it always gets through. Closing puts
a `None` sentinel that ends every `events()` iterator. No protocol logic lives here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from drivers.rfid.models import Availability, TagRead


class _DropCounter(Protocol):
    dropped_reads: int


class ReaderEvents:
    """The bounded queue between a reader client's loop and its consumer."""

    def __init__(self, size: int, counters: _DropCounter, *, on_overflow: Callable[[], None]) -> None:
        self._queue: asyncio.Queue[TagRead | Availability | None] = asyncio.Queue(size)
        self._counters = counters
        self._on_overflow = on_overflow
        """Called once when an overflow episode starts (the client logs it under its own logger)."""
        self._overflowing = False
        self.closed = False
        """Set by the client when it starts closing: from then on `put` ignores items."""

    @property
    def maxsize(self) -> int:
        return self._queue.maxsize

    def put(self, item: TagRead | Availability) -> None:
        if self.closed:
            return
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self._counters.dropped_reads += 1
            if isinstance(item, TagRead):
                if not self._overflowing:
                    self._overflowing = True
                    self._on_overflow()
                return
            self._queue.get_nowait()  # evict the oldest read: availability must get through
            self._queue.put_nowait(item)
            return
        if self._overflowing and self._queue.qsize() < self._queue.maxsize // 2:
            self._overflowing = False

    def end(self) -> None:
        """Put the end-of-stream sentinel (making room for it if need be)."""
        if self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    async def events(self) -> AsyncIterator[TagRead | Availability]:
        """Tag reads and availability changes, in arrival order, until the client is closed."""
        while True:
            item = await self._queue.get()
            if item is None:
                self._queue.put_nowait(None)  # let any other iterator end too
                return
            yield item

    async def reads(self) -> AsyncIterator[TagRead]:
        """Only the tag reads of `events()`."""
        async for item in self.events():
            if isinstance(item, TagRead):
                yield item
