"""The inventory engine runs on monotonic time; events keep wall time (edge/gateway.py `EngineClock`).

Found by tests/reliability (docs/reliability.md, bugs found, item 2): after the wall clock stepped back
(NTP correcting a bad RTC at boot), the estimators' windows and the alert rules' dwell saw time go backwards
and counting stalled until wall time caught up. The seam here is `time.time` (the wall clock, stepped by the
test) and the samples' own `mono`/`ts` (the driver stamps both); the gateway, its estimators, alert rules and
SQLite store are real. No timed assertions: the samples carry their times.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import pytest

from drivers.modbus.models import Sample
from drivers.modbus.protocol import ChannelReading
from edge.config import load_config
from edge.gateway import Gateway

STEP_BACK_S = 3600.0
"""One hour back, as in tests/reliability `test_moves_after_a_backward_clock_step_are_counted`."""
SAMPLE_PERIOD_S = 0.1
HISTORY_S = 10.0
"""The samples are dated this far back (by `mono`), so the alert dwell (0.2 s) has run out when the test
ticks the rules; the 35 cycles fed span 3.5 s of it."""
SLACK_S = HISTORY_S + 5.0
"""How far an event stamp may sit from the wall clock at the step: the samples are up to HISTORY_S old."""

STORE_YAML = """\
store_id: clock-001
data_dir: {data_dir}
buses:
  - {{id: tcp1, kind: tcp, host: 127.0.0.1, port: 1, timeout_s: 0.3}}
transmitters:
  - {{id: t1, bus: tcp1, unit_id: 1, profile: wt-int32-abcd, poll_interval_s: 0.1}}
alerts: {{dwell_s: 0.2, hysteresis_items: 1}}
bins:
  - id: B1
    sku: '06900000000011'
    name: {{zh: 商品B1, en: Item B1}}
    unit_weight_g: 100.0
    calibration: {{zero: 0.0, span_g_per_unit: 1.0}}
    safety_stock: 4
    max_stock: 20
    device: t1
    channel: 0
"""


class WallClock:
    """`time.time` with a step the test controls (the NTP step); the real clock underneath."""

    def __init__(self) -> None:
        self.offset_s = 0.0
        self._real = time.time

    def __call__(self) -> float:
        return self._real() + self.offset_s


@pytest.fixture
def wall(monkeypatch: pytest.MonkeyPatch) -> WallClock:
    clock = WallClock()
    monkeypatch.setattr(time, "time", clock)
    return clock


def _epoch(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


class Feeder:
    """Transmitter cycles as the Modbus driver makes them: `ts` from the (stepped) wall clock, `mono` advancing."""

    def __init__(self, gateway: Gateway, wall: WallClock) -> None:
        self.gateway = gateway
        self.wall = wall
        self.mono = time.monotonic() - HISTORY_S  # already taken: the dwell has run out by "now"

    async def hold(self, grams: float, cycles: int = 12) -> None:
        for _ in range(cycles):
            self.mono += SAMPLE_PERIOD_S
            reading = ChannelReading(0, grams, stable=True)
            ts = self.wall() - (time.monotonic() - self.mono)  # the wall clock when `mono` was read
            await self.gateway._on_sample(Sample("t1", ts, self.mono, (reading,)))


async def test_a_backward_wall_clock_step_does_not_stall_counting(tmp_path: Path, wall: WallClock) -> None:
    cfg_file = tmp_path / "store.yaml"
    cfg_file.write_text(STORE_YAML.format(data_dir=tmp_path / "gw"), encoding="utf-8")
    gateway = Gateway(load_config(cfg_file))
    async with gateway.store:
        await gateway._restore()
        feed = Feeder(gateway, wall)
        await feed.hold(500.0)
        assert gateway.estimators["B1"].count == 5
        before_step = await gateway.store.ledger()

        # A shopper takes two (below safety stock, 4: `low` after the dwell) and NTP steps the wall clock back
        # an hour while the plate settles: the estimator's window holds samples from both sides of the step.
        await feed.hold(300.0, cycles=3)
        wall.offset_s = -STEP_BACK_S
        stepped_at = wall()
        await feed.hold(300.0, cycles=20)  # before the fix: never settled (until the wall clock caught up)
        assert gateway.estimators["B1"].count == 3, "the pick after the step was counted"
        await gateway._persist([], gateway.rules.tick(gateway.clock.now()), [])  # one beat of the ticker

        after = (await gateway.store.ledger())[len(before_step) :]
        stock = [r for r in after if r.event_type == "stock.changed"]
        assert [r.data["count"] for r in stock] == [3]
        raised = [r for r in after if r.event_type == "alert.raised"]
        assert [r.data["kind"] for r in raised] == ["low"]
        # Events carry honest wall time: after the step, an hour before the stamps that preceded it (a
        # few seconds of slack: the samples are dated up to HISTORY_S back).
        last_before = max(_epoch(r.ts) for r in before_step)
        for row in [*stock, *raised]:
            assert abs(_epoch(row.ts) - stepped_at) < SLACK_S, row
            assert _epoch(row.ts) < last_before - STEP_BACK_S + SLACK_S, row
        # A second step before staff acknowledge: the ack is stamped by the wall clock, `raised_at` stays.
        wall.offset_s -= 600.0
        acked = await gateway.acknowledge(raised[0].data["alert_id"], "clerk")
        assert acked is not None
        assert acked.state == "acknowledged"
        assert acked.raised_at == raised[0].data["raised_at"]
        assert abs(_epoch(acked.updated_at) - wall()) < SLACK_S
        # The board shows the last sample in wall time too.
        assert abs(gateway.bin_view("B1")["last_sample_ts"] - wall()) < SLACK_S
