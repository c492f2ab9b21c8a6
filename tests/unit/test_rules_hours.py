"""Calling hours in the callee's local time, rule packs, and durations.

Every instant is injected and every expectation an exact UTC datetime, with the local time it
stands for in a comment. Zone data is the real tz database.
"""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, date, datetime, time, timedelta
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import dispatch.rules
from dispatch.rules import parse_duration
from dispatch.rules.caps import Caps
from dispatch.rules.hours import (
    BUILTIN_PACKS,
    END_OF_DAY,
    CallingHours,
    HolidayCalendar,
    Window,
    custom_pack,
    load_pack,
    parse_days,
    wall_to_utc,
    windows_from_config,
    zones_for,
)

NEW_YORK = ZoneInfo("America/New_York")
CHICAGO = ZoneInfo("America/Chicago")
LOS_ANGELES = ZoneInfo("America/Los_Angeles")
BOISE = ZoneInfo("America/Boise")
PARIS = ZoneInfo("Europe/Paris")
TOKYO = ZoneInfo("Asia/Tokyo")
DAILY = frozenset(range(7))

IDAHO = "+12085550123"  # area code 208: Boise (Mountain) or the panhandle (Pacific)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def daily(start: time, end: time, **kwargs: Any) -> CallingHours:
    return CallingHours("test", "1", (Window(DAILY, start, end),), **kwargs)


US = load_pack("us")
FL = load_pack("us-fl")
FR = load_pack("fr")


# -- clock changes -------------------------------------------------------------------------


def test_us_window_opens_at_8_local_on_the_spring_forward_day() -> None:
    # 2026-03-08: New York goes from EST (-5) to EDT (-4) at 02:00.
    assert US.hours.next_open(utc(2026, 3, 7, 5), [NEW_YORK]) == utc(2026, 3, 7, 13)  # 08:00 EST
    assert US.hours.next_open(utc(2026, 3, 8, 5), [NEW_YORK]) == utc(2026, 3, 8, 12)  # 08:00 EDT
    assert US.hours.closes_at(utc(2026, 3, 8, 12), [NEW_YORK]) == utc(2026, 3, 9, 1)  # 21:00 EDT
    assert not US.hours.is_open(utc(2026, 3, 8, 11, 59, 59), NEW_YORK)
    assert US.hours.is_open(utc(2026, 3, 8, 12), NEW_YORK)


def test_us_window_opens_at_8_local_on_the_fall_back_day() -> None:
    # 2026-11-01: New York goes from EDT (-4) back to EST (-5) at 02:00.
    assert US.hours.next_open(utc(2026, 10, 31, 4), [NEW_YORK]) == utc(2026, 10, 31, 12)  # EDT
    assert US.hours.next_open(utc(2026, 11, 1, 4), [NEW_YORK]) == utc(2026, 11, 1, 13)  # EST
    assert US.hours.closes_at(utc(2026, 11, 1, 13), [NEW_YORK]) == utc(2026, 11, 2, 2)  # 21:00
    assert US.hours.is_open(utc(2026, 11, 2, 1, 59), NEW_YORK)
    assert not US.hours.is_open(utc(2026, 11, 2, 2), NEW_YORK)


def test_window_follows_the_eu_clock_changes_in_paris() -> None:
    hours = daily(time(8), time(21))
    # 2026-03-29: Paris goes from CET (+1) to CEST (+2) at 02:00.
    assert hours.next_open(utc(2026, 3, 28, 0), [PARIS]) == utc(2026, 3, 28, 7)  # 08:00 CET
    assert hours.next_open(utc(2026, 3, 29, 0), [PARIS]) == utc(2026, 3, 29, 6)  # 08:00 CEST
    assert hours.closes_at(utc(2026, 3, 29, 6), [PARIS]) == utc(2026, 3, 29, 19)  # 21:00 CEST
    # 2026-10-25: back to CET at 03:00.
    assert hours.next_open(utc(2026, 10, 24, 0), [PARIS]) == utc(2026, 10, 24, 6)  # CEST
    assert hours.next_open(utc(2026, 10, 25, 0), [PARIS]) == utc(2026, 10, 25, 7)  # CET
    assert hours.closes_at(utc(2026, 10, 25, 7), [PARIS]) == utc(2026, 10, 25, 20)  # 21:00 CET


