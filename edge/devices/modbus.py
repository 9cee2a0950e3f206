"""Modbus weight transmitters: one `ModbusBus` per line, one `TransmitterPoller` per transmitter.

The driver does the work (block reads planned from the register map, one lock and the t3.5 gap per RTU line,
reconnect with backoff, availability logged once per change). The coordinator opens the buses, runs one task
`poller[{id}]` per transmitter and hands every sample to the engine (`on_sample`, the gateway's hot path) and
every availability change to `WeightSink.availability`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Final

from drivers.modbus.client import ModbusBus, TransmitterPoller
from drivers.modbus.models import RtuSettings, Sample, TcpSettings
from drivers.modbus.protocol import plan_poll
from edge.config import LoadedConfig, RtuBus
from edge.devices.base import DeviceHealthView, Family, WeightSink, age_s, error_counts

ERROR_KINDS: Final = ("timeouts", "crc_errors", "exceptions", "decode_errors", "disconnects")
"""`DeviceCounters` fields. The first four count failed polls; `disconnects` counts outages of the bus, whose
failed polls show as `bus_unavailable` (the rest of the driver's `errors`)."""


@dataclass
class TransmitterState:
    """One transmitter: where it is wired, the bins it weighs, its poller once running."""

    device_id: str
    bus_id: str
    unit_id: int
    bins: list[str] = field(default_factory=list)
    poller: TransmitterPoller | None = None


def bus_settings(config: LoadedConfig) -> dict[str, RtuSettings | TcpSettings]:
    """The driver's settings for every configured bus."""
    out: dict[str, RtuSettings | TcpSettings] = {}
    for bus in config.store.buses:
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


class ModbusCoordinator:
    """Every bus and transmitter of the store; `run()` under the gateway's TaskGroup."""

    family: Family = "modbus"

    def __init__(
        self,
        config: LoadedConfig,
        bins_by_device: Mapping[str, Sequence[str]],
        on_sample: Callable[[Sample], Awaitable[None]],
        sink: WeightSink,
    ) -> None:
        self._config = config
        self._on_sample = on_sample
        self._sink = sink
        self.transmitters: dict[str, TransmitterState] = {
            t.id: TransmitterState(t.id, t.bus, t.unit_id, list(bins_by_device.get(t.id, ())))
            for t in config.store.transmitters
        }
        self.buses: dict[str, ModbusBus] = {}

    async def run(self) -> None:
        """Open every bus (a bus that is down at start keeps reconnecting) and poll until cancelled."""
        store = self._config.store
        bins = {b.id: b for b in store.bins}
        async with AsyncExitStack() as stack:
            for bus_id, settings in bus_settings(self._config).items():
                self.buses[bus_id] = await stack.enter_async_context(ModbusBus(settings, bus_id))
            async with asyncio.TaskGroup() as tg:
                for tx in store.transmitters:
                    state = self.transmitters[tx.id]
                    channels = [bins[b].channel for b in state.bins]
                    poller = TransmitterPoller(
                        self.buses[tx.bus],
                        tx.id,
                        tx.unit_id,
                        plan_poll(self._config.profiles[tx.profile], channels),
                        tx.poll_interval_s,
                    )
                    state.poller = poller
                    tg.create_task(self._consume(poller), name=f"poller[{tx.id}]")

    async def _consume(self, poller: TransmitterPoller) -> None:
        async for item in poller.run():
            if isinstance(item, Sample):
                await self._on_sample(item)
            else:
                await self._sink.availability(item.device_id, item.online, item.reason, item.ts)

    def health(self, now_mono: float) -> list[DeviceHealthView]:
        """Each transmitter's health from its poller's counters."""
        out = []
        for d in self.transmitters.values():
            poller = d.poller
            counters: dict[str, Any] = dict(poller.counters.snapshot()) if poller else {}
            bus = self.buses.get(d.bus_id)
            out.append(
                DeviceHealthView(
                    device_id=d.device_id,
                    family=self.family,
                    online=bool(poller and poller.counters.online),
                    connected=bool(bus and bus.connected),
                    last_seen_age_s=age_s(poller.counters.last_seen_mono if poller else None, now_mono),
                    messages=int(counters.get("polls") or 0),
                    errors_by_kind=_errors_by_kind(counters),
                    total_errors=int(counters.get("errors") or 0),
                    last_error=counters.get("last_error"),
                    detail={"bus": d.bus_id, "unit_id": d.unit_id, "bins": list(d.bins)},
                    counters=counters,
                )
            )
        return out


def _errors_by_kind(counters: Mapping[str, Any]) -> dict[str, int]:
    kinds = error_counts(counters, ERROR_KINDS)
    failed_polls = sum(kinds[k] for k in ERROR_KINDS if k != "disconnects")
    kinds["bus_unavailable"] = max(int(counters.get("errors") or 0) - failed_polls, 0)
    return kinds
