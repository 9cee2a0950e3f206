"""`shelfgate status` against a real running gateway (simulated transmitters, real Mosquitto), run as the real
command in a subprocess: healthy → 0, a dead device → 1 naming it, nothing listening → 2 with one line."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from edge.config import load_config
from edge.gateway import Gateway
from firmware_sims.runner import SimStore
from shelfgate.broker import Mosquitto, free_port
from shelfgate.demo import layout_from_config, point_config_at
from shelfgate.status import (
    EXIT_DEGRADED,
    EXIT_HEALTHY,
    EXIT_UNREACHABLE,
    Snapshot,
    assess,
    render_text,
    use_colour,
)

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 60.0

STORE_YAML = """\
store_id: status-001
data_dir: data
buses:
  - {{id: tcp1, kind: tcp, host: 127.0.0.1, port: 1, timeout_s: 0.3}}
{extra_bus}transmitters:
  - {{id: shelf-a, bus: tcp1, unit_id: 7, profile: wt-int32-abcd, poll_interval_s: 0.1}}
{extra_tx}alerts: {{dwell_s: 0.2, hysteresis_items: 1, silent_after_s: 2}}
bridge: {{heartbeat_s: 1, publish_timeout_s: 2}}
bins:
"""
DEAD_BUS = "  - {id: tcp2, kind: tcp, host: 127.0.0.1, port: 1, timeout_s: 0.2}\n"
DEAD_TX = "  - {id: shelf-dead, bus: tcp2, unit_id: 1, profile: wt-int32-abcd, poll_interval_s: 0.1}\n"


def _bin(bin_id: str, device: str) -> str:
    return textwrap.indent(
        f"- id: {bin_id}\n  sku: '06900000000{len(bin_id)}{bin_id[-1]}'\n  name: {{zh: 商品, en: Item {bin_id}}}\n"
        f"  unit_weight_g: 570\n  calibration: {{zero: 1000.0, span_g_per_unit: 0.1}}\n"
        f"  safety_stock: 2\n  max_stock: 20\n  device: {device}\n  channel: 0\n",
        "  ",
    )


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while True:
        if await check():
            return
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for: {what}")
        await asyncio.sleep(0.1)


@asynccontextmanager
async def running_gateway(tmp_path: Path, broker: Mosquitto, *, dead_device: bool) -> AsyncIterator[Gateway]:
    text = STORE_YAML.format(
        extra_bus=DEAD_BUS if dead_device else "", extra_tx=DEAD_TX if dead_device else ""
    ) + _bin("A1", "shelf-a")
    if dead_device:
        text += _bin("D1", "shelf-dead")
    cfg_file = tmp_path / "store.yaml"
    cfg_file.write_text(text, encoding="utf-8")
    base = load_config(cfg_file)
    layout = layout_from_config(base, seed=5, initial_counts={"A1": 8, "D1": 8})
    async with SimStore(layout, run_scenario=False) as sim:
        endpoints = dict(sim.endpoints)
        if dead_device:
            endpoints["tcp2"] = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
        cfg = point_config_at(
            base, endpoints, broker=(broker.host, broker.port), api_port=0, data_dir=tmp_path / "gw"
        )
        ready = asyncio.Event()
        gateway = Gateway(cfg, on_ready=lambda _g: ready.set())
        task = asyncio.create_task(gateway.run(), name="test.status.gateway")
        try:
            async with asyncio.timeout(WAIT_S):
                await ready.wait()
            yield gateway
        finally:
            task.cancel()
            results = await asyncio.gather(task, return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                    raise r


async def shelfgate_status(*args: str) -> tuple[int, str, str]:
    """Run `shelfgate status ARGS` as a separate process (it blocks on HTTP; the gateway runs in this loop)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shelfgate",
        "status",
        *args,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    async with asyncio.timeout(WAIT_S):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_healthy_gateway_exits_0(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with running_gateway(tmp_path, mosquitto, dead_device=False) as gateway:

        async def healthy() -> bool:
            devices = gateway.device_views()
            depth, _ = await gateway.store.depth()
            return (
                gateway.uplink is not None
                and gateway.uplink.connected
                and all(d["online"] for d in devices)
                and gateway.estimators["A1"].count is not None
                and depth == 0
            )

        await eventually(healthy, "device online, broker connected, outbox drained")
        url = f"http://127.0.0.1:{gateway.api_port}"
        code, out, err = await shelfgate_status("--url", url)
        assert (code, err) == (EXIT_HEALTHY, ""), out
        assert "HEALTHY" in out
        assert "\x1b[" not in out, "no colour when stdout is not a terminal"
        assert "store status-001" in out
        assert "broker   connected" in out
        assert "devices  1/1 online" in out
        device_row = next(line for line in out.splitlines() if line.strip().startswith("shelf-a"))
        assert device_row.split()[:3] == ["shelf-a", "modbus", "online"]
        assert "alerts   none active" in out
        assert "bins     1 total: out 0, low 0" in out
        assert len(out.splitlines()) <= 24, "one screen"

        code, out, err = await shelfgate_status("--url", url, "--json")
        assert code == EXIT_HEALTHY
        doc = json.loads(out)
        assert doc["schema"] == "shelfgate.status/1"
        assert doc["state"] == "healthy"
        assert doc["reasons"] == []
        assert doc["gateway"]["gateway_id"] == gateway.gateway_id
        assert [(d["device_id"], d["online"]) for d in doc["devices"]] == [("shelf-a", True)]
        assert doc["bins_by_level"] == {"ok": 1}


async def test_a_dead_device_is_degraded_and_named(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with running_gateway(tmp_path, mosquitto, dead_device=True) as gateway:

        async def dead_seen() -> bool:
            views = {d["device_id"]: d for d in gateway.device_views()}
            return (
                gateway.uplink is not None
                and gateway.uplink.connected
                and views["shelf-a"]["online"]
                and not views["shelf-dead"]["online"]
                and views["shelf-dead"]["errors"] > 0
                and any(a.bin_id == "D1" for a in gateway.rules.active())
            )

        await eventually(dead_seen, "shelf-dead offline with its sensor fault raised, the rest fine")
        code, out, err = await shelfgate_status("--url", f"http://127.0.0.1:{gateway.api_port}")
        assert (code, err) == (EXIT_DEGRADED, ""), out
        assert "DEGRADED" in out
        assert "- 1 device(s) offline: shelf-dead" in out
        assert "broker   connected" in out  # the only reason is the device
        rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("  shelf-")}
        assert rows["shelf-dead"][1:4] == ["modbus", "OFFLINE", "never"]
        assert rows["shelf-a"][2] == "online"
        assert list(rows) == ["shelf-dead", "shelf-a"], "offline devices first"
        assert "sensor_fault 1" in out


async def test_nothing_listening_exits_2_with_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = await shelfgate_status("--url", url)
    assert code == EXIT_UNREACHABLE
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"shelfgate status: gateway API at {url} unreachable: ")
    assert "refused" in err.lower()

    code, out, _ = await shelfgate_status("--url", url, "--json")
    assert code == EXIT_UNREACHABLE
    assert json.loads(out)["state"] == "unreachable"


