"""Campaign schedules: when a strategy may dial at all, whoever the callee is.

``Schedule("0 9-17 * * mon-fri", date(2026, 12, 1), date(2026, 12, 24), ZoneInfo("Europe/Paris"))``

The rule: a schedule is open during every wall-clock hour, in its ``timezone``, in which the
cron expression fires at least once, on the dates ``active_from`` to ``active_until``
(inclusive, local dates; either may be None for no bound). So ``"0 9-17 * * mon-fri"`` is open
09:00:00-17:59:59 Monday to Friday, and ``"30 8 * * *"`` is open 08:00-08:59 daily. No cron
expression means open all day on the active dates.

The cron expression has the 5 crontab fields, minute, hour, day of month, month, day of week,
with crontab's meaning of day numbers (0 or 7 = Sunday, 1 = Monday; names ``mon``..``sun``;
ranges may wrap, ``sat-sun``). apscheduler 3.x's ``CronTrigger`` computes its fire times (its
own day numbers start at Monday; they are translated). When both the day of month and the day
of week are restricted, both must match (apscheduler's rule, where Vixie cron takes either).
An expression that is not valid, or that can never fire (``0 0 30 2 *``), raises ValueError.

Clock changes: hours are wall-clock hours. An hour skipped when clocks spring forward never
opens (``"* 2 * * *"`` is closed on 2026-03-08 in New York); the hour repeated when they fall
back is open both times (``"* 1 * * *"`` is open on 2026-11-01 in New York from 01:00 EDT to
02:00 EST, two hours).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Any, Final
from zoneinfo import ZoneInfo

from .hours import HORIZON, wall_to_utc

__all__ = ["Schedule"]

_HOUR = timedelta(hours=1)
_DAY = timedelta(days=1)
_CRON_DAYS: Final = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # crontab: 0 = Sunday
_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a campaign is active (the rule: this module's docstring).

    Every method takes an aware datetime (any zone; naive raises ValueError) and answers in
    UTC. Invalid arguments raise ValueError with a one-line message."""

    cron: str | None = None
    active_from: date | None = None
    active_until: date | None = None
    timezone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))
    _hours: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _day: Callable[[date], date | None] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (
            self.active_from is not None
            and self.active_until is not None
            and self.active_from > self.active_until
        ):
            raise ValueError(
                f"schedule active from {self.active_from} until {self.active_until}: "
                "'from' is after 'until'"
            )
        hours: tuple[int, ...]
        day: Callable[[date], date | None]
        if self.cron is None:
            hours, day = tuple(range(24)), _same_day
        else:
            hours, day = _compile(self.cron)
        object.__setattr__(self, "_hours", hours)
        object.__setattr__(self, "_day", day)

    def is_open(self, at: datetime) -> bool:
        """Whether the schedule is open at ``at``."""
        wall = _wall(_aware(at), self.timezone)
        day = wall.date()
        return self._in_range(day) and self._day(day) == day and wall.hour in self._hours

    def next_open(self, at: datetime) -> datetime | None:
        """``at`` (in UTC) if the schedule is open then; else the instant it next opens (the
        start of an open hour, or the first instant of it after a spring-forward jump); None
        if it never opens again (after ``active_until``)."""
        at = _aware(at)
        if self.is_open(at):
            return at
        wall = _wall(at, self.timezone)
        start = wall.replace(minute=0, second=0, microsecond=0) + _HOUR
        if self.active_from is not None:
            start = max(start, datetime.combine(self.active_from, time()))
        while (hour := self._next_hour(start)) is not None:
            instant = wall_to_utc(hour, self.timezone)
            if _wall(instant, self.timezone) < hour + _HOUR:
                return instant
            start = hour + _HOUR  # the whole hour was skipped by a spring-forward jump
        return None

    def closes_at(self, at: datetime) -> datetime | None:
        """The first instant from ``at`` on at which the schedule is closed: ``at`` itself if
        it is closed then; None if it stays open beyond :data:`~dispatch.rules.hours.HORIZON`
        (400 days; ``"* * * * *"`` with no ``active_until``)."""
        at = _aware(at)
        if not self.is_open(at):
            return at
        wall = _wall(at, self.timezone)
        start = wall.replace(minute=0, second=0, microsecond=0) + _HOUR
        limit = (wall + HORIZON).date()
        while (hour := self._next_closed_hour(start, limit)) is not None:
            instant = wall_to_utc(hour, self.timezone)
            if _wall(instant, self.timezone) < hour + _HOUR:
                return instant
            start = hour + _HOUR  # a closed hour that never happened closes nothing
        return None

    def _in_range(self, day: date) -> bool:
        return (self.active_from is None or day >= self.active_from) and (
            self.active_until is None or day <= self.active_until
        )

    def _next_hour(self, start: datetime) -> datetime | None:
        """The first open wall hour at or after ``start`` (on an hour), by the dates and the
        cron expression alone."""
        day, first = start.date(), start.hour
        while True:
            match = self._day(day)
            if match is None or not self._in_range(match):
                return None  # the range and the cron expression only move forward
            if match != day:
                day, first = match, 0
            hour = next((h for h in self._hours if h >= first), None)
            if hour is not None:
                return datetime.combine(day, time(hour))
            day, first = day + _DAY, 0

    def _next_closed_hour(self, start: datetime, limit: date) -> datetime | None:
        """The first closed wall hour at or after ``start``, up to the date ``limit``."""
        day, first = start.date(), start.hour
        while day <= limit:
            if not self._in_range(day) or self._day(day) != day:
                return datetime.combine(day, time(first))
            hour = next((h for h in range(first, 24) if h not in self._hours), None)
            if hour is not None:
                return datetime.combine(day, time(hour))
            day, first = day + _DAY, 0
        return None


