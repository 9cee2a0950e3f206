"""Shared fixtures (a real Mosquitto on a free loopback port, fresh for each test that asks for one) and the
Hypothesis profile every property test runs under."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from shelfgate.broker import Mosquitto

# Hypothesis' default 200 ms per-example deadline is a timed assertion: on a shared 2-core CI machine a
# correct codec example occasionally takes longer and the test "fails" (seen: MT-SICS round trip under load).
# Correctness is what these properties check; speed lives in bench/.
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
