"""The long randomized fault run (issue #5): `python bench/reliability.py --sequences 50 --seed N`.

One rig (tests/reliability/harness.py: simulated store in this process, gateway and hub as real subprocesses,
Mosquitto behind a proxy this process controls) goes through N fault sequences drawn from FAULT_KINDS: broker
SIGKILL + restart, broker SIGSTOP (20 s; one sequence 5 min with `--long-freeze-s 300`), proxy drop / delay /
half-open, gateway kill -9 mid-burst, hub kill -9 mid-apply, wall-clock step. Shoppers keep moving items
during every fault, and 1–2 sales per shopper wave ring up at a checkout lane through the gateway's local API
(a sale the gateway did not acknowledge because it was down did not happen and is rung once it is back). After each sequence it waits for the system to settle and checks the promise: every event
the gateway generated is at the hub exactly once (seq 1..N, no gap, no double, same type), hub stock and alert
states == the gateway's, every acknowledged sale is at the hub once with its total and the hub's daily total
is their sum; and separately whether the gateway's counts equal the simulator's ground truth.

Prints a summary and writes it as JSON (`--out`, default var/bench/reliability-seed{N}.json). Exit 1 if any
event or sale was lost or doubled. Not a pytest: it runs for tens of minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _host import load_average, machine

# The rig lives with the tests (tests/reliability/harness.py): the repository root must be importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.reliability.harness import FAULT_KINDS, Rig, RigError, apply_fault


def _hold_s(kind: str, rng: random.Random) -> float:
    if kind == "broker_freeze":
        return 20.0
    if kind == "proxy_blackhole":
        return rng.uniform(6.0, 12.0)  # past the gateway's PUBACK timeout and MQTT keepalive
    return rng.uniform(2.0, 6.0)


async def run(sequences: int, seed: int, long_freeze_s: float, workdir: Path) -> dict[str, Any]:
    """Run the sequences on one rig; return the summary."""
    rng = random.Random(seed)
    long_at = sequences // 2 if long_freeze_s > 0 else -1
    tried: Counter[str] = Counter()
    per_sequence: list[dict[str, Any]] = []
    started = time.monotonic()
    async with Rig(workdir, seed=seed) as rig:
        # Forward steps only: a backward step stalls the gateway's counting until wall time catches up (a known
        # bug, tests/reliability/test_known_bugs.py), which would silence the store for the rest of the run.
        rig.clock_steps_s = (600.0, 3600.0, 86_400.0)
        for i in range(sequences):
            kind = "broker_freeze" if i == long_at else rng.choice(FAULT_KINDS)
            hold_s = long_freeze_s if i == long_at else _hold_s(kind, rng)
            waves = rng.randint(1, 3)
            t0 = time.monotonic()
            rec = await apply_fault(rig, kind, hold_s=hold_s, waves=waves)
            tried[kind] += 1
            settled = True
            try:
                await rig.converge(120, truth_grace_s=10)
            except RigError as exc:
                settled = False
                print(f"sequence {i}: did not settle: {str(exc).splitlines()[0]}", file=sys.stderr)
            verdict = await rig.verify()
            row = {
                "i": i,
                "fault": kind,
                "hold_s": round(hold_s, 1),
                "waves": waves,
                "detail": rec.detail,
                "settled": settled,
                "events_so_far": verdict.generated,
                "lost": len(verdict.lost),
                "doubled": len(verdict.doubled),
                "sales_so_far": verdict.sales_generated,
                "sales_lost": len(verdict.sales_lost),
                "sales_doubled": len(verdict.sales_doubled),
                "delivery_problems": verdict.problems,
                "count_problems": verdict.count_problems,
                "wall_s": round(time.monotonic() - t0, 1),
            }
            per_sequence.append(row)
            flag = "OK" if not verdict.problems else "DELIVERY PROBLEM"
            counts = "" if not verdict.count_problems else " (gateway count != shelf)"
            print(
                f"[{i + 1}/{sequences}] {kind:16s} hold {hold_s:5.1f} s  events {verdict.generated:5d}"
                f"  lost {len(verdict.lost)} doubled {len(verdict.doubled)}  sales {verdict.sales_generated:4d}"
                f" lost {len(verdict.sales_lost)} doubled {len(verdict.sales_doubled)}  {flag}{counts}  {rec.detail}",
                flush=True,
            )
        final = await rig.verify()
        proxy = {
            "accepted": rig.proxy.connections_accepted,
            "reset": rig.proxy.connections_reset,
            "bytes_discarded": rig.proxy.bytes_discarded,
        }
        restarts = {
            "gateway": rig.gateway.starts - 1 if rig.gateway else 0,
            "hub": rig.hub.starts - 1 if rig.hub else 0,
        }
        moves = rig.moves
        sale_attempts_failed = rig.sale_attempts_failed
    return {
        "command": f"python bench/reliability.py --sequences {sequences} --seed {seed} --long-freeze-s {long_freeze_s:g}",
        "machine": machine(),
        "load_at_end": load_average(),
        "wall_s": round(time.monotonic() - started, 1),
        "sequences": sequences,
        "faults_tried": dict(sorted(tried.items())),
        "shelf_moves": moves,
        "events_generated": final.generated,
        "alert_events_generated": final.alerts_generated,
        "events_at_hub": final.at_hub,
        "lost": len(final.lost),
        "doubled": len(final.doubled),
        "type_mismatches": len(final.mismatched),
        "sales_generated": final.sales_generated,
        "sales_at_hub": final.sales_at_hub,
        "sales_lost": len(final.sales_lost),
        "sales_doubled": len(final.sales_doubled),
        "sales_total_cny": str(final.sales_total_cny),
        "hub_daily_sales_total_cny": str(final.hub_sales_total_cny),
        "sale_attempts_failed": sale_attempts_failed,
        "hub_stock_equals_gateway": final.hub_stock == final.gateway_stock,
        "hub_alerts_equal_gateway": final.hub_alerts == final.gateway_alerts,
        "gateway_count_equals_shelf": final.gateway_stock == final.truth,
        "sequences_not_settled": sum(1 for r in per_sequence if not r["settled"]),
        "sequences_with_delivery_problems": sum(1 for r in per_sequence if r["delivery_problems"]),
        "sequences_ending_with_count_divergence": sum(1 for r in per_sequence if r["count_problems"]),
        "first_count_divergence": next(
            ({"i": r["i"], "fault": r["fault"]} for r in per_sequence if r["count_problems"]), None
        ),
        "restarts": restarts,
        "proxy": proxy,
        "final_problems": final.problems + final.count_problems,
        "per_sequence": per_sequence,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/reliability.py", description=__doc__.splitlines()[0])
    p.add_argument("--sequences", type=int, default=50)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--long-freeze-s", type=float, default=300.0, help="one broker freeze this long (0 = none)"
    )
    p.add_argument(
        "--out", type=Path, default=None, help="JSON summary (default var/bench/reliability-seedN.json)"
    )
    p.add_argument(
        "--workdir", type=Path, default=None, help="keep logs and databases here (default: a temp dir)"
    )
    args = p.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="shelfgate-reliability-"))
    summary = asyncio.run(run(args.sequences, args.seed, args.long_freeze_s, workdir / "rig"))
    out = args.out or Path("var/bench") / f"reliability-seed{args.seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    brief = {k: v for k, v in summary.items() if k != "per_sequence"}
    print(json.dumps(brief, indent=2, ensure_ascii=False))
    print(f"summary written to {out}; logs in {workdir}")
    return (
        1 if summary["lost"] or summary["doubled"] or summary["sales_lost"] or summary["sales_doubled"] else 0
    )


if __name__ == "__main__":
    raise SystemExit(main())
