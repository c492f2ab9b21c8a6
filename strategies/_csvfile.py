"""Reading a CSV file that people edit while we read it: only what changed, never half a row.

:class:`CsvFile` remembers where it stopped (byte offset, line number, the file's identity).
An unchanged file costs one ``stat``. A file that only grew is read from the offset. Anything
else (an editor's save by rename, a truncation, an in-place edit) is read whole, and the caller
diffs it against what it saw before. A last line without its newline is held back until the
writer finishes it, or until the file has been left alone for ``settle`` seconds (a file that
simply does not end with a newline).

Hostile content stays the problem of its row: a cell longer than csv's field limit (131,072
characters) makes csv.reader raise, so the chunk is parsed again with the limit lifted and the
rows holding such a cell are flagged (:attr:`Chunk.too_long`) for the strategy to refuse. A
large file is parsed a block of lines at a time (:func:`lines_of`), so the event loop's thread
gets the GIL between blocks instead of waiting for the whole file.
"""

from __future__ import annotations

import csv
import io
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from itertools import chain
from pathlib import Path
from typing import BinaryIO, NamedTuple, TypeVar

__all__ = [
    "FIELD_LIMIT",
    "PIECE",
    "Chunk",
    "CsvFile",
    "FileStamp",
    "header_key",
    "lines_of",
    "parse_fields",
    "release",
    "sniff_delimiter",
]

T = TypeVar("T")

FIELD_LIMIT = 131_072  # csv's default field_size_limit(): a longer cell makes csv.reader raise
PIECE = 10_000  # rows per C call that writes or frees many rows; the GIL may pass in between
_BLOCK = 1 << 18  # characters per StringIO that `lines_of` feeds to csv.reader (a few ms each)
_NO_LIMIT = 2**31 - 1  # the field limit while it is lifted: the largest a C long holds anywhere
_BOM = b"\xef\xbb\xbf"
_CHECK = 4096  # bytes compared at the head and before the offset to tell an append from an edit

# csv.field_size_limit() is process-global and the C reader checks it as it goes: every parse
# whose result depends on it holds this lock (see `parse_fields`).
_field_limit_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class FileStamp:
    """What identifies one version of a file, as cheaply as ``stat`` tells it."""

    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileStamp:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True, slots=True)
class Chunk:
    """Rows read by one :meth:`CsvFile.read`.

    ``full``: the whole file was read (it was rewritten); rows not in it have been removed.
    Otherwise the rows are the new ones appended since the previous read.

    ``too_long`` holds the index of each row with a cell longer than ``field_limit``
    characters (csv's limit, which refuses such a cell): the row is as read, and must not
    become a record. It is empty for a file without such a cell.
    """

    rows: list[list[str]]  # the fields of each row; blank lines may be among them
    lines: list[int] | None  # the line where each row starts; None: rows[i] is on first_line + i
    first_line: int
    full: bool
    header: list[str]
    too_long: frozenset[int] = frozenset()
    field_limit: int = FIELD_LIMIT

    def line(self, index: int) -> int:
        """The line number where ``rows[index]`` starts."""
        return self.lines[index] if self.lines is not None else self.first_line + index


class _Split(NamedTuple):
    """A parsed text: see `CsvFile._split`."""

    header: list[str]
    rows: list[list[str]]
    lines: list[int] | None
    first_line: int
    consumed_lines: int
    last_lines: int
    too_long: frozenset[int] = frozenset()
    field_limit: int = FIELD_LIMIT


def header_key(name: str) -> str:
    """`` First Name `` -> ``first_name``: header names as row keys, whatever the sheet did."""
    return "_".join(name.strip().lower().split())


def sniff_delimiter(text: str) -> str:
    """The delimiter among ``, ; tab |`` that splits the first rows into the same number of
    fields as the header, preferring more fields; ``,`` when none splits anything."""
    sample = text[:8192]
    if len(text) > len(sample):
        sample = sample[: sample.rfind("\n") + 1]  # whole lines only
    best, best_score = ",", (0.0, 1)
    for delimiter in ",;\t|":
        reader = csv.reader(io.StringIO(sample, newline=""), delimiter=delimiter)
        rows = [len(r) for r in reader if any(f.strip() for f in r)][:20]
        if not rows or rows[0] < 2:
            continue
        score = (sum(n == rows[0] for n in rows) / len(rows), rows[0])
        if score > best_score:
            best, best_score = delimiter, score
    return best


