"""The record: one person to call, as a strategy yields it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import phonenumbers
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import InvalidPhone

__all__ = ["Record", "normalize_phone"]

_E = phonenumbers.NumberParseException
_PARSE_ERRORS = {
    _E.INVALID_COUNTRY_CODE: "no country code (start with + or configure default_region)",
    _E.NOT_A_NUMBER: "not a phone number",
    _E.TOO_SHORT_AFTER_IDD: "too short",
    _E.TOO_SHORT_NSN: "too short",
    _E.TOO_LONG: "too long",
}


class Record(BaseModel):
    """One person to call. Frozen; identity is ``(strategy name, id)``.

    ``phone`` is kept as the source gave it; the hub normalises it to E.164 once, at intake, and
    skips the record with reason ``invalid_phone`` when it cannot. The records handed to
    callbacks after intake carry the normalised phone.
    """

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="forbid")

    id: str = Field(min_length=1, description="Unique within its strategy.")
    phone: str = Field(description="Destination; E.164 after intake.")
    greeting: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    prompt_vars: dict[str, Any] = Field(default_factory=dict)
    from_: str | None = Field(default=None, alias="from", description="Caller id override.")
    config: dict[str, Any] = Field(default_factory=dict, description="Per-call agent override.")
    not_before: datetime | None = None
    not_after: datetime | None = None
    timezone: str | None = None
    priority: int = 0

    @field_validator("not_before", "not_after")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        # A naive time is taken as UTC so comparisons never mix naive and aware values.
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def normalize_phone(raw: str, region: str | None = None) -> str:
    """Return ``raw`` as an E.164 string, or raise :class:`InvalidPhone` saying why.

    ``region`` (ISO 3166 alpha-2, e.g. ``"US"``) is used for numbers written without ``+``.
    A parse costs 12-15 us, so the hub calls this once per new record, never once per poll.
    """
    text = raw.strip()
    if not text:
        raise InvalidPhone(text, "empty")
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        reason = _PARSE_ERRORS.get(exc.error_type, "unparseable")
        raise InvalidPhone(text, reason) from exc
    if not phonenumbers.is_valid_number(number):
        raise InvalidPhone(text, "not a valid number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
