"""The gateway runtime: devices → inventory engine → alerts → SQLite → uplink, plus the local API.

One process root (STYLE.md rule 13): `shelfgate run` calls `asyncio.run(Gateway(config).run())`. Everything the
gateway starts lives in one TaskGroup with named tasks: `poller[{device}]` per transmitter, `gateway.ticker`,
`uplink`, `api`. If a critical task dies the group cancels the rest and the process exits non-zero, so
systemd's `Restart=on-failure` brings it back rather than it limping on.

The hot path (`_apply_sample`) is synchronous and allocation-light: most samples change nothing and cost one
estimator step per channel. Only when the engine reports an event does the runtime touch SQLite (one
transaction for everything the sample caused, on the store's own thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from cloud_bridge.contract import (
    AlertData,
    AlertKind,
    AlertState,
    Command,
    CommandResult,
    DeviceHealth,
    EventType,
    Heartbeat,
    StockChanged,
    rfc3339,
)
from cloud_bridge.uplink import UnknownCommandError, Uplink
from drivers.modbus.client import ModbusBus, TransmitterPoller
from drivers.modbus.models import Availability, RtuSettings, Sample, TcpSettings
from drivers.modbus.protocol import plan_poll
from edge import __version__
from edge.api import ApiServer, create_app
from edge.config import Bin, LoadedConfig, RtuBus
from edge.inventory import (
    AlertRules,
    AlertTransition,
    Ambiguous,
    BinEstimator,
    CountChanged,
    SensorFault,
)
from edge.store import PRIORITY_HIGH, PRIORITY_LEVEL, AlertRow, BinRow, GatewayStore, NewEvent

_log = logging.getLogger(__name__)

TICK_S = 0.5
"""How often alert dwell timers are evaluated when no sample arrives."""


class Broadcast:
    """Fan-out of alert changes to live subscribers (the SSE stream), each with a bounded queue.

    Overflow policy: a subscriber that does not keep up loses its oldest queued item (counted in `dropped`);
    the page re-reads `/api/alerts` on reconnect, so a dropped change costs freshness, not correctness.
    """

    def __init__(self, maxsize: int = 256) -> None:
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._maxsize = maxsize
        self.dropped = 0

    def publish(self, item: dict[str, Any]) -> None:
        """Deliver to every subscriber without blocking the caller."""
        for q in self._subscribers:
            if q.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
                    self.dropped += 1
            q.put_nowait(item)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        """A queue that receives every published item until the context exits."""
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self._maxsize)
        self._subscribers.add(q)
        try:
            yield q
        finally:
            self._subscribers.discard(q)

    @property
    def subscribers(self) -> int:
        """How many streams are listening."""
        return len(self._subscribers)


@dataclass
class DeviceState:
    """What the API and heartbeat report for one transmitter."""

    device_id: str
    bus_id: str
    unit_id: int
    poller: TransmitterPoller | None = None
    bins: list[str] = field(default_factory=list)


class Gateway:
    """A running store gateway. Construct with a validated config, then `await run()`."""

    def __init__(
        self,
        config: LoadedConfig,
        *,
        on_ready: Callable[[Gateway], None] | None = None,
    ) -> None:
        self.config = config
        self.store_cfg = config.store
        self.gateway_id = config.store.effective_gateway_id
        self.boot_id = uuid.uuid4().hex[:12]
        self.version = __version__
        self.started_mono = time.monotonic()
        self.store = GatewayStore(Path(config.store.data_dir) / "gateway.db")
        self.bins: dict[str, Bin] = {b.id: b for b in config.store.bins}
        self._by_device: dict[str, dict[int, tuple[str, BinEstimator]]] = {}
        """device → channel → (bin id, estimator); filled by _restore, read once per channel on the hot path."""
        self.estimators: dict[str, BinEstimator] = {}
        self.rules = AlertRules(config.store.bins, config.store.alerts)
        self.devices: dict[str, DeviceState] = {
            t.id: DeviceState(t.id, t.bus, t.unit_id) for t in config.store.transmitters
        }
        for b in config.store.bins:
            self.devices[b.device].bins.append(b.id)
        self.alerts_stream = Broadcast()
        self.uplink: Uplink | None = None
        self.api_port: int | None = None
        self._on_ready = on_ready
        self._write_lock = asyncio.Lock()
        self.samples = 0
        self._proc = psutil.Process(os.getpid())

    # --- startup -------------------------------------------------------------------------------------------

    async def _restore(self) -> None:
        """Rebuild estimators and active alerts from the database so a restart continues, not restarts."""
        saved = await self.store.load_bins()
        for bin_id, b in self.bins.items():
            row = saved.get(bin_id)
            self.estimators[bin_id] = BinEstimator(
                b,
                initial_count=row.count if row and not row.uncertain else None,
                initial_baseline_g=row.baseline_g if row else None,
            )
        self._by_device = {d: {} for d in self.devices}
        for bin_id, b in self.bins.items():
            self._by_device[b.device][b.channel] = (bin_id, self.estimators[bin_id])
        active = await self.store.alerts(active_only=True, limit=100_000)
        self.rules.restore([_transition_from_row(a) for a in active])
        _log.info(
            "gateway %s restored %d bins (%d with a count), %d active alerts, last seq %d",
            self.gateway_id,
            len(saved),
            sum(1 for r in saved.values() if r.count is not None),
            len(active),
            await self.store.last_seq(),
        )

    def _bus_settings(self) -> dict[str, RtuSettings | TcpSettings]:
        out: dict[str, RtuSettings | TcpSettings] = {}
        for bus in self.store_cfg.buses:
            if isinstance(bus, RtuBus):
                out[bus.id] = RtuSettings(
                    port=bus.port,
                    baudrate=bus.baudrate,
                    parity=bus.parity,
                    stopbits=bus.stopbits,
                    bytesize=bus.bytesize,
                    timeout_s=bus.timeout_s,
                    turnaround_s=bus.turnaround_s,
                )
            else:
                out[bus.id] = TcpSettings(host=bus.host, port=bus.port, timeout_s=bus.timeout_s)
        return out

    async def run(self, *, serve_api: bool = True, uplink: bool = True) -> None:
        """Run until cancelled (or until a critical task fails)."""
        async with self.store, AsyncExitStack() as stack:
            await self._restore()
            buses: dict[str, ModbusBus] = {}
            for bus_id, settings in self._bus_settings().items():
                buses[bus_id] = await stack.enter_async_context(ModbusBus(settings, bus_id))
            async with asyncio.TaskGroup() as tg:
                for tx in self.store_cfg.transmitters:
                    rmap = self.config.profiles[tx.profile]
                    channels = [self.bins[b].channel for b in self.devices[tx.id].bins]
                    poller = TransmitterPoller(
                        buses[tx.bus], tx.id, tx.unit_id, plan_poll(rmap, channels), tx.poll_interval_s
                    )
                    self.devices[tx.id].poller = poller
                    tg.create_task(self._consume(poller), name=f"poller[{tx.id}]")
                tg.create_task(self._ticker(), name="gateway.ticker")
                if uplink:
                    self.uplink = self._make_uplink()
                    tg.create_task(self.uplink.run(), name="uplink")
                if serve_api:
                    server = ApiServer(create_app(self), self.store_cfg.api.host, self.store_cfg.api.port)
                    tg.create_task(server.serve(), name="api")
                    self.api_port = await server.started()
                    _log.info("gateway API on http://%s:%d/", self.store_cfg.api.host, self.api_port)
                if self._on_ready is not None:
                    self._on_ready(self)

    def _make_uplink(self) -> Uplink:
        b = self.store_cfg.broker
        password = b.password_file.read_text(encoding="utf-8").strip() if b.password_file else None
        tls = None
        if b.ca_file is not None:
            tls = ssl.create_default_context(cafile=str(b.ca_file))
            if b.cert_file is not None:
                tls.load_cert_chain(str(b.cert_file), str(b.key_file) if b.key_file else None)
        return Uplink(
            store_id=self.store_cfg.store_id,
            gateway_id=self.gateway_id,
            boot_id=self.boot_id,
            version=self.version,
            config_version=self.config.version,
            outbox=self.store,
            host=b.host,
            port=b.port,
            keepalive_s=b.keepalive_s,
            tls=tls,
            username=b.username,
            password=password,
            batch_max_events=self.store_cfg.bridge.batch_max_events,
            publish_timeout_s=self.store_cfg.bridge.publish_timeout_s,
            heartbeat_s=self.store_cfg.bridge.heartbeat_s,
            heartbeat=self.heartbeat,
            on_command=self._on_command,
        )

    # --- the pipeline --------------------------------------------------------------------------------------

    async def _consume(self, poller: TransmitterPoller) -> None:
        async for item in poller.run():
            if isinstance(item, Sample):
                events, transitions, bins = self._apply_sample(item)
            else:
                events, transitions, bins = self._apply_availability(item)
            if events or transitions:
                await self._persist(events, transitions, bins)

    def _apply_sample(self, sample: Sample) -> tuple[list[CountChanged], list[AlertTransition], list[str]]:
        """Feed one transmitter cycle to the estimators; return what changed (usually nothing)."""
        self.samples += len(sample.readings)
        counts: list[CountChanged] = []
        transitions: list[AlertTransition] = []
        touched: list[str] = []
        channels = self._by_device.get(sample.device_id, {})
        ts = sample.ts
        for r in sample.readings:
            slot = channels.get(r.channel)
            if slot is None:
                continue
            bin_id, estimator = slot
            out = estimator.feed(r.value, ts, device_stable=r.stable, overload=r.overload, fault=r.fault)
            if not out:
                continue
            touched.append(bin_id)
            for ev in out:
                if isinstance(ev, CountChanged):
                    counts.append(ev)
                    transitions.extend(
                        self.rules.update_count(bin_id, ev.count, ev.ts, uncertain=ev.uncertain)
                    )
                elif isinstance(ev, Ambiguous):
                    transitions.extend(self.rules.ambiguous(bin_id, ev.ts, ev.reason))
                elif isinstance(ev, SensorFault):
                    transitions.extend(self.rules.sensor_fault(bin_id, ev.kind, ev.active, ev.ts, ev.detail))
        return counts, transitions, touched

    def _apply_availability(
        self, item: Availability
    ) -> tuple[list[CountChanged], list[AlertTransition], list[str]]:
        """A silent transmitter is a sensor fault on every bin it carries; its return clears them."""
        transitions: list[AlertTransition] = []
        state = self.devices.get(item.device_id)
        if state is None:
            return [], [], []
        for bin_id in state.bins:
            transitions.extend(
                self.rules.sensor_fault(bin_id, "silent", not item.online, item.ts, item.reason)
            )
        return [], transitions, []

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            transitions = self.rules.tick(time.time())
            if transitions:
                await self._persist([], transitions, [])

    async def _persist(
        self, counts: Sequence[CountChanged], transitions: Sequence[AlertTransition], touched: Sequence[str]
    ) -> None:
        """One transaction for everything a sample caused, then tell live subscribers."""
        events: list[NewEvent] = []
        for c in counts:
            b = self.bins[c.bin_id]
            data = StockChanged(
                bin_id=c.bin_id,
                sku=b.sku,
                count=c.count,
                delta=c.delta,
                cause=c.cause,
                weight_g=round(c.weight_g, 1),
                safety_stock=b.safety_stock,
                max_stock=b.max_stock,
            )
            events.append(
                NewEvent(EventType.STOCK_CHANGED, rfc3339(c.ts), data.model_dump(mode="json"), PRIORITY_LEVEL)
            )
        alert_rows: list[AlertRow] = []
        for t in transitions:
            events.append(
                NewEvent(
                    _EVENT_FOR_STATE[t.state],
                    rfc3339(t.ts),
                    _alert_data(t).model_dump(mode="json"),
                    PRIORITY_HIGH,
                )
            )
            alert_rows.append(_alert_row(t))
        bin_rows = []
        for bin_id in dict.fromkeys([*touched, *(c.bin_id for c in counts)]):
            est = self.estimators[bin_id]
            snap = est.snapshot()
            bin_rows.append(
                BinRow(
                    bin_id=bin_id,
                    sku=self.bins[bin_id].sku,
                    count=est.count,
                    weight_g=est.weight_g,
                    baseline_g=snap.get("baseline_g"),
                    uncertain=est.uncertain,
                    updated_ts=time.time(),
                )
            )
        async with self._write_lock:
            await self.store.record(events, bin_rows, alert_rows)
        for row in alert_rows:
            self.alerts_stream.publish({"type": "alert", "alert": self.alert_view(row)})
        for c in counts:
            self.alerts_stream.publish({"type": "stock", "bin": self.bin_view(c.bin_id)})

    # --- operations the API calls ------------------------------------------------------------------------

    @property
    def uptime_s(self) -> float:
        """Seconds since this gateway object was created."""
        return round(time.monotonic() - self.started_mono, 1)

    async def acknowledge(self, alert_id: str, by: str) -> AlertRow | None:
        """Staff acknowledged an alert: record who and when; None when the alert is unknown."""
        transition = self.rules.acknowledge(alert_id, by, time.time())
        if transition is None:
            return await self.store.alert(alert_id)
        await self._persist([], [transition], [])
        return await self.store.alert(alert_id)

    def bin_view(self, bin_id: str) -> dict[str, Any]:
        """A bin's live state for the API and the board."""
        b = self.bins[bin_id]
        est = self.estimators.get(bin_id)
        count = est.count if est else None
        level = stock_level(b, count)
        return {
            "bin_id": b.id,
            "sku": b.sku,
            "name": {"zh": b.name.zh, "en": b.name.en},
            "location": b.location,
            "count": count,
            "weight_g": round(est.weight_g, 1) if est else None,
            "stable": est.stable if est else False,
            "uncertain": est.uncertain if est else False,
            "level": level,
            "safety_stock": b.safety_stock,
            "max_stock": b.max_stock,
            "unit_weight_g": b.unit_weight_g,
            "device": b.device,
            "channel": b.channel,
            "last_sample_ts": est.last_sample_ts if est else None,
        }

    def alert_view(self, row: AlertRow) -> dict[str, Any]:
        """An alert row with the bin's names, for the API and the board."""
        out = row.as_dict()
        b = self.bins.get(row.bin_id)
        out["name"] = {"zh": b.name.zh, "en": b.name.en} if b else None
        out["location"] = b.location if b else ""
        return out

    def device_views(self) -> list[dict[str, Any]]:
        """Per-transmitter health for the API."""
        out = []
        now = time.monotonic()
        for d in self.devices.values():
            counters: dict[str, Any] = d.poller.counters.snapshot() if d.poller else {}
            last_seen = d.poller.counters.last_seen_mono if d.poller else None
            out.append(
                {
                    "device_id": d.device_id,
                    "bus": d.bus_id,
                    "unit_id": d.unit_id,
                    "online": bool(d.poller and d.poller.counters.online),
                    "last_seen_age_s": None if last_seen is None else round(now - last_seen, 3),
                    "bins": list(d.bins),
                    "counters": counters,
                }
            )
        return out

    async def heartbeat(self) -> Heartbeat:
        """The `health` payload: process, disk, outbox and devices."""
        depth, oldest = await self.store.depth()
        devices = [
            DeviceHealth(
                device_id=d["device_id"],
                online=d["online"],
                last_seen_age_s=d["last_seen_age_s"],
                polls=int(d["counters"].get("polls", 0)),
                errors=int(d["counters"].get("errors", 0)),
                last_error=d["counters"].get("last_error"),
            )
            for d in self.device_views()
        ]
        return Heartbeat(
            gateway_id=self.gateway_id,
            boot_id=self.boot_id,
            ts=rfc3339(time.time()),
            uptime_s=self.uptime_s,
            cpu_pct=self._proc.cpu_percent(None),
            mem_rss_mb=round(self._proc.memory_info().rss / 1e6, 1),
            disk_free_mb=round(shutil.disk_usage(self.store.path.parent).free / 1e6, 1),
            temperature_c=_soc_temperature_c(),
            outbox_depth=depth,
            outbox_oldest_age_s=None if oldest is None else round(oldest, 1),
            last_seq=await self.store.last_seq(),
            devices=devices,
            active_alerts=len(self.rules.active()),
        )

    async def _on_command(self, name: str, command: Command) -> CommandResult:
        """Commands from the hub. None are gateway-specific yet; the uplink answers `ping` itself."""
        raise UnknownCommandError(name)


