"""What counts as delivered, and how fast: the bench's accounting, kept free of I/O so it can be tested.

**A reading** is one poll of one transmitter: all 4 channel values at one instant. Expected readings/s =
transmitters × poll rate, the same number on both sides.

* **Peer**: it publishes telemetry per poll (`v1/gateway/telemetry`, `{"tx007": [{"ts": ms, "values":
  {"w0": …, …}}, …]}`); each entry that reaches the broker is one delivered reading. CPU per reading =
  the peer process's CPU / readings received at the broker in the same window.
* **shelfgate**: it does not forward readings; it publishes what they mean — `stock.changed` events in
  batches on `shelfgate/v1/stores/{id}/events`. Its readings are counted where its work on them ends: a poll
  decoded and fed to the engine (`TransmitterPoller.counters.ok`). CPU per reading = the gateway process's CPU
  (Modbus, decode, estimators, rules, SQLite, MQTT — all of it) / readings that reached the engine.

**Delivered fraction of value changes** is the part that compares like with like: the simulator logs every
change of a channel (`sim.py`), and

* for the peer a change is delivered when a telemetry entry stamped after the change carries the new value
  (before the channel changes again); latency = broker arrival − change;
* for shelfgate a change is delivered when exactly one `stock.changed` with cause pick/put, the right
  `delta` and the right `count` arrives for that bin (before the bin's next change); any other non-initial
  stock event for the bin is counted as *wrong*. Latency = broker arrival − change, which includes the
  engine's settle window (it counts only stable readings, DOMAIN.md) — the peer has no such step.

Latency percentiles are nearest-rank. Every time here is `time.monotonic()` (CLOCK_MONOTONIC is one clock
for all processes on the machine) except where a payload carries wall-clock time (the peer's `ts`, the
event's `ts`), which is compared with the change's wall-clock time only to order readings, never for latency.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from drivers.modbus.protocol import t35_s

from .layout import parse_bin_id

PEER_TELEMETRY_TOPIC = "v1/gateway/telemetry"
SHELFGATE_EVENTS_SUFFIX = "/events"


@dataclass(frozen=True, slots=True)
class Change:
    """One change the simulator made (a line of its changes file)."""

    mono: float
    wall: float
    device: int
    channel: int
    count: int
    delta: int
    raw: int


@dataclass(frozen=True, slots=True)
class Message:
    """One MQTT message as the subscriber received it."""

    mono: float
    topic: str
    payload: str


@dataclass(frozen=True, slots=True)
class PeerReading:
    """One telemetry entry of the peer: one poll of one device."""

    mono: float
    device: int
    ts_wall: float
    values: dict[str, float]


@dataclass(frozen=True, slots=True)
class StockEvent:
    """One `stock.changed` event of shelfgate as received (duplicates are kept; see `dedupe`)."""

    mono: float
    event_id: str
    seq: int
    device: int
    channel: int
    count: int
    delta: int
    cause: str
    ts_wall: float


@dataclass(slots=True)
class MatchResult:
    """How the changes of one run were (or were not) delivered."""

    changes: int = 0
    delivered: int = 0
    wrong: int = 0
    """shelfgate only: stock events that match no change (wrong count or delta, reconcile, extra)."""
    duplicates: int = 0
    """shelfgate only: events received more than once (at-least-once delivery; the hub drops them by id)."""
    latencies_s: list[float] = field(default_factory=list)

    @property
    def fraction(self) -> float | None:
        """Delivered / changes; None without changes."""
        return self.delivered / self.changes if self.changes else None


# --- parsing ---------------------------------------------------------------------------------------------


def device_index(name: str) -> int | None:
    """`tx007` → 7; None for names that are not bench transmitters."""
    if len(name) > 2 and name.startswith("tx") and name[2:].isdigit():
        return int(name[2:])
    return None


def read_changes(path: Path) -> list[Change]:
    """The simulator's changes file."""
    out: list[Change] = []
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            d = json.loads(line)
            out.append(
                Change(
                    float(d["mono"]),
                    float(d["wall"]),
                    int(d["device"]),
                    int(d["channel"]),
                    int(d["count"]),
                    int(d["delta"]),
                    int(d["raw"]),
                )
            )
    return out


