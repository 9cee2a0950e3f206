"""A whole simulated store: shelves, one Modbus server per bus, every other device, and the scenarios.

    async with SimStore(layout, ble_keys={mac: key}) as sim:
        sim.endpoints          # {"rtu1": "/dev/pts/7", "tcp1": "tcp://127.0.0.1:40123"}
        sim.device_endpoints   # {"scale1": "/dev/pts/9", "lane1": "/dev/pts/11", "ble1": "ble://A4:C1:…"}
        sim.shelves["A01"]     # the physics (Modbus and BLE bins alike); sim.now() is its clock
        sim.faults("tx3").silent = True
        sim.scales["scale1"].put(250.0); await sim.scanners["lane1"].scan("6901234567892")
        Gateway(cfg, ble_backend=sim.ble_backend())   # the gateway hears the simulated sensors

Serial devices (scales, scanners, RFID modules) each get a pty null modem (`firmware_sims.serial_link`): the
simulator opens `device_path`, the gateway `host_path`. BLE sensors broadcast on an in-memory `SimAir`; the
gateway hears it through a fake bleak backend (`ble_backend()`), the driver's own seam. A BLE sensor's mass is
its bins' noise-free plate load (a BTHome shelf reports its filtered reading; the 10 g resolution of object
0x06 dominates), sent every `ble_interval_s`.

Tasks: `sim[BUS].server` per bus (modbus_server.ModbusSimServer), `sim.scenario` (shelves), `sim.devices`
(lanes, handhelds, RFID walks) and `sim.ble` (adverts); all are cancelled and awaited on exit, links closed
after their simulators.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from types import TracebackType

from bleak.backends.scanner import BaseBleakScanner

from drivers.camera import Image, SyntheticSource

from .barcode import BarcodeScannerSim
from .ble import SimAir, SimShelfSensor
from .camera import CameraScript, FacingLayout, FacingState, ShelfSim
from .layout import SimLayout
from .modbus_server import ModbusSimServer, SimUnit, TransmitterFaults, units_for_bus
from .rfid import UhfModuleSim
from .scale import MtSicsScaleSim, NciScaleSim
from .scenario import (
    DeviceAction,
    DeviceScenario,
    Scenario,
    ScriptedScenario,
    ScriptStep,
    StockChange,
    StoreScenario,
)
from .serial_link import PtyNullModem
from .shelf import Shelf, derive_seed

_log = logging.getLogger(__name__)


def build_shelves(layout: SimLayout) -> dict[str, Shelf]:
    """One `Shelf` per bin, seeded from the layout seed and the bin id."""
    return {
        b.bin_id: Shelf(b, noise_g=layout.noise_g, physics=layout.physics, seed=layout.seed)
        for b in layout.bins
    }


class SimStore:
    """Serve every bus of a layout and run its scenario until the context exits.

    Scenario choice: `script=[ScriptStep(...)]` runs a `ScriptedScenario`; otherwise a `StoreScenario` with
    the shopper/restock options. `run_scenario=False` serves the shelves but leaves them alone (tests then
    call `sim.pick(bin_id, n)` / `sim.scenario.advance(sim.now())` themselves). `lane_checkouts=False` keeps the
    device scenario off the lanes (the demo's cashier works them: shelfgate/demo_cashier.py).
    """

    def __init__(
        self,
        layout: SimLayout,
        *,
        shopper_rate_per_min: float = 6.0,
        restock_delay_s: float = 10.0,
        first_low_at_s: float | None = 15.0,
        script: Sequence[ScriptStep] | None = None,
        run_scenario: bool = True,
        seed: int | None = None,
        ble_keys: Mapping[str, bytes] | None = None,
        ble_interval_s: float = 0.25,
        rfid_round_s: float = 0.1,
        checkout_every_s: float = 20.0,
        tag_walk_every_s: float = 25.0,
        lane_checkouts: bool = True,
    ) -> None:
        if ble_interval_s <= 0 or rfid_round_s <= 0:
            raise ValueError("ble_interval_s and rfid_round_s must be positive")
        keys = dict(ble_keys or {})
        for sensor in layout.ble_sensors:
            if sensor.keyed and sensor.mac not in keys:
                raise ValueError(f"BLE sensor {sensor.device_id} is keyed: pass its key in ble_keys")
        self.layout = layout
        self._ble_keys = keys
        self.ble_interval_s = ble_interval_s
        self.rfid_round_s = rfid_round_s
        self.seed = layout.seed if seed is None else seed
        self.shelves: dict[str, Shelf] = build_shelves(layout)
        self.scenario: Scenario
        if script is not None:
            self.scenario = ScriptedScenario(self.shelves, script)
        else:
            self.scenario = StoreScenario(
                layout,
                self.shelves,
                seed=derive_seed(self.seed, "scenario"),
                shopper_rate_per_min=shopper_rate_per_min,
                restock_delay_s=restock_delay_s,
                first_low_at_s=first_low_at_s,
            )
        self.devices = DeviceScenario(
            layout,
            seed=derive_seed(self.seed, "device-scenario"),
            checkout_every_s=checkout_every_s,
            tag_walk_every_s=tag_walk_every_s,
            lane_checkouts=lane_checkouts,
        )
        self.run_scenario = run_scenario
        self.device_endpoints: dict[str, str] = {}
        """device id → the pty path the gateway opens, or `ble://MAC` for a BLE sensor."""
        self.device_links: dict[str, PtyNullModem] = {}
        """Serial device id → its null modem (line faults: `corrupt_next(n)`, `delay_s`, `silent`)."""
        self.scales: dict[str, MtSicsScaleSim | NciScaleSim] = {}
        self.scanners: dict[str, BarcodeScannerSim] = {}
        self.rfid: dict[str, UhfModuleSim] = {}
        self.air = SimAir()
        self.ble_sensors: dict[str, SimShelfSensor] = {}
        self._device_tasks: list[asyncio.Task[None]] = []
        self.endpoints: dict[str, str] = {}
        """bus id → `tcp://127.0.0.1:PORT` or the pty path the gateway opens."""
        self.servers: dict[str, ModbusSimServer] = {}
        self.links: dict[str, PtyNullModem] = {}
        """RTU bus id → its null modem (line faults: `corrupt_next(n)`, `delay_s`, `silent`)."""
        self.units: dict[str, SimUnit] = {}
        """device id → the simulated transmitter."""
        self._t0: float | None = None
        self._stack: AsyncExitStack | None = None
        self._scenario_task: asyncio.Task[None] | None = None

    # --- clock and controls --------------------------------------------------------------------------------

    def now(self) -> float:
        """Simulation time: seconds since the store started serving."""
        if self._t0 is None:
            return 0.0
        return asyncio.get_running_loop().time() - self._t0

    def faults(self, device_id: str) -> TransmitterFaults:
        """The transmitter-level fault knobs (`silent`, `late_s`, `bad_crc`) of one device."""
        return self.units[device_id].faults

    def set_stuck(self, bin_id: str, stuck: bool = True) -> None:
        """Freeze (or release) one channel's output at its current value."""
        self.shelves[bin_id].set_stuck(stuck, self.now())

    def set_fault_bit(self, bin_id: str, fault: bool = True) -> None:
        """Raise (or clear) one channel's fault bit in its status word."""
        self.shelves[bin_id].fault_bit = fault

    def link(self, bus_id: str) -> PtyNullModem:
        """The null modem of an RTU bus."""
        return self.links[bus_id]

    def pick(self, bin_id: str, n: int = 1) -> StockChange:
        """Take `n` items off a bin now, outside the scenario, and record it in the ground truth."""
        return self.scenario.apply(self.now(), bin_id, -n)

    def put(self, bin_id: str, n: int = 1) -> StockChange:
        """Put `n` items on a bin now, outside the scenario, and record it in the ground truth."""
        return self.scenario.apply(self.now(), bin_id, n)

    def ble_backend(self) -> type[BaseBleakScanner]:
        """A bleak scanner backend hearing this store's BLE sensors (for the gateway's `ble_backend=`)."""
        return self.air.bleak_backend()

    async def perform(self, action: DeviceAction) -> None:
        """Make a device do one thing (the device scenario's actions; tests may call it too)."""
        if action.action == "scan":
            await self.scanners[action.device_id].scan(action.code, action.symbology)
        elif action.action == "load":
            self.scales[action.device_id].put(action.grams)
        elif action.action == "unload":
            self.scales[action.device_id].put(0.0)
        elif action.action == "tag_in":
            self.rfid[action.device_id].add(action.epc)
        else:
            self.rfid[action.device_id].remove(action.epc)

    def advertise(self) -> None:
        """Every BLE sensor broadcasts its bins' current plate load once (the `sim.ble` task's step)."""
        now = self.now()
        for sensor_id, sensor in self.ble_sensors.items():
            masses = [0.0] * len(sensor.masses_kg)
            for b in self.layout.bins_on(sensor_id):
                # value = zero + gross / span, as a transmitter would report it, in grams → kg on the air.
                grams = b.zero + self.shelves[b.bin_id].gross_g(now) / b.span_g_per_unit
                masses[b.channel] = max(grams, 0.0) / 1000.0
            sensor.masses_kg = masses
            sensor.send()

    async def _advertise_loop(self) -> None:
        while True:
            self.advertise()
            await asyncio.sleep(self.ble_interval_s)

    # --- lifecycle -------------------------------------------------------------------------------------

    async def __aenter__(self) -> SimStore:
        loop = asyncio.get_running_loop()
        self._t0 = loop.time()
        stack = AsyncExitStack()
        try:
            for bus in self.layout.buses:
                units = units_for_bus(bus.bus_id, self.layout.transmitters, self.shelves, self.now)
                for unit in units:
                    self.units[unit.transmitter.device_id] = unit
                if bus.kind == "rtu":
                    link = await stack.enter_async_context(
                        PtyNullModem(seed=derive_seed(self.seed, bus.bus_id))
                    )
                    self.links[bus.bus_id] = link
                    server = ModbusSimServer(bus, units, serial_path=link.device_path)
                    await stack.enter_async_context(server)
                    self.endpoints[bus.bus_id] = link.host_path
                else:
                    server = await stack.enter_async_context(ModbusSimServer(bus, units))
                    self.endpoints[bus.bus_id] = server.endpoint
                self.servers[bus.bus_id] = server
            await self._start_devices(stack)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        if self.run_scenario:
            self._scenario_task = asyncio.create_task(self.scenario.run(self.now), name="sim.scenario")
            self._device_tasks.append(
                asyncio.create_task(self.devices.run(self.now, self.perform), name="sim.devices")
            )
        if self.ble_sensors:
            self._device_tasks.append(asyncio.create_task(self._advertise_loop(), name="sim.ble"))
        _log.info(
            "sim store serving %s",
            ", ".join(f"{k}={v}" for k, v in {**self.endpoints, **self.device_endpoints}.items()),
        )
        return self

    async def _link(self, stack: AsyncExitStack, device_id: str) -> PtyNullModem:
        link = await stack.enter_async_context(PtyNullModem(seed=derive_seed(self.seed, device_id)))
        self.device_links[device_id] = link
        self.device_endpoints[device_id] = link.host_path
        return link

    async def _start_devices(self, stack: AsyncExitStack) -> None:
        layout = self.layout
        for scale in layout.scales:
            link = await self._link(stack, scale.device_id)
            sim: MtSicsScaleSim | NciScaleSim = (
                MtSicsScaleSim(link.device_path, serial_number=scale.serial_number)
                if scale.protocol == "mtsics"
                else NciScaleSim(link.device_path)
            )
            self.scales[scale.device_id] = await stack.enter_async_context(sim)
        for scanner in layout.scanners:
            link = await self._link(stack, scanner.device_id)
            self.scanners[scanner.device_id] = await stack.enter_async_context(
                BarcodeScannerSim(link.device_path, seed=derive_seed(self.seed, scanner.device_id, "codes"))
            )
        for reader in layout.rfid_readers:
            link = await self._link(stack, reader.device_id)
            self.rfid[reader.device_id] = await stack.enter_async_context(
                UhfModuleSim(
                    link.device_path,
                    tags=reader.tags,
                    round_s=self.rfid_round_s,
                    seed=derive_seed(self.seed, reader.device_id, "rounds"),
                )
            )
        for ble in layout.ble_sensors:
            self.ble_sensors[ble.device_id] = SimShelfSensor(
                self.air,
                ble.mac,
                key=self._ble_keys.get(ble.mac) if ble.keyed else None,
                masses_kg=[0.0] * ble.channels,
                repeats=2,
                rng=random.Random(derive_seed(self.seed, ble.device_id, "radio")),
            )
            self.device_endpoints[ble.device_id] = f"ble://{ble.mac}"

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the scenarios, then every server and device, then the links."""
        task, self._scenario_task = self._scenario_task, None
        tasks, self._device_tasks = [*self._device_tasks, *([task] if task else [])], []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    def scenario_error(self) -> BaseException | None:
        """The exception that ended the scenario task, if it failed (a test can assert this stays None)."""
        task = self._scenario_task
        if task is None or not task.done() or task.cancelled():
            return None
        return task.exception()


class ShelfCameraSim:
    """A synthetic shelf camera whose facings a test or the demo empties and restocks at will.

    `ShelfSim` renders a timeline drawn from its seed; this one renders *now*: each facing shows the state
    last set (`set_state(roi_id, "empty")`), and `walk_past(n)` sends shoppers across the view for the
    next `n` frames. It combines `ShelfSim`s of one seed and geometry (the same shelf and products) that
    differ only in how full the facings are: the stocked view is the base, an emptied or low facing is
    pasted from the empty or half-full view — except where a shopper covers it, so a shopper passes in
    front of the shelf, never behind a gap. Lighting is steady, sensor noise on (σ `noise_sigma`).

    `source()` is the `SyntheticSource` the gateway's `camera_sources=` seam takes; `render` runs on the
    camera's grab thread and only reads the states set from the event loop.
    """

    def __init__(self, seed: int, *, rows: int = 4, cols: int = 5, noise_sigma: float = 3.0) -> None:
        capacity = 4

        def script(units: int, walker_prob: float = 0.0) -> CameraScript:
            weights = tuple(1.0 if n == units else 0.0 for n in range(capacity + 1))
            return CameraScript(
                n_frames=997,
                rows=rows,
                cols=cols,
                units_per_facing=capacity,
                pick_prob=0.0,
                restock_prob=0.0,
                walker_prob=walker_prob,
                stander_prob=0.0,
                lighting_amplitude=0.0,
                gradient_amplitude=0.0,
                noise_sigma=noise_sigma,
                initial_units=weights,
                pegboard=False,
            )

        self.seed = seed
        self._views: dict[FacingState, ShelfSim] = {
            "ok": ShelfSim(seed, script(capacity)),
            "low": ShelfSim(seed, script(capacity // 2)),
            "empty": ShelfSim(seed, script(0)),
        }
        self._walkers = ShelfSim(seed, script(capacity, walker_prob=1.0))
        self.facings: tuple[FacingLayout, ...] = self._views["ok"].facings
        self.width, self.height = self._views["ok"].width, self._views["ok"].height
        self.states: dict[str, FacingState] = {f.roi_id: "ok" for f in self.facings}
        self._walk_frames = 0
        self._walk_index = 0
        self.frames_rendered = 0
        self.frames_with_shopper = 0
        self.frames_shopper_on_facing = 0
        """Frames in which a shopper covered part of at least one facing (tests check the walk mattered)."""

    def set_state(self, roi_id: str, state: FacingState) -> None:
        """What the facing shows from the next frame on: `ok` (4 units), `low` (2) or `empty`."""
        if roi_id not in self.states:
            raise KeyError(f"no facing {roi_id!r}")
        self.states[roi_id] = state

    def walk_past(self, frames: int = 6) -> None:
        """Shoppers cross the view during the next `frames` frames."""
        self._walk_frames += frames

    def render(self, index: int) -> Image:
        """Frame `index` of the camera as it is now."""
        if self._walk_frames > 0:
            self._walk_frames -= 1
            shot = self._walkers.frame(self._walk_index)
            self._walk_index += 1
            image = shot.image.copy()
            covered = {t.roi_id: t.occluded_fraction > 0 for t in shot.truth}
            self.frames_with_shopper += 1
            self.frames_shopper_on_facing += any(covered.values())
        else:
            image = self._views["ok"].image(index)
            covered = {}
        views: dict[FacingState, Image] = {}
        for f in self.facings:
            state = self.states[f.roi_id]
            if state == "ok" or covered.get(f.roi_id, False):
                continue
            if state not in views:
                views[state] = self._views[state].image(index)
            image[f.y : f.y + f.h, f.x : f.x + f.w] = views[state][f.y : f.y + f.h, f.x : f.x + f.w]
        self.frames_rendered += 1
        return image

    def source(self, name: str | None = None) -> SyntheticSource:
        """This camera as a frame source (not live: rendered when the stream wants a frame)."""
        return SyntheticSource(self.render, name=name or f"sim-camera[{self.seed}]")

    async def story(
        self, roi_ids: Sequence[str], *, every_s: float = 45.0, rng: random.Random | None = None
    ) -> None:
        """The demo's camera story, until cancelled: now and then one of `roi_ids` runs empty (a shopper
        walks past first), and is restocked a while later."""
        if not roi_ids:
            await asyncio.Event().wait()
        rng = rng or random.Random(self.seed)  # a story, not security
        while True:
            await asyncio.sleep(every_s * rng.uniform(0.6, 1.4))
            roi_id = rng.choice(list(roi_ids))
            self.walk_past(rng.randint(3, 6))
            await asyncio.sleep(every_s * 0.2)
            self.set_state(roi_id, "low")
            await asyncio.sleep(every_s * 0.3)
            self.set_state(roi_id, "empty")
            _log.info("sim camera %s: facing %s emptied", self.seed, roi_id)
            await asyncio.sleep(every_s * rng.uniform(0.8, 1.2))
            self.set_state(roi_id, "ok")
            _log.info("sim camera %s: facing %s restocked", self.seed, roi_id)


__all__ = ["ShelfCameraSim", "SimStore", "build_shelves"]
