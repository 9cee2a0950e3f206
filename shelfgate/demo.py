"""`shelfgate demo` and `shelfgate sim`: a whole simulated store on this machine.

The demo starts, in one process root: a private broker (Mosquitto on a free loopback port when it is
installed, else amqtt embedded), the simulated devices of the demo store (transmitters on one RTU bus over a
pty null modem and one Modbus TCP bus; a scale, scanners and RFID modules each on a pty; BLE shelf sensors on
an in-memory radio the gateway hears through a fake bleak backend; a synthetic shelf camera per `synthetic:`
camera, handed to the gateway through its `camera_sources` seam, whose camera-only facings run empty and are
restocked now and then), the gateway with its staff board, a hub, and a simulated cashier per checkout lane
(`shelfgate.demo_cashier`: rings up the shoppers' picks on the lane scanner and scale simulators and completes
each sale through the local API, so sales reach the hub). It prints one `name: URL` line per thing it serves
(`sim-{device}: …` per simulator), then runs until Ctrl-C or `--duration`, and stops everything it started.

Keyed BLE sensors get a fresh random AES key per run, written to `<data-dir>/ble-keys.yaml` with mode 0600 —
the same secrets-file path a real gateway reads (`ble.keys_file`); the simulated sensors encrypt with it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from stdnum import ean

from edge.config import ConfigError, LoadedConfig, RtuBus, TcpBus, load_config
from firmware_sims.layout import (
    SimBin,
    SimBleSensor,
    SimBus,
    SimCode,
    SimLayout,
    SimRfidReader,
    SimScale,
    SimScanner,
    SimTransmitter,
    demo_initial_count,
    sgtin_tags,
)
from firmware_sims.runner import ShelfCameraSim, SimStore
from shelfgate.demo_cashier import demo_cashiers

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
        if b.device is not None  # camera-only bins are the camera simulator's (`demo_cameras`)
    )
    scales = tuple(SimScale(d.id, d.protocol, f"SG{i:08d}", d.lane) for i, d in enumerate(s.scales, 1))
    scanners = tuple(SimScanner(d.id, d.role, d.lane) for d in s.scanners)
    # Only real GTIN-14s are printed on packs (a store-internal SKU would be rejected by the scanner's check).
    skus = list(dict.fromkeys(b.sku for b in s.bins if len(b.sku) == 14 and ean.is_valid(b.sku)))
    readers = []
    for i, r in enumerate(s.rfid_readers):
        antenna = r.antennas[0]
        tags: tuple[str, ...] = ()
        if antenna.kind == "shelf":
            # A few tagged products on each shelf zone: 3 GTINs × 3 items, serials distinct per reader.
            for j, sku in enumerate(skus[3 * i : 3 * i + 3]):
                tags += sgtin_tags(sku, range(1000 * (i + 1) + 10 * j, 1000 * (i + 1) + 10 * j + 3))
        readers.append(SimRfidReader(r.id, antenna.zone, antenna.kind, tags))
    sensors = tuple(SimBleSensor(d.id, d.mac, d.keyed, d.channels) for d in s.ble_sensors)
    return SimLayout(
        buses=buses,
        transmitters=transmitters,
        bins=bins,
        noise_g=1.0,
        seed=seed,
        scales=scales,
        scanners=scanners,
        rfid_readers=tuple(readers),
        ble_sensors=sensors,
        codes=demo_codes(skus),
    )


def demo_codes(skus: list[str]) -> tuple[SimCode, ...]:
    """What the demo's scanners read: EAN-13 codes of the store's GTINs, a GS1 DataMatrix with batch and expiry,
    and two member codes (a loyalty card and a member QR)."""
    codes = [SimCode(sku[1:], "]E0") for sku in skus if sku.startswith("0")]
    if skus:
        codes.append(SimCode(f"01{skus[0]}10LOT42\x1d17271231", "]d2"))
    codes += [SimCode("MBR0000001001", "]C0", member=True), SimCode("shelfgate://member/m-2002", "]Q1", True)]
    return tuple(codes)


def demo_cameras(cfg: LoadedConfig) -> dict[str, ShelfCameraSim]:
    """A simulated shelf camera per `synthetic:SEED` camera of the config (the seed picks the shelf its ROIs
    were drawn on; a non-numeric name is hashed to one)."""
    out: dict[str, ShelfCameraSim] = {}
    for cam in cfg.store.cameras:
        if cam.source.startswith("synthetic:"):
            name = cam.source.removeprefix("synthetic:")
            seed = int(name) if name.isdigit() else int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "big")
            out[cam.id] = ShelfCameraSim(seed)
    return out


def camera_only_rois(cfg: LoadedConfig, camera_id: str) -> list[str]:
    """The ROIs of a camera that watch camera-only bins (the ones the demo's story empties and restocks)."""
    bins = {b.id: b for b in cfg.store.bins}
    cam = next(c for c in cfg.store.cameras if c.id == camera_id)
    return [r.id for r in cam.rois if r.bin is not None and bins[r.bin].device is None]


def demo_ble_keys(cfg: LoadedConfig) -> dict[str, bytes]:
    """A fresh random AES-128 bind key per keyed BLE sensor (a demo never reuses keys across runs)."""
    return {d.mac: secrets.token_bytes(16) for d in cfg.store.ble_sensors if d.keyed}


def write_keys_file(path: Path, keys: Mapping[str, bytes]) -> Path:
    """Write a BLE secrets file (MAC → hex key) created with mode 0600, as `drivers.ble.keys` requires."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f'"{mac}": "{key.hex()}"\n' for mac, key in keys.items())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), 0o600)  # an existing file keeps its mode on open; make sure
        f.write(text)
    return path


def point_config_at(
    cfg: LoadedConfig,
    endpoints: dict[str, str],
    *,
    broker: tuple[str, int],
    api_port: int,
    data_dir: Path,
    heartbeat_s: float | None = None,
    device_ports: Mapping[str, str] | None = None,
    ble_keys_file: Path | None = None,
) -> LoadedConfig:
    """The same store config with its buses, serial devices, broker, API port, data dir and BLE secrets file
    pointed at this machine (`device_ports`: device id → pty path, e.g. `SimStore.device_endpoints`)."""
    s = cfg.store
    ports = device_ports or {}

    def repoint(items: Sequence[Any]) -> list[Any]:
        return [d.model_copy(update={"port": ports[d.id]}) if d.id in ports else d for d in items]

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
        "scales": repoint(s.scales),
        "scanners": repoint(s.scanners),
        "rfid_readers": repoint(s.rfid_readers),
        "broker": s.broker.model_copy(update={"host": broker[0], "port": broker[1]}),
        "api": s.api.model_copy(update={"host": "127.0.0.1", "port": api_port}),
        "data_dir": data_dir,
    }
    if heartbeat_s is not None:
        update["bridge"] = s.bridge.model_copy(update={"heartbeat_s": heartbeat_s})
    if ble_keys_file is not None:
        update["ble"] = s.ble.model_copy(update={"keys_file": ble_keys_file})
    return LoadedConfig(
        store=s.model_copy(update=update),
        profiles=cfg.profiles,
        path=cfg.path,
        version=cfg.version,
        catalogue=cfg.catalogue,
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
        async with SimStore(layout, ble_keys=demo_ble_keys(cfg)) as sim:
            for name, ep in {**sim.endpoints, **sim.device_endpoints}.items():
                _say(name, ep)
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
    camera_story_s: float = 45.0,
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
        ble_keys = demo_ble_keys(cfg)
        keys_file = write_keys_file(data_dir / "ble-keys.yaml", ble_keys) if ble_keys else None
        # The lane is the demo cashier's (shelfgate/demo_cashier.py), not the device scenario's random scans.
        async with SimStore(layout, ble_keys=ble_keys, lane_checkouts=False, **sim_kwargs) as sim:
            gw_cfg = point_config_at(
                cfg,
                dict(sim.endpoints),
                broker=broker.address,
                api_port=gateway_port,
                data_dir=data_dir / "gateway",
                heartbeat_s=10.0,
                device_ports=sim.device_endpoints,
                ble_keys_file=keys_file,
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
            cameras = demo_cameras(cfg)
            gateway = Gateway(
                gw_cfg,
                on_ready=lambda _g: gw_ready.set(),
                ble_backend=sim.ble_backend() if sim.ble_sensors else None,
                camera_sources={cam_id: cam.source(f"sim-{cam_id}") for cam_id, cam in cameras.items()},
            )
            hub_ready = asyncio.Event()
            hub_port_out: list[int] = []
            async with asyncio.TaskGroup() as tg:
                gw_task = tg.create_task(gateway.run(), name="demo.gateway")
                hub_task = tg.create_task(
                    run_hub(hub_cfg, ready=hub_ready, api_port_out=hub_port_out), name="demo.hub"
                )
                story_tasks = [
                    tg.create_task(
                        cam.story(camera_only_rois(cfg, cam_id), every_s=camera_story_s),
                        name=f"demo.camera[{cam_id}]",
                    )
                    for cam_id, cam in cameras.items()
                ]
                await asyncio.wait_for(asyncio.gather(gw_ready.wait(), hub_ready.wait()), 30)
                story_tasks += [
                    tg.create_task(cashier.run(), name=f"demo.cashier[{cashier.lane}]")
                    for cashier in demo_cashiers(
                        sim,
                        cfg.catalogue,
                        f"http://127.0.0.1:{gateway.api_port}",
                        bin_skus={b.id: b.sku for b in cfg.store.bins},
                        seed=seed,
                    )
                ]
                urls = {
                    "gateway": f"http://127.0.0.1:{gateway.api_port}/board",
                    "gateway-api": f"http://127.0.0.1:{gateway.api_port}/docs",
                    "hub": f"http://127.0.0.1:{hub_port_out[0] if hub_port_out else hub_port}/api/fleet",
                    "broker": broker.url,
                }
                for name, ep in {**sim.endpoints, **sim.device_endpoints}.items():
                    urls[f"sim-{name}"] = ep
                for cam_id in cameras:
                    urls[f"sim-{cam_id}"] = f"synthetic://{cam_id}"
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
                for task in story_tasks:
                    task.cancel()
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
