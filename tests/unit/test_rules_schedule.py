"""Campaign schedules: a cron expression (open in each hour it fires) and an active date range.

Instants are injected; expectations are exact UTC datetimes, local time in the comments.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest

from dispatch.rules.schedule import Schedule

NEW_YORK = ZoneInfo("America/New_York")
PARIS = ZoneInfo("Europe/Paris")
OFFICE = "0 9-17 * * mon-fri"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_open_during_every_hour_in_which_the_cron_expression_fires() -> None:
    office = Schedule(OFFICE)
    monday = (2026, 12, 7)
    assert not office.is_open(utc(*monday, 8, 59, 59))
    assert office.is_open(utc(*monday, 9))
    assert office.is_open(utc(*monday, 17, 59, 59))
    assert not office.is_open(utc(*monday, 18))
    assert office.next_open(utc(*monday, 8)) == utc(*monday, 9)
    assert office.closes_at(utc(*monday, 9)) == utc(*monday, 18)
    assert office.next_open(utc(2026, 12, 11, 18)) == utc(2026, 12, 14, 9)  # Fri -> Mon


def test_an_hour_opens_at_its_start_even_if_it_fires_later_in_it() -> None:
    half_past_eight = Schedule("30 8 * * *")
    assert half_past_eight.next_open(utc(2026, 12, 7, 7, 10)) == utc(2026, 12, 7, 8)
    assert half_past_eight.closes_at(utc(2026, 12, 7, 8, 45)) == utc(2026, 12, 7, 9)


def test_next_open_is_the_moment_itself_when_open() -> None:
    at = utc(2026, 12, 7, 10, 11, 12, 131415)
    assert Schedule(OFFICE).next_open(at) == at


def test_closes_at_is_the_moment_itself_when_closed() -> None:
    at = utc(2026, 12, 7, 20)
    assert Schedule(OFFICE).closes_at(at) == at


def test_active_dates_are_inclusive_local_dates() -> None:
    december = Schedule(None, date(2026, 12, 1), date(2026, 12, 24), PARIS)
    assert december.next_open(utc(2026, 11, 30, 12)) == utc(2026, 11, 30, 23)  # Dec 1 00:00 CET
    assert december.is_open(utc(2026, 12, 24, 22, 59, 59))
    assert not december.is_open(utc(2026, 12, 24, 23))
    assert december.closes_at(utc(2026, 12, 10)) == utc(2026, 12, 24, 23)  # Dec 25 00:00 CET
    assert december.next_open(utc(2026, 12, 24, 23)) is None


def test_cron_and_active_dates_intersect() -> None:
    december = Schedule(OFFICE, date(2026, 12, 1), date(2026, 12, 24), PARIS)
    assert december.next_open(utc(2026, 11, 27, 12)) == utc(2026, 12, 1, 8)  # Tue 09:00 CET
    assert december.closes_at(utc(2026, 12, 24, 16)) == utc(2026, 12, 24, 17)  # 18:00 CET
    assert december.next_open(utc(2026, 12, 24, 17)) is None  # never again


def test_office_hours_follow_the_us_clock_changes() -> None:
    office = Schedule(OFFICE, timezone=NEW_YORK)
    assert office.next_open(utc(2026, 3, 6, 5)) == utc(2026, 3, 6, 14)  # Fri 09:00 EST
    assert office.next_open(utc(2026, 3, 7, 5)) == utc(2026, 3, 9, 13)  # Mon 09:00 EDT
    assert office.closes_at(utc(2026, 3, 9, 13)) == utc(2026, 3, 9, 22)  # 18:00 EDT
    assert office.next_open(utc(2026, 10, 30, 4)) == utc(2026, 10, 30, 13)  # Fri 09:00 EDT
    assert office.next_open(utc(2026, 10, 31, 4)) == utc(2026, 11, 2, 14)  # Mon 09:00 EST


def test_hours_follow_the_eu_clock_changes() -> None:
    daily = Schedule("0 9-17 * * *", timezone=PARIS)
    assert daily.next_open(utc(2026, 3, 28, 0)) == utc(2026, 3, 28, 8)  # 09:00 CET
    assert daily.next_open(utc(2026, 3, 29, 0)) == utc(2026, 3, 29, 7)  # 09:00 CEST
    assert daily.next_open(utc(2026, 10, 24, 0)) == utc(2026, 10, 24, 7)  # 09:00 CEST
    assert daily.next_open(utc(2026, 10, 25, 0)) == utc(2026, 10, 25, 8)  # 09:00 CET
    assert daily.closes_at(utc(2026, 10, 25, 8)) == utc(2026, 10, 25, 17)  # 18:00 CET


def test_an_hour_skipped_by_spring_forward_never_opens() -> None:
    two_am = Schedule("* 2 * * *", timezone=NEW_YORK)
    assert not two_am.is_open(utc(2026, 3, 8, 7))  # 03:00 EDT, just after the jump
    assert two_am.next_open(utc(2026, 3, 8, 5)) == utc(2026, 3, 9, 6)  # 02:00 EDT next day


def test_the_hour_repeated_by_fall_back_is_open_both_times() -> None:
    one_am = Schedule("* 1 * * *", timezone=NEW_YORK)
    assert one_am.next_open(utc(2026, 11, 1, 4)) == utc(2026, 11, 1, 5)  # 01:00 EDT
    assert one_am.is_open(utc(2026, 11, 1, 6, 30))  # 01:30 EST
    assert one_am.closes_at(utc(2026, 11, 1, 5)) == utc(2026, 11, 1, 7)  # 02:00 EST


@pytest.mark.parametrize(
    ("weekdays", "open_days"),
    [
        ("1-5", [7, 8, 9, 10, 11]),  # crontab: 1 = Monday
        ("mon-fri", [7, 8, 9, 10, 11]),
        ("0", [6, 13]),  # 0 = Sunday
        ("7", [6, 13]),  # so is 7
        ("sat-sun", [6, 12, 13]),
        ("*/2", [6, 8, 10, 12, 13]),  # Sunday, Tuesday, Thursday, Saturday
        ("mon,3,fri", [7, 9, 11]),
    ],
)
def test_weekdays_have_their_crontab_meaning(weekdays: str, open_days: list[int]) -> None:
    schedule = Schedule(f"0 9 * * {weekdays}")
    # 2026-12-06 is a Sunday; look at a week and a day.
    assert [d for d in range(6, 14) if schedule.is_open(utc(2026, 12, d, 9, 30))] == open_days


def test_day_of_month_and_day_of_week_must_both_match() -> None:
    friday_13th = Schedule("0 9 13 * fri")
    assert friday_13th.next_open(utc(2026, 1, 1)) == utc(2026, 2, 13, 9)
    assert friday_13th.next_open(utc(2026, 2, 14)) == utc(2026, 3, 13, 9)


def test_no_cron_and_no_dates_is_always_open() -> None:
    always = Schedule()
    assert always.is_open(utc(2026, 12, 7, 3))
    assert always.closes_at(utc(2026, 12, 7, 3)) is None


def test_an_every_minute_cron_never_closes_within_the_horizon_unless_dates_end() -> None:
    assert Schedule("* * * * *").closes_at(utc(2026, 12, 7)) is None
    ending = Schedule("* * * * *", None, date(2026, 12, 24))
    assert ending.closes_at(utc(2026, 12, 7)) == utc(2026, 12, 25)


@pytest.mark.parametrize(
    ("cron", "message"),
    [
        ("0 25 * * *", r"invalid cron schedule '0 25 \* \* \*': .*25"),
        ("* * *", r"3 fields, expected 5"),
        ("0 9 * * funday", r"'funday' is not 0-7 or sun..sat"),
        ("0 9 * * 8", r"'8' is not 0-7"),
        ("0 9 * * mon/0", r"bad step '0'"),
        ("0 0 30 2 *", r"it never fires"),
    ],
)
def test_an_invalid_cron_expression_is_refused_in_one_line(cron: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        Schedule(cron)
    assert "\n" not in str(caught.value)


def test_dates_in_the_wrong_order_are_refused() -> None:
    with pytest.raises(ValueError, match="'from' is after 'until'"):
        Schedule(None, date(2026, 12, 24), date(2026, 12, 1))


def test_a_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Schedule(OFFICE).is_open(datetime(2026, 12, 7, 9))
