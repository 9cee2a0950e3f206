"""Sales at the hub: sale → queryable latency through the real broker and hub, and apply throughput per worker.

Run: `.venv/bin/python bench/bench_hub_sales.py [--engines sqlite postgresql] [--sales 300] [--rate-hz 20]
[--events 3000] [--batch 1 50] [--workers 1 2]` (about 4 minutes with the defaults).

**latency** — everything real, in one process: a private Mosquitto on a free loopback port, a hub worker
(`hub.service.run_hub`: ingest + uvicorn on a free port) and a gateway's durable outbox (`edge.store.GatewayStore`)
drained by its `cloud_bridge.uplink.Uplink`. t0 is `time.monotonic()` just before the lane's sale is recorded in
the outbox (the moment the lane completes it, ARCHITECTURE.md); the sale is *queryable* when a poller that asks
`GET /api/sales?store=…&limit=10` in a loop (10 ms pause between answers) first sees it, so the figure includes
the poll interval and the HTTP round trip. The median duration of one poll (in the same process and event loop
as the hub) is printed too. Sales are sent at `--rate-hz`, each for one of 100 members with 1–3 lines, so every
one runs the whole effect: sale row, lines, member lock, tier window SQL, ledger insert. Part 3's target is
≤ 5 s p99 when online. `applied` is the hub's own clock at the start of the effect (`sales.applied_at`) minus
the wall time of t0: the part of the path before the poll.

**apply** — `HubDB.apply_batch` alone (no broker, no parsing in the timing), events/s per worker: batches of
`--batch` `sale.completed` events (80 % member sales over 500 members of that store, 20 % anonymous; 1–3
lines) of one store per worker, applied back to back; with `--workers 2` two workers (each its own `HubDB`,
i.e. its own connection pool and DB thread) apply two stores' batches at once on one database. A
`stock.changed` row gives the baseline of the apply machinery without the sales effect.

PostgreSQL: the server on 127.0.0.1:5432 as user postgres (trust or `PGPASSWORD`, default the test password),
in a database this script creates and drops. No assertion on time: this prints tables.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import secrets
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import psycopg
from _host import load_average, machine
from psycopg import sql

from cloud_bridge.contract import (
    Event,
    EventBatch,
    EventType,
    SaleCompleted,
    SaleItem,
    StockChanged,
    events_topic,
    line_amount,
    rfc3339,
)
from cloud_bridge.uplink import Uplink
from edge.store import GatewayStore, NewEvent
from hub.config import ApiConfig, BrokerConfig, HubConfig
from hub.db import HubDB
from hub.parse import BatchMessage, parse_message
from hub.service import run_hub
from shelfgate.broker import Mosquitto

GTINS = ("07032069804988", "05901234123457", "06901234567892")
PRICES = (Decimal("3.50"), Decimal("12.80"), Decimal("25.00"), Decimal("99.90"))
POLL_S = 0.010
POLL_LIMIT = 10
"""The newest 10 sales per poll: at 20 sales/s a sale stays in that window for 0.5 s, several poll rounds (a
sale that slipped past it would never be seen, and the run would fail rather than under-report)."""
WAIT_S = 120.0
os.environ.setdefault("PGPASSWORD", "shelfgate-test")  # as tests/hub/conftest.py; a trust server ignores it


def _sale(rng: random.Random, transaction_id: str, at: datetime, member_id: str | None) -> SaleCompleted:
    items = []
    for _ in range(rng.randint(1, 3)):
        price, qty = rng.choice(PRICES), rng.randint(1, 4)
        items.append(
            SaleItem(gtin=rng.choice(GTINS), qty=qty, unit_price=price, amount=line_amount(price, qty))
        )
    return SaleCompleted(
        transaction_id=transaction_id,
        lane="L1",
        cashier="c1",
        member_id=member_id,
        items=items,
        total=sum((i.amount for i in items), Decimal("0.00")),
        ts=rfc3339(at),
    )


def _percentiles(values_ms: list[float]) -> str:
    cuts = statistics.quantiles(values_ms, n=100, method="inclusive")
    return f"{cuts[49]:.1f} / {cuts[89]:.1f} / {cuts[98]:.1f} / {max(values_ms):.1f}"


# --- engines --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _database(engine: str, folder: Path) -> Iterator[str]:
    """A fresh, empty hub database URL on `engine`, removed afterwards."""
    if engine == "sqlite":
        yield f"sqlite:///{folder / f'hub-{secrets.token_hex(4)}.sqlite3'}"
        return
    name = f"shelfgate_bench_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(
        host="127.0.0.1", port=5432, user="postgres", dbname="postgres", autocommit=True
    ) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield f"postgresql://postgres@127.0.0.1:5432/{name}"
        finally:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# --- latency ----------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _hub(url: str, broker: Mosquitto) -> AsyncIterator[httpx.AsyncClient]:
    config = HubConfig(
        hub_id="bench-hq",
        database=url,
        broker=BrokerConfig(host=broker.host, port=broker.port, keepalive_s=10, reconnect_max_s=0.5),
        api=ApiConfig(host="127.0.0.1", port=0),
    )
    ready, ports = asyncio.Event(), list[int]()
    task = asyncio.create_task(run_hub(config, ready=ready, api_port_out=ports), name="bench.hub")
    try:
        async with asyncio.timeout(WAIT_S):
            await ready.wait()
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports[0]}") as http:
                while True:  # ingest connects in the background; the API says when it is subscribed
                    if (await http.get("/api/health")).json()["mqtt_connected"]:
                        break
                    await asyncio.sleep(0.05)
                yield http
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def latency(engine: str, url: str, broker: Mosquitto, folder: Path, *, n: int, rate_hz: float) -> None:
    rng = random.Random(7)
    store_id = "bench-s1"
    sent: dict[str, tuple[float, float]] = {}
    seen: dict[str, float] = {}
    polls_ms: list[float] = []
    async with _hub(url, broker) as http, GatewayStore(folder / f"gw-{engine}.sqlite3") as outbox:
        uplink = Uplink(
            store_id=store_id,
            gateway_id=f"{store_id}-gw",
            boot_id="b1",
            version="bench",
            config_version="c1",
            outbox=outbox,
            host=broker.host,
            port=broker.port,
            heartbeat_s=3600,
        )
        uplink_task = asyncio.create_task(uplink.run(), name="bench.uplink")

        async def poll() -> None:
            while True:
                asked = time.monotonic()
                response = await http.get("/api/sales", params={"store": store_id, "limit": POLL_LIMIT})
                at = time.monotonic()
                polls_ms.append((at - asked) * 1000)
                for record in response.json():
                    seen.setdefault(record["transaction_id"], at)
                await asyncio.sleep(POLL_S)

        poller = asyncio.create_task(poll(), name="bench.poll")
        try:
            for number in range(n):
                transaction_id = f"{store_id}-L1-{number:06d}"
                completed = _sale(rng, transaction_id, datetime.now(UTC), f"M{rng.randrange(100):05d}")
                sent[transaction_id] = (time.monotonic(), time.time())
                await outbox.record(
                    [
                        NewEvent(
                            EventType.SALE_COMPLETED.value, completed.ts, completed.model_dump(mode="json")
                        )
                    ]
                )
                await asyncio.sleep(1.0 / rate_hz)
            async with asyncio.timeout(WAIT_S):
                while True:  # the poller fills `seen`
                    if len(seen) >= n:
                        break
                    await asyncio.sleep(0.05)
        finally:
            poller.cancel()
            uplink_task.cancel()
            for task in (poller, uplink_task):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        async with HubDB(url) as db:
            applied = dict(await db.query("SELECT transaction_id, applied_at FROM sales"))
    queryable_ms = [(seen[t] - sent[t][0]) * 1000 for t in sent]
    applied_ms = [(float(applied[t]) - sent[t][1]) * 1000 for t in sent]
    print(
        f"| {engine} | {n} | {rate_hz:g} | {_percentiles(queryable_ms)} | {_percentiles(applied_ms)}"
        f" | {statistics.median(polls_ms):.1f} |",
        flush=True,
    )


# --- apply throughput ---------------------------------------------------------------------------------------


def _messages(store_id: str, events: int, batch: int, kind: str, seed: int) -> list[BatchMessage]:
    rng = random.Random(seed)
    gateway_id = f"{store_id}-gw"
    start = datetime(2026, 3, 1, 2, tzinfo=UTC)
    built: list[Event] = []
    for seq in range(1, events + 1):
        at = start + timedelta(seconds=seq)
        if kind == "sale":
            member = f"M{seed}{rng.randrange(500):04d}" if rng.random() < 0.8 else None
            data = _sale(rng, f"{store_id}-L1-{seq:07d}", at, member).model_dump(mode="json")
            event_type = EventType.SALE_COMPLETED
        else:
            data = StockChanged(
                bin_id=f"B{seq % 200:03d}",
                sku=GTINS[0],
                count=seq % 20,
                delta=-1,
                cause="pick",
                weight_g=250.0,
                safety_stock=3,
                max_stock=20,
            ).model_dump(mode="json")
            event_type = EventType.STOCK_CHANGED
        built.append(Event(id=f"{gateway_id}:{seq}", seq=seq, type=event_type, ts=rfc3339(at), data=data))
    messages = []
    for first in range(0, events, batch):
        chunk = built[first : first + batch]
        payload = EventBatch(
            store_id=store_id,
            gateway_id=gateway_id,
            first_seq=chunk[0].seq,
            last_seq=chunk[-1].seq,
            events=chunk,
        ).to_json()
        parsed = parse_message(events_topic(store_id), payload)
        assert isinstance(parsed, BatchMessage)
        messages.append(parsed)
    return messages


async def apply_rate(engine: str, url: str, *, events: int, batch: int, workers: int, kind: str) -> None:
    plans = [_messages(f"bench-w{w}", events, batch, kind, seed=w) for w in range(workers)]
    async with contextlib.AsyncExitStack() as stack:
        dbs = [await stack.enter_async_context(HubDB(url)) for _ in range(workers)]

        async def run(db: HubDB, messages: list[BatchMessage]) -> int:
            applied = 0
            for message in messages:
                applied += (await db.apply_batch(message, time.time())).applied
            return applied

        started = time.perf_counter()
        applied = await asyncio.gather(*(run(db, plan) for db, plan in zip(dbs, plans, strict=True)))
        elapsed = time.perf_counter() - started
    if sum(applied) != events * workers:
        raise RuntimeError(f"applied {sum(applied)} of {events * workers} events")
    total = events * workers / elapsed
    print(
        f"| {engine} | {kind} | {batch} | {workers} | {events * workers} | {elapsed:.1f} | {total:,.0f}"
        f" | {total / workers:,.0f} |",
        flush=True,
    )


async def bench(args: argparse.Namespace) -> None:
    print(f"machine: {machine()}")
    print(f"before: {load_average()}\n")
    with tempfile.TemporaryDirectory(prefix="bench-hub-sales-") as tmp:
        folder = Path(tmp)
        print("sale → queryable at GET /api/sales (ms, p50 / p90 / p99 / max)\n")
        print("| engine | sales | rate /s | queryable at the API | applied (hub clock) | one poll, median |")
        print("|---|---|---|---|---|---|")
        broker = Mosquitto(folder / "mosquitto")
        broker.start()
        try:
            for engine in args.engines:
                with _database(engine, folder) as url:
                    await latency(engine, url, broker, folder, n=args.sales, rate_hz=args.rate_hz)
        finally:
            broker.stop()
        print(f"\nafter latency: {load_average()}\n")
        print("apply throughput (HubDB.apply_batch back to back)\n")
        print("| engine | event | batch | workers | events | s | events/s | events/s per worker |")
        print("|---|---|---|---|---|---|---|---|")
        for engine in args.engines:
            for kind in ("stock", "sale"):
                for batch in args.batch:
                    for workers in args.workers:
                        with _database(engine, folder) as url:
                            await apply_rate(
                                engine, url, events=args.events, batch=batch, workers=workers, kind=kind
                            )
    print(f"\nafter: {load_average()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument(
        "--engines", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"]
    )
    parser.add_argument("--sales", type=int, default=300, help="sales for the latency run")
    parser.add_argument("--rate-hz", type=float, default=20.0, help="sales per second in the latency run")
    parser.add_argument("--events", type=int, default=3000, help="events per worker for the apply runs")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 50], help="events per batch")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
