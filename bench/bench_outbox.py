"""Outbox quotas: does a 24 h outage at the demo store's event rate fit the default quotas?

Run: `.venv/bin/python bench/bench_outbox.py [--hours 24] [--rate-from var/demo/gateway/gateway.db]
[--scale 1.0] [--keep DIR]` (about a minute for 24 h).

Rates: by default the per-type rates measured on `shelfgate demo --duration 180 --seed 7` (steady state, the
46 `initial` stock events of the start left out; docs/benchmarks.md "Outbox quotas"), plus sales at one lane
every 20 s (`DeviceScenario.checkout_every_s`, 1–3 lines each) which that demo did not yet emit as events.
`--rate-from` recomputes the rates from any gateway database's ledger instead; `--scale` multiplies them.

Method: a real `GatewayStore` (SQLite file, WAL, synchronous=FULL) with the default quotas takes `--hours` of
events at those rates with the broker away (nothing acknowledged), written in one transaction per simulated
10 s (the engine batches commits per poll cycle). Then the WAL is checkpointed and the file measured. Printed:
events per type, the file's growth per event (real bytes: page count × page size, after checkpoint), the
quota accounting's figure per event (`edge.outbox_quota.row_bytes`, which the quotas are judged by), each
class's use of its quota, and how many hours of the same outage each quota would hold. No assertion: numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _host import load_average, machine

from cloud_bridge.contract import rfc3339
from edge.outbox_quota import MIB, OutboxQuota
from edge.store import PRIORITY_HIGH, PRIORITY_LEVEL, GatewayStore, NewEvent

DEMO_RATES_PER_H: dict[str, float] = {
    # shelfgate demo --duration 180 --seed 7, 177 s of ledger minus the 46 `initial` events of the start
    "stock.changed": 28 / 177 * 3600,
    "alert.raised": 6 / 177 * 3600,
    "alert.resolved": 4 / 177 * 3600,
    "facing.changed": 8 / 177 * 3600,
    # one lane, a checkout every ~20 s (firmware_sims/scenario.py DeviceScenario)
    "sale.completed": 3600 / 20,
}
BATCH_S = 10.0
SKUS = [f"069012345{n:04d}" for n in range(44)]


def rates_from(path: Path) -> dict[str, float]:
    """Per-type events/h over a gateway ledger's span, without the `initial` stock events of a start."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        t0, t1 = conn.execute("SELECT MIN(created_at), MAX(created_at) FROM ledger").fetchone()
        counts: Counter[str] = Counter()
        for event_type, data in conn.execute("SELECT type, data FROM ledger"):
            if event_type == "stock.changed" and json.loads(data).get("cause") == "initial":
                continue
            counts[event_type] += 1
    finally:
        conn.close()
    span_h = max(1e-9, (t1 - t0) / 3600)
    return {t: n / span_h for t, n in counts.items()}


def payload(event_type: str, rng: random.Random, i: int, ts: str) -> tuple[dict[str, Any], int]:
    """A realistic payload of each type (sizes as the gateway writes them) and its priority."""
    bin_id = f"{'AB'[i % 2]}{rng.randrange(1, 23):02d}"
    sku = rng.choice(SKUS)
    if event_type == "stock.changed":
        count = rng.randrange(0, 40)
        data = {
            "bin_id": bin_id,
            "sku": sku,
            "count": count,
            "delta": -rng.randrange(1, 4),
            "cause": "pick",
            "weight_g": round(count * 187.3, 1),
            "safety_stock": 6,
            "max_stock": 24,
        }
        return data, PRIORITY_LEVEL
    if event_type == "facing.changed":
        data = {
            "camera_id": "cam-f1",
            "roi_id": f"r{rng.randrange(3)}c{rng.randrange(4)}",
            "sku": sku,
            "bin_id": bin_id,
            "state": rng.choice(["ok", "low", "empty"]),
            "score": round(rng.random(), 3),
            "reason": "judged",
        }
        return data, PRIORITY_LEVEL
    if event_type.startswith("alert."):
        data = {
            "alert_id": f"al-{bin_id}-{i}",
            "bin_id": bin_id,
            "sku": sku,
            "kind": "low",
            "state": event_type.split(".")[1],
            "count": rng.randrange(0, 6),
            "message": f"{bin_id} below safety stock (6)",
            "raised_at": ts,
            "by": None,
        }
        return data, PRIORITY_HIGH
    lines: list[dict[str, Any]] = []
    amounts: list[float] = []
    for _ in range(rng.randrange(1, 4)):
        qty = rng.randrange(1, 4)
        price = rng.randrange(100, 3000) / 100
        amounts.append(price * qty)
        lines.append(
            {
                "gtin": "0" + sku,
                "qty": qty,
                "weight_kg": None,
                "unit_price": f"{price:.2f}",
                "amount": f"{price * qty:.2f}",
            }
        )
    total = f"{sum(amounts):.2f}"
    data = {
        "transaction_id": f"demo-sh-001-L1-{i:08d}",
        "lane": "lane1",
        "cashier": "c01",
        "member_id": f"M{rng.randrange(10**7):07d}" if rng.random() < 0.6 else None,
        "items": lines,
        "total": total,
        "ts": ts,
    }
    return data, PRIORITY_HIGH


