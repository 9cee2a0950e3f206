"""Shrink signal (issue #6 part 6, `shrink.suspected` → alert kind `shrink_suspected`).

Per SKU (all its bins together), over a sliding window of `shrink.window_min` (default 4 h):

    unexplained = picks − put_backs − sold

- **picks**: units taken off the shelf (`CountChanged` with cause `pick`, delta < 0) in the window, except the
  last `grace_min` — a pick that recent may still be on its way to the checkout;
- **put_backs**: units put on the shelf (cause `put`) within `put_back_min` after a pick of the same SKU, up to
  the units picked and not yet put back — a shopper changing their mind offsets their pick. A put beyond that
  (later, or more units than were picked) is a **restock**: it explains no pick and is only reported;
- **sold**: units of the SKU's GTIN sold at the lanes in the whole window (`edge.signals.units_sold`). Counting
  sales over the whole window but picks only up to the grace errs towards *explained*: a false shrink alert
  costs staff trust, a late one costs a few minutes.

Reconciliations (absolute recounts) are neither picks nor puts. Raise when unexplained > tolerance =
max(`tolerance_units`, ⌈`tolerance_pct` % × picks⌉); resolve when it is back within tolerance (the window
slid past the loss, or late sales explained it). Evaluated every `shrink.tick_s`. The alert's `count` is the
unexplained units; its message carries every number::

    shrink_suspected sku=S bins=B1,B2 window_min=240 picks=12 put_backs=1 restocked=0 sold=4 unexplained=7 tolerance=3

The pick history is in memory: a restart starts the window afresh, and an alert restored from the database
is kept (it may not resolve on an empty window) until a whole window has been seen again.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cloud_bridge.contract import AlertKind
from edge.config import Bin, ShrinkRules
from edge.inventory.alerts import AlertTransition
from edge.inventory.events import CountChanged
from edge.signals import SignalAlerts, gtin14

KIND = AlertKind.SHRINK_SUSPECTED


@dataclass(frozen=True, slots=True)
class ShrinkNumbers:
    """One SKU's window: what was picked, put back, restocked and sold, and what that leaves unexplained."""

    sku: str
    picks: int
    put_backs: int
    restocked: int
    sold: int
    tolerance: int

    @property
    def unexplained(self) -> int:
        """Picks not explained by put-backs or sales (≥ 0)."""
        return max(self.picks - self.put_backs - self.sold, 0)


def window_numbers(
    moves: list[tuple[float, int]],
    sold: int,
    *,
    sku: str,
    now: float,
    cfg: ShrinkRules,
) -> ShrinkNumbers:
    """Pure: the window's numbers from a SKU's shelf moves (ts, delta; oldest first) and its units sold."""
    start = now - cfg.window_min * 60
    end = now - cfg.grace_min * 60
    put_back_s = cfg.put_back_min * 60
    open_picks: deque[list[float]] = deque()
    """[ts, units not yet put back] of picks within put_back_s of the current move."""
    picks = put_backs = restocked = 0
    for ts, delta in moves:
        while open_picks and open_picks[0][0] < ts - put_back_s:
            open_picks.popleft()
        counted = start <= ts < end
        if delta < 0:
            open_picks.append([ts, float(-delta)])
            if counted:
                picks += -delta
            continue
        left = delta
        for pick in reversed(open_picks):  # the newest pick is the likeliest one put back
            if left == 0:
                break
            taken = int(min(pick[1], left))
            pick[1] -= taken
            left -= taken
            if start <= pick[0] < end:
                put_backs += taken
        if counted:
            restocked += left
    tolerance = max(cfg.tolerance_units, math.ceil(cfg.tolerance_pct / 100 * picks))
    return ShrinkNumbers(sku, picks, put_backs, restocked, sold, tolerance)


