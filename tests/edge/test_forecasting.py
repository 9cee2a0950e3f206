"""Stock-out forecast in the gateway (edge/forecasting.py + edge/signals.py): count changes → predicted_out."""

from __future__ import annotations

from cloud_bridge.contract import AlertKind, AlertState
from edge.config import Bin, Forecast, LocalizedName
from edge.forecasting import ForecastService
from edge.inventory.events import CountChanged
from edge.retail.hours import OpeningHours
from edge.signals import SignalAlerts, message_fields

T0 = 1_800_000_000.0  # 2027-01-15 08:00 UTC = 16:00 in Shanghai: open under the default hours
ALWAYS = OpeningHours(default="00:00-24:00")


def _bins() -> dict[str, Bin]:
    b = Bin(
        id="b1", sku="06901234567892", name=LocalizedName(zh="水", en="Water"), unit_weight_g=500,
        safety_stock=2, max_stock=50, device="tx1", channel=0,
    )  # fmt: skip
    return {"b1": b}


def _service(hours: OpeningHours = ALWAYS) -> tuple[ForecastService, SignalAlerts]:
    alerts = SignalAlerts()
    cfg = Forecast(horizon_min=10, tau_min=30, min_picks=3)
    return ForecastService(cfg, hours, _bins(), alerts), alerts


def _pick(ts: float, count: int, delta: int = -1, cause: str = "pick") -> CountChanged:
    return CountChanged("b1", ts, delta, count, count * 500.0, cause)  # type: ignore[arg-type]


def test_steady_picks_raise_predicted_out_with_an_eta_and_a_restock_resolves_it() -> None:
    svc, alerts = _service()
    svc.observe(_pick(T0, 10, 0, "initial"))
    out = []
    count = 10
    for i in range(1, 6):  # one item a minute: 60/h
        count -= 1
        svc.observe(_pick(T0 + 60 * i, count))
        out += svc.evaluate(T0 + 60 * i)
    (raised,) = out
    assert raised.kind is AlertKind.PREDICTED_OUT
    assert raised.state is AlertState.RAISED
    fields = message_fields(raised.message)
    assert fields["bin"] == "b1"
    assert fields["horizon_min"] == "10"
    eta_min = float(fields["eta_min"])
    rate = float(fields["rate_per_h"])
    assert 0 < eta_min < 10
    assert raised.count is not None
    assert abs(eta_min - raised.count / rate * 60) < 0.1  # the ETA is the count over the rate
    assert "eta_at" in fields
    assert svc.evaluate(raised.ts + 1) == []  # raised once
    svc.observe(_pick(raised.ts + 30, 40, 30, "put"))  # restock: the count, not the rate, changes
    (resolved,) = svc.evaluate(raised.ts + 30)
    assert resolved.state is AlertState.RESOLVED
    assert resolved.alert_id == raised.alert_id
    assert not alerts.is_active(AlertKind.PREDICTED_OUT, "b1")


def test_no_alert_while_the_store_is_closed() -> None:
    svc, _ = _service(OpeningHours(tz="UTC", default="09:00-10:00"))  # T0 is 08:00 UTC
    count = 10
    for i in range(1, 8):
        count -= 1
        svc.observe(_pick(T0 + 30 * i, count))
    assert svc.evaluate(T0 + 240) == []
    assert svc.view(T0 + 240)[0]["eta_s"] is not None


def test_restored_alert_resolves_unless_the_forecast_confirms_it() -> None:
    svc, alerts = _service()
    raised = alerts.raise_alert(
        AlertKind.PREDICTED_OUT, "b1", bin_id="b1", sku="x", ts=T0, count=3, message="predicted_out bin=b1"
    )
    assert raised is not None
    svc.restored("b1", T0)
    assert svc.evaluate(T0 + 60) == []
    (resolved,) = svc.evaluate(T0 + 10 * 60)
    assert resolved.state is AlertState.RESOLVED
    assert message_fields(resolved.message)["reason"] == "not_confirmed_after_restart"