def test_fr_weekday_windows_across_both_eu_clock_changes() -> None:
    # Friday before and Monday after each change (the weekend in between has no window).
    assert FR.hours.next_open(utc(2026, 3, 27, 0), [PARIS]) == utc(2026, 3, 27, 9)  # 10:00 CET
    assert FR.hours.next_open(utc(2026, 3, 28, 0), [PARIS]) == utc(2026, 3, 30, 8)  # CEST
    assert FR.hours.next_open(utc(2026, 10, 23, 0), [PARIS]) == utc(2026, 10, 23, 8)  # CEST
    assert FR.hours.next_open(utc(2026, 10, 24, 0), [PARIS]) == utc(2026, 10, 26, 9)  # CET


def test_a_window_starting_in_the_spring_forward_gap_opens_when_the_clocks_jump() -> None:
    hours = daily(time(2, 30), time(4))
    # 02:30 never happens in New York on 2026-03-08: the clocks jump from 02:00 EST to 03:00 EDT.
    assert hours.next_open(utc(2026, 3, 8, 5), [NEW_YORK]) == utc(2026, 3, 8, 7)  # 03:00 EDT
    assert hours.closes_at(utc(2026, 3, 8, 7), [NEW_YORK]) == utc(2026, 3, 8, 8)  # 04:00 EDT
    assert wall_to_utc(datetime(2026, 3, 8, 2, 30), NEW_YORK) == utc(2026, 3, 8, 7)
    # A window wholly inside the gap does not exist that day.
    gap = daily(time(2, 10), time(2, 50))
    assert gap.next_open(utc(2026, 3, 8, 5), [NEW_YORK]) == utc(2026, 3, 9, 6, 10)  # 02:10 EDT


def test_an_ambiguous_window_is_its_first_occurrence_and_does_not_reopen() -> None:
    hours = daily(time(1), time(1, 30))
    # 01:00-01:30 happens twice in New York on 2026-11-01: EDT first, then EST.
    assert hours.next_open(utc(2026, 11, 1, 4), [NEW_YORK]) == utc(2026, 11, 1, 5)  # 01:00 EDT
    assert hours.closes_at(utc(2026, 11, 1, 5), [NEW_YORK]) == utc(2026, 11, 1, 5, 30)
    assert not hours.is_open(utc(2026, 11, 1, 6, 15), NEW_YORK)  # 01:15 EST
    assert hours.next_open(utc(2026, 11, 1, 6, 15), [NEW_YORK]) == utc(2026, 11, 2, 6)  # EST
    assert wall_to_utc(datetime(2026, 11, 1, 1, 30), NEW_YORK) == utc(2026, 11, 1, 5, 30)


# -- several zones ---------------------------------------------------------------------------


def test_idaho_number_is_dialed_only_inside_the_window_in_both_its_zones() -> None:
    zones = zones_for(IDAHO)
    assert zones == (BOISE, LOS_ANGELES)
    monday_0830_boise = utc(2026, 1, 12, 15, 30)  # 08:30 MST, 07:30 PST
    assert US.hours.is_open(monday_0830_boise, BOISE)
    assert not US.hours.is_open(monday_0830_boise, LOS_ANGELES)
    assert US.hours.next_open(monday_0830_boise, zones) == utc(2026, 1, 12, 16)  # 08:00 PST
    # It closes at 21:00 in Boise (20:00 in Los Angeles), the first of the two to close.
    assert US.hours.closes_at(utc(2026, 1, 12, 16), zones) == utc(2026, 1, 13, 4)
    assert US.hours.next_open(utc(2026, 1, 13, 4), zones) == utc(2026, 1, 13, 16)


def test_next_open_returns_the_moment_itself_when_open_everywhere() -> None:
    at = utc(2026, 1, 12, 18, 0, 0, 123456)
    assert US.hours.next_open(at, zones_for(IDAHO)) == at