async def test_a_bad_url_is_refused() -> None:
    code, out, err = await shelfgate_status("--url", "file:///etc/passwd")
    assert (code, out) == (EXIT_UNREACHABLE, "")
    assert "--url must be http" in err


HEALTH = {
    "status": "ok",
    "store_id": "s1",
    "gateway_id": "s1-gw",
    "version": "0.1.0",
    "config_version": "abc",
    "uptime_s": 7300.0,
    "uplink_connected": True,
    "outbox_depth": 120,
    "outbox_oldest_age_s": 900.0,
    "last_seq": 5000,
}


def test_an_old_outbox_and_a_lost_broker_are_reasons() -> None:
    snap = Snapshot("http://x", {**HEALTH, "uplink_connected": False}, [], [], [])
    assessment = assess(snap, max_outbox_age_s=600)
    assert assessment.exit_code == EXIT_DEGRADED
    assert assessment.reasons == [
        "not connected to the MQTT broker",
        "outbox: 120 event(s) waiting, oldest 15 min 00 s (limit 10 min 00 s)",
    ]
    assert assess(snap, max_outbox_age_s=1200).reasons == ["not connected to the MQTT broker"]


def test_colour_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_colour(Tty())
    assert not use_colour(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_colour(Tty())

    snap = Snapshot("http://x", HEALTH, [{"device_id": "tx1", "family": "modbus", "online": False}], [], [])
    coloured = render_text(snap, assess(snap, max_outbox_age_s=600), colour=True)
    assert "\x1b[1;31mOFFLINE\x1b[0m" in coloured
    plain = render_text(snap, assess(snap, max_outbox_age_s=600), colour=False)
    assert "\x1b[" not in plain
    assert "up 2 h 01 min" in plain
