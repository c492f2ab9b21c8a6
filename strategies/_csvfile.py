"""Reading a CSV file that people edit while we read it: only what changed, never half a row.

:class:`CsvFile` remembers where it stopped (byte offset, line number, the file's identity).
An unchanged file costs one ``stat``. A file that only grew is read from the offset. Anything
else (an editor's save by rename, a truncation, an in-place edit) is read whole, and the caller
diffs it against what it saw before. A last line without its newline is held back until the
writer finishes it, or until the file has been left alone for ``settle`` seconds (a file that
simply does not end with a newline).
"""

from __future__ import annotations

import csv
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = ["Chunk", "CsvFile", "FileStamp", "header_key", "sniff_delimiter"]

_BOM = b"\xef\xbb\xbf"
_CHECK = 4096  # bytes compared at the head and before the offset to tell an append from an edit


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
    """

    rows: list[list[str]]  # the fields of each row; blank lines may be among them
    lines: list[int] | None  # the line where each row starts; None: rows[i] is on first_line + i
    first_line: int
    full: bool
    header: list[str]

    def line(self, index: int) -> int:
        """The line number where ``rows[index]`` starts."""
        return self.lines[index] if self.lines is not None else self.first_line + index


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
        rows, lines, first_line, consumed_lines, last_lines = self._rows(text)
        if rows and not settled and lines is not None and _open_quote(text, last_lines):
            # The writer is in the middle of a quoted field that spans lines: wait for it.
            rows.pop()
            lines.pop()
            consumed_lines -= last_lines
            end = _start_of_last_lines(data, start, end, last_lines)
        self.held_back = end < len(data)
        self.offset = (0 if full else self.offset) + end
        self.lines += consumed_lines
        self.stamp = stamp
        if full or len(self._head) < _CHECK:
            self._head = data[:_CHECK] if full else self._read_head()
        tail_from = max(start, end - _CHECK)
        self._tail = data[tail_from:end] if end - tail_from == _CHECK or full else self._read_tail()
        return Chunk(rows, lines, first_line, full, self.header)

    def _rows(self, text: str) -> tuple[list[list[str]], list[int] | None, int, int, int]:
        """Parse ``text``: the rows after the header, the line each starts on (None when each
        row is one line, from the returned first line on), the physical lines consumed and how
        many of them the last row spans. The hot loop of a read."""
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=self.delimiter)
        base = self.lines
        before = 0  # lines consumed before the current row
        if not self.header:
            for fields in reader:
                before = reader.line_num
                if any(f.strip() for f in fields):
                    self.header = [header_key(f) for f in fields]
                    break
        if '"' not in text:
            # No quoted field, so no row spans lines: let the C reader build the list alone.
            rows = list(reader)
            return rows, None, base + before + 1, before + len(rows), 1
        rows = []
        lines: list[int] = []
        add_row, add_line = rows.append, lines.append
        last_start = 0
        for fields in reader:
            if fields and (fields[0].strip() or "".join(fields).strip()):  # not a blank line
                add_row(fields)
                add_line(base + before + 1)
                last_start = before
            before = reader.line_num
        return rows, lines, base + 1, before, before - last_start if rows else 0

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