def parse_message_line(line: str) -> Message | None:
    """`MONO<TAB>TOPIC<TAB>PAYLOAD` → Message; None for a torn or empty line."""
    parts = line.rstrip("\n").split("\t", 2)
    if len(parts) != 3:
        return None
    try:
        return Message(float(parts[0]), parts[1], parts[2])
    except ValueError:
        return None


def read_messages(path: Path) -> list[Message]:
    """The subscriber's file."""
    if not path.exists():
        return []
    with path.open(encoding="utf-8", errors="replace") as f:
        return [m for m in map(parse_message_line, f) if m is not None]


def peer_readings(messages: Iterable[Message]) -> list[PeerReading]:
    """Every telemetry entry in the peer's `v1/gateway/telemetry` messages (malformed ones are skipped)."""
    out = []
    for m in messages:
        if m.topic != PEER_TELEMETRY_TOPIC:
            continue
        try:
            body = json.loads(m.payload)
        except ValueError:
            continue
        if not isinstance(body, dict):
            continue
        for name, entries in body.items():
            dev = device_index(name)
            if dev is None or not isinstance(entries, list):
                continue
            for e in entries:
                if isinstance(e, dict) and isinstance(e.get("values"), dict):
                    ts = e.get("ts")
                    out.append(
                        PeerReading(
                            m.mono,
                            dev,
                            float(ts) / 1000.0 if isinstance(ts, int | float) else m.mono,
                            {k: v for k, v in e["values"].items() if isinstance(v, int | float)},
                        )
                    )
    return out


def _rfc3339_to_epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def shelfgate_stock_events(messages: Iterable[Message]) -> list[StockEvent]:
    """Every `stock.changed` in shelfgate's event batches, in arrival order (duplicates included)."""
    out = []
    for m in messages:
        if not m.topic.endswith(SHELFGATE_EVENTS_SUFFIX):
            continue
        try:
            batch = json.loads(m.payload)
        except ValueError:
            continue
        for ev in batch.get("events", []) if isinstance(batch, dict) else []:
            if not isinstance(ev, dict) or ev.get("type") != "stock.changed":
                continue
            data = ev.get("data", {})
            try:
                dev, ch = parse_bin_id(str(data.get("bin_id")))
                out.append(
                    StockEvent(
                        m.mono,
                        str(ev["id"]),
                        int(ev["seq"]),
                        dev,
                        ch,
                        int(data["count"]),
                        int(data["delta"]),
                        str(data["cause"]),
                        _rfc3339_to_epoch(str(ev["ts"])),
                    )
                )
            except (KeyError, ValueError, TypeError):
                continue
    return out


def dedupe(events: Sequence[StockEvent]) -> tuple[list[StockEvent], int]:
    """First arrival of each event id, and how many later arrivals repeated one."""
    seen: set[str] = set()
    out = []
    for e in events:
        if e.event_id in seen:
            continue
        seen.add(e.event_id)
        out.append(e)
    return out, len(events) - len(out)


# --- counting --------------------------------------------------------------------------------------------


def readings_between(readings: Iterable[PeerReading], start_mono: float, end_mono: float) -> int:
    """Peer readings that reached the broker in [start, end)."""
    return sum(1 for r in readings if start_mono <= r.mono < end_mono)


def distinct_readings_taken(readings: Iterable[PeerReading], start_wall: float, end_wall: float) -> int:
    """Distinct peer readings (device, ts) *taken* in [start, end) wall time, whenever they arrived."""
    return len({(r.device, r.ts_wall) for r in readings if start_wall <= r.ts_wall < end_wall})


def _next_change_walls(changes: Sequence[Change]) -> dict[int, float]:
    """index in `changes` → wall time of the next change of the same channel (inf when none)."""
    by_channel: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, c in enumerate(changes):
        by_channel[(c.device, c.channel)].append(i)
    nxt: dict[int, float] = {}
    for idx in by_channel.values():
        idx.sort(key=lambda i: changes[i].wall)
        for a, b in zip(idx, [*idx[1:], None], strict=True):
            nxt[a] = changes[b].wall if b is not None else math.inf
    return nxt


