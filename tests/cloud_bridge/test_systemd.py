"""sd_notify and the health-gated watchdog, against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_bridge.systemd import Liveness, SdNotifier, Watchdog


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket, as systemd's notify socket is."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5.0)
    yield sock, path
    sock.close()


def _received(sock: socket.socket) -> list[str]:
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(5.0)
    return out


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ready_and_status_reach_the_socket(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    n = SdNotifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("polling 4 transmitters")
    assert sock.recv(4096) == b"READY=1\nSTATUS=polling 4 transmitters"
    assert n.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    assert n.sent == 2


def test_abstract_namespace_socket() -> None:
    name = f"shelfgate-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5.0)
    try:
        assert SdNotifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(4096) == b"READY=1"
    finally:
        sock.close()


def test_without_systemd_nothing_is_sent_and_nothing_fails() -> None:
    n = SdNotifier({})
    assert not n.enabled
    assert not n.ready()
    assert n.watchdog_interval_s is None


def test_a_vanished_socket_is_logged_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    n = SdNotifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    with caplog.at_level(logging.WARNING, logger="cloud_bridge.systemd"):
        assert not n.notify("WATCHDOG=1")
        assert not n.notify("WATCHDOG=1")
    assert n.failed == 2
    assert len([r for r in caplog.records if "refused" in r.getMessage()]) == 1


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "junk"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
    ],
)
def test_watchdog_interval_from_the_environment(env: dict[str, str], expected: float | None) -> None:
    assert SdNotifier(env).watchdog_interval_s == expected


def test_liveness_names_stale_tasks_with_their_age() -> None:
    clock = _Clock()
    live = Liveness(clock=clock)
    live.expect("ticker", 2.0)
    live.expect("db", 10.0)
    clock.now += 3.0
    assert live.stale() == ["ticker (3.0 s)"]
    live.beat("ticker")
    assert live.stale() == []
    live.forget("db")
    clock.now += 11.0
    assert live.stale() == ["ticker (11.0 s)"]


async def test_pings_while_healthy_withholds_while_wedged_and_resumes(
    notify_socket: tuple[socket.socket, str], caplog: pytest.LogCaptureFixture
) -> None:
    sock, path = notify_socket
    notifier = SdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})
    live = Liveness()
    live.expect("ticker", 0.5)
    dog = Watchdog(notifier, live)
    assert dog.interval_s == pytest.approx(0.05)

    messages: list[str] = []

    async def beat_for(seconds: float) -> None:
        for _ in range(int(seconds / 0.02)):
            live.beat("ticker")
            await asyncio.sleep(0.02)
            messages.extend(_received(sock))  # systemd reads promptly; its queue holds only 10 datagrams

    async def idle_until_withheld(n: int) -> None:
        while dog.withheld < n:
            await asyncio.sleep(0.05)
            messages.extend(_received(sock))

    with caplog.at_level(logging.INFO, logger="cloud_bridge.systemd"):
        task = asyncio.create_task(dog.run())
        await beat_for(0.3)
        healthy_pings = dog.pings
        assert healthy_pings >= 1
        assert dog.withheld == 0
        # The ticker wedges: no beats. Once its beat is older than 0.5 s, the pings must stop.
        await idle_until_withheld(5)
        pings_while_wedged = dog.pings
        await idle_until_withheld(10)
        assert dog.pings == pings_while_wedged, "a ping went out while the ticker was wedged"
        await beat_for(0.3)
        assert dog.pings > pings_while_wedged
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    messages.extend(_received(sock))
    assert messages
    assert set(messages) == {"WATCHDOG=1"}
    assert len(messages) == dog.pings
    withheld_logs = [r for r in caplog.records if "withholding" in r.getMessage()]
    assert len(withheld_logs) == 1, "one log line per unhealthy spell, not one per interval"
    assert "ticker" in withheld_logs[0].getMessage()
    assert any("resume" in r.getMessage() for r in caplog.records)


async def test_a_probe_that_hangs_or_fails_withholds_the_ping(
    notify_socket: tuple[socket.socket, str],
) -> None:
    _, path = notify_socket
    notifier = SdNotifier({"NOTIFY_SOCKET": path})
    hang = asyncio.Event()

    async def db_roundtrip() -> None:
        await hang.wait()

    async def broken() -> None:
        raise OSError("disk I/O error")

    dog = Watchdog(notifier, Liveness(), interval_s=0.05, probes={"db": db_roundtrip}, probe_timeout_s=0.05)
    reason = await dog.check()
    assert reason is not None
    assert "probe db did not answer" in reason
    hang.set()
    assert await dog.check() is None
    dog.probes["disk"] = broken
    reason = await dog.check()
    assert reason is not None
    assert "disk I/O error" in reason


def test_a_full_notify_queue_never_blocks_the_loop(notify_socket: tuple[socket.socket, str]) -> None:
    """systemd's datagram queue is short (net.unix.max_dgram_qlen, 10 by default): a blocking send into a full
    queue would wedge the very loop the watchdog reports on. Sends must fail fast and be counted instead."""
    _, path = notify_socket
    n = SdNotifier({"NOTIFY_SOCKET": path})
    results = [n.notify("WATCHDOG=1") for _ in range(200)]  # a blocking send would hang here (pytest-timeout)
    assert results.count(True) == n.sent
    assert n.sent >= 1
    assert n.failed == 200 - n.sent
    assert n.failed > 0, "nothing read the socket, so some sends must have found it full"


async def test_no_watchdog_requested_means_the_task_ends_at_once() -> None:
    dog = Watchdog(SdNotifier({}), Liveness())
    async with asyncio.timeout(5):
        await dog.run()
    assert dog.pings == 0
