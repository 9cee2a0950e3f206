"""Catalogue pushes and the error-rate watch end to end (issue #4 part 7, DOMAIN.md "rollback when a rollout
misbehaves"): hub API → real Mosquitto → the `shelfgate run` runner (`edge.remote_config.RemoteConfig`) with a
real gateway polling a real pymodbus transmitter simulator (firmware_sims) → `cmd-result` → the hub's rollout.

One stack, in order:

1. a catalogue-only push with a new price: applied, the gateway restarts on it, `GET /api/catalogue/{gtin}`
   serves the new price, the hub records the catalogue version and keeps the text as the store's last push;
2. a catalogue missing the bin's SKU: rejected naming the SKU and the bin's line, nothing changes;
3. a config whose transmitter points at a closed port: it comes up (the broker is fine), so it is applied, but
   every poll fails; after its watch window the gateway rolls back by itself, and the hub's target goes from
   applied to rolled_back with ``error rate … % > 2 % for N s``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge.config import load_config
from edge.remote_config import RemoteConfig
from edge.retail.catalogue import parse_catalogue_yaml
from firmware_sims.runner import SimStore
from hub.config import HubConfig
from hub.service import run_hub
from shelfgate.broker import Mosquitto
from shelfgate.demo import layout_from_config

pytestmark = pytest.mark.timeout(180)

STORE = "rcat-001"
GTIN = "06901234567892"
OTHER = "07032069804988"  # tests/vectors/gs1_barcodes.json (biip test-suite)


def store_yaml(*, modbus_port: int, broker_port: int, api_port: int) -> str:
    return f"""\
store_id: {STORE}
data_dir: data
catalogue: catalogue.yaml
buses:
  - {{id: tcp1, kind: tcp, host: 127.0.0.1, port: {modbus_port}}}
transmitters:
  - {{id: tx1, bus: tcp1, unit_id: 1, profile: wt-int32-abcd, poll_interval_s: 0.05}}
broker: {{host: 127.0.0.1, port: {broker_port}}}
api: {{host: 127.0.0.1, port: {api_port}}}
bridge: {{heartbeat_s: 1}}
bins:
  - id: A01
    sku: '{GTIN}'
    name: {{zh: 可乐, en: Cola}}
    unit_weight_g: 350
    calibration: {{zero: 1000, span_g_per_unit: 0.1}}
    safety_stock: 2
    max_stock: 12
    device: tx1
    channel: 0
"""


def catalogue_yaml(price: str, *, with_bin_sku: bool = True) -> str:
    cola = f"""\
  - gtin: "{GTIN}"
    name: {{zh: 可口可乐, en: Coca-Cola}}
    price: "{price}"
    category: beverages
"""
    other = f"""\
  - gtin: "{OTHER}"
    name: {{zh: 饼干, en: Biscuits}}
    price: "6.80"
    category: snacks
"""
    return "currency: CNY\nitems:\n" + (cola if with_bin_sku else "") + other


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def eventually(check: Callable[[], Awaitable[Any]], timeout_s: float, what: str) -> Any:
    """Poll until `check()` returns something truthy (returned); a hang guard, not a timing claim."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last: Any = None
    while True:
        last = await check()
        if last:
            return last
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for: {what}; last seen: {last!r}")
        await asyncio.sleep(0.2)


@dataclass
class Stack:
    control: RemoteConfig
    folder: Path
    hub_url: str
    http: httpx.AsyncClient

    @property
    def gw_url(self) -> str:
        gateway = self.control.gateway
        assert gateway is not None
        return f"http://127.0.0.1:{gateway.api_port}"

    async def hub(self, path: str) -> Any:
        r = await self.http.get(f"{self.hub_url}{path}")
        r.raise_for_status()
        return r.json()

    async def push(self, **body: Any) -> str:
        r = await self.http.post(
            f"{self.hub_url}/api/config-rollouts", json={"stores": [STORE], "probation_s": 30, **body}
        )
        assert r.status_code == 201, r.text
        return str(r.json()["rollout_id"])

    async def target(
        self, rollout_id: str, done: Callable[[dict[str, Any]], bool], what: str
    ) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            view = await self.hub(f"/api/config-rollouts/{rollout_id}")
            target: dict[str, Any] = view["targets"][0]
            return target if done(target) else None

        found: dict[str, Any] = await eventually(check, 90, what)
        return found


