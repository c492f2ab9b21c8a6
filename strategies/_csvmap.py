"""Rows to records through templates, compiled once per header.

A template like ``"Hi {first_name}"`` becomes ``"Hi {0[3]}".format(cells)`` for the header it
is bound to, and a bare ``"{phone}"`` becomes ``cells[1]``: no dict per row, no name lookups.
A million rows spend their time building records, not interpreting templates.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from operator import itemgetter
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dispatch.record import Record

from ._csvfile import header_key

__all__ = ["Bound", "RowError", "Templates", "check_template", "skip_values"]

_FORMATTER = string.Formatter()
_ANY = "*"

Render = Callable[[list[str]], str]


class RowError(ValueError):
    """A row cannot become a record; the message says why."""


def check_template(text: str) -> list[tuple[str, str | None, str | None, str | None]]:
    """Parse ``text`` or raise ValueError saying what is wrong with it."""
    try:
        parts = list(_FORMATTER.parse(text))
    except ValueError as exc:
        raise ValueError(f"bad template {text!r}: {exc}") from exc
    for _, name, spec, _ in parts:
        if name is not None and (not name or "{" in (spec or "")):
            raise ValueError(f"bad template {text!r}: use named columns, like {{phone}}")
    return parts


def _bind(text: str, index: Mapping[str, int]) -> Render:
    parts = check_template(text)
    names = [name for _, name, _, _ in parts if name is not None]
    missing = [n for n in names if n not in index]
    if missing:
        message = f"no column {missing[0]!r} for template {text!r}"

        def fail(cells: list[str]) -> str:
            raise RowError(message)

        return fail
    if len(parts) == 1 and not parts[0][0] and names and not parts[0][2] and not parts[0][3]:
        return itemgetter(index[names[0]])  # a bare {column}: the (stripped) cell itself
    pieces = []
    for literal, name, spec, conversion in parts:
        pieces.append(literal.replace("{", "{{").replace("}", "}}"))
        if name is not None:
            field = f"0[{index[name]}]"
            field += f"!{conversion}" if conversion else ""
            field += f":{spec}" if spec else ""
            pieces.append("{" + field + "}")
    fmt = "".join(pieces)

    def render(cells: list[str]) -> str:
        return fmt.format(cells).strip()

    return render


@dataclass(frozen=True, slots=True)
class Templates:
    """The configured templates; :meth:`bind` compiles them for one header."""

    id: str | None
    phone: str
    greeting: str | None
    metadata: Mapping[str, str] | None
    prompt_vars: Mapping[str, str]
    from_: str | None
    timezone: str | None
    skip_if: Mapping[str, frozenset[str]]
    not_before: str | None = None  # a date and time: see parse_time
    not_after: str | None = None
    config: Mapping[str, str] | None = None  # per-call agent options (detect_turn_end ...)
    naive_utc: bool = False  # a time without an offset, in a row without a zone, is UTC

    @classmethod
    def of(
        cls,
        *,
        id: str | None,
        phone: str,
        greeting: str | None,
        metadata: Mapping[str, str] | None,
        prompt_vars: Mapping[str, str] | None,
        from_: str | None,
        timezone: str | None,
        skip_if: Mapping[str, Iterable[str]] | None = None,
        not_before: str | None = None,
        not_after: str | None = None,
        config: Mapping[str, str] | None = None,
        naive_utc: bool = False,
    ) -> Templates:
        """The templates as a strategy's keyword arguments give them, checked."""
        templates = cls(
            id=id,
            phone=phone,
            greeting=greeting,
            metadata=dict(metadata) if metadata is not None else None,
            prompt_vars=dict(prompt_vars or {}),
            from_=from_,
            timezone=timezone,
            skip_if=skip_values(skip_if),
            not_before=not_before,
            not_after=not_after,
            config=dict(config) if config else None,
            naive_utc=naive_utc,
        )
        templates.check()
        return templates

    def texts(self) -> list[str]:
        """Every template given (not the defaults a header decides)."""
        optional = [
            self.id,
            self.greeting,
            self.from_,
            self.timezone,
            self.not_before,
            self.not_after,
        ]
        return [
            self.phone,
            *filter(None, optional),
            *(self.metadata or {}).values(),
            *self.prompt_vars.values(),
            *(self.config or {}).values(),
        ]

    def check(self) -> None:
        for text in self.texts():
            check_template(text)

    def bind(self, header: list[str]) -> Bound:
        return Bound(self, header)


