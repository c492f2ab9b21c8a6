"""CsvStrategy: records from a CSV file, re-read on every poll.

Row keys are the header names, stripped, lower-cased, with inner spaces as underscores
(`` First Name `` -> ``first_name``), so templates stay readable whatever the spreadsheet did.
"""

from __future__ import annotations

import csv
import io
import logging
import string
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio.to_thread
from pydantic import ValidationError

from dispatch.abc import Strategy
from dispatch.record import Record

__all__ = ["CsvStrategy", "RowMapper"]

logger = logging.getLogger(__name__)

RowMapper = Callable[[dict[str, str], int], Record | None]
"""``map_row(row, line_no)``: build the row's Record, or return None to skip the row."""

_FORMATTER = string.Formatter()


class RowError(ValueError):
    """A row cannot become a record; the message says why."""


class CsvStrategy(Strategy):
    """Records from the rows of ``path``.

    Map rows either with templates over the row's fields (``id="{id}"``,
    ``phone="{phone}"``, ``greeting="Hi {first_name}"``, ``metadata={"crm": "{crm_id}"}``) or
    with ``map_row(row, line_no)``, which may return None to skip a row. By default the id is
    the ``id`` column, or the phone when there is none, and ``metadata`` is the whole row.

    A row that cannot be mapped is logged with its line number and left out; the other rows are
    unaffected. A missing file (an editor in the middle of an atomic save) yields no records for
    that poll.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        name: str | None = None,
        id: str | None = None,
        phone: str = "{phone}",
        greeting: str | None = None,
        metadata: Mapping[str, str] | None = None,
        prompt_vars: Mapping[str, str] | None = None,
        from_: str | None = None,
        timezone: str | None = None,
        map_row: RowMapper | None = None,
        delimiter: str | None = None,
        encoding: str = "utf-8-sig",
    ) -> None:
        self.path = Path(path)
        super().__init__(name or self.path.stem)
        self.id_template = id
        self.phone_template = phone
        self.greeting_template = greeting
        self.metadata_templates = dict(metadata) if metadata is not None else None
        self.prompt_var_templates = dict(prompt_vars or {})
        self.from_template = from_
        self.timezone_template = timezone
        self.map_row = map_row
        self.delimiter = delimiter
        self.encoding = encoding
        for template in self._templates():
            _check_template(template)

    async def poll(self) -> list[Record]:
        return await anyio.to_thread.run_sync(self.read)

    def read(self) -> list[Record]:
        """Parse the whole file into records (blocking; ``poll`` runs it in a thread)."""
        try:
            text = self.path.read_text(encoding=self.encoding)
        except FileNotFoundError:
            logger.warning("csv.missing strategy=%s path=%s", self.name, self.path)
            return []
        records: list[Record] = []
        for line_no, row in self._rows(text):
            try:
                record = self.map_row(row, line_no) if self.map_row else self._from_templates(row)
            except (RowError, ValidationError, ValueError, KeyError) as exc:
                logger.warning(
                    "csv.bad_row strategy=%s line=%d reason=%s", self.name, line_no, _brief(exc)
                )
                continue
            if record is not None:
                records.append(record)
        return records

    def _rows(self, text: str) -> list[tuple[int, dict[str, str]]]:
        delimiter = self.delimiter or _sniff(text)
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        header: list[str] | None = None
        rows: list[tuple[int, dict[str, str]]] = []
        for fields in reader:
            if not any(f.strip() for f in fields):
                continue  # blank line
            if header is None:
                header = [_key(f) for f in fields]
                continue
            rows.append(
                (reader.line_num, dict(zip(header, (f.strip() for f in fields), strict=False)))
            )
        return rows

    def _from_templates(self, row: dict[str, str]) -> Record:
        id_template = self.id_template or ("{id}" if "id" in row else self.phone_template)
        metadata: dict[str, Any] = (
            {k: _render(t, row) for k, t in self.metadata_templates.items()}
            if self.metadata_templates is not None
            else dict(row)
        )
        return Record(
            id=_render(id_template, row),
            phone=_render(self.phone_template, row),
            greeting=_render_optional(self.greeting_template, row),
            metadata=metadata,
            prompt_vars={k: _render(t, row) for k, t in self.prompt_var_templates.items()},
            from_=_render_optional(self.from_template, row),
            timezone=_render_optional(self.timezone_template, row),
        )

    def _templates(self) -> list[str]:
        optional = [self.id_template, self.greeting_template, self.from_template]
        optional.append(self.timezone_template)
        return [
            self.phone_template,
            *(t for t in optional if t is not None),
            *(self.metadata_templates or {}).values(),
            *self.prompt_var_templates.values(),
        ]

    def __repr__(self) -> str:
        return f"CsvStrategy(name={self.name!r}, path={str(self.path)!r})"


def _key(header: str) -> str:
    return "_".join(header.strip().lower().split())


def _sniff(text: str) -> str:
    sample = text[:8192]
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t").delimiter
    except csv.Error:
        return ","


def _check_template(template: str) -> None:
    try:
        list(_FORMATTER.parse(template))
    except ValueError as exc:
        raise ValueError(f"bad template {template!r}: {exc}") from exc


def _render(template: str, row: Mapping[str, str]) -> str:
    try:
        value = template.format_map(row)
    except KeyError as exc:
        raise RowError(f"no column {exc.args[0]!r} for template {template!r}") from None
    return value.strip()


def _render_optional(template: str | None, row: Mapping[str, str]) -> str | None:
    if template is None:
        return None
    return _render(template, row) or None


def _brief(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return str(exc)
