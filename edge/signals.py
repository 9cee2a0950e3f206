"""Store signals (issue #6 parts 5-7): `predicted_out`, `loss_suspected` and `shrink_suspected` alerts.

These alerts are not conditions of a bin's count like `low`/`out` (`edge.inventory.alerts.AlertRules`): the
forecast, the RFID exit zone and the shrink window decide them (`edge.forecasting`, `edge.loss`,
`edge.shrink`). `SignalAlerts` keeps their lifecycle (raised → acknowledged → resolved, one active alert per
(kind, key)) and produces the same `AlertTransition`s, so they travel the gateway's one alert path
(`Gateway._persist`: ledger + outbox + alerts table in one transaction → the hub and the board).

Keys: a bin id (`predicted_out`), a SKU (`shrink_suspected`), a tag EPC (`loss_suspected`). Alert ids are
``{bin_id}:{kind}:{raised_ms}`` like the rules' (ms bumped per kind on a collision, so two tags leaving in the
same millisecond get two ids). The numbers behind an alert are in its `message` as ``key=value`` words after
the kind (stable: tools may parse them; `AlertData` has no structured detail field), e.g.
``loss_suspected epc=3034… gtin=06901234567892 zone=exit at=2026-11-23T10:00:00.123Z sold=0 …``.

`StoreSignals` wires the three watchers into the gateway: count changes in (`count_changed`, synchronous, from
`Gateway._persist`), RFID presence items in (`feed`, from the device publish path), and a task (`run`) that
looks up sales in SQLite (`units_sold`, the lanes' `sales` table, read-only) and ticks the forecast and the
shrink window.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from fastapi import APIRouter

from cloud_bridge.contract import AlertKind, AlertState, rfc3339
from edge.inventory.alerts import AlertTransition
from edge.inventory.events import CountChanged

if TYPE_CHECKING:
    from edge.config import Bin, StoreConfig
    from edge.store import GatewayStore

_log = logging.getLogger(__name__)

SIGNAL_KINDS: Final = frozenset(
    {AlertKind.PREDICTED_OUT, AlertKind.LOSS_SUSPECTED, AlertKind.SHRINK_SUSPECTED}
)
QUEUE_MAX: Final = 4096
"""RFID presence items waiting for the signals task; beyond it new items are dropped and counted."""


def message_fields(message: str) -> dict[str, str]:
    """The ``key=value`` words of a signal alert's message (see the module docstring)."""
    out: dict[str, str] = {}
    for word in message.split():
        key, sep, value = word.partition("=")
        if sep:
            out[key] = value
    return out


def gtin14(code: str) -> str:
    """A bin's SKU as the 14-digit GTIN sales carry (`Gtin14`); a store SKU that is no GTIN stays as is."""
    return code.zfill(14) if code.isdigit() and len(code) <= 14 else code


def units_sold(conn: sqlite3.Connection, since_ts: float, until_ts: float) -> dict[str, int]:
    """Units sold per GTIN at the checkout lanes between two times (the lanes' `sales` table, read-only).

    Counted lines add their `qty`; a weighed line (`weight_kg`) is one unit (one package left the store).
    Returns are not subtracted: a return brings goods back, it does not un-pick them. No `sales` table (a
    store without lanes) is no sales.
    """
    found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sales'").fetchone()
    if found is None:
        return {}
    rows = conn.execute(
        "SELECT json FROM sales WHERE kind = 'sale' AND ts >= ? AND ts <= ?",
        (rfc3339(since_ts), rfc3339(until_ts)),
    ).fetchall()
    sold: dict[str, int] = {}
    for (text,) in rows:
        try:
            items = json.loads(text).get("items", [])
        except (ValueError, AttributeError):
            continue
        for item in items:
            gtin = str(item.get("gtin", ""))
            qty = item.get("qty")
            sold[gtin] = sold.get(gtin, 0) + (int(qty) if isinstance(qty, int) else 1)
    return sold


def _units_sold(conn: sqlite3.Connection, *, since: float, until: float) -> dict[str, int]:
    return units_sold(conn, since, until)


@dataclass(slots=True)
class _Active:
    alert_id: str
    bin_id: str
    sku: str
    state: AlertState
    raised_at: float
    message: str
    count: int | None


