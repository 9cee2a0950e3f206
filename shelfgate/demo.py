"""`shelfgate demo` and `shelfgate sim`: a whole simulated store on this machine.

The demo starts, in one process root: a private broker (Mosquitto on a free loopback port when it is
installed, else amqtt embedded), the simulated transmitters of the demo store (one RTU bus over a pty null
modem, one Modbus TCP bus), the gateway with its staff board, and a hub. It prints one `name: URL` line per
thing it serves, then runs until Ctrl-C or `--duration`, and stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from edge.config import ConfigError, LoadedConfig, RtuBus, TcpBus, load_config
from firmware_sims.layout import SimBin, SimBus, SimLayout, SimTransmitter, demo_initial_count
from firmware_sims.runner import SimStore

_log = logging.getLogger("shelfgate.demo")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = PROJECT_ROOT / "config" / "demo-store.yaml"


def layout_from_config(
    cfg: LoadedConfig,
    *,
    seed: int = 1,
    tcp_port: int | None = None,
    initial_counts: Mapping[str, int] | None = None,
) -> SimLayout:
    """Mirror a store config as a simulator layout: same buses, unit ids, register maps and calibrations.

    Initial counts come from `initial_counts` by bin id, else the demo's pattern (a few bins just above
    safety stock, so the first low-stock alert comes soon).
    """
    s = cfg.store
    buses = tuple(
        SimBus(b.id, "rtu", None, b.baudrate)
        if isinstance(b, RtuBus)
        else SimBus(b.id, "tcp", tcp_port or None)
        for b in s.buses
    )
    transmitters = tuple(
        SimTransmitter(t.id, t.bus, t.unit_id, cfg.profiles[t.profile]) for t in s.transmitters
    )
    bins = tuple(
        SimBin(
            bin_id=b.id,
            device_id=b.device,
            channel=b.channel,
            unit_weight_g=b.unit_weight_g,
            unit_weight_spread_g=b.unit_weight_spread_g,
            tare_g=b.tare_g,
            zero=b.calibration.zero,
            span_g_per_unit=b.calibration.span_g_per_unit,
            safety_stock=b.safety_stock,
            max_stock=b.max_stock,
            initial_count=(initial_counts or {}).get(
                b.id, demo_initial_count(b.safety_stock, b.max_stock, i)
            ),
        )
        for i, b in enumerate(s.bins)
    )
    return SimLayout(buses=buses, transmitters=transmitters, bins=bins, noise_g=1.0, seed=seed)


def point_config_at(
    cfg: LoadedConfig,
    endpoints: dict[str, str],
    *,
    broker: tuple[str, int],
    api_port: int,
    data_dir: Path,
    heartbeat_s: float | None = None,
) -> LoadedConfig:
    """The same store config with its buses, broker, API port and data dir pointed at this machine."""
    s = cfg.store
    buses: list[RtuBus | TcpBus] = []
    for b in s.buses:
        ep = endpoints[b.id]
        if isinstance(b, RtuBus):
            buses.append(b.model_copy(update={"port": ep}))
        else:
            host, port = ep.removeprefix("tcp://").rsplit(":", 1)
            buses.append(b.model_copy(update={"host": host, "port": int(port)}))
    update: dict[str, Any] = {
        "buses": buses,
        "broker": s.broker.model_copy(update={"host": broker[0], "port": broker[1]}),
        "api": s.api.model_copy(update={"host": "127.0.0.1", "port": api_port}),
        "data_dir": data_dir,
    }
    if heartbeat_s is not None:
        update["bridge"] = s.bridge.model_copy(update={"heartbeat_s": heartbeat_s})
    return LoadedConfig(
        store=s.model_copy(update=update), profiles=cfg.profiles, path=cfg.path, version=cfg.version
    )


def _load(path: Path | None) -> LoadedConfig | None:
    try:
        return load_config(path or DEMO_CONFIG)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


def _say(name: str, url: str) -> None:
    """One `name: URL` line on stdout, flushed at once so a wrapper script can read it."""
    print(f"{name}: {url}", flush=True)


async def _until(duration_s: float | None) -> None:
    if duration_s is None:
        await asyncio.Event().wait()
    else:
        await asyncio.sleep(duration_s)


def run_sim(args: argparse.Namespace) -> int:
    """`shelfgate sim`: serve the transmitters of a store config until Ctrl-C or --duration."""
    cfg = _load(args.config)
    if cfg is None:
        return 2
    layout = layout_from_config(cfg, seed=args.seed, tcp_port=args.tcp_port)

    async def main() -> None:
        async with SimStore(layout) as sim:
            for bus_id, ep in sim.endpoints.items():
                _say(bus_id, ep)
            await _until(args.duration)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    return 0


class _Broker:
    """Mosquitto when installed, else amqtt in this process; same surface for the demo."""

    def __init__(self, workdir: Path) -> None:
        from shelfgate.broker import BrokerError, EmbeddedBroker, Mosquitto

        self._mosquitto: Mosquitto | None = None
        self._embedded: EmbeddedBroker | None = None
        try:
            self._mosquitto = Mosquitto(workdir)
        except BrokerError:
            self._embedded = EmbeddedBroker()

    @property
    def kind(self) -> str:
        return "mosquitto" if self._mosquitto else "embedded amqtt"

    @property
    def address(self) -> tuple[str, int]:
        b = self._mosquitto or self._embedded
        assert b is not None  # noqa: S101 - one of the two is always set
        return b.host, b.port

    @property
    def url(self) -> str:
        return f"mqtt://{self.address[0]}:{self.address[1]}"

    async def start(self) -> None:
        if self._mosquitto is not None:
            await asyncio.to_thread(self._mosquitto.start)
        elif self._embedded is not None:
            await self._embedded.start()

    async def stop(self) -> None:
        if self._mosquitto is not None:
            await asyncio.to_thread(self._mosquitto.stop)
        elif self._embedded is not None:
            await self._embedded.stop()


async def demo_main(
    cfg: LoadedConfig,
    *,
    data_dir: Path,
    gateway_port: int,
    hub_port: int,
    duration_s: float | None,
    seed: int = 1,
    shopper_rate: float | None = None,
    on_urls: Callable[[dict[str, str]], Awaitable[None] | None] | None = None,
) -> None:
    """Everything the demo runs, in one TaskGroup; returns after `duration_s` (or runs until cancelled)."""
    from edge.gateway import Gateway
    from hub.config import HubConfig
    from hub.service import run_hub

    broker = _Broker(Path(tempfile.mkdtemp(prefix="shelfgate-broker-")))
    await broker.start()
    try:
        layout = layout_from_config(cfg, seed=seed)
        sim_kwargs: dict[str, Any] = {}
        if shopper_rate is not None:
            sim_kwargs["shopper_rate_per_min"] = shopper_rate
        async with SimStore(layout, **sim_kwargs) as sim:
            gw_cfg = point_config_at(
                cfg,
                dict(sim.endpoints),
                broker=broker.address,
                api_port=gateway_port,
                data_dir=data_dir / "gateway",
                heartbeat_s=10.0,
            )
            hub_cfg = HubConfig.model_validate(
                {
                    "hub_id": "demo-hub",
                    "database": str(data_dir / "hub.db"),
                    "broker": {"host": broker.address[0], "port": broker.address[1], "client_id": "demo-hub"},
                    "api": {"host": "127.0.0.1", "port": hub_port},
                    "heartbeat_s": 10.0,
                }
            )
            gw_ready = asyncio.Event()
            gateway = Gateway(gw_cfg, on_ready=lambda _g: gw_ready.set())
            hub_ready = asyncio.Event()
            hub_port_out: list[int] = []
            async with asyncio.TaskGroup() as tg:
                gw_task = tg.create_task(gateway.run(), name="demo.gateway")
                hub_task = tg.create_task(
                    run_hub(hub_cfg, ready=hub_ready, api_port_out=hub_port_out), name="demo.hub"
                )
                await asyncio.wait_for(asyncio.gather(gw_ready.wait(), hub_ready.wait()), 30)
                urls = {
                    "gateway": f"http://127.0.0.1:{gateway.api_port}/board",
                    "gateway-api": f"http://127.0.0.1:{gateway.api_port}/docs",
                    "hub": f"http://127.0.0.1:{hub_port_out[0] if hub_port_out else hub_port}/api/fleet",
                    "broker": broker.url,
                }
                for bus_id, ep in sim.endpoints.items():
                    urls[f"sim-{bus_id}"] = ep
                for name, url in urls.items():
                    _say(name, url)
                if on_urls is not None:
                    maybe = on_urls(urls)
                    if maybe is not None:
                        await maybe
                _log.info("demo running with %s; Ctrl-C stops it", broker.kind)
                await _until(duration_s)
                gw_task.cancel()
                hub_task.cancel()
    finally:
        await broker.stop()


def run_demo(args: argparse.Namespace) -> int:
    """`shelfgate demo`."""
    cfg = _load(args.config)
    if cfg is None:
        return 2
    data_dir: Path = args.data_dir
    # A fresh store each run: the demo's story (stock falls, an alert, a restock) starts from the same place.
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        asyncio.run(
            demo_main(
                cfg,
                data_dir=data_dir,
                gateway_port=args.gateway_port,
                hub_port=args.hub_port,
                duration_s=args.duration,
                seed=args.seed,
                shopper_rate=args.shopper_rate,
            )
        )
    except KeyboardInterrupt:
        pass
    except ExceptionGroup as group:
        # A port already taken, a broker that would not start: say what, not a traceback.
        for exc in group.exceptions:
            print(f"demo: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    _log.info("demo stopped after %.0f s", time.monotonic() - started)
    return 0
