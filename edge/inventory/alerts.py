"""Alert rules: counts, ambiguities and sensor faults in; alert lifecycle transitions out.

Lifecycle (cloud_bridge.contract.AlertState): ``raised → acknowledged → resolved``, or ``raised → resolved``.
States only move forward; at most one active (raised or acknowledged) alert per (bin, kind); an
acknowledgement keeps the alert active until its condition clears.

Rules, per bin (thresholds from the bin's config, tuning from `Alerts`; h = hysteresis_items, d = dwell_s):

=============  ===========================  =============================================================
kind           raise when (held for d)      resolve when (held for d)
=============  ===========================  =============================================================
out            count == 0                   count ≥ min(1 + h, max_stock)
low            count < safety_stock         count ≥ min(safety_stock + h, max_stock)
over           count > max_stock            count ≤ max(max_stock − h, safety_stock)
sensor_fault   any fault kind active        no fault kind active
ambiguous      an ambiguity was reported    *immediately* on the next confirmed count (no dwell: the
                                            ambiguity is an event, and the count answering it is final)
misplaced      `misplaced(active=True)`     `misplaced(active=False)`: the foreign goods left the plate
               (camera fusion)              (`edge.inventory.fusion` decides both)
=============  ===========================  =============================================================

A count settled by a camera (`update_count(..., resolved_by="camera")`) answers an ambiguity like any
confirmed count; the resolve message then says `resolved_by: camera`.

Camera-only bins (no weighing device, issue #8) have no count; `facing(bin_id, state, ts)` drives the same
`out`/`low` conditions from the camera's facing state instead — out: raise on `empty`, resolve on `low`/`ok`;
low: raise on `low`/`empty`, resolve on `ok` — with the same dwell. `unknown` (camera offline, moved, view
blocked too long) neither raises nor resolves and cancels pending timers, as an unknown count does.

Why: the gap between the raise and the resolve thresholds (hysteresis) and the dwell (the condition must hold
continuously; leaving it restarts the timer) stop a restock that bounces around a threshold — a clerk
putting items on and taking one off again, a hand leaning on the plate — from flapping alerts at the staff.
`low` and `out` are independent: an empty bin is both (the board shows the worse one). An unknown count
(None) neither raises nor resolves anything and cancels pending timers.

Timers fire at the exact moment the dwell ran out (`pending_since + dwell_s`), whether the caller noticed in
`tick()` or in the next update — so transitions and alert ids do not depend on how often `tick()` runs. Every
update first fires the timers that ran out before it, with the count they were started under.

Alert ids are ``{bin_id}:{kind}:{raised_ms}`` — unique (bumped by 1 ms on a collision) and stable across
restarts because the raise time is persisted with the alert. Messages are short English; the staff pages
localise from kind + fields.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cloud_bridge.contract import AlertKind, AlertState
from edge.config import Alerts, Bin
from edge.inventory.events import Ambiguous, CountChanged, EngineEvent

_LEVEL_KINDS = (AlertKind.OUT, AlertKind.LOW, AlertKind.OVER)
_RESTORED_FAULT = "restored"


@dataclass(frozen=True, slots=True)
class AlertTransition:
    """One step in an alert's life, as persisted and sent (`AlertData` on the wire)."""

    alert_id: str
    bin_id: str
    sku: str
    kind: AlertKind
    state: AlertState
    ts: float
    """When this transition happened (seconds since the epoch)."""
    count: int | None
    message: str
    raised_at: float
    by: str | None = None
    """Who acknowledged; None for automatic transitions."""


class _Cond:
    """One (bin, kind): its active alert, if any, and the dwell timers."""

    __slots__ = ("alert_id", "kind", "message", "pending_clear", "pending_raise", "raised_at", "state")

    def __init__(self, kind: AlertKind) -> None:
        self.kind = kind
        self.alert_id: str | None = None
        self.state: AlertState | None = None
        self.raised_at = 0.0
        self.message = ""
        self.pending_raise: float | None = None
        self.pending_clear: float | None = None


