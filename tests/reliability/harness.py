"""The reliability rig: a simulated store, a gateway and a hub as REAL processes, a broker, and a proxy between.

    SimStore (this process, Modbus TCP) ← gateway subprocess → TcpProxy (this process) → Mosquitto ← hub subprocess

The gateway and the hub are `python -m shelfgate run|hub --config …` children, so `kill -9` is a real power cut
(nothing flushed, no will suppressed). Ground truth is the simulator's own record of picks and puts
(`scenario.true_counts`); the gateway's ledger is the record of what the store generated (every event with its
seq); the hub's `events` table is what arrived. `verify()` compares the three and counts what was lost or
doubled. Sales ring up at a checkout lane through the gateway's local API (`ring_sale()`, 1–2 per shopper
wave, also during faults): the rig's record of the sales the gateway acknowledged is compared with the hub's
sales. Both the pytest suite (tests/reliability/) and the long randomized run (`python bench/reliability.py`)
drive this one class.

A clock seam (tests/reliability/clockseam/sitecustomize.py) is on both children's PYTHONPATH: `jump_clock(s)`
shifts their `time.time()` by writing an offset file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from edge.config import load_config
from firmware_sims.runner import SimStore
from shelfgate.broker import Mosquitto, free_port
from shelfgate.demo import layout_from_config
from tests.reliability.proxy import TcpProxy

STORE_ID = "rel-001"
CLOCK_SEAM = Path(__file__).resolve().parent / "clockseam"
PROJECT_ROOT = Path(__file__).resolve().parents[2]

# id, channel, unit g, spread g, zero, span, safety, max, initial — on one 12-channel Modbus TCP transmitter.
BINS: list[tuple[str, int, float, float, float, float, int, int, int]] = [
    ("B1", 0, 350.0, 3.0, 1000.0, 0.1, 4, 14, 7),
    ("B2", 1, 120.0, 2.0, 1100.0, 0.1, 4, 14, 8),
    ("B3", 2, 570.0, 4.0, 1000.0, 0.1, 4, 12, 6),
    ("B4", 3, 92.0, 1.5, 1185.0, 0.1, 5, 20, 9),
    ("B5", 4, 250.0, 2.0, 1050.0, 0.1, 4, 14, 7),
    ("B6", 5, 410.0, 3.0, 1020.0, 0.1, 4, 12, 8),
]
INITIAL = {b[0]: b[8] for b in BINS}
SETTLE_S = 1.6
LANE = "lane1"
"""The rig's checkout lane: a lane scanner on a port that does not exist (the gateway retries it with backoff and
runs the lane anyway); sales are rung through `/api/lanes/lane1/…`."""
PRICES_CNY = {"B1": "3.00", "B2": "4.50", "B3": "2.00", "B4": "5.80", "B5": "12.90", "B6": "7.25"}


def _gtin_check_digit(body13: str) -> str:
    """GS1 mod-10 check digit (GS1 General Specifications §7.9.1): weights 3,1,3,… from the right."""
    total = sum(int(c) * (3 if i % 2 == 0 else 1) for i, c in enumerate(reversed(body13)))
    return str((10 - total % 10) % 10)


def bin_sku(bin_id: str, channel: int) -> str:
    """The store SKU a bin names (not a valid GTIN: the catalogue maps it with `sku:`)."""
    return f"0690000001{channel:03d}{len(bin_id)}"


def bin_gtin(channel: int) -> str:
    """The GTIN-14 the lane scans for a bin's product."""
    body = f"0690000001{channel:03d}"
    return body + _gtin_check_digit(body)


def catalogue_yaml() -> str:
    """The rig's catalogue: one item per bin (its SKU as `sku:`), prices as quoted decimal strings."""
    out = "currency: CNY\nitems:\n"
    for bid, ch, unit, spread, *_ in BINS:
        out += (
            f"  - gtin: '{bin_gtin(ch)}'\n    sku: '{bin_sku(bid, ch)}'\n"
            f"    name: {{zh: 商品{bid}, en: Item {bid}}}\n    price: '{PRICES_CNY[bid]}'\n"
            f"    unit_weight_g: {unit}\n    unit_weight_spread_g: {spread}\n    category: rig\n"
        )
    return out


