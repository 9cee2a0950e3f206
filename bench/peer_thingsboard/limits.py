"""Limits: the RS-485 line's wire-time ceiling against the bus time shelfgate plans and uses, and the edge
pipeline against a bare loop that only decodes the registers.

**Wire time** (Modbus over Serial Line v1.02 §2.5.1): one FC03 transaction occupies the line for the request
(8 bytes), t3.5 of silence, the device's turnaround, the response (5 + 2N bytes) and t3.5 again
(`accounting.rtu_read_wire_s`; 10 bits per character at 8N1, 11 with parity or 2 stop bits). For each RTU bus
of `config/demo-store.yaml` this sums, per poll cycle, the transactions shelfgate's planner issues
(`drivers.modbus.protocol.plan_poll`: coalesced blocks) and those a one-request-per-tag gateway (the peer's
connector) would issue for the same channels (one weight read + one status read per channel), and divides by
the poll interval: above 100 % the line cannot carry the schedule. The turnaround is a device property (5-50 ms,
DOMAIN.md); the table shows 0 (the floor) and 10 ms.

**Used bus time**: the demo store runs in this process — its simulator (`firmware_sims.runner.SimStore`, RTU
over a `PtyNullModem`) and the real `edge.gateway.Gateway` (no API, no uplink) — and the driver's own counters
(`ModbusBus.stats()`: transactions, busy_s) give transactions and occupied time per poll cycle. A pty has no
baud rate, so the measured busy time is the software round trip (client + simulator), not wire time: it says
what the software needs on top of (or, on a real line, overlapped with) the wire.

**Pipeline overhead**: `bench/bench_pipeline.py`'s signal (2 000 bins, 20 transmitters × 100 channels, a busy
store) through a bare loop that only turns the block words into int32 values and status bits, through
`PollPlan.decode` alone, and through the full pipeline (decode → estimator → rules → SQLite) via
`bench_pipeline.run_once`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from drivers.modbus.protocol import Block, plan_poll, t35_s

from .accounting import fc03_response_bytes, rtu_read_wire_s
from .layout import CHANNELS, REGISTERS, RTU_BAUD

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "config" / "demo-store.yaml"
TURNAROUNDS_S = (0.0, 0.010)


def _bits_per_char(parity: str, stopbits: int, bytesize: int) -> int:
    return 1 + bytesize + (0 if parity == "N" else 1) + stopbits


def cycle_wire_s(blocks: Sequence[Block], baud: int, bits: int, turnaround_s: float) -> float:
    """Line time of one poll cycle of one transmitter: one transaction per block."""
    return sum(rtu_read_wire_s(b.count, baud, bits_per_char=bits, turnaround_s=turnaround_s) for b in blocks)


def per_tag_blocks(blocks_channels: Sequence[tuple[int, int]]) -> list[Block]:
    """What a one-request-per-tag gateway reads: each (start, count) span on its own."""
    return [Block(s, c) for s, c in blocks_channels]


def rtu_wire_table(config_path: Path = DEMO_CONFIG) -> dict[str, Any]:
    """Per RTU bus of the store config: planned transactions, bytes and wire time per cycle, both ways."""
    from edge.config import RtuBus, load_config

    cfg = load_config(config_path)
    s = cfg.store
    out: dict[str, Any] = {"config": str(config_path.relative_to(REPO)), "buses": []}
    for bus in s.buses:
        if not isinstance(bus, RtuBus):
            continue
        bits = _bits_per_char(bus.parity, bus.stopbits, bus.bytesize)
        rows = []
        for tx in (t for t in s.transmitters if t.bus == bus.id):
            rmap = cfg.profiles[tx.profile]
            channels = sorted(b.channel for b in s.bins if b.device == tx.id)
            plan = plan_poll(rmap, channels)
            spans = []
            for ch in channels:
                spans.append(rmap.weight_span(ch))
                st = rmap.status_span(ch)
                if st is not None:
                    spans.append(st)
            tags = per_tag_blocks(spans)
            row: dict[str, Any] = {
                "transmitter": tx.id,
                "poll_interval_s": tx.poll_interval_s,
                "channels": len(channels),
                "blocks": [(b.start, b.count) for b in plan.blocks],
                "plan_transactions": len(plan.blocks),
                "plan_bytes": sum(8 + fc03_response_bytes(b.count) for b in plan.blocks),
                "per_tag_transactions": len(tags),
                "per_tag_bytes": sum(8 + fc03_response_bytes(b.count) for b in tags),
            }
            for ta in TURNAROUNDS_S:
                row[f"plan_wire_ms@{ta * 1000:g}"] = 1000 * cycle_wire_s(plan.blocks, bus.baudrate, bits, ta)
                row[f"per_tag_wire_ms@{ta * 1000:g}"] = 1000 * cycle_wire_s(tags, bus.baudrate, bits, ta)
            rows.append(row)
        bus_row: dict[str, Any] = {
            "bus": bus.id,
            "baud": bus.baudrate,
            "bits_per_char": bits,
            "t35_ms": 1000 * t35_s(bus.baudrate, bits),
            "transmitters": rows,
        }
        for ta in TURNAROUNDS_S:
            key = f"{ta * 1000:g}"
            plan_util = sum(r[f"plan_wire_ms@{key}"] / 1000 / r["poll_interval_s"] for r in rows)
            tag_util = sum(r[f"per_tag_wire_ms@{key}"] / 1000 / r["poll_interval_s"] for r in rows)
            plan_cycle = sum(r[f"plan_wire_ms@{key}"] for r in rows)
            tag_cycle = sum(r[f"per_tag_wire_ms@{key}"] for r in rows)
            bus_row[f"plan_utilisation@{key}"] = plan_util
            bus_row[f"per_tag_utilisation@{key}"] = tag_util
            bus_row[f"plan_max_poll_hz@{key}"] = 1000 / plan_cycle if plan_cycle else None
            bus_row[f"per_tag_max_poll_hz@{key}"] = 1000 / tag_cycle if tag_cycle else None
        out["buses"].append(bus_row)
    # The bench's own RTU level (layout.py): 4 channels, one 12-register block vs 4 weight reads (+4 status).
    bench_plan = [Block(0, REGISTERS)]
    bench_tags = [Block(2 * ch, 2) for ch in range(CHANNELS)]
    out["bench_layout"] = {
        f"{name}_wire_ms@{ta * 1000:g}": 1000 * cycle_wire_s(blocks, RTU_BAUD, 10, ta)
        for name, blocks in (("plan", bench_plan), ("peer_tags", bench_tags))
        for ta in TURNAROUNDS_S
    }
    return out


def modbus_only(cfg: Any) -> Any:
    """The store config with only its Modbus part (buses, transmitters, their bins): the bus is what is
    measured, and other device families (BLE keys, serial scales) need set-up this bench does not do."""
    from edge.config import LoadedConfig, StoreConfig

    s = cfg.store
    keep = (
        "store_id",
        "gateway_id",
        "data_dir",
        "buses",
        "transmitters",
        "broker",
        "api",
        "alerts",
        "bridge",
    )
    dump = s.model_dump()
    raw = {k: dump[k] for k in keep if k in dump}
    tx_ids = {t.id for t in s.transmitters}
    raw["bins"] = [b for b in dump["bins"] if b["device"] in tx_ids]
    store = StoreConfig.model_validate(raw)
    return LoadedConfig(store=store, profiles=cfg.profiles, path=cfg.path, version=cfg.version)


async def _measure_bus_time(seconds: float) -> dict[str, Any]:
    from edge.config import RtuBus, load_config
    from edge.gateway import Gateway
    from firmware_sims.runner import SimStore
    from shelfgate.demo import layout_from_config, point_config_at

    cfg = modbus_only(load_config(DEMO_CONFIG))
    with tempfile.TemporaryDirectory(prefix="bench-peer-limits-") as tmp:
        async with SimStore(layout_from_config(cfg), run_scenario=False) as sim:
            gcfg = point_config_at(
                cfg, sim.endpoints, broker=("127.0.0.1", 1), api_port=0, data_dir=Path(tmp)
            )
            ready = asyncio.Event()
            gw = Gateway(gcfg, on_ready=lambda _g: ready.set())
            task = asyncio.create_task(gw.run(serve_api=False, uplink=False), name="limits.gateway")
            try:
                async with asyncio.timeout(30):
                    await ready.wait()
                await asyncio.sleep(3.0)  # connect, first polls
                before = _bus_snapshot(gw)
                t0 = time.monotonic()
                await asyncio.sleep(seconds)
                after = _bus_snapshot(gw)
                dt = time.monotonic() - t0
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    rtu_ids = {b.id for b in cfg.store.buses if isinstance(b, RtuBus)}
    out = {}
    for bus_id, (busy_a, tx_a, polls_a) in before.items():
        busy_b, tx_b, polls_b = after[bus_id]
        polls = polls_b - polls_a
        per_tx = {t.id: t.poll_interval_s for t in cfg.store.transmitters if t.bus == bus_id}
        cycles = polls / max(1, len(per_tx))
        out[bus_id] = {
            "rtu": bus_id in rtu_ids,
            "seconds": dt,
            "transactions": tx_b - tx_a,
            "polls_ok": polls,
            "cycles": cycles,
            "transactions_per_cycle": (tx_b - tx_a) / cycles if cycles else None,
            "busy_ms_per_cycle": 1000 * (busy_b - busy_a) / cycles if cycles else None,
            "busy_fraction": (busy_b - busy_a) / dt,
            "cycles_per_s": cycles / dt,
            "scheduled_cycles_per_s": 1 / min(per_tx.values()) if per_tx else None,
        }
    return out


def _bus_snapshot(gw: Any) -> dict[str, tuple[float, int, int]]:
    """bus id → (busy_s, transactions, successful polls of its transmitters)."""
    from .shelfgate_side import _transmitters

    out: dict[str, tuple[float, int, int]] = {}
    for state in _transmitters(gw):
        p = state.poller
        if p is None:
            continue
        busy, tx, ok = out.get(p.bus.bus_id, (p.bus.busy_s, p.bus.transactions, 0))
        out[p.bus.bus_id] = (busy, tx, ok + p.counters.ok)
    return out


def pipeline_overhead(bins: int = 2000, seconds: float = 10.0) -> dict[str, Any]:
    """Samples/s: bare register decode vs `PollPlan.decode` vs the full edge pipeline (bench_pipeline)."""
    bench_dir = str(REPO / "bench")
    if bench_dir not in sys.path:
        sys.path.insert(0, bench_dir)
    import bench_pipeline as bp

    with tempfile.TemporaryDirectory(prefix="bench-peer-pipeline-") as tmp:
        cfg, rmap = bp.build(bins, Path(tmp))
        cycles = bp.make_cycles(cfg, rmap, seconds, seed=0)
        plans = {
            tx.id: plan_poll(rmap, [b.channel for b in cfg.store.bins if b.device == tx.id])
            for tx in cfg.store.transmitters
        }
    txs = cfg.store.transmitters
    tx_plans = [plans[tx.id] for tx in txs]
    status_at = rmap.status.address if rmap.status is not None else 0
    n_channels = [len(p.channels) for p in tx_plans]

    def bare() -> int:
        n = 0
        for words in cycles:
            for block_words, nch in zip(words, n_channels, strict=True):
                w = [x for blk in block_words for x in blk]  # the blocks are contiguous from register 0
                for ch in range(nch):
                    v = (w[2 * ch] << 16) | w[2 * ch + 1]
                    if v & 0x80000000:
                        v -= 0x100000000
                    stable = w[status_at + ch] & 1
                    del v, stable
                n += nch
        return n

    def plan_decode() -> int:
        n = 0
        for words in cycles:
            for plan, block_words in zip(tx_plans, words, strict=True):
                n += len(plan.decode(block_words))
        return n

    out: dict[str, Any] = {"bins": bins, "simulated_s": seconds}
    for name, fn in (("bare_decode", bare), ("plan_decode", plan_decode)):
        best = 0.0
        for _ in range(3):
            c0 = time.process_time()
            n = fn()
            best = max(best, n / (time.process_time() - c0))
        out[f"{name}_samples_per_cpu_s"] = best
    res = asyncio.run(bp.run_once(bins, seconds, seed=0))
    out["pipeline_samples_per_cpu_s"] = res["samples_per_cpu_s"]
    out["pipeline_samples_per_s"] = res["samples_per_s"]
    samples = res["samples"]
    out["pipeline_us_per_sample"] = {
        "decode": res["decode_s"] / samples * 1e6,
        "engine": res["engine_s"] / samples * 1e6,
        "store": res["store_s"] / samples * 1e6,
    }
    out["events_stored"] = res["events"]
    return out


def run_all(print_fn: Callable[[str], None] = print, *, bus_seconds: float = 10.0) -> dict[str, Any]:
    """Every limit, printed as Markdown tables; returns the numbers."""
    from drivers.modbus.client import quiet_pymodbus_logging

    quiet_pymodbus_logging()
    out: dict[str, Any] = {}
    wire = rtu_wire_table()
    out["rtu_wire"] = wire
    print_fn(f"\n### Modbus RTU wire time — {wire['config']}\n")
    for b in wire["buses"]:
        print_fn(
            f"bus {b['bus']}: {b['baud']} Bd, {b['bits_per_char']} bits/char, t3.5 = {b['t35_ms']:.3f} ms\n\n"
            "| transmitter | poll s | channels | planned blocks (start, regs) | transactions/cycle plan / per tag |"
            " bytes/cycle plan / per tag | wire ms/cycle plan / per tag (turnaround 0) | same, turnaround 10 ms |\n"
            "|---|---|---|---|---|---|---|---|"
        )
        for r in b["transmitters"]:
            print_fn(
                f"| {r['transmitter']} | {r['poll_interval_s']:g} | {r['channels']} | {r['blocks']}"
                f" | {r['plan_transactions']} / {r['per_tag_transactions']} | {r['plan_bytes']} / {r['per_tag_bytes']}"
                f" | {r['plan_wire_ms@0']:.1f} / {r['per_tag_wire_ms@0']:.1f}"
                f" | {r['plan_wire_ms@10']:.1f} / {r['per_tag_wire_ms@10']:.1f} |"
            )
        print_fn(
            f"\nline utilisation at the configured poll rates: planned {100 * b['plan_utilisation@0']:.0f} %"
            f" (turnaround 0) / {100 * b['plan_utilisation@10']:.0f} % (10 ms); per tag"
            f" {100 * b['per_tag_utilisation@0']:.0f} % / {100 * b['per_tag_utilisation@10']:.0f} %."
            f" Ceiling (every transmitter of the line polled at the same rate): planned"
            f" {b['plan_max_poll_hz@0']:.1f} Hz / {b['plan_max_poll_hz@10']:.1f} Hz; per tag"
            f" {b['per_tag_max_poll_hz@0']:.1f} Hz / {b['per_tag_max_poll_hz@10']:.1f} Hz."
        )
    bl = wire["bench_layout"]
    print_fn(
        f"\nbench RTU layout (4 channels, {RTU_BAUD} Bd): shelfgate one 12-register block {bl['plan_wire_ms@0']:.1f} ms"
        f" ({bl['plan_wire_ms@10']:.1f} with 10 ms turnaround) per transmitter poll; the peer's 4 weight reads"
        f" {bl['peer_tags_wire_ms@0']:.1f} ms ({bl['peer_tags_wire_ms@10']:.1f})."
    )
    try:
        used = asyncio.run(_measure_bus_time(bus_seconds))
    except Exception as exc:  # noqa: BLE001 - a limit that cannot be measured is reported, not fatal
        used = {"error": f"{type(exc).__name__}: {exc}"}
    out["bus_used"] = used
    print_fn(
        f"\nbus time shelfgate used, demo store in-process for {bus_seconds:g} s (pty/loopback: no baud pacing)\n"
    )
    if "error" in used:
        print_fn(f"not measured: {used['error']}")
    else:
        print_fn(
            "| bus | cycles/s done / scheduled | transactions/cycle | busy ms/cycle (software round trip) |"
            " busy fraction |\n|---|---|---|---|---|"
        )
        for bus_id, u in used.items():
            print_fn(
                f"| {bus_id}{' (RTU)' if u['rtu'] else ' (TCP)'} | {u['cycles_per_s']:.2f} / {u['scheduled_cycles_per_s']:.2f}"
                f" | {u['transactions_per_cycle']:.2f} | {u['busy_ms_per_cycle']:.2f} | {100 * u['busy_fraction']:.1f} % |"
            )
    pipe = pipeline_overhead()
    out["pipeline"] = pipe
    bare = pipe["bare_decode_samples_per_cpu_s"]
    print_fn(
        f"\n### Edge pipeline vs a bare decode loop ({pipe['bins']} bins, {pipe['simulated_s']:g} simulated s at 10 Hz)\n\n"
        "| path | samples per CPU-second | vs bare decode |\n|---|---|---|\n"
        f"| bare loop: block words → int32 + stable bit | {bare:,.0f} | 1.0× |\n"
        f"| `PollPlan.decode` (ChannelReading per channel) | {pipe['plan_decode_samples_per_cpu_s']:,.0f}"
        f" | {bare / pipe['plan_decode_samples_per_cpu_s']:.1f}× slower |\n"
        f"| full pipeline: decode → estimator → rules → SQLite ({pipe['events_stored']} events) |"
        f" {pipe['pipeline_samples_per_cpu_s']:,.0f} | {bare / pipe['pipeline_samples_per_cpu_s']:.1f}× slower |\n\n"
        f"pipeline µs per sample: decode {pipe['pipeline_us_per_sample']['decode']:.2f},"
        f" estimator + rules {pipe['pipeline_us_per_sample']['engine']:.2f},"
        f" store (awaited commits) {pipe['pipeline_us_per_sample']['store']:.2f}"
    )
    return out
