"""RFID loss signal (issue #6 part 5, `loss.suspected` → alert kind `loss_suspected`).

A tag entering an `exit` zone (`rfid_readers[].antennas[].kind: exit`; presence from `drivers.rfid.presence`)
is an item leaving the store. Checkout sales are known per GTIN, not per tag serial, so the rule counts: in
the last `loss.sold_window_min` minutes, as many tags of a GTIN may leave as units of it were sold at the
lanes; each further tag of that GTIN raises `loss_suspected`. A tag counts once per window (a shopper
lingering at the door flickers in and out of the zone). Tags that are no SGTIN-96 carry no GTIN and are only
counted (`not_sgtin`).

No personal data: the alert names the tag (EPC), the GTIN, the zone and the time, nothing about who. Message::

    loss_suspected epc=3034… gtin=06901234567892 zone=exit at=2026-11-23T10:00:00.123Z sold=0 exits=1 window_min=15

(`sold`: units of the GTIN sold in the window; `exits`: tags of it seen leaving in the window, this one
included.) The alert resolves when the tag is seen in a shelf zone again (the item was brought back), or
after `loss.expire_h` so the active list stays bounded (the history keeps it).

Shelf-zone stock of tagged goods is the presence tracker's count per GTIN per zone: `GET /api/rfid/zones`
(`counts`), and per zone kind in `GET /api/signals`.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from cloud_bridge.contract import AlertKind, rfc3339
from edge.config import LossRules
from edge.inventory.alerts import AlertTransition
from edge.signals import SignalAlerts

KIND = AlertKind.LOSS_SUSPECTED


class LossWatch:
    """Exit-zone tags against recent sales; see the module docstring."""

    def __init__(self, cfg: LossRules, alerts: SignalAlerts) -> None:
        self.cfg = cfg
        self.enabled = cfg.enabled
        self._window_s = cfg.sold_window_min * 60
        self._alerts = alerts
        self._exits: dict[str, deque[tuple[float, str]]] = {}
        """GTIN → (ts, epc) of tags seen leaving, oldest first (pruned past the window)."""
        self._expiry: dict[str, float] = {}
        """epc → raised_at of its active alert."""
        self.exits_seen = 0
        self.covered = 0
        self.raised = 0
        self.not_sgtin = 0
        self.undecided = 0
        """Exits not decided because the sales could not be read."""

    def sales_window(self, ts: float) -> tuple[float, float]:
        """The time range whose sales cover an exit at `ts`."""
        return ts - self._window_s, ts

    def restored(self, epc: str, raised_at: float) -> None:
        """A `loss_suspected` alert of `epc` was active before the restart."""
        self._expiry[epc] = raised_at

    def exit_seen(self, epc: str, gtin: str, zone: str, ts: float, sold: int) -> AlertTransition | None:
        """A tag of `gtin` entered exit zone `zone` at `ts`; `sold` = units of it sold in `sales_window(ts)`."""
        exits = self._exits.setdefault(gtin, deque())
        while exits and exits[0][0] < ts - self._window_s:
            exits.popleft()
        if any(e == epc for _, e in exits) or self._alerts.is_active(KIND, epc):
            return None  # the same tag again within the window: one exit
        exits.append((ts, epc))
        self.exits_seen += 1
        if len(exits) <= sold:
            self.covered += 1
            return None
        message = (
            f"loss_suspected epc={epc} gtin={gtin} zone={zone} at={rfc3339(ts)} sold={sold}"
            f" exits={len(exits)} window_min={self.cfg.sold_window_min:g}"
        )
        t = self._alerts.raise_alert(KIND, epc, bin_id=zone, sku=gtin, ts=ts, count=None, message=message)
        if t is not None:
            self.raised += 1
            self._expiry[epc] = ts
        return t

    def shelf_seen(self, epc: str, zone: str, ts: float) -> AlertTransition | None:
        """A tag entered a shelf zone: if it had a loss alert, the item is back."""
        if not self._alerts.is_active(KIND, epc):
            return None
        self._expiry.pop(epc, None)
        return self._alerts.resolve(
            KIND,
            epc,
            ts,
            count=None,
            message=f"loss_suspected cleared epc={epc} reason=back_on_shelf zone={zone}",
        )

    def expire(self, now: float) -> list[AlertTransition]:
        """Resolve loss alerts older than `expire_h`."""
        out: list[AlertTransition] = []
        limit = now - self.cfg.expire_h * 3600
        for epc, raised_at in list(self._expiry.items()):
            if raised_at <= limit:
                del self._expiry[epc]
                t = self._alerts.resolve(
                    KIND, epc, now, count=None, message=f"loss_suspected expired epc={epc} reason=expired"
                )
                if t is not None:
                    out.append(t)
        return out

    def view(self) -> dict[str, Any]:
        """Counters and the active alerts' tags."""
        return {
            "exits_seen": self.exits_seen,
            "covered_by_sales": self.covered,
            "raised": self.raised,
            "not_sgtin": self.not_sgtin,
            "undecided": self.undecided,
            "active_epcs": sorted(self._alerts.keys(KIND)),
            "sold_window_min": self.cfg.sold_window_min,
        }


__all__ = ["LossWatch"]
