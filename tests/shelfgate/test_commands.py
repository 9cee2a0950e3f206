"""The composition root's own pieces: the embedded broker fallback and `shelfgate sim`."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

import aiomqtt
from pymodbus.client import AsyncModbusTcpClient

from shelfgate.broker import EmbeddedBroker


async def test_embedded_broker_carries_qos1_and_retained_messages() -> None:
    """The demo's fallback when Mosquitto is absent must do what the uplink and hub rely on."""
    broker = EmbeddedBroker()
    await broker.start()
    try:
        assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="pub") as pub:
            await pub.publish("shelfgate/v1/stores/s1/status", b'{"state":"online"}', qos=1, retain=True)
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="sub") as sub:
            await sub.subscribe("shelfgate/v1/stores/+/#", qos=1)
            async with aiomqtt.Client("127.0.0.1", broker.port, identifier="pub2") as pub:
                await pub.publish("shelfgate/v1/stores/s1/events", b"batch", qos=1)
            got: dict[str, bytes] = {}
            async with asyncio.timeout(10):
                async for msg in sub.messages:
                    assert isinstance(msg.payload, bytes)
                    got[str(msg.topic)] = msg.payload
                    if len(got) == 2:
                        break
        assert got == {
            "shelfgate/v1/stores/s1/status": b'{"state":"online"}',
            "shelfgate/v1/stores/s1/events": b"batch",
        }
    finally:
        await broker.stop()


async def test_shelfgate_sim_serves_the_demo_store_transmitters() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shelfgate",
        "sim",
        "--duration",
        "20",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        endpoints: dict[str, str] = {}
        async with asyncio.timeout(30):
            while len(endpoints) < 2:
                line = (await proc.stdout.readline()).decode()
                assert line, "sim exited before printing its endpoints"
                m = re.match(r"^(rtu1|tcp1): (\S+)$", line.strip())
                if m:
                    endpoints[m[1]] = m[2]
        assert endpoints["rtu1"].startswith("/dev/pts/")
        host, port = endpoints["tcp1"].removeprefix("tcp://").rsplit(":", 1)
        # tx3 of the demo store: unit 1 on the TCP bus, int32 ABCD, channel 0 at register 0.
        client = AsyncModbusTcpClient(host, port=int(port), timeout=2, retries=0)
        await client.connect()
        try:
            rr = await client.read_holding_registers(0, count=2, device_id=1)
            counts = (rr.registers[0] << 16) | rr.registers[1]
        finally:
            client.close()
        # C01 holds chips (78 g) at zero 1000 counts, 0.1 g per count: a stocked plate reads well above zero.
        assert counts > 1000 + 5 * 78 / 0.1
    finally:
        proc.terminate()
        await proc.communicate()
