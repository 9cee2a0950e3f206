"""Remote configuration end to end (issue #4 part 7): hub API → real Mosquitto → the `shelfgate run` runner
(`edge.remote_config.RemoteConfig`) with a real gateway → `cmd-result` → rollout progress at the hub.

One stack, three pushes in order: a good one (applied, the gateway restarts on it and reports the new config
version), an invalid one (rejected with key and line, nothing changes), and one that cannot come up (its broker
port is closed: rolled back, the previous config running again, the reason in the result).
"""

from __future__ import annotations

import asyncio
import hashlib
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
from hub.config import HubConfig
from hub.service import run_hub
from shelfgate.broker import Mosquitto

pytestmark = pytest.mark.timeout(180)

STORE = "rc-001"


def store_yaml(broker_port: int, *, api_port: int) -> str:
    # The transmitter's bus points at a closed port: the runtime polls (and counts errors) without a simulator,
    # which is all a config push needs to exercise.
    return f"""\
store_id: {STORE}
data_dir: data
buses:
  - {{id: tcp1, kind: tcp, host: 127.0.0.1, port: 1}}
transmitters:
  - {{id: tx1, bus: tcp1, unit_id: 1, profile: wt-int32-abcd, poll_interval_s: 2}}
broker: {{host: 127.0.0.1, port: {broker_port}}}
api: {{host: 127.0.0.1, port: {api_port}}}
bridge: {{heartbeat_s: 1}}
bins:
  - id: A01
    sku: '06901234567892'
    name: {{zh: 商品, en: Item}}
    unit_weight_g: 350
    calibration: {{zero: 1000, span_g_per_unit: 0.05}}
    safety_stock: 4
    max_stock: 12
    device: tx1
    channel: 0
"""


