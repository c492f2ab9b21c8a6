from __future__ import annotations

import json
import random
from datetime import UTC, datetime

import phonenumbers
import pytest

from dispatch import InvalidPhone, Record, normalize_phone
from dispatch.record import _already_e164


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


def _parsed(text: str) -> str | None:
    """What the full parse makes of ``text``: its E.164 form, or None if invalid."""
    try:
        number = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _e164_samples() -> list[str]:
    """Every region's example numbers of every type in E.164, the same with a national
    prefix or a 0 after the country code, and random digits behind every country code."""
    samples: list[str] = []
    for region in phonenumbers.SUPPORTED_REGIONS:
        code = phonenumbers.country_code_for_region(region)
        for kind in range(12):
            example = phonenumbers.example_number_for_type(region, kind)
            if example is None:
                continue
            national = str(example.national_number)
            samples += [f"+{code}{national}", f"+{code}0{national}", f"+{code}1{national}"]
            samples += [f"+{code}8{national}", f"+{code}{national[:-1]}"]
    generator = random.Random(17)
    for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
        for _ in range(20):
            length = generator.randint(6, 14 - len(str(code)))
            samples.append(f"+{code}{generator.randrange(10**length):0{length}d}")
    return samples


def test_the_e164_fast_path_reads_every_number_as_the_full_parse_does() -> None:
    samples = _e164_samples()
    fast = valid = 0
    for text in samples:
        quick = _already_e164(text)
        if quick is not None:
            fast += 1
            assert quick == _parsed(text), text
        expected = _parsed(text)
        if expected is None:
            with pytest.raises(InvalidPhone):
                normalize_phone(text)
        else:
            valid += 1
            assert normalize_phone(text) == expected, text
    assert fast > valid * 0.6  # and most valid E.164 input takes it


def test_records_without_their_own_dicts_share_one_that_cannot_be_changed() -> None:
    a, b = Record(id="a", phone="+14155550100"), Record(id="b", phone="+14155550101")
    assert a.metadata is b.metadata is a.prompt_vars is a.config
    assert a.metadata == {}
    assert json.dumps(a.to_json()["metadata"]) == "{}"
    with pytest.raises(TypeError, match="replace"):
        a.metadata["x"] = 1
    with pytest.raises(TypeError):
        a.config.update(voice="x")
    assert b.metadata == {}  # no other record sees a change
    own = a.replace(metadata={"x": 1})
    assert own.metadata == {"x": 1}
    assert a.metadata == {}
