"""Alert rules: dwell, hysteresis, lifecycle, acknowledgement, restore, and a lifecycle property."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_bridge.contract import ALERT_STATE_RANK, AlertKind, AlertState
from edge.config import Alerts, Bin, LocalizedName
from edge.inventory import Ambiguous, CountChanged, SensorFault
from edge.inventory.alerts import AlertRules, AlertTransition

LOW, OUT, OVER = AlertKind.LOW, AlertKind.OUT, AlertKind.OVER
RAISED, ACKED, RESOLVED = AlertState.RAISED, AlertState.ACKNOWLEDGED, AlertState.RESOLVED


def make_bin(bin_id: str = "b1", safety_stock: int = 5, max_stock: int = 20) -> Bin:
    return Bin(
        id=bin_id,
        sku=f"sku-{bin_id}",
        name=LocalizedName(zh="货品", en="Item"),
        unit_weight_g=100.0,
        safety_stock=safety_stock,
        max_stock=max_stock,
        device="tx1",
        channel=int(bin_id[1:]) if bin_id[1:].isdigit() else 0,
    )


def rules(dwell_s: float = 2.0, hysteresis_items: int = 1, *bins: Bin) -> AlertRules:
    return AlertRules(list(bins) or [make_bin()], Alerts(dwell_s=dwell_s, hysteresis_items=hysteresis_items))


def brief(ts: list[AlertTransition]) -> list[tuple[AlertKind, AlertState, float]]:
    return [(t.kind, t.state, t.ts) for t in ts]


def test_low_raises_only_after_the_dwell_and_tick_fires_it() -> None:
    r = rules()
    assert r.update_count("b1", 4, 100.0) == []
    assert r.tick(101.9) == []
    out = r.tick(102.5)
    assert brief(out) == [(LOW, RAISED, 102.0)], "fires at the moment the dwell ran out"
    t = out[0]
    assert t.alert_id == "b1:low:102000"
    assert t.raised_at == 102.0
    assert t.count == 4
    assert t.sku == "sku-b1"
    assert "low" in t.message
    assert r.tick(200.0) == []


def test_a_dip_shorter_than_the_dwell_raises_nothing() -> None:
    r = rules()
    r.update_count("b1", 4, 0.0)
    assert r.update_count("b1", 6, 1.5) == []
    assert r.tick(100.0) == []


def test_an_update_first_fires_timers_that_ran_out_before_it() -> None:
    r = rules()
    r.update_count("b1", 4, 0.0)
    out = r.update_count("b1", 10, 30.0)
    assert brief(out) == [(LOW, RAISED, 2.0)]
    assert brief(r.tick(32.0)) == [(LOW, RESOLVED, 32.0)]


def test_a_restock_bouncing_around_the_threshold_does_not_flap() -> None:
    r = rules()
    r.update_count("b1", 3, 0.0)
    [raised] = r.tick(5.0)
    transitions: list[AlertTransition] = []
    # A clerk refills: counts bounce 4 5 6 5 6 5 7 5 … every 0.8 s, reaching 6 (= 5 + h) but never for 2 s.
    bounce = [4, 5, 6, 5, 6, 5, 6, 7, 5, 6, 5, 6, 5, 4, 5, 6, 5]
    ts = 5.0
    for count in bounce:
        ts += 0.8
        transitions += r.update_count("b1", count, ts)
        transitions += r.tick(ts + 0.4)
    assert transitions == [], "no resolve (never ≥ 6 for 2 s) and certainly no re-raise"
    # Finally the shelf holds 8 for good.
    transitions += r.update_count("b1", 8, ts + 0.8)
    transitions += r.tick(ts + 3.0)
    assert brief(transitions) == [(LOW, RESOLVED, ts + 2.8)]
    assert transitions[0].alert_id == raised.alert_id
    # Bouncing just below the raise threshold before an alert: the dwell restarts every time.
    r2 = rules()
    out: list[AlertTransition] = []
    for k in range(20):
        out += r2.update_count("b1", 4 if k % 2 == 0 else 5, k * 1.5)
        out += r2.tick(k * 1.5 + 1.0)
    assert out == []


def test_out_and_low_are_independent_with_their_own_hysteresis() -> None:
    r = rules()
    r.update_count("b1", 0, 0.0)
    assert {(t.kind, t.state) for t in r.tick(3.0)} == {(OUT, RAISED), (LOW, RAISED)}
    assert r.update_count("b1", 1, 10.0) == []
    assert r.tick(20.0) == [], "one item is not enough to clear out (needs 1 + h)"
    r.update_count("b1", 2, 20.0)
    assert brief(r.tick(23.0)) == [(OUT, RESOLVED, 22.0)]
    assert [t.kind for t in r.active()] == [LOW]


def test_over_raises_above_max_and_clears_at_max_minus_hysteresis() -> None:
    r = rules()
    r.update_count("b1", 21, 0.0)
    [raised] = r.tick(2.0)
    assert (raised.kind, raised.state, raised.count) == (OVER, RAISED, 21)
    r.update_count("b1", 20, 5.0)
    assert r.tick(30.0) == [], "20 is not above max, but not max − h either"
    r.update_count("b1", 19, 30.0)
    [resolved] = r.tick(32.0)
    assert (resolved.kind, resolved.state, resolved.alert_id) == (OVER, RESOLVED, raised.alert_id)


def test_zero_dwell_and_zero_hysteresis_act_at_once() -> None:
    r = rules(0.0, 0)
    assert brief(r.update_count("b1", 4, 1.0)) == [(LOW, RAISED, 1.0)]
    assert brief(r.update_count("b1", 5, 2.0)) == [(LOW, RESOLVED, 2.0)]
    again = r.update_count("b1", 4, 2.0)
    assert brief(again) == [(LOW, RAISED, 2.0)]
    assert again[0].alert_id == "b1:low:2000"
    assert r.update_count("b1", 5, 2.0)[0].alert_id == "b1:low:2000"
    third = r.update_count("b1", 4, 2.0)
    assert third[0].alert_id == "b1:low:2001", "ids stay unique even within one millisecond"


def test_acknowledge_keeps_the_alert_active_until_the_condition_clears() -> None:
    r = rules()
    r.update_count("b1", 2, 0.0)
    [raised] = r.tick(2.0)
    ack = r.acknowledge(raised.alert_id, "clerk-7", 10.0)
    assert ack is not None
    assert (ack.state, ack.by, ack.ts, ack.raised_at) == (ACKED, "clerk-7", 10.0, 2.0)
    assert r.acknowledge(raised.alert_id, "clerk-8", 11.0) is None, "states only move forward"
    assert r.acknowledge("b1:low:0", "clerk-7", 11.0) is None
    assert [(t.alert_id, t.state) for t in r.active()] == [(raised.alert_id, ACKED)]
    assert r.tick(100.0) == []
    r.update_count("b1", 9, 100.0)
    [resolved] = r.tick(102.0)
    assert (resolved.alert_id, resolved.state) == (raised.alert_id, RESOLVED)
    assert r.acknowledge(raised.alert_id, "clerk-7", 103.0) is None
    assert r.active() == []


def test_ambiguity_is_answered_by_the_next_confirmed_count() -> None:
    r = rules()
    r.update_count("b1", 10, 0.0)
    # Answered within the dwell (the estimator reconciled at once): no alert at all.
    assert r.ambiguous("b1", 5.0, "not a whole item") == []
    assert r.update_count("b1", 10, 5.0) == []
    assert r.tick(20.0) == []
    # Not answered: raised after the dwell; an uncertain count does not answer it; a confirmed one does.
    r.ambiguous("b1", 30.0, "not a whole item")
    [raised] = r.tick(33.0)
    assert (raised.kind, raised.state, raised.ts) == (AlertKind.AMBIGUOUS, RAISED, 32.0)
    assert "not a whole item" in raised.message
    assert r.update_count("b1", 9, 40.0, uncertain=True) == []
    assert brief(r.update_count("b1", 9, 41.0)) == [(AlertKind.AMBIGUOUS, RESOLVED, 41.0)]


def test_sensor_fault_is_one_alert_while_any_fault_kind_is_active() -> None:
    r = rules()
    r.sensor_fault("b1", "overload", True, 0.0, "transmitter reports overload")
    [raised] = r.tick(2.0)
    assert (raised.kind, raised.state) == (AlertKind.SENSOR_FAULT, RAISED)
    assert "overload" in raised.message
    assert r.sensor_fault("b1", "drifting", True, 3.0) == []
    assert r.sensor_fault("b1", "overload", False, 4.0) == []
    assert r.tick(10.0) == [], "drifting is still active"
    r.sensor_fault("b1", "drifting", False, 10.0)
    assert brief(r.tick(12.0)) == [(AlertKind.SENSOR_FAULT, RESOLVED, 12.0)]


def test_apply_routes_estimator_events() -> None:
    r = rules(0.0, 1)
    out = r.apply(CountChanged("b1", 1.0, -1, 4, 400.0, "pick"))
    assert brief(out) == [(LOW, RAISED, 1.0)]
    assert brief(r.apply(Ambiguous("b1", 2.0, 30.0, "odd"))) == [(AlertKind.AMBIGUOUS, RAISED, 2.0)]
    assert r.apply(CountChanged("b1", 3.0, 0, 4, 400.0, "reconcile", uncertain=True)) == []
    assert brief(r.apply(SensorFault("b1", 4.0, "drifting", True))) == [(AlertKind.SENSOR_FAULT, RAISED, 4.0)]
    assert brief(r.apply(CountChanged("b1", 5.0, 0, 4, 400.0, "reconcile"))) == [
        (AlertKind.AMBIGUOUS, RESOLVED, 5.0)
    ]
    assert r.update_count("nope", 3, 6.0) == []


def test_restore_after_restart_continues_the_same_alerts() -> None:
    before = rules(2.0, 1, make_bin("b1"), make_bin("b2"))
    before.update_count("b1", 2, 0.0)
    before.update_count("b2", 0, 0.0)
    before.sensor_fault("b2", "overload", True, 0.0)
    raised = before.tick(2.0)
    low_b1 = next(t for t in raised if t.bin_id == "b1")
    ack = before.acknowledge(low_b1.alert_id, "lead", 3.0)
    assert ack is not None
    # What the store would hand back: the latest transition of each active alert, plus junk.
    latest = {t.alert_id: t for t in [*raised, ack]}
    gone = AlertTransition("b9:low:1", "b9", "sku-b9", LOW, RAISED, 1.0, 1, "", 1.0)
    after = rules(2.0, 1, make_bin("b1"), make_bin("b2"))
    ignored = after.restore([*latest.values(), gone])
    assert ignored == ["b9:low:1"]
    assert {(t.alert_id, t.state) for t in after.active()} == {(t.alert_id, t.state) for t in latest.values()}
    assert after.acknowledge(low_b1.alert_id, "lead", 10.0) is None, "already acknowledged before the restart"
    # The first counts after the restart: b1 recovered, b2 still empty but its sensor evidently works.
    out = after.update_count("b1", 9, 20.0) + after.update_count("b2", 0, 20.0) + after.tick(23.0)
    assert sorted((t.bin_id, t.kind, t.state) for t in out) == [
        ("b1", LOW, RESOLVED),
        ("b2", AlertKind.SENSOR_FAULT, RESOLVED),
    ]
    assert next(t for t in out if t.bin_id == "b1").alert_id == low_b1.alert_id
    # A new low on b1 gets a new id, never a reused one.
    after.update_count("b1", 1, 30.0)
    [again] = [t for t in after.tick(40.0) if t.kind is LOW]
    assert again.alert_id != low_b1.alert_id


# --- property: any sequence of inputs gives a valid lifecycle ---------------------------------------------

Op = tuple[str, int, float]

ops = st.lists(
    st.tuples(
        st.sampled_from(["count", "count", "count", "none", "tick", "ambiguous", "fault", "clear", "ack"]),
        st.integers(min_value=0, max_value=25),
        st.floats(min_value=0.0, max_value=4.0, allow_nan=False),
    ),
    max_size=80,
)


@dataclass
class Ledger:
    """Every transition seen, checked as it arrives."""

    state: dict[str, AlertState] = field(default_factory=dict)
    last_ts: dict[str, float] = field(default_factory=dict)
    active: dict[tuple[str, AlertKind], str] = field(default_factory=dict)

    def see(self, transitions: list[AlertTransition]) -> None:
        for t in transitions:
            key = (t.bin_id, t.kind)
            prev = self.state.get(t.alert_id)
            if prev is None:
                assert t.state is RAISED, "an alert's first transition is a raise"
                assert key not in self.active, "never two active alerts of one kind per bin"
                self.active[key] = t.alert_id
                assert t.raised_at == t.ts
            else:
                assert ALERT_STATE_RANK[t.state] > ALERT_STATE_RANK[prev], "states only move forward"
                assert t.ts >= self.last_ts[t.alert_id]
                if t.state is RESOLVED:
                    assert self.active.pop(key) == t.alert_id
            self.state[t.alert_id] = t.state
            self.last_ts[t.alert_id] = t.ts


@settings(max_examples=300, deadline=None)
@given(ops, st.floats(min_value=0.0, max_value=3.0), st.integers(min_value=0, max_value=3))
def test_any_sequence_of_inputs_gives_a_valid_lifecycle(seq: list[Op], dwell_s: float, hyst: int) -> None:
    bins = [make_bin("b1", 5, 20), make_bin("b2", 0, 3)]
    r = rules(dwell_s, hyst, *bins)
    ledger = Ledger()
    last: dict[str, int | None] = {"b1": None, "b2": None}
    faulty: dict[str, set[str]] = {"b1": set(), "b2": set()}
    ts = 1000.0
    for i, (op, value, dt) in enumerate(seq):
        ts += dt
        bin_id = bins[value % 2].id
        if op == "count":
            ledger.see(r.update_count(bin_id, value, ts, uncertain=i % 5 == 4))
            last[bin_id] = value
        elif op == "none":
            ledger.see(r.update_count(bin_id, None, ts))
            last[bin_id] = None
        elif op == "tick":
            ledger.see(r.tick(ts))
        elif op == "ambiguous":
            ledger.see(r.ambiguous(bin_id, ts, "odd step"))
        elif op in ("fault", "clear"):
            kind = ("overload", "drifting")[value % 2]
            ledger.see(r.sensor_fault(bin_id, kind, op == "fault", ts))
            (faulty[bin_id].add if op == "fault" else faulty[bin_id].discard)(kind)
        elif ledger.active:
            ids = sorted(ledger.active.values())
            ack = r.acknowledge(ids[value % len(ids)], "staff", ts)
            ledger.see([ack] if ack is not None else [])
    ledger.see(r.tick(ts + 1000.0))
    # The rules' own view agrees with the ledger.
    assert {t.alert_id for t in r.active()} == set(ledger.active.values())
    # Once every timer ran out, the active set is exactly what the final state justifies.
    for b in bins:
        count = last[b.id]
        if count is None:
            continue
        cases = {
            OUT: (count == 0, count >= min(1 + hyst, b.max_stock)),
            LOW: (count < b.safety_stock, count >= min(b.safety_stock + hyst, b.max_stock)),
            OVER: (count > b.max_stock, count <= max(b.max_stock - hyst, b.safety_stock)),
        }
        for kind, (must_raise, must_clear) in cases.items():
            if must_raise:
                assert (b.id, kind) in ledger.active
            if must_clear:
                assert (b.id, kind) not in ledger.active
        assert ((b.id, AlertKind.SENSOR_FAULT) in ledger.active) == bool(faulty[b.id])