"""Between two moves on the same bin: the gateway needs a stable plate (dwell) to count a change."""


class RigError(AssertionError):
    """The rig did not reach a state in time (a hang guard, not a timing claim)."""


def store_yaml(
    *, tcp_port: int, broker_port: int, api_port: int, data_dir: Path, catalogue: Path, scanner_port: Path
) -> str:
    """The gateway config: one Modbus TCP transmitter, six bins, a catalogue and one checkout lane (its scanner
    port need not exist), fast dwell and heartbeat."""
    out = f"""\
store_id: {STORE_ID}
data_dir: {data_dir}
catalogue: {catalogue}
scanners:
  - {{id: scan1, port: {scanner_port}, role: lane, lane: {LANE}}}
buses:
  - {{id: tcp1, kind: tcp, host: 127.0.0.1, port: {tcp_port}, timeout_s: 0.5}}
transmitters:
  - {{id: tx1, bus: tcp1, unit_id: 7, profile: wt-int32-abcd, poll_interval_s: 0.1}}
broker: {{host: 127.0.0.1, port: {broker_port}, keepalive_s: 5}}
api: {{host: 127.0.0.1, port: {api_port}}}
alerts: {{dwell_s: 0.5, hysteresis_items: 1, silent_after_s: 5}}
bridge: {{heartbeat_s: 1, batch_max_events: 20, publish_timeout_s: 2}}
bins:
"""
    for bid, ch, unit, spread, zero, span, safety, mx, _ in BINS:
        out += textwrap.indent(
            f"- id: {bid}\n  sku: '{bin_sku(bid, ch)}'\n  name: {{zh: 商品{bid}, en: Item {bid}}}\n"
            f"  unit_weight_g: {unit}\n  unit_weight_spread_g: {spread}\n"
            f"  calibration: {{zero: {zero}, span_g_per_unit: {span}}}\n"
            f"  safety_stock: {safety}\n  max_stock: {mx}\n  device: tx1\n  channel: {ch}\n",
            "  ",
        )
    return out


def hub_yaml(*, db: Path, broker_port: int, api_port: int) -> str:
    """The hub config: persistent session, quick gap sweep so a hole is asked for within seconds."""
    return f"""\
hub_id: rel-hub
database: sqlite:///{db}
broker: {{host: 127.0.0.1, port: {broker_port}, keepalive_s: 5, client_id: rel-hub, reconnect_max_s: 2}}
api: {{host: 127.0.0.1, port: {api_port}}}
heartbeat_s: 1
ingest: {{gap_timeout_s: 1, gap_check_s: 0.5, resend_retry_s: 5, resend_min_interval_s: 1}}
"""


class Child:
    """One `python -m shelfgate …` subprocess with its log file; `kill9()` is SIGKILL, no cleanup."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str]) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        if self.alive:
            return
        self.starts += 1
        with self.log.open("ab") as f:
            f.write(f"\n=== start #{self.starts} {time.strftime('%H:%M:%S')} ===\n".encode())
            f.flush()
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=PROJECT_ROOT,
            )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM (clean stop), SIGKILL after 10 s."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Verdict:
    """What `verify()` found."""

    generated: int
    """Events the gateway wrote to its ledger (seq 1..generated)."""
    alerts_generated: int
    at_hub: int
    lost: list[int]
    doubled: list[int]
    mismatched: list[int]
    """Seqs whose type at the hub differs from the gateway's ledger."""
    truth: dict[str, int]
    gateway_stock: dict[str, int | None]
    hub_stock: dict[str, int]
    gateway_alerts: dict[str, str]
    hub_alerts: dict[str, str]
    problems: list[str] = field(default_factory=list)
    """Delivery broken: lost, doubled, gap, type mismatch, hub stock or alerts != gateway's."""
    count_problems: list[str] = field(default_factory=list)
    """The gateway's own count differs from the simulator's truth (the estimator, not the delivery path)."""
    sales_generated: int = 0
    """Sales the gateway acknowledged (200 with a transaction id) to the rig's lane calls."""
    sales_at_hub: int = 0
    """Of those, how many the hub holds."""
    sales_lost: list[str] = field(default_factory=list)
    sales_doubled: list[str] = field(default_factory=list)
    """Transaction ids listed more than once by the hub."""
    sales_total_cny: Decimal = Decimal("0.00")
    """Sum of the acknowledged sales' totals."""
    hub_sales_total_cny: Decimal = Decimal("0.00")
    """The hub's daily totals (gross) for this store summed over every day the run's clocks touched."""

    @property
    def ok(self) -> bool:
        return not self.problems and not self.count_problems


