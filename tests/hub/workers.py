"""Hub workers for tests: an `Ingest` with its own MQTT client and its own `HubDB` connection, as one
`shelfgate hub` process would run it (without the HTTP API)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from hub.config import BrokerConfig, HubConfig, IngestConfig
from hub.db import HubDB
from hub.ingest import Ingest
from shelfgate.broker import Mosquitto

WAIT_S = 60.0


@dataclass
class Worker:
    """A running worker: its ingest (counters) and its own database connection (for assertions)."""

    ingest: Ingest
    db: HubDB

    def count(self, name: str) -> int:
        """One of the ingest's counters."""
        counters: dict[str, int] = self.ingest.counters.as_dict()
        return counters[name]


@contextlib.asynccontextmanager
async def worker(hub_id: str, db_url: str, broker: Mosquitto, **settings: Any) -> AsyncIterator[Worker]:
    """One hub worker (ingest only, no API) with `IngestConfig(**settings)`, running until the block ends."""
    config = HubConfig(
        hub_id=hub_id,
        database=db_url,
        broker=BrokerConfig(host=broker.host, port=broker.port, keepalive_s=10, reconnect_max_s=0.5),
        ingest=IngestConfig(**settings),
    )
    async with HubDB(config.database) as db:
        ingest = Ingest(config, db)
        task = asyncio.create_task(ingest.run(), name=f"test.{hub_id}.ingest")
        try:
            async with asyncio.timeout(WAIT_S):
                subscribed = asyncio.create_task(ingest.wait_subscribed(), name=f"test.{hub_id}.subscribed")
                await asyncio.wait({task, subscribed}, return_when=asyncio.FIRST_COMPLETED)
                subscribed.cancel()
            if task.done():
                task.result()  # surface a start failure
            yield Worker(ingest, db)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if task.done() and not task.cancelled():
            task.result()  # a worker that died of an error fails the test


def total(workers: tuple[Worker, ...], name: str) -> int:
    """A counter summed over workers."""
    return sum(w.count(name) for w in workers)
