"""`dispatch dnc add|remove|list|import|export`: the do-not-call list from the command line.

The commands talk to the store directly (:mod:`dispatch.store.dnc`), not through a daemon, so
they work whether one runs or not. ``add`` and ``import`` create and migrate the store if it
is not there yet, so a list can be loaded before the first run; ``list``, ``export`` and
``remove`` only read an existing store (and say so when there is none).

Invalid input never stops the valid part: a bad number or CSV row is reported (with its line
number), the others are written, and the command exits 2 so a script notices. Store failures
exit 1 (raised as :class:`~dispatch.errors.StoreError`, reported by :mod:`dispatch.cli`).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import anyio
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from strategies._csvfile import header_key, sniff_delimiter

from .config import Settings, store_url
from .errors import InvalidPhone, StoreError, StoreUnavailable
from .record import normalize_phone
from .report_cli import _table, _time
from .store import DoNotCall, Store, dnc

__all__ = ["EXPORT_COLUMNS", "run"]

EXIT_OK = 0
EXIT_USAGE = 2  # as dispatch.cli: bad input (a number, a row, a file)

# What `export` writes, in order; `import` reads the phone, reason, strategy and record_id.
EXPORT_COLUMNS = ("phone", "added_at", "source", "strategy", "record_id", "reason")
_PHONE_HEADERS = ("phone", "number")  # header_key() names, by preference
_SHOWN = 50  # bad rows reported one by one; past that, only how many more there were


class _InputError(Exception):
    """A file the command cannot use: one line naming the cause and the fix (exit 2)."""


def _say(text: str) -> None:
    print(text)  # noqa: T201 - the command's output (this module is part of the CLI)


def _warn(text: str) -> None:
    print(f"dispatch: {text}", file=sys.stderr)  # noqa: T201 - the CLI's diagnostics


async def run(settings: Settings, base: Path, args: argparse.Namespace) -> int:
    """Run ``dispatch dnc <args.dnc_command>``; return the exit code (0, or 2 for bad input).

    Raises :class:`~dispatch.errors.StoreError` when the store is missing, refuses or cannot
    be reached (the caller prints it and exits 1).
    """
    command = {"add": _add, "remove": _remove, "list": _list, "import": _import, "export": _export}
    try:
        return await command[args.dnc_command](settings, base, args)
    except _InputError as exc:
        _warn(str(exc))
        return EXIT_USAGE


@asynccontextmanager
async def _opened(settings: Settings, base: Path, *, create: bool) -> AsyncIterator[AsyncEngine]:
    """The store's engine: migrated (and created if need be) with ``create``, else as it is."""
    url = store_url(settings, base)
    parsed = make_url(url)
    database = parsed.database
    # Opening a missing SQLite file would create an empty one: only add and import may.
    if parsed.get_backend_name() == "sqlite" and database and database != ":memory:":
        path = anyio.Path(database)
        if not await path.exists():
            if not create:
                raise StoreError(
                    f"no store at {database}: nothing is listed yet "
                    "(`dispatch dnc add` or `dispatch dnc import` creates it)"
                )
            if not await path.parent.is_dir():
                raise StoreError(
                    f"cannot create the store {database}: there is no directory {path.parent} "
                    "(create it, or fix [store] url)"
                )
    store = Store(url)
    try:
        await store.open(migrate=create)
        yield store.engine
    except StoreUnavailable:
        raise
    except StoreError as exc:
        if create:
            raise
        raise StoreError(
            f"{exc}; has the daemon or `dispatch db upgrade` ever run against it?"
        ) from exc
    finally:
        await store.aclose()


# -- add and remove ----------------------------------------------------------------------------


def _normalised(numbers: Sequence[str], region: str | None) -> tuple[dict[str, str], bool]:
    """Each valid number's E.164 form mapped to how it was written (the first spelling of a
    repeated one), and whether any was invalid (reported here)."""
    valid: dict[str, str] = {}
    invalid = False
    for raw in numbers:
        try:
            phone = normalize_phone(raw, region)
        except InvalidPhone as exc:
            _warn(str(exc))
            invalid = True
            continue
        valid.setdefault(phone, raw)
    return valid, invalid


def _written(phone: str, raw: str) -> str:
    return phone if raw.strip() == phone else f"{phone} (from {raw.strip()!r})"


async def _add(settings: Settings, base: Path, args: argparse.Namespace) -> int:
    valid, invalid = _normalised(args.numbers, settings.default_region)
    if valid:
        entries = [DoNotCall(phone, "cli", reason=args.reason) for phone in valid]
        async with _opened(settings, base, create=True) as engine:
            added = await dnc.add(engine, entries, at=datetime.now(UTC))
            kept = await dnc.listed(engine, valid.keys() - added)
        before = {entry.phone: entry for entry in kept}
        for phone, raw in valid.items():
            if phone in added:
                _say(f"added {_written(phone, raw)}")
            elif (entry := before.get(phone)) is not None:
                _say(f"already listed {_written(phone, raw)}, left as it was ({_about(entry)})")
            else:  # listed, then removed by someone else, between the two statements
                _say(f"already listed {_written(phone, raw)}")
    return EXIT_USAGE if invalid else EXIT_OK