def lines_of(text: str) -> Iterator[str]:
    """The lines of ``text`` with their ends, as ``io.StringIO(text, newline="")`` yields them,
    for ``csv.reader``, parsed without holding the GIL throughout.

    ``csv.reader`` over one StringIO is C code from the first row to the last: over a second
    for a million rows, in which no other thread runs, the event loop's included (and setting
    up a StringIO of 45 MB takes 0.1 s more). Here each block of whole lines (about 256k
    characters, a few ms to parse) gets its own StringIO, made by a generator when the reader
    reaches it: running that Python code lets the interpreter pass the GIL between blocks.
    """
    return chain.from_iterable(map(partial(io.StringIO, newline=""), _blocks(text)))


def _blocks(text: str) -> Iterator[str]:
    start = 0
    while start < len(text):
        # Cut after a "\n" only, so a "\r\n" stays whole; without one, the rest is one block.
        end = text.find("\n", start + _BLOCK) + 1 or len(text)
        yield text[start:end]
        start = end


def parse_fields(parse: Callable[[int | None], T]) -> T:
    """``parse(None)``, or if csv refuses a field in it as too long, ``parse(limit)`` with
    csv's field limit lifted; ``limit`` is the limit that refused it (csv's 131,072 unless
    the application changed it), for ``parse`` to flag the rows that exceed it.

    The limit is process-global and csv.reader checks it as it goes, so both run under one
    lock: no other parse (another strategy's read, a write-back, in their worker threads) runs
    while it is lifted, so none takes an over-long cell for a good one. Only an over-long
    field makes Python 3.11's csv.reader raise for our dialects (NUL is a plain character
    since 3.11, ``strict`` is off, and each line it gets ends at its first line break); were
    there another error, the second parse would raise it.
    """
    with _field_limit_lock:
        try:
            return parse(None)
        except csv.Error:
            pass  # a field over the limit (see above): parse again with the limit lifted
        limit = csv.field_size_limit(_NO_LIMIT)
        try:
            return parse(limit)
        finally:
            csv.field_size_limit(limit)


def release(rows: list[list[str]]) -> None:
    """Empty ``rows`` a piece at a time: dropping a million rows at once frees them all in one
    C call (0.15 s with the GIL held)."""
    while rows:
        del rows[-PIECE:]


