"""Opening hours and shifts (local time), and staff response times from the alert audit."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from cloud_bridge.contract import rfc3339
from edge.retail.hours import OpeningHours, Shift, Shifts, parse_period
from edge.retail.staff import NO_SHIFT, percentile_nearest_rank, response_times
from edge.store import AlertRow

SH = ZoneInfo("Asia/Shanghai")


def local(day: int, hh: int, mm: int = 0) -> float:
    return datetime(2026, 11, day, hh, mm, tzinfo=SH).timestamp()  # 2026-11-13 is a Friday


def test_opening_hours_per_weekday_and_past_midnight() -> None:
    hours = OpeningHours(default="08:00-22:00", sat="09:00-02:00", sun="closed")
    assert not hours.is_open(local(13, 7, 59))
    assert hours.period_at(local(13, 8)) == (local(13, 8), local(13, 22))
    assert not hours.is_open(local(13, 22))  # closing time itself is closed
    assert hours.is_open(local(14, 23, 30))  # Saturday late opening…
    assert hours.period_at(local(15, 1, 59)) == (local(14, 9), local(15, 2))  # …into Sunday morning
    assert not hours.is_open(local(15, 12))  # Sunday closed
    assert OpeningHours(default="00:00-24:00").is_open(local(16, 3))


def test_period_syntax() -> None:
    assert parse_period("08:00-22:00") == (480, 1320)
    assert parse_period("22:00-02:00") == (1320, 1560)
    assert parse_period("closed") is None
    for bad in ("8:00-22:00", "08:00-24:01", "08:00", "12:00-12:00"):
        with pytest.raises(ValueError, match=r"expected|empty"):
            parse_period(bad)
    with pytest.raises(ValidationError, match="unknown time zone"):
        OpeningHours(tz="Mars/Olympus")
    with pytest.raises(ValidationError, match="expected 'HH:MM-HH:MM'"):
        OpeningHours(mon="9-5")


SHIFTS = Shifts(
    shifts=[
        Shift(name="early", hours="07:00-15:00"),
        Shift(name="late", hours="15:00-23:00"),
    ]
)


def test_shifts_cover_local_time_and_must_not_overlap() -> None:
    assert SHIFTS.shift_at(local(13, 7)) == "early"
    assert SHIFTS.shift_at(local(13, 15)) == "late"
    assert SHIFTS.shift_at(local(13, 23, 30)) is None
    night = Shifts(shifts=[Shift(name="night", hours="23:00-07:00")])
    assert night.shift_at(local(13, 2)) == night.shift_at(local(13, 23, 5)) == "night"
    with pytest.raises(ValidationError, match="shifts early and x overlap at 14:00"):
        Shifts(shifts=[Shift(name="early", hours="07:00-15:00"), Shift(name="x", hours="14:00-16:00")])
    with pytest.raises(ValidationError, match="unique"):
        Shifts(shifts=[Shift(name="a", hours="07:00-08:00"), Shift(name="a", hours="09:00-10:00")])
    with pytest.raises(ValidationError, match="cannot be 'closed'"):
        Shift(name="a", hours="closed")


def alert(raised: float, ack_s: float | None, resolve_s: float | None, by: str | None) -> AlertRow:
    def ts(offset: float | None) -> str | None:
        return None if offset is None else rfc3339(raised + offset)

    return AlertRow(
        alert_id=f"A01:low:{int(raised * 1000)}",
        bin_id="A01",
        sku="06901234567892",
        kind="low",
        state="resolved" if resolve_s is not None else "raised",
        count=1,
        message="",
        raised_at=rfc3339(raised),
        updated_at=rfc3339(raised),
        acknowledged_by=by,
        acknowledged_at=ts(ack_s),
        resolved_at=ts(resolve_s),
    )


def test_response_times_per_shift_and_staff() -> None:
    rows = [
        alert(local(13, 9), 60, 600, "wang"),
        alert(local(13, 10), 120, 900, "wang"),
        alert(local(13, 11), 300, None, "li"),  # acknowledged, not resolved yet
        alert(local(13, 16), None, 240, None),  # cleared by itself before anyone acknowledged
        alert(local(13, 17), 30, 400, "li"),
        alert(local(13, 23, 30), 45, 45, "zhao"),  # outside every shift
        alert(local(13, 18), -5, 100, "li"),  # clock stepped: counts as 0 s
    ]
    report = response_times(rows, SHIFTS)
    shifts = {s.group: s for s in report.by_shift}
    assert list(shifts) == [NO_SHIFT, "early", "late"]
    early = shifts["early"]
    assert (early.count, early.acked, early.resolved) == (3, 3, 2)
    assert (early.ack_median_s, early.ack_p90_s) == (120, 300)
    assert (early.resolve_median_s, early.resolve_p90_s) == (750, 900)
    late = shifts["late"]
    assert (late.count, late.acked, late.resolved) == (3, 2, 3)
    assert (late.ack_median_s, late.ack_p90_s) == (15, 30)
    assert (late.resolve_median_s, late.resolve_p90_s) == (240, 400)
    staff = {s.group: s for s in report.by_staff}
    assert list(staff) == ["li", "wang", "zhao"]
    assert (staff["li"].count, staff["li"].ack_median_s, staff["li"].resolve_median_s) == (3, 30, 250)
    assert (staff["wang"].ack_median_s, staff["wang"].ack_p90_s) == (90, 120)
    assert staff["zhao"].resolve_p90_s == 45


def test_empty_audit_and_nearest_rank() -> None:
    report = response_times([], SHIFTS)
    assert report.by_shift == report.by_staff == ()
    assert percentile_nearest_rank([], 90) is None
    ten = [float(i) for i in range(1, 11)]
    assert percentile_nearest_rank(ten, 90) == 9.0
    assert percentile_nearest_rank([*ten, 11.0], 90) == 10.0
    assert percentile_nearest_rank([5.0], 90) == 5.0
    with pytest.raises(ValueError, match="pct"):
        percentile_nearest_rank(ten, 0)
