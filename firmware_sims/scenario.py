"""What happens in the store: shoppers pick, staff restock, and a ground-truth log of every change.

Scenarios are discrete-event simulations on the shelves' clock: `advance(t)` applies every event scheduled
at or before `t`, each at its *scheduled* time (not at the wall-clock time the loop happened to wake up), so
a run with one seed is reproducible and a test can drive a scenario with no event loop at all. `run(clock)`
is the async driver the runner names `sim.scenario`.

The ground truth (`log`, `true_counts`) is what an end-to-end test compares the gateway's stock against.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from .layout import SimLayout
from .shelf import Shelf, derive_seed


class StockChange(NamedTuple):
    """One ground-truth change: at `t`, `delta` items (negative = picked) moved on `bin_id`."""

    t: float
    bin_id: str
    delta: int
    count_after: int


class Scenario(Protocol):
    """What the runner drives; both scenarios below implement it."""

    log: list[StockChange]

    @property
    def true_counts(self) -> dict[str, int]:
        """bin id → the count actually on the plate."""
        ...

    def next_event_s(self) -> float | None:
        """When the next event is due (simulation seconds), or None when nothing more will happen."""
        ...

    def advance(self, t: float) -> list[StockChange]:
        """Apply every event due at or before `t`; return the changes made."""
        ...

    def apply(self, t: float, bin_id: str, delta: int) -> StockChange:
        """Move items now, outside the schedule (a test's hand on the shelf), and record it in the log."""
        ...

    async def wait_for_changes(self, count: int) -> None:
        """Return once the log holds at least `count` changes (wrap it in a timeout)."""
        ...

    async def run(self, clock: Callable[[], float]) -> None:
        """Advance in real time until cancelled (or until no event remains)."""
        ...


class _Base:
    def __init__(self, shelves: Mapping[str, Shelf]) -> None:
        self.shelves = dict(shelves)
        self.log: list[StockChange] = []
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    @property
    def true_counts(self) -> dict[str, int]:
        return {bin_id: shelf.count for bin_id, shelf in self.shelves.items()}

    def apply(self, t: float, bin_id: str, delta: int) -> StockChange:
        shelf = self.shelves[bin_id]
        if delta < 0:
            shelf.pick(-delta, t)
        else:
            shelf.put(delta, t)
        change = StockChange(t, bin_id, delta, shelf.count)
        self.log.append(change)
        still_waiting = []
        for count, fut in self._waiters:
            if len(self.log) >= count:
                if not fut.done():
                    fut.set_result(None)
            else:
                still_waiting.append((count, fut))
        self._waiters = still_waiting
        return change

    async def wait_for_changes(self, count: int) -> None:
        if len(self.log) >= count:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((count, fut))
        await fut

    def next_event_s(self) -> float | None:
        raise NotImplementedError

    def advance(self, t: float) -> list[StockChange]:
        raise NotImplementedError

    async def run(self, clock: Callable[[], float]) -> None:
        while (due := self.next_event_s()) is not None:
            await asyncio.sleep(max(0.0, due - clock()))
            self.advance(clock())
        await asyncio.Event().wait()  # nothing more will happen; stay alive until the owner cancels


@dataclass(frozen=True, slots=True)
class ScriptStep:
    """One scripted change: at `at_s`, move `delta` items on `bin_id` (negative = pick)."""

    at_s: float
    bin_id: str
    delta: int


class ScriptedScenario(_Base):
    """Explicit steps in time order, for tests; validated up front (a step below zero is refused)."""

    def __init__(self, shelves: Mapping[str, Shelf], steps: Sequence[ScriptStep]) -> None:
        super().__init__(shelves)
        ordered = sorted(steps, key=lambda s: s.at_s)
        counts = self.true_counts
        for step in ordered:
            if step.bin_id not in counts:
                raise ValueError(f"script step at {step.at_s}s names unknown bin {step.bin_id!r}")
            counts[step.bin_id] += step.delta
            if counts[step.bin_id] < 0:
                raise ValueError(f"script step at {step.at_s}s takes bin {step.bin_id} below zero")
        self._pending = list(ordered)

    def next_event_s(self) -> float | None:
        return self._pending[0].at_s if self._pending else None

    def advance(self, t: float) -> list[StockChange]:
        out = []
        while self._pending and self._pending[0].at_s <= t:
            step = self._pending.pop(0)
            out.append(self.apply(step.at_s, step.bin_id, step.delta))
        return out


class StoreScenario(_Base):
    """Shoppers and staff.

    - Shoppers arrive as a Poisson process (`shopper_rate_per_min`); each picks 1–3 items (`items_per_pick`)
      from one random non-empty bin, never more than the bin holds.
    - Staff refill a bin to `max_stock` once its true count has been below `safety_stock` for
      `restock_delay_s` (DOMAIN.md: "alert when stock falls below the safety stock").
    - `first_low_at_s`: if no bin is below safety stock by then, a shopper empties the bin closest to its
      threshold just below it, so a demo always shows a low-stock alert (and its restock) within ~30 s.
    """

    def __init__(
        self,
        layout: SimLayout,
        shelves: Mapping[str, Shelf],
        *,
        seed: int | None = None,
        shopper_rate_per_min: float = 6.0,
        restock_delay_s: float = 10.0,
        items_per_pick: tuple[int, int] = (1, 3),
        first_low_at_s: float | None = 15.0,
        start_s: float = 0.0,
    ) -> None:
        super().__init__(shelves)
        if shopper_rate_per_min < 0 or restock_delay_s < 0:
            raise ValueError("shopper_rate_per_min and restock_delay_s must not be negative")
        lo, hi = items_per_pick
        if not 1 <= lo <= hi:
            raise ValueError("items_per_pick must be (low, high) with 1 <= low <= high")
        self.layout = layout
        self.shopper_rate_per_min = shopper_rate_per_min
        self.restock_delay_s = restock_delay_s
        self.items_per_pick = items_per_pick
        self._bins = {b.bin_id: b for b in layout.bins if b.bin_id in self.shelves}
        self._rng = random.Random(derive_seed(layout.seed if seed is None else seed, "shoppers"))
        self._next_shopper_s = start_s + self._interarrival_s()
        self._first_low_s = first_low_at_s if first_low_at_s is not None else math.inf
        self._restock_due: dict[str, float] = {}
        self._restock_heap: list[tuple[float, str]] = []
        for bin_id in sorted(self._bins):
            self._maybe_schedule_restock(start_s, bin_id)

    def _interarrival_s(self) -> float:
        if self.shopper_rate_per_min <= 0:
            return math.inf
        return self._rng.expovariate(self.shopper_rate_per_min / 60.0)

    def _is_low(self, bin_id: str) -> bool:
        return self.shelves[bin_id].count < self._bins[bin_id].safety_stock

    def _maybe_schedule_restock(self, t: float, bin_id: str) -> None:
        if self._is_low(bin_id) and bin_id not in self._restock_due:
            due = t + self.restock_delay_s
            self._restock_due[bin_id] = due
            heapq.heappush(self._restock_heap, (due, bin_id))

    def apply(self, t: float, bin_id: str, delta: int) -> StockChange:
        """Move items (scheduled or by hand); a pick that takes the bin below safety stock calls the staff."""
        change = super().apply(t, bin_id, delta)
        if delta < 0 and bin_id in self._bins:
            self._maybe_schedule_restock(t, bin_id)
        return change

    @property
    def restocks_pending(self) -> dict[str, float]:
        """bin id → when staff will refill it."""
        return dict(self._restock_due)

    def next_event_s(self) -> float | None:
        due = min(self._next_shopper_s, self._first_low_s)
        if self._restock_heap:
            due = min(due, self._restock_heap[0][0])
        return None if math.isinf(due) else due

    def advance(self, t: float) -> list[StockChange]:
        out: list[StockChange] = []
        while (due := self.next_event_s()) is not None and due <= t:
            if self._restock_heap and self._restock_heap[0][0] == due:
                _, bin_id = heapq.heappop(self._restock_heap)
                del self._restock_due[bin_id]
                missing = self._bins[bin_id].max_stock - self.shelves[bin_id].count
                if missing > 0:
                    out.append(self.apply(due, bin_id, missing))
            elif self._first_low_s == due:
                self._first_low_s = math.inf
                out.extend(self._force_first_low(due))
            else:
                self._next_shopper_s = due + self._interarrival_s()
                out.extend(self._shopper(due))
        return out

    def _shopper(self, t: float) -> list[StockChange]:
        stocked = [b for b in sorted(self._bins) if self.shelves[b].count > 0]
        if not stocked:
            return []
        bin_id = self._rng.choice(stocked)
        n = min(self._rng.randint(*self.items_per_pick), self.shelves[bin_id].count)
        return [self.apply(t, bin_id, -n)]

    def _force_first_low(self, t: float) -> list[StockChange]:
        if self._restock_due or not self._bins:
            return []  # a bin is already low: the demo has its alert
        candidates = [b for b in sorted(self._bins) if self._bins[b].safety_stock > 0]
        if not candidates:
            return []
        bin_id = min(candidates, key=lambda b: self.shelves[b].count - self._bins[b].safety_stock)
        n = self.shelves[bin_id].count - self._bins[bin_id].safety_stock + 1
        if n <= 0:
            return []
        return [self.apply(t, bin_id, -n)]


__all__ = ["Scenario", "ScriptStep", "ScriptedScenario", "StockChange", "StoreScenario"]