class CsvFile:
    """Incremental reads of the CSV at ``path``. Blocking; run it in a worker thread."""

    def __init__(
        self,
        path: Path,
        *,
        encoding: str = "utf-8",
        delimiter: str | None = None,
        settle: float = 1.0,
    ) -> None:
        self.path = path
        # A UTF-8 BOM is always skipped; "utf-8-sig" means the same as "utf-8" here.
        self.encoding = "utf-8" if encoding.lower().replace("_", "-") == "utf-8-sig" else encoding
        self.configured_delimiter = delimiter
        self.settle = settle
        self.delimiter = delimiter or ","
        self.header: list[str] = []
        self.stamp: FileStamp | None = None
        self.offset = 0  # bytes of complete rows consumed
        self.lines = 0  # physical lines consumed
        self.held_back = False  # an unfinished last row was left for the next read
        self._head = b""  # the first bytes, to tell an append from a rewrite
        self._tail = b""  # the bytes just before `offset`, likewise

    def changed(self) -> bool | None:
        """Cheap check (one ``stat``): True if a read may find something; None if the file is
        missing (an atomic save in progress, or deleted)."""
        try:
            stamp = FileStamp.of(os.stat(self.path))
        except FileNotFoundError:
            return None
        return stamp != self.stamp or (self.held_back and self._settled(stamp))

    def read(self, *, force_full: bool = False) -> Chunk | None:
        """Read what changed since the last read; None if nothing did (or the file is missing).

        ``force_full`` re-reads the whole file even if it looks unchanged (the periodic
        backstop for edits that a ``stat`` cannot see).
        """
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - closed below, after a branchy read
        except FileNotFoundError:
            return None
        with f:
            stamp = FileStamp.of(os.fstat(f.fileno()))
            if (
                not force_full
                and stamp == self.stamp
                and not (self.held_back and self._settled(stamp))
            ):
                return None
            if not force_full and self._only_appended(f, stamp):
                f.seek(self.offset)
                return self._parse(f.read(), stamp, full=False)
            f.seek(0)
            return self._parse(f.read(), stamp, full=True)

    def _only_appended(self, f: BinaryIO, stamp: FileStamp) -> bool:
        old = self.stamp
        if old is None or (old.dev, old.ino) != (stamp.dev, stamp.ino):
            return False
        if stamp.size < self.offset or (stamp.size == old.size and not self.held_back):
            return False  # truncated, or edited in place without growing
        f.seek(0)
        if f.read(len(self._head)) != self._head:
            return False
        f.seek(self.offset - len(self._tail))
        return f.read(len(self._tail)) == self._tail

    def _settled(self, stamp: FileStamp) -> bool:
        """Nobody has written to the file for ``settle`` seconds (file times are wall time)."""
        return time.time_ns() - stamp.mtime_ns >= self.settle * 1e9

    def _parse(self, data: bytes, stamp: FileStamp, *, full: bool) -> Chunk:
        start = 0
        if full:
            start = len(_BOM) if data.startswith(_BOM) else 0
            self.offset, self.lines, self.header = start, 0, []
        settled = self._settled(stamp)
        end = len(data) if settled else data.rfind(b"\n") + 1
        end = max(end, start)
        text = data[start:end].decode(self.encoding, errors="replace")
        if full and self.configured_delimiter is None:
            self.delimiter = sniff_delimiter(text)
        split = parse_fields(partial(self._split, text))
        self.header = split.header
        rows, lines, too_long = split.rows, split.lines, split.too_long
        consumed_lines = split.consumed_lines
        if rows and not settled and lines is not None and _open_quote(text, split.last_lines):
            # The writer is in the middle of a quoted field that spans lines: wait for it.
            rows.pop()
            lines.pop()
            too_long -= {len(rows)}
            consumed_lines -= split.last_lines
            end = _start_of_last_lines(data, start, end, split.last_lines)
        self.held_back = end < len(data)
        self.offset = (0 if full else self.offset) + end
        self.lines += consumed_lines
        self.stamp = stamp
        if full or len(self._head) < _CHECK:
            self._head = data[:_CHECK] if full else self._read_head()
        tail_from = max(start, end - _CHECK)
        self._tail = data[tail_from:end] if end - tail_from == _CHECK or full else self._read_tail()
        return Chunk(rows, lines, split.first_line, full, self.header, too_long, split.field_limit)

    def _split(self, text: str, limit: int | None) -> _Split:
        """Parse ``text``: the header (the known one, else the first non-blank row), the rows
        after it, the line each starts on (None when each row is one line, from the returned
        first line on), the physical lines consumed and how many of them the last row spans.
        ``limit`` (see `parse_fields`): csv's field limit is lifted, so flag the rows with a
        longer cell. The hot loop of a read."""
        reader = csv.reader(lines_of(text), delimiter=self.delimiter)
        base = self.lines
        before = 0  # lines consumed before the current row
        header = self.header
        if not header:
            for fields in reader:
                before = reader.line_num
                if any(f.strip() for f in fields):
                    header = [header_key(f) for f in fields]
                    break
        lines: list[int] | None = None
        if '"' not in text:
            # No quoted field, so no row spans lines: let the C reader build the list alone
            # (it still lets the GIL go between blocks of lines, see `lines_of`).
            rows = list(reader)
            first_line, consumed_lines, last_lines = base + before + 1, before + len(rows), 1
        else:
            rows, lines = [], []
            add_row, add_line = rows.append, lines.append
            last_start = 0
            for fields in reader:
                if fields and (fields[0].strip() or "".join(fields).strip()):  # not a blank line
                    add_row(fields)
                    add_line(base + before + 1)
                    last_start = before
                before = reader.line_num
            first_line, consumed_lines = base + 1, before
            last_lines = before - last_start if rows else 0
        if limit is None:
            return _Split(header, rows, lines, first_line, consumed_lines, last_lines)
        too_long = frozenset(i for i, r in enumerate(rows) if any(len(f) > limit for f in r))
        return _Split(header, rows, lines, first_line, consumed_lines, last_lines, too_long, limit)

    def _read_head(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read(min(_CHECK, self.offset))

    def _read_tail(self) -> bytes:
        with open(self.path, "rb") as f:
            begin = max(0, self.offset - _CHECK)
            f.seek(begin)
            return f.read(self.offset - begin)


def _open_quote(text: str, last_lines: int) -> bool:
    """Whether the last row's raw text leaves a quoted field open (an odd number of quotes)."""
    end = len(text) - 1 if text.endswith("\n") else len(text)
    pos = end
    for _ in range(last_lines):
        pos = text.rfind("\n", 0, pos)
        if pos < 0:
            break
    return text.count('"', pos + 1, end) % 2 == 1


def _start_of_last_lines(data: bytes, start: int, end: int, lines: int) -> int:
    """The byte offset where the last ``lines`` physical lines of ``data[start:end]`` begin."""
    stop = end - 1 if data[start:end].endswith(b"\n") else end
    pos = stop
    for _ in range(lines):
        pos = data.rfind(b"\n", start, pos)
        if pos < 0:
            return start
    return pos + 1
