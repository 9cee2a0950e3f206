"""A hub worker speaks sd_notify like the gateway (systemd/shelfgate-hub.service is Type=notify with WatchdogSec):
READY=1 once the API listens, WATCHDOG=1 while the loop and database answer, STOPPING=1 on a stop — against a real
AF_UNIX datagram socket standing in for systemd, a real SQLite file and the real uvicorn port. No broker is
needed: ingest retries in the background, and a missing broker must not hold back readiness or the pings.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.config import HubConfig
from hub.service import run_hub

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.setblocking(False)
    yield sock
    sock.close()


async def next_message(sock: socket.socket, timeout_s: float = 20.0) -> str:
    """The next datagram (hang guard: `timeout_s`)."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout_s):
        data = await loop.sock_recv(sock, 4096)
    return data.decode()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_hub_says_ready_pings_and_stopping(
    tmp_path: Path, notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # WatchdogSec=1: a ping every 0.5 s while healthy
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    config = HubConfig.model_validate(
        {
            "hub_id": "sd-hub",
            "database": str(tmp_path / "hub.db"),
            "broker": {"host": "127.0.0.1", "port": closed_port(), "client_id": "sd-hub"},
            "api": {"host": "127.0.0.1", "port": 0},
        }
    )
    ports: list[int] = []
    task = asyncio.create_task(run_hub(config, api_port_out=ports))
    try:
        ready = await next_message(notify_socket)
        assert ready.startswith("READY=1\nSTATUS=hub sd-hub serving http://127.0.0.1:")
        assert ready.endswith(f":{ports[0]}")
        pings = [await next_message(notify_socket) for _ in range(2)]
        assert pings == ["WATCHDOG=1", "WATCHDOG=1"]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    tail = []
    while True:
        try:
            tail.append(notify_socket.recv(4096).decode())
        except BlockingIOError:
            break
    assert tail[-1:] == ["STOPPING=1"]