def test_unknown_us_zone_falls_back_to_hours_valid_from_honolulu_to_new_york() -> None:
    zones = US.zones_for("+80012345678")  # international freephone: no zone
    assert len(zones) == 7
    # Winter: 08:00 HST (-10) is 18:00 UTC, 21:00 EST (-5) is 02:00 UTC.
    assert US.hours.next_open(utc(2026, 1, 12, 3), zones) == utc(2026, 1, 12, 18)
    assert US.hours.closes_at(utc(2026, 1, 12, 18), zones) == utc(2026, 1, 13, 2)
    # Summer: New York is on EDT (-4), Honolulu has no DST.
    assert US.hours.closes_at(utc(2026, 7, 13, 18), zones) == utc(2026, 7, 14, 1)


def test_next_open_is_none_when_the_zones_windows_never_overlap() -> None:
    hours = daily(time(9), time(10))  # 09:00 in Paris is 16:00 or 17:00 in Tokyo
    assert hours.next_open(utc(2026, 3, 8, 5), [PARIS, TOKYO]) is None
    assert hours.next_open(utc(2026, 3, 8, 5), [PARIS]) == utc(2026, 3, 8, 8)


def test_next_open_is_none_when_no_day_has_a_window_within_the_horizon() -> None:
    every_day = frozenset(date(2026, 1, 1) + timedelta(days=i) for i in range(500))
    hours = daily(time(9), time(17), holiday_dates=every_day)
    assert hours.next_open(utc(2026, 1, 1), [PARIS]) is None


def test_an_empty_zone_list_is_refused_not_taken_as_open() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        US.hours.next_open(utc(2026, 1, 12, 18), [])


def test_a_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        US.hours.is_open(datetime(2026, 1, 12, 18), NEW_YORK)


def test_a_day_without_end_never_closes_within_the_horizon() -> None:
    hours = daily(time(0), END_OF_DAY)
    assert hours.closes_at(utc(2026, 1, 12, 18), [NEW_YORK]) is None
    assert hours.explain(utc(2026, 1, 12, 18), [NEW_YORK]) == "inside hours (test)"


# -- holidays and packs ------------------------------------------------------------------------


def test_fr_has_no_window_on_christmas_or_bastille_day() -> None:
    christmas = utc(2026, 12, 25, 10)  # a Friday, 11:00 CET
    assert not FR.hours.is_open(christmas, PARIS)
    assert FR.hours.next_open(christmas, [PARIS]) == utc(2026, 12, 28, 9)  # Mon 10:00 CET
    bastille = utc(2026, 7, 14, 9)  # a Tuesday, 11:00 CEST
    assert not FR.hours.is_open(bastille, PARIS)
    assert FR.hours.next_open(bastille, [PARIS]) == utc(2026, 7, 15, 8)  # Wed 10:00 CEST
    assert FR.hours.is_open(utc(2026, 7, 15, 9), PARIS)


def test_a_holiday_is_the_callees_local_date() -> None:
    # 2026-07-14 00:30 in Paris is still 2026-07-13 22:30 UTC: the holiday has begun there.
    hours = daily(time(0), END_OF_DAY, holidays=HolidayCalendar("FR"))
    assert not hours.is_open(utc(2026, 7, 13, 22, 30), PARIS)
    assert hours.is_open(utc(2026, 7, 13, 22, 30), ZoneInfo("UTC"))
    assert hours.next_open(utc(2026, 7, 13, 22, 30), [PARIS]) == utc(2026, 7, 14, 22)


def test_explicit_holiday_dates_close_the_day() -> None:
    hours = daily(time(9), time(17), holiday_dates=frozenset({date(2026, 12, 24)}))
    assert hours.next_open(utc(2026, 12, 24, 7), [PARIS]) == utc(2026, 12, 25, 8)
    assert hours.next_open(utc(2026, 12, 23, 7), [PARIS]) == utc(2026, 12, 23, 8)


