"""Writing outcomes back: into the operator's CSV (merged, never clobbering an edit) or into a
sidecar results file.

The merge re-reads the file, sets only our cells in the rows of the records concerned, writes a
temporary file beside it, and atomically replaces the original, but only if the file has not
changed since it was read (else it starts over). Updates that arrive while a write is running
go together into the next one, so a busy campaign rewrites a large file once per batch, not
once per call. Every cell we write is neutralised against formula injection.

The operator's cells are kept as they are, a cell too long for csv's field limit included, and
a row that maps to no record (an empty id, a ``map_row`` that raises) is simply not ours. A
large file is parsed and written a piece at a time, as :mod:`strategies._csvfile` reads it, so
the event loop's thread gets the GIL in between.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import anyio
import anyio.to_thread

from dispatch._gc import gc_paused
from dispatch.errors import DispatchError

from ._csvfile import (
    PIECE,
    FileStamp,
    header_key,
    lines_of,
    parse_fields,
    release,
    sniff_delimiter,
)
from ._writeback import WriteBack

__all__ = ["ResultsFile", "WriteBack", "WriteBackError", "neutralize"]

logger = logging.getLogger("strategies.csv")

_BOM = b"\xef\xbb\xbf"
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

RowId = Callable[[dict[str, str], int], str | None]
# For a header (its keys), the index of the column that is the record id as it is, if the ids
# are bare cells of one column: rows are then matched by that cell, with no dict per row.
IdColumn = Callable[[list[str]], int | None]


class WriteBackError(DispatchError):
    """An outcome could not be written to the CSV (the delivery is retried from the outbox)."""


def neutralize(value: str) -> str:
    """A cell a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@``, tab, CR first)
    gets a leading apostrophe, which spreadsheets show as text (OWASP's advice)."""
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


@dataclass(slots=True)
class _Batch:
    cells: dict[str, dict[str, str]] = field(default_factory=dict)  # record id -> column -> value
    done: anyio.Event = field(default_factory=anyio.Event)
    error: Exception | None = None


class _Coalescer:
    """One write at a time; updates made meanwhile share the next write."""

    def __init__(self) -> None:
        self._open = _Batch()
        self._lock = anyio.Lock()

    async def update(self, record_id: str, cells: Mapping[str, str]) -> None:
        batch = self._open
        batch.cells.setdefault(record_id, {}).update(cells)
        async with self._lock:
            if not batch.done.is_set():
                self._open = _Batch()  # later updates go to the next write
                try:
                    await anyio.to_thread.run_sync(self._write, batch.cells)
                except Exception as exc:
                    batch.error = exc
                batch.done.set()
        if batch.error is not None:
            raise WriteBackError(f"{type(batch.error).__name__}: {batch.error}") from batch.error

    def _write(self, cells: dict[str, dict[str, str]]) -> None:
        raise NotImplementedError


class FileWriteBack(_Coalescer):
    """Merges outcome cells into the CSV at ``path``, found by record id (``row_id``).

    With ``source``, ``path`` is a working copy of ``source`` that only we write: each write
    takes the source's rows as they are now, with the cells written into the copy so far and
    the new ones, so the copy follows the operator's edits and the source is never touched.
    """

    def __init__(
        self,
        path: Path,
        spec: WriteBack,
        row_id: RowId,
        *,
        encoding: str,
        delimiter: str | None,
        source: Path | None = None,
        id_column: IdColumn | None = None,
    ) -> None:
        super().__init__()
        self.path = path
        self.spec = spec
        self.row_id = row_id
        self.id_column = id_column
        self.encoding = encoding
        self.delimiter = delimiter
        self.source = source

    def _write(self, cells: dict[str, dict[str, str]]) -> None:
        if self.source is not None:
            self._write_copy(cells)
            return
        for _ in range(self.spec.attempts):
            with open(self.path, "rb") as f:
                before = FileStamp.of(os.fstat(f.fileno()))
                data = f.read()
            merged, missing = self._merge(data, cells)
            if missing:
                logger.warning(
                    "csv.write_back_unmatched path=%s records=%s (no row with that id)",
                    self.path,
                    ",".join(sorted(missing)),
                )
            if merged is None:
                return
            if self._replace(merged, before):
                return
            logger.info("csv.write_back_retry path=%s (the file changed while merging)", self.path)
        raise WriteBackError(f"{self.path} kept changing over {self.spec.attempts} attempts")

    def _write_copy(self, cells: dict[str, dict[str, str]]) -> None:
        assert self.source is not None
        try:
            with open(self.path, "rb") as f:
                before: FileStamp | None = FileStamp.of(os.fstat(f.fileno()))
                copy = f.read()
        except FileNotFoundError:
            before, copy = None, b""
        written = self._cells_of(copy)
        for record_id, new in cells.items():
            written.setdefault(record_id, {}).update(new)
        data = self._settled_source()
        merged, missing = self._merge(data, written)
        if missing & set(cells):
            logger.warning(
                "csv.write_back_unmatched path=%s records=%s (no row with that id)",
                self.source,
                ",".join(sorted(missing & set(cells))),
            )
        # Rows we wrote that left the source (deleted, or not there for a moment) keep their
        # outcomes in the copy: the outbox counts them as delivered.
        gone = missing - set(cells)
        if gone and merged is not None:
            merged.append(self._rows_of(copy, gone, data))
        if merged is not None and not self._replace(merged, before):
            raise WriteBackError(f"{self.path} was changed by someone else while we wrote it")

    def _settled_source(self) -> bytes:
        """The source's bytes, read while nobody was writing it (else WriteBackError: the
        outbox tries again later)."""
        assert self.source is not None
        for _ in range(self.spec.attempts):
            with open(self.source, "rb") as f:
                before = FileStamp.of(os.fstat(f.fileno()))
                data = f.read()
            if FileStamp.of(os.stat(self.source)) == before:
                return data
        raise WriteBackError(f"{self.source} kept changing over {self.spec.attempts} reads")

    def _rows_of(self, copy: bytes, ids: set[str], source: bytes) -> bytes:
        """The copy's rows of ``ids``, laid out under the source's header (and ours)."""
        text = copy.removeprefix(_BOM).decode(self.encoding, errors="surrogateescape")
        delimiter = self.delimiter or sniff_delimiter(text)
        rows, lines = _split(text, delimiter, None)
        head = next((i for i, r in enumerate(rows) if any(f.strip() for f in r)), 0)
        keys = [header_key(h) for h in rows[head]] if rows else []
        source_text = source.removeprefix(_BOM).decode(self.encoding, errors="surrogateescape")
        source_rows, _ = _split(source_text, delimiter, None)
        header = next((r for r in source_rows if any(f.strip() for f in r)), [])
        layout = [header_key(h) for h in header]
        layout += [header_key(c) for c in self.spec.columns() if header_key(c) not in layout]
        out = io.StringIO(newline="")
        writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")
        for number in range(head + 1, len(rows)):
            row = dict(zip(keys, rows[number], strict=False))
            try:
                record_id = self.row_id(
                    {k: v.strip() for k, v in row.items()}, lines[number - 1] + 1
                )
            except Exception:
                continue
            if record_id in ids:
                writer.writerow([row.get(k, "") for k in layout])
        ending = b"" if source.endswith((b"\n", b"\r")) or not source else b"\n"
        return ending + out.getvalue().encode(self.encoding, "surrogateescape")

    def _cells_of(self, data: bytes) -> dict[str, dict[str, str]]:
        """Our cells in a working copy, by record id."""
        text = data.removeprefix(_BOM).decode(self.encoding, errors="surrogateescape")
        delimiter = self.delimiter or sniff_delimiter(text)
        rows, lines = _split(text, delimiter, None)
        head = next((i for i, r in enumerate(rows) if any(f.strip() for f in r)), None)
        if head is None:
            return {}
        keys = [header_key(h) for h in rows[head]]
        ours = [(header_key(c), c) for c in self.spec.columns()]
        found: dict[str, dict[str, str]] = {}
        for number in range(head + 1, len(rows)):
            row = dict(zip(keys, (f.strip() for f in rows[number]), strict=False))
            try:
                record_id = self.row_id(row, lines[number - 1] + 1)
            except Exception:
                continue
            if record_id is not None:
                # Written back as read: neutralize() leaves a neutralised cell as it is.
                values = {c: row[k] for k, c in ours if row.get(k)}
                if values:
                    found[record_id] = values
        return found

    def _merge(
        self, data: bytes, cells: dict[str, dict[str, str]]
    ) -> tuple[list[bytes] | None, set[str]]:
        """The file's new content (in parts) with ``cells`` set, or None if no row is
        concerned; and the record ids that no row has."""
        bom = data.startswith(_BOM)
        text = data[len(_BOM) if bom else 0 :].decode(self.encoding, errors="surrogateescape")
        delimiter = self.delimiter or sniff_delimiter(text)
        with gc_paused():
            rows, lines = parse_fields(partial(_split, text, delimiter))
            try:
                missing = self._set_cells(rows, lines, cells)
                if missing == set(cells):
                    return None, missing
                return self._encode(rows, text, delimiter, bom), missing
            finally:
                release(rows)

    def _set_cells(
        self, rows: list[list[str]], lines: list[int], cells: dict[str, dict[str, str]]
    ) -> set[str]:
        """Set ``cells`` in ``rows`` (our columns appended to the header if missing); return
        the record ids that no row has."""
        head = next((i for i, r in enumerate(rows) if any(f.strip() for f in r)), None)
        if head is None:
            return set(cells)
        header = rows[head]
        keys = [header_key(h) for h in header]
        for column in self.spec.columns():
            if header_key(column) not in keys:
                header.append(column)
                keys.append(header_key(column))
        index = {k: i for i, k in enumerate(keys)}
        missing = set(cells)
        bare = self.id_column(keys) if self.id_column is not None else None
        for number in range(head + 1, len(rows)):
            fields = rows[number]
            if bare is not None and len(fields) > bare:
                # The usual case, and a large file's whole cost: the id is a cell as it is.
                record_id: str | None = fields[bare].strip()
                if record_id not in cells:
                    continue
            else:
                if not any(f.strip() for f in fields):
                    continue
                row = dict(zip(keys, (f.strip() for f in fields), strict=False))
                try:
                    record_id = self.row_id(row, lines[number - 1] + 1)
                except Exception:  # no record comes from this row (the reader says why)
                    continue
                if record_id is None or record_id not in cells:
                    continue
            missing.discard(record_id)
            fields.extend([""] * (len(keys) - len(fields)))
            for column, value in cells[record_id].items():
                fields[index[header_key(column)]] = neutralize(value)
        return missing

    def _encode(self, rows: list[list[str]], text: str, delimiter: str, bom: bool) -> list[bytes]:
        """``rows`` as the file's bytes, in the line breaks of ``text`` (the file as read)."""
        crlf = "\r\n" in text[:65536]
        out = io.StringIO(newline="")
        writer = csv.writer(out, delimiter=delimiter, lineterminator="\r\n" if crlf else "\n")
        parts = [_BOM] if bom else []
        for start in range(0, len(rows), PIECE):
            writer.writerows(rows[start : start + PIECE])
            piece = out.getvalue()
            out.seek(0)
            out.truncate()
            if start + PIECE >= len(rows) and not text.endswith(("\n", "\r")):
                piece = piece.rstrip("\r\n")  # the last line had no line break: still none
            parts.append(piece.encode(self.encoding, "surrogateescape"))
        return parts

    def _replace(self, content: list[bytes], before: FileStamp | None) -> bool:
        """Atomically put ``content`` in place of the file, unless it changed since ``before``
        (None: the file did not exist)."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.dispatch-tmp")
        try:
            with open(tmp, "wb") as f:
                f.writelines(content)
                f.flush()
                os.fsync(f.fileno())
            try:
                now = os.stat(self.path)
            except FileNotFoundError:
                if before is not None:
                    return False  # mid-save by someone else: read again
                os.replace(tmp, self.path)  # a new working copy
            else:
                if before is None or FileStamp.of(now) != before:
                    return False
                os.chmod(tmp, now.st_mode & 0o7777)
                os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(self.path.parent)
        return True


class ResultsFile(_Coalescer):
    """A sidecar CSV of outcomes, appended to: ``record_id,event,status,call_id,at``.

    Delivery is at least once, so a crash can repeat a line: read it keyed by
    ``(record_id, event)``.
    """

    HEADER = ("record_id", "event", "status", "call_id", "at")

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def _write(self, cells: dict[str, dict[str, str]]) -> None:
        out = io.StringIO(newline="")
        writer = csv.writer(out, lineterminator="\n")
        new = not self.path.exists() or self.path.stat().st_size == 0
        if new:
            writer.writerow(self.HEADER)
        for record_id, values in cells.items():
            writer.writerow(
                [neutralize(record_id), *(neutralize(values[c]) for c in self.HEADER[1:])]
            )
        with open(self.path, "a", encoding="utf-8", newline="") as f:
            f.write(out.getvalue())
            f.flush()
            os.fsync(f.fileno())
        if new:
            _fsync_dir(self.path.parent)


def _split(text: str, delimiter: str, _limit: int | None) -> tuple[list[list[str]], list[int]]:
    """The rows of ``text``, blank ones included, and the line each ends on. A cell over
    csv's field limit is kept like any other (``_limit`` is for readers that flag it)."""
    reader = csv.reader(lines_of(text), delimiter=delimiter)
    rows: list[list[str]] = []
    lines: list[int] = []
    for fields in reader:
        rows.append(fields)
        lines.append(reader.line_num)
    return rows, lines


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
