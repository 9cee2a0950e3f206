"""A whole simulated store: shelves, one Modbus server per bus and the scenario, as one async context manager.

    async with SimStore(layout) as sim:
        sim.endpoints        # {"rtu1": "/dev/pts/7", "tcp1": "tcp://127.0.0.1:40123"}
        sim.shelves["A01"]   # the physics; sim.now() is its clock
        sim.faults("tx3").silent = True

Tasks: `sim[BUS].server` per bus (modbus_server.ModbusSimServer) and `sim.scenario`; all are cancelled and
awaited on exit, RTU links (firmware_sims.serial_link.PtyNullModem) closed after their servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from contextlib import AsyncExitStack
from types import TracebackType

from .layout import SimLayout
from .modbus_server import ModbusSimServer, SimUnit, TransmitterFaults, units_for_bus
from .scenario import Scenario, ScriptedScenario, ScriptStep, StockChange, StoreScenario
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
    call `sim.pick(bin_id, n)` / `sim.scenario.advance(sim.now())` themselves).
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
    ) -> None:
        self.layout = layout
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
        self.run_scenario = run_scenario
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
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        if self.run_scenario:
            self._scenario_task = asyncio.create_task(self.scenario.run(self.now), name="sim.scenario")
        _log.info("sim store serving %s", ", ".join(f"{k}={v}" for k, v in self.endpoints.items()))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the scenario, then every server, then the links."""
        task, self._scenario_task = self._scenario_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    def scenario_error(self) -> BaseException | None:
        """The exception that ended the scenario task, if it failed (a test can assert this stays None)."""
        task = self._scenario_task
        if task is None or not task.done() or task.cancelled():
            return None
        return task.exception()


__all__ = ["SimStore", "build_shelves"]
