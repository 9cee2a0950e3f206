"""The HQ API (FastAPI): health, fleet, and per-store stock and alerts, read from the hub database.

Ages and staleness are computed at request time from the hub's own receive times, so a gateway with a wrong
clock can never look fresh; a store is stale after `stale_after_heartbeats × heartbeat_s` without a heartbeat.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated

from fastapi import FastAPI, HTTPException, Query
from pydantic import BaseModel, ConfigDict

from cloud_bridge.contract import rfc3339
from hub.config import HubConfig
from hub.db import HubDB
from hub.ingest import Ingest
from hub.models import AlertItem, FleetEntry, QuarantineItem, StockItem, StoreRecord


class Health(BaseModel):
    """`GET /api/health`: the process answers; whether ingest is subscribed; ingest counters."""

    model_config = ConfigDict(frozen=True)

    status: str
    hub_id: str
    mqtt_connected: bool
    counters: dict[str, int]


def fleet_entry(record: StoreRecord, *, now: float, stale_after_s: float) -> FleetEntry:
    """Derive the fleet view of one store at time `now` (epoch seconds)."""
    age_s = None if record.last_heartbeat_at is None else max(0.0, now - record.last_heartbeat_at)
    return FleetEntry(
        store_id=record.store_id,
        gateway_id=record.gateway_id,
        online=record.online,
        status_ts=record.status_ts,
        last_heartbeat_at=None if record.last_heartbeat_at is None else rfc3339(record.last_heartbeat_at),
        heartbeat_age_s=None if age_s is None else round(age_s, 3),
        stale=age_s is None or age_s > stale_after_s,
        outbox_depth=record.outbox_depth,
        outbox_oldest_age_s=record.outbox_oldest_age_s,
        last_seq=record.last_seq,
        received_seq=record.received_seq,
        contiguous_seq=record.contiguous_seq,
        missing_ranges=list(record.missing_ranges),
        version=record.version,
        config_version=record.config_version,
        devices_offline=record.devices_offline,
        active_alerts=record.active_alerts,
    )


def create_app(
    db: HubDB, config: HubConfig, *, ingest: Ingest | None = None, clock: Callable[[], float] = time.time
) -> FastAPI:
    """Build the app over an open `HubDB`; the caller owns the DB and the ingest worker (no lifespan here)."""
    app = FastAPI(title=f"shelfgate hub {config.hub_id}", version="1")

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
    async def fleet() -> list[FleetEntry]:
        now = clock()
        return [fleet_entry(r, now=now, stale_after_s=config.stale_after_s) for r in await db.stores()]

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

    return app
