"""CsvStrategy: records from a CSV file that people edit while the daemon runs.

The file is watched (inotify through ``watchfiles``) and polled as a backstop. Reads are
incremental (see :mod:`strategies._csvfile`): an unchanged file costs a ``stat``, appended
rows are read alone, and a rewritten file is diffed by row against the previous read, so a
poll yields only new and changed rows, and :class:`~dispatch.Removed` for deleted ones.

Row keys are the header names, stripped, lower-cased, with inner spaces as underscores
(`` First Name `` -> ``first_name``), so templates stay readable whatever the spreadsheet did.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from dispatch._gc import gc_paused
from dispatch.abc import CallbackName, Malformed, PollItem, Removed, Strategy
from dispatch.record import Record

from ._csvfile import Chunk, CsvFile, header_key, release
from ._csvmap import Bound, Templates
from ._csvwrite import FileWriteBack, ResultsFile, WriteBackError, neutralize
from ._writeback import WriteBack, outcome_status, result_cells

__all__ = ["CsvStrategy", "RowMapper", "WriteBack", "WriteBackError", "neutralize"]

logger = logging.getLogger(__name__)

RowMapper = Callable[[dict[str, str], int], Record | None]
"""``map_row(row, line_no)``: build the row's Record, or return None to leave the row out."""