class Bound:
    """The templates compiled for ``header``; every method takes the row's stripped cells,
    padded to the header's width."""

    def __init__(self, templates: Templates, header: list[str]) -> None:
        self.header = header
        index = {key: i for i, key in enumerate(header) if key}
        self.phone = _bind(templates.phone, index)
        self.id_text = templates.id or ("{id}" if "id" in index else templates.phone)
        self.id = _bind(self.id_text, index)
        self.greeting = _optional(templates.greeting, index)
        self.from_ = _optional(templates.from_, index)
        self.timezone = _optional(templates.timezone, index)
        self.metadata: Callable[[list[str]], dict[str, Any]] = (
            _mapping(templates.metadata, index)
            if templates.metadata is not None
            else lambda cells: dict(zip(header, cells, strict=False))  # the whole row
        )
        self.prompt_vars = _mapping(templates.prompt_vars, index) if templates.prompt_vars else None
        self.config = _mapping(templates.config, index) if templates.config else None
        self.not_before = _optional(templates.not_before, index)
        self.not_after = _optional(templates.not_after, index)
        self.naive_utc = templates.naive_utc
        self.skip_if = [
            (index[column], values)
            for column, values in templates.skip_if.items()
            if column in index
        ]
        self.phone_index = index.get("phone")
        # Deferring is safe when rendering the other fields cannot fail: every column exists
        # and no format spec or conversion could reject a cell's text. (A row whose time is
        # not one is malformed at once; a deferred record has no config.)
        deferred = [templates.greeting, templates.from_, templates.timezone]
        deferred += [*(templates.metadata or {}).values(), *templates.prompt_vars.values()]
        self.deferrable = all(_safe(t, index) for t in deferred if t is not None) and not (
            templates.not_before or templates.not_after or templates.config
        )
        # The hot path of a large read: id and phone are bare columns, nothing to skip.
        self.id_column = _bare(self.id_text, index)
        self.phone_column = _bare(templates.phone, index)
        self.direct = (
            self.deferrable
            and not self.skip_if
            and self.id_column is not None
            and self.phone_column is not None
        )

    def skipped(self, cells: list[str]) -> bool:
        for i, values in self.skip_if:
            value = cells[i].casefold()
            if value in values or (value and _ANY in values):
                return True
        return False

    def row_id(self, cells: list[str]) -> str:
        record_id = self.id(cells)
        if not record_id:
            raise RowError(f"empty id (template {self.id_text!r})")
        return record_id

    def record(self, cells: list[str]) -> Record:
        if self.deferrable:
            # Only the id and the phone are needed before dialing; the rest cannot fail
            # (checked per header), so it is rendered when the hub first looks at it.
            return Record.deferred(
                id=self.row_id(cells), phone=self.phone(cells), fill=partial(self._rest, cells)
            )
        return self._eager(cells)

    def rest_of_raw(self, fields: list[str]) -> dict[str, Any]:
        """:meth:`_rest` from a row's fields as parsed (stripped and padded here)."""
        cells = list(map(str.strip, fields))
        if len(cells) < len(self.header):
            cells.extend([""] * (len(self.header) - len(cells)))
        return self._rest(cells)

    def _rest(self, cells: list[str]) -> dict[str, Any]:
        zone = self.timezone(cells) or None if self.timezone else None
        rest: dict[str, Any] = {
            "greeting": self.greeting(cells) or None if self.greeting else None,
            "metadata": self.metadata(cells),
            "from_": self.from_(cells) or None if self.from_ else None,
            "timezone": zone,
        }
        if self.prompt_vars is not None:  # else the shared empty dict
            rest["prompt_vars"] = self.prompt_vars(cells)
        if self.config is not None:
            rest["config"] = {k: v for k, v in self.config(cells).items() if v != ""}
        if self.not_before is not None:
            rest["not_before"] = self._time("not_before", self.not_before(cells), zone)
        if self.not_after is not None:
            rest["not_after"] = self._time("not_after", self.not_after(cells), zone)
        return rest

    def _eager(self, cells: list[str]) -> Record:
        return Record(id=self.row_id(cells), phone=self.phone(cells), **self._rest(cells))

    def _time(self, name: str, text: str, zone: str | None) -> datetime | None:
        return parse_time(text, zone, "UTC" if self.naive_utc else None, name)


def parse_time(text: str, zone: str | None, default_zone: str | None, name: str) -> datetime | None:
    """A row's ``not_before`` / ``not_after``: ISO 8601 (``2026-12-10 09:30``,
    ``2026-12-10T09:30:00-05:00``, ``2026-12-10``), None when empty. A time without an offset
    is in the row's time zone, else in ``default_zone``; RowError when it has neither (a time
    read in the wrong zone would call hours late, or expire a record hours early)."""
    if not text:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise RowError(
            f"{name} {text!r} is not a date and time (write it as 2026-12-10 09:30, with a "
            "UTC offset or a timezone template)"
        ) from None
    if at.tzinfo is not None:
        return at
    where = zone or default_zone
    if where is None:
        raise RowError(
            f"{name} {text!r} has no UTC offset and the row no timezone: write it with one "
            "(2026-12-10T09:30-05:00) or give the strategy a timezone template"
        )
    try:
        return at.replace(tzinfo=ZoneInfo(where))
    except (ZoneInfoNotFoundError, ValueError):
        raise RowError(f"{name}: unknown time zone {where!r}") from None


def _mapping(
    templates: Mapping[str, str], index: Mapping[str, int]
) -> Callable[[list[str]], dict[str, Any]]:
    """Render a dict of templates; all bare columns (the usual case) in one C-level pass."""
    keys = list(templates)
    renders = [_bind(text, index) for text in templates.values()]
    if len(renders) > 1 and all(isinstance(r, itemgetter) for r in renders):
        picks = itemgetter(*(index[check_template(t)[0][1] or ""] for t in templates.values()))
        return lambda cells: dict(zip(keys, picks(cells), strict=True))
    return lambda cells: {key: render(cells) for key, render in zip(keys, renders, strict=True)}


def _bare(text: str, index: Mapping[str, int]) -> int | None:
    """The column index if ``text`` is just ``{column}``, else None."""
    parts = check_template(text)
    if len(parts) == 1 and not parts[0][0] and not parts[0][2] and not parts[0][3]:
        return index.get(parts[0][1] or "")
    return None


def _safe(text: str, index: Mapping[str, int]) -> bool:
    parts = check_template(text)
    return all(
        name is None or (name in index and not spec and not conversion)
        for _, name, spec, conversion in parts
    )


def _optional(text: str | None, index: Mapping[str, int]) -> Render | None:
    return _bind(text, index) if text is not None else None


def skip_values(skip_if: Mapping[str, Iterable[str]] | None) -> dict[str, frozenset[str]]:
    """``skip_if`` as the strategy holds it: normalised column keys -> casefolded values."""
    return {
        header_key(column): frozenset(v.strip().casefold() for v in values)
        for column, values in (skip_if or {}).items()
    }
