"""Prometheus exposition for a hub worker: `GET /metrics`, read from the worker and its database at scrape time.

Like the gateway's (`edge/metrics.py`; the hub may not import `edge`, so the small latency middleware is
repeated here): a custom collector reads what already exists — the ingest worker's `IngestCounters` and the
fleet view from `HubDB.stores()` — instead of keeping a second set of counters. Each worker has its own
`CollectorRegistry`, never prometheus_client's global one.

`HubDB.stores()` is async (it runs on the database threads), so the route awaits it, then renders at once
with no await in between; the fleet numbers are exact at scrape time and no background task or cache is
needed. A database that does not answer is reported as `shelfgate_hub_database_up 0`, not as a failed scrape.

Counters are per worker (`IngestCounters` start at 0 with the process); run several workers and Prometheus
sums them (`sum without (instance) (rate(…))`). The fleet gauges come from the shared database, so every
worker reports the same fleet: aggregate them with `max`, not `sum`.

Metric names and labels are listed in docs/operations.md ("Metrics and status").
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from httpkit.latency import ApiLatencyMiddleware

if TYPE_CHECKING:
    from hub.config import HubConfig
    from hub.db import HubDB
    from hub.ingest import Ingest
    from hub.models import StoreRecord

_log = logging.getLogger(__name__)

METRICS_PATH: Final = "/metrics"

API_LATENCY_BUCKETS_S: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
APPLY_LATENCY_BUCKETS_S: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""One batch's transaction: a few ms on SQLite, more on a loaded PostgreSQL; 10 s means lock trouble."""

STORE_STATES: Final = ("online", "offline", "stale")

_METRIC_NAME = re.compile(r"[^a-zA-Z0-9_]")


# --- API latency (the middleware is httpkit.latency, shared with the gateway) -------------------------------


def install_api_metrics(app: FastAPI, registry: CollectorRegistry) -> Histogram:
    """Add the latency middleware to `app` (before it serves), recording into `registry`."""
    histogram = Histogram(
        "shelfgate_hub_api_request_duration_seconds",
        "Time from request to response start of the HQ API, by method, route template and status code.",
        ("method", "route", "code"),
        registry=registry,
        buckets=API_LATENCY_BUCKETS_S,
    )
    app.add_middleware(ApiLatencyMiddleware, histogram=histogram)
    app.state.metrics_registry = registry  # where tests (and anything else mounting metrics) find it
    return histogram


def apply_latency_histogram(registry: CollectorRegistry) -> Histogram:
    """`shelfgate_hub_apply_seconds`: one message's database transaction, by message kind.

    The ingest worker observes it (`histogram.labels(kind).observe(seconds)` around `db.apply_batch` and the
    other `db.record_*` calls); until it does, the family is exported with no samples.
    """
    return Histogram(
        "shelfgate_hub_apply_seconds",
        "Database time to apply one ingested message, by kind (batch, status, heartbeat, command_result).",
        ("kind",),
        registry=registry,
        buckets=APPLY_LATENCY_BUCKETS_S,
    )


# --- the hub collector ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    """The database-backed values of one scrape."""

    ok: bool
    stores: Sequence[StoreRecord] = ()
    now: float = 0.0


def store_state(record: StoreRecord, *, now: float, stale_after_s: float) -> str:
    """`offline` when the retained status says so (the will was published); else `stale` when no heartbeat
    arrived within `stale_after_s` (or never); else `online`. Exactly one per store, so the states sum to the
    fleet size — the same staleness rule as `GET /api/fleet`."""
    if getattr(record, "online", None) is False:
        return "offline"
    last = getattr(record, "last_heartbeat_at", None)
    if last is None or now - float(last) > stale_after_s:
        return "stale"
    return "online"