def stock_level(b: Bin, count: int | None) -> str:
    """The board's colour for a count: out / low (below safety stock) / over (above max) / ok / unknown.

    The alert rules decide alerts (with dwell and hysteresis); this is only the instantaneous level.
    """
    if count is None:
        return "unknown"
    if count == 0:
        return "out"
    if count < b.safety_stock:
        return "low"
    if count > b.max_stock:
        return "over"
    return "ok"


_EVENT_FOR_STATE = {
    AlertState.RAISED: EventType.ALERT_RAISED,
    AlertState.ACKNOWLEDGED: EventType.ALERT_ACKNOWLEDGED,
    AlertState.RESOLVED: EventType.ALERT_RESOLVED,
}


def _alert_data(t: AlertTransition) -> AlertData:
    return AlertData(
        alert_id=t.alert_id,
        bin_id=t.bin_id,
        sku=t.sku,
        kind=t.kind,
        state=t.state,
        count=t.count,
        message=t.message,
        raised_at=rfc3339(t.raised_at),
        by=t.by,
    )


def _alert_row(t: AlertTransition) -> AlertRow:
    ts = rfc3339(t.ts)
    return AlertRow(
        alert_id=t.alert_id,
        bin_id=t.bin_id,
        sku=t.sku,
        kind=str(t.kind),
        state=str(t.state),
        count=t.count,
        message=t.message,
        raised_at=rfc3339(t.raised_at),
        updated_at=ts,
        acknowledged_by=t.by if t.state is AlertState.ACKNOWLEDGED else None,
        acknowledged_at=ts if t.state is AlertState.ACKNOWLEDGED else None,
        resolved_at=ts if t.state is AlertState.RESOLVED else None,
    )


def _transition_from_row(row: AlertRow) -> AlertTransition:
    raised = datetime.fromisoformat(row.raised_at.replace("Z", "+00:00")).timestamp()
    updated = datetime.fromisoformat(row.updated_at.replace("Z", "+00:00")).timestamp()
    return AlertTransition(
        alert_id=row.alert_id,
        bin_id=row.bin_id,
        sku=row.sku,
        kind=AlertKind(row.kind),
        state=AlertState(row.state),
        ts=updated,
        count=row.count,
        message=row.message,
        raised_at=raised,
        by=row.acknowledged_by,
    )


def _soc_temperature_c() -> float | None:
    """The SoC temperature on a Raspberry Pi (thermal_zone0, millidegrees); None where there is none."""
    try:
        raw = Path("/sys/class/thermal/thermal_zone0/temp").read_text(encoding="ascii")
    except OSError:
        return None
    try:
        return round(int(raw.strip()) / 1000.0, 1)
    except ValueError:
        return None