def db_bytes(path: Path) -> int:
    """Bytes the database occupies once the WAL is folded in: page_count × page_size."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        (size,) = conn.execute("PRAGMA page_size").fetchone()
    finally:
        conn.close()
    return int(pages) * int(size)


async def run(hours: float, rates: dict[str, float], folder: Path, seed: int, scale: float) -> None:
    rng = random.Random(seed)
    path = folder / "gateway.db"
    now = [1_795_400_000.0]
    quota = OutboxQuota()
    counts: Counter[str] = Counter()
    async with GatewayStore(path, clock=lambda: now[0], quota=quota) as store:
        await store.record(
            [NewEvent("stock.changed", rfc3339(now[0]), payload("stock.changed", rng, 0, "")[0])]
        )
        empty_bytes = db_bytes(path)
        base_usage = store.outbox_usage()
        started = time.perf_counter()
        end = now[0] + hours * 3600
        i = 0
        while now[0] < end:
            now[0] += BATCH_S
            events = []
            for event_type, per_h in rates.items():
                # Poisson arrivals per batch window
                for _ in range(_poisson(rng, per_h * BATCH_S / 3600)):
                    i += 1
                    ts = rfc3339(now[0] - rng.random() * BATCH_S)
                    data, priority = payload(event_type, rng, i, ts)
                    events.append(NewEvent(event_type, ts, data, priority))
                    counts[event_type] += 1
            if events:
                await store.record(events)
        elapsed = time.perf_counter() - started
        usage = store.outbox_usage()
        depth, _ = await store.depth()
    total_bytes = db_bytes(path)
    written = sum(counts.values())
    grown = total_bytes - empty_bytes
    accounted = (
        usage.critical_bytes + usage.levels_bytes - base_usage.critical_bytes - base_usage.levels_bytes
    )
    levels_h = (usage.levels_bytes / hours) if hours else 0.0
    critical_h = (usage.critical_bytes / hours) if hours else 0.0
    print(f"machine: {machine()}; {load_average()}")
    print(
        f"outage of {hours:g} h, rates x{scale:g}: {written} events written in {elapsed:.1f} s; outbox depth {depth}"
    )
    for event_type, n in sorted(counts.items()):
        print(f"  {event_type:16s} {n:7d} ({rates[event_type]:.0f}/h)")
    print(
        f"file growth: {grown / MIB:.2f} MiB = {grown / max(1, written):.0f} B/event (page_count x page_size)"
    )
    print(f"quota accounting: {accounted / MIB:.2f} MiB = {accounted / max(1, written):.0f} B/event")
    print(
        f"critical: {usage.critical_bytes / MIB:.2f} of {quota.critical_bytes / MIB:.0f} MiB"
        f" ({100 * usage.critical_bytes / quota.critical_bytes:.1f} %),"
        f" holds {quota.critical_bytes / max(1.0, critical_h):.0f} h of this outage"
    )
    print(
        f"levels:   {usage.levels_bytes / MIB:.2f} of {quota.levels_bytes / MIB:.0f} MiB"
        f" ({100 * usage.levels_bytes / quota.levels_bytes:.1f} %),"
        f" holds {quota.levels_bytes / max(1.0, levels_h):.0f} h before levels coalesce"
    )
    print(f"alarm: {usage.alarm!r}; held level updates: {usage.held}")


def _poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method; means here are small (< 10 per window)."""
    limit, k, p = pow(2.718281828459045, -mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--rate-from", type=Path, help="a gateway database whose ledger gives the rates")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every rate")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", type=Path, help="keep the database in this folder")
    args = parser.parse_args()
    rates = rates_from(args.rate_from) if args.rate_from else dict(DEMO_RATES_PER_H)
    rates = {t: r * args.scale for t, r in rates.items()}
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        asyncio.run(run(args.hours, rates, args.keep, args.seed, args.scale))
        return
    with tempfile.TemporaryDirectory(prefix="bench-outbox-") as folder:
        asyncio.run(run(args.hours, rates, Path(folder), args.seed, args.scale))


if __name__ == "__main__":
    main()