class Rig:
    """Start with `async with Rig(workdir) as rig`; faults are methods; `converge()` + `verify()` judge."""

    def __init__(self, workdir: Path, *, seed: int = 1, data_dir: Path | None = None) -> None:
        self.workdir = workdir
        self.rng = random.Random(seed)
        self.data_dir = data_dir or workdir / "gw"
        self.broker = Mosquitto(workdir / "mosquitto")
        self.proxy = TcpProxy("127.0.0.1", self.broker.port)
        self.gw_port = free_port()
        self.hub_port = free_port()
        self.hub_db = workdir / "hub.db"
        self.clock_file = workdir / "clock-offset"
        self.clock_file.write_text("0", encoding="ascii")
        self.clock_offset_s = 0.0
        self.clock_steps_s: tuple[float, ...] = (3600.0, -3600.0, 86_400.0, -600.0)
        """What a `clock_jump` fault picks from (a backward step stalls counting: test_known_bugs.py)."""
        self.clock_offsets_seen_s = [0.0]
        self.sim: SimStore | None = None
        self.http = httpx.AsyncClient(timeout=5)
        self.moves = 0
        self.sales_rng = random.Random(seed + 1)
        """Draws the sales: a stream of its own, so the shopper waves (and the states the fixed-move tests start
        from) are the same as without sales."""
        self.sales: dict[str, Decimal] = {}
        """Transaction id → total (CNY) of every sale the gateway acknowledged."""
        self.sales_unrung = 0
        """Sales that did not happen because the gateway was down; rung once it is up again."""
        self.sale_attempts_failed = 0
        self.last_sale_error = ""
        self._complete_in_doubt = False
        self.selling = True
        """Ring sales in each wave (a test that fills the gateway's disk turns this off: its lane would block)."""
        self._stack = contextlib.AsyncExitStack()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(CLOCK_SEAM), str(PROJECT_ROOT), env.get("PYTHONPATH", "")])
        env["SHELFGATE_CLOCK_OFFSET_FILE"] = str(self.clock_file)
        self.env = env
        self.gateway: Child | None = None
        self.hub: Child | None = None
        self.settled_seq: int | None = None
        """The gateway's last seq when `converge()` last saw everything delivered."""
        self.small_disk = False
        """The data_dir is a small tmpfs a test may fill (set by the fixture that mounted it)."""
        self.small_disk_reason = "not mounted by this rig's fixture"

    # --- lifecycle ----------------------------------------------------------------------------------------

    async def __aenter__(self) -> Rig:
        try:
            await self._start()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.broker.start)
        self._stack.callback(self.broker.stop)
        await self.proxy.start()
        self._stack.push_async_callback(self.proxy.stop)
        # The simulator's layout comes from the same config the gateway reads (port 1 is a placeholder).
        seed_cfg = self.workdir / "layout.yaml"
        catalogue = self.workdir / "catalogue.yaml"
        catalogue.write_text(catalogue_yaml(), encoding="utf-8")
        scanner_port = self.workdir / "no-lane-scanner"  # nobody scans: sales come through the API
        lane = {"catalogue": catalogue, "scanner_port": scanner_port}
        seed_cfg.write_text(
            store_yaml(tcp_port=1, broker_port=1, api_port=1, data_dir=self.data_dir, **lane),
            encoding="utf-8",
        )
        layout = layout_from_config(load_config(seed_cfg), seed=7, initial_counts=INITIAL)
        self.sim = await self._stack.enter_async_context(SimStore(layout, run_scenario=False))
        tcp_port = int(self.sim.endpoints["tcp1"].rsplit(":", 1)[1])
        gw_cfg = self.workdir / "store.yaml"
        gw_cfg.write_text(
            store_yaml(
                tcp_port=tcp_port,
                broker_port=self.proxy.port,
                api_port=self.gw_port,
                data_dir=self.data_dir,
                **lane,
            ),
            encoding="utf-8",
        )
        hub_cfg = self.workdir / "hub.yaml"
        hub_cfg.write_text(
            hub_yaml(db=self.hub_db, broker_port=self.broker.port, api_port=self.hub_port), encoding="utf-8"
        )
        py = sys.executable
        self.hub = Child(
            "hub",
            [py, "-m", "shelfgate", "hub", "--config", str(hub_cfg)],
            self.workdir / "hub.log",
            self.env,
        )
        self.gateway = Child(
            "gateway",
            [py, "-m", "shelfgate", "run", "--config", str(gw_cfg)],
            self.workdir / "gateway.log",
            self.env,
        )
        self._stack.callback(self.hub.stop)
        self._stack.callback(self.gateway.stop)
        self.hub.start()
        self.gateway.start()
        await self.wait_hub_up()
        await self.wait_gateway_up()
        await self.eventually(self._initial_known, 40, f"gateway counts every bin {INITIAL}")

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()
        await self._stack.aclose()

    # --- plumbing -----------------------------------------------------------------------------------------

    async def eventually(
        self, check: Any, timeout_s: float, what: str, *, seen: dict[str, object] | None = None
    ) -> None:
        """Poll `check()` until true; RigError naming `what` and the children's log tails after timeout_s."""
        deadline = time.monotonic() + timeout_s
        last: object = None
        while True:
            try:
                if await check():
                    return
            except (httpx.HTTPError, sqlite3.Error, OSError) as exc:
                last = exc
            if time.monotonic() > deadline:
                raise RigError(
                    f"timed out after {timeout_s:.0f} s waiting for: {what} (last error: {last})\n"
                    f"last seen: {seen}\n"
                    f"--- gateway log ---\n{self.gateway.tail() if self.gateway else ''}\n"
                    f"--- hub log ---\n{self.hub.tail() if self.hub else ''}"
                )
            await asyncio.sleep(0.2)

    async def _get(self, url: str) -> Any:
        r = await self.http.get(url)
        r.raise_for_status()
        return r.json()

    async def gw(self, path: str) -> Any:
        return await self._get(f"http://127.0.0.1:{self.gw_port}{path}")

    async def hubapi(self, path: str) -> Any:
        return await self._get(f"http://127.0.0.1:{self.hub_port}{path}")

    async def wait_gateway_up(self, timeout_s: float = 40) -> None:
        async def up() -> bool:
            assert self.gateway is not None
            if not self.gateway.alive:
                raise RigError(f"gateway exited:\n{self.gateway.tail()}")
            return bool(await self.gw("/api/health"))

        await self.eventually(up, timeout_s, "gateway API up")

    async def wait_hub_up(self, timeout_s: float = 40) -> None:
        async def up() -> bool:
            assert self.hub is not None
            if not self.hub.alive:
                raise RigError(f"hub exited:\n{self.hub.tail()}")
            return bool((await self.hubapi("/api/health")).get("mqtt_connected"))

        await self.eventually(up, timeout_s, "hub API up")

    async def _initial_known(self) -> bool:
        return await self.gateway_stock() == INITIAL

    @property
    def truth(self) -> dict[str, int]:
        assert self.sim is not None
        return dict(self.sim.scenario.true_counts)

    async def gateway_stock(self) -> dict[str, int | None]:
        return {b["bin_id"]: b["count"] for b in await self.gw("/api/stock")}

    async def hub_stock(self) -> dict[str, int]:
        return {b["bin_id"]: b["count"] for b in await self.hubapi(f"/api/stores/{STORE_ID}/stock")}

    def gw_db(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.data_dir / 'gateway.db'}?mode=ro", uri=True, timeout=5)

    def gateway_ledger(self) -> list[tuple[int, str]]:
        with contextlib.closing(self.gw_db()) as db:
            return [(int(s), str(t)) for s, t in db.execute("SELECT seq, type FROM ledger ORDER BY seq")]

    def outbox_depth(self) -> int:
        with contextlib.closing(self.gw_db()) as db:
            (n,) = db.execute("SELECT COUNT(*) FROM outbox").fetchone()
            return int(n)

    def hub_events(self) -> list[tuple[int, str]]:
        with contextlib.closing(sqlite3.connect(f"file:{self.hub_db}?mode=ro", uri=True, timeout=5)) as db:
            return [
                (int(s), str(t))
                for s, t in db.execute(
                    "SELECT seq, type FROM events WHERE store_id=? ORDER BY seq", (STORE_ID,)
                )
            ]

    # --- the store's activity ---------------------------------------------------------------------------

    def _move(self, bin_id: str, delta: int) -> None:
        assert self.sim is not None
        if delta < 0:
            self.sim.pick(bin_id, -delta)
        else:
            self.sim.put(bin_id, delta)
        self.moves += 1

    def random_moves(self) -> list[tuple[str, int]]:
        """One shopper wave: a pick or a restock on every bin, kept within 1..max so counts stay meaningful;
        picks take bins below safety stock and restocks bring them back, so low alerts rise and resolve."""
        moves = []
        for bid, _ch, _u, _s, _z, _sp, safety, mx, _ in BINS:
            have = self.truth[bid]
            if have <= safety - 1 or (have < mx - 2 and self.rng.random() < 0.3):
                moves.append((bid, self.rng.randint(1, mx - have)))
            else:
                moves.append((bid, -self.rng.randint(1, min(3, have - 1))))
        return moves

    async def wave(self, moves: list[tuple[str, int]] | None = None) -> None:
        """Apply moves (default: a random wave), ring up 1–2 sales at the lane (plus any the gateway missed
        while it was down), then let the plates settle. The sales' goods are NOT taken off the simulated shelves:
        the shelf truth stays the simulator's picks and puts."""
        t0 = time.monotonic()
        for bin_id, delta in moves if moves is not None else self.random_moves():
            self._move(bin_id, delta)
        if self.selling:
            await self.ring_sales(self.sales_rng.randint(1, 2))
        rest = SETTLE_S - (time.monotonic() - t0)
        if rest > 0:
            await asyncio.sleep(rest)

    async def ring_sales(self, new: int) -> None:
        """Ring `new` sales plus the ones owed from earlier failures; stop at the first failure (gateway down)
        and owe the rest."""
        owed = self.sales_unrung + new
        self.sales_unrung = 0
        for i in range(owed):
            if not await self.ring_sale():
                self.sales_unrung = owed - i
                return

    async def ring_sale(self) -> bool:
        """One sale of 1–3 random bin products through the lane API. True when the gateway acknowledged it
        (200 with a transaction id; recorded in `self.sales`). A failed call — the gateway is dead or
        restarting — means the sale did not happen: an open transaction it left is cancelled on the next try.
        A `complete` whose answer was lost (sent, then a timeout) is retried as a cashier screen would: completing
        a completed transaction answers the same sale and records nothing more (edge/lane_api.py)."""
        base = f"http://127.0.0.1:{self.gw_port}/api/lanes/{LANE}"
        codes = [bin_gtin(b[1]) for b in self.sales_rng.sample(BINS, self.sales_rng.randint(1, 3))]
        try:
            view = (await self.http.get(base)).raise_for_status().json()
            tx = view.get("transaction")
            if self._complete_in_doubt and tx is not None and tx.get("status") == "completed":
                self._complete_in_doubt = False
                self._acknowledge((await self.http.post(f"{base}/complete")).raise_for_status().json())
                tx = None
            self._complete_in_doubt = False
            if tx is not None and tx.get("status") == "open":
                (await self.http.post(f"{base}/cancel")).raise_for_status()
            if view.get("cashier") is None:
                (await self.http.post(f"{base}/cashier", json={"cashier": "rel1"})).raise_for_status()
            for code in codes:
                (await self.http.post(f"{base}/scan", json={"code": code})).raise_for_status()
            try:
                r = await self.http.post(f"{base}/complete")
            except httpx.TransportError as exc:
                # Refused before sending: it did not happen. Anything later: it may have; ask on the next try.
                self._complete_in_doubt = not isinstance(exc, httpx.ConnectError)
                raise
            return self._acknowledge(r.raise_for_status().json())
        except httpx.HTTPError as exc:
            self.sale_attempts_failed += 1
            self.last_sale_error = f"{type(exc).__name__}: {exc}"
            return False

    def _acknowledge(self, view: dict[str, Any]) -> bool:
        """Record the sale in a 200 answer to `complete` (True) — or say it holds none (False)."""
        done = view.get("transaction") or {}
        tid = done.get("transaction_id")
        if done.get("status") != "completed" or not tid:
            self.sale_attempts_failed += 1
            self.last_sale_error = f"complete answered without a completed sale: {done}"
            return False
        self.sales[str(tid)] = Decimal(str(done["total"]))
        return True

    async def hub_sales(self) -> list[tuple[str, Decimal]]:
        """(transaction id, total) of every sale the hub lists for this store (newest first)."""
        rows = await self.hubapi(f"/api/sales?store={STORE_ID}&limit=1000")
        return [(str(r["transaction_id"]), Decimal(str(r["total"]))) for r in rows]

    async def hub_sales_total(self) -> Decimal:
        """The hub's daily gross for this store over every local day the children's clocks can have stamped."""
        now = datetime.now(UTC)
        first = (now + timedelta(seconds=min(self.clock_offsets_seen_s)) - timedelta(days=2)).date()
        last = (now + timedelta(seconds=max(self.clock_offsets_seen_s)) + timedelta(days=2)).date()
        days = await self.hubapi(f"/api/stores/{STORE_ID}/sales/daily?from={first}&to={last}")
        return sum((Decimal(str(d["gross"])) for d in days), Decimal("0.00"))

    async def burst(self, waves: int) -> None:
        for _ in range(waves):
            await self.wave()

    # --- faults -------------------------------------------------------------------------------------------

    def jump_clock(self, delta_s: float) -> None:
        """Step both children's wall clock by delta_s (forward or back), as an NTP step would."""
        self.clock_offset_s += delta_s
        self.clock_offsets_seen_s.append(self.clock_offset_s)
        self.clock_file.write_text(repr(self.clock_offset_s), encoding="ascii")

    async def restart_gateway_after_kill9(self) -> None:
        assert self.gateway is not None
        self.gateway.kill9()
        self.gateway.start()
        await self.wait_gateway_up()

    async def restart_hub_after_kill9(self) -> None:
        assert self.hub is not None
        self.hub.kill9()
        self.hub.start()
        await self.wait_hub_up()

    # --- judgement ----------------------------------------------------------------------------------------

    async def converge(self, timeout_s: float = 60, *, truth_grace_s: float | None = None) -> None:
        """Wait until everything generated is delivered — the gateway's outbox is empty, the hub holds exactly
        the gateway's seqs and the same stock — and the gateway counts the simulator's truth. With
        `truth_grace_s`, stop requiring the truth after that long (the bench then records the divergence
        instead of hanging on it). Raises RigError with what it last saw; `verify()` says what is wrong."""
        if self.selling and self.sales_unrung:
            await self.wait_gateway_up()
            await self.ring_sales(0)  # owed sales (the gateway was down at the last wave)
        truth = self.truth
        seen: dict[str, object] = {}
        t0 = time.monotonic()

        async def done() -> bool:
            for child in (self.gateway, self.hub):
                if child is not None and not child.alive:
                    raise RigError(f"{child.name} process exited on its own:\n{child.tail()}")
            seen["gateway_stock"] = gw = await self.gateway_stock()
            seen["outbox_depth"] = depth = self.outbox_depth()
            ledger = [s for s, _ in self.gateway_ledger()]
            seqs = [s for s, _ in self.hub_events()]
            seen["ledger"] = f"{len(ledger)} events, last {ledger[-1] if ledger else None}"
            seen["hub_missing"] = sorted(set(ledger) - set(seqs))[:20]
            seen["hub_extra"] = len(seqs) - len(set(seqs))
            if depth != 0 or seqs != ledger:
                return False
            if gw != truth and (truth_grace_s is None or time.monotonic() - t0 < truth_grace_s):
                return False
            seen["hub_stock"] = hub = await self.hub_stock()
            hub_sales = {t for t, _ in await self.hub_sales()}
            seen["sales_not_at_hub"] = sorted(set(self.sales) - hub_sales)[:5]
            if not set(self.sales) <= hub_sales:
                return False
            self.settled_seq = ledger[-1] if ledger else 0
            return hub == gw

        await self.eventually(
            done, timeout_s, f"everything delivered and gateway == truth {truth}", seen=seen
        )

    async def verify(self) -> Verdict:
        """Compare truth, gateway and hub; `Verdict.problems` lists every disagreement."""
        ledger = self.gateway_ledger()
        hub = self.hub_events()
        gw_types = dict(ledger)
        hub_count = Counter(s for s, _ in hub)
        hub_types = dict(hub)
        generated = len(ledger)
        problems = []
        if [s for s, _ in ledger] != list(range(1, generated + 1)):
            problems.append(f"gateway ledger seq is not 1..{generated} without gap")
        # Only what was settled counts as lost: an alert whose dwell ends just after converge() returned is
        # written after that check and is still on its way (the next converge covers it).
        settled = self.settled_seq if self.settled_seq is not None else max(gw_types, default=0)
        lost = sorted(s for s in set(gw_types) - set(hub_count) if s <= settled)
        doubled = sorted(s for s, n in hub_count.items() if n > 1)
        unknown = sorted(set(hub_count) - set(gw_types))
        mismatched = sorted(s for s in set(gw_types) & set(hub_types) if gw_types[s] != hub_types[s])
        if lost:
            problems.append(f"{len(lost)} event(s) never reached the hub: seq {lost[:20]}")
        if doubled:
            problems.append(f"{len(doubled)} seq(s) stored twice at the hub: {doubled[:20]}")
        if unknown:
            problems.append(f"the hub holds seq(s) the gateway never wrote: {unknown[:20]}")
        if mismatched:
            problems.append(f"seq(s) whose type differs gateway vs hub: {mismatched[:20]}")
        truth = self.truth
        gw_stock = await self.gateway_stock()
        hub_stock = await self.hub_stock()
        count_problems = []
        if gw_stock != truth:
            bad = {b: (gw_stock.get(b), n) for b, n in truth.items() if gw_stock.get(b) != n}
            count_problems.append(f"gateway count != truth (bin: (gateway, truth)) {bad}")
        if hub_stock != gw_stock:
            problems.append(f"hub stock {hub_stock} != gateway stock {gw_stock}")
        gw_alerts = {a["alert_id"]: a["state"] for a in await self.gw("/api/alerts?active=false&limit=5000")}
        hub_alerts = {a["alert_id"]: a["state"] for a in await self.hubapi(f"/api/stores/{STORE_ID}/alerts")}
        if gw_alerts != hub_alerts:
            problems.append(f"alert states differ: gateway {gw_alerts} hub {hub_alerts}")
        hub_sales = await self.hub_sales()
        hub_sale_count = Counter(t for t, _ in hub_sales)
        hub_sale_total = dict(hub_sales)
        sales_lost = sorted(set(self.sales) - set(hub_sale_count))
        sales_doubled = sorted(t for t, n in hub_sale_count.items() if n > 1)
        unacked = sorted(set(hub_sale_count) - set(self.sales))
        wrong_total = sorted(
            t for t in self.sales if t in hub_sale_total and hub_sale_total[t] != self.sales[t]
        )
        acked_total = sum(self.sales.values(), Decimal("0.00"))
        hub_total = await self.hub_sales_total()
        if sales_lost:
            problems.append(f"{len(sales_lost)} acknowledged sale(s) not at the hub: {sales_lost[:10]}")
        if sales_doubled:
            problems.append(f"sale(s) listed twice at the hub: {sales_doubled[:10]}")
        if unacked:
            problems.append(f"the hub holds sale(s) the gateway never acknowledged: {unacked[:10]}")
        if wrong_total:
            problems.append(f"sale total differs gateway vs hub: {wrong_total[:10]}")
        if hub_total != acked_total:
            problems.append(f"hub daily sales total {hub_total} != acknowledged sales total {acked_total}")
        return Verdict(
            generated=generated,
            alerts_generated=sum(1 for _, t in ledger if t.startswith("alert")),
            at_hub=len(hub_count),
            lost=lost,
            doubled=doubled,
            mismatched=mismatched,
            truth=truth,
            gateway_stock=gw_stock,
            hub_stock=hub_stock,
            gateway_alerts=gw_alerts,
            hub_alerts=hub_alerts,
            problems=problems,
            count_problems=count_problems,
            sales_generated=len(self.sales),
            sales_at_hub=len(set(self.sales) & set(hub_sale_count)),
            sales_lost=sales_lost,
            sales_doubled=sales_doubled,
            sales_total_cny=acked_total,
            hub_sales_total_cny=hub_total,
        )


