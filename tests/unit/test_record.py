from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

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


def test_record_is_frozen_and_round_trips_through_json() -> None:
    record = Record(
        id="r1",
        phone="+14155552671",
        from_="+14155550100",
        metadata={"plan": "pro"},
        not_before=datetime(2026, 1, 1, 12, tzinfo=UTC),
    )
    with pytest.raises(AttributeError):
        record.id = "other"  # type: ignore[misc]
    assert Record.from_json(json.loads(json.dumps(record.to_json()))) == record
    assert record.replace(phone="+14155552672").phone == "+14155552672"


def test_records_stored_by_earlier_versions_still_load() -> None:
    stored = {"id": "r1", "phone": "+14155552671", "from": "+1415", "not_after": None}
    assert Record.from_json(stored).from_ == "+1415"


def test_naive_schedule_times_are_taken_as_utc() -> None:
    record = Record(id="r1", phone="+14155552671", not_after=datetime(2026, 1, 1, 12))
    assert record.not_after == datetime(2026, 1, 1, 12, tzinfo=UTC)


def test_record_requires_an_id() -> None:
    with pytest.raises(ValueError, match="id"):
        Record(id="", phone="+14155552671")


def test_a_deferred_record_builds_its_other_fields_once_on_first_use() -> None:
    calls: list[int] = []

    def fill() -> dict[str, object]:
        calls.append(1)
        return {"greeting": "Hi Ada", "metadata": {"plan": "pro"}}

    record = Record.deferred(id="r1", phone="+1 415 555 2671", fill=fill)
    normalised = record.replace(phone="+14155552671")  # what the hub's intake does
    assert (normalised.id, normalised.phone, record.not_after, calls) == (
        "r1",
        "+14155552671",
        None,
        [],
    )
    assert normalised.greeting == "Hi Ada"
    assert normalised.metadata == {"plan": "pro"}
    assert calls == [1]
    assert normalised == Record(
        id="r1", phone="+14155552671", greeting="Hi Ada", metadata={"plan": "pro"}
    )
    assert repr(normalised).startswith("Record(id='r1', phone='+14155552671', greeting='Hi Ada'")
    assert Record.from_json(normalised.to_json()) == normalised
    assert normalised.replace(greeting="Yo").greeting == "Yo"
    with pytest.raises(AttributeError):
        normalised.greeting = "other"  # type: ignore[misc]
    with pytest.raises(ValueError, match="id"):
        Record.deferred(id="", phone="+1", fill=fill)
