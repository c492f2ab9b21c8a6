"""The record: one person to call, as a strategy yields it."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

import phonenumbers

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


class _EmptyDict(dict[str, Any]):
    """The one empty ``metadata`` / ``prompt_vars`` / ``config`` every record without its own
    shares (three empty dicts were 190 of a queued record's bytes). A dict, for whatever
    reads or serialises it; changing it in place raises, as changing a frozen record's
    fields should: ``record.replace(metadata={...})`` makes a record with its own."""

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("a record's empty fields are shared: use record.replace(...)")

    __setitem__ = __delitem__ = update = setdefault = pop = popitem = clear = _refuse
    __ior__ = _refuse


_EMPTY: dict[str, Any] = _EmptyDict()


@dataclass(frozen=True, slots=True, init=False, eq=False)
class Record:
    """One person to call. Frozen; identity is ``(strategy name, id)``.

    ``phone`` is kept as the source gave it; the hub normalises it to E.164 once, at intake, and
    skips the record with reason ``invalid_phone`` when it cannot. The records handed to
    callbacks after intake carry the normalised phone.

    A slotted frozen dataclass whose constructor is written out: a campaign builds and holds a
    record per person (a million for a big CSV), so it is kept small (about half a kilobyte)
    and quick to build (about 1 us, where the generated frozen ``__init__`` takes twice that).
    A field left empty holds one shared, read-only empty dict.
    """

    id: str  # unique within its strategy
    phone: str  # destination; E.164 after intake
    greeting: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    prompt_vars: dict[str, Any] = field(default_factory=dict)
    from_: str | None = None  # caller id override
    config: dict[str, Any] = field(default_factory=dict)  # per-call agent override
    not_before: datetime | None = None
    not_after: datetime | None = None
    timezone: str | None = None
    priority: int = 0

    def __init__(
        self,
        *,
        id: str,
        phone: str,
        greeting: str | None = None,
        metadata: dict[str, Any] | None = None,
        prompt_vars: dict[str, Any] | None = None,
        from_: str | None = None,
        config: dict[str, Any] | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        timezone: str | None = None,
        priority: int = 0,
    ) -> None:
        if type(id) is not str or not id:
            raise ValueError(f"record id must be a non-empty string, not {id!r}")
        if type(phone) is not str:
            raise TypeError(f"record {id}: phone must be a string, not {phone!r}")
        if not_before is not None:
            not_before = _aware(id, "not_before", not_before)
        if not_after is not None:
            not_after = _aware(id, "not_after", not_after)
        # Slot setters called directly: a frozen dataclass forbids plain assignment.
        _SET["id"](self, id)
        _SET["phone"](self, phone)
        _SET["greeting"](self, greeting)
        _SET["metadata"](self, _EMPTY if metadata is None else metadata)
        _SET["prompt_vars"](self, _EMPTY if prompt_vars is None else prompt_vars)
        _SET["from_"](self, from_)
        _SET["config"](self, _EMPTY if config is None else config)
        _SET["not_before"](self, not_before)
        _SET["not_after"](self, not_after)
        _SET["timezone"](self, timezone)
        _SET["priority"](self, priority)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in _FIELDS)

    __hash__ = None  # type: ignore[assignment]  # dict fields: records are not hashable

    def replace(self, **changes: Any) -> Record:
        """A copy with ``changes`` applied (and checked)."""
        return replace(self, **changes)

    @classmethod
    def deferred(cls, *, id: str, phone: str, fill: Callable[[], dict[str, Any]]) -> Record:
        """A record whose other fields (``greeting``, ``metadata``, ``prompt_vars``,
        ``from_``, ``timezone``) are built by ``fill()`` on first use.

        For sources that produce many records at once (a large CSV): the hub needs only the id
        and the phone until it dials, so most of the work moves to dial time, which is paced.
        ``fill`` must not fail: check what can fail before deferring it. The record behaves
        like any other (equality, ``repr``, ``to_json`` fill it in as needed).
        """
        record = object.__new__(_Deferred)
        if type(id) is not str or not id:
            raise ValueError(f"record id must be a non-empty string, not {id!r}")
        if type(phone) is not str:
            raise TypeError(f"record {id}: phone must be a string, not {phone!r}")
        _SET_ID(record, id)
        _SET_PHONE(record, phone)
        _FILL(record, fill)
        return record

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (times as ISO 8601), read back by :meth:`from_json`."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("not_before", "not_after"):
            if data[name] is not None:
                data[name] = data[name].isoformat()
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Record:
        values = dict(data)
        if "from" in values:  # written by versions that used the alias
            values["from_"] = values.pop("from")
        for name in ("not_before", "not_after"):
            if isinstance(values.get(name), str):
                values[name] = datetime.fromisoformat(values[name])
        return cls(**values)


_SET: dict[str, Callable[[Record, Any], None]] = {
    f.name: Record.__dict__[f.name].__set__ for f in fields(Record)
}
_FIELDS = tuple(f.name for f in fields(Record))
_DEFERRED = ("greeting", "metadata", "prompt_vars", "from_", "timezone")


class _Deferred(Record):
    """A :meth:`Record.deferred` record: the deferred fields are filled on first access."""

    __slots__ = ("_fill",)

    def _filled(self) -> None:
        fill = _GET_FILL(self)
        if fill is None:
            return
        values = fill()
        for name in _DEFERRED:
            empty: dict[str, Any] | None = _EMPTY if name in ("metadata", "prompt_vars") else None
            _SET[name](self, values.get(name, empty))
        _FILL(self, None)

    def __repr__(self) -> str:
        return "Record" + Record.__repr__(self).removeprefix(type(self).__qualname__)

    def replace(self, **changes: Any) -> Record:
        fill = _GET_FILL(self)
        if fill is not None and set(changes) <= {"phone"}:
            # The hub's intake sets the normalised phone: keep the rest deferred.
            return Record.deferred(id=self.id, phone=changes.get("phone", self.phone), fill=fill)
        return Record(**({name: getattr(self, name) for name in _FIELDS} | changes))


def _deferred_field(name: str) -> property:
    slot = Record.__dict__[name]

    def get(self: _Deferred) -> Any:
        try:
            return slot.__get__(self, Record)
        except AttributeError:  # not filled yet
            self._filled()
            return slot.__get__(self, Record)

    return property(get)


for _name in _DEFERRED:
    setattr(_Deferred, _name, _deferred_field(_name))
# A deferred record keeps the defaults of the fields it cannot have: nothing to store.
_Deferred.config = property(lambda self: _EMPTY)  # type: ignore[assignment]
_Deferred.not_before = _Deferred.not_after = property(lambda self: None)  # type: ignore[assignment]
_Deferred.priority = property(lambda self: 0)  # type: ignore[assignment]
_SET_ID = _SET["id"]
_SET_PHONE = _SET["phone"]
_FILL = _Deferred.__dict__["_fill"].__set__
_GET_FILL = _Deferred.__dict__["_fill"].__get__


def _aware(record_id: str, name: str, value: datetime) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"record {record_id}: {name} must be a datetime, not {value!r}")
    # A naive time is taken as UTC so comparisons never mix naive and aware values.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def normalize_phone(raw: str, region: str | None = None) -> str:
    """Return ``raw`` as an E.164 string, or raise :class:`InvalidPhone` saying why.

    ``region`` (ISO 3166 alpha-2, e.g. ``"US"``) is used for numbers written without ``+``.
    A parse costs 12-15 us, so the hub calls this once per new record, never once per poll.
    """
    text = raw.strip()
    if not text:
        raise InvalidPhone(text, "empty")
    if text.startswith("+") and (fast := _already_e164(text)) is not None:
        return fast
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        reason = _PARSE_ERRORS.get(exc.error_type, "unparseable")
        raise InvalidPhone(text, reason) from exc
    if not phonenumbers.is_valid_number(number):
        raise InvalidPhone(text, "not a valid number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


_E164 = re.compile(r"\+([1-9][0-9]{6,14})")


def _already_e164(text: str) -> str | None:
    """``text`` if it is a valid number already written in E.164 that ``phonenumbers.parse``
    would read as it is; None when unsure (the full parse decides). Half the cost of a parse,
    which most campaign files (and every CRM export) make necessary for every row.

    Unsure means: not ``+`` and digits only, no known country code, or a national number that
    starts with ``0``. (E.164 says what the digits are; tests compare this with the full parse
    over every region's example numbers, with and without a national prefix, and random ones.)"""
    match = _E164.fullmatch(text)
    if match is None:
        return None
    digits = match.group(1)
    for size in (1, 2, 3):  # country codes are prefix-free, as the parser reads them
        code = int(digits[:size])
        if code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            break
    else:
        return None
    national = digits[size:]
    if national.startswith("0"):  # a leading zero the parser keeps, or reads, its own way
        return None
    number = phonenumbers.PhoneNumber(country_code=code, national_number=int(national))
    first = _main_region(code)
    if first is not None and phonenumbers.is_valid_number_for_region(number, first):
        # What is_valid_number would find first, at half its cost: it tries the code's regions
        # in order and takes the first whose types the number matches (its main region has no
        # leading digits to decide by), then checks the number against that region again.
        return text
    return text if phonenumbers.is_valid_number(number) else None


@functools.cache
def _main_region(code: int) -> str | None:
    """The first region of a country code shared by several (US for +1), when the parser
    picks it by the number's type alone (no leading digits); None otherwise."""
    regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(code, ())
    if len(regions) < 2:
        return None
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(regions[0], None)
    return regions[0] if metadata is not None and metadata.leading_digits is None else None
