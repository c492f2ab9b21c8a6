from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from dispatch import InvalidPhone, Record, normalize_phone


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("+14155552671", None, "+14155552671"),
        (" +1 (415) 555-2671 ", None, "+14155552671"),
        ("(415) 555-2671", "US", "+14155552671"),
        ("020 7183 8750", "GB", "+442071838750"),
        ("+44 20 7183 8750", "US", "+442071838750"),
    ],
)
def test_numbers_are_normalised_to_e164(raw: str, region: str | None, expected: str) -> None:
    assert normalize_phone(raw, region) == expected


@pytest.mark.parametrize(
    ("raw", "region", "reason"),
    [
        ("", "US", "empty"),
        ("not-a-number", "US", "not a phone number"),
        ("(415) 555-2671", None, "no country code"),
        ("+1 415 555", None, "not a valid number"),
    ],
)
def test_invalid_numbers_say_why(raw: str, region: str | None, reason: str) -> None:
    with pytest.raises(InvalidPhone) as info:
        normalize_phone(raw, region)
    assert reason in info.value.reason.lower()


def test_record_is_frozen_and_accepts_from_alias() -> None:
    record = Record(id="r1", phone="+14155552671", **{"from": "+14155550100"})
    assert record.from_ == "+14155550100"
    with pytest.raises(ValidationError):
        record.id = "other"  # type: ignore[misc]


def test_naive_schedule_times_are_taken_as_utc() -> None:
    record = Record(id="r1", phone="+14155552671", not_after=datetime(2026, 1, 1, 12))
    assert record.not_after == datetime(2026, 1, 1, 12, tzinfo=UTC)


def test_record_requires_an_id() -> None:
    with pytest.raises(ValidationError, match="id"):
        Record(id="", phone="+14155552671")
