"""CsvStrategy on hostile files: a cell over csv's field limit is its row's problem only, and a
large file never freezes the event loop while it is parsed."""

from __future__ import annotations

import csv
import gc
import io
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest

from dispatch import Malformed, Record, Removed
from strategies import CsvStrategy, WriteBack
from strategies._csvfile import FIELD_LIMIT, CsvFile, parse_fields

from .test_csv import HEADER, age, append, ids, row, save_by_rename, write

pytestmark = pytest.mark.anyio

T = TypeVar("T")

LONG = "x" * 150_000  # longer than csv's field limit (131,072 characters)
TOO_LONG = f"a cell is longer than {FIELD_LIMIT} characters"


def malformed(items: list[Any]) -> list[Malformed]:
    return [item for item in items if isinstance(item, Malformed)]


# -- the reader ------------------------------------------------------------------------------


async def read_once(path: Path) -> CsvStrategy:
    """A strategy that has read ``path`` as it is now."""
    strategy = CsvStrategy(path)
    await strategy.poll()
    return strategy


@pytest.mark.parametrize(
    ("long_row", "expected"),
    [
        (f"r2,+14155552602,{LONG}\n", Malformed("r2", f"line 3: {TOO_LONG}", "+14155552602", 3)),
        (
            f"{LONG},+14155552602,Bo\n",
            Malformed("line:3", f"line 3: {TOO_LONG}", "+14155552602", 3),
        ),
        (f"r2,+1{LONG},Bo\n", Malformed("r2", f"line 3: {TOO_LONG}", "", 3)),
    ],
    ids=["in-a-field", "in-the-id", "in-the-phone"],
)
async def test_a_cell_over_the_field_limit_makes_only_its_row_malformed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, long_row: str, expected: Malformed
) -> None:
    path = write(tmp_path / "leads.csv", HEADER + row(1) + long_row + row(3))
    with caplog.at_level(logging.WARNING):
        items = await CsvStrategy(path).poll()
    assert ids(items) == ["r1", "r3"]
    assert malformed(items) == [expected]  # named by the cells that fit, never by the long one
    assert any(
        "csv.bad_row" in r.getMessage() and "line=3" in r.getMessage() for r in caplog.records
    )
    assert csv.field_size_limit() == FIELD_LIMIT  # lifted for the parse only


async def test_a_long_quoted_cell_over_many_lines_does_not_swallow_the_rows_after_it(
    tmp_path: Path,
) -> None:
    note = 'Smith, Jr. said ""hi""\r\n' * 8_000  # 176,000 characters once parsed, 8,000 lines
    path = write(
        tmp_path / "leads.csv",
        HEADER + row(1) + f'r2,+14155552602,"{note}"\n' + 'r3,+14155552603,"Cy, Jr."\n'
        ",+14155552699,NoId\n" + row(5),
    )
    items = await CsvStrategy(path).poll()
    assert [(r.id, r.metadata["name"]) for r in items if isinstance(r, Record)] == [
        ("r1", "Ada"),
        ("r3", "Cy, Jr."),
        ("r5", "Ada"),
    ]
    assert [(m.id, m.line, m.detail) for m in malformed(items)] == [
        ("r2", 3, f"line 3: {TOO_LONG}"),
        ("line:8005", 8005, "line 8005: empty id (template '{id}')"),  # lines still counted
    ]


async def test_a_fixed_row_is_dialed_and_an_unchanged_one_is_not_reported_again(
    tmp_path: Path,
) -> None:
    path = write(tmp_path / "leads.csv", HEADER + row(1) + f"r2,+14155552602,{LONG}\n")
    strategy = CsvStrategy(path)
    assert [m.id for m in malformed(await strategy.poll())] == ["r2"]
    assert strategy.read(full=True) == []  # the periodic rescan: nothing changed

    save_by_rename(path, HEADER + row(1) + row(2, "Bo"))
    items = await strategy.poll()
    assert [(r.id, r.metadata["name"]) for r in items if isinstance(r, Record)] == [("r2", "Bo")]
    assert not any(isinstance(i, Removed) for i in items)


