"""RFID readers: one `UhfReaderClient` per reader, every read into ONE presence tracker across all zones.

Why one tracker for the whole store: a tag carried from a shelf to the exit is a *move* (a leave and an enter,
never counted in both zones at once), which only a tracker that sees both zones can decide
(`drivers/rfid/presence.py`). The tracker's adaptive windows turn 60-70 % read rates into steady presence and
ignore a stray read from the neighbouring shelf; a task `rfid.presence` ages tags out every `tick_s`.

A serial M100 module has one antenna port and its tag notices carry no antenna number, so each such reader
covers exactly one zone (config: `antennas: [{antenna: 1, zone: …, kind: shelf|exit}]`); two readers make a
shelf and an exit zone. A fixed reader over LLRP (`protocol: llrp`, the optional GPLv3 sllurp extra) reports
the antenna of every read (TagReportData AntennaID), so one reader can serve several zones: reads are mapped by
(reader, antenna). The clients do the protocol work (inventory, liveness probes, checksum/CRC/EPC errors
counted, availability logged once per change, reconnect with backoff); this module only maps reads to zones.

`GET /api/rfid/zones` shows each zone's tags with their SGTIN-96 fields (GTIN, serial, filter — decoded by
`drivers.rfid.epc`, non-GS1 EPCs raw) and the count per GTIN. A tag entering an `exit` zone is logged and
streamed: it is the loss signal the shrink rules will use.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from drivers.rfid.client import UhfReaderClient
from drivers.rfid.epc import RawEpc, parse_epc, sgtin_dict
from drivers.rfid.errors import ProtocolError
from drivers.rfid.llrp import LlrpReaderClient
from drivers.rfid.models import TagRead
from drivers.rfid.presence import PresenceEvent, PresencePolicy, PresenceTracker
from edge.config import RfidPresence, RfidReader
from edge.devices.base import DeviceHealthView, Family, Publish, age_s, error_counts, supervise

_log = logging.getLogger(__name__)

TICK_S: Final = 0.5
"""How often departed tags are aged out: a leave is reported at most this long after its window ran out."""

ERROR_KINDS: Final = (
    "checksum_errors",
    "frame_errors",
    "crc_errors",
    "malformed_epc",
    "garbage_bytes",
    "truncated_frames",
    "error_frames",
    "dropped_reads",
    "connect_failures",
    "disconnects",
)


def tag_view(epc: str) -> dict[str, Any]:
    """One tag for the API: SGTIN-96 fields (filter kept), or the raw EPC of another scheme."""
    try:
        identity = parse_epc(epc)
    except ProtocolError as exc:
        return {"epc": epc, "scheme": "sgtin-96", "malformed": str(exc)}
    if isinstance(identity, RawEpc):
        return {"epc": epc, "scheme": "raw"}
    return {"epc": epc, "scheme": "sgtin-96", **sgtin_dict(identity)}


@dataclass(slots=True)
class _ReaderState:
    cfg: RfidReader
    zones: dict[int, tuple[str, str]]
    """antenna → (zone, kind)."""
    client: UhfReaderClient | LlrpReaderClient | None = None
    crashes: int = 0

    @property
    def zone(self) -> str:
        """The first antenna's zone (an M100's only one)."""
        return next(iter(self.zones.values()))[0]

    @property
    def where(self) -> str:
        cfg = self.cfg
        return cfg.port if cfg.port is not None else f"{cfg.host}:{cfg.llrp_port}"


class RfidCoordinator:
    """Every configured reader plus the store's presence tracker; `run()` under the gateway's TaskGroup."""

    family: Family = "rfid"

    def __init__(
        self,
        readers: Sequence[RfidReader],
        presence: RfidPresence,
        publish: Publish,
        *,
        tick_s: float = TICK_S,
    ) -> None:
        self._publish = publish
        self._tick_s = tick_s
        self.tracker = PresenceTracker(
            PresencePolicy(
                min_reads=presence.min_reads,
                enter_window_s=presence.enter_window_s,
                min_window_s=presence.min_window_s,
                max_window_s=presence.max_window_s,
                false_leave_probability=presence.false_leave_probability,
            )
        )
        self._readers: dict[str, _ReaderState] = {}
        self._zones: dict[str, str] = {}
        """zone → kind, in config order."""
        self._zone_readers: dict[str, list[str]] = {}
        for cfg in readers:
            zones: dict[int, tuple[str, str]] = {
                a.antenna: (a.zone, a.kind) for a in cfg.antennas
            }  # M100: 1 only
            self._readers[cfg.id] = _ReaderState(cfg, zones)
            for zone, kind in zones.values():
                self._zones.setdefault(zone, kind)
                if cfg.id not in self._zone_readers.setdefault(zone, []):
                    self._zone_readers[zone].append(cfg.id)
        self.presence_events = 0
        self.ticker_crashes = 0
        self.unmapped_reads = 0
        """LLRP reads from an antenna no zone is configured for."""

    async def run(self) -> None:
        """Run every reader and the presence ticker until cancelled."""
        async with asyncio.TaskGroup() as tg:
            for reader_id, state in self._readers.items():
                tg.create_task(
                    supervise(
                        f"rfid reader {reader_id}",
                        functools.partial(self._run_one, state),
                        on_crash=functools.partial(self._crashed, state),
                    ),
                    name=f"rfid[{reader_id}].loop",
                )
            tg.create_task(
                supervise("rfid presence", self._ticker, on_crash=self._ticker_crashed), name="rfid.presence"
            )

    @staticmethod
    def _crashed(state: _ReaderState, reason: str) -> None:
        state.crashes += 1

    def _ticker_crashed(self, reason: str) -> None:
        self.ticker_crashes += 1

    async def _run_one(self, state: _ReaderState) -> None:
        cfg = state.cfg
        if cfg.protocol == "llrp":
            await self._run_llrp(state)
            return
        assert cfg.port is not None  # noqa: S101 — the config requires a port for m100
        async with UhfReaderClient(
            cfg.port, cfg.id, baudrate=cfg.baudrate, silence_s=cfg.silence_s
        ) as client:
            state.client = client
            async for item in client.events():
                if isinstance(item, TagRead):
                    self._on_presence(self.tracker.feed(item.epc, state.zone, item.mono))

    async def _run_llrp(self, state: _ReaderState) -> None:
        cfg = state.cfg
        assert cfg.host is not None  # noqa: S101 — the config requires a host for llrp
        async with LlrpReaderClient(
            cfg.host,
            cfg.id,
            port=cfg.llrp_port,
            antennas=sorted(state.zones),
            # The reader's KeepaliveSpec period (LLRP 1.0.1 §12.2.4) must be well inside the silence that
            # declares it hung, so a healthy idle reader (no tags) never looks dead.
            keepalive_s=cfg.silence_s / 3,
            silence_s=cfg.silence_s,
        ) as client:
            state.client = client
            async for item in client.events():
                if not isinstance(item, TagRead):
                    continue
                antenna = getattr(item, "antenna", None)
                zone = state.zones.get(antenna) if antenna is not None else None
                if zone is None:
                    # An antenna the config does not map (or a report without AntennaID): counted, not guessed.
                    self.unmapped_reads += 1
                    continue
                self._on_presence(self.tracker.feed(item.epc, zone[0], item.mono))

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self._tick_s)
            self._on_presence(self.tracker.tick(time.monotonic()))

    def _on_presence(self, events: Sequence[PresenceEvent]) -> None:
        for event in events:
            self.presence_events += 1
            kind = self._zones.get(event.zone, "shelf")
            if kind == "exit" and event.kind == "enter":
                _log.info("rfid: tag %s (GTIN %s) at exit zone %s", event.epc, event.gtin, event.zone)
            self._publish(
                {
                    "type": "rfid",
                    "event": event.kind,
                    "zone": event.zone,
                    "zone_kind": kind,
                    "epc": event.epc,
                    "gtin": event.gtin,
                    "reason": event.reason,
                }
            )

    # --- views ---------------------------------------------------------------------------------------------

    def zones(self) -> list[dict[str, Any]]:
        """Every configured zone with its present tags and the count per GTIN (`GET /api/rfid/zones`)."""
        out = []
        for zone, kind in self._zones.items():
            present = sorted(self.tracker.present(zone))
            out.append(
                {
                    "zone": zone,
                    "kind": kind,
                    "readers": list(self._zone_readers[zone]),
                    "tags": [tag_view(epc) for epc in present],
                    "counts": dict(sorted(self.tracker.zone_counts(zone).items())),
                    "total": len(present),
                }
            )
        return out

    def health(self, now_mono: float) -> list[DeviceHealthView]:
        """Each reader's health from its client's counters."""
        out = []
        for reader_id, state in self._readers.items():
            client = state.client
            snap: dict[str, Any] = dict(client.counters.snapshot()) if client else {}
            errors = error_counts(snap, ERROR_KINDS)
            nested = snap.get("errors")  # LLRP counters keep their error kinds in one dict
            if isinstance(nested, dict):
                errors.update({str(k): int(v) for k, v in nested.items()})
            errors["internal"] = state.crashes
            out.append(
                DeviceHealthView(
                    device_id=reader_id,
                    family=self.family,
                    online=bool(client and client.available),
                    connected=bool(client and client.connected),
                    last_seen_age_s=age_s(snap.get("last_seen_mono"), now_mono),
                    messages=int(snap.get("frames") or snap.get("reports") or 0),
                    errors_by_kind=errors,
                    last_error=snap.get("last_error"),
                    detail={
                        "protocol": state.cfg.protocol,
                        "port": state.where,
                        "zone": state.zone,
                        "zone_kind": state.zones[next(iter(state.zones))][1],
                        "zones": {str(a): z for a, (z, _k) in state.zones.items()},
                        "tag_reads": int(snap.get("tag_reads") or 0),
                        "present": len(self.tracker.present(state.zone)),
                    },
                    counters=snap,
                )
            )
        return out