class SignalAlerts:
    """Lifecycle of the signal alerts: at most one active per (kind, key); see the module docstring."""

    def __init__(self) -> None:
        self._active: dict[tuple[AlertKind, str], _Active] = {}
        self._by_id: dict[str, tuple[AlertKind, str]] = {}
        self._last_ms: dict[AlertKind, int] = {}

    def is_active(self, kind: AlertKind, key: str) -> bool:
        """Whether (kind, key) has a raised or acknowledged alert."""
        return (kind, key) in self._active

    def keys(self, kind: AlertKind) -> list[str]:
        """The keys of the active alerts of a kind."""
        return [key for k, key in self._active if k is kind]

    def raise_alert(
        self, kind: AlertKind, key: str, *, bin_id: str, sku: str, ts: float, count: int | None, message: str
    ) -> AlertTransition | None:
        """Raise (kind, key) at `ts`; None when it is already active."""
        if (kind, key) in self._active:
            return None
        ms = max(int(ts * 1000), self._last_ms.get(kind, -1) + 1)
        self._last_ms[kind] = ms
        alert_id = f"{bin_id}:{kind}:{ms}"
        self._active[(kind, key)] = _Active(alert_id, bin_id, sku, AlertState.RAISED, ts, message, count)
        self._by_id[alert_id] = (kind, key)
        return AlertTransition(alert_id, bin_id, sku, kind, AlertState.RAISED, ts, count, message, ts)

    def resolve(
        self, kind: AlertKind, key: str, ts: float, *, count: int | None, message: str
    ) -> AlertTransition | None:
        """Resolve (kind, key) at `ts`; None when it is not active."""
        a = self._active.pop((kind, key), None)
        if a is None:
            return None
        del self._by_id[a.alert_id]
        return AlertTransition(
            a.alert_id, a.bin_id, a.sku, kind, AlertState.RESOLVED, max(ts, a.raised_at), count, message,
            a.raised_at,
        )  # fmt: skip

    def acknowledge(self, alert_id: str, by: str, ts: float) -> AlertTransition | None:
        """Staff saw it; None when unknown here or already acknowledged."""
        found = self._by_id.get(alert_id)
        if found is None:
            return None
        a = self._active[found]
        if a.state is not AlertState.RAISED:
            return None
        a.state = AlertState.ACKNOWLEDGED
        return AlertTransition(
            alert_id, a.bin_id, a.sku, found[0], AlertState.ACKNOWLEDGED, ts, a.count,
            f"{a.message} (acknowledged by {by})", a.raised_at, by,
        )  # fmt: skip

    def adopt(self, t: AlertTransition, key: str) -> None:
        """Re-adopt an alert that was active before a restart (its latest transition)."""
        old = self._active.get((t.kind, key))
        if old is not None:
            self._by_id.pop(old.alert_id, None)
        message = t.message.split(" (acknowledged by ")[0]
        self._active[(t.kind, key)] = _Active(
            t.alert_id, t.bin_id, t.sku, t.state, t.raised_at, message, t.count
        )
        self._by_id[t.alert_id] = (t.kind, key)
        self._last_ms[t.kind] = max(self._last_ms.get(t.kind, 0), int(t.raised_at * 1000))

    def message(self, kind: AlertKind, key: str) -> str | None:
        """The raise message of an active alert."""
        a = self._active.get((kind, key))
        return None if a is None else a.message

    def raised_at(self, kind: AlertKind, key: str) -> float | None:
        """When an active alert was raised."""
        a = self._active.get((kind, key))
        return None if a is None else a.raised_at

    def active_count(self) -> int:
        """How many signal alerts are active."""
        return len(self._active)

    def active_kinds(self) -> list[tuple[AlertKind, str]]:
        """(kind, state) of every active signal alert (for /metrics)."""
        return [(kind, str(a.state)) for (kind, _key), a in self._active.items()]


def _key_of(t: AlertTransition) -> str | None:
    """The key of a persisted signal alert (see the module docstring); None if it cannot be told."""
    if t.kind is AlertKind.PREDICTED_OUT:
        return t.bin_id
    if t.kind is AlertKind.SHRINK_SUSPECTED:
        return t.sku
    return message_fields(t.message).get("epc")


Persist = Callable[[list[AlertTransition]], Awaitable[None]]