async def test_an_appended_row_with_a_long_cell_is_malformed_and_later_appends_still_load(
    tmp_path: Path,
) -> None:
    path = write(tmp_path / "leads.csv", HEADER + row(1))
    strategy = await read_once(path)
    append(path, f"r2,+14155552602,{LONG}\n" + row(3))
    items = await strategy.poll()
    assert ids(items) == ["r3"]
    assert [(m.id, m.line) for m in malformed(items)] == [("r2", 3)]
    append(path, row(4))
    assert ids(await strategy.poll()) == ["r4"]
    assert strategy.file.lines == 5


async def test_a_long_quoted_cell_still_being_written_waits_for_its_closing_quote(
    tmp_path: Path,
) -> None:
    path = write(tmp_path / "leads.csv", HEADER + row(1))
    strategy = await read_once(path)
    append(path, f'r2,+14155552602,"{LONG}\n')
    assert await strategy.poll() == []  # held back, not taken as a finished row
    append(path, 'more"\n' + row(3))
    items = await strategy.poll()
    assert ids(items) == ["r3"]
    assert [(m.id, m.line) for m in malformed(items)] == [("r2", 3)]


async def test_a_cell_of_exactly_the_limit_and_a_long_header_are_read_as_usual(
    tmp_path: Path,
) -> None:
    path = write(tmp_path / "leads.csv", HEADER + f"r1,+14155552601,{'y' * FIELD_LIMIT}\n")
    [record] = await CsvStrategy(path).poll()
    assert isinstance(record, Record)
    assert len(record.metadata["name"]) == FIELD_LIMIT

    path = write(tmp_path / "wide.csv", f"id,phone,{LONG}\n" + row(1) + row(2))
    age(path)
    assert ids(await CsvStrategy(path).poll()) == ["r1", "r2"]


async def test_a_nul_byte_is_a_character_like_any_other(tmp_path: Path) -> None:
    # csv.reader refused a line with NUL before Python 3.11; the field limit is all it refuses
    path = write(tmp_path / "leads.csv", HEADER + row(1) + "r2,+14155552602,B\x00o\n")
    items = await CsvStrategy(path).poll()
    assert [(r.id, r.metadata["name"]) for r in items if isinstance(r, Record)] == [
        ("r1", "Ada"),
        ("r2", "B\x00o"),
    ]


def test_no_parse_runs_while_another_has_the_field_limit_lifted(tmp_path: Path) -> None:
    # Two strategies read in worker threads at once: while one parse has csv's process-global
    # limit lifted, a parse elsewhere would take an over-long cell for a good one.
    other = CsvFile(write(tmp_path / "leads.csv", HEADER + row(1) + f"r2,+14155552602,{LONG}\n"))
    inside, finish = threading.Event(), threading.Event()

    def lifted(limit: int | None) -> None:
        if limit is None:
            raise csv.Error("field larger than field limit (131072)")
        inside.set()
        finish.wait(10)

    holder = threading.Thread(target=parse_fields, args=(lifted,))
    holder.start()
    chunks = []
    reader = threading.Thread(target=lambda: chunks.append(other.read()))
    try:
        assert inside.wait(10)
        assert csv.field_size_limit() > FIELD_LIMIT
        reader.start()
        reader.join(0.5)
        assert reader.is_alive()  # waiting for the lifted parse to finish
    finally:
        finish.set()
        holder.join(10)
        if reader.ident is not None:
            reader.join(10)
    [chunk] = chunks
    assert chunk is not None
    assert chunk.too_long == {1}  # parsed under the normal limit after all
    assert csv.field_size_limit() == FIELD_LIMIT


# -- the write-back --------------------------------------------------------------------------


