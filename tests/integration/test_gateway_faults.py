"""Bad input at start: no serial port, a dead TCP device, no broker — the gateway keeps serving what it can.

Each failure gets one clear message; the API answers; the dead devices' bins get a sensor-fault alert; every
event waits in the outbox; and when the broker appears later, the outbox drains to it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import textwrap
from pathlib import Path

import aiomqtt
import httpx
import pytest

from cloud_bridge.contract import EventBatch, events_topic
from edge.config import load_config
from edge.gateway import Gateway
from shelfgate.broker import Mosquitto, free_port

pytestmark = pytest.mark.timeout(120)

CONFIG = """\
store_id: fault-001
data_dir: data
buses:
  - {{id: rtu1, kind: rtu, port: /dev/shelfgate-no-such-port, timeout_s: 0.1}}
  - {{id: tcp1, kind: tcp, host: 127.0.0.1, port: {dead_port}, timeout_s: 0.2}}
transmitters:
  - {{id: tx1, bus: rtu1, unit_id: 1, profile: wt-float32-cdab, poll_interval_s: 0.1}}
  - {{id: tx2, bus: tcp1, unit_id: 1, profile: wt-int32-abcd, poll_interval_s: 0.1}}
broker: {{host: 127.0.0.1, port: {broker_port}}}
api: {{host: 127.0.0.1, port: 0}}
alerts: {{dwell_s: 0.2}}
bridge: {{heartbeat_s: 1, publish_timeout_s: 2}}
bins:
"""


def _bin(bin_id: str, device: str, channel: int) -> str:
    return textwrap.indent(
        f"- id: {bin_id}\n  sku: '0690000000{channel:04d}'\n  name: {{zh: 商品, en: Item}}\n"
        f"  unit_weight_g: 100\n  safety_stock: 2\n  max_stock: 10\n  device: {device}\n  channel: {channel}\n",
        "  ",
    )


async def test_dead_devices_and_no_broker_at_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    broker_port = free_port()
    text = CONFIG.format(dead_port=free_port(), broker_port=broker_port)
    text += _bin("R1", "tx1", 0) + _bin("T1", "tx2", 0) + _bin("T2", "tx2", 1)
    cfg_file = tmp_path / "store.yaml"
    cfg_file.write_text(text, encoding="utf-8")
    cfg = load_config(cfg_file)

    ready = asyncio.Event()
    gateway = Gateway(cfg, on_ready=lambda _g: ready.set())
    caplog.set_level(logging.INFO)
    task = asyncio.create_task(gateway.run(), name="fault.gateway")
    broker: Mosquitto | None = None
    try:
        await asyncio.wait_for(ready.wait(), 20)
        base = f"http://127.0.0.1:{gateway.api_port}"
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            # The API serves while every device and the broker are missing.
            health = (await http.get("/api/health")).json()
            assert health["status"] == "ok"
            assert health["uplink_connected"] is False

            async def faults_raised() -> set[str]:
                alerts = (await http.get("/api/alerts")).json()
                return {a["bin_id"] for a in alerts if a["kind"] == "sensor_fault"}

            deadline = asyncio.get_running_loop().time() + 30
            while await faults_raised() != {"R1", "T1", "T2"}:
                assert asyncio.get_running_loop().time() < deadline, (
                    "sensor faults for every bin of a dead device"
                )
                await asyncio.sleep(0.2)
            devices = {d["device_id"]: d for d in (await http.get("/api/devices")).json()}
            assert devices["tx1"]["online"] is False
            assert devices["tx2"]["online"] is False
            assert devices["tx2"]["counters"]["errors"] > 0

            # Availability is state: one warning per device that went away, not one per failed poll.
            await asyncio.sleep(1.0)
            offline_lines = [
                r for r in caplog.records if r.levelno == logging.WARNING and "tx2" in r.getMessage()
            ]
            assert len(offline_lines) == 1, [r.getMessage() for r in offline_lines]

            depth, _ = await gateway.store.depth()
            last_seq = await gateway.store.last_seq()
            assert depth == last_seq >= 3, "every alert event waits in the outbox while the broker is down"

            # The broker appears on the configured port: the outbox drains to it, seqs 1..N in order.
            broker = Mosquitto(tmp_path / "mqtt", port=broker_port)
            received: list[int] = []
            broker.start()
            async with aiomqtt.Client("127.0.0.1", broker_port, identifier="fault-observer") as sub:
                await sub.subscribe(events_topic("fault-001"), qos=1)

                # Events published before this subscription are not retained; the gateway's own reconnect
                # backoff (≤ 30 s) normally delays its first publish past this point, and the ledger is the
                # check below either way.
                async def drained() -> None:
                    while True:
                        d, _ = await gateway.store.depth()
                        if d == 0:
                            return
                        await asyncio.sleep(0.1)

                await asyncio.wait_for(drained(), 60)
                try:
                    async with asyncio.timeout(2):
                        async for msg in sub.messages:
                            batch = EventBatch.model_validate(json.loads(bytes(msg.payload)))
                            received.extend(e.seq for e in batch.events)
                except TimeoutError:
                    pass
            ledger = [r.seq for r in await gateway.store.ledger()]
            assert ledger == list(range(1, len(ledger) + 1)), "seq is gap-free"
            assert received == sorted(received)
            assert set(received) <= set(ledger)
    finally:
        task.cancel()
        results = await asyncio.gather(task, return_exceptions=True)
        if broker is not None:
            broker.stop()
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
            raise r
