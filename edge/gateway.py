"""The gateway runtime: devices → inventory engine → alerts → SQLite → uplink, plus the local API.

One process root (STYLE.md rule 13): `shelfgate run` runs `Gateway(config).run()` under the remote-config
runner (edge/remote_config.py: a pushed config restarts it in-process). Everything the gateway starts lives in
one TaskGroup with named tasks: `lanes` (checkout lanes, when the store has any), `stock.scans` (stocktake and
receiving), `devices[{family}]` per configured device family (each a coordinator from `edge/devices/` with its
own tasks: `poller[{id}]`, `scale[{id}].loop`, `scanner[{id}].loop`, `rfid[{id}].loop` + `rfid.presence`,
`ble.scanner`), `gateway.ticker`, `signals` (forecast, loss, shrink: edge/signals.py), `uplink`, `api`.
A device's failure stays with that device (drivers count and retry; coordinators supervise); if a critical task dies the group
cancels the rest and the process exits non-zero, so systemd's `Restart=on-failure` brings it back rather than
it limping on.

Weighing devices — Modbus transmitter channels and BLE shelf sensors — feed the same engine path
(`_apply_sample` → `_persist`); the other families report to the API and the live stream. A family's
coordinator module (and its driver's libraries: bleak, biip, pyserial) is imported only when the store has a
device of that family.

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
import sqlite3
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import psutil

from cloud_bridge.config_push import CONFIG_COMMAND
from cloud_bridge.contract import (
    AlertData,
    AlertKind,
    AlertState,
    Command,
    CommandResult,
    Commissioning,
    EventType,
    FacingChanged,
    Heartbeat,
    StockChanged,
    rfc3339,
)
from cloud_bridge.resend import RESEND_COMMAND
from cloud_bridge.systemd import Liveness, SdNotifier, Watchdog
from cloud_bridge.uplink import UnknownCommandError, Uplink
from drivers.modbus.models import Sample
from drivers.modbus.protocol import ChannelReading
from edge import __version__
from edge.api import ApiServer, create_app
from edge.audit import audit_command
from edge.commands import handle_resend
from edge.config import Bin, LoadedConfig
from edge.devices.base import Coordinator, DeviceHealthView
from edge.devices.modbus import ModbusCoordinator
from edge.inventory import (
    AlertRules,
    AlertTransition,
    Ambiguous,
    BinEstimator,
    CountChanged,
    SensorFault,
)
from edge.outbox_quota import OutboxQuota
from edge.remote_config import RemoteConfig, handle_config
from edge.signals import StoreSignals
from edge.stocktakes import StockDesk
from edge.store import PRIORITY_HIGH, PRIORITY_LEVEL, AlertRow, BinRow, GatewayStore, NewEvent

if TYPE_CHECKING:
    from bleak.backends.scanner import BaseBleakScanner

    from drivers.camera import FrameSource
    from edge.devices.ble import BleCoordinator
    from edge.devices.cameras import CameraCoordinator
    from edge.devices.rfid import RfidCoordinator
    from edge.devices.scales import ScaleCoordinator
    from edge.devices.scanners import ScannerCoordinator
    from edge.inventory.fusion import CameraFusion
    from edge.lanes import LaneService
    from edge.vision import FacingBefore, FacingBoard, FacingReading, FacingStateChanged
    from edge.vision.board import NotSure

_log = logging.getLogger(__name__)

TICK_S = 0.5
TICKER_MAX_AGE_S = 20.0
"""The ticker beats every TICK_S; silence this long means it is wedged (well inside `WatchdogSec=30`)."""
"""How often alert dwell timers are evaluated when no sample arrives."""


class EngineClock:
    """The clock the inventory engine runs on: wall-clock seconds at start, advanced by `time.monotonic()`.

    The estimators' windows and the alert rules' dwell and hysteresis subtract timestamps. Fed `time.time()`,
    a backward step of the wall clock (NTP correcting a bad RTC at boot, `chronyd -s`/`makestep`) made every
    new sample look older than the last one and counting stalled until wall time caught up
    (docs/reliability.md, bugs found, item 2). CLOCK_MONOTONIC never steps (clock_gettime(2)), so engine
    time never goes backwards; events still carry honest wall time: `to_wall` converts at the moment an
    event is stamped, so a step shows up in the stamps (as it happened) and never in the engine's arithmetic.
    """

    def __init__(self) -> None:
        self._origin_s = time.time() - time.monotonic()
        """Engine time minus monotonic time, fixed for the life of the gateway."""

    def now(self) -> float:
        """Engine time now."""
        return self._origin_s + time.monotonic()

    def from_mono(self, mono_s: float) -> float:
        """Engine time of a `time.monotonic()` reading (a sample's `mono`)."""
        return self._origin_s + mono_s

    def offset_s(self) -> float:
        """Wall time minus engine time now: 0 until the wall clock steps (or drifts) after the start."""
        return time.time() - self.now()

    def to_wall(self, engine_ts: float) -> float:
        """Wall-clock seconds of an engine time, by the wall clock as it reads now."""
        return engine_ts + self.offset_s()

    def from_wall(self, wall_ts: float) -> float:
        """Engine time of a wall-clock stamp taken recently (an availability change, a camera frame)."""
        return wall_ts - self.offset_s()

    def transition_from_wall(self, t: AlertTransition) -> AlertTransition:
        """An alert read back from the database (wall time), re-dated in engine time for the rules."""
        offset_s = self.offset_s()
        return replace(t, ts=t.ts - offset_s, raised_at=t.raised_at - offset_s)


class _EngineTimeBoard:
    """The camera board as `CameraFusion` sees it: the fusion runs on engine time (its windows are compared
    with the estimators' event times), the board keeps frames by wall time; queries are converted here."""

    def __init__(self, board: FacingBoard, clock: EngineClock) -> None:
        self._board = board
        self._clock = clock

    def before(self, bin_id: str, ts: float, *, since_ts: float = float("-inf")) -> list[FacingBefore]:
        """`FacingBoard.before` with engine times."""
        return self._board.before(bin_id, self._clock.to_wall(ts), since_ts=self._clock.to_wall(since_ts))

    def readings(
        self, bin_id: str, *, after_ts: float, frames: int
    ) -> tuple[list[FacingReading], NotSure | None]:
        """`FacingBoard.readings` with engine times."""
        return self._board.readings(bin_id, after_ts=self._clock.to_wall(after_ts), frames=frames)


DEFAULT_SETTLE_WINDOW_S = 0.5
"""Estimator stability window for transmitter channels (10-80 samples/s, DOMAIN.md)."""


class Broadcast:
    """Fan-out of live changes to subscribers (the SSE stream), each with a bounded queue.

    Items are `{"type": …}` dicts: `alert` and `stock` from the engine; `scan`, `scale`, `rfid` and `device`
    from the device coordinators. Overflow policy: a subscriber that does not keep up loses its oldest queued
    item (counted in `dropped`); a page re-reads the matching `/api/…` view on reconnect, so a dropped change
    costs freshness, not correctness.
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


class Gateway:
    """A running store gateway. Construct with a validated config, then `await run()`."""

    def __init__(
        self,
        config: LoadedConfig,
        *,
        on_ready: Callable[[Gateway], None] | None = None,
        ble_backend: type[BaseBleakScanner] | None = None,
        camera_sources: Mapping[str, FrameSource] | None = None,
    ) -> None:
        """`ble_backend` replaces the BlueZ scanner backend (the driver's seam): only the demo and tests pass
        one (a fake bleak backend hearing simulated sensors); `shelfgate run` never does. `camera_sources`
        (camera id → frame source) is the cameras' seam, likewise only for the demo and tests (the synthetic
        shelf camera of `firmware_sims`)."""
        self.config = config
        self.store_cfg = s = config.store
        self.gateway_id = s.effective_gateway_id
        self.boot_id = uuid.uuid4().hex[:12]
        self.version = __version__
        self.started_mono = time.monotonic()
        self.clock = EngineClock()
        """Engine time for the estimators, the alert rules and the fusion; wall time only on events."""
        self._raised_wall: dict[str, float] = {}
        """Active alert id → its wall-clock `raised_at` as first written: a later step must not re-date it."""
        self.store = GatewayStore(
            Path(s.data_dir) / "gateway.db",
            retention_max_events=s.bridge.resend_retention_events,
            retention_max_age_s=s.bridge.resend_retention_days * 86400,
            quota=OutboxQuota.from_mb(s.bridge.outbox_quota_critical_mb, s.bridge.outbox_quota_levels_mb),
        )
        # systemd (Type=notify): READY=1 when serving, WATCHDOG=1 only while the ticker beats and the database
        # thread answers (cloud_bridge/systemd.py). Both are no-ops when not started by systemd.
        self.notifier = SdNotifier()
        self.liveness = Liveness()
        self.watchdog: Watchdog | None = None
        self.remote_config: RemoteConfig | None = None
        """Set by the `shelfgate run` runner (edge/remote_config.py); None: `cmd/config` is refused."""
        self.bins: dict[str, Bin] = {b.id: b for b in s.bins}
        weighing = [t.id for t in s.transmitters] + [b.id for b in s.ble_sensors]
        self.bins_by_device: dict[str, list[str]] = {device_id: [] for device_id in weighing}
        for b in s.bins:
            if b.device is not None:  # None: a camera-only bin (no estimator; the camera drives its alerts)
                self.bins_by_device[b.device].append(b.id)
        self._settle_window_s: dict[str, float] = {d.id: d.settle_window_s for d in s.ble_sensors}
        """Estimator stability window per BLE sensor: its adverts are seconds apart, not 10-80 samples/s."""
        self._by_device: dict[str, dict[int, tuple[str, BinEstimator]]] = {}
        """device → channel → (bin id, estimator); filled by _restore, read once per channel on the hot path."""
        self.estimators: dict[str, BinEstimator] = {}
        self.rules = AlertRules(s.bins, s.alerts)
        self.alerts_stream = Broadcast()
        self.uplink: Uplink | None = None
        self.api_port: int | None = None
        self._on_ready = on_ready
        self._write_lock = asyncio.Lock()
        self.storage_alarm: str | None = None
        """Set while a write waits for disk space (`_record_until_written`); see `outbox_alarm`."""
        self.samples = 0
        self.raw_taps: set[Callable[[Sample], None]] = set()
        """Listeners to every weighing sample before the engine (the calibration wizard); empty = no cost."""
        self._proc = psutil.Process(os.getpid())
        self.lanes: LaneService | None = None
        publish = self._publish_device
        self.modbus: ModbusCoordinator | None = None
        self.scales: ScaleCoordinator | None = None
        self.scanners: ScannerCoordinator | None = None
        self.rfid: RfidCoordinator | None = None
        self.ble: BleCoordinator | None = None
        self.cameras: CameraCoordinator | None = None
        self.fusion: CameraFusion | None = None
        """Weighed bins with a camera: ambiguous changes settled, misplaced goods flagged (docs/cameras.md)."""
        if s.transmitters:
            self.modbus = ModbusCoordinator(config, self.bins_by_device, self._on_sample, self)
        if s.scales:
            from edge.devices.scales import ScaleCoordinator  # noqa: PLC0415 - lazy: see the module docstring

            self.scales = ScaleCoordinator(s.scales, publish)
        if s.scanners:
            from edge.devices.scanners import ScannerCoordinator  # noqa: PLC0415 - lazy: see the module docstring

            self.scanners = ScannerCoordinator(s.scanners, s.barcodes, publish)
        if s.rfid_readers:
            from edge.devices.rfid import RfidCoordinator  # noqa: PLC0415 - lazy: see the module docstring

            self.rfid = RfidCoordinator(s.rfid_readers, s.rfid_presence, publish)
        if s.ble_sensors:
            from edge.devices.ble import BleCoordinator  # noqa: PLC0415 - lazy: see the module docstring

            self.ble = BleCoordinator(s.ble, s.ble_sensors, self, publish, backend=ble_backend)
        if s.cameras:
            from edge.devices.cameras import CameraCoordinator  # noqa: PLC0415 - lazy: OpenCV only when needed
            from edge.inventory.fusion import CameraFusion  # noqa: PLC0415 - lazy: OpenCV only when needed

            self.cameras = CameraCoordinator(
                s.cameras,
                self.bins,
                self,
                publish,
                sources=camera_sources,
                reference_dir=Path(s.data_dir) / "camera-references",
            )
            # The fusion makes two board calls, both with engine times: `_EngineTimeBoard` converts them.
            board = cast("FacingBoard", _EngineTimeBoard(self.cameras.board, self.clock))
            self.fusion = CameraFusion(self.bins, self.cameras.configs, board)
        if any(sc.lane for sc in s.scanners) or any(sc.lane for sc in s.scales):
            from edge.lanes import lane_service_for  # noqa: PLC0415 - lazy: see the module docstring

            self.lanes = lane_service_for(config, self.store, self.scales, self.alerts_stream.publish)
        # Stocktake (盘点) and receiving: the phone page works without scanners; handheld/receiving scans feed it.
        self.stock = StockDesk(
            self.store,
            self.bins,
            config.catalogue,
            s.scanners,
            publish=self.alerts_stream.publish,
            boot_id=self.boot_id,
        )
        # Store signals (issue #6 parts 5-7): predicted_out, loss_suspected, shrink_suspected (edge/signals.py).
        self.signals = StoreSignals(s, self.store, self.bins)

    def _publish_device(self, item: dict[str, Any]) -> None:
        """A device coordinator's live item: to the checkout lanes (lane scans, lane-scale weights), then the
        stream. Synchronous: the lanes only queue it (`LaneService.feed`)."""
        if self.lanes is not None:
            self.lanes.feed(item)
        self.stock.feed(item)
        self.signals.feed(item)
        self.alerts_stream.publish(item)

    @property
    def coordinators(self) -> list[Coordinator]:
        """The device families this store has, in a fixed order."""
        found: list[Coordinator | None] = [
            self.modbus, self.scales, self.scanners, self.rfid, self.ble, self.cameras
        ]  # fmt: skip
        return [c for c in found if c is not None]

    # --- startup -------------------------------------------------------------------------------------------

    async def _restore(self) -> None:
        """Rebuild estimators and active alerts from the database so a restart continues, not restarts."""
        saved = await self.store.load_bins()
        for bin_id, b in self.bins.items():
            if b.device is None:
                continue  # camera-only: no weight, no estimator
            row = saved.get(bin_id)
            self.estimators[bin_id] = BinEstimator(
                b,
                settle_window_s=self._settle_window_s.get(b.device, DEFAULT_SETTLE_WINDOW_S),
                initial_count=row.count if row and not row.uncertain else None,
                initial_baseline_g=row.baseline_g if row else None,
                initial_noise_g=row.noise_g if row else None,
            )
        self._by_device = {d: {} for d in self.bins_by_device}
        for bin_id, b in self.bins.items():
            if b.device is not None:
                self._by_device[b.device][b.channel] = (bin_id, self.estimators[bin_id])
        active = await self.store.alerts(active_only=True, limit=100_000)
        # Signal alerts stay on wall time (edge/signals.py compares them with the lanes' wall-clock sales);
        # the rules get the rest in engine time.
        others = self.signals.restore([_transition_from_row(a) for a in active])
        self._raised_wall = {t.alert_id: t.raised_at for t in others}
        self.rules.restore([self.clock.transition_from_wall(t) for t in others])
        _log.info(
            "gateway %s restored %d bins (%d with a count), %d active alerts, last seq %d",
            self.gateway_id,
            len(saved),
            sum(1 for r in saved.values() if r.count is not None),
            len(active),
            await self.store.last_seq(),
        )

    async def run(self, *, serve_api: bool = True, uplink: bool = True) -> None:
        """Run until cancelled (or until a critical task fails)."""
        async with self.store:
            await self._restore()
            try:
                await self._run_tasks(serve_api=serve_api, uplink=uplink)
            finally:
                self.notifier.stopping()

    async def _run_tasks(self, *, serve_api: bool, uplink: bool) -> None:
        async with asyncio.TaskGroup() as tg:
            if self.lanes is not None:  # rebuilt from their journals before any device can feed them
                await self.lanes.start()
                tg.create_task(self.lanes.run(), name="lanes")
            # Stocktake/receiving journals are replayed before a scan or a page reaches them.
            await self.stock.start()
            tg.create_task(self.stock.run(), name="stock.scans")
            for coordinator in self.coordinators:
                tg.create_task(coordinator.run(), name=f"devices[{coordinator.family}]")
            self.liveness.expect("gateway.ticker", TICKER_MAX_AGE_S)
            tg.create_task(self._ticker(), name="gateway.ticker")
            tg.create_task(self.signals.run(lambda ts: self._persist([], [], [], wall=ts)), name="signals")
            if uplink:
                self.uplink = self._make_uplink()
                tg.create_task(self.uplink.run(), name="uplink")
            if serve_api:
                server = ApiServer(create_app(self), self.store_cfg.api.host, self.store_cfg.api.port)
                tg.create_task(server.serve(), name="api")
                self.api_port = await server.started()
                _log.info("gateway API on http://%s:%d/", self.store_cfg.api.host, self.api_port)
            self.watchdog = Watchdog(self.notifier, self.liveness, probes={"database": self.store.last_seq})
            tg.create_task(self.watchdog.run(), name="gateway.watchdog")
            self.notifier.ready(f"{len(self.bins)} bins, {len(self.coordinators)} device families")
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
            on_command=self._audited_command,
        )

    # --- the pipeline --------------------------------------------------------------------------------------

    async def _on_sample(self, sample: Sample) -> None:
        """One transmitter cycle (or one BLE advert's masses) through the engine; SQLite only if it changed."""
        if self.raw_taps:
            for tap in tuple(self.raw_taps):
                tap(sample)
        events, transitions, bins = self._apply_sample(sample)
        if events or transitions:
            await self._persist(events, transitions, bins)

    async def weigh(self, device_id: str, ts: float, mono: float, readings: Sequence[ChannelReading]) -> None:
        """`WeightSink`: readings of a weighing device other than a transmitter (a BLE shelf sensor)."""
        await self._on_sample(Sample(device_id, ts, mono, tuple(readings)))

    async def availability(self, device_id: str, online: bool, reason: str, ts: float) -> None:
        """`WeightSink`: a weighing device went silent or came back."""
        transitions = self._apply_availability(device_id, online, reason, self.clock.from_wall(ts))
        if transitions:
            await self._persist([], transitions, [])

    def _apply_sample(self, sample: Sample) -> tuple[list[CountChanged], list[AlertTransition], list[str]]:
        """Feed one transmitter cycle to the estimators; return what changed (usually nothing)."""
        self.samples += len(sample.readings)
        counts: list[CountChanged] = []
        transitions: list[AlertTransition] = []
        touched: list[str] = []
        channels = self._by_device.get(sample.device_id, {})
        ts = self.clock.from_mono(sample.mono)  # not sample.ts: a wall-clock step must not reach the windows
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
                    if self.fusion is not None:
                        transitions.extend(self.fusion.count_changed(bin_id, estimator, self.rules, ev.ts))
                elif isinstance(ev, Ambiguous):
                    transitions.extend(
                        self.rules.ambiguous(bin_id, ev.ts, self._with_facing_hint(bin_id, ev))
                    )
                    if self.fusion is not None:
                        self.fusion.ambiguous(ev)
                elif isinstance(ev, SensorFault):
                    transitions.extend(self.rules.sensor_fault(bin_id, ev.kind, ev.active, ev.ts, ev.detail))
        return counts, transitions, touched

    def _with_facing_hint(self, bin_id: str, ev: Ambiguous) -> str:
        """An ambiguous weight change's detail, plus what a camera watching the bin sees (if one can tell).

        Recorded, not acted on: the hint goes into the ambiguous alert's message for staff; the count is not
        resolved from it. The tracker needs a few agreeing frames, so right after the change the hint may
        still show the shelf before it (docs/cameras.md).
        """
        if self.cameras is None:
            return ev.reason
        hint = self.cameras.board.facing_hint(bin_id)
        return ev.reason if hint is None else f"{ev.reason}; camera sees the facing {hint}"

    async def facing_changed(self, event: FacingStateChanged) -> None:
        """`FacingSink`: a camera's facing state changed → `facing.changed` in the outbox; for a camera-only
        bin, its `out`/`low` alerts from the combined state of the bin's facings (`FacingBoard.facing_hint`)."""
        data = FacingChanged(
            camera_id=event.camera_id,
            roi_id=event.roi_id,
            sku=event.sku,
            bin_id=event.bin_id,
            state=event.state,
            score=None if event.score is None else round(min(max(event.score, 0.0), 1.0), 4),
            reason=event.reason,
        )
        new = NewEvent(
            EventType.FACING_CHANGED, rfc3339(event.ts), data.model_dump(mode="json"), PRIORITY_LEVEL
        )
        transitions: list[AlertTransition] = []
        b = self.bins.get(event.bin_id) if event.bin_id is not None else None
        if b is not None and b.device is None and self.cameras is not None:
            state = self.cameras.board.facing_hint(b.id) or "unknown"
            transitions = self.rules.facing(b.id, state, self.clock.from_wall(event.ts))
        await self._persist([], transitions, [], extra=[new])

    async def commissioning_written(self, record: Commissioning) -> None:
        """The installer wrote the commissioning record → a `commissioning` event in the outbox, through the
        same transaction path as every other event, so it reaches the hub at least once (and a `cmd/resend`
        can replay it). Low priority (`PRIORITY_LEVEL`): a snapshot the next one supersedes, never worth
        more than a sale or an alert."""
        new = NewEvent(
            EventType.COMMISSIONING, record.generated_at, record.model_dump(mode="json"), PRIORITY_LEVEL
        )
        await self._persist([], [], [], extra=[new])

    def _apply_availability(
        self, device_id: str, online: bool, reason: str, ts: float
    ) -> list[AlertTransition]:
        """A silent weighing device is a sensor fault on every bin it carries; its return clears them."""
        transitions: list[AlertTransition] = []
        for bin_id in self.bins_by_device.get(device_id, ()):
            transitions.extend(self.rules.sensor_fault(bin_id, "silent", not online, ts, reason))
        return transitions

    async def _ticker(self) -> None:
        while True:
            self.liveness.beat("gateway.ticker")
            await asyncio.sleep(TICK_S)
            transitions = self.rules.tick(self.clock.now())
            if transitions:
                await self._persist([], transitions, [])
            if self.fusion is not None and self.fusion.pending:
                fused = self.fusion.check(self.clock.now(), self.estimators, self.rules)
                if fused.counts or fused.transitions:
                    await self._persist(fused.counts, fused.transitions, fused.touched)

    async def _persist(
        self,
        counts: Sequence[CountChanged],
        transitions: Sequence[AlertTransition],
        touched: Sequence[str],
        *,
        extra: Sequence[NewEvent] = (),
        wall: Sequence[AlertTransition] = (),
    ) -> None:
        """One transaction for everything a sample caused, then tell live subscribers.

        `counts` and `transitions` come from the engine (engine time, `EngineClock`): they are re-dated in
        wall time here, when they are stamped. `wall` are transitions already in wall time (the signals').
        """
        events: list[NewEvent] = list(extra)
        offset_s = self.clock.offset_s()
        counts = [replace(c, ts=c.ts + offset_s) for c in counts]
        transitions = [*(self._wall_transition(t, offset_s) for t in transitions), *wall]
        if counts:  # every count change, whatever its source, feeds the forecast and the shrink window
            transitions = [*transitions, *self.signals.count_changed(counts)]
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
                    noise_g=est.noise_g,
                )
            )
        async with self._write_lock:
            await self._record_until_written(events, bin_rows, alert_rows)
        for row in alert_rows:
            self.alerts_stream.publish({"type": "alert", "alert": self.alert_view(row)})
        for c in counts:
            self.alerts_stream.publish({"type": "stock", "bin": self.bin_view(c.bin_id)})

    def _wall_transition(self, t: AlertTransition, offset_s: float) -> AlertTransition:
        """An alert transition of the rules (engine time) re-dated in wall time for the outbox and the alerts
        table; `raised_at` stays as first written for the alert's life, whatever the wall clock did since."""
        raised_wall = self._raised_wall.get(t.alert_id, t.raised_at + offset_s)
        if t.state is AlertState.RESOLVED:
            self._raised_wall.pop(t.alert_id, None)
        else:
            self._raised_wall[t.alert_id] = raised_wall
        return replace(t, ts=t.ts + offset_s, raised_at=raised_wall)

    @property
    def outbox_alarm(self) -> str | None:
        """What the heartbeat and /api/health report as `outbox_alarm`: a write held for disk space, else a hit
        outbox quota (edge/outbox_quota.py), else None."""
        return self.storage_alarm or self.store.outbox_alarm

    async def _record_until_written(
        self, events: list[NewEvent], bin_rows: list[BinRow], alert_rows: list[AlertRow]
    ) -> None:
        """`store.record`, retried while the disk is full (SQLITE_FULL) instead of ending the gateway.

        The engine has already moved to the new counts, so these events must be written, not dropped: the
        writer waits here (the caller's device loop with it — its next samples then carry the latest level)
        and retries with backoff until space returns. Meanwhile `storage_alarm` says so in /api/health and in
        the heartbeat (which is not stored), logged once. Any other database error propagates as before.
        """
        delay_s = 0.5
        while True:
            try:
                await self.store.record(events, bin_rows, alert_rows)
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_FULL:
                    raise
                if self.storage_alarm is None:
                    _log.error(
                        "gateway %s: the disk holding %s is full (%s); %d event(s) held in memory, retrying",
                        self.gateway_id,
                        self.store.path,
                        exc,
                        len(events),
                    )
                self.storage_alarm = f"disk full at {self.store.path.parent}: events held, retrying"
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 10.0)
                continue
            if self.storage_alarm is not None:
                _log.warning("gateway %s: disk space is back; held events written", self.gateway_id)
                self.storage_alarm = None
            return

    # --- operations the API calls ------------------------------------------------------------------------

    @property
    def uptime_s(self) -> float:
        """Seconds since this gateway object was created."""
        return round(time.monotonic() - self.started_mono, 1)

    async def acknowledge(self, alert_id: str, by: str) -> AlertRow | None:
        """Staff acknowledged an alert: record who and when; None when the alert is unknown."""
        transition = self.rules.acknowledge(alert_id, by, self.clock.now())
        if transition is not None:
            await self._persist([], [transition], [])
            return await self.store.alert(alert_id)
        signal = self.signals.acknowledge(alert_id, by)  # wall time, like every signal alert
        if signal is None:
            return await self.store.alert(alert_id)
        await self._persist([], [], [], wall=[signal])
        return await self.store.alert(alert_id)

    async def apply_bin(self, b: Bin) -> None:
        """Run a bin with a new calibration or binding now, without a restart (the installer API calls it).

        When what the estimator weighs with changes (calibration, unit weight, tare, channel) the bin gets a
        fresh estimator with no count: the plate was just emptied and loaded, so the old count and baseline
        say nothing; the first stable level is counted absolutely (DOMAIN.md, reconcile). The cleared count is
        persisted at once so a restart before that level does not resurrect the old one. A new SKU alone keeps
        the count.
        """
        old = self.bins[b.id]
        if b.device is None or old.device is None:
            raise ValueError(f"bin {b.id} is not weighed: nothing to calibrate or count")
        self.bins[b.id] = b
        self.rules.rebind(b)  # alerts name the new SKU/limits; their state is kept
        weighed = ("device", "channel", "unit_weight_g", "unit_weight_spread_g", "tare_g", "calibration")
        if all(getattr(old, f) == getattr(b, f) for f in weighed):
            self.alerts_stream.publish({"type": "stock", "bin": self.bin_view(b.id)})
            return
        estimator = BinEstimator(
            b, settle_window_s=self._settle_window_s.get(b.device, DEFAULT_SETTLE_WINDOW_S)
        )
        self.estimators[b.id] = estimator
        self._by_device[old.device].pop(old.channel, None)
        self._by_device.setdefault(b.device, {})[b.channel] = (b.id, estimator)
        row = BinRow(b.id, b.sku, None, 0.0, None, True, time.time())
        async with self._write_lock:
            await self.store.record([], [row], [])
        self.alerts_stream.publish({"type": "stock", "bin": self.bin_view(b.id)})

    def bin_view(self, bin_id: str) -> dict[str, Any]:
        """A bin's live state for the API and the board."""
        b = self.bins[bin_id]
        est = self.estimators.get(bin_id)
        count = est.count if est else None
        level = stock_level(b, count)
        if b.device is None:  # camera-only: the level is what the camera sees
            level = _FACING_LEVEL.get(self._facing_view(b.id) or "", "unknown")
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
            "channel": b.channel if b.device is not None else None,
            "facing": self._facing_view(b.id),
            "last_sample_ts": (
                None if est is None or est.last_sample_ts is None else self.clock.to_wall(est.last_sample_ts)
            ),
        }

    def _facing_view(self, bin_id: str) -> str | None:
        """What the cameras see of the bin (`ok`/`low`/`empty`), None without a camera or when unsure."""
        return None if self.cameras is None else self.cameras.board.facing_hint(bin_id)

    def alert_view(self, row: AlertRow) -> dict[str, Any]:
        """An alert row with the bin's names, for the API and the board."""
        out = row.as_dict()
        b = self.bins.get(row.bin_id)
        out["name"] = {"zh": b.name.zh, "en": b.name.en} if b else None
        out["location"] = b.location if b else ""
        if b is None and self.config.catalogue is not None:  # a loss alert: its bin_id is an RFID exit zone
            item = self.config.catalogue.get(row.sku)
            out["name"] = {"zh": item.name.zh, "en": item.name.en} if item else None
        return out

    def device_health(self) -> list[DeviceHealthView]:
        """Every device of every family, in config order per family."""
        now = time.monotonic()
        return [view for c in self.coordinators for view in c.health(now)]

    def device_views(self) -> list[dict[str, Any]]:
        """Per-device health for the API (`family` says which fields beyond the common ones to expect)."""
        return [view.as_dict() for view in self.device_health()]

    async def heartbeat(self) -> Heartbeat:
        """The `health` payload: process, disk, outbox and devices."""
        depth, oldest = await self.store.depth()
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
            devices=[view.to_contract() for view in self.device_health()],
            active_alerts=len(self.rules.active()) + self.signals.alerts.active_count(),
            outbox_alarm=self.outbox_alarm,
        )

    async def _audited_command(self, name: str, command: Command) -> CommandResult:
        """`_on_command`, with each hub command in the audit log as user `hub` (edge/audit.py)."""
        before = {"config_version": self.config.version}
        result = await self._on_command(name, command)
        await audit_command(self.store_cfg.data_dir, name, command, result, before)
        return result

    async def _on_command(self, name: str, command: Command) -> CommandResult:
        """Commands from the hub; the uplink answers `ping` itself."""
        if name == RESEND_COMMAND:
            return await handle_resend(self.store, command)
        if name == CONFIG_COMMAND:
            return await handle_config(self.remote_config, self.config, command)
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


_FACING_LEVEL = {"empty": "out", "low": "low", "ok": "ok"}
"""A camera-only bin's board level from its facing state."""

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
