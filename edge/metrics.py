"""Prometheus exposition for the gateway: `GET /metrics`, read from the running gateway at scrape time.

Why a custom collector instead of counters incremented along the hot path: the gateway, its drivers and its
store already count everything (polls, errors by kind, samples, events written, uplink publishes). A second
set of counters would cost the hot path and could disagree with `/api/devices`; reading the existing state
when Prometheus asks costs nothing between scrapes and always matches the API.

Every gateway gets its OWN `CollectorRegistry` (never prometheus_client's global one): tests run many gateways
in one process, and a second gateway in the global registry would clash on metric names.

Async values (outbox depth and oldest age, last seq) live behind the store's database thread. A collector's
`collect()` is synchronous, so the route awaits them first (`GatewayCollector.refresh`) and renders the
registry right after, with no await in between: the values are exact at scrape time, there is no background
task to own and no cache that can go stale, and concurrent scrapes cannot see each other's half-updated
snapshot because rendering never yields to the event loop. Rendering runs on the event loop on purpose: the
gateway's state is mutated only there, so reading it there needs no lock. Cost: one database round trip
plus a walk over devices and bins; rendering a store of 200 transmitters and 2 000 bins (148 kB of text)
measured 26–39 ms on the shared 2-core development machine: one pause of the event loop per scrape interval,
short of the smallest default device reply timeout (0.3 s for an RTU bus).

Cardinality is bounded: labels are device ids and families (from config), error kinds (fixed per driver),
alert kinds × states (fixed enums) and, for the API histogram, the route *template*
(`/api/alerts/{alert_id}/ack`) — never a raw path, so a scanner probing random URLs adds one `unmatched` series,
not one per URL. Per-bin series are deliberately absent (2 000 bins × scrapes is the hub's job via events);
bins appear only as counts per stock level.

Metric names and labels are listed in docs/operations.md ("Metrics and status").
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector

from cloud_bridge.contract import AlertKind, AlertState
from edge.outbox_quota import OutboxUsage
from httpkit.latency import ApiLatencyMiddleware

if TYPE_CHECKING:
    from edge.gateway import Gateway

_log = logging.getLogger(__name__)

METRICS_PATH: Final = "/metrics"

API_LATENCY_BUCKETS_S: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""The local API answers from memory or one SQLite read: most requests land in the millisecond buckets; the
upper ones catch a database thread stuck behind a large write."""

ACTIVE_ALERT_STATES: Final = (AlertState.RAISED, AlertState.ACKNOWLEDGED)
STOCK_LEVELS: Final = ("out", "low", "ok", "over", "unknown")
"""`edge.gateway.stock_level` values, emitted with zeros so a dashboard's series never vanish."""


# --- API latency (the middleware is httpkit.latency, shared with the hub) -----------------------------------


def api_latency_histogram(registry: CollectorRegistry, prefix: str = "shelfgate") -> Histogram:
    """The request-latency histogram, registered in `registry`."""
    return Histogram(
        f"{prefix}_api_request_duration_seconds",
        "Time from request to response start of the local API, by method, route template and status code.",
        ("method", "route", "code"),
        registry=registry,
        buckets=API_LATENCY_BUCKETS_S,
    )


def install_api_metrics(app: FastAPI, registry: CollectorRegistry) -> Histogram:
    """Add the latency middleware to `app` (before it starts serving), recording into `registry`."""
    histogram = api_latency_histogram(registry)
    app.add_middleware(ApiLatencyMiddleware, histogram=histogram)
    app.state.metrics_registry = registry  # where tests (and anything else mounting metrics) find it
    return histogram


def _quota_families(usage: OutboxUsage) -> Iterator[Metric]:
    """Outbox quotas (edge/outbox_quota.py): in memory, so they need no database read."""
    yield GaugeMetricFamily(
        "shelfgate_outbox_quota_alarm",
        "1 while an outbox disk quota is hit (level updates coalesce; sales and alerts all kept).",
        value=int(usage.alarm is not None),
    )
    unsent = GaugeMetricFamily(
        "shelfgate_outbox_unsent_bytes",
        "Bytes of unsent events as stored, per priority class.",
        labels=["class"],
    )
    quota = GaugeMetricFamily(
        "shelfgate_outbox_quota_bytes", "Outbox disk quota per priority class.", labels=["class"]
    )
    for kind, used, limit in (
        ("critical", usage.critical_bytes, usage.critical_quota_bytes),
        ("levels", usage.levels_bytes, usage.levels_quota_bytes),
    ):
        unsent.add_metric([kind], used)
        quota.add_metric([kind], limit)
    yield unsent
    yield quota
    yield GaugeMetricFamily(
        "shelfgate_outbox_held",
        "Level updates held without a seq (one per bin) while a quota is hit.",
        value=usage.held,
    )
    yield CounterMetricFamily(
        "shelfgate_outbox_coalesced",
        "Level updates merged into a held one since start.",
        value=usage.coalesced,
    )


