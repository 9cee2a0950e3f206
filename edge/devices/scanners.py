"""Barcode scanners: one `ScannerClient` per scanner; classified scans kept in a bounded recent list and streamed.

The client frames lines, decodes AIM prefixes, GS1 element strings (biip) and member codes, counts every
rejected line by reason, reopens a vanished port with backoff and logs availability once per change. The
coordinator only records what it delivers: a `product` scan (GTIN-14, with batch / expiry / serial / net
weight / price when the code carries them) or a `member` scan, stamped with the scanner's role and lane, into
`ScanLog` (newest first, bounded) and onto the live stream. What a lane does with them — the transaction — is
the checkout issue's; here scans only have to be visible (`GET /api/scans`).

Member ids are personal data (DOMAIN.md): they go to the local API and stream, never into a log line, and
the raw text of a member scan (which may carry more than the id) is not kept.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from cloud_bridge.contract import rfc3339
from drivers.barcode.client import ScannerClient
from drivers.barcode.models import ScannerSettings
from drivers.barcode.protocol import DEFAULT_MEMBER_PATTERNS, MemberScan, RejectReason, Scan, ScanConfig
from edge.config import Barcodes, Scanner
from edge.devices.base import DeviceHealthView, Family, Publish, age_s, supervise

RECENT_SCANS: Final = 500
"""Scans kept for `GET /api/scans` across all scanners; the oldest is dropped first (a lane scans a few a
minute, so this is the last hour or so of a busy store — enough to see what a scanner is saying)."""


def scan_record(scan: Scan, cfg: Scanner, ts: float) -> dict[str, Any]:
    """A delivered scan as the API and the stream show it; absent fields are omitted (as `shelfgate decode`)."""
    out: dict[str, Any] = {"ts": rfc3339(ts), "device": cfg.id, "role": cfg.role, "lane": cfg.lane}
    if isinstance(scan, MemberScan):
        out.update(kind="member", member_id=scan.member_id)
        return out
    out.update(kind="product", gtin=scan.gtin)
    fields: dict[str, Any] = {
        "batch": scan.batch,
        "expiry": scan.expiry.isoformat() if scan.expiry is not None else None,
        "serial": scan.serial,
        "net_weight_kg": float(scan.net_weight_kg) if scan.net_weight_kg is not None else None,
        "price": float(scan.price) if scan.price is not None else None,
        "symbology": scan.symbology,
    }
    out.update({k: v for k, v in fields.items() if v is not None})
    out["raw"] = scan.raw
    return out


class ScanLog:
    """The most recent scans of every scanner, newest first; bounded (oldest dropped)."""

    def __init__(self, maxlen: int = RECENT_SCANS) -> None:
        self._items: deque[dict[str, Any]] = deque(maxlen=maxlen)

    def add(self, record: dict[str, Any]) -> None:
        """Remember one scan."""
        self._items.appendleft(record)

    def recent(self, device: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Up to `limit` scans, newest first, of one scanner or of all."""
        out: list[dict[str, Any]] = []
        for record in self._items:
            if device is None or record["device"] == device:
                out.append(record)
                if len(out) >= limit:
                    break
        return out


@dataclass(slots=True)
class _ScannerState:
    cfg: Scanner
    scan_config: ScanConfig
    client: ScannerClient | None = None
    crashes: int = 0


class ScannerCoordinator:
    """Every configured scanner; `run()` under the gateway's TaskGroup, one task `scanner[{id}].loop` each."""

    family: Family = "scanner"

    def __init__(self, scanners: Sequence[Scanner], barcodes: Barcodes, publish: Publish) -> None:
        self._publish = publish
        self.log = ScanLog()
        self._scanners: dict[str, _ScannerState] = {}
        for cfg in scanners:
            patterns = cfg.member_patterns if cfg.member_patterns is not None else barcodes.member_patterns
            scan_config = ScanConfig(
                member_patterns=tuple(patterns) if patterns is not None else DEFAULT_MEMBER_PATTERNS,
                rcn_region=barcodes.rcn_region,
            )
            self._scanners[cfg.id] = _ScannerState(cfg, scan_config)

    def __contains__(self, scanner_id: object) -> bool:
        return scanner_id in self._scanners

    async def run(self) -> None:
        """Run every scanner until cancelled."""
        async with asyncio.TaskGroup() as tg:
            for scanner_id, state in self._scanners.items():
                tg.create_task(
                    supervise(
                        f"scanner {scanner_id}",
                        functools.partial(self._run_one, state),
                        on_crash=functools.partial(self._crashed, state),
                    ),
                    name=f"scanner[{scanner_id}].loop",
                )

    @staticmethod
    def _crashed(state: _ScannerState, reason: str) -> None:
        state.crashes += 1

    async def _run_one(self, state: _ScannerState) -> None:
        settings = ScannerSettings(port=state.cfg.port, baudrate=state.cfg.baudrate)
        on_rejected = None
        if state.cfg.role == "receiving":
            # The dock scans SSCC pallet labels and (02)+(37) case labels, which are not product scans: pass
            # their text on so the receiving desk can book them (edge/receiving_service.py).
            on_rejected = functools.partial(self._rejected_line, state.cfg)
        async with ScannerClient(
            settings, state.cfg.id, config=state.scan_config, on_rejected=on_rejected
        ) as client:
            state.client = client
            async for scan in client:
                record = scan_record(scan, state.cfg, time.time())
                self.log.add(record)
                self._publish({"type": "scan", "scan": record})

    def _rejected_line(self, cfg: Scanner, text: str, reason: str) -> None:
        record: dict[str, Any] = {
            "ts": rfc3339(time.time()),
            "device": cfg.id,
            "role": cfg.role,
            "lane": cfg.lane,
            "kind": "rejected",
            "reason": reason,
            "raw": text,
        }
        self.log.add(record)
        self._publish({"type": "scan", "scan": record})

    def recent(self, device: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Recent scans, newest first (see `ScanLog.recent`)."""
        return self.log.recent(device, limit)

    def health(self, now_mono: float) -> list[DeviceHealthView]:
        """Each scanner's health: rejected lines by reason are its errors."""
        out = []
        for scanner_id, state in self._scanners.items():
            client = state.client
            snap: dict[str, Any] = dict(client.counters.snapshot()) if client else {}
            rejected = snap.get("rejected") or {}
            errors = {reason.value: int(rejected.get(reason.value, 0)) for reason in RejectReason}
            errors["dropped"] = int(snap.get("dropped") or 0)
            errors["disconnects"] = int(snap.get("disconnects") or 0)
            errors["internal"] = state.crashes
            online = bool(client and client.available)
            out.append(
                DeviceHealthView(
                    device_id=scanner_id,
                    family=self.family,
                    online=online,
                    connected=online,
                    last_seen_age_s=age_s(snap.get("last_seen_mono"), now_mono),
                    messages=int(snap.get("lines") or 0),
                    errors_by_kind=errors,
                    last_error=snap.get("last_error"),
                    detail={
                        "port": state.cfg.port,
                        "role": state.cfg.role,
                        "lane": state.cfg.lane,
                        "scans": int(snap.get("scans") or 0),
                        "members": int(snap.get("members") or 0),
                    },
                    counters=snap,
                )
            )
        return out