class ShrinkWatch:
    """Shelf moves per SKU and the `shrink_suspected` alerts; see the module docstring."""

    def __init__(self, cfg: ShrinkRules, bins: Mapping[str, Bin], alerts: SignalAlerts) -> None:
        self.cfg = cfg
        self.enabled = cfg.enabled
        self._bins = bins
        self._alerts = alerts
        self._moves: dict[str, deque[tuple[float, int]]] = {}
        """SKU → (ts, delta) of picks and puts, oldest first."""
        self._last: dict[str, ShrinkNumbers] = {}
        self._hold: dict[str, float] = {}
        """SKU → until when a restored alert is not resolved (the window refills after a restart)."""

    def sales_window(self, now: float) -> tuple[float, float]:
        """The time range whose sales explain the window's picks."""
        return now - self.cfg.window_min * 60, now

    def restored(self, sku: str, now: float) -> None:
        """A `shrink_suspected` alert of `sku` was active before the restart: the in-memory history is gone,
        so it is kept (not resolved on an empty window) until a whole window has been seen again."""
        self._hold[sku] = now + self.cfg.window_min * 60

    def observe(self, c: CountChanged) -> None:
        """A counted pick or put on a bin (reconciliations are skipped: not a move of goods we saw)."""
        b = self._bins.get(c.bin_id)
        if not self.enabled or b is None or c.delta == 0 or c.cause not in ("pick", "put"):
            return
        if (c.cause == "pick") != (c.delta < 0):
            return
        self._moves.setdefault(b.sku, deque()).append((c.ts, c.delta))

    def _bins_of(self, sku: str) -> list[str]:
        return sorted(bin_id for bin_id, b in self._bins.items() if b.sku == sku)

    def evaluate(self, now: float, sold: Mapping[str, int]) -> list[AlertTransition]:
        """Each SKU's window at `now`; `sold` = units sold per GTIN in `sales_window(now)`."""
        if not self.enabled:
            return []
        out: list[AlertTransition] = []
        horizon = now - (self.cfg.window_min + self.cfg.put_back_min) * 60
        for sku in sorted(set(self._moves) | set(self._alerts.keys(KIND))):
            moves = self._moves.get(sku, deque())
            while moves and moves[0][0] < horizon:
                moves.popleft()
            n = window_numbers(list(moves), sold.get(gtin14(sku), 0), sku=sku, now=now, cfg=self.cfg)
            self._last[sku] = n
            bins = self._bins_of(sku)
            numbers = (
                f"sku={sku} bins={','.join(bins)} window_min={self.cfg.window_min:g} picks={n.picks}"
                f" put_backs={n.put_backs} restocked={n.restocked} sold={n.sold} unexplained={n.unexplained}"
                f" tolerance={n.tolerance}"
            )
            if n.unexplained > n.tolerance:
                t = self._alerts.raise_alert(
                    KIND, sku, bin_id=bins[0] if bins else sku, sku=sku, ts=now, count=n.unexplained,
                    message=f"shrink_suspected {numbers}",
                )  # fmt: skip
            elif self._hold.get(sku, 0.0) > now:
                t = None
            else:
                self._hold.pop(sku, None)
                t = self._alerts.resolve(
                    KIND, sku, now, count=n.unexplained, message=f"shrink_suspected cleared {numbers}"
                )
            if t is not None:
                out.append(t)
            if not moves:
                self._moves.pop(sku, None)
        return out

    def view(self) -> list[dict[str, Any]]:
        """The last evaluated numbers per SKU."""
        return [
            {
                "sku": n.sku,
                "picks": n.picks,
                "put_backs": n.put_backs,
                "restocked": n.restocked,
                "sold": n.sold,
                "unexplained": n.unexplained,
                "tolerance": n.tolerance,
                "shrink_suspected": self._alerts.is_active(KIND, n.sku),
            }
            for n in sorted(self._last.values(), key=lambda n: n.sku)
        ]


__all__ = ["ShrinkNumbers", "ShrinkWatch", "window_numbers"]