# --- fault scripts (one per kind), shared by the pytest suite and bench/reliability.py ----------------------

FAULT_KINDS = (
    "broker_kill",
    "broker_freeze",
    "proxy_drop",
    "proxy_delay",
    "proxy_blackhole",
    "gateway_kill9",
    "hub_kill9",
    "clock_jump",
)


@dataclass
class FaultRecord:
    """One fault applied: what, for how long, and what happened around it."""

    kind: str
    hold_s: float
    detail: str = ""


async def apply_fault(rig: Rig, kind: str, *, hold_s: float, waves: int = 2) -> FaultRecord:
    """Apply one fault while the store keeps selling (`waves` shopper waves, the first one *during* the fault's
    onset), hold it `hold_s`, heal it. Does not wait for convergence: that is the caller's `converge()`."""
    rec = FaultRecord(kind, hold_s)
    t0 = time.monotonic()

    async def hold() -> None:
        """Shopper waves during the fault, then sit out the rest of hold_s."""
        await rig.burst(waves)
        rest = hold_s - (time.monotonic() - t0)
        if rest > 0:
            await asyncio.sleep(rest)

    if kind == "broker_kill":
        await asyncio.to_thread(rig.broker.kill)
        await hold()
        await asyncio.to_thread(rig.broker.start)
    elif kind == "broker_freeze":
        rig.broker.freeze()
        try:
            await hold()
        finally:
            rig.broker.thaw()
    elif kind.startswith("proxy_"):
        mode = kind.removeprefix("proxy_")
        rig.proxy.set_mode(mode, delay_s=0.7)  # type: ignore[arg-type]
        try:
            await hold()
        finally:
            rig.proxy.set_mode("pass")
        rec.detail = f"accepted {rig.proxy.connections_accepted}, reset {rig.proxy.connections_reset}"
    elif kind == "gateway_kill9":
        # Mid-burst: moves land, and the power goes while the gateway is still settling them / has some in its
        # outbox; more moves happen while it is dark; it comes back on the same data_dir.
        assert rig.gateway is not None
        for bin_id, delta in rig.random_moves():
            rig._move(bin_id, delta)
        await asyncio.sleep(rig.rng.uniform(0.2, 1.2))
        depth = rig.outbox_depth()
        rig.gateway.kill9()
        rec.detail = f"killed with outbox depth {depth}"
        await hold()
        rig.gateway.start()
        await rig.wait_gateway_up()
    elif kind == "hub_kill9":
        rec.detail = await kill_hub_mid_apply(rig, waves=waves)
    elif kind == "clock_jump":
        step_s = rig.rng.choice(rig.clock_steps_s)
        rig.jump_clock(step_s)
        rec.detail = f"wall clock stepped {step_s:+.0f} s (offset now {rig.clock_offset_s:+.0f} s)"
        await hold()
    else:
        raise ValueError(f"unknown fault kind {kind!r}; one of {FAULT_KINDS}")
    return rec


async def kill_hub_mid_apply(rig: Rig, *, waves: int) -> str:
    """Build a backlog while the hub is down, restart it, and SIGKILL it as soon as it has applied part of it;
    then restart it again. Says how far it had got (it may have applied all or none: a race, reported)."""
    assert rig.hub is not None
    rig.hub.kill9()
    await rig.burst(waves)
    await rig.eventually(lambda: _async_true(rig.outbox_depth() == 0), 30, "backlog handed to the broker")
    before = len(rig.hub_events())
    backlog = len(rig.gateway_ledger()) - before
    rig.hub.start()
    deadline = time.monotonic() + 30
    applied = 0
    while time.monotonic() < deadline and rig.hub.alive:
        with contextlib.suppress(sqlite3.Error):
            applied = len(rig.hub_events()) - before
        if applied > 0:
            break
        await asyncio.sleep(0.01)
    rig.hub.kill9()
    rig.hub.start()
    await rig.wait_hub_up()
    return f"hub killed after applying {applied} of a {backlog}-event backlog"


async def _async_true(value: bool) -> bool:
    return value
