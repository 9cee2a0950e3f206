"""Gateway resident memory and CPU with 2 000 bins on 20 transmitters, polled over Modbus TCP.

Run: `.venv/bin/python bench/bench_rss.py [--poll-s 0.5 [0.1 ...]] [--warmup-s 20] [--sample-s 40]`.

Target (ARCHITECTURE.md "Numbers the product is built to"): gateway RSS ≤ 100 MB with 2 000 bins and 20 devices.

Three processes, as in a store: a private Mosquitto on a free loopback port; `shelfgate sim --config STORE.yaml`
serving the transmitters (its store scenario runs: shoppers pick about 6 times a minute and staff restock, so
the engine, the alert rules, SQLite and the uplink all see some traffic); and the gateway as
`shelfgate run --config GATEWAY.yaml`, the real entry point. The store config and the 100-channel register
profile (`profiles/bench-int32-abcd-100.yaml`: int32 ABCD weights at 0 + 2n, status words at 200 + n) are
written by this script into a temporary folder. Each transmitter is its own Modbus TCP endpoint by default
(`--tcp-buses 20`: 20 connections, the memory-heavier layout); `--tcp-buses 1` puts all 20 unit ids behind one
TCP gateway instead. The buses are split across `--sims 2` simulator processes by default: one simulator
cannot compute 2 000 channels of plate physics at 2 Hz on this machine (it saturates a core and delivers
about 55 % of the samples); two keep up at 2 Hz, and nothing that fits on 2 cores keeps up at 10 Hz, so the
table reports the samples/s actually delivered and the gateway's CPU per 1 000 samples/s.

After the warm-up the gateway process is sampled once a second from /proc: VmRSS and VmHWM (peak) from
/proc/PID/status, CPU from the utime + stime deltas of /proc/PID/stat (all threads, as % of one core). The
simulator's CPU is sampled the same way: on this 2-core machine it competes with the gateway, and a simulator
that cannot keep up shows as fewer samples/s than the schedule asks for. Samples/s = Δ(Σ successful polls ×
bins on the device) from `GET /api/devices` over the window, compared with bins / poll interval.

No assertion on time or memory: this prints a table per poll interval. Every process it started is stopped in
a `finally` (SIGINT, then SIGTERM, then SIGKILL), on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
from _host import load_average, machine

from shelfgate.broker import Mosquitto

VENV_BIN = Path(sys.executable).parent
SHELFGATE = VENV_BIN / "shelfgate"
TRANSMITTERS = 20
CHANNELS = 100
PROFILE = "bench-int32-abcd-100"
STORE_ID = "bench-rss-001"
TARGET_RSS_MB = 100.0
CLK_TCK = os.sysconf("SC_CLK_TCK")

PROFILE_YAML = f"""\
# Written by bench/bench_rss.py: a 100-channel transmitter, int32 counts high word first (ABCD).
# FC03 reads at most 125 registers (Modbus Application Protocol v1.1b3 §6.3), so the poll planner splits the
# 200 weight registers and 100 status words into several block reads.
name: {PROFILE}
description: 100-channel load-cell transmitter, int32 counts (ABCD), status word per channel
channels: {CHANNELS}
weight: {{address: 0, type: int32, word_order: ABCD, stride: 2, scale: 1.0}}
status: {{address: 200, stride: 1, bits: {{stable: 0, overload: 1, fault: 2}}}}
"""

# A spread of packaged goods: unit grams, spread grams (about 1 %), safety stock, max stock.
ITEMS: tuple[tuple[float, float, int, int], ...] = (
    (350.0, 3.0, 4, 12),
    (570.0, 5.0, 4, 12),
    (120.0, 1.2, 6, 24),
    (92.0, 0.9, 6, 24),
    (262.0, 2.5, 4, 12),
    (215.0, 2.0, 4, 12),
    (105.0, 1.0, 6, 24),
)


def store_yaml(
    *,
    poll_s: float,
    tcp_buses: int,
    only_buses: Collection[int] | None = None,
    endpoints: Mapping[str, tuple[str, int]] | None = None,
    broker: tuple[str, int] = ("127.0.0.1", 1883),
    api_port: int = 0,
    data_dir: Path = Path("data"),
) -> str:
    """The 2 000-bin store, or the part of it on the bus indices `only_buses` (what one simulator serves).

    Without `endpoints` the bus ports are placeholders: `shelfgate sim` picks free ones and prints them.
    Transmitter t sits on bus t mod `tcp_buses`, so `--tcp-buses 1` puts all 20 unit ids behind one endpoint.
    """
    wanted = set(range(tcp_buses)) if only_buses is None else set(only_buses)
    buses = []
    for i in sorted(wanted):
        bus_id = f"tcp{i + 1}"
        host, port = (endpoints or {}).get(bus_id, ("127.0.0.1", 1))
        buses.append(f"  - {{id: {bus_id}, kind: tcp, host: {host}, port: {port}, timeout_s: 1.0}}")
    txs = []
    bins = []
    for t in range(TRANSMITTERS):
        if t % tcp_buses not in wanted:
            continue
        txs.append(
            f"  - {{id: tx{t + 1:02d}, bus: tcp{t % tcp_buses + 1}, unit_id: {t // tcp_buses + 1},"
            f" profile: {PROFILE}, poll_interval_s: {poll_s}}}"
        )
        for ch in range(CHANNELS):
            n = t * CHANNELS + ch
            unit_g, spread_g, safety, max_stock = ITEMS[n % len(ITEMS)]
            bins.append(
                f"  - {{id: B{n:04d}, sku: '069{n:011d}', name: {{zh: 商品{n}, en: Item {n}}},"
                f" unit_weight_g: {unit_g}, unit_weight_spread_g: {spread_g},"
                f" calibration: {{zero: {1000 + ch * 7}, span_g_per_unit: 0.1}},"
                f" safety_stock: {safety}, max_stock: {max_stock}, device: tx{t + 1:02d}, channel: {ch},"
                f" location: 'aisle {t // 4 + 1}, shelf {t % 4 + 1}'}}"
            )
    head = textwrap.dedent(
        f"""\
        # Written by bench/bench_rss.py: {len(txs)} transmitters × {CHANNELS} channels over Modbus TCP.
        store_id: {STORE_ID}
        data_dir: {data_dir}
        broker: {{host: {broker[0]}, port: {broker[1]}}}
        api: {{host: 127.0.0.1, port: {api_port}}}
        alerts: {{dwell_s: 2.0, hysteresis_items: 1, silent_after_s: 10}}
        bridge: {{heartbeat_s: 30}}
        """
    )
    sections = ("buses:", *buses, "transmitters:", *txs, "bins:", *bins)
    return head + "\n".join(sections) + "\n"


# --- /proc ---------------------------------------------------------------------------------------------------


def proc_status_kb(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/status (VmRSS, VmHWM, RssAnon, RssFile, …)."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            out[key] = int(parts[0])
    return out


def proc_cpu_s(pid: int) -> float:
    """utime + stime of the process (all its threads), seconds (proc(5): fields 14 and 15 of /proc/PID/stat)."""
    text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces; fields restart at 3
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_threads(pid: int) -> int:
    """Threads of the process."""
    return len(os.listdir(f"/proc/{pid}/task"))


def listen_port(host: str = "127.0.0.1") -> int:
    """A free port *below* the kernel's ephemeral range, for a child that binds it seconds later.

    A kernel-picked free port (bind to 0) is an ephemeral one; the gateway opens 21 outgoing connections
    (20 Modbus TCP, 1 MQTT) during the ~13 s before its API binds, and the kernel may hand the very same port
    to one of them — uvicorn then fails to bind (exit code 3). Ports below the ephemeral range are never
    auto-assigned to outgoing sockets (ip(7), ip_local_port_range).
    """
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text(encoding="ascii").split()[0])
    rng = random.Random()  # spreading picks, not security
    for _ in range(200):
        port = rng.randrange(20000, max(low, 20001))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port found in 20000..{low - 1}")


# --- child processes -----------------------------------------------------------------------------------------


@dataclass
class Children:
    """The processes this bench started, stopped in reverse order whatever happens."""

    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(
        self, name: str, argv: list[str], log: IO[bytes], *, stdout_pipe: bool = False
    ) -> subprocess.Popen[bytes]:
        """Start a child in its own session, so a Ctrl-C reaches only this script, which then stops it."""
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else log,
            stderr=log,
            start_new_session=True,
        )
        self.procs.append((name, proc))
        return proc

    def stop_all(self) -> None:
        """SIGINT (both CLIs exit cleanly on it), then SIGTERM, then SIGKILL; wait for each."""
        while self.procs:
            name, proc = self.procs.pop()
            for sig, wait_s in ((signal.SIGINT, 10.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                if proc.poll() is not None:
                    break
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=wait_s)
            if proc.poll() is None:
                print(f"warning: {name} (pid {proc.pid}) did not exit", file=sys.stderr)
            if proc.stdout is not None:
                proc.stdout.close()


def read_endpoints(proc: subprocess.Popen[bytes], buses: int, timeout_s: float) -> dict[str, tuple[str, int]]:
    """The `bus_id: tcp://host:port` lines `shelfgate sim` prints once it serves."""
    assert proc.stdout is not None
    out: dict[str, tuple[str, int]] = {}
    deadline = time.monotonic() + timeout_s
    buf = b""
    fd = proc.stdout.fileno()
    while len(out) < buses:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or proc.poll() is not None:
            raise RuntimeError(f"simulator printed {len(out)} of {buses} endpoints (exit code {proc.poll()})")
        ready, _, _ = select.select([fd], [], [], min(remaining, 0.5))
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            bus_id, _, url = line.decode().partition(": ")
            if url.startswith("tcp://"):
                host, port = url.removeprefix("tcp://").rsplit(":", 1)
                out[bus_id.strip()] = (host, int(port))
    return out


def wait_gateway(client: httpx.Client, base: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Until the API answers and every transmitter is online (a hang guard, not a timing claim)."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with code {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            last = client.get(f"{base}/api/health").json()
            if last.get("devices_online") == TRANSMITTERS:
                return
        time.sleep(0.5)
    raise RuntimeError(f"gateway not ready with all transmitters online within {timeout_s} s: {last}")


def device_totals(client: httpx.Client, base: str) -> tuple[int, int, int]:
    """(Σ ok polls × bins on the device, Σ polls, Σ errors) over all transmitters."""
    samples = polls = errors = 0
    for d in client.get(f"{base}/api/devices").json():
        c = d["counters"]
        samples += int(c["ok"]) * len(d["bins"])
        polls += int(c["polls"])
        errors += int(c["errors"])
    return samples, polls, errors


# --- one run -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """How the store is served: poll interval, Modbus TCP endpoints, simulator processes."""

    poll_s: float
    tcp_buses: int
    sims: int


@dataclass
class RunResult:
    """What one poll interval measured."""

    layout: Layout
    ready_s: float
    """From launching the gateway to its API answering with every transmitter online (config load included)."""
    rss_mb: list[float]
    hwm_mb: float
    anon_mb: float
    gw_cpu_pct: list[float]
    sim_cpu_pct: list[float]
    threads: int
    samples_per_s: float
    polls: int
    errors: int
    window_s: float


@dataclass
class Running:
    """The processes of one measurement."""

    gateway: subprocess.Popen[bytes]
    sims: list[subprocess.Popen[bytes]]
    api: str


@contextlib.contextmanager
def store_processes(work: Path, layout: Layout, lifetime_s: float) -> Iterator[Running]:
    """Broker, simulator(s) and gateway, each its own process; all stopped on exit, whatever happens."""
    (work / "profiles").mkdir(parents=True, exist_ok=True)
    (work / "profiles" / f"{PROFILE}.yaml").write_text(PROFILE_YAML, encoding="utf-8")
    children = Children()
    log = (work / "processes.log").open("ab")
    try:
        with Mosquitto(work / "mosquitto") as broker:
            try:
                sims: list[tuple[subprocess.Popen[bytes], int]] = []
                for i in range(layout.sims):
                    mine = [b for b in range(layout.tcp_buses) if b % layout.sims == i]
                    sim_cfg = work / f"store-sim{i + 1}.yaml"
                    text = store_yaml(poll_s=layout.poll_s, tcp_buses=layout.tcp_buses, only_buses=mine)
                    sim_cfg.write_text(text, encoding="utf-8")
                    argv = [str(SHELFGATE), "--log-level", "WARNING", "sim", "--config", str(sim_cfg)]
                    argv += ["--duration", f"{lifetime_s:.0f}"]
                    if layout.tcp_buses == 1:
                        argv += ["--tcp-port", str(listen_port())]
                    sims.append(
                        (children.start(f"simulator {i + 1}", argv, log, stdout_pipe=True), len(mine))
                    )
                endpoints: dict[str, tuple[str, int]] = {}
                for proc, n_buses in sims:
                    endpoints |= read_endpoints(proc, n_buses, timeout_s=120)
                api_port = listen_port()
                gw_cfg = work / "gateway.yaml"
                gw_cfg.write_text(
                    store_yaml(
                        poll_s=layout.poll_s,
                        tcp_buses=layout.tcp_buses,
                        endpoints=endpoints,
                        broker=(broker.host, broker.port),
                        api_port=api_port,
                        data_dir=work / "gw",
                    ),
                    encoding="utf-8",
                )
                gw = children.start(
                    "gateway",
                    [str(SHELFGATE), "--log-level", "WARNING", "run", "--config", str(gw_cfg)],
                    log,
                )
                yield Running(gw, [p for p, _ in sims], f"http://127.0.0.1:{api_port}")
            finally:
                children.stop_all()
    finally:
        log.close()


def measure(work: Path, layout: Layout, warmup_s: float, sample_s: float) -> RunResult:
    """Start the store, warm up, then sample the gateway once a second."""
    with (
        store_processes(work, layout, lifetime_s=warmup_s + sample_s + 300) as run,
        httpx.Client(timeout=10) as client,
    ):
        gw, base = run.gateway, run.api
        t_launch = time.monotonic()
        wait_gateway(client, base, gw, timeout_s=180)
        ready_s = time.monotonic() - t_launch
        time.sleep(warmup_s)
        rss: list[float] = []
        gw_cpu: list[float] = []
        sim_cpu: list[float] = []
        s0, polls0, err0 = device_totals(client, base)
        t_start = time.monotonic()
        prev_t, prev_gw, prev_sim = t_start, proc_cpu_s(gw.pid), sum(proc_cpu_s(p.pid) for p in run.sims)
        next_t = t_start
        while True:
            next_t += 1.0
            time.sleep(max(0.0, next_t - time.monotonic()))
            now = time.monotonic()
            if gw.poll() is not None:
                raise RuntimeError(f"gateway exited with code {gw.returncode} during sampling")
            rss.append(proc_status_kb(gw.pid)["VmRSS"] / 1024)
            g, s = proc_cpu_s(gw.pid), sum(proc_cpu_s(p.pid) for p in run.sims)
            gw_cpu.append(100.0 * (g - prev_gw) / (now - prev_t))
            sim_cpu.append(100.0 * (s - prev_sim) / (now - prev_t))
            prev_t, prev_gw, prev_sim = now, g, s
            if now - t_start >= sample_s:
                break
        s1, polls1, err1 = device_totals(client, base)
        window = time.monotonic() - t_start
        status = proc_status_kb(gw.pid)
        return RunResult(
            layout=layout,
            ready_s=ready_s,
            rss_mb=rss,
            hwm_mb=status["VmHWM"] / 1024,
            anon_mb=status.get("RssAnon", 0) / 1024,
            gw_cpu_pct=gw_cpu,
            sim_cpu_pct=sim_cpu,
            threads=proc_threads(gw.pid),
            samples_per_s=(s1 - s0) / window,
            polls=polls1 - polls0,
            errors=err1 - err0,
            window_s=window,
        )


def report(r: RunResult) -> str:
    """One table per layout."""
    lay = r.layout
    bins = TRANSMITTERS * CHANNELS
    expected = bins / lay.poll_s
    steady = statistics.median(r.rss_mb[len(r.rss_mb) // 2 :])
    verdict = "within" if max(r.hwm_mb, *r.rss_mb) <= TARGET_RSS_MB else "OVER"
    gw_mean = statistics.fmean(r.gw_cpu_pct)
    lines = [
        f"poll interval {lay.poll_s} s ({1 / lay.poll_s:g} Hz): {bins} bins on {TRANSMITTERS} transmitters,"
        f" {lay.tcp_buses} Modbus TCP endpoint(s), {lay.sims} simulator process(es);"
        f" {len(r.rss_mb)} samples over {r.window_s:.0f} s",
        f"  gateway start  {r.ready_s:.1f} s from launch to API up with every transmitter online",
        f"  gateway RSS    steady (median of 2nd half) {steady:.1f} MB; min {min(r.rss_mb):.1f}, max"
        f" {max(r.rss_mb):.1f}, first→last {r.rss_mb[0]:.1f}→{r.rss_mb[-1]:.1f} MB",
        f"  gateway peak   VmHWM {r.hwm_mb:.1f} MB (whole life, start-up included); RssAnon {r.anon_mb:.1f} MB;"
        f" {r.threads} threads -> {verdict} the {TARGET_RSS_MB:.0f} MB target",
        f"  gateway CPU    mean {gw_mean:.1f} % of one core; p90 {_p90(r.gw_cpu_pct):.1f} %;"
        f" max {max(r.gw_cpu_pct):.1f} %",
        f"  simulator CPU  mean {statistics.fmean(r.sim_cpu_pct):.1f} % of one core (all sims);"
        f" max {max(r.sim_cpu_pct):.1f} %",
        f"  samples/s      {r.samples_per_s:.0f} of the {expected:.0f} the schedule asks"
        f" ({r.samples_per_s / expected:.0%}); {r.polls} polls, {r.errors} failed",
        f"  gateway CPU per 1 000 samples/s: {gw_mean / (r.samples_per_s / 1000):.2f} % of one core",
    ]
    return "\n".join(lines)


def _p90(values: list[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=10, method="inclusive")[8]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument(
        "--poll-s", type=float, nargs="+", default=[0.5], help="poll interval(s), default 0.5"
    )
    parser.add_argument("--warmup-s", type=float, default=20.0, help="seconds before sampling (default 20)")
    parser.add_argument("--sample-s", type=float, default=40.0, help="seconds of 1 Hz sampling (default 40)")
    parser.add_argument(
        "--tcp-buses",
        type=int,
        default=TRANSMITTERS,
        help="Modbus TCP endpoints (default 20, one per device)",
    )
    parser.add_argument(
        "--sims", type=int, default=2, help="`shelfgate sim` processes sharing the buses (default 2)"
    )
    parser.add_argument(
        "--keep", type=Path, default=None, help="keep configs, logs and databases in this folder"
    )
    args = parser.parse_args()
    if not 1 <= args.tcp_buses <= TRANSMITTERS:
        parser.error(f"--tcp-buses must be 1..{TRANSMITTERS}")
    if not 1 <= args.sims <= args.tcp_buses:
        parser.error("--sims must be 1..--tcp-buses (each simulator serves whole buses)")
    print(f"machine: {machine()}")
    print(f"before: {load_average()}")
    print(
        f"gateway: `shelfgate run`, sampled from /proc every 1 s after {args.warmup_s:.0f} s warm-up;"
        " simulators: `shelfgate sim` (store scenario on); broker: mosquitto",
        flush=True,
    )
    try:
        for poll_s in args.poll_s:
            layout = Layout(poll_s=poll_s, tcp_buses=args.tcp_buses, sims=args.sims)
            with contextlib.ExitStack() as stack:
                if args.keep is not None:
                    work = args.keep / f"poll-{poll_s}"
                    work.mkdir(parents=True, exist_ok=True)
                else:
                    work = Path(
                        stack.enter_context(tempfile.TemporaryDirectory(prefix="shelfgate-bench-rss-"))
                    )
                result = measure(work, layout, args.warmup_s, args.sample_s)
            print()
            print(report(result))
            print(f"  after: {load_average()}", flush=True)
    except KeyboardInterrupt:
        print("interrupted; every process this bench started has been stopped", file=sys.stderr)


if __name__ == "__main__":
    main()
