"""The peer bench's own logic: what counts as delivered, the percentiles, the RTU wire-time formula, the layout.

No processes, no sockets, no timing: the bench itself (`bench/peer_thingsboard/run`) is run by hand.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from peer_thingsboard import accounting as acc
from peer_thingsboard import peer, shelfgate_side
from peer_thingsboard.layout import CHANNELS, REGISTERS, UNIT_WEIGHT_G, Level, endpoint_of
from peer_thingsboard.sim import Transmitter

from drivers.modbus.protocol import Block, plan_poll
from edge.config import Bin, load_config
from edge.inventory import BinEstimator, CountChanged


def change(device: int, channel: int, count: int, delta: int, at: float) -> acc.Change:
    """A simulator change at monotonic = wall = `at` (one clock keeps the examples readable)."""
    return acc.Change(at, at, device, channel, count, delta, count * UNIT_WEIGHT_G)


def reading(device: int, taken: float, arrived: float, **values: float) -> acc.PeerReading:
    return acc.PeerReading(arrived, device, taken, dict(values))


def stock(
    device: int,
    channel: int,
    count: int,
    delta: int,
    *,
    seq: int,
    ts: float,
    arrived: float,
    cause: str = "pick",
) -> acc.StockEvent:
    return acc.StockEvent(arrived, f"gw:{seq}", seq, device, channel, count, delta, cause, ts)


# --- RTU wire time ------------------------------------------------------------------------------------------


def test_rtu_wire_time_matches_the_hand_computed_domain_example() -> None:
    # DOMAIN.md: one 2-register FC03 read at 9600 8N1 = request 8 + response 9 bytes + 2 × t3.5
    # = 17 + 7 = 24 character times of 10 bits = 240 / 9600 s = 25 ms.
    assert acc.rtu_read_wire_s(2, 9600) == pytest.approx(0.025)
    # "ten single reads ≈ 350 ms vs one block ≈ 72 ms" (10 ms device turnaround each): 10 × 35 ms, and
    # one 20-register block = (8 + 45 + 7) × 10 / 9600 + 10 ms = 72.5 ms.
    assert 10 * acc.rtu_read_wire_s(2, 9600, turnaround_s=0.010) == pytest.approx(0.350)
    assert acc.rtu_read_wire_s(20, 9600, turnaround_s=0.010) == pytest.approx(0.0725)


def test_rtu_wire_time_uses_the_fixed_t35_above_19200_baud() -> None:
    # 38400 Bd: (8 + 9) chars × 10 / 38400 + 2 × 1.75 ms (Serial Line v1.02 §2.5.1.1).
    assert acc.rtu_read_wire_s(2, 38400) == pytest.approx(170 / 38400 + 0.0035)
    # 8E1 = 11 bits per character; t3.5 scales with it.
    assert acc.rtu_read_wire_s(2, 9600, bits_per_char=11) == pytest.approx(24 * 11 / 9600)
    assert acc.fc03_response_bytes(125) == 255


# --- percentiles and CPU --------------------------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert acc.percentile(values, 50) == 50.0
    assert acc.percentile(values, 99) == 99.0
    assert acc.percentile(values, 100) == 100.0
    assert acc.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert acc.percentile([], 50) is None
    assert acc.cpu_per_reading_ms(1.5, 3000) == pytest.approx(0.5)
    assert acc.cpu_per_reading_ms(1.5, 0) is None


# --- the peer's deliveries ---------------------------------------------------------------------------------------


def test_peer_change_is_delivered_by_the_first_later_reading_with_the_new_value() -> None:
    c = change(3, 1, count=11, delta=-1, at=100.0)
    readings = [
        reading(3, taken=99.9, arrived=100.05, w1=11 * UNIT_WEIGHT_G),  # taken before the change: not it
        reading(3, taken=100.1, arrived=100.2, w1=12 * UNIT_WEIGHT_G),  # poll raced the change: old value
        reading(3, taken=100.3, arrived=100.45, w1=11 * UNIT_WEIGHT_G),
        reading(3, taken=100.5, arrived=100.6, w1=11 * UNIT_WEIGHT_G),
    ]
    res = acc.match_peer([c], readings)
    assert (res.changes, res.delivered) == (1, 1)
    assert res.latencies_s == [pytest.approx(0.45)]


def test_peer_change_overwritten_before_any_poll_is_not_delivered() -> None:
    first = change(0, 0, count=11, delta=-1, at=10.0)
    second = change(0, 0, count=9, delta=-2, at=13.0)
    readings = [reading(0, taken=13.5, arrived=13.6, w0=9 * UNIT_WEIGHT_G)]
    res = acc.match_peer([first, second], readings)
    assert (res.changes, res.delivered, res.fraction) == (2, 1, 0.5)


def test_peer_telemetry_payload_is_parsed_per_entry() -> None:
    body = {"tx004": [{"ts": 1_700_000_000_123, "values": {"w0": 3000, "w1": 2750}}, {"ts": 1, "values": {}}]}
    msgs = [
        acc.Message(5.0, acc.PEER_TELEMETRY_TOPIC, json.dumps(body)),
        acc.Message(5.1, "v1/devices/me/telemetry", json.dumps(body)),  # the peer's own statistics
        acc.Message(5.2, acc.PEER_TELEMETRY_TOPIC, "not json"),
    ]
    rs = acc.peer_readings(msgs)
    assert len(rs) == 2
    assert (rs[0].device, rs[0].ts_wall, rs[0].values) == (4, 1_700_000_000.123, {"w0": 3000, "w1": 2750})
    assert acc.readings_between(rs, 5.0, 5.05) == 2
    assert acc.distinct_readings_taken(rs + rs, 1_699_999_999.0, 1_800_000_000.0) == 1


# --- shelfgate's deliveries ------------------------------------------------------------------------------


def test_shelfgate_change_needs_exactly_the_right_stock_event() -> None:
    changes = [change(1, 2, count=10, delta=-2, at=50.0), change(1, 2, count=13, delta=3, at=60.0)]
    events = [
        stock(1, 2, 12, 0, seq=1, ts=40.0, arrived=40.1, cause="initial"),  # start-up: never counted
        stock(1, 2, 10, -2, seq=2, ts=50.6, arrived=50.7),
        stock(1, 2, 10, -2, seq=2, ts=50.6, arrived=51.9),  # re-delivered after a reconnect
        stock(1, 2, 12, 2, seq=3, ts=60.7, arrived=60.8, cause="put"),  # wrong delta and count
    ]
    res = acc.match_shelfgate(changes, events, since_wall=45.0)
    assert (res.changes, res.delivered, res.wrong, res.duplicates) == (2, 1, 1, 1)
    assert res.latencies_s == [pytest.approx(0.7)]


def test_shelfgate_events_nobody_asked_for_are_wrong() -> None:
    events = [
        stock(0, 0, 11, -1, seq=7, ts=70.0, arrived=70.1),
        stock(0, 1, 12, 0, seq=8, ts=70.0, arrived=70.1),
    ]
    res = acc.match_shelfgate([], events, since_wall=0.0)
    assert (res.changes, res.delivered, res.wrong) == (0, 0, 2)
    assert res.fraction is None


def test_shelfgate_event_batch_is_parsed() -> None:
    batch = {
        "schema": "shelfgate.events/1",
        "events": [
            {
                "id": "g:1",
                "seq": 1,
                "type": "stock.changed",
                "ts": "2026-11-23T10:00:00.500Z",
                "data": {"bin_id": "tx012-c3", "count": 9, "delta": -1, "cause": "pick"},
            },
            {"id": "g:2", "seq": 2, "type": "alert.raised", "ts": "2026-11-23T10:00:00.500Z", "data": {}},
        ],
    }
    evs = acc.shelfgate_stock_events([acc.Message(1.0, "shelfgate/v1/stores/s/events", json.dumps(batch))])
    assert len(evs) == 1
    e = evs[0]
    assert (e.device, e.channel, e.count, e.delta, e.cause) == (12, 3, 9, -1, "pick")
    assert math.isclose(e.ts_wall, 1795428000.5)


def test_message_lines_round_trip_and_torn_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "messages.tsv"
    path.write_text('12.5\ta/b\t{"x": 1}\n13.0\tbroken\n', encoding="utf-8")
    assert acc.read_messages(path) == [acc.Message(12.5, "a/b", '{"x": 1}')]


# --- the layout both sides are configured from -----------------------------------------------------------


def test_levels_parse_and_split_into_endpoints() -> None:
    assert Level.parse("500x10") == Level(500, 10.0, "tcp")
    assert Level.parse("rtu:4x5").name == "rtu:4x5"
    assert Level.parse("500x10").endpoints == 10
    assert endpoint_of(120, Level.parse("500x10")) == (2, 21)
    assert Level.parse("2x1").min_change_gap_s == 8.0
    with pytest.raises(ValueError, match="DEVICESxHZ"):
        Level.parse("fast")


def test_peer_reads_one_request_per_channel_weight() -> None:
    level = Level.parse("rtu:2x5")
    cfg = peer.modbus_config(level, [("rtu", "/dev/pts/9", 0)])
    slaves = cfg["master"]["slaves"]
    assert [s["unitId"] for s in slaves] == [1, 2]
    assert {s["type"] for s in slaves} == {"serial"}
    assert [t["address"] for t in slaves[0]["timeseries"]] == [0, 2, 4, 6]
    assert {(t["type"], t["objectsCount"]) for t in slaves[0]["timeseries"]} == {("32int", 2)}
    assert slaves[0]["pollPeriod"] == 200


def test_shelfgate_config_validates_and_reads_each_transmitter_in_one_block(tmp_path: Path) -> None:
    level = Level.parse("60x10")
    endpoints = [("tcp", "127.0.0.1", 5020), ("tcp", "127.0.0.1", 5021)]
    cfg = load_config(shelfgate_side.write_config(tmp_path, level, endpoints, mqtt_port=1883))
    assert len(cfg.store.bins) == 60 * CHANNELS
    assert {t.bus for t in cfg.store.transmitters} == {"bus0", "bus1"}
    rmap = cfg.profiles[cfg.store.transmitters[0].profile]
    assert plan_poll(rmap, range(CHANNELS)).blocks == (Block(0, REGISTERS),)


def test_a_simulated_change_at_1_hz_becomes_exactly_the_right_count() -> None:
    # The 2 × 1 Hz level: a 0.5 s settle window holds one sample at 1 Hz, so the estimator widens it to
    # 2.5 sample intervals (edge/inventory/estimator.py) — before that, nothing was ever counted at 1 Hz.
    tx = Transmitter(0, 1)
    b = Bin.model_validate(
        {
            "id": "tx000-c1",
            "sku": "06900000000001",
            "name": {"zh": "货品", "en": "Item"},
            "unit_weight_g": UNIT_WEIGHT_G,
            "unit_weight_spread_g": 2.5,
            "safety_stock": 3,
            "max_stock": 32,
            "device": "tx000",
            "channel": 1,
        }
    )
    est = BinEstimator(b)
    counts: list[CountChanged] = []
    for k in range(40):
        if k == 15:
            tx.set_count(1, 10)  # two items picked
        value = (tx.words[2] << 16) | tx.words[3]  # channel 1: int32 ABCD at registers 2-3
        counts += [
            e for e in est.feed(float(value), 1000.0 + k, device_stable=True) if isinstance(e, CountChanged)
        ]
    assert [(c.cause, c.delta, c.count) for c in counts] == [("initial", 0, 12), ("pick", -2, 10)]
    assert est.settle_window_s == pytest.approx(2.5, rel=0.05)
