"""Calling hours in the callee's local time, and the rule packs that carry them.

A :class:`CallingHours` is a set of weekly :class:`Window` s in wall-clock time (``mon-fri
10:00-13:00``) and holidays on which there is no window at all. It is asked in UTC, for one
or several candidate time zones: a number whose zone is not certain (+1 208 is Boise or Los
Angeles) is dialed only at a moment inside the window in every zone at once.

Wall time to UTC, and what happens around clock changes (:func:`wall_to_utc`):

- a window on local date D runs from the first instant the local clock reads its start, to
  the first instant it reads its end (``24:00``: midnight at the end of D); a window that
  starts or ends inside a spring-forward gap opens or closes when the clocks jump past it
  (02:30-04:00 in New York on 2026-03-08 opens at 03:00 EDT);
- an ambiguous wall time (the hour repeated when clocks fall back) is its first occurrence,
  so a window is one contiguous span per day: 00:00-01:30 on 2026-11-01 in New York closes at
  01:30 EDT and does not reopen at 01:00 EST;
- a holiday is a local date of the callee (the zone's own, for each candidate zone).

Searches reach :data:`HORIZON` (400 days) ahead: :meth:`CallingHours.next_open` says None
when no instant within it is inside the window in every zone (windows that never overlap
across the zones). They step from window boundary to window boundary, never minute by minute,
and are exact to the second.

A number's zones come from :func:`zones_for`: the record's own ``timezone`` when it has one,
else what ``phonenumbers`` knows of the number. When that is nothing (``Etc/Unknown``: a
non-geographic number), it returns ``()`` and the caller decides: the gate skips the record
as ``unknown_timezone`` unless the pack gives ``fallback_zones`` (:meth:`RulePack.zones_for`
applies them; the ``us`` pack falls back to every US zone, so such a number is dialed only
when it is calling hours from Honolulu to New York).

Rule packs are TOML files: the built-in ones (:data:`BUILTIN_PACKS`) in ``rules/packs/``, or
a file of the user's own, loaded by :func:`load_pack`::

    name = "fr"                      # required; shown in explanations and the ledger
    version = "2026-12-01"           # required; a string (or a TOML date)
    description = "..."              # optional
    fallback_zones = ["Europe/Paris"]  # optional: zones for numbers that map to none

    [hours]                          # required
    windows = [                      # required, at least one; end exclusive
      { days = "mon-fri", from = "10:00", to = "13:00" },
      { days = "mon-fri", from = "14:00", to = "20:00" },
    ]
    holidays = { country = "FR" }    # optional: { country = "US", subdivision = "FL" }, or "US-FL"
    holiday_dates = ["2026-12-24"]   # optional: more dates without a window

    [caps]                           # optional: per-number caps (dispatch.rules.caps.Caps)
    per_30d = 4                      # counts: whole numbers
    cooldown_after_refusal = "60d"   # durations: see dispatch.rules.parse_duration

``days`` is ``"daily"`` (or ``"*"``), a day (``"sat"``), a range (``"mon-fri"``, ``"fri-mon"``
wraps) or a list (``"mon,wed,fri"``, ``"mon-wed,fri"``). ``from``/``to`` are ``HH:MM`` or
``HH:MM:SS`` local wall time; ``to = "24:00"`` (or ``"00:00"``) runs to midnight. A window
cannot span midnight: write two. Unknown keys are errors, so a typo cannot silently drop a rule.

Nothing here imports ``holidays`` or ``phonenumbers`` until it needs them: loading a pack
without holidays, or ``dispatch --help``, does not pay for them.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from . import parse_duration
from .caps import Caps

if TYPE_CHECKING:
    from holidays import HolidayBase

__all__ = [
    "BUILTIN_PACKS",
    "END_OF_DAY",
    "HORIZON",
    "UNKNOWN_ZONE",
    "CallingHours",
    "HolidayCalendar",
    "RulePack",
    "Window",
    "custom_pack",
    "load_pack",
    "parse_days",
    "parse_zone",
    "wall_to_utc",
    "windows_from_config",
    "zones_for",
]

HORIZON: Final = timedelta(days=400)
"""How far ahead :meth:`CallingHours.next_open` and :meth:`~CallingHours.closes_at` look."""

END_OF_DAY: Final = time(0)
"""As a window's end: midnight at the end of the day (``"24:00"`` in a pack)."""

