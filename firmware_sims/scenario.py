"""What happens in the store: shoppers pick, staff restock, and a ground-truth log of every change.

`StoreScenario` moves items on the weighed bins (Modbus and BLE alike); `DeviceScenario` gives the other
devices life — checkouts at the lanes (a member scan now and then, product scans, a weighing), handheld
scans, and RFID tags carried from a shelf zone to the exit and brought back — as a log of `DeviceAction`s the
runner performs on the simulators.

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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

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


@dataclass(frozen=True, slots=True)
class DeviceAction:
    """One thing a device does: `scan` (a scanner reads `code`), `load` / `unload` (`grams` on / off a scale's
    pan), `tag_in` / `tag_out` (tag `epc` enters / leaves a reader's field)."""

    t: float
    device_id: str
    action: Literal["scan", "load", "unload", "tag_in", "tag_out"]
    code: str = ""
    symbology: str | None = None
    grams: float = 0.0
    epc: str = ""


class DeviceScenario:
    """Checkouts, handheld scans and tags walking to the exit, on the same discrete-event clock as the shelves.

    - Every lane (a scanner with `role: lane`) checks a customer out every ~`checkout_every_s` (exponential):
      a member code first in `member_share` of checkouts, then 1–3 product scans a second apart, and — when
      the lane has a scale — loose goods weighed (`load`, then `unload` a few seconds later).
    - Every handheld / receiving scanner scans one product every ~`handheld_every_s`.
    - Every ~`tag_walk_every_s` a tag leaves a shelf reader's field for an exit reader's field, stays there for
      `exit_dwell_s`, and is brought back to its shelf `return_after_s` later (so the demo goes on for ever).

    `lane_checkouts=False` leaves the lanes (and their scales) alone, for a driver that rings up real sales.
    `advance(t)` returns the actions due; `log` keeps them all. Reproducible for a seed.
    """

    def __init__(
        self,
        layout: SimLayout,
        *,
        seed: int | None = None,
        checkout_every_s: float = 20.0,
        handheld_every_s: float = 30.0,
        tag_walk_every_s: float = 25.0,
        exit_dwell_s: float = 12.0,
        return_after_s: float = 10.0,
        member_share: float = 0.4,
        start_s: float = 0.0,
        lane_checkouts: bool = True,
    ) -> None:
        if min(checkout_every_s, handheld_every_s, tag_walk_every_s) <= 0:
            raise ValueError("event intervals must be positive")
        self.layout = layout
        self.log: list[DeviceAction] = []
        self._rng = random.Random(derive_seed(layout.seed if seed is None else seed, "devices"))
        self._products = [c for c in layout.codes if not c.member]
        self._members = [c for c in layout.codes if c.member]
        self._scale_of_lane = {s.lane: s.device_id for s in layout.scales if s.lane is not None}
        self._checkout_every_s = checkout_every_s
        self._handheld_every_s = handheld_every_s
        self._tag_walk_every_s = tag_walk_every_s
        self._exit_dwell_s = exit_dwell_s
        self._return_after_s = return_after_s
        self._member_share = member_share
        self._tags_at: dict[str, set[str]] = {r.device_id: set(r.tags) for r in layout.rfid_readers}
        self._shelf_readers = [r.device_id for r in layout.rfid_readers if r.zone_kind == "shelf"]
        self._exit_readers = [r.device_id for r in layout.rfid_readers if r.zone_kind == "exit"]
        self._heap: list[tuple[float, int, DeviceAction | tuple[str, str]]] = []
        self._seq = 0
        if self._products:
            for sc in layout.scanners:
                if sc.role == "lane" and not lane_checkouts:
                    continue  # someone else works the lane (the demo's cashier, shelfgate/demo_cashier.py)
                every = checkout_every_s if sc.role == "lane" else handheld_every_s
                self._push(start_s + self._rng.expovariate(1.0 / every), ("episode", sc.device_id))
        if self._shelf_readers and self._exit_readers:
            self._push(start_s + self._rng.expovariate(1.0 / tag_walk_every_s), ("episode", "tag_walk"))

    def _push(self, t: float, item: DeviceAction | tuple[str, str]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, item))

    def next_event_s(self) -> float | None:
        """When the next action or episode is due, or None when nothing will happen."""
        return self._heap[0][0] if self._heap else None

    def advance(self, t: float) -> list[DeviceAction]:
        """Every action due at or before `t`, in time order (episodes due schedule their actions first)."""
        out: list[DeviceAction] = []
        while self._heap and self._heap[0][0] <= t:
            due, _, item = heapq.heappop(self._heap)
            if isinstance(item, DeviceAction):
                self._apply(item)
                self.log.append(item)
                out.append(item)
            else:
                self._episode(due, item[1])
        return out

    def _apply(self, action: DeviceAction) -> None:
        if action.action == "tag_in":
            self._tags_at[action.device_id].add(action.epc)
        elif action.action == "tag_out":
            self._tags_at[action.device_id].discard(action.epc)

    def _episode(self, t: float, name: str) -> None:
        if name == "tag_walk":
            self._tag_walk(t)
            self._push(t + self._rng.expovariate(1.0 / self._tag_walk_every_s), ("episode", name))
            return
        scanner = next(s for s in self.layout.scanners if s.device_id == name)
        if scanner.role == "lane":
            self._checkout(t, scanner.device_id, scanner.lane)
            every = self._checkout_every_s
        else:
            code = self._rng.choice(self._products)
            self._push(t, DeviceAction(t, scanner.device_id, "scan", code.data, code.symbology))
            every = self._handheld_every_s
        self._push(t + self._rng.expovariate(1.0 / every), ("episode", name))

    def _checkout(self, t: float, scanner_id: str, lane: str | None) -> None:
        at = t
        if self._members and self._rng.random() < self._member_share:
            code = self._rng.choice(self._members)
            self._push(at, DeviceAction(at, scanner_id, "scan", code.data, code.symbology))
            at += 1.0
        for _ in range(self._rng.randint(1, 3)):
            code = self._rng.choice(self._products)
            self._push(at, DeviceAction(at, scanner_id, "scan", code.data, code.symbology))
            at += 1.0
        scale_id = self._scale_of_lane.get(lane) if lane is not None else None
        if scale_id is not None:
            grams = round(self._rng.uniform(150.0, 1500.0), 1)
            self._push(at, DeviceAction(at, scale_id, "load", grams=grams))
            self._push(at + 4.0, DeviceAction(at + 4.0, scale_id, "unload"))

    def _tag_walk(self, t: float) -> None:
        stocked = [r for r in self._shelf_readers if self._tags_at[r]]
        if not stocked:
            return
        shelf = self._rng.choice(stocked)
        epc = self._rng.choice(sorted(self._tags_at[shelf]))
        exit_reader = self._rng.choice(self._exit_readers)
        leave_exit = t + self._exit_dwell_s
        back = leave_exit + self._return_after_s
        self._tags_at[shelf].discard(epc)  # reserved now: a second walk must not pick it meanwhile
        self._push(t, DeviceAction(t, shelf, "tag_out", epc=epc))
        self._push(t, DeviceAction(t, exit_reader, "tag_in", epc=epc))
        self._push(leave_exit, DeviceAction(leave_exit, exit_reader, "tag_out", epc=epc))
        self._push(back, DeviceAction(back, shelf, "tag_in", epc=epc))

    async def run(
        self, clock: Callable[[], float], perform: Callable[[DeviceAction], Awaitable[None]]
    ) -> None:
        """Advance in real time, performing each action, until cancelled."""
        while (due := self.next_event_s()) is not None:
            await asyncio.sleep(max(0.0, due - clock()))
            for action in self.advance(clock()):
                await perform(action)
        await asyncio.Event().wait()


__all__ = [
    "DeviceAction",
    "DeviceScenario",
    "Scenario",
    "ScriptStep",
    "ScriptedScenario",
    "StockChange",
    "StoreScenario",
]