class CsvStrategy(Strategy):
    """Records from the rows of ``path``, kept in step with the file as people edit it.

    Map rows either with templates over the row's fields (``id="{id}"``,
    ``phone="{phone}"``, ``greeting="Hi {first_name}"``, ``metadata={"crm": "{crm_id}"}``) or
    with ``map_row(row, line_no)``, which may return None to leave a row out (it must not have
    side effects: write-back calls it again to find rows by id). By default the id is the ``id``
    column, or the phone when there is none, and ``metadata`` is the whole row. ``skip_if``
    leaves out rows whose column holds one of the listed values (case-insensitive; ``"*"``:
    any non-empty value), e.g. ``{"do_not_call": ["yes", "x"]}``.

    A row that cannot be mapped is logged with its line number and yielded as
    :class:`~dispatch.Malformed` (skipped with reason ``malformed``, ``on_skipped`` called);
    the other rows are unaffected, and fixing the row gets it dialed. A row whose id repeats an
    earlier row's in the same read is logged and left out. A missing file (an editor in the
    middle of an atomic save) yields nothing and removes nothing.

    ``write_back`` writes outcomes into columns of the same file; ``results_path`` appends them
    to a separate CSV instead (or as well). Either way a failed write is retried from the
    outbox, so no outcome is lost. ``watch`` follows the file with inotify (``poll_interval``
    stays the backstop); ``rescan_interval`` re-reads the whole file now and then to catch an
    edit that left size and time unchanged; ``settle`` is how long a last line without its
    newline waits before it is taken as finished.
    """

    incremental = True

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
        not_before: str | None = None,
        not_after: str | None = None,
        config: Mapping[str, str] | None = None,
        skip_if: Mapping[str, Iterable[str]] | None = None,
        map_row: RowMapper | None = None,
        delimiter: str | None = None,
        encoding: str = "utf-8",
        watch: bool = True,
        settle: float = 1.0,
        rescan_interval: float = 300.0,
        write_back: WriteBack | None = None,
        results_path: str | Path | None = None,
    ) -> None:
        self.path = Path(path)
        super().__init__(name or self.path.stem)
        self.templates = Templates.of(
            id=id,
            phone=phone,
            greeting=greeting,
            metadata=metadata,
            prompt_vars=prompt_vars,
            from_=from_,
            timezone=timezone,
            not_before=not_before,
            not_after=not_after,
            config=config,
            skip_if=skip_if,
        )
        self._bound: Bound | None = None
        self.map_row = map_row
        self.watching = watch
        self.rescan_interval = rescan_interval
        self.file = CsvFile(self.path, encoding=encoding, delimiter=delimiter, settle=settle)
        self.write_back = write_back
        in_place = write_back is not None and write_back.path is None
        self._own_columns = (
            {header_key(c) for c in write_back.columns()} if write_back and in_place else set()
        )
        self._writer = (
            FileWriteBack(
                self.path.parent / write_back.path if write_back.path else self.path,
                write_back,
                self.row_id,
                encoding=self.file.encoding,
                delimiter=delimiter,
                source=None if in_place else self.path,
                id_column=self._id_column,
            )
            if write_back
            else None
        )
        self._results = ResultsFile(Path(results_path)) if results_path is not None else None
        self._rows: dict[int, str] = {}  # row fingerprint -> record id ("" if no record)
        self._header: list[str] | None = None
        self._last_full = 0.0
        self._missing = False

    # -- reading -----------------------------------------------------------------------------

    async def poll(self) -> list[PollItem]:
        rescan = time.monotonic() - self._last_full >= self.rescan_interval
        changed = self.file.changed()  # one stat: cheap enough for the event loop
        if changed is None:
            if not self._missing:
                logger.warning("csv.missing strategy=%s path=%s", self.name, self.path)
            self._missing = True
            return []
        self._missing = False
        if not changed and not rescan:
            return []
        return await anyio.to_thread.run_sync(self.read, rescan)

    def read(self, full: bool = False) -> list[PollItem]:
        """Read what changed in the file (blocking; ``poll`` runs it in a worker thread).

        Returns new and changed rows as records (or :class:`~dispatch.Malformed`) and, after
        a rewrite, :class:`~dispatch.Removed` for rows that are gone. ``full`` re-reads the
        whole file even if it looks unchanged.
        """
        # A first read builds a million long-lived objects; the cyclic GC would walk the
        # growing heap again and again meanwhile (half the time). None of them form cycles.
        with gc_paused():
            chunk = self.file.read(force_full=full)
            if chunk is None:
                return []
            if chunk.full:
                self._last_full = time.monotonic()
            items = self._apply(chunk)
            release(chunk.rows)  # a piece at a time, before the GC is back
            del chunk
        return items

    def _apply(self, chunk: Chunk) -> list[PollItem]:
        header = chunk.header
        own = [i for i, key in enumerate(header) if key in self._own_columns]
        signature = [k for i, k in enumerate(header) if i not in own]
        bound = self._bind(header)
        old = self._rows
        # A rewrite is diffed against the previous read by row fingerprint (our own write-back
        # columns left out); under another header every row counts as changed. Rows found
        # unchanged are popped from `old`, so what is left there afterwards is gone or changed.
        unchanged = old if chunk.full and signature == self._header else {}
        if chunk.full:
            self._rows = {}
        self._header = signature
        rows = self._rows
        items: list[PollItem] = []
        mapped: set[str] = set()
        # A chunk with an over-long cell (rare) is mapped row by row, which refuses that row.
        direct = bound.direct and self.map_row is None and not chunk.too_long
        id_column, phone_column = bound.id_column or 0, bound.phone_column or 0
        width = max(id_column, phone_column)
        deferred, rest = Record.deferred, bound.rest_of_raw
        pop = unchanged.pop if unchanged else None
        add_item, add_mapped = items.append, mapped.add
        for i, fields in enumerate(chunk.rows):
            if not fields or not (fields[0].strip() or "".join(fields).strip()):
                continue  # a blank line
            fingerprint = hash(
                tuple(fields) if not own else tuple(f for j, f in enumerate(fields) if j not in own)
            )
            if fingerprint in rows:
                continue  # the same row twice
            if pop is not None:
                known = pop(fingerprint, None)
                if known is not None:
                    rows[fingerprint] = known
                    continue
            if direct and len(fields) > width:
                # The hot path, inlined: id and phone now, the rest rendered when first used.
                record_id = fields[id_column].strip()
                if record_id and record_id not in mapped:
                    rows[fingerprint] = record_id
                    add_mapped(record_id)
                    phone = fields[phone_column].strip()
                    add_item(deferred(id=record_id, phone=phone, fill=partial(rest, fields)))
                    continue
            too_long = chunk.field_limit if i in chunk.too_long else None
            item = self._map(bound, chunk.line(i), fields, too_long)
            record_id = "" if item is None else item.id
            if record_id in mapped and record_id:
                logger.warning(
                    "csv.duplicate_id strategy=%s line=%d record=%s (an earlier row has this id;"
                    " this one is left out)",
                    self.name,
                    chunk.line(i),
                    record_id,
                )
                record_id, item = "", None
            rows[fingerprint] = record_id
            if item is not None:
                mapped.add(record_id)
                items.append(item)
        if chunk.full:
            # In the previous read's order: sorting a million ids would hold the GIL for 1 s.
            gone = dict.fromkeys(rid for rid in old.values() if rid and rid not in mapped)
            items.extend(map(Removed, gone))
        return items

    def _bind(self, header: list[str]) -> Bound:
        if self._bound is None or self._bound.header != header:
            self._bound = self.templates.bind(header)
        return self._bound

    def _map(
        self, bound: Bound, line: int, fields: list[str], too_long: int | None = None
    ) -> Record | Malformed | None:
        """The row's item. ``too_long``: the reader found a cell longer than that in the row,
        which makes it malformed; its id and phone are taken from the other cells."""
        if too_long is None:
            cells = list(map(str.strip, fields))
        else:
            cells = ["" if len(f) > too_long else f.strip() for f in fields]
        if len(cells) < len(bound.header):
            cells.extend([""] * (len(bound.header) - len(cells)))  # trailing empty cells dropped
        if bound.skip_if and bound.skipped(cells):
            return None
        if too_long is not None:
            return self._malformed(
                bound, line, cells, f"a cell is longer than {too_long} characters"
            )
        try:
            if self.map_row is not None:
                return self.map_row(dict(zip(bound.header, cells, strict=False)), line)
            return bound.record(cells)
        except Exception as exc:  # a bad row, or a bug in map_row: that row only
            return self._malformed(bound, line, cells, _brief(exc))

    def _malformed(self, bound: Bound, line: int, cells: list[str], reason: str) -> Malformed:
        record_id = self._safe_id(bound, cells, line) or f"line:{line}"
        logger.warning(
            "csv.bad_row strategy=%s line=%d record=%s reason=%s",
            self.name,
            line,
            record_id,
            reason,
        )
        phone = cells[bound.phone_index] if bound.phone_index is not None else ""
        return Malformed(record_id, f"line {line}: {reason}", phone=phone, line=line)

    def row_id(self, row: dict[str, str], line: int) -> str | None:
        """The record id a row (keys as in the header) maps to, or None if it maps to none."""
        if self.map_row is not None:
            record = self.map_row(row, line)
            return record.id if record is not None else None
        return self._bind(list(row)).row_id(list(row.values()))

    def _id_column(self, header: list[str]) -> int | None:
        """The column whose cell is the record id as it is (for a header), if there is one."""
        return None if self.map_row is not None else self._bind(header).id_column

    def _safe_id(self, bound: Bound, cells: list[str], line: int) -> str | None:
        try:
            if self.map_row is not None:
                return self.row_id(dict(zip(bound.header, cells, strict=False)), line)
            return bound.row_id(cells)
        except Exception:
            return None

    # -- watching ----------------------------------------------------------------------------

    async def watch(self) -> None:
        if not self.watching:
            return
        from watchfiles import awatch  # imported here: only a watching strategy pays for it

        name = self.path.name

        def ours(_change: object, path: str) -> bool:
            return Path(path).name == name

        directory = self.path.parent.resolve()
        # The watcher blocks in a worker thread, which a cancellation cannot interrupt; the
        # stop event can, so set it the moment this task is cancelled.
        stop = anyio.Event()

        async def follow() -> None:
            # The first (empty) yield after a timeout says the watch is registered: poll once
            # more then, for anything saved between the first poll and that moment.
            watching = False
            async for changes in awatch(
                directory,
                watch_filter=ours,
                debounce=400,
                step=10,
                recursive=False,
                stop_event=stop,
                rust_timeout=500,
                yield_on_timeout=True,
            ):
                if not watching:
                    watching = True
                    logger.info("csv.watching strategy=%s path=%s", self.name, self.path)
                    self.poll_now()
                elif changes:
                    self.poll_now()

        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            try:
                await anyio.sleep_forever()
            finally:
                stop.set()

    # -- outcomes ----------------------------------------------------------------------------

    async def deliver(self, callback: CallbackName, record: Record, *args: Any) -> None:
        if self._writer is not None or self._results is not None:
            status, call_id = outcome_status(callback, args)
            at = datetime.now(UTC).isoformat(timespec="seconds")
            if self._writer is not None:
                assert self.write_back is not None
                if callback == "on_result":  # the answer's columns; the status stays
                    cells = result_cells(args[1], self.write_back.result_columns)
                else:
                    cells = {self.write_back.status_column: status}
                    if self.write_back.call_id_column and call_id:
                        cells[self.write_back.call_id_column] = call_id
                    if self.write_back.time_column:
                        cells[self.write_back.time_column] = at
                if cells:
                    await self._writer.update(record.id, cells)
            if self._results is not None:
                event = callback.removeprefix("on_")
                values = {"event": event, "status": status, "call_id": call_id, "at": at}
                await self._results.update(record.id, values)
        await super().deliver(callback, record, *args)

    def __repr__(self) -> str:
        return f"CsvStrategy(name={self.name!r}, path={str(self.path)!r})"


def _brief(exc: Exception) -> str:
    return str(exc) or type(exc).__name__
