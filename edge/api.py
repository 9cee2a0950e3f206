"""The gateway's local REST API, SSE stream and staff pages (FastAPI).

Devices: `/api/devices` (every family, with `family` and its health), `/api/scans` (recent classified barcode
scans), `/api/scales` (last stable weight per scale), `/api/rfid/zones` (tags present per zone). The SSE
stream carries `alert` and `stock` events, and `scan`, `scale`, `rfid` and `device` events for live pages.

The API is a thin layer over `Gateway`: no parsing of device data, no SQL here. It must keep working with the
WAN down — staff get alerts from the store's own gateway first (ARCHITECTURE.md, "Alerts reach staff locally
first").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import uvicorn
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, Field
from sse_starlette.sse import EventSourceResponse

from edge.audit import audit_for, current_actor
from edge.auth import Auth, AuthMiddleware, auth_router
from edge.camera_api import camera_router
from edge.catalogue_api import catalogue_router
from edge.installer import installer_router
from edge.lane_api import lane_router
from edge.metrics import install_api_metrics, metrics_router
from edge.reports_api import reports_router
from edge.signals import signals_router
from edge.stock_api import stock_router
from httpkit.limits import install_http_limits

if TYPE_CHECKING:
    from edge.gateway import Gateway

WEB_DIR = Path(__file__).resolve().parent / "web"

SSE_PING_S = 15
"""Keep-alive comment interval: proxies and phones drop idle streams after 30–60 s."""

MAX_BODY_BYTES: Final = 1024 * 1024
"""1 MiB: two orders of magnitude above the largest body the local API takes (an ROI overlay of a few kB)."""


class AckRequest(BaseModel):
    """Body of POST /api/alerts/{id}/ack."""

    by: str = Field(default="staff", min_length=1, max_length=64, description="who acknowledges")


def create_app(gateway: Gateway) -> FastAPI:
    """Build the app bound to one running gateway."""
    app = FastAPI(
        title="shelfgate gateway",
        version=gateway.version,
        description="Live shelf stock, alerts and device health of one store.",
    )
    install_http_limits(app, MAX_BODY_BYTES)  # body cap (413) and documented 4xx answers: docs/security.md
    # Users, roles, sessions, CSRF (edge/auth.py): on when the config names `api.users_file`.
    api_cfg = gateway.store_cfg.api
    data_dir = Path(gateway.store_cfg.data_dir)
    auth = Auth(
        api_cfg.users_file,
        session_ttl_s=api_cfg.session_ttl_s,
        login_max_attempts_per_min=api_cfg.login_max_attempts_per_min,
        audit_dir=data_dir,
    )
    app.state.auth = auth
    app.add_middleware(AuthMiddleware, auth=auth)
    # Set by ApiServer on shutdown: open SSE streams end at once instead of holding uvicorn's graceful
    # shutdown for its whole timeout (sse-starlette cannot see our in-loop server stopping).
    shutting_down = asyncio.Event()
    app.state.shutting_down = shutting_down

    @app.get("/api/health")
    async def health() -> dict[str, Any]:
        depth, oldest = await gateway.store.depth()
        devices = gateway.device_views()
        uplink = gateway.uplink
        return {
            "status": "ok",
            "store_id": gateway.store_cfg.store_id,
            "gateway_id": gateway.gateway_id,
            "boot_id": gateway.boot_id,
            "version": gateway.version,
            "config_version": gateway.config.version,
            "uptime_s": gateway.uptime_s,
            "uplink_connected": bool(uplink and uplink.connected),
            "outbox_depth": depth,
            "outbox_oldest_age_s": None if oldest is None else round(oldest, 1),
            "last_seq": await gateway.store.last_seq(),
            "devices_online": sum(1 for d in devices if d["online"]),
            "devices_total": len(devices),
            "active_alerts": len(gateway.rules.active()),
            "outbox_alarm": gateway.outbox_alarm,
            "outbox_quota": gateway.store.outbox_usage().as_dict(),
        }

    @app.get("/api/stock")
    async def stock() -> list[dict[str, Any]]:
        return [gateway.bin_view(b) for b in gateway.bins]

    @app.get("/api/alerts")
    async def alerts(
        active: bool = Query(default=True, description="only alerts not yet resolved"),
        limit: int = Query(default=200, ge=1, le=5000),
    ) -> list[dict[str, Any]]:
        rows = await gateway.store.alerts(active_only=active, limit=limit)
        return [gateway.alert_view(r) for r in rows]

    @app.post("/api/alerts/{alert_id}/ack")
    async def acknowledge(alert_id: str, body: AckRequest | None = None) -> dict[str, Any]:
        # With auth on, who acknowledged is the logged-in user, not what the body claims.
        by = current_actor.get().user if auth.enabled else (body.by if body is not None else "staff")
        before = await gateway.store.alert(alert_id)
        row = await gateway.acknowledge(alert_id, by)
        if row is None:
            raise HTTPException(status_code=404, detail=f"no alert {alert_id!r}")
        if row.state == "resolved" and row.acknowledged_by is None:
            raise HTTPException(status_code=409, detail=f"alert {alert_id!r} is already resolved")
        if before is None or before.state != row.state:
            await audit_for(data_dir).arecord(
                "alert.acknowledge",
                alert_id,
                None if before is None else _alert_audit(before.as_dict()),
                _alert_audit(row.as_dict()),
            )
        return gateway.alert_view(row)

    @app.get("/api/audit")
    async def audit(
        since: str | None = Query(default=None, description="RFC 3339 time; only entries at or after it"),
        user: str | None = Query(default=None, max_length=64),
        action: str | None = Query(
            default=None, max_length=64, description="e.g. `alert.acknowledge`, or a prefix: `calibration`"
        ),
        limit: int = Query(default=500, ge=1, le=5000),
    ) -> list[dict[str, Any]]:
        since_ts = None
        if since is not None:
            try:
                since_ts = datetime.fromisoformat(since.replace("Z", "+00:00")).timestamp()
            except ValueError as exc:
                raise HTTPException(
                    status_code=422, detail=f"since: not an RFC 3339 time: {since!r}"
                ) from exc
        log = audit_for(data_dir)
        return await asyncio.to_thread(log.query, since=since_ts, user=user, action=action, limit=limit)

    @app.get("/api/devices")
    async def devices(
        family: str | None = Query(
            default=None, description="only one family: modbus, scale, scanner, rfid, ble, camera"
        ),
    ) -> list[dict[str, Any]]:
        views = gateway.device_views()
        return views if family is None else [d for d in views if d["family"] == family]

    @app.get("/api/scans")
    async def scans(
        device: str | None = Query(default=None, description="one scanner's id; all scanners when absent"),
        limit: int = Query(default=50, ge=1, le=500),
    ) -> list[dict[str, Any]]:
        coordinator = gateway.scanners
        if device is not None and (coordinator is None or device not in coordinator):
            raise HTTPException(status_code=404, detail=f"no scanner {device!r}")
        return [] if coordinator is None else coordinator.recent(device, limit)

    @app.get("/api/scales")
    async def scales() -> list[dict[str, Any]]:
        coordinator = gateway.scales
        return [] if coordinator is None else coordinator.views()

    @app.get("/api/rfid/zones")
    async def rfid_zones() -> list[dict[str, Any]]:
        coordinator = gateway.rfid
        return [] if coordinator is None else coordinator.zones()

    @app.get("/api/alerts/stream")
    async def alert_stream() -> EventSourceResponse:
        async def events() -> AsyncIterator[dict[str, str]]:
            async with gateway.alerts_stream.subscribe() as queue:
                yield {"event": "hello", "data": json.dumps({"boot_id": gateway.boot_id})}
                while not shutting_down.is_set():
                    getter = asyncio.ensure_future(queue.get())
                    stopper = asyncio.ensure_future(shutting_down.wait())
                    done, _ = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                    for f in (getter, stopper):
                        if f not in done:
                            f.cancel()
                    if getter in done:
                        item = getter.result()
                        yield {"event": item["type"], "data": json.dumps(item, ensure_ascii=False)}

        return EventSourceResponse(events(), ping=SSE_PING_S)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/board")

    @app.get("/board", include_in_schema=False)
    async def board() -> FileResponse:
        return FileResponse(WEB_DIR / "board.html", media_type="text/html; charset=utf-8")

    app.include_router(auth_router(auth))
    app.include_router(installer_router(gateway))
    app.include_router(camera_router(gateway))
    app.include_router(lane_router(gateway))
    app.include_router(stock_router(gateway))
    app.include_router(catalogue_router(gateway))
    app.include_router(reports_router(gateway))
    app.include_router(signals_router(gateway))
    metrics_registry = CollectorRegistry()  # per app: tests run many gateways in one process
    install_api_metrics(app, metrics_registry)
    app.include_router(metrics_router(gateway, metrics_registry))
    if WEB_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app


def _alert_audit(row: dict[str, Any]) -> dict[str, Any]:
    """The part of an alert an acknowledgement changes."""
    keys = ("state", "acknowledged_by", "acknowledged_at", "count", "bin_id", "kind")
    return {k: row.get(k) for k in keys}


class _InLoopServer(uvicorn.Server):
    """uvicorn inside our own event loop: signals belong to the process root, not to the HTTP server."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ApiServer:
    """Owns one uvicorn server task; cancelling `serve()` shuts it down cleanly."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        self._server = _InLoopServer(config)
        self._app = app

    async def serve(self) -> None:
        """Serve until cancelled."""
        stopping = getattr(self._app.state, "shutting_down", None)
        if isinstance(stopping, asyncio.Event):
            stopping.clear()  # the same app may be served again after a stop
        try:
            await self._server.serve()
        except asyncio.CancelledError:
            if isinstance(stopping, asyncio.Event):
                stopping.set()
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.shutdown(), 5)
            raise

    async def started(self, timeout_s: float = 10.0) -> int:
        """Wait until listening; return the bound port (useful with port 0)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not self._server.started:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("API server did not start")
            await asyncio.sleep(0.01)
        sock = self._server.servers[0].sockets[0]
        port: int = sock.getsockname()[1]
        return port