def _about(entry: dnc.Listed) -> str:
    said = [f"since {_time(entry.added_at)}", f"source {entry.source}"]
    if entry.strategy or entry.record_id:
        said.append(f"record {entry.strategy or '?'}/{entry.record_id or '?'}")
    if entry.reason:
        said.append(f"reason {entry.reason!r}")
    return ", ".join(said)


async def _remove(settings: Settings, base: Path, args: argparse.Namespace) -> int:
    valid, invalid = _normalised(args.numbers, settings.default_region)
    if valid:
        async with _opened(settings, base, create=False) as engine:
            removed = await dnc.remove(engine, valid.keys())
        for phone, raw in valid.items():
            _say(f"{'removed' if phone in removed else 'not listed'} {_written(phone, raw)}")
    return EXIT_USAGE if invalid else EXIT_OK


# -- list and export ---------------------------------------------------------------------------


async def _list(settings: Settings, base: Path, args: argparse.Namespace) -> int:
    async with _opened(settings, base, create=False) as engine:
        entries = await dnc.listed(engine)
    if args.json:
        _say(json.dumps([entry.as_dict() for entry in entries], indent=2))
    elif not entries:
        _say("the do-not-call list is empty")
    else:
        headers = ["phone", "added at (UTC)", "source", "strategy", "record", "reason"]
        rows = [
            [
                e.phone,
                _time(e.added_at),
                *map(_shown, (e.source, e.strategy, e.record_id, e.reason)),
            ]
            for e in entries
        ]
        _say(_table(headers, rows))
        _say(f"{len(entries)} number{'' if len(entries) == 1 else 's'}")
    return EXIT_OK


def _shown(text: str | None) -> str:
    """``text`` for one table cell on a terminal: a line break or an escape sequence in an
    imported reason must not break the table or drive the terminal."""
    if text is None:
        return ""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else " " if c.isspace() else repr(c)[1:-1] for c in text)


async def _export(settings: Settings, base: Path, args: argparse.Namespace) -> int:
    target: str | None = None if args.file in (None, "-") else args.file
    count = 0
    async with _opened(settings, base, create=False) as engine, _output(target) as write:
        buffer = io.StringIO()
        out = csv.writer(buffer, lineterminator="\n")
        out.writerow(EXPORT_COLUMNS)
        async with dnc.reading(engine) as entries:
            async for entry in entries:
                row = entry.as_dict()
                out.writerow([row[column] or "" for column in EXPORT_COLUMNS])
                count += 1
                if buffer.tell() > 1 << 16:
                    await write(buffer.getvalue())
                    buffer.seek(0)
                    buffer.truncate()
        await write(buffer.getvalue())
    if target is not None:
        _say(f"exported {count} number{'' if count == 1 else 's'} to {target}")
    return EXIT_OK


class _Writer:
    """Text to a file or to stdout, for `_output`."""

    def __init__(self, file: anyio.AsyncFile[str] | None) -> None:
        self.file = file

    async def __call__(self, text: str) -> None:
        if self.file is not None:
            await self.file.write(text)
            return
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except BrokenPipeError:
            # `dispatch dnc export | head`: the reader has all it wants. Point stdout at
            # /dev/null so the interpreter's last flush does not complain on the way out.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise _StdoutClosed from None


class _StdoutClosed(Exception):
    pass


@asynccontextmanager
async def _output(target: str | None) -> AsyncIterator[_Writer]:
    """Where an export goes: stdout, or ``target`` replaced whole once complete (a reader
    never sees half an export, and a failed export leaves the old file as it was)."""
    if target is None:
        with suppress(_StdoutClosed):
            yield _Writer(None)
        return
    path = anyio.Path(target)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        file = await anyio.open_file(partial, "w", encoding="utf-8", newline="")
    except OSError as exc:
        raise _InputError(f"cannot write {target}: {exc.strerror or exc}") from exc
    try:
        async with file:
            yield _Writer(file)
        await partial.replace(path)
    except OSError as exc:
        raise _InputError(f"cannot write {target}: {exc.strerror or exc}") from exc
    finally:
        with suppress(OSError):
            await partial.unlink(missing_ok=True)


# -- import ------------------------------------------------------------------------------------


@dataclass
class _Parsed:
    """What an import file holds: the numbers to add, and what was wrong with the rest."""

    entries: list[DoNotCall] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)  # "line 7: invalid phone ...", in order
    repeated: int = 0  # rows whose number an earlier row already had
    headerless: bool = False  # the first line was a number, so it was read as one
    first_column: str | None = None  # the header of the column read, if no phone/number one


