"""`shelfgate sim`: serve() in-process, and main() as a real subprocess serving a saved layout."""

from __future__ import annotations

import asyncio
import io
import sys
from pathlib import Path

from pymodbus.client import AsyncModbusTcpClient

from firmware_sims.cli import main, serve
from firmware_sims.layout import layout_to_json
from firmware_sims.testing import WT_INT32_ABCD, read_channels, small_layout

ROOT = Path(__file__).resolve().parents[2]


async def test_serve_prints_endpoints_and_serves_until_the_duration() -> None:
    out = io.StringIO()
    ready = asyncio.Event()
    task = asyncio.create_task(serve(small_layout(), 30.0, out=out, ready=ready), name="test.serve")
    try:
        async with asyncio.timeout(10):
            await ready.wait()
        lines = dict(line.split(": ", 1) for line in out.getvalue().splitlines())
        assert set(lines) == {"rtu1", "tcp1"}
        assert lines["rtu1"].startswith("/dev/pts/")
        port = int(lines["tcp1"].removeprefix("tcp://127.0.0.1:"))
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1.0, retries=0)
        assert await client.connect()
        try:
            readings = await read_channels(client, 1, WT_INT32_ABCD, [0, 1])
        finally:
            client.close()
        assert all(r.value > 1000 for r in readings)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_main_serves_a_saved_layout_for_a_duration(tmp_path: Path) -> None:
    layout_file = tmp_path / "layout.json"
    layout_file.write_text(layout_to_json(small_layout()), encoding="utf-8")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "firmware_sims.cli",
        "--layout",
        str(layout_file),
        "--duration",
        "2",
        "--seed",
        "5",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    async with asyncio.timeout(60):
        stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    lines = stdout.decode().splitlines()
    assert [line.split(": ")[0] for line in lines] == ["rtu1", "tcp1"]
    assert lines[1].startswith("tcp1: tcp://127.0.0.1:")


def test_main_refuses_a_bad_layout(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": 1, "buses": [{"bus_id": "x", "kind": "can"}]}', encoding="utf-8")
    assert main(["--layout", str(bad)]) == 2
    assert main(["--layout", str(tmp_path / "missing.json")]) == 2