BUILTIN_PACKS: Final = ("fr", "us", "us-fl")
"""The packs shipped in ``dispatch/rules/packs/``, by name."""

UNKNOWN_ZONE: Final = "Etc/Unknown"  # what phonenumbers says for a non-geographic number

_DAY = timedelta(days=1)
_SECOND = timedelta(seconds=1)
_DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_ALL_DAYS = frozenset(range(7))
_TIME = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?")


def wall_to_utc(wall: datetime, zone: ZoneInfo) -> datetime:
    """The first instant at which ``zone``'s clocks read ``wall`` (a naive datetime), in UTC.

    An ambiguous wall time (clocks falling back) gives its first occurrence. A wall time that
    never exists (skipped when clocks spring forward) gives the instant of the jump, when the
    clocks pass it: 02:30 on 2026-03-08 in New York gives 07:00 UTC (03:00 EDT).
    """
    instant = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if instant.astimezone(zone).replace(tzinfo=None) == wall:
        return instant
    # In a gap, fold=0 reads the wall time with the offset before the jump, which names an
    # instant after it, and fold=1 with the offset after, an instant before it (PEP 495). The
    # jump lies between; zone transitions fall on whole seconds.
    before, after = wall.replace(tzinfo=zone, fold=1).astimezone(UTC), instant
    offset = after.astimezone(zone).utcoffset()
    while after - before > _SECOND:
        middle = before + timedelta(seconds=(after - before) // _SECOND // 2)
        if middle.astimezone(zone).utcoffset() == offset:
            after = middle
        else:
            before = middle
    return after


def parse_zone(name: str) -> ZoneInfo:
    """The IANA zone ``name`` (``"America/Chicago"``); ValueError naming it if there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"unknown time zone {name!r}: give an IANA name such as 'America/New_York'"
        ) from None


def zones_for(phone: str, timezone: str | None = None) -> tuple[ZoneInfo, ...]:
    """The time zones a call to ``phone`` (E.164) may land in (in ``phonenumbers``' order,
    which is alphabetical, not by likelihood).

    ``timezone`` (the record's own, an IANA name) wins when given (a blank string counts as not
    given); an invalid one raises ValueError. Otherwise the zones ``phonenumbers`` gives for
    the number (``+1 208 ...``: Boise and Los Angeles). ``()`` means unknown (a non-geographic
    number, or a zone the system's tz database lacks): the caller skips the record as
    ``unknown_timezone``, or uses its pack's ``fallback_zones`` (:meth:`RulePack.zones_for`).
    A phone that does not parse raises ValueError.
    """
    if timezone is not None and timezone.strip():
        return (parse_zone(timezone.strip()),)
    import phonenumbers
    from phonenumbers.timezone import time_zones_for_number

    try:
        number = phonenumbers.parse(phone)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"no time zone for {phone!r}: {exc}") from None
    try:
        return tuple(ZoneInfo(n) for n in time_zones_for_number(number) if n != UNKNOWN_ZONE)
    except (ZoneInfoNotFoundError, ValueError):
        return ()  # one zone unknown here: checking only the others would be too permissive


@dataclass(frozen=True, slots=True)
class Window:
    """Calling is allowed on ``days`` (0 = Monday .. 6 = Sunday) from ``start`` (inclusive) to
    ``end`` (exclusive), local wall time. ``end`` = :data:`END_OF_DAY` (``time(0)``, written
    ``24:00``) runs to midnight; otherwise ``end`` must be after ``start`` (split a window
    that spans midnight in two). Invalid values raise ValueError."""

    days: frozenset[int]
    start: time
    end: time

    def __post_init__(self) -> None:
        object.__setattr__(self, "days", frozenset(self.days))
        if not self.days or not self.days <= _ALL_DAYS:
            raise ValueError(f"window days must be some of 0 (Monday) to 6, not {set(self.days)}")
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("window times are local wall-clock times: give them without tzinfo")
        if self.end != END_OF_DAY and self.end <= self.start:
            raise ValueError(
                f"window ends ({self.end:%H:%M}) before it starts ({self.start:%H:%M}); "
                "a window cannot span midnight: split it in two"
            )

    def span(self, day: date, zone: ZoneInfo) -> tuple[datetime, datetime] | None:
        """The window on local date ``day`` in ``zone``, as UTC ``[start, end)``; None if it
        has none that day (another weekday, or wholly inside a spring-forward gap)."""
        if day.weekday() not in self.days:
            return None
        start = wall_to_utc(datetime.combine(day, self.start), zone)
        end_day = day + _DAY if self.end == END_OF_DAY else day
        end = wall_to_utc(datetime.combine(end_day, self.end), zone)
        return (start, end) if start < end else None

    def __str__(self) -> str:
        end = "24:00" if self.end == END_OF_DAY else _clock(self.end)
        return f"{_days_text(self.days)} {_clock(self.start)}-{end}"


@dataclass(frozen=True, slots=True)
class HolidayCalendar:
    """The public holidays of ``country`` (ISO 3166 code, ``"FR"``), optionally of one of its
    subdivisions (``"FL"`` for US Florida), from the ``holidays`` package.

    Building one imports ``holidays`` and checks the codes (ValueError for an unknown
    country or subdivision); each year's dates are computed once, on first use."""

    country: str
    subdivision: str | None = None
    _years: dict[int, HolidayBase] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "country", self.country.strip().upper())
        self._calendar(())  # validates the codes

    @classmethod
    def parse(cls, spec: str) -> HolidayCalendar:
        """From ``"FR"`` or ``"US-FL"`` (country, then subdivision after the first hyphen)."""
        country, _, subdivision = spec.partition("-")
        return cls(country, subdivision.strip() or None)

    def name(self, day: date) -> str | None:
        """The holiday's name if ``day`` is one, else None."""
        table = self._years.get(day.year)
        if table is None:
            table = self._years.setdefault(day.year, self._calendar((day.year,)))
        return table.get(day)

    def __contains__(self, day: object) -> bool:
        return isinstance(day, date) and self.name(day) is not None

    def __str__(self) -> str:
        return self.country + (f"-{self.subdivision}" if self.subdivision else "")

    def _calendar(self, years: tuple[int, ...]) -> HolidayBase:
        import holidays

        try:
            return holidays.country_holidays(self.country, subdiv=self.subdivision, years=years)
        except NotImplementedError as exc:  # how holidays says "no such country/subdivision"
            raise ValueError(f"holidays {self}: {exc}") from None


@dataclass(frozen=True, slots=True)
class CallingHours:
    """When calls are allowed, in the callee's local time: ``windows`` on their weekdays, none
    at all on a holiday (a date of ``holidays``' calendar, or one of ``holiday_dates``).

    Every method takes an aware datetime (any zone; naive raises ValueError) and answers in
    UTC. Those taking ``zones`` want the moment inside the window in every zone at once, and
    raise ValueError for an empty sequence (an unknown zone is the caller's decision)."""

    name: str
    version: str
    windows: tuple[Window, ...]
    holidays: HolidayCalendar | None = None
    holiday_dates: frozenset[date] = frozenset()

    def __post_init__(self) -> None:
        if not self.windows:
            raise ValueError(f"calling hours {self.name!r}: no window")
        object.__setattr__(self, "windows", tuple(self.windows))
        object.__setattr__(self, "holiday_dates", frozenset(self.holiday_dates))

    def holiday(self, day: date) -> str | None:
        """Why local date ``day`` has no window (the holiday's name), or None."""
        if day in self.holiday_dates:
            return "holiday"
        return self.holidays.name(day) if self.holidays is not None else None

    def spans(self, day: date, zone: ZoneInfo) -> list[tuple[datetime, datetime]]:
        """The windows of local date ``day`` in ``zone``, as sorted UTC ``[start, end)``."""
        if self.holiday(day) is not None:
            return []
        return sorted(s for w in self.windows if (s := w.span(day, zone)) is not None)

    def is_open(self, at: datetime, zone: ZoneInfo) -> bool:
        """Whether ``at`` is inside a window in ``zone``."""
        at = _aware(at)
        today = at.astimezone(zone).date()
        # A neighbouring date's window can hold `at` when a clock change crosses midnight.
        return any(
            start <= at < end
            for day in (today - _DAY, today, today + _DAY)
            for start, end in self.spans(day, zone)
        )

    def next_open(self, at: datetime, zones: Sequence[ZoneInfo]) -> datetime | None:
        """``at`` (in UTC) if it is inside the window in every zone; else the earliest later
        instant that is (the start of a window in one of the zones); None if there is none
        within :data:`HORIZON`."""
        t = _aware(at)
        limit = t + HORIZON
        zones = _some(zones)
        while True:
            latest = t
            for zone in zones:
                span = self._locate(t, zone, limit)
                if span is None:
                    return None
                latest = max(latest, span[0])
            if latest == t:
                return t
            if latest > limit:
                return None
            t = latest  # no zone can be open together with the others before that

    def closes_at(self, at: datetime, zones: Sequence[ZoneInfo]) -> datetime | None:
        """The first instant from ``at`` on that is outside the window in some zone: ``at``
        itself if it is already outside; None if it stays inside beyond :data:`HORIZON`.
        Adjacent windows (10:00-13:00 and 13:00-20:00) count as one."""
        closing = self._closing(_aware(at), _some(zones))
        return closing[0] if closing is not None else None

    def explain(self, at: datetime, zones: Sequence[ZoneInfo]) -> str:
        """One line for ``dispatch check`` and logs, e.g. ``outside hours until 09:00
        America/Chicago (us)``: the local time, in the zone that opens last (with the date when
        it is another day there), or ``inside hours until 21:00 America/New_York (us)`` with
        the zone that closes first."""
        at = _aware(at)
        if not zones:
            return f"time zone unknown ({self.name})"
        opens = self.next_open(at, zones)
        if opens is None:
            keys = ", ".join(z.key for z in zones)
            return (
                f"outside hours ({self.name}): no time within {HORIZON.days} days is inside "
                f"the window in every zone ({keys})"
            )
        if opens == at:
            closing = self._closing(at, zones)
            if closing is None:
                return f"inside hours ({self.name})"
            return f"inside hours until {_local(closing[0], closing[1], at)} ({self.name})"
        last = next((z for z in zones if self._opens_at(opens, z)), zones[0])
        days = (self.holiday(at.astimezone(z).date()) for z in zones)
        why = next((f"; {name}" for name in days if name is not None), "")
        return f"outside hours until {_local(opens, last, at)} ({self.name}{why})"

    def _opens_at(self, t: datetime, zone: ZoneInfo) -> bool:
        span = self._locate(t, zone, t)
        return span is not None and span[0] == t

    def _closing(self, at: datetime, zones: Sequence[ZoneInfo]) -> tuple[datetime, ZoneInfo] | None:
        ends: list[tuple[datetime, int]] = []
        for i, zone in enumerate(zones):
            span = self._locate(at, zone, at + HORIZON)
            if span is None or span[0] > at:
                return at, zone
            if span[1] is not None:
                ends.append((span[1], i))
        if not ends:
            return None
        end, i = min(ends)
        return end, zones[i]

    def _locate(
        self, t: datetime, zone: ZoneInfo, limit: datetime
    ) -> tuple[datetime, datetime | None] | None:
        """The merged span of ``zone`` that holds ``t``, or else the next one, searching local
        dates up to ``limit``'s; its end is None when it runs past them."""
        first = t.astimezone(zone).date() - _DAY
        last = limit.astimezone(zone).date()
        for start, end in self._merged(zone, first, last):
            if end is None or end > t:
                return start, end
        return None

    def _merged(
        self, zone: ZoneInfo, first: date, last: date
    ) -> Iterator[tuple[datetime, datetime | None]]:
        """The spans of local dates ``first`` to ``last``, adjacent and overlapping ones merged,
        in order. The last one's end is None if it reaches the end of ``last``."""
        current: tuple[datetime, datetime] | None = None
        day = first
        while day <= last:
            for start, end in self.spans(day, zone):
                if current is not None and start <= current[1]:
                    current = current[0], max(current[1], end)
                    continue
                if current is not None:
                    yield current
                current = start, end
            day += _DAY
        if current is not None:
            edge = wall_to_utc(datetime.combine(last + _DAY, time(0)), zone)
            yield current[0], None if current[1] >= edge else current[1]


@dataclass(frozen=True, slots=True)
class RulePack:
    """A named, versioned set of calling rules: hours, per-number caps, and the zones to
    assume for a number that maps to none. ``name@version`` is what the ledger records as
    the rules a dial went through."""

    name: str
    version: str
    hours: CallingHours
    caps: Caps = field(default_factory=Caps)
    fallback_zones: tuple[ZoneInfo, ...] = ()
    description: str = ""

    def zones_for(self, phone: str, timezone: str | None = None) -> tuple[ZoneInfo, ...]:
        """:func:`zones_for`, with :attr:`fallback_zones` when the number maps to none
        (``()`` still if the pack has none: skip the record as ``unknown_timezone``)."""
        return zones_for(phone, timezone) or self.fallback_zones


def load_pack(name_or_path: str | os.PathLike[str]) -> RulePack:
    """A built-in pack by name (:data:`BUILTIN_PACKS`: ``"us"``, ``"us-fl"``, ``"fr"``), or a
    pack file of one's own by path (format: this module's docstring). Raises ValueError with
    the file and the key at fault. Built-in packs are parsed once and shared (they are
    immutable)."""
    if isinstance(name_or_path, str) and name_or_path in BUILTIN_PACKS:
        return _builtin(name_or_path)
    path = Path(name_or_path)
    if not path.exists() and path.suffix != ".toml" and len(path.parts) == 1:
        raise ValueError(
            f"unknown rule pack {str(name_or_path)!r}: the built-in packs are "
            f"{', '.join(BUILTIN_PACKS)}; a pack of your own is a path to a .toml file"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"rule pack {path}: cannot read it ({exc.strerror or exc})") from None
    return _parse_pack(text, str(path))


def custom_pack(
    windows: Sequence[Window],
    *,
    holidays: str | None = None,
    timezone: str | None = None,
    name: str = "custom",
) -> RulePack:
    """A pack from inline windows (:func:`windows_from_config`), optional holidays (``"FR"``,
    ``"US-FL"``) and a fallback zone for numbers that map to none. Its version is a digest of
    its content, so the ledger tells two different custom rules apart."""
    calendar = HolidayCalendar.parse(holidays) if holidays else None
    fallback = (parse_zone(timezone),) if timezone else ()
    content = repr(([str(w) for w in windows], str(calendar), [z.key for z in fallback]))
    version = hashlib.sha256(content.encode()).hexdigest()[:12]
    hours = CallingHours(name, version, tuple(windows), calendar)
    return RulePack(name, version, hours, Caps(), fallback)


def windows_from_config(
    entries: Sequence[Mapping[str, Any]], *, where: str = "windows"
) -> tuple[Window, ...]:
    """Windows from TOML tables ``[{ days = "mon-fri", from = "09:00", to = "18:00" }]``
    (``days`` defaults to daily). ValueError names the entry (``windows[1]``) and what is
    wrong with it."""
    if isinstance(entries, str | Mapping) or not isinstance(entries, Sequence):
        raise ValueError(
            f'{where} must be a list of tables such as {{ days = "mon-fri", from = "09:00", '
            f'to = "18:00" }}, not {entries!r}'
        )
    if not entries:
        raise ValueError(f"{where} is empty: give at least one window")
    windows = []
    for i, entry in enumerate(entries):
        label = f"{where}[{i}]"
        try:
            if not isinstance(entry, Mapping):
                raise ValueError("must be a table with days, from and to")
            unknown = sorted(set(entry) - {"days", "from", "to"})
            if unknown:
                raise ValueError(f"unknown key {unknown[0]!r} (a window has days, from, to)")
            for key in ("from", "to"):
                if key not in entry:
                    raise ValueError(f"{key!r} is missing")
            days = parse_days(entry.get("days", "daily"))
            start = _parse_time(entry["from"], "from")
            end = _parse_time(entry["to"], "to")
            windows.append(Window(days, start, end))
        except ValueError as exc:
            shown = dict(entry) if isinstance(entry, Mapping) else entry
            raise ValueError(f"{label} {shown!r}: {exc}") from None
    return tuple(windows)


def parse_days(spec: str | Sequence[str]) -> frozenset[int]:
    """Weekdays (0 = Monday) from ``"daily"``/``"*"``, ``"sat"``, ``"mon-fri"`` (``"fri-mon"``
    wraps round the week), ``"mon,wed,fri"``, or a list of such strings; case-insensitive."""
    if not isinstance(spec, str):
        if not isinstance(spec, Sequence) or not spec or not all(isinstance(s, str) for s in spec):
            raise ValueError(f"days must be a string such as 'mon-fri', not {spec!r}")
        return frozenset(day for part in spec for day in parse_days(part))
    text = spec.strip().lower()
    if text in ("daily", "*"):
        return _ALL_DAYS
    days: set[int] = set()
    for part in text.split(","):
        first, dash, last = (p.strip() for p in part.partition("-"))
        if first not in _DAY_NAMES or (dash and last not in _DAY_NAMES):
            raise ValueError(
                f"days {spec!r}: cannot read {part.strip()!r} (use mon..sun, a range such as "
                "mon-fri, a list such as mon,wed,fri, or daily)"
            )
        a = _DAY_NAMES.index(first)
        b = _DAY_NAMES.index(last) if dash else a
        days.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return frozenset(days)


# -- helpers -------------------------------------------------------------------------------


def _parse_time(value: object, key: str) -> time:
    if isinstance(value, time):  # a TOML local time (from = 10:00:00, unquoted)
        return value
    match = _TIME.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{key!r} must be a time such as '09:00', not {value!r}")
    hour, minute, second = (int(g or 0) for g in match.groups())
    if key == "to" and (hour, minute, second) == (24, 0, 0):
        return END_OF_DAY
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"{key!r}: {value!r} is not a time of day (00:00-23:59, 'to' 24:00)")
    return time(hour, minute, second)


