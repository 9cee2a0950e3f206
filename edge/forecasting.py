"""Stock-out forecast in the gateway (issue #6 part 7): `edge.retail.forecast` → `predicted_out` alerts.

Every `CountChanged` of a weighed bin is observed (picks feed the bin's pick rate, every change sets its
count); the forecaster is evaluated on each count change and on the signals tick (`forecast.tick_s`, 60 s),
because a rate decays — and an ETA grows — while nothing happens. A `raised` transition becomes a
`predicted_out` alert with the ETA; a `resolved` one (restocked, rate gone, store closed) resolves it. The
rules, hysteresis and opening-hours gating are `edge.retail.forecast`'s (docs/store-workflows.md).

Message (stable ``key=value`` words, `edge.signals`)::

    predicted_out bin=B sku=S count=7 rate_per_h=42.0 eta_min=10.0 eta_at=2026-11-23T10:10:00.000Z horizon_min=30

A restart loses the pick rates (they are in memory; the forecast re-learns within τ). A `predicted_out` alert
restored from the database is kept while the re-learnt forecast confirms it, and resolved ("not confirmed
after restart") if it does not within `horizon_min`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cloud_bridge.contract import AlertKind, rfc3339
from edge.config import Bin, Forecast
from edge.inventory.alerts import AlertTransition
from edge.inventory.events import CountChanged
from edge.retail.forecast import ForecastChange, ForecastSettings, StockoutForecaster
from edge.retail.hours import OpeningHours
from edge.signals import SignalAlerts

KIND = AlertKind.PREDICTED_OUT


def settings_from(cfg: Forecast) -> ForecastSettings:
    """The pure forecaster's settings from the config section (minutes → seconds)."""
    return ForecastSettings(
        horizon_s=cfg.horizon_min * 60,
        tau_s=cfg.tau_min * 60,
        clear_factor=cfg.clear_factor,
        min_picks=cfg.min_picks,
    )


class ForecastService:
    """The store's forecaster plus its `predicted_out` alerts."""

    def __init__(
        self, cfg: Forecast, hours: OpeningHours, bins: Mapping[str, Bin], alerts: SignalAlerts
    ) -> None:
        self.cfg = cfg
        self.enabled = cfg.enabled
        self.forecaster = StockoutForecaster(settings_from(cfg), hours)
        self._bins = bins
        self._alerts = alerts
        self._restored: dict[str, float] = {}
        """bin → when a restored alert must be confirmed by (else it resolves)."""

    def observe(self, c: CountChanged) -> None:
        """A bin's count changed (`CountChanged`: count, delta, cause)."""
        if self.enabled and c.bin_id in self._bins:
            self.forecaster.observe(c.bin_id, c.ts, count=c.count, delta=c.delta, cause=c.cause)

    def restored(self, bin_id: str, now: float) -> None:
        """A `predicted_out` alert of `bin_id` was active before the restart."""
        self._restored[bin_id] = now + self.cfg.horizon_min * 60

    def evaluate(self, now: float) -> list[AlertTransition]:
        """The forecaster's transitions at `now` as alert transitions."""
        if not self.enabled:
            return []
        out: list[AlertTransition] = []
        for change in self.forecaster.evaluate(now):
            t = self._transition(change)
            self._restored.pop(change.bin_id, None)
            if t is not None:
                out.append(t)
        for bin_id, deadline in list(self._restored.items()):
            if now >= deadline:
                del self._restored[bin_id]
                t = self._alerts.resolve(
                    KIND, bin_id, now, count=None, message=f"predicted_out cleared bin={bin_id} "
                    "reason=not_confirmed_after_restart",
                )  # fmt: skip
                if t is not None:
                    out.append(t)
        return out

    def _transition(self, change: ForecastChange) -> AlertTransition | None:
        b = self._bins.get(change.bin_id)
        sku = b.sku if b is not None else ""
        if change.state == "raised":
            assert change.eta_s is not None  # noqa: S101 - the forecaster raises only with an ETA
            message = (
                f"predicted_out bin={change.bin_id} sku={sku} count={change.count}"
                f" rate_per_h={change.rate_per_h:.1f} eta_min={change.eta_s / 60:.1f}"
                f" eta_at={rfc3339(change.ts + change.eta_s)} horizon_min={self.cfg.horizon_min:g}"
            )
            return self._alerts.raise_alert(
                KIND, change.bin_id, bin_id=change.bin_id, sku=sku, ts=change.ts, count=change.count,
                message=message,
            )  # fmt: skip
        eta = "none" if change.eta_s is None else f"{change.eta_s / 60:.1f}"
        message = (
            f"predicted_out cleared bin={change.bin_id} sku={sku} count={change.count}"
            f" rate_per_h={change.rate_per_h:.1f} eta_min={eta} reason={change.reason.replace(' ', '_')}"
        )
        return self._alerts.resolve(KIND, change.bin_id, change.ts, count=change.count, message=message)

    def view(self, now: float) -> list[dict[str, Any]]:
        """Every observed bin's count, pick rate, ETA and alert state."""
        return [
            {
                "bin_id": f.bin_id,
                "count": f.count,
                "rate_per_h": round(f.rate_per_h, 2),
                "eta_s": None if f.eta_s is None else round(f.eta_s, 1),
                "predicted_out": self._alerts.is_active(KIND, f.bin_id),
            }
            for f in self.forecaster.snapshot(now)
        ]


__all__ = ["ForecastService", "settings_from"]
