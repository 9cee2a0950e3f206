"""One store day end to end on real parts, checked to the cent and to the unit (issue #6 part 10).

Simulators over real pty null modems (lane scanner, lane scale, handheld scanner, receiving scanner, a UHF RFID
module on a shelf zone and one on the exit) and a Modbus TCP transmitter weighing four shelves → the gateway (lanes, receiving, stocktakes, weighing engine,
outbox) → a real Mosquitto → the hub on a SQLite file. The day:

1. morning receiving: a GS1-128 (01)+(30) case label read by the dock scanner, a (02)+(37) label and a plain
   GTIN with a count booked through the receiving page's API; committed;
2. sales at the lane: counted goods, a member sale with loose apples priced by the scale's stable weight, and
   one sale rung up while the broker is down (delivered once when it is back); a partial return;
3. two tagged water bottles carried through the exit, one sold: one `loss_suspected`, resolved when the
   unsold bottle is back on the shelf;
4. shoppers pick a shelf below its safety stock (one `low` alert) and staff restock it (resolved once);
5. a stocktake of area B by the handheld scanner with one noodle pack missing, confirmed.

Every expected value is computed from what the test did (catalogue prices × quantities, received counts,
counted quantities), and compared exactly (Decimal) with the hub's till totals, per-SKU and per-member sales,
the gateway's book stock, and the hub's view of shelf stock, events and alerts. Waits are hang guards only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import textwrap
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud_bridge.contract import EventType
from drivers.barcode.protocol import MemberScan, decode_scan
from edge import bookstock
from edge.config import load_config
from edge.gateway import Gateway
from edge.retail.catalogue import load_catalogue
from firmware_sims.runner import SimStore
from hub.config import HubConfig
from hub.service import run_hub
from shelfgate.broker import Mosquitto
from shelfgate.demo import layout_from_config, point_config_at

pytestmark = pytest.mark.timeout(240)

PROJECT = Path(__file__).resolve().parents[2]
CATALOGUE = PROJECT / "config" / "catalogue.yaml"
WAIT_S = 60.0
"""Only turns a hang into a failure; nothing here measures speed."""
STORE = "day-st-01"
COLA, WATER, NOODLES, CRACKERS = "06901234567892", "06902083886417", "06920202888883", "06921168509256"
APPLES = "02200001000001"  # variable measure, priced per kg; its plain label code is the GTIN-13 below
APPLES_CODE = APPLES[1:]
MEMBER_CODE = "MBR0000001001"
INITIAL_ON_SHELF = 5
BINS = [("A1", COLA, 0, 350.0), ("A2", WATER, 1, 570.0), ("B1", NOODLES, 2, 120.0), ("B2", CRACKERS, 3, 92.0)]
STORE_YAML = f"""\
store_id: {STORE}
data_dir: data
catalogue: {CATALOGUE}
buses:
  - {{id: tcp1, kind: tcp, host: 127.0.0.1, port: 1}}
transmitters:
  - {{id: tx1, bus: tcp1, unit_id: 7, profile: wt-int32-abcd, poll_interval_s: 0.2}}
scales:
  - {{id: scale1, port: /dev/shelfgate/scale1, lane: lane1, poll_interval_s: 0.2, request_timeout_s: 0.5}}
scanners:
  - {{id: scan-lane1, port: /dev/shelfgate/lane1, role: lane, lane: lane1}}
  - {{id: hh1, port: /dev/shelfgate/hh1, role: handheld}}
  - {{id: dock1, port: /dev/shelfgate/dock1, role: receiving}}
rfid_readers:
  - {{id: rfid-shelf, port: /dev/shelfgate/rfid-shelf, silence_s: 1.0,
     antennas: [{{antenna: 1, zone: shelf-a, kind: shelf}}]}}
  - {{id: rfid-exit, port: /dev/shelfgate/rfid-exit, silence_s: 1.0,
     antennas: [{{antenna: 1, zone: exit-1, kind: exit}}]}}