class HubCollector:
    """Reads one hub worker's ingest counters and the fleet view into metric families."""

    def __init__(
        self,
        db: HubDB,
        config: HubConfig,
        *,
        ingest: Ingest | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._config = config
        self._ingest = ingest
        self._clock = clock
        self._started_mono = time.monotonic()
        self._snapshot: FleetSnapshot | None = None
        self._db_failed = False

    async def refresh(self) -> None:
        """Read the fleet from the database; call right before rendering."""
        try:
            stores = await self._db.stores()
        except Exception as exc:  # noqa: BLE001 - a sick database is a metric, never a failed scrape
            if not self._db_failed:
                _log.warning("metrics: the hub database did not answer (%s); reporting it as down", exc)
            self._db_failed = True
            self._snapshot = FleetSnapshot(ok=False)
            return
        if self._db_failed:
            _log.info("metrics: the hub database answers again")
        self._db_failed = False
        self._snapshot = FleetSnapshot(True, stores, self._clock())

    def collect(self) -> Iterator[Metric]:
        """The metric families (prometheus_client's `Collector` protocol)."""
        info = InfoMetricFamily("shelfgate_hub", "Which hub worker this is.")
        share_group = getattr(self._config.ingest, "share_group", None)
        info.add_metric([], {"hub_id": str(self._config.hub_id), "share_group": str(share_group or "")})
        yield info
        yield GaugeMetricFamily(
            "shelfgate_hub_uptime_seconds",
            "Seconds since this worker's metrics were set up (its start).",
            value=round(time.monotonic() - self._started_mono, 1),
        )
        yield from self._ingest_families()
        yield from self._fleet_families()

    def _ingest_families(self) -> Iterator[Metric]:
        ingest = self._ingest
        yield GaugeMetricFamily(
            "shelfgate_hub_ingest_connected",
            "1 while this worker is subscribed to the broker.",
            value=1.0 if ingest is not None and ingest.connected else 0.0,
        )
        if ingest is None:
            return
        for key, value in sorted(ingest.counters.as_dict().items()):
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            name = _METRIC_NAME.sub("_", key)
            yield CounterMetricFamily(
                f"shelfgate_hub_ingest_{name}",
                f"IngestCounters.{key} of this worker since it started (see hub/ingest.py).",
                value=value,
            )

    def _fleet_families(self) -> Iterator[Metric]:
        snap = self._snapshot
        if snap is None:  # collected outside the route
            return
        yield GaugeMetricFamily(
            "shelfgate_hub_database_up", "1 when the hub database answered this scrape.", value=int(snap.ok)
        )
        if not snap.ok:
            return
        stale_after_s = float(self._config.stale_after_s)
        by_state = GaugeMetricFamily(
            "shelfgate_hub_stores",
            "Stores by state: online, offline (will published), stale (no heartbeat within the stale limit).",
            labels=["state"],
        )
        counts = dict.fromkeys(STORE_STATES, 0)
        labels = ["store_id"]
        heartbeat_age = GaugeMetricFamily(
            "shelfgate_hub_store_heartbeat_age_seconds",
            "Seconds since the store's last heartbeat reached the hub (absent before the first).",
            labels=labels,
        )
        outbox_depth = GaugeMetricFamily(
            "shelfgate_hub_store_outbox_depth",
            "The store's outbox depth, from its last heartbeat.",
            labels=labels,
        )
        outbox_age = GaugeMetricFamily(
            "shelfgate_hub_store_outbox_oldest_age_seconds",
            "Age of the store's oldest unsent event, from its last heartbeat (0 when empty).",
            labels=labels,
        )
        devices_offline = GaugeMetricFamily(
            "shelfgate_hub_store_devices_offline", "Devices the store reports offline.", labels=labels
        )
        active_alerts = GaugeMetricFamily(
            "shelfgate_hub_store_active_alerts",
            "Active alerts of the store, as the hub holds them.",
            labels=labels,
        )
        missing = GaugeMetricFamily(
            "shelfgate_hub_store_missing_events",
            "Seqs of the store's current gateway the hub is still waiting for (holes).",
            labels=labels,
        )
        up = GaugeMetricFamily(
            "shelfgate_hub_store_up", "1 while the store is online and its heartbeat is fresh.", labels=labels
        )
        for record in snap.stores:
            store_id = [str(record.store_id)]
            state = store_state(record, now=snap.now, stale_after_s=stale_after_s)
            counts[state] += 1
            up.add_metric(store_id, 1.0 if state == "online" else 0.0)
            last = getattr(record, "last_heartbeat_at", None)
            if last is not None:
                heartbeat_age.add_metric(store_id, max(0.0, snap.now - float(last)))
            depth = getattr(record, "outbox_depth", None)
            if depth is not None:
                outbox_depth.add_metric(store_id, float(depth))
                outbox_age.add_metric(store_id, float(getattr(record, "outbox_oldest_age_s", None) or 0.0))
            offline = getattr(record, "devices_offline", None)
            if offline is not None:
                devices_offline.add_metric(store_id, float(offline))
            active_alerts.add_metric(store_id, float(getattr(record, "active_alerts", 0) or 0))
            ranges = getattr(record, "missing_ranges", ()) or ()
            missing.add_metric(store_id, float(sum(r.last_seq - r.first_seq + 1 for r in ranges)))
        for state, n in counts.items():
            by_state.add_metric([state], n)
        yield from (
            by_state,
            up,
            heartbeat_age,
            outbox_depth,
            outbox_age,
            devices_offline,
            active_alerts,
            missing,
        )


# --- the route ----------------------------------------------------------------------------------------------


def metrics_router(
    db: HubDB,
    config: HubConfig,
    registry: CollectorRegistry,
    *,
    ingest: Ingest | None = None,
    clock: Callable[[], float] = time.time,
) -> APIRouter:
    """`GET /metrics` for one hub worker, rendering `registry` (which gets the hub and process collectors).

    Pass the same registry to `install_api_metrics` (and `apply_latency_histogram`) so one scrape has it all.
    `clock` (epoch seconds) judges heartbeat ages, as `hub.api.create_app`'s does.
    """
    collector = HubCollector(db, config, ingest=ingest, clock=clock)
    registry.register(collector)
    ProcessCollector(registry=registry)
    router = APIRouter()

    @router.get(METRICS_PATH, include_in_schema=False)
    async def metrics(request: Request) -> Response:
        await collector.refresh()
        # No await from here on: the fleet just read is the one rendered.
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(content=encoder(registry), media_type=content_type)

    return router
