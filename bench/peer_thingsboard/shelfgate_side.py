"""shelfgate's side: a store config for the bench layout, and the real gateway run with a stats line.

`write_config` writes `store.yaml` + `profiles/bench-peer-4ch-int32.yaml` for a level: one bin per transmitter
channel (4 × 250 g items), one bus per simulator endpoint, the harness's broker, the API on a free port.

`python -m bench.peer_thingsboard.shelfgate_side --config store.yaml` runs `edge.gateway.Gateway(cfg).run()` —
the same object `shelfgate run` runs, with its API and uplink — and, once it is up, prints `READY` and then
one JSON stats line every 0.5 s on stdout: polls that reached the engine (`ok`: one reading = one decoded
transmitter poll), failed polls, channel samples fed to the estimators, the driver's bus-time counters, and
the uplink's published events. Printing is the only thing added to the gateway's process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from .layout import (
    CHANNELS,
    INITIAL_COUNT,
    PROFILE_NAME,
    RTU_BAUD,
    STATUS_ADDRESS,
    UNIT_SPREAD_G,
    UNIT_WEIGHT_G,
    WEIGHT_ADDRESS,
    Level,
    bin_id,
    device_name,
    endpoint_of,
)

STORE_ID = "bench-peer"

PROFILE_YAML = f"""\
# Written by bench/peer_thingsboard: the bench layout (layout.py) — 4 channels, int32 ABCD weights at 2n,
# status words at 8 + n (bit 0 stable, 1 overload, 2 fault). One 12-register FC03 block covers all of it.
name: {PROFILE_NAME}
description: bench transmitter, 4 channels, int32 counts (ABCD), 1 count = 1 g
channels: {CHANNELS}
weight: {{address: {WEIGHT_ADDRESS}, type: int32, word_order: ABCD, stride: 2, scale: 1.0}}
status: {{address: {STATUS_ADDRESS}, stride: 1, bits: {{stable: 0, overload: 1, fault: 2}}}}
"""


def store_yaml(level: Level, endpoints: list[tuple[str, str, int]], mqtt_port: int, data_dir: Path) -> str:
    """The store config for one level (YAML flow style: one line per bus, transmitter and bin)."""
    lines = [
        f"store_id: {STORE_ID}",
        f"data_dir: {data_dir}",
        f"broker: {{host: 127.0.0.1, port: {mqtt_port}, keepalive_s: 30}}",
        "api: {host: 127.0.0.1, port: 0}",
        "bridge: {heartbeat_s: 30}",
        "buses:",
    ]
    for n, (kind, host, port) in enumerate(endpoints):
        if kind == "rtu":
            lines.append(
                f"  - {{id: bus{n}, kind: rtu, port: {host}, baudrate: {RTU_BAUD}, parity: N, timeout_s: 0.3}}"
            )
        else:
            lines.append(f"  - {{id: bus{n}, kind: tcp, host: {host}, port: {port}, timeout_s: 1.0}}")
    lines.append("transmitters:")
    for i in range(level.devices):
        ep, unit = endpoint_of(i, level)
        lines.append(
            f"  - {{id: {device_name(i)}, bus: bus{ep}, unit_id: {unit}, profile: {PROFILE_NAME},"
            f" poll_interval_s: {level.poll_interval_s:g}}}"
        )
    lines.append("bins:")
    for i in range(level.devices):
        for ch in range(CHANNELS):
            n = i * CHANNELS + ch
            lines.append(
                f"  - {{id: {bin_id(i, ch)}, sku: '{6900000000000 + n:014d}', name: {{zh: 货品{n}, en: Item {n}}},"
                f" unit_weight_g: {UNIT_WEIGHT_G}, unit_weight_spread_g: {UNIT_SPREAD_G},"
                f" calibration: {{zero: 0, span_g_per_unit: 1.0}}, safety_stock: 3,"
                f" max_stock: {INITIAL_COUNT + 20}, device: {device_name(i)}, channel: {ch}}}"
            )
    return "\n".join(lines) + "\n"


def write_config(run_dir: Path, level: Level, endpoints: list[tuple[str, str, int]], mqtt_port: int) -> Path:
    """Write the store config and its profile into `run_dir`; returns the config path."""
    (run_dir / "profiles").mkdir(parents=True, exist_ok=True)
    (run_dir / "profiles" / f"{PROFILE_NAME}.yaml").write_text(PROFILE_YAML, encoding="utf-8")
    path = run_dir / "store.yaml"
    path.write_text(store_yaml(level, endpoints, mqtt_port, run_dir / "data"), encoding="utf-8")
    return path


def _transmitters(gw: Any) -> list[Any]:
    """The gateway's per-transmitter states (each with `.poller`), before or after the coordinator split."""
    modbus = getattr(gw, "modbus", None)
    if modbus is not None:
        return list(modbus.transmitters.values())
    devices = getattr(gw, "devices", None)
    return list(devices.values()) if devices is not None else []


def stats(gw: Any) -> dict[str, Any]:
    """One stats record of a running gateway (read from its own objects, in its own loop)."""
    ok = polls = errors = 0
    bus_time_s = 0.0
    buses: dict[str, dict[str, Any]] = {}
    for d in _transmitters(gw):
        p = d.poller
        if p is None:
            continue
        c = p.counters
        ok += c.ok
        polls += c.polls
        errors += c.errors
        bus_time_s += c.bus_time_s
        buses.setdefault(p.bus.bus_id, p.bus.stats())
    up = gw.uplink
    return {
        "mono": time.monotonic(),
        "ok": ok,
        "polls": polls,
        "errors": errors,
        "samples": gw.samples,
        "bus_time_s": bus_time_s,
        "buses": buses,
        "published_events": up.published_events if up is not None else 0,
        "published_batches": up.published_batches if up is not None else 0,
    }


async def run(config_path: Path, every_s: float) -> None:
    """Run the gateway; print READY and then a stats line every `every_s` until cancelled."""
    from edge.config import load_config
    from edge.gateway import Gateway

    cfg = load_config(config_path)
    ready = asyncio.Event()
    gw = Gateway(cfg, on_ready=lambda _g: ready.set())
    task = asyncio.create_task(gw.run(), name="bench.gateway")
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiter.cancel()
        await task  # re-raises why the gateway stopped
        return
    print("READY", flush=True)
    try:
        while not task.done():
            print(json.dumps(stats(gw)), flush=True)
            await asyncio.sleep(every_s)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def main(argv: list[str] | None = None) -> int:
    """Command line entry (the harness starts this in its own process)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--every-s", type=float, default=0.5)
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args(argv)
    from edge.logs import setup_logging

    setup_logging(args.log_level)

    async def main_async() -> None:
        loop = asyncio.get_running_loop()
        current = asyncio.current_task()
        assert current is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, current.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await run(args.config, args.every_s)

    asyncio.run(main_async())
    print("DONE", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
