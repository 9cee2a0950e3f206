"""Presence windows: simulated inventory rounds at 60-70 % read rates, strays, departures, moves.

Each simulated round every tag in the field is read with its own probability (Bernoulli per round, the way a
UHF reader's inventory behaves); the tracker sees only the reads and a `tick` per round. Seeds are fixed, so
every run is the same run.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from drivers.rfid.epc import encode_sgtin96
from drivers.rfid.presence import PresenceEvent, PresencePolicy, PresenceTracker, gtin_of

ROUND_S = 0.1
"""Ten inventory rounds a second, typical of a shelf module in multi-poll."""


def epc_for(item: int, serial: int) -> str:
    return encode_sgtin96(1, "0614141", f"{item:06d}", serial)


@dataclass
class Field:
    """A zone's antenna field: tags with their per-round read probability."""

    zone: str
    tags: dict[str, float] = field(default_factory=dict)


def run_rounds(
    tracker: PresenceTracker,
    fields: list[Field],
    rounds: int,
    rng: random.Random,
    *,
    t0: float = 0.0,
    last_read: dict[str, float] | None = None,
) -> tuple[list[PresenceEvent], float]:
    events: list[PresenceEvent] = []
    t = t0
    for _ in range(rounds):
        t += ROUND_S
        for f in fields:
            for epc, p in f.tags.items():
                if rng.random() < p:
                    events += tracker.feed(epc, f.zone, t)
                    if last_read is not None:
                        last_read[epc] = t
        events += tracker.tick(t)
    return events, t


def test_stable_tags_at_60_to_70_percent_never_flicker_over_a_long_run() -> None:
    rng = random.Random(1)
    shelf = Field("shelf-a", {epc_for(812345, n): rng.uniform(0.60, 0.70) for n in range(20)})
    tracker = PresenceTracker()
    events, _ = run_rounds(tracker, [shelf], rounds=20_000, rng=rng)  # 20 tags x 33 min of rounds
    enters = [e for e in events if e.kind == "enter"]
    leaves = [e for e in events if e.kind == "leave"]
    assert leaves == []
    assert sorted(e.epc for e in enters) == sorted(shelf.tags)  # each entered exactly once
    assert tracker.zone_counts("shelf-a") == {gtin_of(next(iter(shelf.tags))): 20}
    # The window adapted well below the 10 s ceiling: mean gap ~0.15 s x ln(1e9) ~ 3 s.
    windows = [tracker.window_s(epc) for epc in shelf.tags]
    assert all(w is not None and 1.0 <= w < 6.0 for w in windows), windows


def test_entry_needs_k_reads_in_the_window() -> None:
    tracker = PresenceTracker(PresencePolicy(min_reads=3, enter_window_s=2.0))
    epc = epc_for(1, 1)
    assert tracker.feed(epc, "z", 0.0) == []
    assert tracker.feed(epc, "z", 1.0) == []
    assert tracker.feed(epc, "z", 2.5) == []  # 0.0 aged out: two reads within 2 s
    assert tracker.feed(epc, "z", 3.2) == []  # 1.0 aged out: still two
    events = tracker.feed(epc, "z", 3.3)
    assert [(e.kind, e.zone) for e in events] == [("enter", "z")]
    assert tracker.zone_of(epc) == "z"


def test_strays_from_a_neighbouring_shelf_are_never_counted() -> None:
    rng = random.Random(2)
    mine = {epc_for(100, n): 0.65 for n in range(5)}
    neighbours = {epc_for(200, n): 0.0 for n in range(30)}
    shelf = Field("shelf-a", mine | neighbours)
    tracker = PresenceTracker()
    # Once in a while one neighbouring tag is read once: the LLRP replay's "1 stray EPC seen once".
    t = 0.0
    events: list[PresenceEvent] = []
    for _ in range(200):
        stray = rng.choice(list(neighbours))
        shelf.tags[stray] = 1.0
        more, t = run_rounds(tracker, [shelf], rounds=1, rng=rng, t0=t)
        events += more
        shelf.tags[stray] = 0.0
        more, t = run_rounds(tracker, [shelf], rounds=30, rng=rng, t0=t)
        events += more
    assert {e.epc for e in events} == set(mine)
    assert tracker.present("shelf-a") == set(mine)
    assert list(tracker.candidates()) == []  # strays are forgotten, memory stays bounded


