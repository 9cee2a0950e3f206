"""Micro-benchmark of the inventory engine's hot path: register decode → estimator → alert rules.

Run: `.venv/bin/python bench/bench_engine.py [--bins 2000] [--seconds 30]`. Prints samples/s on one core.
A store is 2 000 bins × 10 Hz = 20 000 samples/s; ARCHITECTURE.md asks for ≥ 100 000 samples/s here.
Signals: every bin at rest with σ = 0.04 unit, one pick per bin every ~10 s (a busy store).
"""

from __future__ import annotations

import argparse
import random
import time

from drivers.modbus.protocol import ValueType, WordOrder, decode_value, encode_value
from edge.config import Alerts, Bin, Calibration, LocalizedName
from edge.inventory import BinEstimator
from edge.inventory.alerts import AlertRules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bins", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=30.0, help="simulated seconds at 10 Hz")
    args = parser.parse_args()
    rng = random.Random(1)
    unit_g = 250.0
    bins = [
        Bin(
            id=f"b{i}",
            sku=f"{i:014d}",
            name=LocalizedName(zh="货品", en="Item"),
            unit_weight_g=unit_g,
            unit_weight_spread_g=2.5,
            calibration=Calibration(zero=0.0, span_g_per_unit=0.1),
            safety_stock=3,
            max_stock=30,
            device=f"tx{i // 16}",
            channel=i % 16,
        )
        for i in range(args.bins)
    ]
    counts = [rng.randint(3, 20) for _ in bins]
    next_pick = [rng.uniform(2.0, 12.0) for _ in bins]
    # Pre-encode register words so the timed loop measures decode, not the signal generator.
    steps = int(args.seconds * 10)
    frames: list[list[list[int]]] = []
    for k in range(steps):
        t = k / 10
        row = []
        for i in range(args.bins):
            if t >= next_pick[i]:
                counts[i] = max(counts[i] - 1, 0) if counts[i] > 3 or rng.random() < 0.5 else counts[i] + 1
                next_pick[i] = t + rng.uniform(6.0, 14.0)
            grams = counts[i] * unit_g + rng.gauss(0.0, 10.0)
            row.append(encode_value(round(grams / 0.1), ValueType.INT32, WordOrder.CDAB))
        frames.append(row)
    decoded = [[decode_value(w, ValueType.INT32, WordOrder.CDAB) for w in row] for row in frames]
    for label, with_decode in (("decode + estimator + rules", True), ("estimator + rules", False)):
        rules = AlertRules(bins, Alerts())
        estimators = [BinEstimator(b) for b in bins]
        transitions = events = 0
        start = time.perf_counter()
        for k in range(steps):
            ts = 1_700_000_000.0 + k / 10
            values = (
                [decode_value(w, ValueType.INT32, WordOrder.CDAB) for w in frames[k]]
                if with_decode
                else decoded[k]
            )
            for est, value in zip(estimators, values, strict=True):
                out = est.feed(value, ts)
                if out:
                    for ev in out:
                        events += 1
                        transitions += len(rules.apply(ev))
            if k % 5 == 0:
                transitions += len(rules.tick(ts))
        elapsed = time.perf_counter() - start
        samples = steps * args.bins
        counted = sum(1 for est in estimators if est.count is not None)
        print(f"{label}: {samples} samples in {elapsed:.2f} s = {samples / elapsed:,.0f} samples/s")
        print(
            f"  {events} engine events, {transitions} alert transitions, {counted}/{args.bins} bins counted"
        )


if __name__ == "__main__":
    main()
