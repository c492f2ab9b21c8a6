"""JSON items to records, through the same templates as CSV and SQL rows.

A template names an item's fields by path: ``{first_name}``, ``{contact.first_name}``,
``{phones[0]}``. The fields a strategy's templates name are fixed, so the templates are bound
once (:class:`~strategies._csvmap.Bound`) to the list of those paths, as if it were a CSV
header; each item is resolved to one cell per path and goes through the compiled templates
like a row. A field that is null renders empty; a field the item lacks makes that item
malformed, naming the field (a typo in a template shows on the first poll, not as silently
empty greetings).
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Final
from urllib.parse import quote

from dispatch.record import Record

from ._csvmap import Bound, RowError, Templates, check_template

__all__ = [
    "MISSING",
    "ItemMapper",
    "PathTemplate",
    "canonical",
    "cell",
    "get_path",
    "parse_path",
]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()
"""What :func:`get_path` returns for a field the value does not have (null is None)."""

Path = tuple[str | int, ...]
_SEGMENT = re.compile(r"([^\[\]]*)((?:\[-?\d+\])*)")
_INDEX = re.compile(r"\[(-?\d+)\]")


def parse_path(path: str) -> Path:
    """``"payload.leads"`` -> ``("payload", "leads")``, ``"phones[0]"`` -> ``("phones", 0)``;
    ValueError saying what is wrong otherwise."""
    steps: list[str | int] = []
    for segment in path.split("."):
        match = _SEGMENT.fullmatch(segment)
        if match is None or not segment:
            raise ValueError(f"bad path {path!r}: write fields as a.b and list items as a[0]")
        if match.group(1):
            steps.append(match.group(1))
        steps.extend(int(i) for i in _INDEX.findall(match.group(2)))
    return tuple(steps)


def get_path(value: Any, path: Path) -> Any:
    """The field of ``value`` at ``path``, or :data:`MISSING`. A name step also indexes a
    list when it is a number (``phones.0``)."""
    for step in path:
        if isinstance(value, Mapping):
            if step not in value:
                return MISSING
            value = value[step]
        elif isinstance(value, list):
            try:
                value = value[int(step)]
            except (ValueError, IndexError):
                return MISSING
        else:
            return MISSING
    return value


def cell(value: Any) -> str:
    """An item's value as template text: strings stripped, null empty, numbers and booleans
    as JSON writes them (``7``, ``1.5``, ``true``), lists and objects as compact JSON."""
    if isinstance(value, str):
        return value.strip()
    if value is None:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def canonical(item: Any) -> str:
    """``item`` as one text that changes exactly when the item's data does (key order aside)."""
    return json.dumps(item, ensure_ascii=False, separators=(",", ":"), sort_keys=True, default=str)


def fallback_id(text: str) -> str:
    """The id reported for an item that has none: stable while the item stays the same."""
    return f"item:{zlib.crc32(text.encode('utf-8', 'surrogatepass')):08x}"


def _fields(text: str) -> list[str]:
    return [name for _, name, _, _ in check_template(text) if name]


class ItemMapper:
    """``templates`` bound to the fields they name. ``id`` defaults to ``{id}``; ``metadata``
    to the whole item, as received."""

    def __init__(self, templates: Templates) -> None:
        self.templates = replace(templates, id=templates.id or "{id}")
        self.whole = templates.metadata is None
        used: dict[str, str] = {}  # field -> the first template naming it
        for text in self.templates.texts():
            for name in _fields(text):
                used.setdefault(name, text)
        self.used = used
        self.fields = list(used)
        self.paths = [parse_path(name) for name in self.fields]  # ValueError: a bad template
        self.bound: Bound = self.templates.bind(self.fields)
        self._id_fields = [self.fields.index(n) for n in _fields(self.templates.id or "")]

    def cells(self, item: Mapping[str, Any]) -> tuple[list[str], list[str]]:
        """The item's cell for each field, and the fields it lacks."""
        cells: list[str] = []
        missing: list[str] = []
        for name, path in zip(self.fields, self.paths, strict=True):
            value = get_path(item, path)
            if value is MISSING:
                missing.append(name)
                cells.append("")
            else:
                cells.append(cell(value))
        return cells, missing

    def record_id(self, cells: list[str], missing: list[str]) -> str | None:
        """The item's record id, or None if it has no usable one."""
        if any(self.fields[i] in missing for i in self._id_fields):
            return None
        try:
            return self.bound.row_id(cells)
        except (RowError, ValueError):
            return None

    def record(self, item: Mapping[str, Any], cells: list[str], missing: list[str]) -> Record:
        """The item's record; RowError (or ValueError) saying why it cannot be one."""
        if missing:
            name = missing[0]
            raise RowError(f"missing field {name!r} (template {self.used[name]!r})")
        rest = self.bound.rest_of_raw(cells)
        if self.whole:
            rest["metadata"] = dict(item)
        return Record(id=self.bound.row_id(cells), phone=self.bound.phone(cells), **rest)

    def phone(self, cells: list[str]) -> str:
        """The phone as found (for reporting a malformed item), or ""."""
        try:
            return self.bound.phone(cells)
        except Exception:
            return ""


class PathTemplate:
    """A URL template such as ``"leads/{id}"`` or ``"/contacts/{contact.crm_id}"``: ``{id}``
    and ``{phone}`` are the record's, any other field is looked up in its metadata; each value
    is percent-encoded, so it stays one path segment."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.parts = check_template(text)
        for _, name, spec, conversion in self.parts:
            if name is not None and (spec or conversion):
                raise ValueError(f"bad template {text!r}: no format specs in a URL template")
        self.paths = {name: parse_path(name) for name in _fields(text)}

    def render(self, record: Record) -> str:
        """The URL for ``record``; RowError naming a field its metadata lacks."""
        pieces: list[str] = []
        for literal, name, _, _ in self.parts:
            pieces.append(literal)
            if name is None:
                continue
            if name in ("id", "phone"):
                value: Any = getattr(record, name)
            else:
                value = get_path(record.metadata, self.paths[name])
            if value is MISSING or value is None or cell(value) == "":
                raise RowError(f"no field {name!r} in record {record.id}'s metadata")
            pieces.append(quote(cell(value), safe=""))
        return "".join(pieces)