def test_llrp_replay_stray_is_filtered() -> None:
    """Two static tags reported ~22x each and one 144-bit EPC seen once (sllurp capture, vector file)."""
    vectors = json.loads(
        (Path(__file__).resolve().parents[2] / "vectors" / "rfid_llrp_and_serial_uhf.json").read_text("utf-8")
    )
    summary = vectors["llrp_stream"]["summary"]
    tracker = PresenceTracker()
    seq = []
    counts = dict(summary["per_epc_counts"])
    while any(counts.values()):
        for epc, left in counts.items():
            if left:
                counts[epc] = left - 1
                seq.append(epc)
    span_s = summary["first_seen_span_us"] / 1e6
    for i, epc in enumerate(seq):
        tracker.feed(epc, "dock", i * span_s / len(seq))
    tracker.tick(span_s)
    present = tracker.present("dock")
    assert present == {"3005FB63AC1F3841EC880467", "300833B2DDD906C000000000"}


@pytest.mark.parametrize("read_rate", [0.6, 0.65, 0.7])
def test_departures_are_detected_within_the_bounded_window(read_rate: float) -> None:
    rng = random.Random(int(read_rate * 100))
    policy = PresencePolicy()
    shelf = Field("shelf-a", {epc_for(300, n): read_rate for n in range(10)})
    tracker = PresenceTracker(policy)
    last_read: dict[str, float] = {}
    _, t = run_rounds(tracker, [shelf], rounds=600, rng=rng, last_read=last_read)
    sold = sorted(shelf.tags)[:4]
    windows: dict[str, float] = {}
    for epc in sold:
        del shelf.tags[epc]
        window = tracker.window_s(epc)
        assert window is not None
        assert window < policy.max_window_s  # adapted to the read rate, not the ceiling
        windows[epc] = window
    events, _ = run_rounds(tracker, [shelf], rounds=int(policy.max_window_s / ROUND_S) + 5, rng=rng, t0=t)
    leaves = [e for e in events if e.kind == "leave"]
    assert sorted(e.epc for e in leaves) == sold
    for e in leaves:
        assert e.ts - last_read[e.epc] <= windows[e.epc] + ROUND_S + 1e-9
        assert e.ts - last_read[e.epc] <= policy.max_window_s
        assert e.gtin == gtin_of(e.epc)
    assert tracker.zone_counts("shelf-a") == {gtin_of(sorted(shelf.tags)[0]): 6}


def test_a_new_tag_that_vanishes_leaves_after_the_ceiling() -> None:
    policy = PresencePolicy(min_reads=2, max_window_s=5.0)
    tracker = PresenceTracker(policy)
    epc = epc_for(5, 5)
    tracker.feed(epc, "z", 0.0)
    assert tracker.feed(epc, "z", 0.1)[0].kind == "enter"
    assert tracker.window_s(epc) == 5.0  # too little history for the adaptive window
    assert tracker.tick(5.0) == []
    events = tracker.tick(5.2)
    assert [(e.kind, e.epc) for e in events] == [("leave", epc)]


def test_cross_reads_do_not_move_a_tag_but_a_real_move_does() -> None:
    rng = random.Random(7)
    epc = epc_for(400, 1)
    a = Field("shelf-a", {epc: 0.65})
    b = Field("shelf-b", {epc: 0.15})  # the same tag, faintly seen from the next shelf
    tracker = PresenceTracker()
    events, t = run_rounds(tracker, [a, b], rounds=3000, rng=rng)
    assert [(e.kind, e.zone) for e in events] == [("enter", "shelf-a")]
    # Moved: now strong at b, faint at a.
    a.tags[epc], b.tags[epc] = 0.15, 0.65
    events, t = run_rounds(tracker, [a, b], rounds=100, rng=rng, t0=t)
    assert [(e.kind, e.zone) for e in events] == [("leave", "shelf-a"), ("enter", "shelf-b")]
    assert tracker.zone_of(epc) == "shelf-b"
    assert tracker.present("shelf-a") == set()


def test_non_sgtin_tags_are_present_but_not_counted_per_gtin() -> None:
    tracker = PresenceTracker(PresencePolicy(min_reads=1))
    tracker.feed("F45349FB11DF49FA935AB6FF", "z", 0.0)
    tracker.feed("303C83F1B7DD441678901234", "z", 0.0)  # malformed SGTIN: tracked, no GTIN
    tracker.feed(epc_for(1, 2), "z", 0.0)
    assert len(tracker.present("z")) == 3
    assert tracker.zone_counts("z") == {gtin_of(epc_for(1, 2)): 1}


def test_out_of_order_reads_are_ignored() -> None:
    tracker = PresenceTracker(PresencePolicy(min_reads=1))
    epc = epc_for(9, 9)
    tracker.feed(epc, "z", 10.0)
    assert tracker.feed(epc, "z", 9.0) == []
    assert tracker.ignored_stale_reads == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_reads": 0},
        {"min_window_s": 0.0},
        {"min_window_s": 5.0, "max_window_s": 4.0},
        {"false_leave_probability": 1.0},
        {"enter_window_s": 0.0},
        {"gap_smoothing": 0.0},
    ],
)
def test_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        PresencePolicy(**kwargs)  # type: ignore[arg-type]