def test_us_pack_calls_on_us_holidays_because_the_tcpa_has_no_holiday_rule() -> None:
    assert US.hours.holidays is None
    assert US.hours.next_open(utc(2026, 12, 25, 5), [NEW_YORK]) == utc(2026, 12, 25, 13)


def test_us_fl_window_is_8_to_20() -> None:
    zones = [NEW_YORK]
    assert FL.hours.next_open(utc(2026, 12, 7, 4), zones) == utc(2026, 12, 7, 13)  # 08:00 EST
    assert FL.hours.closes_at(utc(2026, 12, 7, 13), zones) == utc(2026, 12, 8, 1)  # 20:00 EST
    evening = utc(2026, 12, 8, 1, 30)  # 20:30 EST: federal hours, not Florida's
    assert US.hours.is_open(evening, NEW_YORK)
    assert not FL.hours.is_open(evening, NEW_YORK)
    assert FL.caps == Caps(per_24h=3)


def test_fr_has_two_windows_each_weekday_and_none_at_the_weekend() -> None:
    monday = [PARIS]
    assert FR.hours.next_open(utc(2026, 12, 7, 7), monday) == utc(2026, 12, 7, 9)  # 10:00 CET
    assert FR.hours.closes_at(utc(2026, 12, 7, 10), monday) == utc(2026, 12, 7, 12)  # 13:00
    assert FR.hours.next_open(utc(2026, 12, 7, 12, 30), monday) == utc(2026, 12, 7, 13)  # 14:00
    assert FR.hours.closes_at(utc(2026, 12, 7, 13), monday) == utc(2026, 12, 7, 19)  # 20:00
    saturday = utc(2026, 12, 12, 10)
    assert not FR.hours.is_open(saturday, PARIS)
    assert FR.hours.next_open(saturday, [PARIS]) == utc(2026, 12, 14, 9)  # Monday 10:00
    assert FR.caps == Caps(per_30d=4, cooldown_after_refusal=60 * 86_400.0)


def test_adjacent_windows_close_as_one() -> None:
    hours = CallingHours(
        "test",
        "1",
        (Window(DAILY, time(10), time(13)), Window(DAILY, time(13), time(20))),
    )
    assert hours.closes_at(utc(2026, 12, 7, 10), [PARIS]) == utc(2026, 12, 7, 19)


def test_builtin_packs_ship_as_package_data() -> None:
    packs = resources.files("dispatch.rules") / "packs"
    shipped = sorted(p.name.removesuffix(".toml") for p in packs.iterdir() if p.is_file())
    assert shipped == sorted(BUILTIN_PACKS)
    assert [load_pack(name).name for name in BUILTIN_PACKS] == list(BUILTIN_PACKS)
    assert US.version == "2026-12-01"


def test_a_pack_of_ones_own_is_loaded_from_a_path(tmp_path: Path) -> None:
    path = tmp_path / "de.toml"
    path.write_text(
        'name = "de"\nversion = 2026-12-01\nfallback_zones = ["Europe/Berlin"]\n'
        "[hours]\n"
        'windows = [{ days = "mon-fri", from = "09:00", to = "20:00" }]\n'
        'holidays = "DE-BY"\n'
        'holiday_dates = ["2026-12-24", 2026-12-31]\n'
        '[caps]\nper_24h = 2\nmin_gap = "2h"\n'
    )
    pack = load_pack(str(path))
    assert (pack.name, pack.version) == ("de", "2026-12-01")
    assert pack.caps == Caps(per_24h=2, min_gap=7200.0)
    assert pack.hours.holiday_dates == {date(2026, 12, 24), date(2026, 12, 31)}
    assert pack.hours.holiday(date(2026, 1, 6)) == "Epiphany"  # Bavaria's, not Berlin's
    assert pack.zones_for("+80012345678") == (ZoneInfo("Europe/Berlin"),)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('name = "x"\nversion = "1"\n', "'hours' is missing"),
        ('name = "x"\nversion = "1"\n[hours]\nwindow = []\n', "unknown key 'hours.window'"),
        ('name = "x"\nversion = "1"\nzones = []\n[hours]\n', "unknown key 'zones'"),
        (
            'name = "x"\nversion = "1"\n[hours]\n'
            'windows = [{ days = "mon", from = "9", to = "17:00" }]',
            r"hours.windows\[0\] .*'from' must be a time",
        ),
        (
            'name = "x"\nversion = "1"\n[hours]\nwindows = [{ from = "9:00", to = "17:00" }]\n'
            "[caps]\nper_week = 3\n",
            "unknown cap 'caps.per_week'",
        ),
        (
            'name = "x"\nversion = "1"\n[hours]\nwindows = [{ from = "9:00", to = "17:00" }]\n'
            '[caps]\ncooldown_after_refusal = "60 days"\n',
            r"'caps.cooldown_after_refusal': invalid duration '60 days'",
        ),
        (
            'name = "x"\nversion = "1"\n[hours]\nwindows = [{ from = "9:00", to = "17:00" }]\n'
            'holidays = { country = "XX" }\n',
            "holidays XX",
        ),
        ("name = ", "invalid TOML"),
    ],
)
def test_a_bad_pack_is_refused_naming_the_file_and_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"rule pack .*bad\.toml: .*{message}"):
        load_pack(path)