def _aware(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"a timezone-aware datetime is needed, not {at!r}")
    return at.astimezone(UTC)


def _some(zones: Sequence[ZoneInfo]) -> Sequence[ZoneInfo]:
    if not zones:
        raise ValueError("no time zone to check the hours in (the record's zone is unknown)")
    return zones


def _clock(t: time) -> str:
    return f"{t:%H:%M:%S}" if t.second else f"{t:%H:%M}"


def _local(instant: datetime, zone: ZoneInfo, ref: datetime) -> str:
    local = instant.astimezone(zone)
    day = "" if local.date() == ref.astimezone(zone).date() else f"{local:%a %Y-%m-%d} "
    return f"{day}{_clock(local.time())} {zone.key}"


def _days_text(days: frozenset[int]) -> str:
    if days == _ALL_DAYS:
        return "daily"
    runs: list[list[int]] = []
    for day in sorted(days):
        if runs and runs[-1][-1] == day - 1:
            runs[-1].append(day)
        else:
            runs.append([day])
    return ",".join(
        _DAY_NAMES[r[0]] + (f"-{_DAY_NAMES[r[-1]]}" if len(r) > 1 else "") for r in runs
    )


@cache
def _builtin(name: str) -> RulePack:
    pack = resources.files("dispatch.rules") / "packs" / f"{name}.toml"
    text = pack.read_text(encoding="utf-8")
    return _parse_pack(text, f"{name!r} (built-in)")


