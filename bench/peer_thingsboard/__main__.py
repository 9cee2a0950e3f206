"""`python -m bench.peer_thingsboard [--quick] [--levels ...]`: the peer and shelfgate, level by level.

Prints a table per load level as it goes, then the outage table and the limits, and writes everything to
`--out` (JSON; default `var/bench-peer/results-<time>.json`) and, when matplotlib is importable, a plot
(`--plot`, default next to the JSON). Nothing is asserted: this is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import harness, peer
from .harness import Outage, RunResult, Timing
from .layout import DEFAULT_LEVELS, QUICK_LEVELS, Level

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ scripts import `_host` as top level
from _host import load_average, machine


def _fmt(v: float | None, spec: str = ".1f", none: str = "—") -> str:
    return none if v is None else format(v, spec)


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f} %"


def level_table(level: Level, rows: list[RunResult]) -> str:
    """The per-level table (Markdown, so it can be pasted into docs/benchmarks-peer.md)."""
    head = (
        "| side | readings/s expected | delivered | CPU % core | CPU ms / reading | RSS MB end / max |"
        " changes delivered | wrong | latency p50 / p99 ms | sim CPU % | load 1 min before → after |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    body = ""
    for r in rows:
        where = "at broker" if r.side == "peer" else "at engine"
        body += (
            f"| {r.side} | {r.expected_per_s:g} | {r.readings_per_s:.1f} {where}"
            f" ({_pct(r.readings_per_s / r.expected_per_s if r.expected_per_s else None)}) | {r.cpu_pct:.1f}"
            f" | {_fmt(r.cpu_ms_per_reading, '.3f')} | {_fmt(r.rss_mb_end)} / {_fmt(r.rss_mb_max)}"
            f" | {r.changes_delivered}/{r.changes} ({_pct(r.changes_fraction)}) | {r.wrong_events}"
            f" | {_fmt(r.p50_ms, '.0f')} / {_fmt(r.p99_ms, '.0f')} | {r.sim_cpu_pct:.0f}"
            f" | {r.load_before[0]:.2f} → {r.load_after[0]:.2f} |\n"
        )
    ratio = ""
    by = {r.side: r for r in rows}
    p, s = by.get("peer"), by.get("shelfgate")
    if p and s and p.cpu_ms_per_reading and s.cpu_ms_per_reading:
        ratio = f"CPU per reading, peer / shelfgate: **{p.cpu_ms_per_reading / s.cpu_ms_per_reading:.1f}×**\n"
    errors = "".join(f"- {r.side}: {e}\n" for r in rows for e in r.errors)
    return f"\n### {level.name} ({level.transport.upper()}, {level.devices} × {level.rate_hz:g} Hz)\n\n{head}{body}\n{ratio}{errors}"


def outage_table(rows: list[RunResult]) -> str:
    """The broker-outage table."""
    out = (
        "| side | mode | outage s | value changes during the outage delivered | all changes delivered | wrong |"
        " duplicates | peer readings taken during the outage delivered | worst latency ms |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    for r in rows:
        e = r.extra
        readings = (
            f"{e.get('outage_readings_delivered', '—')}/{e.get('outage_readings_expected', '—')}"
            if r.side == "peer"
            else f"n/a (polled {e.get('outage_engine_readings', '—')} at the engine)"
        )
        out += (
            f"| {r.side} | {e.get('outage_mode', '?')} | {_fmt(e.get('outage_s'))}"
            f" | {e.get('outage_changes_delivered', '—')}/{e.get('outage_changes', '—')}"
            f" | {r.changes_delivered}/{r.changes} | {r.wrong_events} | {r.duplicate_events} | {readings}"
            f" | {_fmt(r.max_ms, '.0f')} |\n"
        )
    return out


def summary_table(levels: list[list[dict[str, Any]]]) -> str:
    """One row per level, both sides side by side (what docs/benchmarks-peer.md shows)."""
    out = (
        "| level | expected readings/s | peer: delivered at broker | shelfgate: at engine | peer CPU ms/reading |"
        " shelfgate CPU ms/reading | ratio | value changes delivered peer / shelfgate | latency p50/p99 ms peer |"
        " latency p50/p99 ms shelfgate | RSS MB peer / shelfgate | load 1 min (before→after) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    for rows in levels:
        by = {r["side"]: r for r in rows}
        p, s = by.get("peer"), by.get("shelfgate")
        if p is None or s is None:
            continue
        ratio = (
            f"**{p['cpu_ms_per_reading'] / s['cpu_ms_per_reading']:.1f}×**"
            if p["cpu_ms_per_reading"] and s["cpu_ms_per_reading"]
            else "—"
        )
        exp = p["expected_per_s"]
        out += (
            f"| {p['level']} | {exp:g} | {p['readings_per_s']:.1f} ({100 * p['readings_per_s'] / exp:.0f} %)"
            f" | {s['readings_per_s']:.1f} ({100 * s['readings_per_s'] / exp:.0f} %)"
            f" | {_fmt(p['cpu_ms_per_reading'], '.2f')} | {_fmt(s['cpu_ms_per_reading'], '.3f')} | {ratio}"
            f" | {_pct(p['changes_fraction'])} / {_pct(s['changes_fraction'])}"
            f" | {_fmt(p['p50_ms'], '.0f')} / {_fmt(p['p99_ms'], '.0f')}"
            f" | {_fmt(s['p50_ms'], '.0f')} / {_fmt(s['p99_ms'], '.0f')}"
            f" | {_fmt(p['rss_mb_max'], '.0f')} / {_fmt(s['rss_mb_max'], '.0f')}"
            f" | {p['load_before'][0]:.1f}→{p['load_after'][0]:.1f} / {s['load_before'][0]:.1f}→{s['load_after'][0]:.1f} |\n"
        )
    return out


def report(path: Path) -> None:
    """Print the summary and outage tables of a results JSON written by an earlier run."""
    results = json.loads(path.read_text(encoding="utf-8"))
    meta = results.get("meta", {})
    print(f"started {meta.get('started')}; {meta.get('load_at_start')}; timing {meta.get('timing')}")
    for k, v in meta.get("versions", {}).items():
        print(f"- {k}: {v}")
    print()
    print(summary_table(results.get("levels", [])))
    if results.get("outage"):
        print(
            outage_table(
                [
                    RunResult(
                        **{**r, "load_before": tuple(r["load_before"]), "load_after": tuple(r["load_after"])}
                    )
                    for r in results["outage"]
                ]
            )
        )


def versions() -> dict[str, str]:
    """Versions of everything measured."""
    out = {"machine": machine(), "python": platform.python_version()}
    try:
        import pymodbus

        out["pymodbus (shelfgate, simulator)"] = str(pymodbus.__version__)
    except ImportError:  # pragma: no cover
        pass
    from edge import __version__

    out["shelfgate"] = __version__
    mosq = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.run([mosq, "-h"], capture_output=True, text=True, check=False)
    first = (proc.stdout or proc.stderr).splitlines()[:1]
    out["mosquitto"] = first[0] if first else "?"
    freeze = peer.pip_freeze()
    for line in freeze.splitlines():
        name = line.split("==")[0].lower()
        if name in ("thingsboard-gateway", "tb-mqtt-client", "tb-paho-mqtt-client", "pymodbus"):
            out[f"peer {name}"] = line.split("==")[-1]
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the levels, the outage test and the limits; print tables; write JSON (+ plot)."""
    p = argparse.ArgumentParser(prog="bench/peer_thingsboard/run", description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick", action="store_true", help=f"levels {' '.join(QUICK_LEVELS)}, short windows, no outage"
    )
    p.add_argument(
        "--levels", nargs="+", default=None, help=f"default: {' '.join(DEFAULT_LEVELS)}; 'none' = skip"
    )
    p.add_argument("--sides", nargs="+", choices=("peer", "shelfgate"), default=["peer", "shelfgate"])
    p.add_argument("--warmup-s", type=float, default=None)
    p.add_argument("--window-s", type=float, default=None)
    p.add_argument("--drain-s", type=float, default=5.0)
    p.add_argument(
        "--outage",
        choices=("none", "freeze", "restart", "both"),
        default=None,
        help="broker outage test (default: both, none with --quick)",
    )
    p.add_argument("--outage-level", type=Level.parse, default=Level.parse("10x5"))
    p.add_argument("--outage-s", type=float, default=20.0)
    p.add_argument("--limits", choices=("yes", "no"), default=None, help="RTU wire time + pipeline overhead")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keep", type=Path, default=None, help="keep every run's files in this folder")
    p.add_argument(
        "--out", type=Path, default=None, help="results JSON (default var/bench-peer/results-TIME.json)"
    )
    p.add_argument(
        "--plot", type=Path, default=None, help="PNG plot (default next to --out; needs matplotlib)"
    )
    p.add_argument("--install-only", action="store_true", help="install the peer venv and stop")
    p.add_argument("--report", type=Path, default=None, help="print the tables of an earlier results JSON")
    args = p.parse_args(argv)
    if args.report is not None:
        report(args.report)
        return 0

    exe = peer.ensure_installed()
    print(f"peer: {exe}")
    if args.install_only:
        return 0
    names = args.levels or (QUICK_LEVELS if args.quick else DEFAULT_LEVELS)
    levels = [] if list(names) == ["none"] else [Level.parse(x) for x in names]
    timing = Timing(
        warmup_s=args.warmup_s if args.warmup_s is not None else (4.0 if args.quick else 10.0),
        window_s=args.window_s if args.window_s is not None else (10.0 if args.quick else 30.0),
        drain_s=args.drain_s,
    )
    outage_modes = {"none": [], "freeze": ["freeze"], "restart": ["restart"], "both": ["freeze", "restart"]}[
        args.outage or ("none" if args.quick else "both")
    ]
    do_limits = (args.limits or ("no" if args.quick else "yes")) == "yes"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_path = args.out or Path("var/bench-peer") / f"results-{stamp}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-peer-"))
    work.mkdir(parents=True, exist_ok=True)

    vers = versions()
    meta: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "versions": vers,
        "timing": asdict(timing),
        "load_at_start": load_average(),
        "argv": sys.argv[1:],
    }
    print(f"machine: {vers['machine']}")
    print(f"{meta['load_at_start']} — other work on this machine skews every number; see the load columns")
    print(
        f"levels: {' '.join(lv.name for lv in levels)}; warm-up {timing.warmup_s:g} s, window {timing.window_s:g} s,"
        f" drain {timing.drain_s:g} s; runs in {work}"
    )
    results: dict[str, Any] = {"meta": meta, "levels": [], "outage": [], "limits": None}
    tables = []
    try:
        for level in levels:
            rows = []
            for side in args.sides:
                try:
                    rows.append(harness.run_one(side, level, timing, work, seed=args.seed))
                except (RuntimeError, OSError) as exc:
                    print(f"  {side} {level.name} failed: {exc}", flush=True)
                    r = RunResult(side=side, level=level.name, expected_per_s=level.readings_per_s)
                    r.errors.append(str(exc))
                    rows.append(r)
            table = level_table(level, rows)
            tables.append(table)
            print(table, flush=True)
            results["levels"].append([asdict(r) for r in rows])
            out_path.write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
        outage_rows = []
        for mode in outage_modes:
            for side in args.sides:
                o = Outage(mode=mode, seconds=args.outage_s)  # type: ignore[arg-type]
                try:
                    outage_rows.append(
                        harness.run_one(side, args.outage_level, timing, work, seed=args.seed, outage=o)
                    )
                except (RuntimeError, OSError) as exc:
                    print(f"  outage {mode} {side} failed: {exc}", flush=True)
        if outage_rows:
            t = outage_table(outage_rows)
            print(f"\n### broker outage at {args.outage_level.name}\n\n{t}", flush=True)
            results["outage"] = [asdict(r) for r in outage_rows]
            out_path.write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
        if do_limits:
            from . import limits

            results["limits"] = limits.run_all(print_fn=print)
        results["meta"]["load_at_end"] = load_average()
        if results["levels"]:
            print("\n### summary\n\n" + summary_table(results["levels"]))
        out_path.write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
        print(f"\nresults: {out_path}")
        try:
            from . import plot

            png = args.plot or out_path.with_suffix(".png")
            if plot.plot(results, png):
                print(f"plot: {png}")
        except ImportError:
            print("plot: skipped (matplotlib is not installed; the tables above have every number)")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"end: {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