rfid_presence: {{min_reads: 3, enter_window_s: 2.0, max_window_s: 4.0}}
loss: {{sold_window_min: 10}}
alerts: {{dwell_s: 0.5, hysteresis_items: 1}}
bridge: {{heartbeat_s: 1, batch_max_events: 50, publish_timeout_s: 3}}
bins:
"""


def _store_yaml() -> str:
    out = STORE_YAML
    for bin_id, sku, channel, unit_g in BINS:
        out += textwrap.indent(
            f"- id: {bin_id}\n  sku: '{sku}'\n  name: {{zh: 商品{bin_id}, en: Item {bin_id}}}\n"
            f"  unit_weight_g: {unit_g}\n  unit_weight_spread_g: 1.0\n"
            f"  calibration: {{zero: 1000, span_g_per_unit: 0.1}}\n"
            f"  safety_stock: 2\n  max_stock: 30\n  device: tx1\n  channel: {channel}\n",
            "  ",
        )
    return out


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll until `check()` is true; fail naming `what` after WAIT_S (a hang guard)."""
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for: {what}")
        await asyncio.sleep(0.1)


@dataclasses.dataclass
class Stack:
    sim: SimStore
    gateway: Gateway
    gw: httpx.AsyncClient
    hub: httpx.AsyncClient
    hub_db: Path

    async def get(self, client: httpx.AsyncClient, path: str, **params: Any) -> Any:
        r = await client.get(path, params=params)
        assert r.status_code == 200, f"GET {path}: {r.status_code} {r.text}"
        return r.json()

    async def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        r = await self.gw.post(path, json=body)
        assert r.status_code < 300, f"POST {path}: {r.status_code} {r.text}"
        return r.json()

    async def lane(self) -> dict[str, Any]:
        return dict(await self.get(self.gw, "/api/lanes/lane1"))

    async def book(self) -> dict[str, Decimal]:
        return await self.gateway.store.transact(bookstock.book_stock)

    def hub_rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.hub_db) as db:
            return db.execute(sql, args).fetchall()


@asynccontextmanager
async def running(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[Stack]:
    cfg_file = tmp_path / "store.yaml"
    cfg_file.write_text(_store_yaml(), encoding="utf-8")
    base = load_config(cfg_file)
    layout = layout_from_config(base, seed=5, initial_counts={b[0]: INITIAL_ON_SHELF for b in BINS})
    async with SimStore(layout, run_scenario=False) as sim:
        cfg = point_config_at(
            base,
            dict(sim.endpoints),
            broker=(mosquitto.host, mosquitto.port),
            api_port=0,
            data_dir=tmp_path / "gw",
            heartbeat_s=1.0,
            device_ports=sim.device_endpoints,
        )
        cfg = dataclasses.replace(cfg, catalogue=base.catalogue)
        hub_cfg = HubConfig.model_validate(
            {
                "hub_id": "day-hub",
                "database": str(tmp_path / "hub.db"),
                "broker": {"host": mosquitto.host, "port": mosquitto.port, "reconnect_max_s": 0.5},
                "api": {"host": "127.0.0.1", "port": 0},
                "heartbeat_s": 1.0,
            }
        )
        gw_ready, hub_ready, hub_port = asyncio.Event(), asyncio.Event(), list[int]()
        gateway = Gateway(cfg, on_ready=lambda _g: gw_ready.set())
        tasks = [
            asyncio.create_task(gateway.run(), name="day.gateway"),
            asyncio.create_task(run_hub(hub_cfg, ready=hub_ready, api_port_out=hub_port), name="day.hub"),
        ]
        try:
            async with asyncio.timeout(WAIT_S):
                await asyncio.gather(gw_ready.wait(), hub_ready.wait())
            async with (
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.api_port}", timeout=10) as gw,
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{hub_port[0]}", timeout=10) as hub,
            ):
                yield Stack(sim, gateway, gw, hub, tmp_path / "hub.db")
        finally:
            for t in tasks:
                t.cancel()
            for r in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                    raise r


