"""One run of one gateway at one load level: broker, simulator, subscriber, gateway, then the accounting.

Per run, all fresh, all on 127.0.0.1: a private Mosquitto (`shelfgate.broker.Mosquitto`, free port), the
simulator (`sim.py`), the subscriber (`subscribe.py`), and the gateway — the peer (with `fake_tb_rpc.py`) or
shelfgate (`shelfgate_side.py`). Timeline::

    start ─▶ gateway ready ─▶ warm-up ─▶ SIGUSR1: changes on ─▶ window (CPU, RSS, readings) ─▶ SIGUSR2 ─▶ drain
                                                                                          late arrivals still count

The outage variant keeps the changes on and freezes (SIGSTOP) or freezes-then-kills-and-restarts the broker
in the middle. Every child is stopped in a `finally`, by its own pid.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from shelfgate.broker import Mosquitto

from . import accounting as acc
from . import peer, shelfgate_side
from .layout import CHANNELS, Level
from .procs import Child, cpu_s, status_kb

Side = Literal["peer", "shelfgate"]
REPO = Path(__file__).resolve().parents[2]
PROJECT_PY = sys.executable
PEER_TOPICS = ("v1/gateway/telemetry",)
SHELFGATE_TOPICS = (f"shelfgate/v1/stores/{shelfgate_side.STORE_ID}/events",)
READY_TIMEOUT_S = 180.0


@dataclass
class Timing:
    """How long each phase lasts."""

    warmup_s: float = 10.0
    window_s: float = 30.0
    drain_s: float = 5.0


@dataclass
class RunResult:
    """What one run measured (JSON-ready via `asdict`)."""

    side: str
    level: str
    expected_per_s: float
    window_s: float = 0.0
    readings: int = 0
    """Peer: telemetry entries received by the broker's subscriber; shelfgate: polls that reached the engine."""
    readings_per_s: float = 0.0
    cpu_s: float = 0.0
    cpu_pct: float = 0.0
    cpu_ms_per_reading: float | None = None
    rss_mb_end: float | None = None
    rss_mb_max: float | None = None
    hwm_mb: float | None = None
    sim_cpu_pct: float = 0.0
    changes: int = 0
    changes_delivered: int = 0
    changes_fraction: float | None = None
    wrong_events: int = 0
    duplicate_events: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    startup_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def _log(msg: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _stats_lines(child: Child) -> list[dict[str, Any]]:
    out = []
    for line in child.snapshot():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def _engine_readings(stats: list[dict[str, Any]], t0: float, t1: float) -> tuple[int, float, dict[str, Any]]:
    """shelfgate polls that reached the engine in [t0, t1], from the gateway's stats lines (rate × window)."""
    inside = [s for s in stats if t0 <= s["mono"] <= t1]
    if len(inside) < 2:
        return 0, 0.0, {}
    a, b = inside[0], inside[-1]
    dt = b["mono"] - a["mono"]
    rate = (b["ok"] - a["ok"]) / dt if dt > 0 else 0.0
    busy = sum(x["busy_s"] for x in b["buses"].values()) - sum(x["busy_s"] for x in a["buses"].values())
    tx = sum(x["transactions"] for x in b["buses"].values()) - sum(
        x["transactions"] for x in a["buses"].values()
    )
    extra = {
        "engine_samples_per_s": (b["samples"] - a["samples"]) / dt if dt > 0 else 0.0,
        "failed_polls": b["errors"] - a["errors"],
        "bus_busy_s_per_s": busy / dt if dt > 0 else 0.0,
        "transactions_per_s": tx / dt if dt > 0 else 0.0,
        "published_events": b["published_events"] - a["published_events"],
    }
    return round(rate * (t1 - t0)), rate, extra


def _wait_for_lines(path: Path, topic_prefix: str, minimum: int, timeout_s: float, child: Child) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited ({child.proc.returncode}) during start-up")
        n = sum(1 for m in acc.read_messages(path) if m.topic.startswith(topic_prefix))
        if n >= minimum:
            return
        time.sleep(0.5)
    raise RuntimeError(
        f"{child.name}: fewer than {minimum} messages on {topic_prefix} within {timeout_s:.0f} s"
    )


def _wait_initial_counts(path: Path, bins: int, timeout_s: float, child: Child) -> int:
    """shelfgate: wait until every bin has published its first (initial) count."""
    deadline = time.monotonic() + timeout_s
    seen = 0
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited ({child.proc.returncode}) during start-up")
        events = acc.shelfgate_stock_events(acc.read_messages(path))
        seen = len({(e.device, e.channel) for e in events})
        if seen >= bins:
            return seen
        time.sleep(0.5)
    return seen


@dataclass
class Outage:
    """The broker outage of an outage run."""

    mode: Literal["freeze", "restart"]
    """freeze: SIGSTOP for `seconds`, then SIGCONT. restart: SIGSTOP for `seconds`, then SIGKILL and start
    again on the same port (a link that died without a reset, then a broker that comes back empty-handed)."""
    seconds: float = 20.0
    before_s: float = 10.0
    after_s: float = 30.0


def run_one(
    side: Side,
    level: Level,
    timing: Timing,
    work: Path,
    *,
    seed: int = 1,
    outage: Outage | None = None,
) -> RunResult:
    """One gateway at one level (optionally with a broker outage); every child stopped at the end."""
    tag = f"{level.name.replace(':', '-')}-{side}" + (f"-{outage.mode}" if outage else "")
    run_dir = work / tag
    run_dir.mkdir(parents=True, exist_ok=True)
    res = RunResult(side=side, level=level.name, expected_per_s=level.readings_per_s)
    res.load_before = os.getloadavg()
    changes_path = run_dir / "changes.jsonl"
    messages_path = run_dir / "messages.tsv"
    for p in (changes_path, messages_path):
        p.unlink(missing_ok=True)
    broker = Mosquitto(run_dir / "mosquitto")
    children: list[Child] = []
    try:
        broker.start()
        sim = Child(
            "sim",
            [
                PROJECT_PY,
                "-m",
                "bench.peer_thingsboard.sim",
                "--level",
                level.name,
                "--changes",
                str(changes_path),
                "--seed",
                str(seed),
            ],
            cwd=REPO,
            stderr_file=run_dir / "sim.err",
        )
        children.append(sim)
        endpoints: list[tuple[str, str, int]] = []
        while True:
            line = sim.expect("", 30.0)
            if line.startswith("ENDPOINT"):
                _, kind, host, *rest = line.split()
                endpoints.append((kind, host, int(rest[0]) if rest else 0))
            elif line == "READY":
                break
        topics = PEER_TOPICS if side == "peer" else SHELFGATE_TOPICS
        sub_argv = [
            PROJECT_PY,
            "-m",
            "bench.peer_thingsboard.subscribe",
            "--port",
            str(broker.port),
            "--out",
            str(messages_path),
        ]
        for t in topics:
            sub_argv += ["--topic", t]
        sub = Child("subscriber", sub_argv, cwd=REPO, stderr_file=run_dir / "subscriber.err")
        children.append(sub)
        sub.expect("SUBSCRIBED", 30.0)
        started = time.monotonic()
        gw: Child
        if side == "peer":
            exe = peer.ensure_installed(log=_log)
            fake = Child(
                "fake-tb",
                [
                    str(peer.peer_python()),
                    str(Path(peer.__file__).with_name("fake_tb_rpc.py")),
                    str(broker.port),
                ],
                cwd=run_dir,
                stderr_file=run_dir / "fake_tb.err",
            )
            children.append(fake)
            fake.expect("fake-tb: subscribed", 30.0)
            cfg = peer.write_config(run_dir, level, endpoints, broker.port)
            gw = Child(
                "peer",
                [str(exe)],
                cwd=run_dir,
                env=peer.environment(cfg),
                stdout_file=run_dir / "gateway.log",
                stderr_file=run_dir / "gateway.err",
            )
            children.append(gw)
            _wait_for_lines(messages_path, "v1/gateway/telemetry", 1, READY_TIMEOUT_S, gw)
        else:
            cfg_path = shelfgate_side.write_config(run_dir, level, endpoints, broker.port)
            gw = Child(
                "shelfgate",
                [PROJECT_PY, "-m", "bench.peer_thingsboard.shelfgate_side", "--config", str(cfg_path)],
                cwd=REPO,
                stderr_file=run_dir / "gateway.err",
            )
            children.append(gw)
            gw.expect("READY", READY_TIMEOUT_S)
            bins = level.devices * CHANNELS
            seen = _wait_initial_counts(messages_path, bins, 30.0 + 10.0 * level.poll_interval_s, gw)
            if seen < bins:
                res.errors.append(f"only {seen} of {bins} bins had an initial count before the window")
        res.startup_s = time.monotonic() - started
        _log(f"{side} {level.name}: ready after {res.startup_s:.1f} s; warm-up {timing.warmup_s:.0f} s")
        time.sleep(timing.warmup_s)

        # --- the window ---
        t0, w0 = time.monotonic(), time.time()
        c0, s0 = cpu_s(gw.pid) or 0.0, cpu_s(sim.pid) or 0.0
        sim.signal(signal.SIGUSR1)
        rss: list[float] = []
        marks: dict[str, float] = {}
        window_s = timing.window_s if outage is None else outage.before_s + outage.seconds + outage.after_s
        end = t0 + window_s
        outage_started = False
        outage_done = outage is None
        while (now := time.monotonic()) < end:
            if outage is not None and not outage_started and now >= t0 + outage.before_s:
                outage_started = True
                marks["down_mono"], marks["down_wall"] = time.monotonic(), time.time()
                broker.freeze()
                _log(f"broker frozen (SIGSTOP) for {outage.seconds:.0f} s")
            if (
                outage is not None
                and outage_started
                and not outage_done
                and now >= marks["down_mono"] + outage.seconds
            ):
                outage_done = True
                if outage.mode == "freeze":
                    broker.thaw()
                    _log("broker resumed (SIGCONT)")
                else:
                    broker.kill()
                    broker.start()
                    _log("broker killed (SIGKILL) and restarted on the same port")
                marks["up_mono"], marks["up_wall"] = time.monotonic(), time.time()
            kb = status_kb(gw.pid, "VmRSS")
            if kb is not None:
                rss.append(kb / 1024)
            time.sleep(min(1.0, max(0.05, end - time.monotonic())))
        t1, w1 = time.monotonic(), time.time()
        c1, s1 = cpu_s(gw.pid) or c0, cpu_s(sim.pid) or s0
        sim.signal(signal.SIGUSR2)
        hwm = status_kb(gw.pid, "VmHWM")
        time.sleep(timing.drain_s if outage is None else max(timing.drain_s, 10.0))
        if gw.proc.poll() is not None:
            res.errors.append(f"{side} exited with {gw.proc.returncode} during the run")
        res.window_s = t1 - t0
        res.cpu_s = c1 - c0
        res.cpu_pct = 100.0 * res.cpu_s / res.window_s
        res.sim_cpu_pct = 100.0 * (s1 - s0) / res.window_s
        res.rss_mb_end = rss[-1] if rss else None
        res.rss_mb_max = max(rss) if rss else None
        res.hwm_mb = hwm / 1024 if hwm is not None else None
    finally:
        for ch in reversed(children):
            ch.stop()
        broker.stop()
    res.load_after = os.getloadavg()

    # --- accounting ---
    changes = acc.read_changes(changes_path)
    messages = acc.read_messages(messages_path)
    if side == "peer":
        readings = acc.peer_readings(messages)
        res.readings = acc.readings_between(readings, t0, t1)
        match = acc.match_peer(changes, readings)
        if outage is not None and "up_wall" in marks:
            down, up = marks["down_wall"], marks["up_wall"]
            taken = acc.distinct_readings_taken(readings, down, up)
            res.extra["outage_readings_expected"] = round(level.readings_per_s * (up - down))
            res.extra["outage_readings_delivered"] = taken
            all_taken = acc.distinct_readings_taken(readings, w0, w1)
            res.extra["window_readings_expected"] = round(level.readings_per_s * (w1 - w0))
            res.extra["window_readings_delivered"] = all_taken
    else:
        stats = _stats_lines(gw)
        res.readings, _, extra = _engine_readings(stats, t0, t1)
        res.extra.update(extra)
        events = acc.shelfgate_stock_events(messages)
        match = acc.match_shelfgate(changes, events, since_wall=w0)
        res.extra["stock_events_by_cause"] = acc.causes(acc.dedupe(events)[0])
        if outage is not None and "up_mono" in marks:
            down_ok = [s for s in stats if marks["down_mono"] <= s["mono"] <= marks["up_mono"]]
            if len(down_ok) >= 2:
                res.extra["outage_engine_readings"] = down_ok[-1]["ok"] - down_ok[0]["ok"]
    if outage is not None and "up_wall" in marks:
        res.extra["outage_mode"] = outage.mode
        res.extra["outage_s"] = marks["up_wall"] - marks["down_wall"]
        during = [c for c in changes if marks["down_wall"] <= c.wall < marks["up_wall"]]
        sub_match = (
            acc.match_peer(during, acc.peer_readings(messages))
            if side == "peer"
            else acc.match_shelfgate(during, acc.shelfgate_stock_events(messages), since_wall=w0)
        )
        res.extra["outage_changes"] = len(during)
        res.extra["outage_changes_delivered"] = sub_match.delivered
    res.readings_per_s = res.readings / res.window_s if res.window_s else 0.0
    res.cpu_ms_per_reading = acc.cpu_per_reading_ms(res.cpu_s, res.readings)
    res.changes = match.changes
    res.changes_delivered = match.delivered
    res.changes_fraction = match.fraction
    res.wrong_events = match.wrong
    res.duplicate_events = match.duplicates
    lat = match.latencies_s
    p50, p99 = acc.percentile(lat, 50), acc.percentile(lat, 99)
    res.p50_ms = None if p50 is None else 1000 * p50
    res.p99_ms = None if p99 is None else 1000 * p99
    res.max_ms = 1000 * max(lat) if lat else None
    if lat:
        res.extra["mean_latency_ms"] = 1000 * statistics.fmean(lat)
    (run_dir / "result.json").write_text(json.dumps(asdict(res), indent=2), encoding="utf-8")
    return res
