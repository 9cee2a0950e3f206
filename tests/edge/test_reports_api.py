"""The report routes (`edge/reports_api.py`) on a real SQLite gateway store: exact numbers in JSON and CSV.

What is real: `edge.store.GatewayStore` (a SQLite file), sales rung up through `edge.lanes.LaneService` (its
journal, `sales` rows and book-stock moves, at known clock times), book-stock moves through `edge.bookstock`,
alerts in the alert log with known raise / acknowledge / resolve times, the store config loader with `shifts:`,
the FastAPI router over ASGI. What stands in: the gateway runtime (`tests/e2e/board_gateway.BoardGateway`:
shelf counts are set, not weighed).
"""

from __future__ import annotations

import csv
import functools
import io
import textwrap
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from cloud_bridge.contract import SaleCompleted, SaleReturned, parse_rfc3339, rfc3339
from drivers.barcode.protocol import ProductScan
from edge import bookstock
from edge.config import Bin, ConfigError, load_config
from edge.lanes import LaneService
from edge.reports_api import STAFF_COLUMNS, replenishment_report, reports_router, sales_from_rows
from edge.retail.catalogue import load_catalogue
from edge.retail.lane import CheckoutLane, LaneEvent
from edge.retail.reports import sales_by_sku
from edge.store import AlertRow, GatewayStore
from tests.e2e.board_gateway import BoardGateway

pytestmark = pytest.mark.asyncio(loop_scope="module")

CATALOGUE = Path(__file__).resolve().parents[2] / "config" / "catalogue.yaml"
COLA = "06901234567892"  # 3.00
WATER = "06902083886417"  # 2.00
NOODLES = "06920202888883"  # 4.50
CRACKERS = "06921168509256"  # 6.80
NEVER_SOLD = "06923450657713"
DAY_S = 86_400.0
LANE = "lane1"

STORE_YAML = f"""\
    store_id: sh-rep-01
    data_dir: data
    catalogue: {CATALOGUE}
    buses:
      - {{id: tcp1, kind: tcp, host: 127.0.0.1, port: 5020}}
    transmitters:
      - {{id: tx1, bus: tcp1, unit_id: 1, profile: wt-int32-abcd}}
    shifts:
      tz: Asia/Shanghai
      shifts:
        - {{name: early, hours: "07:00-15:00"}}
        - {{name: late, hours: "15:00-23:00"}}
    bins:
      - {{id: A01, sku: "{COLA}", name: {{zh: 可口可乐, en: Cola}}, location: aisle 1, unit_weight_g: 350,
          safety_stock: 4, max_stock: 12, device: tx1, channel: 0}}
      - {{id: B03, sku: "{COLA}", name: {{zh: 可口可乐, en: Cola}}, location: aisle 2, unit_weight_g: 350,
          safety_stock: 4, max_stock: 12, device: tx1, channel: 1}}
      - {{id: C01, sku: "{COLA}", name: {{zh: 可口可乐, en: Cola}}, location: end cap, unit_weight_g: 350,
          safety_stock: 4, max_stock: 12, device: tx1, channel: 2}}
      - {{id: A02, sku: "{WATER}", name: {{zh: 农夫山泉, en: Water}}, location: aisle 1, unit_weight_g: 570,
          safety_stock: 4, max_stock: 12, device: tx1, channel: 3}}
      - {{id: B01, sku: "{NOODLES}", name: {{zh: 牛肉面, en: Noodles}}, location: aisle 2, unit_weight_g: 120,
          safety_stock: 4, max_stock: 24, device: tx1, channel: 4}}
      - {{id: D01, sku: "{CRACKERS}", name: {{zh: 雪饼, en: Crackers}}, location: aisle 3, unit_weight_g: 92,
          safety_stock: 4, max_stock: 12, device: tx1, channel: 5}}
    """


def ts(text: str) -> float:
    return parse_rfc3339(text).timestamp()


@dataclass
class World:
    client: httpx.AsyncClient
    store: GatewayStore
    now: float