@asynccontextmanager
async def running_stack(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[Stack]:
    folder = tmp_path / "store"
    folder.mkdir()
    config_file = folder / "store.yaml"
    (folder / "catalogue.yaml").write_text(catalogue_yaml("3.50"), encoding="utf-8")
    api_port = free_port()
    config_file.write_text(store_yaml(modbus_port=1, broker_port=mosquitto.port, api_port=api_port), "utf-8")
    layout = layout_from_config(load_config(config_file), seed=3, initial_counts={"A01": 6})
    layout = dataclasses.replace(layout, buses=tuple(dataclasses.replace(b, port=None) for b in layout.buses))
    async with SimStore(layout, run_scenario=False) as sim:
        port = int(sim.endpoints["tcp1"].rsplit(":", 1)[1])
        config_file.write_text(
            store_yaml(modbus_port=port, broker_port=mosquitto.port, api_port=api_port), "utf-8"
        )
        cfg = load_config(config_file)
        control = RemoteConfig(config_file, Path(cfg.store.data_dir))
        hub_cfg = HubConfig.model_validate(
            {
                "hub_id": "rcat-hub",
                "database": str(tmp_path / "hub.db"),
                "broker": {"host": mosquitto.host, "port": mosquitto.port, "client_id": "rcat-hub"},
                "api": {"host": "127.0.0.1", "port": 0},
                "heartbeat_s": 1.0,
            }
        )
        hub_ready = asyncio.Event()
        hub_port: list[int] = []
        gw_task = asyncio.create_task(control.run(cfg), name="rcat.gateway")
        hub_task = asyncio.create_task(
            run_hub(hub_cfg, ready=hub_ready, api_port_out=hub_port), name="rcat.hub"
        )
        http = httpx.AsyncClient(timeout=10)
        try:
            async with asyncio.timeout(30):
                await hub_ready.wait()
            stack = Stack(control, folder, f"http://127.0.0.1:{hub_port[0]}", http)

            async def online() -> bool:
                return any(e["store_id"] == STORE and e.get("online") for e in await stack.hub("/api/fleet"))

            await eventually(online, 30, "the hub sees the store online")
            yield stack
        finally:
            await http.aclose()
            for t in (gw_task, hub_task):
                t.cancel()
            for r in await asyncio.gather(gw_task, hub_task, return_exceptions=True):
                if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                    raise r


async def test_catalogue_push_and_error_rate_rollback(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with running_stack(tmp_path, mosquitto) as s:
        catalogue_file = s.folder / "catalogue.yaml"
        config_file = s.folder / "store.yaml"
        original_catalogue = catalogue_file.read_text(encoding="utf-8")
        original_config = config_file.read_text(encoding="utf-8")
        item = (await s.http.get(f"{s.gw_url}/api/catalogue/{GTIN}")).json()
        assert item["price"] == "3.50"

        # 1. A catalogue-only push with a new price: applied, served by the restarted gateway.
        new_catalogue = catalogue_yaml("4.20")
        rollout = await s.push(catalogue_text=new_catalogue, watch_s=0, note="price change")
        target = await s.target(rollout, lambda t: t["state"] != "pending", "catalogue push settled")
        assert target["state"] == "applied", target
        assert target["pushed"] == ["catalogue"]
        assert target["catalogue_version"] == parse_catalogue_yaml(new_catalogue).version
        assert target["previous_catalogue_version"] == parse_catalogue_yaml(original_catalogue).version
        assert catalogue_file.read_text(encoding="utf-8") == new_catalogue
        assert (
            catalogue_file.with_name("catalogue.yaml.previous").read_text(encoding="utf-8")
            == original_catalogue
        )
        assert config_file.read_text(encoding="utf-8") == original_config
        item = (await s.http.get(f"{s.gw_url}/api/catalogue/{GTIN}")).json()
        assert item["price"] == "4.20"
        whole = (await s.http.get(f"{s.gw_url}/api/catalogue")).json()
        assert whole["version"] == target["catalogue_version"]
        last = await s.hub(f"/api/stores/{STORE}/config")
        assert last["catalogue"]["text"] == new_catalogue
        assert last["catalogue"]["version"] == target["catalogue_version"]
        assert last["config"] is None

        # 2. A catalogue without the bin's SKU: rejected naming the SKU and the bin's line; nothing changes.
        gateway = s.control.gateway
        rollout = await s.push(catalogue_text=catalogue_yaml("4.20", with_bin_sku=False), watch_s=0)
        target = await s.target(rollout, lambda t: t["state"] != "pending", "bad catalogue settled")
        assert target["state"] == "rejected", target
        sku_line = 1 + original_config.splitlines().index(f"    sku: '{GTIN}'")
        assert (
            f"line {sku_line}: bins[0].sku: SKU '{GTIN}' of bin 'A01' is not in the catalogue catalogue.yaml"
            in (target["errors"])
        ), target
        assert target["error"].startswith("invalid catalogue:")
        assert catalogue_file.read_text(encoding="utf-8") == new_catalogue
        assert s.control.gateway is gateway

        # 3. A config whose transmitter points at a closed port: applied (it reaches the broker), then its
        # polls all fail; the watch rolls it back and HQ's target moves from applied to rolled_back.
        dead = free_port()
        broken = original_config.replace(
            f"port: {_modbus_port(original_config)}}}", f"port: {dead}}}"
        ).replace("safety_stock: 2", "safety_stock: 3")
        assert f"port: {dead}" in broken
        rollout = await s.push(config_yaml=broken, watch_s=6, note="bad bus")
        applied = await s.target(rollout, lambda t: t["state"] != "pending", "bad-bus push applied")
        assert applied["state"] == "applied", applied
        assert applied["watch"] == "watching"
        rolled = await s.target(rollout, lambda t: t["state"] == "rolled_back", "the watch rolls back")
        assert rolled["error"].startswith("rolled back: error rate "), rolled
        assert rolled["error"].endswith(" % > 2 % for 6 s"), rolled
        rate = float(rolled["error"].removeprefix("rolled back: error rate ").split(" %")[0])
        assert rate > 2.0
        assert rolled["watch"] == "rolled_back"
        assert config_file.read_text(encoding="utf-8") == original_config
        assert config_file.with_name("store.yaml.failed").read_text(encoding="utf-8") == broken

        async def polling_again() -> bool:
            gw = s.control.gateway
            return (
                gw is not None
                and gw.bins["A01"].safety_stock == 2
                and gw.config.version != applied["config_version"]
            )

        await eventually(polling_again, 30, "the previous config runs again")
        item = (await s.http.get(f"{s.gw_url}/api/catalogue/{GTIN}")).json()
        assert item["price"] == "4.20"  # the catalogue was not part of that push: untouched


def _modbus_port(text: str) -> int:
    line = next(line for line in text.splitlines() if "kind: tcp" in line)
    return int(line.split("port:")[1].strip(" }"))
