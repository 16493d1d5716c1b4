"""Cron expressions: five fields, as crontab users write them.

The parser supports what crontab users write: `*`, lists, ranges, steps, month and day
names, and the usual rule that when both day-of-month and day-of-week are restricted a
time matches either.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_NAMES = {
    "month": {name: index + 1 for index, name in enumerate(_MONTHS)},
    "weekday": {name: index for index, name in enumerate(_WEEKDAYS)},
}
_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day", 1, 31), ("month", 1, 12), ("weekday", 0, 7))


class CronError(ValueError):
    """A cron expression that cannot be read."""


@dataclass(frozen=True)
class Cron:
    """A parsed cron expression: the allowed values of each field."""

    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    day_restricted: bool
    weekday_restricted: bool

    @classmethod
    def parse(cls, expression: str) -> Cron:
        """Read `m h dom mon dow`; CronError says which field is wrong."""
        parts = expression.split()
        if len(parts) != 5:
            raise CronError(f"'{expression}' must have five fields: minute hour day month weekday")
        values = [_parse_field(part, *spec) for part, spec in zip(parts, _FIELDS, strict=True)]
        weekdays = frozenset(0 if d == 7 else d for d in values[4])
        return cls(
            expression, values[0], values[1], values[2], values[3], weekdays,
            parts[2] != "*", parts[4] != "*",
        )  # fmt: skip

    def matches(self, moment: datetime) -> bool:
        """Whether the minute of `moment` is a scheduled one."""
        return (
            moment.minute in self.minutes
            and moment.hour in self.hours
            and moment.month in self.months
            and self._day_matches(moment)
        )

    def next_after(self, moment: datetime) -> datetime:
        """The first scheduled minute strictly after `moment` (searches up to five years)."""
        candidate = moment.replace(second=0, microsecond=0) + timedelta(minutes=1)
        limit = candidate + timedelta(days=366 * 5)
        while candidate < limit:
            if candidate.month not in self.months:
                candidate = (
                    candidate.replace(day=1, hour=0, minute=0) + timedelta(days=32)
                ).replace(day=1)
                continue
            if not self._day_matches(candidate):
                candidate = candidate.replace(hour=0, minute=0) + timedelta(days=1)
                continue
            if candidate.hour not in self.hours:
                candidate = candidate.replace(minute=0) + timedelta(hours=1)
                continue
            if candidate.minute in self.minutes:
                return candidate
            candidate += timedelta(minutes=1)
        raise CronError(f"'{self.expression}' never matches")

    def _day_matches(self, moment: datetime) -> bool:
        day_ok = moment.day in self.days
        weekday_ok = (moment.isoweekday() % 7) in self.weekdays
        if self.day_restricted and self.weekday_restricted:
            return day_ok or weekday_ok
        return day_ok and weekday_ok


def _parse_field(text: str, name: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for item in text.lower().split(","):
        values.update(_parse_item(item, name, low, high))
    return frozenset(values)


def _parse_item(item: str, name: str, low: int, high: int) -> range:
    body, _, step_text = item.partition("/")
    step = _number(step_text, name) if step_text else 1
    if step < 1:
        raise CronError(f"{name}: step must be at least 1 in '{item}'")
    if body == "*":
        start, end = low, high
    elif "-" in body:
        first, _, last = body.partition("-")
        start, end = _value(first, name), _value(last, name)
    else:
        start = _value(body, name)
        end = high if step_text else start
    if not (low <= start <= high and low <= end <= high) or start > end:
        raise CronError(f"{name}: '{item}' is outside {low}-{high}")
    return range(start, end + 1, step)


def _value(text: str, name: str) -> int:
    names = _NAMES.get(name, {})
    if text in names:
        return names[text]
    return _number(text, name)


def _number(text: str, name: str) -> int:
    if not text.isdigit():
        raise CronError(f"{name}: '{text}' is not a number")
    return int(text)
