"""The gateway under systemd's notify protocol: READY=1, health-gated WATCHDOG=1, STOPPING=1 on SIGTERM.

A bound AF_UNIX datagram socket stands in for systemd's notify socket (sd_notify(3)); everything else is real:
the `shelfgate run` process, its store, its (dead) device and its signal handling.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cloud_bridge.contract import utc_now
from edge import gateway as gateway_module
from edge.config import load_config
from edge.gateway import Gateway
from shelfgate.broker import free_port

pytestmark = pytest.mark.timeout(120)


def _config(tmp_path: Path) -> Path:
    text = textwrap.dedent(
        f"""\
        store_id: notify-001
        data_dir: data
        buses: [{{id: tcp1, kind: tcp, host: 127.0.0.1, port: {free_port()}, timeout_s: 0.2}}]
        transmitters: [{{id: tx1, bus: tcp1, unit_id: 1, profile: wt-int32-abcd, poll_interval_s: 0.2}}]
        broker: {{host: 127.0.0.1, port: {free_port()}}}
        api: {{host: 127.0.0.1, port: 0}}
        bins:
          - {{id: A01, sku: "06901234567892", name: {{zh: 可乐, en: Cola}}, unit_weight_g: 350,
              safety_stock: 2, max_stock: 10, device: tx1, channel: 0}}
        """
    )
    path = tmp_path / "store.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _notify_socket(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    return sock, path


def _recv(sock: socket.socket, timeout_s: float) -> str:
    sock.settimeout(timeout_s)
    return sock.recv(4096).decode()


def test_shelfgate_run_says_ready_pings_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    sock, path = _notify_socket(tmp_path)
    env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="1000000")
    with (
        sock,
        subprocess.Popen(
            [sys.executable, "-m", "shelfgate", "run", "--config", str(_config(tmp_path))],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        ) as proc,
    ):
        try:
            first = _recv(sock, 60)
            assert first.startswith("READY=1\nSTATUS=1 bins"), first
            pings = [_recv(sock, 30) for _ in range(3)]
            assert pings == ["WATCHDOG=1"] * 3
            proc.send_signal(signal.SIGTERM)
            while (message := _recv(sock, 30)) == "WATCHDOG=1":
                pass
            assert message == "STOPPING=1"
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err


async def test_a_wedged_ticker_or_database_stops_the_pings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    sock, path = _notify_socket(tmp_path)
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # a ping every 0.2 s while healthy
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.setattr(gateway_module, "TICKER_MAX_AGE_S", 1.0)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(_config(tmp_path))
    ready = asyncio.Event()
    gw = Gateway(cfg, on_ready=lambda _g: ready.set())
    caplog.set_level(logging.INFO)
    received: list[str] = []

    def drain() -> None:
        try:
            while True:
                received.append(sock.recv(4096).decode())
        except BlockingIOError:
            pass

    async def until(cond: object, what: str) -> None:
        async with asyncio.timeout(30):
            while not cond():  # type: ignore[operator]
                drain()
                await asyncio.sleep(0.05)
        drain()

    task = asyncio.create_task(gw.run(serve_api=False, uplink=False))
    try:
        async with asyncio.timeout(30):
            await ready.wait()
        dog = gw.watchdog
        assert dog is not None
        await until(lambda: dog.pings >= 3, "pings while healthy")
        assert any(m.startswith("READY=1") for m in received)

        # 1. The ticker wedges (its next store write never returns): no beats, so no pings.
        hang = asyncio.Event()

        async def stuck_persist(*_args: object) -> None:
            await hang.wait()

        monkeypatch.setattr(gw, "_persist", stuck_persist)
        monkeypatch.setattr(gw.rules, "tick", lambda _now: [utc_now()])
        await until(lambda: dog.withheld >= 3, "pings withheld for the ticker")
        pings = dog.pings
        await until(lambda: dog.withheld >= 6, "still withheld")
        assert dog.pings == pings, "no ping may go out while the ticker is wedged"
        assert any(
            "gateway.ticker" in r.getMessage() and "withholding" in r.getMessage() for r in caplog.records
        )
        monkeypatch.undo()  # the ticker recovers (and the env no longer matters: the notifier read it already)
        hang.set()
        await until(lambda: dog.pings > pings, "pings resume")

        # 2. The database thread wedges (a long SQLite call): the probe times out, no pings.
        withheld = dog.withheld
        blocker = asyncio.create_task(gw.store._run(time.sleep, 3.0))
        await until(lambda: dog.withheld > withheld, "pings withheld for the database")
        assert any("probe database" in r.getMessage() for r in caplog.records)
        await blocker
        pings = dog.pings
        await until(lambda: dog.pings > pings, "pings resume after the database answers")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        drain()
        sock.close()
    assert received[-1] == "STOPPING=1"
    assert set(received[1:-1]) == {"WATCHDOG=1"}