def match_peer(changes: Sequence[Change], readings: Sequence[PeerReading]) -> MatchResult:
    """A change is delivered by the first reading taken after it that shows the new raw value.

    Only readings taken before the channel's next change count (after that the value shown is another one).
    """
    by_device: dict[int, list[PeerReading]] = defaultdict(list)
    for r in readings:
        by_device[r.device].append(r)
    for rs in by_device.values():
        rs.sort(key=lambda r: (r.ts_wall, r.mono))
    nxt = _next_change_walls(changes)
    res = MatchResult(changes=len(changes))
    for i, c in enumerate(changes):
        key = f"w{c.channel}"
        for r in by_device.get(c.device, []):
            if r.ts_wall < c.wall:
                continue
            if r.ts_wall >= nxt[i]:
                break
            if r.values.get(key) == c.raw:
                res.delivered += 1
                res.latencies_s.append(r.mono - c.mono)
                break
    return res


def match_shelfgate(
    changes: Sequence[Change], events: Sequence[StockEvent], *, since_wall: float
) -> MatchResult:
    """Each change must produce exactly one right `stock.changed` (pick/put, delta, count) for its bin.

    Events stamped before `since_wall` (start-up's initial counts) are ignored; `initial` events are never
    matched and never wrong. Every other event of a bin that no change explains is `wrong`.
    """
    unique, dups = dedupe(events)
    res = MatchResult(changes=len(changes), duplicates=dups)
    by_bin_events: dict[tuple[int, int], list[StockEvent]] = defaultdict(list)
    for e in unique:
        if e.ts_wall >= since_wall and e.cause != "initial":
            by_bin_events[(e.device, e.channel)].append(e)
    by_bin_changes: dict[tuple[int, int], list[Change]] = defaultdict(list)
    for c in changes:
        by_bin_changes[(c.device, c.channel)].append(c)
    for key in set(by_bin_events) | set(by_bin_changes):
        evs = sorted(by_bin_events.get(key, []), key=lambda e: e.seq)
        chs = sorted(by_bin_changes.get(key, []), key=lambda c: c.wall)
        used = [False] * len(evs)
        for n, c in enumerate(chs):
            until = chs[n + 1].wall if n + 1 < len(chs) else math.inf
            for k, e in enumerate(evs):
                if used[k] or e.ts_wall < c.wall or e.ts_wall >= until:
                    continue
                used[k] = True
                if e.cause in ("pick", "put") and e.delta == c.delta and e.count == c.count:
                    res.delivered += 1
                    res.latencies_s.append(e.mono - c.mono)
                    break
                res.wrong += 1
        res.wrong += used.count(False)
    return res


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def cpu_per_reading_ms(cpu_s: float, readings: int) -> float | None:
    """CPU milliseconds per delivered reading; None when nothing was delivered."""
    return 1000.0 * cpu_s / readings if readings > 0 else None


def causes(events: Iterable[StockEvent]) -> dict[str, int]:
    """How many events of each cause (for the run log)."""
    return dict(Counter(e.cause for e in events))


# --- Modbus RTU wire time --------------------------------------------------------------------------------

FC03_REQUEST_BYTES = 8
"""unit id + function + start (2) + quantity (2) + CRC (2): Modbus Application Protocol v1.1b3 §6.3,
Modbus over Serial Line v1.02 §2.5.1.2."""


def fc03_response_bytes(registers: int) -> int:
    """unit id + function + byte count + 2 × registers + CRC (2)."""
    return 5 + 2 * registers


def rtu_read_wire_s(
    registers: int, baud: int, *, bits_per_char: int = 10, turnaround_s: float = 0.0
) -> float:
    """Line time of one FC03 transaction: request + t3.5 + device turnaround + response + t3.5.

    DOMAIN.md's check: one 2-register read at 9600 8N1 = (8 + 9) chars + 2 × t3.5 = 24 char times = 25 ms.
    t3.5 is the driver's own (`drivers.modbus.protocol.t35_s`: 1.75 ms fixed above 19 200 Bd).
    """
    chars = FC03_REQUEST_BYTES + fc03_response_bytes(registers)
    return chars * bits_per_char / baud + 2.0 * t35_s(baud, bits_per_char) + turnaround_s