def test_an_unknown_pack_name_lists_the_builtin_ones() -> None:
    with pytest.raises(ValueError, match="unknown rule pack 'de': the built-in packs are fr, us"):
        load_pack("de")


def test_custom_pack_takes_inline_windows_holidays_and_a_fallback_zone() -> None:
    windows = windows_from_config([{"days": "mon-fri", "from": "09:00", "to": "18:00"}])
    pack = custom_pack(windows, holidays="FR", timezone="Europe/Paris")
    assert pack.zones_for("+80012345678") == (PARIS,)
    assert pack.hours.next_open(utc(2026, 12, 25, 0), [PARIS]) == utc(2026, 12, 28, 8)
    other = custom_pack(windows_from_config([{"from": "09:00", "to": "18:00"}]))
    assert pack.version != other.version  # the ledger tells the two apart


# -- windows from config -----------------------------------------------------------------------


def test_windows_from_config_reads_days_and_times() -> None:
    assert windows_from_config(
        [
            {"days": "mon-fri", "from": "10:00", "to": "13:00"},
            {"days": "sat", "from": "09:30:15", "to": "24:00"},
            {"from": time(8), "to": "00:00"},
        ]
    ) == (
        Window(frozenset(range(5)), time(10), time(13)),
        Window(frozenset({5}), time(9, 30, 15), END_OF_DAY),
        Window(DAILY, time(8), END_OF_DAY),
    )


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"days": "mon-fri", "from": "14:00", "to": "13:00"}, "ends .* before it starts"),
        ({"days": "someday", "from": "09:00", "to": "13:00"}, "cannot read 'someday'"),
        ({"days": "mon", "from": "24:00", "to": "13:00"}, "not a time of day"),
        ({"days": "mon", "from": "09:00", "to": "13:60"}, "not a time of day"),
        ({"days": "mon", "from": "09:00"}, "'to' is missing"),
        ({"days": "mon", "from": "09:00", "to": "13:00", "tz": "UTC"}, "unknown key 'tz'"),
    ],
)
def test_windows_from_config_names_the_bad_entry(entry: dict[str, str], message: str) -> None:
    good = {"days": "daily", "from": "09:00", "to": "10:00"}
    with pytest.raises(ValueError, match=rf"^windows\[1\] \{{.*\}}: .*{message}"):
        windows_from_config([good, entry])


def test_parse_days_reads_ranges_lists_and_wrapping() -> None:
    assert parse_days("mon-fri") == {0, 1, 2, 3, 4}
    assert parse_days("sat") == {5}
    assert parse_days("mon,wed,fri") == {0, 2, 4}
    assert parse_days("Mon-Wed, fri") == {0, 1, 2, 4}
    assert parse_days("fri-mon") == {4, 5, 6, 0}
    assert parse_days("daily") == parse_days("*") == DAILY
    assert parse_days(["sat", "sun"]) == {5, 6}