async def test_the_write_back_keeps_a_long_cell_byte_for_byte(tmp_path: Path) -> None:
    note = 'said "no", twice\n' + LONG
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\n").writerows(
        [["id", "phone", "note"], ["r1", "+14155552601", "a"], ["r2", "+14155552602", note]]
    )
    out.write(row(3))
    path = write(tmp_path / "leads.csv", out.getvalue())
    quoted = ('"' + note.replace('"', '""') + '"').encode()
    strategy = CsvStrategy(path, write_back=WriteBack())
    [bad] = malformed(await strategy.poll())

    await strategy.deliver("on_failed", Record(id="r1", phone="+14155552601"), "busy")
    await strategy.deliver("on_skipped", bad.record(), "malformed")
    await strategy.deliver("on_failed", Record(id="r3", phone="+14155552603"), "no_answer")

    data = path.read_bytes()
    assert data.count(quoted) == 1  # the operator's cell, exactly as it was written
    csv.field_size_limit(len(note) + 1)
    try:
        table = list(csv.reader(io.StringIO(data.decode(), newline="")))
    finally:
        csv.field_size_limit(FIELD_LIMIT)
    assert table == [
        ["id", "phone", "note", "dispatch_status"],
        ["r1", "+14155552601", "a", "failed: busy"],
        ["r2", "+14155552602", note, "skipped: malformed"],
        ["r3", "+14155552603", "Ada", "failed: no_answer"],
    ]


# -- a large file ----------------------------------------------------------------------------

LARGE = 300_000  # rows


@pytest.fixture
def large(tmp_path: Path) -> Path:
    path = tmp_path / "leads.csv"
    with path.open("w") as f:
        f.write("id,phone,first_name,company\n")
        f.writelines(f"lead-{n},+1415{5550000 + n:07d},Ada,Lovelace Labs\n" for n in range(LARGE))
    return path


async def longest_stall(work: Callable[[], Awaitable[T]]) -> tuple[T, float]:
    """``work()``'s result, and the longest the event loop stood still while it ran."""
    # A full collection walks every object alive (the test's 300,000 records among them) in
    # one C call, whenever CPython's counters say so: have it now, not during the measure.
    gc.collect()
    longest, ticks = 0.0, 0
    done = anyio.Event()

    async def tick() -> None:
        nonlocal longest, ticks
        last = time.perf_counter()
        while not done.is_set():
            await anyio.sleep(0.002)
            now = time.perf_counter()
            longest, ticks, last = max(longest, now - last), ticks + 1, now

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(tick)
            result = await work()
            done.set()
    # The ticker measured every gap, the last one (up to the end of the work) included.
    assert ticks >= 1
    return result, longest


async def test_the_event_loop_keeps_running_while_a_large_file_is_read_or_emptied(
    large: Path,
) -> None:
    strategy = CsvStrategy(large, greeting="Hi {first_name}")
    items, longest = await longest_stall(strategy.poll)
    assert len(items) == LARGE
    assert longest < 0.1, f"the event loop stood still for {longest * 1000:.0f} ms"

    save_by_rename(large, "id,phone,first_name,company\n")
    removed, longest = await longest_stall(strategy.poll)
    assert removed == [Removed(record.id) for record in items]  # in the file's order
    assert longest < 0.1, f"the event loop stood still for {longest * 1000:.0f} ms"


async def test_the_event_loop_keeps_running_while_a_large_file_is_written_back(
    large: Path,
) -> None:
    before = large.read_text()
    strategy = CsvStrategy(large, write_back=WriteBack())
    outcome = partial(strategy.deliver, "on_failed", Record(id="lead-7", phone="+1"), "busy")
    _, longest = await longest_stall(outcome)
    assert longest < 0.1, f"the event loop stood still for {longest * 1000:.0f} ms"
    assert large.read_text() == before.replace("company\n", "company,dispatch_status\n", 1).replace(
        "lead-7,+14155550007,Ada,Lovelace Labs\n",
        "lead-7,+14155550007,Ada,Lovelace Labs,failed: busy\n",
    )
