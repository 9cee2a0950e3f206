"""Edge pipeline throughput: register block words → decode → estimator → alert rules → SQLite store.

Run: `.venv/bin/python bench/bench_pipeline.py [--bins 2000] [--seconds 30] [--repeat 3]`.

This drives the gateway's own code path (`PollPlan.decode` → `Gateway._apply_sample` → `Gateway._persist` into
a real SQLite file, WAL, synchronous=FULL) with pre-encoded register blocks, so the Modbus transport is not
measured — that is the bus's cost, reported by the latency and peer benches. Target (ARCHITECTURE.md):
≥ 100 000 weight samples/s on one core here; a 2 000-bin store at 10 Hz needs 20 000.

Signals: 20 transmitters × 100 channels, int32 ABCD counts; each plate at rest with σ = 1 g noise, and one
pick or put somewhere on the shelf about every 10 s per bin (a busy store), so the store path is exercised.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from _host import machine

from drivers.modbus.models import Sample
from drivers.modbus.protocol import (
    ChannelReading,
    RegisterMap,
    StatusPoint,
    ValueType,
    WeightPoint,
    WordOrder,
    plan_poll,
    register_image,
)
from edge.config import LoadedConfig, StoreConfig
from edge.gateway import Gateway

CHANNELS = 100
RATE_HZ = 10.0


def build(bins: int, data_dir: Path) -> tuple[LoadedConfig, RegisterMap]:
    rmap = RegisterMap(
        name="bench-int32-abcd-100",
        channels=CHANNELS,
        weight=WeightPoint(
            address=0, value_type=ValueType.INT32, word_order=WordOrder.ABCD, stride=2, scale=1.0
        ),
        status=StatusPoint(address=200, stride=1, stable_bit=0, overload_bit=1, fault_bit=2),
    )
    n_tx = (bins + CHANNELS - 1) // CHANNELS
    raw: dict[str, Any] = {
        "store_id": "bench",
        "data_dir": str(data_dir),
        "buses": [{"id": "tcp1", "kind": "tcp", "host": "127.0.0.1", "port": 1}],
        "transmitters": [
            {"id": f"tx{t}", "bus": "tcp1", "unit_id": t + 1, "profile": rmap.name} for t in range(n_tx)
        ],
        "alerts": {"dwell_s": 2.0},
        "bins": [
            {
                "id": f"b{i:04d}",
                "sku": f"{6900000000000 + i:014d}",
                "name": {"zh": "货品", "en": "Item"},
                "unit_weight_g": 250.0,
                "unit_weight_spread_g": 2.5,
                "calibration": {"zero": 1000.0, "span_g_per_unit": 0.1},
                "safety_stock": 4,
                "max_stock": 20,
                "device": f"tx{i // CHANNELS}",
                "channel": i % CHANNELS,
            }
            for i in range(bins)
        ],
    }
    store = StoreConfig.model_validate(raw)
    return LoadedConfig(
        store=store, profiles={rmap.name: rmap}, path=data_dir / "bench.yaml", version="bench"
    ), rmap


def make_cycles(
    cfg: LoadedConfig, rmap: RegisterMap, seconds: float, seed: int
) -> list[list[list[list[int]]]]:
    """Block words per cycle per transmitter: rest + noise, picks/puts at random, with a short settle."""
    rng = random.Random(seed)
    cycles = int(seconds * RATE_HZ)
    per_tx: dict[str, list[Any]] = {}
    counts = {b.id: 12 for b in cfg.store.bins}
    moves: dict[str, tuple[int, int]] = {}  # bin → (cycle of the move, delta items)
    plans = {}
    for tx in cfg.store.transmitters:
        chans = [b.channel for b in cfg.store.bins if b.device == tx.id]
        plans[tx.id] = plan_poll(rmap, chans)
        per_tx[tx.id] = []
    out: list[list[list[list[int]]]] = []
    for c in range(cycles):
        cycle_words: list[list[list[int]]] = []
        for tx in cfg.store.transmitters:
            readings = []
            for b in (b for b in cfg.store.bins if b.device == tx.id):
                if b.id not in moves and rng.random() < 1.0 / (10.0 * RATE_HZ):
                    delta = rng.choice((-1, -1, -2, 1)) if counts[b.id] > 2 else 3
                    moves[b.id] = (c, delta)
                    counts[b.id] += delta
                grams = counts[b.id] * 250.0 + rng.gauss(0.0, 1.0)
                stable = True
                if b.id in moves:
                    since = c - moves[b.id][0]
                    if since < 4:  # 0.4 s of hand on the plate and ring-down
                        grams += rng.uniform(-300.0, 300.0)
                        stable = False
                    if since > 30:
                        del moves[b.id]
                readings.append(ChannelReading(b.channel, 1000.0 + grams / 0.1, stable=stable))
            image = register_image(rmap, readings)
            cycle_words.append(
                [[image.get(a, 0) for a in range(blk.start, blk.end)] for blk in plans[tx.id].blocks]
            )
        out.append(cycle_words)
    return out


async def run_once(bins: int, seconds: float, seed: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="shelfgate-bench-") as tmp:
        cfg, rmap = build(bins, Path(tmp))
        cycles = make_cycles(cfg, rmap, seconds, seed)
        gw = Gateway(cfg)
        plans = {
            tx.id: plan_poll(rmap, [b.channel for b in cfg.store.bins if b.device == tx.id])
            for tx in cfg.store.transmitters
        }
        async with gw.store:
            await gw._restore()  # the bench drives the runtime's own hot path
            samples = events = 0
            t_wall = 1_800_000_000.0
            t_decode = t_engine = t_store = 0.0
            clock = time.perf_counter
            start = clock()
            cpu0 = time.process_time()
            for words in cycles:
                t_wall += 1.0 / RATE_HZ
                for tx, block_words in zip(cfg.store.transmitters, words, strict=True):
                    t0 = clock()
                    readings = tuple(plans[tx.id].decode(block_words))
                    t1 = clock()
                    counts, transitions, touched = gw._apply_sample(Sample(tx.id, t_wall, t_wall, readings))
                    t2 = clock()
                    samples += len(readings)
                    if counts or transitions:
                        await gw._persist(counts, transitions, touched)
                        events += len(counts) + len(transitions)
                    t_decode += t1 - t0
                    t_engine += t2 - t1
                    t_store += clock() - t2
            elapsed = clock() - start
            cpu = time.process_time() - cpu0
            last_seq = await gw.store.last_seq()
    return {
        "samples": samples,
        "elapsed_s": elapsed,
        "cpu_s": cpu,
        "samples_per_s": samples / elapsed,
        "samples_per_cpu_s": samples / cpu,
        "events": events,
        "seq": last_seq,
        "decode_s": t_decode,
        "engine_s": t_engine,
        "store_s": t_store,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--bins", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=30.0, help="simulated seconds of signal at 10 Hz")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"{args.bins} bins, {args.seconds:.0f} simulated s at {RATE_HZ:.0f} Hz, {args.repeat} runs")
    for r in range(args.repeat):
        res = asyncio.run(run_once(args.bins, args.seconds, seed=r))
        print(
            f"run {r + 1}: {res['samples']:.0f} samples in {res['elapsed_s']:.2f} s wall / {res['cpu_s']:.2f} s CPU"
            f" → {res['samples_per_s']:,.0f} samples/s ({res['samples_per_cpu_s']:,.0f} per CPU-s);"
            f" {res['events']:.0f} events/alert changes stored, last seq {res['seq']:.0f}"
        )
        n = res["samples"]
        print(
            f"       per sample: decode {res['decode_s'] / n * 1e6:.2f} µs, estimator+rules"
            f" {res['engine_s'] / n * 1e6:.2f} µs, store (SQLite commits, awaited) {res['store_s'] / n * 1e6:.2f} µs"
        )


if __name__ == "__main__":
    main()