def alert(
    alert_id: str,
    raised: str,
    *,
    kind: str = "low",
    by: str | None = None,
    ack_after_s: float | None = None,
    resolve_after_s: float | None = None,
) -> AlertRow:
    t0 = ts(raised)
    acked = None if ack_after_s is None else rfc3339(t0 + ack_after_s)
    resolved = None if resolve_after_s is None else rfc3339(t0 + resolve_after_s)
    state = "resolved" if resolved else "acknowledged" if acked else "raised"
    return AlertRow(
        alert_id=alert_id,
        bin_id="A01",
        sku=COLA,
        kind=kind,
        state=state,
        count=1,
        message="test",
        raised_at=raised,
        updated_at=resolved or acked or raised,
        acknowledged_by=by,
        acknowledged_at=acked,
        resolved_at=resolved,
    )


async def ring_up(svc: LaneService, clock: list[float], at: float, items: list[tuple[str, int]]) -> str:
    """One sale at time `at`: each GTIN scanned once, its quantity set; returns the transaction id."""
    clock[0] = at
    for line_no, (gtin, qty) in enumerate(items, start=1):
        await svc.execute(LANE, functools.partial(scan, gtin))
        if qty > 1:
            await svc.execute(LANE, functools.partial(quantity, line_no, qty))
    await svc.execute(LANE, lambda ln, now: ln.complete(now))
    tx = svc.lanes[LANE].state.transaction
    assert tx is not None
    assert tx.payload is not None
    return tx.payload.transaction_id


def scan(gtin: str, lane: CheckoutLane, now: float) -> list[LaneEvent]:
    return lane.scan(ProductScan(gtin=gtin), now)


def quantity(line_no: int, qty: int, lane: CheckoutLane, now: float) -> list[LaneEvent]:
    return lane.set_quantity(line_no, qty, now)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    tmp = tmp_path_factory.mktemp("reports")
    cfg_file = tmp / "store.yaml"
    cfg_file.write_text(textwrap.dedent(STORE_YAML), encoding="utf-8")
    config = load_config(cfg_file)
    assert config.catalogue is not None
    now = time.time()
    async with GatewayStore(config.store.data_dir / "gateway.db") as store:
        gw = BoardGateway(config, store)
        clock = [now]
        svc = LaneService(store, config.store.store_id, config.catalogue, [LANE], clock=lambda: clock[0])
        await svc.start()

        def seed(conn: Any) -> None:
            deltas = {COLA: 34, WATER: 8, NOODLES: 20, CRACKERS: 6, NEVER_SOLD: 5}
            bookstock.apply_deltas(conn, deltas, cause="received", ref="r-1", ts=now - 50 * DAY_S)

        await store.transact(seed)
        clock[0] = now - 45 * DAY_S
        await svc.execute(LANE, lambda ln, t: ln.sign_in("c7", t))
        await ring_up(svc, clock, now - 40 * DAY_S, [(CRACKERS, 2)])
        first = await ring_up(svc, clock, now - 2 * DAY_S, [(COLA, 4), (NOODLES, 1)])
        await ring_up(svc, clock, now - 1 * DAY_S, [(WATER, 3), (COLA, 1)])
        # One cola of the first sale comes back: net revenue and units count it.
        clock[0] = now - 1 * DAY_S + 60
        found = await svc.sale(first)
        assert found is not None
        original, prior = found
        await svc.execute(LANE, lambda ln, t: ln.start_return(original, t, prior_returns=prior))  # type: ignore[arg-type]
        await svc.execute(LANE, lambda ln, t: ln.return_line(0, t, 1))
        await svc.execute(LANE, lambda ln, t: ln.complete(t))
        # Book now: cola 34 − 5 + 1 = 30, water 5, noodles 19, crackers 4, never-sold 5.

        for bin_id, count in {"A01": 2, "B03": 3, "C01": 10, "A02": 1, "B01": 10, "D01": None}.items():
            await gw.set_count(bin_id, count, publish=False)

        await store.record(
            alerts=[
                alert("a1", "2026-11-02T01:00:00.000Z", by="li.na", ack_after_s=60, resolve_after_s=600),
                alert("a2", "2026-11-02T02:00:00.000Z", by="li.na", ack_after_s=120, resolve_after_s=300),
                alert("a3", "2026-11-02T03:00:00.000Z", by="wang.wei", ack_after_s=30),
                alert("a4", "2026-11-02T08:00:00.000Z", kind="out", resolve_after_s=900),
                alert("a5", "2026-11-02T16:00:00.000Z", by="wang.wei", ack_after_s=300, resolve_after_s=400),
                alert("a6", "2026-10-20T03:00:00.000Z", by="li.na", ack_after_s=5, resolve_after_s=5),
            ]
        )
        app = FastAPI()
        app.include_router(reports_router(gw))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            yield World(client, store, now)