_PACK_KEYS = {"name", "version", "description", "fallback_zones", "hours", "caps"}
_HOURS_KEYS = {"windows", "holidays", "holiday_dates"}


def _parse_pack(text: str, source: str) -> RulePack:
    try:
        data = tomllib.loads(text)
        return _pack_from(data)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"rule pack {source}: invalid TOML: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"rule pack {source}: {exc}") from None


def _pack_from(data: Mapping[str, Any]) -> RulePack:
    _known(data, _PACK_KEYS, "")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError("'name' must be a non-empty string")
    version = data.get("version")
    if isinstance(version, date):  # version = 2026-12-01, unquoted
        version = version.isoformat()
    if not isinstance(version, str) or not version.strip():
        raise ValueError("'version' must be a non-empty string such as '2026-12-01'")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ValueError("'description' must be a string")
    fallback = data.get("fallback_zones", [])
    if not isinstance(fallback, list) or not all(isinstance(z, str) for z in fallback):
        raise ValueError("'fallback_zones' must be a list of IANA zone names")
    hours = data.get("hours")
    if not isinstance(hours, Mapping):
        raise ValueError("'hours' is missing: give [hours] with windows")
    _known(hours, _HOURS_KEYS, "hours.")
    if "windows" not in hours:
        raise ValueError("'hours.windows' is missing")
    windows = windows_from_config(hours["windows"], where="hours.windows")
    calendar = _calendar(hours.get("holidays"))
    dates = _dates(hours.get("holiday_dates", []))
    caps = data.get("caps", {})
    if not isinstance(caps, Mapping):
        raise ValueError("'caps' must be a table")
    return RulePack(
        name,
        version,
        CallingHours(name, version, windows, calendar, dates),
        _caps(caps),
        tuple(parse_zone(z) for z in fallback),
        description,
    )