def _compile(cron: str) -> tuple[tuple[int, ...], Callable[[date], date | None]]:
    """The hours in which ``cron`` fires on a day it fires, and a function giving the first
    such day on or after a date. Its fields are independent (a day matches or not whatever
    the hour), so the hours are the same on every day."""
    # apscheduler 3.x ships no type information.
    from apscheduler.triggers.cron import CronTrigger  # type: ignore[import-untyped]

    fields = cron.split()
    try:
        if len(fields) != 5:
            raise ValueError(f"{len(fields)} fields, expected 5 (minute hour day month weekday)")
        fields[4] = _weekdays(fields[4])
        # The trigger runs on wall-clock time written as UTC, where no hour is skipped or
        # repeated: clock changes are handled when wall time is turned into instants.
        trigger: Any = CronTrigger.from_crontab(" ".join(fields), timezone=UTC)
    except ValueError as exc:
        raise ValueError(f"invalid cron schedule {cron!r}: {exc}") from None

    def fire(after: datetime) -> datetime | None:
        fired: datetime | None = trigger.get_next_fire_time(None, after)
        return fired

    first = fire(_EPOCH)
    if first is None:
        raise ValueError(f"invalid cron schedule {cron!r}: it never fires")
    hours = []
    at = datetime.combine(first.date(), time(), UTC)
    while (fired := fire(at)) is not None and fired.date() == first.date():
        hours.append(fired.hour)
        at = fired.replace(minute=0, second=0) + _HOUR

    @lru_cache(maxsize=1024)
    def day(start: date) -> date | None:
        fired = fire(datetime.combine(start, time(), UTC))
        return fired.date() if fired is not None else None

    return tuple(hours), day


def _weekdays(expr: str) -> str:
    """A crontab day-of-week field (0 or 7 = Sunday) as apscheduler day names."""
    if expr == "*":
        return expr
    days: set[int] = set()
    for part in expr.lower().split(","):
        body, slash, step_text = part.partition("/")
        if slash and not (step_text.isdigit() and int(step_text) > 0):
            raise ValueError(f"day of week {expr!r}: bad step {step_text!r}")
        step = int(step_text) if slash else 1
        if body == "*":
            low, high = 0, 6
        else:
            first, dash, last = body.partition("-")
            low = _weekday(first, expr)
            high = _weekday(last, expr) if dash else (6 if slash else low)
            if high < low:  # sat-sun, fri-mon: round the end of the week
                high += 7
        days.update(d % 7 for d in range(low, high + 1, step))
    return ",".join(_CRON_DAYS[d] for d in sorted(days))


def _weekday(token: str, expr: str) -> int:
    if token.isdigit() and int(token) <= 7:
        return int(token)
    if token in _CRON_DAYS:
        return _CRON_DAYS.index(token)
    raise ValueError(f"day of week {expr!r}: {token!r} is not 0-7 or sun..sat")


def _same_day(day: date) -> date:
    return day


def _aware(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"a timezone-aware datetime is needed, not {at!r}")
    return at.astimezone(UTC)


def _wall(instant: datetime, zone: ZoneInfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None)