# --- the gateway collector -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoreSnapshot:
    """The database-backed values of one scrape; `ok` is False when the database thread failed to answer."""

    ok: bool
    outbox_depth: int = 0
    outbox_oldest_age_s: float | None = None
    last_seq: int = 0


class GatewayCollector:
    """Reads one gateway's state into metric families whenever the registry is collected."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._snapshot: StoreSnapshot | None = None
        self._store_failed = False

    async def refresh(self) -> None:
        """Read the database-backed values; call right before rendering (see the module docstring)."""
        store = self._gateway.store
        try:
            depth, oldest = await store.depth()
            last_seq = await store.last_seq()
        except Exception as exc:  # noqa: BLE001 - a scrape reports a sick database as a metric, never a 500
            if not self._store_failed:
                _log.warning("metrics: the gateway database did not answer (%s); reporting it as down", exc)
            self._store_failed = True
            self._snapshot = StoreSnapshot(ok=False)
            return
        if self._store_failed:
            _log.info("metrics: the gateway database answers again")
        self._store_failed = False
        self._snapshot = StoreSnapshot(True, depth, oldest, last_seq)

    def collect(self) -> Iterator[Metric]:
        """The metric families (prometheus_client's `Collector` protocol)."""
        g = self._gateway
        info = InfoMetricFamily("shelfgate_gateway", "Which gateway this is.")
        info.add_metric(
            [],
            {
                "store_id": str(g.store_cfg.store_id),
                "gateway_id": str(g.gateway_id),
                "version": str(g.version),
                "config_version": str(g.config.version),
                "boot_id": str(g.boot_id),
            },
        )
        yield info
        yield GaugeMetricFamily(
            "shelfgate_gateway_uptime_seconds", "Seconds since the gateway started.", value=g.uptime_s
        )
        yield from _device_families(g.device_views())
        yield CounterMetricFamily(
            "shelfgate_readings",
            "Weight readings (one per channel per sample) fed to the inventory engine since start.",
            value=g.samples,
        )
        yield from self._store_families()
        yield from _alert_families(g)
        yield from _bin_families(g)
        yield from _uplink_families(g)
        stream = g.alerts_stream
        yield GaugeMetricFamily(
            "shelfgate_live_subscribers", "Open live streams (SSE).", value=stream.subscribers
        )
        yield CounterMetricFamily(
            "shelfgate_live_dropped",
            "Live-stream items dropped for subscribers that did not keep up.",
            value=stream.dropped,
        )

    def _store_families(self) -> Iterator[Metric]:
        store = self._gateway.store
        yield CounterMetricFamily(
            "shelfgate_events_written",
            "Events written to the ledger and outbox since start.",
            value=store.events_written,
        )
        yield CounterMetricFamily(
            "shelfgate_events_pruned",
            "Sent events dropped from the ledger by the retention limits since start.",
            value=store.events_pruned,
        )
        yield from _quota_families(store.outbox_usage())
        snap = self._snapshot
        if snap is None:  # collected outside the route (e.g. a test calling the registry directly)
            return
        yield GaugeMetricFamily(
            "shelfgate_database_up", "1 when the gateway database answered this scrape.", value=int(snap.ok)
        )
        if not snap.ok:
            return
        yield GaugeMetricFamily(
            "shelfgate_outbox_depth", "Events waiting in the outbox for the broker.", value=snap.outbox_depth
        )
        yield GaugeMetricFamily(
            "shelfgate_outbox_oldest_age_seconds",
            "Age of the oldest event waiting in the outbox (0 when it is empty).",
            value=snap.outbox_oldest_age_s or 0.0,
        )
        yield GaugeMetricFamily(
            "shelfgate_last_seq", "The last event seq this gateway assigned.", value=snap.last_seq
        )


def _device_families(views: list[dict[str, Any]]) -> Iterator[Metric]:
    """Per-device health from `Gateway.device_views()`; tolerant of missing fields (families differ)."""
    labels = ["device_id", "family"]
    up = GaugeMetricFamily("shelfgate_device_up", "1 while the device answers (online).", labels=labels)
    connected = GaugeMetricFamily(
        "shelfgate_device_connected",
        "1 while the device's transport (port, socket, bus) is open.",
        labels=labels,
    )
    messages = CounterMetricFamily(
        "shelfgate_device_messages",
        "Exchanges with the device in its family's terms: Modbus polls (attempted, failed ones included),"
        " scale requests, scanner lines, RFID frames, BLE adverts.",
        labels=labels,
    )
    errors = CounterMetricFamily(
        "shelfgate_device_errors",
        "Device errors by kind, as the driver counts them (Modbus: timeouts, crc_errors, exceptions,"
        " decode_errors, disconnects, bus_unavailable).",
        labels=[*labels, "kind"],
    )
    last_seen = GaugeMetricFamily(
        "shelfgate_device_last_seen_age_seconds",
        "Seconds since the device last answered (absent until it first does).",
        labels=labels,
    )
    battery = GaugeMetricFamily(
        "shelfgate_device_battery_percent", "Battery level reported by the device.", labels=labels
    )
    temperature = GaugeMetricFamily(
        "shelfgate_device_temperature_celsius", "Temperature reported by the device.", labels=labels
    )
    for view in views:
        device_id = str(view.get("device_id", ""))
        if not device_id:
            continue
        values = [device_id, str(view.get("family") or "unknown")]
        up.add_metric(values, 1.0 if view.get("online") else 0.0)
        connected.add_metric(values, 1.0 if view.get("connected") else 0.0)
        messages.add_metric(values, _number(view.get("messages", view.get("polls"))) or 0.0)
        by_kind = view.get("errors_by_kind")
        if isinstance(by_kind, Mapping) and by_kind:
            for kind, count in sorted(by_kind.items()):
                errors.add_metric([*values, str(kind)], _number(count) or 0.0)
        else:
            errors.add_metric([*values, "unspecified"], _number(view.get("errors")) or 0.0)
        for family, key in (
            (last_seen, "last_seen_age_s"),
            (battery, "battery_pct"),
            (temperature, "temperature_c"),
        ):
            value = _number(view.get(key))
            if value is not None:
                family.add_metric(values, value)
    yield from (up, connected, messages, errors, last_seen, battery, temperature)


def _alert_families(g: Gateway) -> Iterator[Metric]:
    active = GaugeMetricFamily(
        "shelfgate_alerts_active", "Active alerts by kind and state.", labels=["kind", "state"]
    )
    counts: dict[tuple[str, str], int] = {(str(k), str(s)): 0 for k in AlertKind for s in ACTIVE_ALERT_STATES}
    for alert in g.rules.active():
        key = (str(alert.kind), str(alert.state))
        counts[key] = counts.get(key, 0) + 1
    # Stock-out forecast, loss and shrink alerts live in edge/signals.py, not in the alert rules.
    for signal_kind, signal_state in g.signals.alerts.active_kinds():
        key = (str(signal_kind), signal_state)
        counts[key] = counts.get(key, 0) + 1
    for (kind, state), n in sorted(counts.items()):
        active.add_metric([kind, state], n)
    yield active


def _bin_families(g: Gateway) -> Iterator[Metric]:
    bins = GaugeMetricFamily(
        "shelfgate_bins", "Bins by instantaneous stock level (out, low, ok, over, unknown).", labels=["level"]
    )
    # Lazy: edge.gateway imports edge.api, which imports this module. `stock_level` rather than `bin_view`:
    # the view builds a dict per bin, six times the cost at 2 000 bins.
    from edge.gateway import stock_level  # noqa: PLC0415

    counts = dict.fromkeys(STOCK_LEVELS, 0)
    estimators = g.estimators
    for bin_id, b in g.bins.items():
        est = estimators.get(bin_id)
        level = stock_level(b, est.count if est is not None else None)
        counts[level] = counts.get(level, 0) + 1
    for level, n in counts.items():
        bins.add_metric([level], n)
    yield bins


_UPLINK_COUNTERS: Final = (
    ("published_events", "shelfgate_uplink_published_events", "Events the broker acknowledged (PUBACK)."),
    ("published_batches", "shelfgate_uplink_published_batches", "Event batches the broker acknowledged."),
    ("reconnects", "shelfgate_uplink_reconnects", "Broker connections established after the first."),
    (
        "connection_failures",
        "shelfgate_uplink_connection_failures",
        "Failed connect attempts and connections that ended in an error.",
    ),
    ("heartbeats_sent", "shelfgate_uplink_heartbeats_sent", "Health heartbeats published."),
)


def _uplink_families(g: Gateway) -> Iterator[Metric]:
    uplink = g.uplink
    yield GaugeMetricFamily(
        "shelfgate_uplink_connected",
        "1 while connected to the MQTT broker (0 also when the uplink is not running).",
        value=1.0 if uplink is not None and uplink.connected else 0.0,
    )
    if uplink is None:
        return
    for attr, name, doc in _UPLINK_COUNTERS:
        value = _number(getattr(uplink, attr, None))
        if value is not None:
            yield CounterMetricFamily(name, doc, value=value)


def _number(value: object) -> float | None:
    """A numeric field as float; None for absent or non-numeric values (bool counts as a number)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


# --- the route --------------------------------------------------------------------------------------------


def metrics_router(gateway: Gateway, registry: CollectorRegistry) -> APIRouter:
    """`GET /metrics` for `gateway`, rendering `registry` (which gets the gateway and process collectors).

    Pass the same registry to `install_api_metrics` so the API latency histogram is in the same scrape.
    """
    collector = GatewayCollector(gateway)
    registry.register(collector)
    ProcessCollector(registry=registry)  # process_cpu_seconds_total, process_resident_memory_bytes, … (Linux)
    router = APIRouter()

    @router.get(METRICS_PATH, include_in_schema=False)
    async def metrics(request: Request) -> Response:
        await collector.refresh()
        # No await from here on: the snapshot just taken is the one rendered (module docstring).
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(content=encoder(registry), media_type=content_type)

    return router