def _known(table: Mapping[str, Any], keys: set[str], prefix: str) -> None:
    unknown = sorted(set(table) - keys)
    if unknown:
        raise ValueError(f"unknown key '{prefix}{unknown[0]}' (known: {', '.join(sorted(keys))})")


def _calendar(value: object) -> HolidayCalendar | None:
    if value is None:
        return None
    if isinstance(value, str):
        return HolidayCalendar.parse(value)
    if isinstance(value, Mapping):
        _known(value, {"country", "subdivision"}, "hours.holidays.")
        country, subdivision = value.get("country"), value.get("subdivision")
        if isinstance(country, str) and isinstance(subdivision, str | None):
            return HolidayCalendar(country, subdivision)
    raise ValueError(
        "'hours.holidays' must be a table with country (and subdivision) or a string such as "
        f"'FR' or 'US-FL', not {value!r}"
    )


def _dates(value: object) -> frozenset[date]:
    if not isinstance(value, list):
        raise ValueError("'hours.holiday_dates' must be a list of dates")
    dates = set()
    for item in value:
        try:
            dates.add(item if isinstance(item, date) else date.fromisoformat(item))
        except (TypeError, ValueError):
            raise ValueError(
                f"'hours.holiday_dates': {item!r} is not a date such as '2026-12-24'"
            ) from None
    return frozenset(dates)


def _caps(table: Mapping[str, Any]) -> Caps:
    known = {f.name: str(f.type) for f in fields(Caps)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        kind = known.get(key)
        if kind is None:
            raise ValueError(f"unknown cap 'caps.{key}' (known: {', '.join(sorted(known))})")
        if "int" in kind:  # a count
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"'caps.{key}' must be a whole number, not {value!r}")
            values[key] = value
        else:
            try:
                values[key] = parse_duration(value)
            except ValueError as exc:
                raise ValueError(f"'caps.{key}': {exc}") from None
    return Caps(**values)