def csv_rows(resp: httpx.Response) -> list[dict[str, str]]:
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/csv")
    assert "attachment" in resp.headers["content-disposition"]
    assert resp.content.startswith(b"\xef\xbb\xbf"), "UTF-8 BOM for Excel"
    return list(csv.DictReader(io.StringIO(resp.content.decode("utf-8-sig"))))


async def test_book_stock_after_the_lane_sales(world: World) -> None:
    book = await world.store.transact(bookstock.book_stock)
    assert book == {
        COLA: Decimal(30),
        WATER: Decimal(5),
        NOODLES: Decimal(19),
        CRACKERS: Decimal(4),
        NEVER_SOLD: Decimal(5),
    }


async def test_replenishment_lists_low_bins_most_urgent_first_with_back_room(world: World) -> None:
    resp = await world.client.get("/api/reports/replenishment")
    assert resp.status_code == 200
    body = resp.json()
    got = [
        (r["bin_id"], r["shelf_count"], r["need"], r["back_room"], r["bring"], r["short"])
        for r in body["rows"]
    ]
    # Cola: book 30 − shelves (2 + 3 + 10) = 15 in the back room: A01 (emptier) takes 10, B03 the other 5.
    # Water: book 5 − shelf 1 = 4. A02 is the emptiest bin (1/12), so it comes first.
    assert got == [
        ("A02", 1, 11, 4, 4, 7),
        ("A01", 2, 10, 15, 10, 0),
        ("B03", 3, 9, 15, 5, 4),
    ]
    a01 = body["rows"][1]
    assert (a01["sku"], a01["name_zh"], a01["name_en"], a01["location"]) == (
        COLA,
        "可口可乐",
        "Cola",
        "aisle 1",
    )
    assert a01["back_room_uncertain"] is False
    assert body["unknown_bins"] == ["D01"]

    rows = csv_rows(await world.client.get("/api/reports/replenishment.csv"))
    assert [(r["bin_id"], r["back_room"], r["bring"], r["short"]) for r in rows] == [
        ("A02", "4", "4", "7"),
        ("A01", "15", "10", "0"),
        ("B03", "15", "5", "4"),
    ]
    assert rows[1]["name_zh"] == "可口可乐"
    assert rows[1]["back_room_uncertain"] == "false"


async def test_abc_by_value_over_30_days_nets_the_return(world: World) -> None:
    resp = await world.client.get("/api/reports/abc", params={"by": "value", "days": 30})
    assert resp.status_code == 200
    body = resp.json()
    # Cola 4 × 3.00 + 3.00 − 3.00 (returned) = 12.00; water 6.00; noodles 4.50; crackers sold 40 days ago: 0.
    assert body["total"] == "22.50"
    assert body["classes"] == {"A": 2, "B": 1, "C": 2}
    got = [
        (r["rank"], r["sku"], r["metric"], r["share"], r["cumulative_share"], r["abc_class"])
        for r in body["rows"]
    ]
    assert got == [
        (1, COLA, "12.00", "0.5333", "0.5333", "A"),
        (2, WATER, "6.00", "0.2667", "0.8000", "A"),
        (3, NOODLES, "4.50", "0.2000", "1.0000", "B"),
        (4, CRACKERS, "0", "0.0000", "1.0000", "C"),
        (5, NEVER_SOLD, "0", "0.0000", "1.0000", "C"),
    ]
    assert body["rows"][0]["name_zh"] == "可口可乐 330毫升罐装"

    rows = csv_rows(await world.client.get("/api/reports/abc.csv", params={"by": "value", "days": 30}))
    assert [(r["sku"], r["metric"], r["abc_class"]) for r in rows] == [
        (COLA, "12.00", "A"),
        (WATER, "6.00", "A"),
        (NOODLES, "4.50", "B"),
        (CRACKERS, "0", "C"),
        (NEVER_SOLD, "0", "C"),
    ]