def _cny(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


@dataclasses.dataclass
class Day:
    """What the test did, from which every expected value is computed."""

    prices: dict[str, Decimal]
    book: defaultdict[str, Decimal] = dataclasses.field(default_factory=lambda: defaultdict(Decimal))
    sold: defaultdict[str, Decimal] = dataclasses.field(default_factory=lambda: defaultdict(Decimal))
    gross: Decimal = Decimal(0)
    refunds: Decimal = Decimal(0)
    member_spend: Decimal = Decimal(0)
    sales: list[str] = dataclasses.field(default_factory=list)

    def sale(self, tx: dict[str, Any], basket: dict[str, Decimal], *, member: bool = False) -> None:
        """Check the lane's totals against catalogue price × quantity, and book the sale."""
        total = Decimal(0)
        for gtin, qty in basket.items():
            total += _cny(self.prices[gtin] * qty)
            self.book[gtin] -= qty
            self.sold[gtin] += qty
        assert Decimal(tx["total"]) == total, (tx, basket)
        self.gross += total
        self.member_spend += total if member else Decimal(0)
        self.sales.append(tx["transaction_id"])

    def refund(self, tx: dict[str, Any], basket: dict[str, Decimal], *, member: bool = False) -> None:
        total = sum((_cny(self.prices[g] * q) for g, q in basket.items()), Decimal(0))
        assert Decimal(tx["total"]) == total, (tx, basket)
        for gtin, qty in basket.items():
            self.book[gtin] += qty
        self.refunds += total
        self.member_spend -= total if member else Decimal(0)


async def test_a_mixed_store_day_adds_up_exactly_at_the_hub(tmp_path: Path, mosquitto: Mosquitto) -> None:
    catalogue = load_catalogue(CATALOGUE)
    day = Day(prices={g: catalogue.lookup(g).price for g in (COLA, WATER, NOODLES, CRACKERS, APPLES)})
    member = decode_scan("]C0" + MEMBER_CODE)
    assert isinstance(member, MemberScan)
    async with running(tmp_path, mosquitto) as s:
        lane, scale = s.sim.scanners["scan-lane1"], s.sim.scales["scale1"]
        scale.put(0.0)

        shelf_tags = len(s.sim.layout.rfid_readers[0].tags)

        async def zones() -> dict[str, Any]:
            return {z["zone"]: z for z in await s.get(s.gw, "/api/rfid/zones")}

        async def ready() -> bool:
            devices = {d["device_id"]: d for d in await s.get(s.gw, "/api/devices")}
            stock = {b["bin_id"]: b["count"] for b in await s.get(s.gw, "/api/stock")}
            weight = (await s.lane())["scale"]["weight"]
            return (
                all(devices.get(d, {}).get("online") for d in ("scan-lane1", "hh1", "dock1", "scale1"))
                and stock == {b[0]: INITIAL_ON_SHELF for b in BINS}
                and weight is not None
                and weight["weight_g"] == 0
                and (await zones())["shelf-a"]["total"] == shelf_tags
            )

        await eventually(ready, "devices online, shelves counted, every tag present on the RFID shelf")

        # 1. Morning receiving.
        receipt = await s.post("/api/receipts", {"by": "wang.wei"})
        rid = receipt["receipt_id"]
        await s.sim.scanners["dock1"].scan(f"01{CRACKERS}3012", "]C1")  # GS1-128 (01)+(30): 12 packs

        async def case_booked() -> bool:
            view = await s.get(s.gw, f"/api/receipts/{rid}")
            return {t["gtin"]: t["qty"] for t in view["totals"]} == {CRACKERS: 12}

        await eventually(case_booked, "the dock scanner's case label on the receipt")
        await s.post(
            f"/api/receipts/{rid}/scans", {"scan_id": str(uuid.uuid4()), "code": f"(02){NOODLES}(37)20"}
        )
        await s.post(f"/api/receipts/{rid}/scans", {"scan_id": str(uuid.uuid4()), "code": COLA, "qty": 24})
        await s.post(
            f"/api/receipts/{rid}/scans", {"scan_id": str(uuid.uuid4()), "code": WATER[1:], "qty": 6}
        )
        await s.post(f"/api/receipts/{rid}/commit", {"by": "wang.wei"})
        for gtin, qty in {CRACKERS: 12, NOODLES: 20, COLA: 24, WATER: 6}.items():
            day.book[gtin] += qty
        assert await s.book() == dict(day.book)

        # 2. Sales at the lane.
        await s.post("/api/lanes/lane1/cashier", {"cashier": "c7"})

        async def lines(n: int, *, waiting: bool | None = None) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                tx = (await s.lane())["transaction"]
                ok = tx is not None and tx["status"] == "open" and len(tx["lines"]) == n
                return ok and (waiting is None or tx["waiting_for_weight"] is waiting)

            return check

        async def ring(codes: list[str], n_lines: int) -> None:
            for code in codes:
                await lane.scan(code, "]E0")
            await eventually(await lines(n_lines), f"{n_lines} lines on the open sale")

        await ring([COLA[1:], COLA[1:], NOODLES[1:]], 2)
        done = (await s.post("/api/lanes/lane1/complete"))["transaction"]
        day.sale(done, {COLA: Decimal(2), NOODLES: Decimal(1)})
        first_sale = done["transaction_id"]

        # A member sale: the member card, water, then loose apples on a plain code priced by the scale.
        await lane.scan(MEMBER_CODE, "]C0")
        await ring([WATER[1:], APPLES_CODE], 2)
        await eventually(await lines(2, waiting=True), "the apples waiting for the scale")
        scale.put(1234.0)
        await eventually(await lines(2, waiting=False), "the apples priced by the stable weight")
        tx = (await s.lane())["transaction"]
        assert tx["member_id"] == member.member_id
        done = (await s.post("/api/lanes/lane1/complete"))["transaction"]
        day.sale(done, {WATER: Decimal(1), APPLES: Decimal("1.234")}, member=True)
        member_sale = done["transaction_id"]
        scale.put(0.0)

        # The WAN goes down in the middle of a sale; the sale completes locally and is delivered later.
        await ring([CRACKERS[1:]], 1)
        await asyncio.to_thread(mosquitto.stop)
        await ring([CRACKERS[1:], COLA[1:]], 2)
        done = (await s.post("/api/lanes/lane1/complete"))["transaction"]
        day.sale(done, {CRACKERS: Decimal(2), COLA: Decimal(1)})
        offline_sale = done["transaction_id"]
        again = (await s.post("/api/lanes/lane1/complete"))["transaction"]  # a retried tap: the same sale
        assert again["transaction_id"] == offline_sale
        assert (await s.hub.get(f"/api/sales/{offline_sale}")).status_code == 404
        await asyncio.to_thread(mosquitto.start)

        # A return: one cola of the first sale.
        await s.post("/api/lanes/lane1/returns", {"transaction_id": first_sale})
        await lane.scan(COLA[1:], "]E0")

        async def cola_back() -> bool:
            tx = (await s.lane())["transaction"]
            return tx is not None and tx["kind"] == "return" and len(tx["lines"]) == 1

        await eventually(cola_back, "the returned cola on the return")
        done = (await s.post("/api/lanes/lane1/complete"))["transaction"]
        day.refund(done, {COLA: Decimal(1)})

        # 3. Tagged water leaves through the exit: one bottle was sold (covered), the second was not (loss),
        #    and is brought back to the shelf (the loss alert resolves).
        water_tags = sorted(t["epc"] for t in (await zones())["shelf-a"]["tags"] if t["gtin"] == WATER)
        rfid_shelf, rfid_exit = s.sim.rfid["rfid-shelf"], s.sim.rfid["rfid-exit"]
        for n, epc in enumerate(water_tags[:2], 1):
            rfid_shelf.remove(epc)
            rfid_exit.add(epc)

            async def at_exit(n: int = n) -> bool:
                return bool((await zones())["exit-1"]["total"] == n)

            await eventually(at_exit, f"{n} water tag(s) in the exit zone")

        async def loss_raised() -> bool:
            alerts = await s.get(s.hub, f"/api/stores/{STORE}/alerts")
            return any(a["kind"] == "loss_suspected" for a in alerts)

        await eventually(loss_raised, "loss_suspected for the second water tag at the hub")

        async def off_the_shelf() -> bool:
            return bool((await zones())["shelf-a"]["total"] == shelf_tags - 2)

        await eventually(off_the_shelf, "both water tags gone from the shelf zone")
        rfid_exit.remove(water_tags[1])
        rfid_shelf.add(water_tags[1])

        async def loss_resolved() -> bool:
            alerts = await s.get(s.hub, f"/api/stores/{STORE}/alerts", active="false")
            return any(a["kind"] == "loss_suspected" for a in alerts)

        await eventually(loss_resolved, "the loss alert resolved once the bottle is back on the shelf")

        # 4. Shoppers pick A1 (cola) below its safety stock of 2, staff restock it.
        s.sim.pick("A1", 2)
        s.sim.pick("A1", 2)

        async def low_raised() -> bool:
            alerts = await s.get(s.hub, f"/api/stores/{STORE}/alerts")
            return any(a["bin_id"] == "A1" and a["kind"] == "low" for a in alerts)

        await eventually(low_raised, "the low alert on A1 at the hub")
        s.sim.put("A1", 6)

        async def low_resolved() -> bool:
            alerts = await s.get(s.hub, f"/api/stores/{STORE}/alerts", active="false")
            return any(a["bin_id"] == "A1" and a["kind"] == "low" for a in alerts)

        await eventually(low_resolved, "the low alert on A1 resolved at the hub")

        # 5. Stocktake of area B (noodles, crackers) by the handheld scanner: one noodle pack is missing.
        expected_b = {NOODLES: day.book[NOODLES], CRACKERS: day.book[CRACKERS]}
        session = await s.post("/api/stocktakes", {"area": "B", "by": "li.na"})
        sid = session["session_id"]
        assert {p["sku"]: Decimal(p["expected"]) for p in session["progress"]} == expected_b
        await s.gw.put("/api/stocktakes/scanners/hh1", json={"session_id": sid})
        counted = {NOODLES: int(expected_b[NOODLES]) - 1, CRACKERS: int(expected_b[CRACKERS])}
        for gtin, n in counted.items():
            for _ in range(n):
                await s.sim.scanners["hh1"].scan(gtin[1:], "]E0")

        async def all_counted() -> bool:
            view = await s.get(s.gw, f"/api/stocktakes/{sid}")
            return {p["sku"]: p["counted"] for p in view["progress"]} == counted

        await eventually(all_counted, "the handheld scanner's counts in area B")
        await s.post(f"/api/stocktakes/{sid}/confirm", {"by": "li.na"})
        for gtin, n in counted.items():
            day.book[gtin] = Decimal(n)

        # --- Everything delivered: the hub holds the gateway's whole ledger.
        ledger = await s.gateway.store.ledger(limit=100_000)
        top = ledger[-1].seq

        async def delivered() -> bool:
            rows = s.hub_rows("SELECT max(seq) FROM events WHERE store_id = ?", STORE)
            return bool(rows[0][0] == top)

        await eventually(delivered, f"the hub holding events up to seq {top}")

        # Book stock at the gateway: received − sold + returned, then the stocktake's counts in area B.
        assert await s.book() == dict(day.book.items())
        assert day.book[COLA] == 24 - 3 + 1
        assert day.book[NOODLES] == 20 - 1 - 1

        # Hub till totals: sales − refunds, exactly; per SKU; the member's purchases.
        today = date.fromisoformat((await s.get(s.hub, f"/api/sales/{first_sale}"))["sale"]["local_date"])
        daily = await s.get(
            s.hub,
            f"/api/stores/{STORE}/sales/daily",
            **{"from": str(today - timedelta(days=1)), "to": str(today + timedelta(days=1))},
        )
        net = sum((Decimal(d["net"]) for d in daily), Decimal(0))
        assert (sum(d["sales"] for d in daily), sum(d["returns"] for d in daily)) == (3, 1)
        assert sum((Decimal(d["gross"]) for d in daily), Decimal(0)) == day.gross
        assert sum((Decimal(d["refunds"]) for d in daily), Decimal(0)) == day.refunds
        assert net == day.gross - day.refunds
        listed = await s.get(s.hub, "/api/sales", store=STORE)
        assert sorted(x["transaction_id"] for x in listed) == sorted(day.sales)  # the offline sale once
        for gtin, sold_qty in day.sold.items():
            at_hub = Decimal(0)
            for sale in await s.get(s.hub, "/api/sales", store=STORE, sku=gtin):
                for item in sale["items"]:
                    if item["gtin"] == gtin:
                        at_hub += Decimal(
                            str(item["qty"] if item.get("weight_kg") is None else item["weight_kg"])
                        )
            assert at_hub == sold_qty, gtin
        by_member = await s.get(s.hub, "/api/sales", member=member.member_id)
        assert [x["transaction_id"] for x in by_member] == [member_sale]
        assert Decimal(by_member[0]["total"]) - Decimal(by_member[0]["refunded"]) == day.member_spend

        # Shelf stock: the hub shows what the gateway counts, which is what the shelves hold.
        gw_stock = {b["bin_id"]: b["count"] for b in await s.get(s.gw, "/api/stock")}
        assert gw_stock == s.sim.scenario.true_counts
        hub_stock = {b["bin_id"]: b["count"] for b in await s.get(s.hub, f"/api/stores/{STORE}/stock")}
        assert hub_stock == gw_stock

        # Events: gap-free from 1, no duplicates, the same ones the gateway recorded.
        seqs = [r[0] for r in s.hub_rows("SELECT seq FROM events WHERE store_id = ? ORDER BY seq", STORE)]
        assert seqs == list(range(1, top + 1))
        types = Counter(r[0] for r in s.hub_rows("SELECT type FROM events WHERE store_id = ?", STORE))
        assert types == Counter(r.event_type for r in ledger)
        assert types[EventType.SALE_COMPLETED] == 3
        assert types[EventType.SALE_RETURNED] == 1
        completed = [
            json.loads(r[0])["transaction_id"]
            for r in s.hub_rows("SELECT data FROM events WHERE type = ?", EventType.SALE_COMPLETED.value)
        ]
        assert Counter(completed) == Counter(day.sales)
        ((received,),) = s.hub_rows("SELECT data FROM events WHERE type = ?", EventType.STOCK_RECEIVED)
        assert {t["gtin"]: t["qty"] for t in json.loads(received)["totals"]} == {
            CRACKERS: 12,
            NOODLES: 20,
            COLA: 24,
            WATER: 6,
        }
        ((stocktake,),) = s.hub_rows("SELECT data FROM events WHERE type = ?", EventType.STOCKTAKE_COMPLETED)
        assert json.loads(stocktake)["book_deltas"] == {NOODLES: -1}  # the deliberate variance

        # The loss alert and the A1 alert: each raised once, resolved once; no other alert all day.
        alert_events = [
            (r[0], json.loads(r[1]))
            for r in s.hub_rows("SELECT type, data FROM events WHERE type LIKE 'alert.%' ORDER BY seq")
        ]
        assert [(t, d["bin_id"], d["kind"], d["sku"]) for t, d in alert_events] == [
            (EventType.ALERT_RAISED, "exit-1", "loss_suspected", WATER),
            (EventType.ALERT_RESOLVED, "exit-1", "loss_suspected", WATER),
            (EventType.ALERT_RAISED, "A1", "low", COLA),
            (EventType.ALERT_RESOLVED, "A1", "low", COLA),
        ]
        assert water_tags[1] in alert_events[0][1]["message"]
        alerts = await s.get(s.hub, f"/api/stores/{STORE}/alerts")
        assert sorted((a["bin_id"], a["kind"], a["state"]) for a in alerts) == [
            ("A1", "low", "resolved"),
            ("exit-1", "loss_suspected", "resolved"),
        ]