async def _import(settings: Settings, base: Path, args: argparse.Namespace) -> int:
    path = Path(args.file)
    # Parsing and normalising 100,000 numbers is a second or two of CPU: off the event loop.
    parsed = await anyio.to_thread.run_sync(
        _read_numbers, path, args.encoding, settings.default_region, args.reason
    )
    if parsed.headerless:
        _warn(f"{path}: no header (its first line is a phone number), every line read as one")
    if parsed.first_column is not None:
        _warn(
            f"{path}: no column named phone or number, reading the first ({parsed.first_column!r})"
        )
    for line in parsed.invalid[:_SHOWN]:
        _warn(f"{path} {line}")
    if len(parsed.invalid) > _SHOWN:
        _warn(f"{path}: {len(parsed.invalid) - _SHOWN} more invalid rows not shown")
    added: set[str] = set()
    if parsed.entries:
        async with _opened(settings, base, create=True) as engine:
            added = await dnc.add(engine, parsed.entries, at=datetime.now(UTC))
    already = len(parsed.entries) - len(added)
    repeated = f", {parsed.repeated} repeated in the file" if parsed.repeated else ""
    _say(
        f"imported {len(added)} number{'' if len(added) == 1 else 's'} "
        f"({already} already listed, {len(parsed.invalid)} invalid{repeated})"
    )
    return EXIT_USAGE if parsed.invalid else EXIT_OK


def _read_numbers(path: Path, encoding: str, region: str | None, reason: str | None) -> _Parsed:
    """Every row of ``path`` as a do-not-call entry, or as the reason it cannot be one."""
    # A UTF-8 BOM (Excel's "CSV UTF-8") is skipped; "utf-8-sig" reads plain UTF-8 as well.
    utf8 = encoding.lower().replace("_", "-") in ("utf-8", "utf8")
    try:
        with path.open(encoding="utf-8-sig" if utf8 else encoding, newline="") as f:
            return _parse(f, path, region, reason)
    except FileNotFoundError:
        raise _InputError(f"no file {path}: check the path") from None
    except IsADirectoryError:
        raise _InputError(f"{path} is a directory: name the CSV file inside it") from None
    except LookupError:
        raise _InputError(f"unknown encoding {encoding!r}: try --encoding cp1252") from None
    except UnicodeDecodeError as exc:
        raise _InputError(
            f"cannot read {path}: it is not {encoding} text ({exc.reason} at byte {exc.start}); "
            "save it as 'CSV UTF-8', or pass its encoding (--encoding cp1252)"
        ) from None
    except OSError as exc:
        raise _InputError(f"cannot read {path}: {exc.strerror or exc}") from None


def _parse(f: io.TextIOBase, path: Path, region: str | None, default_reason: str | None) -> _Parsed:
    delimiter = sniff_delimiter(f.read(65_536))
    f.seek(0)
    parsed = _Parsed()
    rows = _rows(f, delimiter)
    first = next(rows, None)
    if first is None:
        return parsed  # an empty file: nothing to import
    line, header = first
    if isinstance(header, csv.Error):
        raise _InputError(f"cannot read {path}: its first row, on line {line}: {header}")
    names = [header_key(cell.lstrip("\ufeff")) for cell in header]
    phone_at = next((names.index(n) for n in _PHONE_HEADERS if n in names), None)
    if phone_at is None and _is_phone(header[0], region):
        # A plain list of numbers, one a line: its first line is data, not a header.
        parsed.headerless = True
        names = []
        rows = _chain(first, rows)
    elif phone_at is None and len(header) > 1:
        parsed.first_column = header[0].strip()
    columns = {n: names.index(n) for n in ("reason", "strategy", "record_id") if n in names}
    phone_at = phone_at or 0  # no phone or number column: the first one
    seen: set[str] = set()
    for line, cells in rows:
        if isinstance(cells, csv.Error):
            parsed.invalid.append(f"line {line}: unreadable row ({cells})")
            continue
        raw = cells[phone_at].strip() if phone_at < len(cells) else ""
        if not raw:
            parsed.invalid.append(f"line {line}: no phone number")
            continue
        try:
            phone = normalize_phone(raw, region)
        except InvalidPhone as exc:
            parsed.invalid.append(f"line {line}: {exc}")
            continue
        if phone in seen:
            parsed.repeated += 1
            continue
        seen.add(phone)
        cell = {n: cells[i].strip() if i < len(cells) else "" for n, i in columns.items()}
        parsed.entries.append(
            DoNotCall(
                phone,
                "import",
                # Kept from an export, so a list moved to another store still says whose
                # opt-out each number was. Cut to the columns' sizes: a hostile cell must
                # not make the database refuse its whole batch.
                strategy=cell.get("strategy", "")[:200] or None,
                record_id=cell.get("record_id") or None,
                reason=cell.get("reason") or default_reason or None,
            )
        )
    return parsed


_Row = tuple[int, "list[str] | csv.Error"]


def _rows(f: io.TextIOBase, delimiter: str) -> Iterator[_Row]:
    """Each non-blank row with the line it starts on, or the error csv raised for it (a field
    over csv's limit); reading goes on with the next line."""
    reader = csv.reader(f, delimiter=delimiter)
    while True:
        line = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield line, exc
            continue
        if any(cell.strip() for cell in cells):
            yield line, cells


def _chain(first: _Row, rest: Iterator[_Row]) -> Iterator[_Row]:
    yield first
    yield from rest


def _is_phone(text: str, region: str | None) -> bool:
    try:
        normalize_phone(text.lstrip("\ufeff"), region)
    except InvalidPhone:
        return False
    return True