async def test_abc_by_velocity_depends_on_the_period(world: World) -> None:
    body = (await world.client.get("/api/reports/abc", params={"by": "velocity", "days": 60})).json()
    # Units over 60 days: cola 4 (5 sold, 1 back), water 3, crackers 2, noodles 1 → 10.
    assert [(r["sku"], r["metric"], r["abc_class"]) for r in body["rows"]] == [
        (COLA, "4", "A"),
        (WATER, "3", "A"),
        (CRACKERS, "2", "A"),
        (NOODLES, "1", "B"),
        (NEVER_SOLD, "0", "C"),
    ]
    assert body["total"] == "10"
    bad = await world.client.get("/api/reports/abc", params={"by": "margin"})
    assert bad.status_code == 422


async def test_slow_movers(world: World) -> None:
    body = (await world.client.get("/api/reports/slow-movers", params={"days": 30})).json()
    got = [(r["sku"], r["book_qty"], r["days_since"]) for r in body["rows"]]
    assert got == [(NEVER_SOLD, "5", None), (CRACKERS, "4", 40)]
    assert body["rows"][1]["last_sold"] is not None
    # Over 45 days the crackers sold in the period: only the never-sold SKU is slow.
    body45 = (await world.client.get("/api/reports/slow-movers", params={"days": 45})).json()
    assert [r["sku"] for r in body45["rows"]] == [NEVER_SOLD]
    rows = csv_rows(await world.client.get("/api/reports/slow-movers.csv", params={"days": 30}))
    first = rows[0]
    assert (first["sku"], first["book_qty"], first["last_sold"], first["days_since"]) == (
        NEVER_SOLD,
        "5",
        "",
        "",
    )
    assert rows[1]["days_since"] == "40"