class _BinRules:
    __slots__ = (
        "ambiguous_detail",
        "bin",
        "conds",
        "count",
        "facing",
        "fault_details",
        "last_raise_ms",
        "misplaced_detail",
        "resolved_by",
    )

    def __init__(self, bin: Bin) -> None:
        self.bin = bin
        self.count: int | None = None
        self.conds = {kind: _Cond(kind) for kind in AlertKind}
        self.fault_details: dict[str, str] = {}
        self.ambiguous_detail: str | None = None
        self.last_raise_ms: dict[AlertKind, int] = {}
        self.facing: str | None = None
        """The camera's state of a camera-only bin's facing(s) (`facing()`); None for weighed bins."""
        self.misplaced_detail = ""
        self.resolved_by: str | None = None
        """Who settled the count that answered the last ambiguity ("camera"), for the resolve message."""


class AlertRules:
    """Stock and sensor alerts for every configured bin; see the module docstring for the rules."""

    def __init__(self, bins: Sequence[Bin], alerts: Alerts) -> None:
        self._dwell_s = alerts.dwell_s
        self._hysteresis = alerts.hysteresis_items
        self._bins = {b.id: _BinRules(b) for b in bins}
        self._by_id: dict[str, tuple[_BinRules, _Cond]] = {}
        self._pending: set[tuple[str, AlertKind]] = set()

    def rebind(self, b: Bin) -> None:
        """A bin's config changed live (installer binding or calibration): alerts name the new SKU/limits from
        now on; the rules' state (conditions, dwell timers, active alerts) is kept."""
        rules = self._bins.get(b.id)
        if rules is not None:
            rules.bin = b

    # --- inputs --------------------------------------------------------------------------------------------

    def update_count(
        self,
        bin_id: str,
        count: int | None,
        ts: float,
        *,
        uncertain: bool = False,
        resolved_by: str | None = None,
    ) -> list[AlertTransition]:
        """A bin's count changed (or became unknown). `uncertain` counts do not answer an ambiguity;
        `resolved_by` names who settled it when not the weight alone (`"camera"`, for the resolve message)."""
        br = self._bins.get(bin_id)
        if br is None:
            return []
        out = self._fire_due(ts)
        br.count = count
        if count is not None and not uncertain:
            if br.ambiguous_detail is not None:
                br.ambiguous_detail = None
                br.resolved_by = resolved_by
                self._clear_now(br, br.conds[AlertKind.AMBIGUOUS], ts, out)
                br.resolved_by = None
            if br.fault_details.pop(_RESTORED_FAULT, None) is not None:
                self._evaluate_fault(br, ts, out)
        for kind in _LEVEL_KINDS:
            self._evaluate_level(br, br.conds[kind], ts, out)
        return out

    def ambiguous(self, bin_id: str, ts: float, detail: str) -> list[AlertTransition]:
        """The estimator could not count a change; raise after the dwell unless a count answers it first."""
        br = self._bins.get(bin_id)
        if br is None:
            return []
        out = self._fire_due(ts)
        br.ambiguous_detail = detail
        cond = br.conds[AlertKind.AMBIGUOUS]
        if cond.alert_id is None and cond.pending_raise is None:
            cond.pending_raise = ts
            self._schedule(br, cond, ts, out)
        return out

    def misplaced(self, bin_id: str, active: bool, ts: float, detail: str = "") -> list[AlertTransition]:
        """Goods that do not belong on a weighed bin (camera fusion): raise after the dwell, or clear."""
        br = self._bins.get(bin_id)
        if br is None:
            return []
        out = self._fire_due(ts)
        if active:
            br.misplaced_detail = detail
        cond = br.conds[AlertKind.MISPLACED]
        self._drive(br, cond, raise_now=active, clear_now=not active, ts=ts, out=out)
        return out

    def misplaced_active(self, bin_id: str) -> bool:
        """A `misplaced` alert is raised (or its raise is pending) for the bin."""
        br = self._bins.get(bin_id)
        if br is None:
            return False
        cond = br.conds[AlertKind.MISPLACED]
        return cond.alert_id is not None or cond.pending_raise is not None

    def sensor_fault(
        self, bin_id: str, kind: str, active: bool, ts: float, detail: str = ""
    ) -> list[AlertTransition]:
        """A sensor-fault kind (overload, fault, out_of_range, drifting, silent, …) started or ended."""
        br = self._bins.get(bin_id)
        if br is None:
            return []
        out = self._fire_due(ts)
        if active:
            br.fault_details[kind] = detail
        else:
            br.fault_details.pop(kind, None)
        self._evaluate_fault(br, ts, out)
        return out

    def facing(self, bin_id: str, state: str, ts: float) -> list[AlertTransition]:
        """A camera-only bin's facing state changed (`ok`/`low`/`empty`/`unknown`): drive `out` and `low`.

        The camera stands in for the count (see the module docstring); call it only for bins without a
        weighing device — a weighed bin's level alerts come from its count.
        """
        br = self._bins.get(bin_id)
        if br is None:
            return []
        out = self._fire_due(ts)
        br.facing = state
        known = state in ("ok", "low", "empty")
        levels = (
            (AlertKind.OUT, state == "empty", state in ("low", "ok")),
            (AlertKind.LOW, state in ("low", "empty"), state == "ok"),
        )
        for kind, raise_now, clear_now in levels:
            self._drive(
                br, br.conds[kind], raise_now=known and raise_now, clear_now=clear_now, ts=ts, out=out
            )
        return out

    def apply(self, event: EngineEvent) -> list[AlertTransition]:
        """Route one estimator event to the matching input (passes `uncertain` through)."""
        if isinstance(event, CountChanged):
            return self.update_count(event.bin_id, event.count, event.ts, uncertain=event.uncertain)
        if isinstance(event, Ambiguous):
            return self.ambiguous(event.bin_id, event.ts, event.reason)
        return self.sensor_fault(event.bin_id, event.kind, event.active, event.ts, event.detail)

    def tick(self, ts: float) -> list[AlertTransition]:
        """Fire the dwell timers that ran out by `ts` (call it about once a second)."""
        return self._fire_due(ts)

    def acknowledge(self, alert_id: str, by: str, ts: float) -> AlertTransition | None:
        """Staff saw it. None when the id is unknown, already acknowledged, or resolved (even if only its
        dwell ran out and `tick()` has not reported it yet — that resolve is dated before this `ts`)."""
        found = self._by_id.get(alert_id)
        if found is None:
            return None
        br, cond = found
        if cond.state is not AlertState.RAISED:
            return None
        if cond.pending_clear is not None and cond.pending_clear + self._dwell_s <= ts:
            return None  # already resolved in effect; the next tick() reports it, dated when it happened
        cond.state = AlertState.ACKNOWLEDGED
        return AlertTransition(
            alert_id, br.bin.id, br.bin.sku, cond.kind, AlertState.ACKNOWLEDGED, ts, br.count,
            f"{cond.message} (acknowledged by {by})", cond.raised_at, by,
        )  # fmt: skip

    def restore(self, active_alerts: Iterable[AlertTransition]) -> list[str]:
        """Re-adopt the alerts that were active before a restart (their latest transition each).

        Returns the ids it ignored: resolved ones, unknown bins, and the older of two for one (bin, kind).
        A restored sensor-fault alert resolves once the bin reports a confirmed count again (the sensor
        works) unless a fault is reported meanwhile; level alerts re-evaluate on the first count.
        """
        ignored: list[str] = []
        for t in sorted(active_alerts, key=lambda a: a.raised_at):
            br = self._bins.get(t.bin_id)
            if br is None or t.state is AlertState.RESOLVED:
                ignored.append(t.alert_id)
                continue
            cond = br.conds[t.kind]
            if cond.alert_id is not None:
                ignored.append(cond.alert_id)
                self._by_id.pop(cond.alert_id, None)
            cond.alert_id = t.alert_id
            cond.state = t.state
            cond.raised_at = t.raised_at
            cond.message = t.message.split(" (acknowledged by ")[0]
            cond.pending_raise = cond.pending_clear = None
            self._by_id[t.alert_id] = (br, cond)
            br.last_raise_ms[t.kind] = max(br.last_raise_ms.get(t.kind, 0), int(t.raised_at * 1000))
            if t.kind is AlertKind.SENSOR_FAULT:
                br.fault_details.setdefault(_RESTORED_FAULT, "active before restart")
            elif t.kind is AlertKind.AMBIGUOUS:
                br.ambiguous_detail = "active before restart"
            if t.count is not None and br.count is None:
                br.count = t.count
        return ignored

    # --- views ---------------------------------------------------------------------------------------------

    def active(self, bin_id: str | None = None) -> list[AlertTransition]:
        """The active alerts (state raised or acknowledged), as their latest transition."""
        out: list[AlertTransition] = []
        for br in self._bins.values() if bin_id is None else [self._bins[bin_id]]:
            for cond in br.conds.values():
                if cond.alert_id is not None and cond.state is not None:
                    out.append(
                        AlertTransition(
                            cond.alert_id,
                            br.bin.id,
                            br.bin.sku,
                            cond.kind,
                            cond.state,
                            cond.raised_at,
                            br.count,
                            cond.message,
                            cond.raised_at,
                        )
                    )
        return out

    # --- machinery -----------------------------------------------------------------------------------------

    def _level_conditions(self, br: _BinRules, kind: AlertKind) -> tuple[bool, bool]:
        """(raise condition, resolve condition) for a level kind at the bin's current count."""
        count = br.count
        if count is None:
            return False, False
        b = br.bin
        h = self._hysteresis
        if kind is AlertKind.OUT:
            return count == 0, count >= min(1 + h, b.max_stock)
        if kind is AlertKind.LOW:
            return count < b.safety_stock, count >= min(b.safety_stock + h, b.max_stock)
        return count > b.max_stock, count <= max(b.max_stock - h, b.safety_stock)

    def _evaluate_level(self, br: _BinRules, cond: _Cond, ts: float, out: list[AlertTransition]) -> None:
        raise_now, clear_now = self._level_conditions(br, cond.kind)
        self._drive(br, cond, raise_now=raise_now, clear_now=clear_now, ts=ts, out=out)

    def _evaluate_fault(self, br: _BinRules, ts: float, out: list[AlertTransition]) -> None:
        active = bool(br.fault_details)
        self._drive(
            br, br.conds[AlertKind.SENSOR_FAULT], raise_now=active, clear_now=not active, ts=ts, out=out
        )

    def _drive(
        self,
        br: _BinRules,
        cond: _Cond,
        *,
        raise_now: bool,
        clear_now: bool,
        ts: float,
        out: list[AlertTransition],
    ) -> None:
        """Start or cancel the dwell timer for the transition the condition asks for."""
        if cond.alert_id is None:
            cond.pending_clear = None
            if not raise_now:
                cond.pending_raise = None
            elif cond.pending_raise is None:
                cond.pending_raise = ts
        else:
            cond.pending_raise = None
            if not clear_now:
                cond.pending_clear = None
            elif cond.pending_clear is None:
                cond.pending_clear = ts
        self._schedule(br, cond, ts, out)

    def _schedule(self, br: _BinRules, cond: _Cond, ts: float, out: list[AlertTransition]) -> None:
        key = (br.bin.id, cond.kind)
        since = cond.pending_raise if cond.pending_raise is not None else cond.pending_clear
        if since is None:
            self._pending.discard(key)
        elif since + self._dwell_s <= ts:
            self._fire(br, cond, out)
            self._pending.discard(key)
        else:
            self._pending.add(key)

    def _fire_due(self, ts: float) -> list[AlertTransition]:
        out: list[AlertTransition] = []
        if not self._pending:
            return out
        due: list[tuple[float, str, AlertKind]] = []
        for bin_id, kind in self._pending:
            cond = self._bins[bin_id].conds[kind]
            since = cond.pending_raise if cond.pending_raise is not None else cond.pending_clear
            if since is not None and since + self._dwell_s <= ts:
                due.append((since + self._dwell_s, bin_id, kind))
        for _, bin_id, kind in sorted(due):
            br = self._bins[bin_id]
            self._fire(br, br.conds[kind], out)
            self._pending.discard((bin_id, kind))
        return out

    def _fire(self, br: _BinRules, cond: _Cond, out: list[AlertTransition]) -> None:
        if cond.pending_raise is not None:
            at = cond.pending_raise + self._dwell_s
            cond.pending_raise = None
            self._raise(br, cond, at, out)
        elif cond.pending_clear is not None:
            at = cond.pending_clear + self._dwell_s
            cond.pending_clear = None
            self._resolve(br, cond, at, out)

    def _raise(self, br: _BinRules, cond: _Cond, at: float, out: list[AlertTransition]) -> None:
        ms = max(int(at * 1000), br.last_raise_ms.get(cond.kind, -1) + 1)
        br.last_raise_ms[cond.kind] = ms
        cond.alert_id = f"{br.bin.id}:{cond.kind}:{ms}"
        cond.state = AlertState.RAISED
        cond.raised_at = at
        cond.message = self._message(br, cond.kind)
        self._by_id[cond.alert_id] = (br, cond)
        out.append(
            AlertTransition(
                cond.alert_id,
                br.bin.id,
                br.bin.sku,
                cond.kind,
                AlertState.RAISED,
                at,
                br.count,
                cond.message,
                at,
            )
        )

    def _clear_now(self, br: _BinRules, cond: _Cond, ts: float, out: list[AlertTransition]) -> None:
        """Resolve without dwell (ambiguity answered) and drop a pending raise."""
        cond.pending_raise = None
        self._pending.discard((br.bin.id, cond.kind))
        if cond.alert_id is not None:
            self._resolve(br, cond, ts, out)

    def _resolve(self, br: _BinRules, cond: _Cond, at: float, out: list[AlertTransition]) -> None:
        alert_id = cond.alert_id
        if alert_id is None:
            return
        out.append(
            AlertTransition(
                alert_id,
                br.bin.id,
                br.bin.sku,
                cond.kind,
                AlertState.RESOLVED,
                at,
                br.count,
                self._resolved_message(br, cond.kind),
                cond.raised_at,
            )
        )
        del self._by_id[alert_id]
        cond.alert_id = None
        cond.state = None
        cond.pending_clear = None

    def _message(self, br: _BinRules, kind: AlertKind) -> str:
        b, count = br.bin, br.count
        if kind is AlertKind.OUT:
            return f"{b.sku} out of stock at {b.id}"
        if kind is AlertKind.LOW:
            if count is None and br.facing is not None:
                return f"{b.sku} low at {b.id}: the camera sees the facing {br.facing}"
            return f"{b.sku} low at {b.id}: {count} left, safety stock {b.safety_stock}"
        if kind is AlertKind.OVER:
            return f"{b.sku} over capacity at {b.id}: {count} on the shelf, max {b.max_stock}"
        if kind is AlertKind.AMBIGUOUS:
            return f"{b.sku} at {b.id}: count needs checking ({br.ambiguous_detail})"
        if kind is AlertKind.MISPLACED:
            return f"{b.sku} at {b.id}: goods that do not belong here ({br.misplaced_detail})"
        kinds = ", ".join(sorted(br.fault_details)) or "unknown"
        return f"{b.sku} at {b.id}: sensor fault ({kinds})"

    def _resolved_message(self, br: _BinRules, kind: AlertKind) -> str:
        b, count = br.bin, br.count
        if kind is AlertKind.SENSOR_FAULT:
            return f"{b.sku} at {b.id}: sensor back to normal"
        if kind is AlertKind.AMBIGUOUS:
            by = f" (resolved_by: {br.resolved_by})" if br.resolved_by else ""
            return f"{b.sku} at {b.id}: count confirmed at {count}{by}"
        if kind is AlertKind.MISPLACED:
            return f"{b.sku} at {b.id}: the foreign goods are gone, {count} on the shelf"
        if count is None and br.facing is not None:
            return f"{b.sku} at {b.id}: {kind} cleared, the camera sees the facing {br.facing}"
        return f"{b.sku} at {b.id}: {kind} cleared, {count} on the shelf"
