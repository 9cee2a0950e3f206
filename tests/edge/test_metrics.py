"""`GET /metrics` of a real gateway: a simulated transmitter over Modbus TCP, a dead one, no broker.

The scrape goes through a real uvicorn server and is parsed with prometheus_client's own parser; every value is
checked against the gateway's state read around the scrape (counters only grow, so "before ≤ scraped ≤ after"
is exact without any timing assumption).
"""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from edge.api import WEB_DIR, ApiServer, create_app
from edge.config import load_config
from edge.gateway import Gateway
from edge.metrics import METRICS_PATH, GatewayCollector, install_api_metrics, metrics_router
from firmware_sims.runner import SimStore
from shelfgate.broker import free_port
from shelfgate.demo import layout_from_config, point_config_at

pytestmark = pytest.mark.timeout(120)

WAIT_S = 60.0
"""A hang guard for a loaded 2-core machine, not a timing claim."""

STORE_YAML = """\
store_id: metrics-001
data_dir: data
buses:
  - {id: tcp1, kind: tcp, host: 127.0.0.1, port: 1, timeout_s: 0.3}
  - {id: tcp2, kind: tcp, host: 127.0.0.1, port: 1, timeout_s: 0.2}
transmitters:
  - {id: live, bus: tcp1, unit_id: 7, profile: wt-int32-abcd, poll_interval_s: 0.1}
  - {id: dead, bus: tcp2, unit_id: 1, profile: wt-int32-abcd, poll_interval_s: 0.1}
alerts: {dwell_s: 0.2, hysteresis_items: 1, silent_after_s: 2}
bridge: {heartbeat_s: 1, publish_timeout_s: 2}
bins:
"""

BINS = [
    # id, device, channel, unit g, zero, span, safety, max
    ("L1", "live", 0, 570.0, 1000.0, 0.1, 2, 20),
    ("D1", "dead", 0, 100.0, 1000.0, 0.1, 2, 20),
]
INITIAL = {"L1": 8, "D1": 8}
"""Between safety stock and max: the live bin raises no stock alert, so the only alert is the dead one's."""


