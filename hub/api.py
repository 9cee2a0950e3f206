"""The HQ API (FastAPI): health, fleet, and per-store stock and alerts, read from the hub database; the HQ
dashboard at /hq (`hub/web/`).

Ages and staleness are computed at request time from the hub's own receive times, so a gateway with a wrong
clock can never look fresh; a store is stale after `stale_after_heartbeats × heartbeat_s` without a heartbeat.
Fleet health and HQ alerts (`/api/fleet`, `/api/stores/{id}`, `/api/hq-alerts`) are `hub.fleet`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Final

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict

from httpkit.limits import install_http_limits
from hub.config import HubConfig
from hub.config_rollout import ConfigRollouts, config_rollout_router
from hub.db import HubDB
from hub.fleet import FleetMonitor, ListeningSince, fleet_entry, fleet_router
from hub.ingest import Ingest
from hub.metrics import install_api_metrics, metrics_router
from hub.models import AlertItem, FleetEntry, QuarantineItem, StockItem
from hub.sales import SalesSettings, configure
from hub.sales_api import sales_router

__all__ = ["Health", "create_app", "fleet_entry"]  # fleet_entry lives in hub.fleet; kept importable here

MAX_BODY_BYTES: Final = 16 * 1024 * 1024
"""16 MiB: the largest body the HQ API takes is a config rollout with one YAML text per store (each at most
200 000 characters, typically 5–20 kB): room for a fleet of hundreds of stores in one request."""


class Health(BaseModel):
    """`GET /api/health`: the process answers; whether ingest is subscribed; ingest counters."""

    model_config = ConfigDict(frozen=True)

    status: str
    hub_id: str
    mqtt_connected: bool
    counters: dict[str, int]


WEB_DIR = Path(__file__).resolve().parent / "web"
"""The HQ dashboard: plain HTML/JS/CSS, no build step, no CDN (served at /hq)."""


def create_app(
    db: HubDB,
    config: HubConfig,
    *,
    ingest: Ingest | None = None,
    clock: Callable[[], float] = time.time,
    fleet: FleetMonitor | None = None,
    rollouts: ConfigRollouts | None = None,
) -> FastAPI:
    """Build the app over an open `HubDB`; the caller owns the DB and the ingest worker (no lifespan here).
    `fleet` is the worker's monitor (the service runs its evaluator); without one the app makes its own."""
    app = FastAPI(title=f"shelfgate hub {config.hub_id}", version="1")
    install_http_limits(app, MAX_BODY_BYTES)  # body cap (413) and documented 4xx answers: docs/security.md
    if fleet is None:
        fleet = FleetMonitor(
            db,
            config,
            clock=clock,
            listening_since=None if ingest is None else ListeningSince(lambda: ingest.connected, clock),
        )
    monitor = fleet

    async def known_store(store_id: str) -> None:
        if await db.store(store_id) is None:
            raise HTTPException(
                status_code=404, detail=f"unknown store {store_id!r}: the hub has no data from it"
            )

    @app.get("/api/health")
    async def health() -> Health:
        return Health(
            status="ok",
            hub_id=config.hub_id,
            mqtt_connected=ingest is not None and ingest.connected,
            counters={} if ingest is None else ingest.counters.as_dict(),
        )

    @app.get("/api/fleet")
    async def fleet_view() -> list[FleetEntry]:
        return await monitor.fleet()

    app.include_router(fleet_router(monitor))
    # Config rollouts (hub.config_rollout). `rollouts` is the worker's (the service runs its sweep); without one
    # the app makes its own, which publishes on create only.
    if rollouts is None:
        rollouts = ConfigRollouts(db, None if ingest is None else ingest.publish_command, clock=clock)
    app.include_router(config_rollout_router(rollouts))

    @app.get("/api/stores/{store_id}/stock")
    async def stock(store_id: str) -> list[StockItem]:
        await known_store(store_id)
        return await db.stock(store_id)

    @app.get("/api/stores/{store_id}/alerts")
    async def alerts(
        store_id: str,
        active: Annotated[
            bool | None, Query(description="true: not resolved; false: resolved; omit: all")
        ] = None,
    ) -> list[AlertItem]:
        await known_store(store_id)
        return await db.alerts(store_id, active)

    @app.get("/api/quarantine")
    async def quarantine(limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[QuarantineItem]:
        return await db.quarantined(limit)

    # Sales, members and points (docs/hub-api.md). The sale effects of this process apply the same rules.
    configure(SalesSettings.from_config(config))
    app.include_router(sales_router(db, config, clock=clock, known_store=known_store))

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/hq")

    @app.get("/hq", include_in_schema=False)
    async def hq() -> FileResponse:
        return FileResponse(WEB_DIR / "hq.html", media_type="text/html; charset=utf-8")

    app.mount("/hq/static", StaticFiles(directory=WEB_DIR), name="hq-static")
    metrics_registry = CollectorRegistry()
    install_api_metrics(app, metrics_registry)
    app.include_router(metrics_router(db, config, metrics_registry, ingest=ingest, clock=clock))
    return app