class StoreSignals:
    """The forecast, loss and shrink watchers of one gateway; see the module docstring."""

    def __init__(
        self,
        config: StoreConfig,
        store: GatewayStore,
        bins: Mapping[str, Bin],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        from edge.forecasting import ForecastService  # noqa: PLC0415 - they import this module
        from edge.loss import LossWatch  # noqa: PLC0415
        from edge.shrink import ShrinkWatch  # noqa: PLC0415

        self.store = store
        self.alerts = SignalAlerts()
        self._clock = clock
        self.forecast = ForecastService(config.forecast, config.opening_hours, bins, self.alerts)
        self.loss = LossWatch(config.loss, self.alerts)
        self.shrink = ShrinkWatch(config.shrink, bins, self.alerts)
        self._cfg = config
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_MAX)
        self.dropped = 0
        self.restored = 0
        self.sales_errors = 0
        self._sales_failing = False

    # --- inputs --------------------------------------------------------------------------------------------

    def restore(self, active: Iterable[AlertTransition]) -> list[AlertTransition]:
        """Adopt the signal alerts active before a restart; return the others (for `AlertRules.restore`)."""
        rest: list[AlertTransition] = []
        now = self._clock()
        for t in active:
            if t.kind not in SIGNAL_KINDS:
                rest.append(t)
                continue
            key = _key_of(t)
            if key is None:
                continue
            self.alerts.adopt(t, key)
            self.restored += 1
            if t.kind is AlertKind.PREDICTED_OUT:
                self.forecast.restored(t.bin_id, now)
            elif t.kind is AlertKind.LOSS_SUSPECTED:
                self.loss.restored(key, t.raised_at)
            else:
                self.shrink.restored(key, now)
        return rest

    def count_changed(self, counts: Sequence[CountChanged]) -> list[AlertTransition]:
        """Shelf counts changed (any source): feed the forecast and the shrink window; forecast transitions."""
        if not counts:
            return []
        for c in counts:
            self.forecast.observe(c)
            self.shrink.observe(c)
        return self.forecast.evaluate(max(c.ts for c in counts))

    def feed(self, item: Mapping[str, Any]) -> None:
        """A device item (`Broadcast` shape); RFID zone entries are queued for the task (sales lookup)."""
        if item.get("type") != "rfid" or item.get("event") != "enter":
            return
        try:
            self._queue.put_nowait({**item, "ts": self._clock()})
        except asyncio.QueueFull:
            self.dropped += 1

    def acknowledge(self, alert_id: str, by: str) -> AlertTransition | None:
        """Staff acknowledged a signal alert; None if it is not one (or not active)."""
        return self.alerts.acknowledge(alert_id, by, self._clock())

    # --- the task ------------------------------------------------------------------------------------------

    async def run(self, persist: Persist) -> None:
        """Handle RFID zone entries as they come; tick the forecast and the shrink window."""
        next_forecast = next_shrink = 0.0
        tick_s = min(self._cfg.forecast.tick_s, self._cfg.shrink.tick_s, 1.0)
        while True:
            item: dict[str, Any] | None = None
            try:
                async with asyncio.timeout(tick_s):
                    item = await self._queue.get()
            except TimeoutError:
                pass
            out: list[AlertTransition] = []
            if item is not None:
                out.extend(await self._rfid(item))
            now = self._clock()
            if now >= next_forecast:
                next_forecast = now + self._cfg.forecast.tick_s
                out.extend(self.forecast.evaluate(now))
                out.extend(self.loss.expire(now))
            if now >= next_shrink and self.shrink.enabled:
                next_shrink = now + self._cfg.shrink.tick_s
                sold = await self._sold(*self.shrink.sales_window(now))
                if sold is not None:  # sales unreadable: the next tick decides
                    out.extend(self.shrink.evaluate(now, sold))
            if out:
                await persist(out)

    async def _sold(self, since: float, until: float) -> dict[str, int] | None:
        """`units_sold` on the store thread; None (counted, logged once per episode) when SQLite fails."""
        try:
            sold = await self.store.transact(functools.partial(_units_sold, since=since, until=until))
        except sqlite3.Error as exc:
            self.sales_errors += 1
            if not self._sales_failing:
                self._sales_failing = True
                _log.warning("store signals: cannot read the sales (%s); loss/shrink decisions wait", exc)
            return None
        if self._sales_failing:
            self._sales_failing = False
            _log.info("store signals: sales readable again")
        return sold

    async def _rfid(self, item: Mapping[str, Any]) -> list[AlertTransition]:
        epc, zone, ts = str(item.get("epc", "")), str(item.get("zone", "")), float(item["ts"])
        if item.get("zone_kind") != "exit":
            t = self.loss.shelf_seen(epc, zone, ts)
            return [t] if t is not None else []
        gtin = item.get("gtin")
        if not isinstance(gtin, str) or not self.loss.enabled:
            self.loss.not_sgtin += gtin is None
            return []
        sold = await self._sold(*self.loss.sales_window(ts))
        if sold is None:
            self.loss.undecided += 1  # without the sales no decision either way (logged by _sold)
            return []
        t = self.loss.exit_seen(epc, gtin, zone, ts, sold.get(gtin, 0))
        return [t] if t is not None else []

    # --- views ---------------------------------------------------------------------------------------------

    def view(self) -> dict[str, Any]:
        """Forecast per bin, shrink numbers per SKU and loss counters (`GET /api/signals`)."""
        now = self._clock()
        return {
            "forecast": self.forecast.view(now),
            "shrink": self.shrink.view(),
            "loss": self.loss.view(),
            "active_alerts": self.alerts.active_count(),
            "dropped_rfid_items": self.dropped,
            "sales_errors": self.sales_errors,
        }


class _HasSignals(Protocol):
    signals: StoreSignals


def signals_router(gateway: _HasSignals) -> APIRouter:
    """`GET /api/signals`: the store signals' live view (`StoreSignals.view`)."""
    router = APIRouter()

    @router.get("/api/signals")
    async def signals() -> dict[str, Any]:
        return gateway.signals.view()

    return router


__all__ = [
    "SIGNAL_KINDS",
    "SignalAlerts",
    "StoreSignals",
    "gtin14",
    "message_fields",
    "signals_router",
    "units_sold",
]
