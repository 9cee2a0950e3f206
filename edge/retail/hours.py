"""Local time for store rules: opening hours (stock-out forecast) and staff shifts (response-time report).

Times of day are local to the store (`tz`, default Asia/Shanghai — China has one time zone and no DST, but the
rules use `zoneinfo` so a store elsewhere works too). A period whose end is not after its start runs past
midnight (`"22:00-02:00"`); `"24:00"` is midnight at the end of the day.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_TZ: Final = "Asia/Shanghai"
_PERIOD: Final = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])-(([01][0-9]|2[0-3]):([0-5][0-9])|24:00)$")
_DAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _minutes(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


def parse_period(text: str) -> tuple[int, int] | None:
    """`"08:00-22:00"` → (480, 1320) minutes of the day; `"closed"` → None; ValueError otherwise.

    The end may be ≤ the start: the period runs past midnight (end + 1440 is returned).
    """
    if text.strip().lower() == "closed":
        return None
    m = _PERIOD.match(text.strip())
    if m is None:
        raise ValueError(f"expected 'HH:MM-HH:MM' or 'closed', got {text!r}")
    start, end_text = text.strip().split("-")
    begin, end = _minutes(start), _minutes(end_text)
    if end == begin:
        raise ValueError(f"period {text!r} is empty (use 00:00-24:00 for all day)")
    return (begin, end if end > begin else end + 1440)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


class OpeningHours(BaseModel):
    """When the store is open, per weekday (`default` for days not given). E.g.::

    opening_hours: {tz: Asia/Shanghai, default: "08:00-22:00", sun: "09:00-21:00"}
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    tz: str = DEFAULT_TZ
    default: str = "08:00-22:00"
    mon: str | None = None
    tue: str | None = None
    wed: str | None = None
    thu: str | None = None
    fri: str | None = None
    sat: str | None = None
    sun: str | None = None

    @field_validator("tz")
    @classmethod
    def _known_tz(cls, value: str) -> str:
        _zone(value)
        return value

    @field_validator("default", *_DAYS)
    @classmethod
    def _period(cls, value: str | None) -> str | None:
        if value is not None:
            parse_period(value)
        return value

    @property
    def zone(self) -> ZoneInfo:
        """The store's time zone (`ZoneInfo` caches instances by name)."""
        return _zone(self.tz)

    def _day_period(self, day: date) -> tuple[datetime, datetime] | None:
        text = getattr(self, _DAYS[day.weekday()]) or self.default
        period = parse_period(text)
        if period is None:
            return None
        midnight = datetime.combine(day, time(0), tzinfo=self.zone)
        return midnight + timedelta(minutes=period[0]), midnight + timedelta(minutes=period[1])

    def period_at(self, ts: float) -> tuple[float, float] | None:
        """(opening, closing) epoch seconds of the opening period containing `ts`, or None when closed."""
        local = datetime.fromtimestamp(ts, UTC).astimezone(self.zone)
        for day in (local.date(), local.date() - timedelta(days=1)):
            period = self._day_period(day)
            if period is not None and period[0].timestamp() <= ts < period[1].timestamp():
                return period[0].timestamp(), period[1].timestamp()
        return None

    def is_open(self, ts: float) -> bool:
        """Whether the store is open at `ts` (epoch seconds)."""
        return self.period_at(ts) is not None


class Shift(BaseModel):
    """A named staff shift, e.g. `{name: early, hours: "07:00-15:00"}`; may run past midnight."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=32)
    hours: str

    @field_validator("hours")
    @classmethod
    def _period(cls, value: str) -> str:
        if parse_period(value) is None:
            raise ValueError("a shift cannot be 'closed'")
        return value

    @property
    def minutes(self) -> tuple[int, int]:
        """(start, end) minutes of the day; end > 1440 past midnight."""
        period = parse_period(self.hours)
        assert period is not None  # noqa: S101 - validated above
        return period


class Shifts(BaseModel):
    """The store's shifts; they must not overlap (an alert belongs to exactly one shift)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tz: str = DEFAULT_TZ
    shifts: list[Shift] = Field(min_length=1)

    @field_validator("tz")
    @classmethod
    def _known_tz(cls, value: str) -> str:
        _zone(value)
        return value

    @model_validator(mode="after")
    def _no_overlap(self) -> Shifts:
        owner: dict[int, str] = {}
        names = [s.name for s in self.shifts]
        if len(set(names)) != len(names):
            raise ValueError(f"shift names must be unique: {names}")
        for shift in self.shifts:
            start, end = shift.minutes
            for minute in range(start, end):
                other = owner.setdefault(minute % 1440, shift.name)
                if other != shift.name:
                    raise ValueError(
                        f"shifts {other} and {shift.name} overlap at {minute % 1440 // 60:02d}:{minute % 60:02d}"
                    )
        return self

    def shift_at(self, ts: float) -> str | None:
        """The name of the shift on duty at `ts`, or None if no shift covers that time of day."""
        local = datetime.fromtimestamp(ts, UTC).astimezone(_zone(self.tz))
        minute = local.hour * 60 + local.minute
        for shift in self.shifts:
            start, end = shift.minutes
            if start <= minute < end or start <= minute + 1440 < end:
                return shift.name
        return None
