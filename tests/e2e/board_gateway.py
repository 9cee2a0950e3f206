"""A thin stand-in for `edge.gateway.Gateway` at the one seam the staff board uses: `edge.api.create_app(gw)`.

Why it exists: the browser test must drive the real page against the real FastAPI app, real uvicorn and a real
SQLite store, but the gateway runtime (inventory engine, uplink) is still being assembled, so `edge.gateway`
does not import yet. This object exposes exactly the attributes `create_app` and the views read, stores every
alert change in a real `edge.store.GatewayStore` and announces it on a `Broadcast`, the same way
`Gateway._persist` does. What it stands in for, to be replaced by the real `Gateway` once it runs:

- the inventory engine: bin counts are set by the test (`set_count`) instead of estimated from weights;
- `AlertRules`: alerts are raised/resolved by the test (`raise_alert`, `resolve`) instead of by the rules;
  `acknowledge` applies the same raised → acknowledged rule the engine applies;
- device pollers and the uplink: `device_views()` reports every transmitter offline, `uplink` is None.

`Broadcast` is the real `edge.gateway.Broadcast` when `edge.gateway` imports; until then an equivalent
bounded fan-out (same overflow policy) is used.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any

from cloud_bridge.contract import EventType, rfc3339
from edge import __version__
from edge.config import Bin, LoadedConfig
from edge.gateway import Broadcast, stock_level
from edge.store import PRIORITY_HIGH, PRIORITY_LEVEL, AlertRow, BinRow, GatewayStore, NewEvent


class _ActiveAlerts:
    """The slice of `AlertRules` the API reads: which alerts are not resolved."""

    def __init__(self) -> None:
        self.rows: dict[str, AlertRow] = {}

    def active(self) -> list[AlertRow]:
        """Alerts raised or acknowledged, not yet resolved."""
        return list(self.rows.values())


class BoardGateway:
    """Stands in for `edge.gateway.Gateway` behind `create_app`; the module docstring says what it fakes."""

    def __init__(self, config: LoadedConfig, store: GatewayStore) -> None:
        self.config = config
        self.store_cfg = config.store
        self.gateway_id = config.store.effective_gateway_id
        self.boot_id = uuid.uuid4().hex[:12]
        self.version = __version__
        self.started_mono = time.monotonic()
        self.store = store
        self.outbox_alarm: str | None = None  # as Gateway: a write held for disk space or a hit quota
        self.bins: dict[str, Bin] = {b.id: b for b in config.store.bins}
        self.counts: dict[str, int | None] = dict.fromkeys(self.bins)
        self.rules = _ActiveAlerts()
        self.alerts_stream = Broadcast()
        self.uplink: Any = None
        self.acks: list[tuple[str, str]] = []
        """(alert_id, by) of every acknowledgement the API asked for, in order."""

    @property
    def uptime_s(self) -> float:
        """Seconds since this object was created."""
        return round(time.monotonic() - self.started_mono, 1)

    # --- views (same shapes as Gateway's) --------------------------------------------------------------

    def bin_view(self, bin_id: str) -> dict[str, Any]:
        """A bin's live state, shaped like `Gateway.bin_view`."""
        b = self.bins[bin_id]
        count = self.counts[bin_id]
        level = stock_level(b, count)
        return {
            "bin_id": b.id,
            "sku": b.sku,
            "name": {"zh": b.name.zh, "en": b.name.en},
            "location": b.location,
            "count": count,
            "weight_g": None if count is None else round(count * b.unit_weight_g + b.tare_g, 1),
            "stable": count is not None,
            "uncertain": False,
            "level": level,
            "safety_stock": b.safety_stock,
            "max_stock": b.max_stock,
            "unit_weight_g": b.unit_weight_g,
            "device": b.device,
            "channel": b.channel,
            "last_sample_ts": None,
        }

    def alert_view(self, row: AlertRow) -> dict[str, Any]:
        """An alert row with the bin's names, shaped like `Gateway.alert_view`."""
        out = row.as_dict()
        b = self.bins.get(row.bin_id)
        out["name"] = {"zh": b.name.zh, "en": b.name.en} if b else None
        out["location"] = b.location if b else ""
        return out

    def device_views(self) -> list[dict[str, Any]]:
        """Every transmitter, offline: no pollers run here."""
        bins_of: dict[str, list[str]] = {}
        for b in self.bins.values():
            if b.device is not None:  # camera-only bins have no weighing device
                bins_of.setdefault(b.device, []).append(b.id)
        return [
            {
                "device_id": t.id,
                "bus": t.bus,
                "unit_id": t.unit_id,
                "online": False,
                "last_seen_age_s": None,
                "bins": bins_of.get(t.id, []),
                "counters": {},
            }
            for t in self.store_cfg.transmitters
        ]

    # --- what the API calls ----------------------------------------------------------------------------

    async def acknowledge(self, alert_id: str, by: str) -> AlertRow | None:
        """Raised → acknowledged (anything else unchanged), like `Gateway.acknowledge`."""
        self.acks.append((alert_id, by))
        row = self.rules.rows.get(alert_id)
        if row is None or row.state != "raised":
            return await self.store.alert(alert_id)
        now = rfc3339(time.time())
        acked = dataclasses.replace(
            row, state="acknowledged", updated_at=now, acknowledged_by=by, acknowledged_at=now
        )
        await self._record_alert(acked, EventType.ALERT_ACKNOWLEDGED)
        return await self.store.alert(alert_id)

    # --- what the test drives --------------------------------------------------------------------------

    async def set_count(self, bin_id: str, count: int | None, *, publish: bool = True) -> None:
        """Set a bin's count, persist it, and (like a CountChanged) announce it on the stream."""
        self.counts[bin_id] = count
        b = self.bins[bin_id]
        view = self.bin_view(bin_id)
        row = BinRow(bin_id, b.sku, count, view["weight_g"] or 0.0, b.tare_g, False, time.time())
        event = NewEvent(
            EventType.STOCK_CHANGED,
            rfc3339(time.time()),
            {"bin_id": bin_id, "sku": b.sku, "count": count},
            PRIORITY_LEVEL,
        )
        await self.store.record([event], [row], [])
        if publish:
            self.alerts_stream.publish({"type": "stock", "bin": view})

    async def raise_alert(
        self, bin_id: str, kind: str, *, raised_ago_s: float = 0.0, publish: bool = True
    ) -> AlertRow:
        """Raise an alert on a bin for its current count, `raised_ago_s` seconds in the past."""
        b = self.bins[bin_id]
        raised = rfc3339(time.time() - raised_ago_s)
        row = AlertRow(
            alert_id=f"{bin_id}-{kind}-{uuid.uuid4().hex[:8]}",
            bin_id=bin_id,
            sku=b.sku,
            kind=kind,
            state="raised",
            count=self.counts[bin_id],
            message=f"{b.name.en}: {kind}",
            raised_at=raised,
            updated_at=raised,
        )
        await self._record_alert(row, EventType.ALERT_RAISED, publish=publish)
        return row

    async def resolve(self, alert_id: str, *, publish: bool = True) -> AlertRow:
        """Resolve an active alert (the condition cleared)."""
        row = self.rules.rows[alert_id]
        now = rfc3339(time.time())
        resolved = dataclasses.replace(row, state="resolved", updated_at=now, resolved_at=now)
        await self._record_alert(resolved, EventType.ALERT_RESOLVED, publish=publish)
        return resolved

    async def _record_alert(self, row: AlertRow, event_type: EventType, *, publish: bool = True) -> None:
        data = {"alert_id": row.alert_id, "bin_id": row.bin_id, "kind": row.kind, "state": row.state}
        await self.store.record([NewEvent(event_type, row.updated_at, data, PRIORITY_HIGH)], [], [row])
        if row.state == "resolved":
            self.rules.rows.pop(row.alert_id, None)
        else:
            self.rules.rows[row.alert_id] = row
        if publish:
            self.alerts_stream.publish({"type": "alert", "alert": self.alert_view(row)})
