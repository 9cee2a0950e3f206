"""Shared fixtures (a real Mosquitto on a free loopback port, fresh for each test that asks for one) and the
Hypothesis profile every property test runs under."""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
import threading
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from shelfgate.broker import Mosquitto

# Hypothesis' default 200 ms per-example deadline is a timed assertion: on a shared 2-core CI machine a
# correct codec example occasionally takes longer and the test "fails" (seen: MT-SICS round trip under load).
# Correctness is what these properties check; speed lives in bench/.
# A shell starts a background job with SIGINT ignored (POSIX: asynchronous lists of a non-interactive shell),
# Python then leaves it ignored, and every child inherits that across exec: `shelfgate demo` would shrug off the
# Ctrl-C the demo test sends it. Tests of Ctrl-C need children that hear it, however the suite was launched.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

settings.register_profile("shelfgate", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("shelfgate")


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A running private broker; tests may stop/start/freeze it."""
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def _dump_pending_tasks(test_id: str) -> None:
    """Print every unfinished asyncio task with its stack.

    pytest-timeout only dumps thread stacks; for an async test that hangs they all show the event loop idle in
    `select`. The awaiting coroutine is what tells where the hang is.
    """
    print(f"\n+++ {test_id}: still running near its timeout; pending asyncio tasks +++", file=sys.stderr)
    for obj in gc.get_objects():
        try:
            if isinstance(obj, asyncio.Task) and not obj.done():
                print(f"--- {obj.get_name()}: {obj.get_coro()!r}", file=sys.stderr)
                obj.print_stack(limit=30, file=sys.stderr)
        except Exception as exc:  # noqa: BLE001 - a diagnostic must never fail the run itself
            print(f"(could not print a task: {exc!r})", file=sys.stderr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """Dump pending asyncio tasks shortly before pytest-timeout fires, so a hang names its await."""
    marker = item.get_closest_marker("timeout")
    timeout_s = float(marker.args[0]) if marker and marker.args else float(item.config.getini("timeout") or 0)
    timer: threading.Timer | None = None
    if timeout_s > 0:
        timer = threading.Timer(timeout_s * 0.95, _dump_pending_tasks, args=(item.nodeid,))
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()