async def test_staff_response_times_per_shift_and_member(world: World) -> None:
    # Local (Asia/Shanghai) days 2 and 3 November: a1–a3 early (09–11 h), a4 late (16 h), a5 at 00:00 on the
    # 3rd (no shift); a6 (20 October) is outside the period.
    resp = await world.client.get("/api/reports/staff", params={"from": "2026-11-02", "to": "2026-11-03"})
    assert resp.status_code == 200
    body = resp.json()
    assert (body["from"], body["to"]) == ("2026-11-01T16:00:00.000Z", "2026-11-03T16:00:00.000Z")
    assert body["shifts"] == ["early", "late"]

    def stats(rows: list[dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
        return {
            r["group"]: (
                r["count"],
                r["acked"],
                r["resolved"],
                r["ack_median_s"],
                r["ack_p90_s"],
                r["resolve_median_s"],
                r["resolve_p90_s"],
            )
            for r in rows
        }

    assert stats(body["by_shift"]) == {
        "-": (1, 1, 1, 300.0, 300.0, 400.0, 400.0),
        "early": (3, 3, 2, 60.0, 120.0, 450.0, 600.0),
        "late": (1, 0, 1, None, None, 900.0, 900.0),
    }
    assert stats(body["by_staff"]) == {
        "li.na": (2, 2, 2, 90.0, 120.0, 450.0, 600.0),
        "wang.wei": (2, 2, 1, 165.0, 300.0, 400.0, 400.0),
    }

    only_low = (
        await world.client.get(
            "/api/reports/staff", params={"from": "2026-11-02", "to": "2026-11-03", "kind": "low"}
        )
    ).json()
    assert [r["group"] for r in only_low["by_shift"]] == ["-", "early"]

    resp = await world.client.get("/api/reports/staff.csv", params={"from": "2026-11-02", "to": "2026-11-03"})
    text = resp.content.decode("utf-8-sig")
    lines = text.split("\r\n")
    assert lines[0] == ",".join(STAFF_COLUMNS)
    assert lines[1:6] == [
        "shift,-,1,1,1,300.0,300.0,400.0,400.0",
        "shift,early,3,3,2,60.0,120.0,450.0,600.0",
        "shift,late,1,0,1,,,900.0,900.0",
        "staff,li.na,2,2,2,90.0,120.0,450.0,600.0",
        "staff,wang.wei,2,2,1,165.0,300.0,400.0,400.0",
    ]
    assert csv_rows(resp)[0]["dimension"] == "shift"


async def test_staff_period_errors(world: World) -> None:
    reversed_ = await world.client.get(
        "/api/reports/staff", params={"from": "2026-11-03", "to": "2026-11-01"}
    )
    assert reversed_.status_code == 422
    garbage = await world.client.get("/api/reports/staff", params={"from": "yesterday"})
    assert garbage.status_code == 422
    assert "yesterday" in garbage.json()["detail"]
    rfc = await world.client.get(
        "/api/reports/staff", params={"from": "2026-11-02T00:30:00Z", "to": "2026-11-02T02:30:00Z"}
    )
    assert [(r["group"], r["count"]) for r in rfc.json()["by_staff"]] == [("li.na", 2)]


async def test_overlapping_shifts_are_a_config_error_at_the_key(tmp_path: Path) -> None:
    text = textwrap.dedent(STORE_YAML).replace('"15:00-23:00"', '"14:00-23:00"')
    cfg_file = tmp_path / "store.yaml"
    cfg_file.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(cfg_file)
    assert any("shifts" in str(i) and "overlap at 14:00" in str(i) for i in info.value.issues), info.value


async def test_replenishment_report_alias_and_variable_measure() -> None:
    """A bin naming a store SKU alias is compared with its GTIN's book; a variable-measure SKU (book in kg,
    shelf in packages) gets no back room and says so; a fractional or negative book never adds goods."""
    apples = "02200001000001"
    bins = [
        Bin.model_validate(
            {
                "id": "F01",
                "sku": "2100001",
                "name": {"zh": "苹果", "en": "Apples"},
                "safety_stock": 4,
                "max_stock": 10,
            }
        ),
        Bin.model_validate(
            {
                "id": "A01",
                "sku": COLA[1:],
                "name": {"zh": "可乐", "en": "Cola"},
                "unit_weight_g": 350,
                "safety_stock": 4,
                "max_stock": 12,
                "device": "tx1",
                "channel": 0,
            }
        ),
        Bin.model_validate(
            {
                "id": "A02",
                "sku": WATER,
                "name": {"zh": "水", "en": "Water"},
                "unit_weight_g": 570,
                "safety_stock": 4,
                "max_stock": 12,
                "device": "tx1",
                "channel": 1,
            }
        ),
    ]
    book = {apples: Decimal("3.500"), COLA: Decimal("7.900"), WATER: Decimal(-3)}
    report = replenishment_report(
        bins, {"F01": 1, "A01": 3, "A02": 0}, book, load_catalogue(CATALOGUE), now=ts("2026-11-02T00:00:00Z")
    )
    got = [
        (r.bin_id, r.sku, r.need, r.back_room, r.bring, r.short, r.back_room_uncertain) for r in report.rows
    ]
    assert got == [
        ("A02", WATER, 12, 0, 0, 12, False),
        ("F01", apples, 9, 0, 0, 9, True),
        ("A01", COLA, 9, 4, 4, 5, False),  # book 7.9 → 7 whole units − 3 on the shelf
    ]
    assert report.generated_at == "2026-11-02T00:00:00.000Z"
    assert report.unknown_bins == []


async def test_sales_from_rows_agrees_with_the_pure_aggregate(world: World) -> None:
    rows = await world.store.transact(lambda c: c.execute("SELECT kind, json FROM sales").fetchall())
    assert len(rows) == 4  # three sales and a return
    sales = [SaleCompleted.model_validate_json(j) for k, j in rows if k == "sale"]
    returns = [SaleReturned.model_validate_json(j) for k, j in rows if k == "return"]
    for since in (0.0, world.now - 30 * DAY_S, world.now - 1.5 * DAY_S, world.now):
        assert sales_from_rows(rows, since_ts=since) == sales_by_sku(sales, returns, since_ts=since), since