def test_a_window_spanning_midnight_is_refused() -> None:
    with pytest.raises(ValueError, match="split it in two"):
        Window(DAILY, time(22), time(2))


# -- zones of a number ---------------------------------------------------------------------------


def test_zones_for_prefers_the_records_own_timezone() -> None:
    assert zones_for(IDAHO, "America/Chicago") == (CHICAGO,)
    assert zones_for("+33612345678") == (PARIS,)
    assert zones_for(IDAHO, " ") == (BOISE, LOS_ANGELES)


def test_zones_for_an_unknown_number_is_empty_for_the_caller_to_decide() -> None:
    assert zones_for("+80012345678") == ()
    assert FR.zones_for("+80012345678") == (PARIS,)


def test_zones_for_an_invalid_timezone_raises_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown time zone 'America/Nowhere': give an IANA name"):
        zones_for(IDAHO, "America/Nowhere")
    with pytest.raises(ValueError, match="unknown time zone '/etc/passwd'"):
        zones_for(IDAHO, "/etc/passwd")


# -- explanations --------------------------------------------------------------------------------


def test_explain_names_the_zone_that_opens_last_in_its_local_time() -> None:
    chicago_0700 = utc(2026, 1, 12, 13)  # 08:00 in New York, 07:00 in Chicago
    assert (
        US.hours.explain(chicago_0700, [NEW_YORK, CHICAGO])
        == "outside hours until 08:00 America/Chicago (us)"
    )
    assert (
        US.hours.explain(utc(2026, 1, 12, 15, 30), zones_for(IDAHO))
        == "outside hours until 08:00 America/Los_Angeles (us)"
    )


def test_explain_inside_hours_names_the_zone_that_closes_first() -> None:
    assert (
        US.hours.explain(utc(2026, 1, 12, 16, 30), zones_for(IDAHO))
        == "inside hours until 21:00 America/Boise (us)"
    )


def test_explain_gives_the_date_when_it_opens_another_day_and_the_holiday() -> None:
    assert (
        FR.hours.explain(utc(2026, 12, 25, 9), [PARIS])
        == "outside hours until Mon 2026-12-28 10:00 Europe/Paris (fr; Christmas Day)"
    )
    assert (
        FR.hours.explain(utc(2026, 12, 12, 9), [PARIS])
        == "outside hours until Mon 2026-12-14 10:00 Europe/Paris (fr)"
    )


def test_explain_says_when_there_is_no_common_window_or_no_zone() -> None:
    hours = daily(time(9), time(10))
    assert hours.explain(utc(2026, 3, 8, 5), [PARIS, TOKYO]) == (
        "outside hours (test): no time within 400 days is inside the window in every zone "
        "(Europe/Paris, Asia/Tokyo)"
    )
    assert hours.explain(utc(2026, 3, 8, 5), []) == "time zone unknown (test)"


# -- durations and imports -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30s", 30.0),
        ("10m", 600.0),
        ("2h", 7200.0),
        ("60d", 5_184_000.0),
        ("1w", 604_800.0),
        ("1.5h", 5400.0),
        (" 90 ", 90.0),
        (90, 90.0),
        (2.5, 2.5),
        (0, 0.0),
    ],
)
def test_parse_duration_reads_units_and_plain_seconds(value: str | float, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "10 minutes", "1h30m", "5M", "-5s", -1, True, float("inf")])
def test_parse_duration_refuses_naming_the_value(value: str | float) -> None:
    with pytest.raises(ValueError, match=re.escape(f"invalid duration {value!r}")):
        parse_duration(value)


def test_every_name_of_dispatch_rules_resolves() -> None:
    for name in dispatch.rules.__all__:
        assert getattr(dispatch.rules, name) is not None


def test_rules_load_without_importing_holidays_phonenumbers_or_apscheduler() -> None:
    code = (
        "import sys\n"
        "from dispatch.rules import load_pack, Schedule\n"
        "load_pack('us'); load_pack('us-fl')\n"
        "heavy = {'holidays', 'phonenumbers', 'apscheduler'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