def store_yaml() -> str:
    out = STORE_YAML
    for bid, dev, ch, unit, zero, span, safety, mx in BINS:
        out += textwrap.indent(
            f"- id: {bid}\n  sku: '0690000000{ch:03d}{len(bid)}'\n  name: {{zh: 商品{bid}, en: Item {bid}}}\n"
            f"  unit_weight_g: {unit}\n  calibration: {{zero: {zero}, span_g_per_unit: {span}}}\n"
            f"  safety_stock: {safety}\n  max_stock: {mx}\n  device: {dev}\n  channel: {ch}\n",
            "  ",
        )
    return out


Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse(text: str) -> Samples:
    """Sample name → [(labels, value)], via prometheus_client's own text parser."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """The one sample of `name` whose labels include `labels`."""
    found = [v for lab, v in samples.get(name, []) if all(lab.get(k) == want for k, want in labels.items())]
    assert len(found) == 1, f"{name}{labels}: {found} in {samples.get(name)}"
    return found[0]


def app_with_metrics(gateway: Gateway) -> FastAPI:
    """The gateway's own app, with `/metrics` mounted here unless `create_app` already wires it in."""
    app = create_app(gateway)
    if getattr(app.state, "metrics_registry", None) is None:
        registry = CollectorRegistry()
        install_api_metrics(app, registry)
        app.include_router(metrics_router(gateway, registry))
    return app


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll `check` until true; fail naming `what` after WAIT_S."""
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while True:
        if await check():
            return
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for: {what}")
        await asyncio.sleep(0.1)


@dataclass
class Running:
    gateway: Gateway
    http: httpx.AsyncClient


@asynccontextmanager
async def running_gateway(tmp_path: Path) -> AsyncIterator[Running]:
    """A gateway whose `live` transmitter is a simulator and whose `dead` one points at a closed port; its
    broker port has no broker, so every event stays in the outbox."""
    cfg_file = tmp_path / "store.yaml"
    cfg_file.write_text(store_yaml(), encoding="utf-8")
    base = load_config(cfg_file)
    layout = layout_from_config(base, seed=3, initial_counts=INITIAL)
    async with SimStore(layout, run_scenario=False) as sim:
        endpoints = dict(sim.endpoints)
        endpoints["tcp2"] = f"tcp://127.0.0.1:{free_port()}"  # nothing listens: the dead transmitter
        cfg = point_config_at(
            base, endpoints, broker=("127.0.0.1", free_port()), api_port=0, data_dir=tmp_path / "gw"
        )
        ready = asyncio.Event()
        gateway = Gateway(cfg, on_ready=lambda _g: ready.set())
        gw_task = asyncio.create_task(gateway.run(serve_api=False), name="test.gateway")
        server = ApiServer(app_with_metrics(gateway), "127.0.0.1", 0)
        api_task: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(WAIT_S):
                await ready.wait()
            api_task = asyncio.create_task(server.serve(), name="test.api")
            port = await server.started()
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                yield Running(gateway, http)
        finally:
            tasks = [t for t in (api_task, gw_task) if t is not None]
            for t in tasks:
                t.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                    raise r


async def test_metrics_match_the_running_gateway(tmp_path: Path) -> None:
    async with running_gateway(tmp_path) as rg:
        gateway, http = rg.gateway, rg.http

        def views() -> dict[str, dict[str, object]]:
            return {str(v["device_id"]): v for v in gateway.device_views()}

        async def settled() -> bool:
            v = views()
            faults = [a for a in gateway.rules.active() if a.kind == "sensor_fault" and a.bin_id == "D1"]
            return (
                bool(v["live"]["online"])
                and int(str(v["live"]["messages"])) > 0
                and int(str(v["dead"]["errors"])) > 0
                and gateway.estimators["L1"].count is not None
                and bool(faults)
            )

        await eventually(settled, "live transmitter polled, dead one failing, D1 sensor fault raised")

        # Requests the histogram must count, by route template — never by raw path.
        for _ in range(3):
            assert (await http.get("/api/health")).status_code == 200
        assert (await http.post("/api/alerts/no-such-alert/ack")).status_code == 404
        assert (await http.get("/no/such/page")).status_code == 404
        assert (await http.get("/static/board.js")).status_code == 200
        assert (await http.get("/static/no-such-file.js")).status_code == 404

        depth_before, oldest_before = await gateway.store.depth()
        written_before = gateway.store.events_written
        messages_before = int(str(views()["live"]["messages"]))
        errors_before = int(str(views()["dead"]["errors"]))
        readings_before = gateway.samples
        response = await http.get("/metrics")
        depth_after, oldest_after = await gateway.store.depth()
        last_seq_after = await gateway.store.last_seq()
        active_after = gateway.rules.active()
        messages_after = int(str(views()["live"]["messages"]))
        readings_after = gateway.samples

        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        m = parse(response.text)

        info = value(m, "shelfgate_gateway_info")
        assert info == 1.0
        (info_labels, _), *_ = m["shelfgate_gateway_info"]
        assert info_labels["store_id"] == "metrics-001"
        assert info_labels["gateway_id"] == gateway.gateway_id
        assert info_labels["boot_id"] == gateway.boot_id
        assert value(m, "shelfgate_gateway_uptime_seconds") > 0

        # Devices: the live one polled and online, the dead one offline with its errors by kind.
        live = {"device_id": "live", "family": "modbus"}
        dead = {"device_id": "dead", "family": "modbus"}
        assert value(m, "shelfgate_device_up", **live) == 1.0
        assert value(m, "shelfgate_device_up", **dead) == 0.0
        assert messages_before <= value(m, "shelfgate_device_messages_total", **live) <= messages_after
        assert messages_before > 0
        dead_errors = {
            lab["kind"]: v for lab, v in m["shelfgate_device_errors_total"] if lab["device_id"] == "dead"
        }
        assert set(dead_errors) == {
            "timeouts",
            "crc_errors",
            "exceptions",
            "decode_errors",
            "disconnects",
            "bus_unavailable",
        }
        assert sum(dead_errors.values()) >= errors_before > 0
        assert dead_errors["crc_errors"] == 0  # a closed port never garbles a frame
        assert value(m, "shelfgate_device_last_seen_age_seconds", **live) >= 0
        assert not [
            lab
            for lab, _ in m.get("shelfgate_device_last_seen_age_seconds", [])
            if lab["device_id"] == "dead"
        ]

        # The engine and the store.
        assert readings_before <= value(m, "shelfgate_readings_total") <= readings_after
        assert readings_before > 0
        assert written_before <= value(m, "shelfgate_events_written_total") <= last_seq_after
        assert value(m, "shelfgate_database_up") == 1.0
        assert depth_before <= value(m, "shelfgate_outbox_depth") <= depth_after
        assert depth_before > 0, "no broker: every event waits in the outbox"
        assert oldest_before is not None
        assert oldest_after is not None
        assert oldest_before <= value(m, "shelfgate_outbox_oldest_age_seconds") <= oldest_after
        assert value(m, "shelfgate_last_seq") <= last_seq_after
        assert value(m, "shelfgate_uplink_connected") == 0.0
        assert value(m, "shelfgate_uplink_published_events_total") == 0.0

        # Alerts by kind and state, zeros included; bins by level.
        for kind in ("low", "out", "over", "ambiguous", "sensor_fault"):
            for state in ("raised", "acknowledged"):
                want = sum(1 for a in active_after if a.kind == kind and a.state == state)
                assert value(m, "shelfgate_alerts_active", kind=kind, state=state) == want
        assert value(m, "shelfgate_alerts_active", kind="sensor_fault", state="raised") >= 1
        levels = {lab["level"]: v for lab, v in m["shelfgate_bins"]}
        assert sum(levels.values()) == 2
        assert levels["ok"] == 1  # L1: 8 items, safety 2, max 20
        assert levels["unknown"] == 1  # D1: never weighed

        # API latency: the requests before this scrape, by route template; this scrape is not in it yet.
        hist = "shelfgate_api_request_duration_seconds_count"
        assert value(m, hist, method="GET", route="/api/health", code="200") == 3
        assert value(m, hist, method="POST", route="/api/alerts/{alert_id}/ack", code="404") == 1
        assert value(m, hist, method="GET", route="unmatched", code="404") == 1
        # Static files: one series for the mount, whatever the file.
        assert value(m, hist, method="GET", route="/static/{path}", code="200") == 1
        assert value(m, hist, method="GET", route="/static/{path}", code="404") == 1
        routes = {lab["route"] for lab, _ in m[hist]}
        assert not any("no-such" in r for r in routes), routes
        assert METRICS_PATH not in routes
        assert (
            value(
                m,
                "shelfgate_api_request_duration_seconds_bucket",
                method="GET",
                route="/api/health",
                code="200",
                le="+Inf",
            )
            == 3
        )

        assert value(m, "process_resident_memory_bytes") > 0

        second = parse((await http.get("/metrics")).text)
        assert value(second, hist, method="GET", route=METRICS_PATH, code="200") == 1

        # The gateway's registry is its own: nothing leaked into prometheus_client's global one, and a second
        # registry over the same gateway does not clash.
        assert REGISTRY.get_sample_value("shelfgate_gateway_uptime_seconds") is None
        other = CollectorRegistry()
        metrics_router(gateway, other)
        rendered = parse(generate_latest(other).decode())
        assert value(rendered, "shelfgate_device_up", **live) == 1.0
        # Rendered outside the route, nothing awaited the database: its gauges are left out, not faked.
        assert "shelfgate_outbox_depth" not in rendered
        collector = GatewayCollector(gateway)
        await collector.refresh()
        names = {family.name for family in collector.collect()}
        assert {"shelfgate_outbox_depth", "shelfgate_database_up", "shelfgate_device_up"} <= names


async def test_openmetrics_when_prometheus_asks_for_it(tmp_path: Path) -> None:
    async with running_gateway(tmp_path) as rg:
        response = await rg.http.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"}
        )
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/openmetrics-text")
        assert response.text.rstrip().endswith("# EOF")
        assert "shelfgate_gateway_uptime_seconds" in response.text


async def test_route_labels_stay_templates_through_mounts() -> None:
    """Static files and a mounted sub-app are labelled by template (the raw path never becomes a label); a
    handler that raises counts as a 500."""
    app = FastAPI()
    sub = FastAPI()

    @sub.get("/items/{item_id}")
    async def item(item_id: str) -> str:
        return item_id

    @app.get("/bins/{bin_id}")
    async def one_bin(bin_id: str) -> str:
        return bin_id

    @app.get("/boom")
    async def boom() -> str:
        raise RuntimeError("a bug")

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    app.mount("/sub", sub)
    registry = CollectorRegistry()
    install_api_metrics(app, registry)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as http:
        for path in ("/bins/A1", "/bins/B2", "/static/board.js", "/static/x.js", "/sub/items/7", "/x/y"):
            await http.get(path)
        assert (await http.get("/boom")).status_code == 500
    m = parse(generate_latest(registry).decode())
    got = {(lab["route"], lab["code"]): v for lab, v in m["shelfgate_api_request_duration_seconds_count"]}
    assert got == {
        ("/bins/{bin_id}", "200"): 2,
        ("/static/{path}", "200"): 1,
        ("/static/{path}", "404"): 1,
        ("/sub/items/{item_id}", "200"): 1,
        ("unmatched", "404"): 1,
        ("/boom", "500"): 1,
    }