def version_of(text: str) -> str:
    """`load_config`'s version of a file with no installer overlay: sha256 of its bytes, 12 hex digits."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def closed_port() -> int:
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
    config_file: Path
    hub_url: str
    http: httpx.AsyncClient

    async def hub(self, path: str) -> Any:
        r = await self.http.get(f"{self.hub_url}{path}")
        r.raise_for_status()
        return r.json()

    async def push(self, text: str, probation_s: float = 30.0) -> str:
        r = await self.http.post(
            f"{self.hub_url}/api/config-rollouts",
            json={"stores": [STORE], "config_yaml": text, "probation_s": probation_s, "note": "test"},
        )
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["counts"]["pending"] == 1
        return str(body["rollout_id"])

    async def settled(self, rollout_id: str) -> dict[str, Any]:
        async def done() -> dict[str, Any] | None:
            view: dict[str, Any] = await self.hub(f"/api/config-rollouts/{rollout_id}")
            return view if view["done"] else None

        found: dict[str, Any] = await eventually(done, 60, f"rollout {rollout_id} settled")
        return found

    async def fleet_config_version(self) -> str | None:
        for entry in await self.hub("/api/fleet"):
            if entry["store_id"] == STORE and entry.get("online"):
                return str(entry["config_version"])
        return None


@asynccontextmanager
async def running_stack(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[Stack]:
    folder = tmp_path / "store"
    folder.mkdir()
    config_file = folder / "store.yaml"
    # A fixed API port, as in production: the restarted runtime must bind it again.
    config_file.write_text(store_yaml(mosquitto.port, api_port=closed_port()), encoding="utf-8")
    cfg = load_config(config_file)
    control = RemoteConfig(config_file, Path(cfg.store.data_dir))
    hub_cfg = HubConfig.model_validate(
        {
            "hub_id": "rc-hub",
            "database": str(tmp_path / "hub.db"),
            "broker": {"host": mosquitto.host, "port": mosquitto.port, "client_id": "rc-hub"},
            "api": {"host": "127.0.0.1", "port": 0},
            "heartbeat_s": 1.0,
        }
    )
    hub_ready = asyncio.Event()
    hub_port: list[int] = []
    gw_task = asyncio.create_task(control.run(cfg), name="rc.gateway")
    hub_task = asyncio.create_task(run_hub(hub_cfg, ready=hub_ready, api_port_out=hub_port), name="rc.hub")
    http = httpx.AsyncClient(timeout=10)
    try:
        async with asyncio.timeout(30):
            await hub_ready.wait()
        stack = Stack(control, config_file, f"http://127.0.0.1:{hub_port[0]}", http)
        await eventually(stack.fleet_config_version, 30, "the hub sees the store online")
        yield stack
    finally:
        await http.aclose()
        for t in (gw_task, hub_task):
            t.cancel()
        for r in await asyncio.gather(gw_task, hub_task, return_exceptions=True):
            if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                raise r


async def test_push_applies_rejects_and_rolls_back(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with running_stack(tmp_path, mosquitto) as s:
        original = s.config_file.read_text(encoding="utf-8")
        assert await s.fleet_config_version() == version_of(original)

        # 1. A good push: safety stock 4 → 7. The gateway restarts on it and proves itself; HQ sees it applied.
        good = original.replace("safety_stock: 4", "safety_stock: 7")
        rollout = await s.push(good)
        view = await s.settled(rollout)
        target = view["targets"][0]
        assert target["state"] == "applied", target
        assert target["config_version"] == version_of(good)
        assert target["previous_version"] == version_of(original)
        assert (
            target["sent_count"] >= 2
        )  # the first delivery restarts the gateway; the answer comes on a resend
        assert s.config_file.read_text(encoding="utf-8") == good
        assert s.config_file.with_name("store.yaml.previous").read_text(encoding="utf-8") == original
        gateway = s.control.gateway
        assert gateway is not None
        assert gateway.bins["A01"].safety_stock == 7
        # The restarted runtime serves the staff API on the same fixed port, with the new threshold.
        assert gateway.api_port == api_port_of(original)
        stock = (await s.http.get(f"http://127.0.0.1:{gateway.api_port}/api/stock")).json()
        assert [(b["bin_id"], b["safety_stock"]) for b in stock] == [("A01", 7)]

        async def fleet_has_new_version() -> bool:
            return await s.fleet_config_version() == version_of(good)

        await eventually(fleet_has_new_version, 30, "the fleet view reports the new config version")
        restarts = s.control.restarts

        # 2. An invalid push: refused with key and line, nothing changes, no restart.
        bad = good.replace("safety_stock: 7", "safety_stock: -3")
        view = await s.settled(await s.push(bad))
        target = view["targets"][0]
        assert target["state"] == "rejected", target
        line = 1 + bad.splitlines().index("    safety_stock: -3")
        assert any(e.startswith(f"line {line}: bins[0].safety_stock:") for e in target["errors"]), target
        assert "invalid config" in target["error"]
        assert target["config_version"] == version_of(good)
        assert s.config_file.read_text(encoding="utf-8") == good
        assert s.control.gateway is gateway
        assert s.control.restarts == restarts

        # 3. A push that cannot come up: its broker port is closed. Rolled back after its probation, the good
        # config running again, and the reason reported.
        dead_port = closed_port()
        unreachable = good.replace(f"port: {_broker_port(good)}}}", f"port: {dead_port}}}").replace(
            "safety_stock: 7", "safety_stock: 9"
        )
        assert f"port: {dead_port}" in unreachable
        view = await s.settled(await s.push(unreachable, probation_s=3))
        target = view["targets"][0]
        assert target["state"] == "rolled_back", target
        assert target["error"].startswith(f"rolled back: not connected to the broker 127.0.0.1:{dead_port}")
        assert target["config_version"] == version_of(good)
        assert s.config_file.read_text(encoding="utf-8") == good
        assert s.config_file.with_name("store.yaml.failed").read_text(encoding="utf-8") == unreachable
        assert s.control.gateway is not None
        assert s.control.gateway.bins["A01"].safety_stock == 7
        await eventually(fleet_has_new_version, 30, "the fleet view reports the good config again")

        # Progress for HQ: the list shows all three, newest first, each settled.
        listed = await s.hub("/api/config-rollouts")
        assert [r["targets"][0]["state"] for r in listed[:3]] == ["rolled_back", "rejected", "applied"]


def api_port_of(text: str) -> int:
    line = next(line for line in text.splitlines() if line.startswith("api:"))
    return int(line.split("port:")[1].strip(" }"))


def _broker_port(text: str) -> int:
    line = next(line for line in text.splitlines() if line.startswith("broker:"))
    return int(line.split("port:")[1].strip(" }"))
