"""A fixed RFID reader over LLRP in the running gateway: one reader, two antennas, two zones.

The reader is `firmware_sims.llrp.LlrpReaderSim` (the device side written from the LLRP 1.0.1 spec with
`struct`, independent of sllurp) on a loopback TCP port; the gateway drives it through sllurp (the optional
GPLv3 `llrp` extra, in the dev extra so CI runs this). Waits are hang guards, never timing claims.
"""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge.config import ConfigError, load_config
from edge.gateway import Gateway
from firmware_sims.layout import sgtin_tags
from firmware_sims.llrp import LlrpReaderSim, LlrpSimTag

pytest.importorskip("sllurp")
pytestmark = pytest.mark.timeout(120)

GTIN = "06901234567892"
TAG_A, TAG_B = sgtin_tags(GTIN, (1001, 1002))


def _config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "store.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            store_id: llrp-001
            data_dir: data
            api: {{host: 127.0.0.1, port: 0}}
            rfid_readers:
              - id: dock
                protocol: llrp
                host: 127.0.0.1
                llrp_port: {port}
                antennas:
                  - {{antenna: 1, zone: dock-shelf, kind: shelf}}
                  - {{antenna: 2, zone: dock-exit, kind: exit}}
            """
        ),
        encoding="utf-8",
    )
    return path


async def _until(check: Callable[[], Any], what: str) -> Any:
    async with asyncio.timeout(60):
        while True:
            value = await check()
            if value:
                return value
            await asyncio.sleep(0.1)


async def test_one_llrp_reader_serves_two_zones_by_antenna(tmp_path: Path) -> None:
    tags = [
        LlrpSimTag(TAG_A, antenna=1, read_probability=0.7),
        LlrpSimTag(TAG_B, antenna=1, read_probability=0.7),
    ]
    async with LlrpReaderSim(antennas=4, tags=tags, round_s=0.05) as sim:
        gateway = Gateway(load_config(_config(tmp_path, sim.port)))
        ready = asyncio.Event()
        gateway._on_ready = lambda _g: ready.set()
        task = asyncio.create_task(gateway.run(uplink=False), name="test.llrp.gateway")
        try:
            async with asyncio.timeout(30):
                await ready.wait()
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.api_port}", timeout=5) as http:

                async def zones() -> dict[str, set[str]]:
                    body = (await http.get("/api/rfid/zones")).json()
                    return {z["zone"]: {t["epc"].upper() for t in z["tags"]} for z in body}

                async def both_on_shelf() -> bool:
                    return (await zones()).get("dock-shelf") == {TAG_A, TAG_B}

                await _until(both_on_shelf, "both tags present in the shelf zone")
                body = (await http.get("/api/rfid/zones")).json()
                shelf = next(z for z in body if z["zone"] == "dock-shelf")
                assert shelf["counts"] == {GTIN: 2}, "SGTIN-96 decoded to the GTIN, counted per zone"

                # Tag A is carried to the exit: antenna 2 sees it, antenna 1 no longer does.
                sim.remove(TAG_A)
                sim.add(LlrpSimTag(TAG_A, antenna=2, read_probability=0.7))

                async def moved() -> bool:
                    z = await zones()
                    return z.get("dock-exit") == {TAG_A} and z.get("dock-shelf") == {TAG_B}

                await _until(moved, "tag A moved from the shelf zone to the exit zone")

                devices = (await http.get("/api/devices", params={"family": "rfid"})).json()
                (dock,) = devices
                assert dock["device_id"] == "dock"
                assert dock["online"] is True
                assert dock["protocol"] == "llrp"
                assert dock["zones"] == {"1": "dock-shelf", "2": "dock-exit"}
                assert dock["port"] == f"127.0.0.1:{sim.port}"
                assert dock["counters"]["tag_reads"] > 0
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


@pytest.mark.parametrize(
    ("reader", "message"),
    [
        (
            "{id: r1, protocol: llrp, port: /dev/ttyUSB0, antennas: [{antenna: 1, zone: z, kind: shelf}]}",
            "needs `host`",
        ),
        (
            "{id: r1, protocol: m100, host: 10.0.0.5, antennas: [{antenna: 1, zone: z, kind: shelf}]}",
            "needs `port`",
        ),
        ("{id: r1, antennas: [{antenna: 1, zone: z, kind: shelf}]}", "needs `port`"),
    ],
)
def test_reader_transport_errors_name_the_reader(tmp_path: Path, reader: str, message: str) -> None:
    path = tmp_path / "store.yaml"
    path.write_text(f"store_id: s\nrfid_readers:\n  - {reader}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert message in text
    assert "rfid_readers.0" in text or "rfid_readers[0]" in text
    assert ":3:" in text or "line 3" in text
