"""The simulator both gateways poll: pymodbus servers with `layout.py`'s transmitters, changes logged.

Run by the harness (project venv, pymodbus 3.16) as
`python -m bench.peer_thingsboard.sim --level 20x10 --changes FILE [--seed N]`; it prints one
`ENDPOINT tcp 127.0.0.1 PORT` (or `ENDPOINT rtu /dev/pts/N`, the gateway's end of a
`firmware_sims.serial_link.PtyNullModem`) per endpoint, then `READY`.

Changes: after SIGUSR1 (until SIGUSR2) one random channel at a time loses 1 or 2 items or is restocked by 3
(a Poisson process: each channel about every `Level.change_interval_s`, never twice within
`Level.min_change_gap_s`). The registers flip at once and the stable bit stays set — no plate physics, so
both gateways see the same instant step and the latency measured is theirs, not a settle time of the sim's.
Every change is appended to the changes file as one JSON line (monotonic and wall-clock time, device index,
channel, new count, delta, new raw weight) *before* the registers change, so no poll can see a change that is
not logged yet.

The registers are plain words copied into the reply by the `SimDevice` action hook (pymodbus
`pymodbus/simulator/simdevice.py`): a read costs the simulator a slice copy, nothing more.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sys
import time
from contextlib import AsyncExitStack
from typing import IO

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from firmware_sims.serial_link import PtyNullModem

from .layout import (
    CHANNELS,
    INITIAL_COUNT,
    REGISTERS,
    RTU_BAUD,
    STABLE_BIT,
    STATUS_ADDRESS,
    UNIT_WEIGHT_G,
    WEIGHT_ADDRESS,
    Level,
    endpoint_of,
    weight_words,
)


class Transmitter:
    """One simulated transmitter: 4 plates of identical items, registers kept current."""

    def __init__(self, index: int, unit_id: int) -> None:
        self.index = index
        self.unit_id = unit_id
        self.counts = [INITIAL_COUNT] * CHANNELS
        self.words = [0] * REGISTERS
        self.reads = 0
        for ch in range(CHANNELS):
            self._write(ch)
            self.words[STATUS_ADDRESS + ch] = 1 << STABLE_BIT

    def _write(self, channel: int) -> None:
        hi, lo = weight_words(self.counts[channel] * UNIT_WEIGHT_G)
        self.words[WEIGHT_ADDRESS + 2 * channel] = hi
        self.words[WEIGHT_ADDRESS + 2 * channel + 1] = lo

    def set_count(self, channel: int, count: int) -> None:
        """Put `count` items on the plate, instantly."""
        self.counts[channel] = count
        self._write(channel)

    async def action(  # noqa: PLR0917 - pymodbus calls SimAction with six positional arguments
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """Copy the current words into the block pymodbus answers from (read-only device)."""
        del function_code, address, count
        if set_values is not None:
            return ExcCodes.ILLEGAL_ADDRESS
        current_registers[:] = self.words[start_address : start_address + len(current_registers)]
        self.reads += 1
        return None

    def sim_device(self) -> SimDevice:
        """The pymodbus device for this unit id."""
        return SimDevice(
            id=self.unit_id,
            simdata=[SimData(address=0, count=REGISTERS, datatype=DataType.REGISTERS, readonly=True)],
            action=self.action,
        )


async def _no_such_unit(  # noqa: PLR0917 - pymodbus calls SimAction with six positional arguments
    function_code: int,
    start_address: int,
    address: int,
    count: int,
    current_registers: list[int],
    set_values: list[int] | list[bool] | None,
) -> ExcCodes | None:
    """Nobody answers an unknown unit id (Serial Line v1.02 §2.1: the master times out)."""
    del function_code, start_address, count, current_registers, set_values
    raise NoSuchIdException(f"no unit answers at address {address}")


def _catch_all() -> SimDevice:
    return SimDevice(
        id=0,
        simdata=[SimData(address=0, count=REGISTERS, datatype=DataType.REGISTERS, readonly=True)],
        action=_no_such_unit,
    )


class ChangeMaker:
    """The Poisson process of picks and restocks, logged before the registers move."""

    def __init__(self, level: Level, transmitters: list[Transmitter], log: IO[str], seed: int) -> None:
        self.level = level
        self.transmitters = transmitters
        self.log = log
        self.rng = random.Random(seed)
        self.enabled = asyncio.Event()
        self.last_change: dict[tuple[int, int], float] = {}
        self.made = 0

    def step(self) -> None:
        """One change on a random channel that has been quiet for the minimum gap (if any is)."""
        now = time.monotonic()
        gap = self.level.min_change_gap_s
        for _ in range(8):  # a few tries; when most channels are busy the change is skipped
            tx = self.rng.choice(self.transmitters)
            ch = self.rng.randrange(CHANNELS)
            if now - self.last_change.get((tx.index, ch), -1e9) >= gap:
                break
        else:
            return
        count = tx.counts[ch]
        delta = self.rng.choice((-1, -1, -2)) if count > 3 else 3
        new = count + delta
        self.last_change[(tx.index, ch)] = now
        record = {
            "mono": now,
            "wall": time.time(),
            "device": tx.index,
            "channel": ch,
            "count": new,
            "delta": delta,
            "raw": new * UNIT_WEIGHT_G,
        }
        self.log.write(json.dumps(record) + "\n")
        self.log.flush()
        tx.set_count(ch, new)
        self.made += 1

    async def run(self) -> None:
        """Exponential gaps at the store-wide rate while enabled."""
        rate = len(self.transmitters) * CHANNELS / self.level.change_interval_s
        while True:
            await self.enabled.wait()
            await asyncio.sleep(self.rng.expovariate(rate))
            if self.enabled.is_set():
                self.step()


async def _serve(server: ModbusTcpServer | ModbusSerialServer) -> None:
    try:
        await server.serve_forever(background=True)
        await server.serving
    finally:
        await server.shutdown()  # type: ignore[no-untyped-call]


async def main_async(level: Level, changes_path: str, seed: int) -> None:
    """Serve until SIGTERM/SIGINT; SIGUSR1/SIGUSR2 start/stop the changes."""
    transmitters = []
    groups: dict[int, list[Transmitter]] = {}
    for i in range(level.devices):
        ep, unit = endpoint_of(i, level)
        tx = Transmitter(i, unit)
        transmitters.append(tx)
        groups.setdefault(ep, []).append(tx)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    with open(changes_path, "a", encoding="utf-8") as log:  # noqa: ASYNC230 - opened once, before serving
        maker = ChangeMaker(level, transmitters, log, seed)
        loop.add_signal_handler(signal.SIGUSR1, maker.enabled.set)
        loop.add_signal_handler(signal.SIGUSR2, maker.enabled.clear)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        tasks: list[asyncio.Task[None]] = []
        async with AsyncExitStack() as stack, asyncio.TaskGroup() as tg:
            for ep, txs in sorted(groups.items()):
                devices = [t.sim_device() for t in txs] + [_catch_all()]
                server: ModbusTcpServer | ModbusSerialServer
                if level.transport == "rtu":
                    link = await stack.enter_async_context(PtyNullModem(seed=seed))
                    server = ModbusSerialServer(
                        devices, port=link.device_path, baudrate=RTU_BAUD, ignore_missing_devices=True
                    )
                    tasks.append(tg.create_task(_serve(server), name=f"sim[{ep}]"))
                    print(f"ENDPOINT rtu {link.host_path}", flush=True)
                else:
                    server = ModbusTcpServer(devices, address=("127.0.0.1", 0), ignore_missing_devices=True)
                    tasks.append(tg.create_task(_serve(server), name=f"sim[{ep}]"))
                    for _ in range(500):
                        if isinstance(server.transport, asyncio.Server):
                            break
                        await asyncio.sleep(0.01)
                    listener = server.transport
                    if not isinstance(listener, asyncio.Server):
                        raise RuntimeError(f"endpoint {ep}: TCP server did not start")
                    port = int(listener.sockets[0].getsockname()[1])
                    print(f"ENDPOINT tcp 127.0.0.1 {port}", flush=True)
            tasks.append(tg.create_task(maker.run(), name="sim.changes"))
            print("READY", flush=True)
            await stop.wait()
            for t in tasks:
                t.cancel()
    print(f"DONE changes={maker.made} reads={sum(t.reads for t in transmitters)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Command line entry (the harness starts this in its own process)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--level", required=True, type=Level.parse)
    p.add_argument("--changes", required=True, help="JSON-lines file the changes are appended to")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main_async(args.level, args.changes, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
