"""CsvStrategy's reading: templates, the formats spreadsheets write, and a file edited live."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from dispatch import Malformed, Record, Removed
from strategies import CsvStrategy

pytestmark = pytest.mark.anyio

HEADER = "id,phone,name\n"


def row(n: int, name: str = "Ada") -> str:
    return f"r{n},+1415555{2600 + n:04d},{name}\n"


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8", newline="") as f:
        f.write(text)


def save_by_rename(path: Path, text: str) -> None:
    """What LibreOffice, Excel and most editors do: write a new file, rename it over."""
    tmp = path.with_name(".~lock." + path.name)
    tmp.write_text(text, encoding="utf-8", newline="")
    os.replace(tmp, path)


def age(path: Path, seconds: float = 10.0) -> None:
    """Pretend nobody has touched the file for a while (file times are wall time)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * 1e9)))


def ids(items: list[Any]) -> list[str]:
    return [item.id for item in items if isinstance(item, Record)]


@pytest.fixture
def leads(tmp_path: Path) -> Path:
    return write(tmp_path / "leads.csv", HEADER + row(1) + row(2))


class CountingReads(CsvStrategy):
    reads = 0

    def read(self, full: bool = False) -> list[Any]:
        self.reads += 1
        return super().read(full)


# -- mapping -------------------------------------------------------------------------------


async def test_rows_become_records_through_templates(tmp_path: Path) -> None:
    path = write(
        tmp_path / "leads.csv",
        "id,phone,First Name,plan,caller,tz\nr1,+14155552671,Ada,pro,+14155550000,Europe/Rome\n",
    )
    strategy = CsvStrategy(
        path,
        greeting="Hi {first_name}",
        metadata={"plan": "{plan}"},
        prompt_vars={"n": "{first_name}"},
        from_="{caller}",
        timezone="{tz}",
    )
    [record] = await strategy.poll()
    assert record == Record(
        id="r1",
        phone="+14155552671",
        greeting="Hi Ada",
        metadata={"plan": "pro"},
        prompt_vars={"n": "Ada"},
        from_="+14155550000",
        timezone="Europe/Rome",
    )
    assert strategy.name == "leads"


async def test_without_an_id_column_the_phone_is_the_id_and_the_row_is_metadata(
    tmp_path: Path,
) -> None:
    path = write(tmp_path / "leads.csv", "phone,name\n+14155552671,Ada\n")
    [record] = await CsvStrategy(path).poll()
    assert isinstance(record, Record)
    assert record.id == "+14155552671"
    assert record.metadata == {"phone": "+14155552671", "name": "Ada"}


async def test_map_row_builds_records_and_may_leave_rows_out(tmp_path: Path) -> None:
    path = write(tmp_path / "leads.csv", "phone,vip\n+14155552671,yes\n+14155552672,no\n")

    def vip_only(row: dict[str, str], line_no: int) -> Record | None:
        return Record(id=f"line{line_no}", phone=row["phone"]) if row["vip"] == "yes" else None

    assert ids(await CsvStrategy(path, map_row=vip_only).poll()) == ["line2"]


async def test_skip_if_leaves_out_matching_rows_until_they_stop_matching(tmp_path: Path) -> None:
    path = write(
        tmp_path / "leads.csv",
        "id,phone,Do Not Call,note\nr1,+14155552671,YES,\nr2,+14155552672,,\nr3,+14155552673,,x\n",
    )
    strategy = CsvStrategy(path, skip_if={"do_not_call": ["yes"], "note": ["*"]})
    assert ids(await strategy.poll()) == ["r2"]

    save_by_rename(path, "id,phone,Do Not Call,note\nr1,+14155552671,,\nr2,+14155552672,yes,\n")
    items = await strategy.poll()
    assert ids(items) == ["r1"]
    assert Removed("r2") in items  # the operator marked it: withdrawn if not dialed yet


def test_a_malformed_template_is_refused_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bad template"):
        CsvStrategy(tmp_path / "x.csv", greeting="Hi {name")


async def test_a_bad_row_is_reported_with_its_line_and_the_good_rows_still_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(
        tmp_path / "leads.csv",
        'id,phone,name\nr1,+14155552671,Ada\n,+14155552672,NoId\nr3,+1415,"Bo",\nr4,"+14155552674",Bo\n',
    )
    with caplog.at_level(logging.WARNING):
        items = await CsvStrategy(path, greeting="Hi {name}", phone="{phone}{extra}").poll()
    assert ids(items) == []  # {extra} is no column: every row is malformed...
    assert [(m.id, m.line) for m in items if isinstance(m, Malformed)] == [
        ("r1", 2),
        ("line:3", 3),
        ("r3", 4),
        ("r4", 5),
    ]
    items = await CsvStrategy(path, greeting="Hi {name}").poll()
    assert ids(items) == ["r1", "r3", "r4"]  # ...and with a good template only the empty id is
    [bad] = [m for m in items if isinstance(m, Malformed)]
    assert bad == Malformed("line:3", "line 3: empty id (template '{id}')", "+14155552672", 3)
    messages = [r.getMessage() for r in caplog.records]
    assert any("csv.bad_row" in m and "line=3" in m for m in messages)


async def test_a_raising_map_row_fails_that_row_only(tmp_path: Path) -> None:
    path = write(tmp_path / "leads.csv", HEADER + row(1) + row(2))

    def picky(row: dict[str, str], line_no: int) -> Record:
        if row["id"] == "r1":
            raise RuntimeError("CRM lookup failed")
        return Record(id=row["id"], phone=row["phone"])

    items = await CsvStrategy(path, map_row=picky).poll()
    assert ids(items) == ["r2"]
    assert [m.detail for m in items if isinstance(m, Malformed)] == ["line 2: CRM lookup failed"]


async def test_a_repeated_id_keeps_the_first_row(tmp_path: Path) -> None:
    path = write(tmp_path / "leads.csv", HEADER + row(1, "first") + row(1, "second") + row(2))
    items = await CsvStrategy(path).poll()
    assert [(r.id, r.metadata["name"]) for r in items if isinstance(r, Record)] == [
        ("r1", "first"),
        ("r2", "Ada"),
    ]


# -- what spreadsheets and editors write ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "delimiter"),
    [
        ("\ufeffID ; Phone \r\n\r\nr1;+14155552671\r\nr2;+14155552672\r\n", None),
        ("id\tphone\nr1\t+14155552671\n\n\nr2\t+14155552672\n", None),
        ("Id,  PHONE\nr1,+14155552671\nr2,+14155552672\n", None),
        ("id|phone\nr1|+14155552671\nr2|+14155552672\n", "|"),
    ],
    ids=["bom-crlf-semicolon-blank-lines", "tabs", "odd-header", "configured"],
)
async def test_bom_crlf_delimiters_blank_lines_and_odd_headers(
    tmp_path: Path, text: str, delimiter: str | None
) -> None:
    path = write(tmp_path / "leads.csv", text)
    items = await CsvStrategy(path, delimiter=delimiter).poll()
    assert [(r.id, r.phone) for r in items if isinstance(r, Record)] == [
        ("r1", "+14155552671"),
        ("r2", "+14155552672"),
    ]


async def test_quoted_fields_keep_their_commas_newlines_and_quotes(tmp_path: Path) -> None:
    path = write(
        tmp_path / "leads.csv",
        'id,phone,note\r\nr1,+14155552671,"Smith, Jr.\r\nsecond line ""quoted"""\r\n'
        "r2,+14155552672,x\r\n",
    )
    items = await CsvStrategy(path).poll()
    assert [r.metadata["note"] for r in items if isinstance(r, Record)] == [
        'Smith, Jr.\r\nsecond line "quoted"',
        "x",
    ]


async def test_bytes_that_are_not_utf8_do_not_stop_the_read(tmp_path: Path) -> None:
    path = tmp_path / "leads.csv"
    path.write_bytes(b"id,phone,name\nr1,+14155552671,Jos\xe9\nr2,+14155552672,Ann\n")
    items = await CsvStrategy(path).poll()
    assert [r.metadata["name"] for r in items if isinstance(r, Record)] == ["Jos\ufffd", "Ann"]


async def test_another_encoding_can_be_configured(tmp_path: Path) -> None:
    path = write(tmp_path / "leads.csv", "id,phone,name\nr1,+14155552671,José\n", "cp1252")
    [record] = await CsvStrategy(path, encoding="cp1252").poll()
    assert isinstance(record, Record)
    assert record.metadata["name"] == "José"


# -- a file edited while it is read -------------------------------------------------------


async def test_an_unchanged_file_costs_a_stat_not_a_read(leads: Path) -> None:
    strategy = CountingReads(leads)
    assert ids(await strategy.poll()) == ["r1", "r2"]
    assert await strategy.poll() == []
    assert await strategy.poll() == []
    assert strategy.reads == 1


async def test_appended_rows_are_read_alone(leads: Path) -> None:
    strategy = CsvStrategy(leads)
    await strategy.poll()
    offset = strategy.file.offset
    append(leads, row(3) + row(4))
    assert ids(await strategy.poll()) == ["r3", "r4"]
    assert strategy.file.offset == leads.stat().st_size > offset
    assert strategy.file.lines == 5


async def test_a_partial_last_line_waits_for_the_writer_to_finish_it(leads: Path) -> None:
    strategy = CsvStrategy(leads)
    await strategy.poll()
    append(leads, "r3,+1415")  # the writer has not finished the row
    assert await strategy.poll() == []
    append(leads, "5552603,Cy\nr4,+14155552604")
    assert ids(await strategy.poll()) == ["r3"]
    age(leads)  # a last line without newline, left alone: it is finished after all
    items = await strategy.poll()
    assert [(r.id, r.phone) for r in items if isinstance(r, Record)] == [("r4", "+14155552604")]


async def test_a_quoted_field_cut_at_a_newline_waits_for_its_closing_quote(leads: Path) -> None:
    strategy = CsvStrategy(leads)
    await strategy.poll()
    append(leads, 'r3,+14155552603,"Line one\n')
    assert await strategy.poll() == []
    append(leads, 'line two"\n')
    [record] = await strategy.poll()
    assert isinstance(record, Record)
    assert record.metadata["name"] == "Line one\nline two"
    assert strategy.file.lines == 5


async def test_an_in_place_edit_yields_the_changed_row_only(leads: Path) -> None:
    strategy = CsvStrategy(leads)
    await strategy.poll()
    inode = leads.stat().st_ino
    with open(leads, "r+", encoding="utf-8") as f:  # same size, same inode: a digit fixed
        f.write((HEADER + row(1) + row(2, "Bob")).replace("+14155552602", "+14155552699"))
    assert leads.stat().st_ino == inode
    items = await strategy.poll()
    assert [(r.id, r.phone) for r in items if isinstance(r, Record)] == [("r2", "+14155552699")]
    assert not any(isinstance(i, Removed) for i in items)


async def test_an_atomic_rename_save_is_diffed_by_id(leads: Path) -> None:
    strategy = CsvStrategy(leads)
    await strategy.poll()
    save_by_rename(leads, HEADER + row(2, "Bea") + row(3) + row(1))  # reordered, edited, added
    items = await strategy.poll()
    assert ids(items) == ["r2", "r3"]
    assert not any(isinstance(i, Removed) for i in items)

    save_by_rename(leads, HEADER + row(3))
    assert sorted(await strategy.poll(), key=str) == [Removed("r1"), Removed("r2")]


async def test_truncation_and_a_half_saved_file_settle_into_the_right_records(leads: Path) -> None:
    strategy = CsvStrategy(leads)
    await strategy.poll()
    write(leads, HEADER + row(1) + "r2,+14155")  # truncated and half rewritten
    assert await strategy.poll() == [Removed("r2")]
    write(leads, HEADER + row(1) + row(2) + row(3))  # the save completes
    assert ids(await strategy.poll()) == ["r2", "r3"]
    write(leads, "")  # emptied
    assert sorted(await strategy.poll(), key=str) == [
        Removed("r1"),
        Removed("r2"),
        Removed("r3"),
    ]


async def test_a_file_missing_during_a_save_removes_nothing(
    leads: Path, caplog: pytest.LogCaptureFixture
) -> None:
    strategy = CsvStrategy(leads)
    await strategy.poll()
    text = leads.read_text()
    leads.unlink()
    with caplog.at_level(logging.WARNING):
        assert await strategy.poll() == []
        assert await strategy.poll() == []
    assert sum("csv.missing" in r.getMessage() for r in caplog.records) == 1
    write(leads, text + row(3))
    assert ids(await strategy.poll()) == ["r3"]


async def test_a_header_change_yields_every_row_again(leads: Path) -> None:
    strategy = CsvStrategy(leads)
    await strategy.poll()
    save_by_rename(leads, "id,phone,name,plan\nr1,+14155552601,Ada,pro\nr2,+14155552602,Ada,\n")
    assert ids(await strategy.poll()) == ["r1", "r2"]


async def test_the_periodic_rescan_finds_an_edit_a_stat_cannot_see(leads: Path) -> None:
    strategy = CsvStrategy(leads, rescan_interval=3600)
    await strategy.poll()
    st = leads.stat()
    with open(leads, "r+", encoding="utf-8") as f:
        f.write(HEADER + row(1, "Zed") + row(2))
    os.utime(leads, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same time
    assert await strategy.poll() == []
    assert ids(strategy.read(full=True)) == ["r1"]


async def test_a_template_that_can_fail_per_row_is_checked_at_read_time(tmp_path: Path) -> None:
    path = write(tmp_path / "leads.csv", "id,phone,n\nr1,+14155552601,7\nr2,+14155552602,x\n")
    items = await CsvStrategy(path, greeting="{n:>3d} days").poll()
    assert [type(i).__name__ for i in items] == ["Malformed", "Malformed"]  # cells are text
    items = await CsvStrategy(path, greeting="{n:>3} days").poll()
    assert [r.greeting for r in items if isinstance(r, Record)] == ["7 days", "x days"]


async def test_line_numbers_count_blank_lines_with_or_without_quotes(tmp_path: Path) -> None:
    plain = "\nid,phone\n\nr1,+14155552601\n,+14155552602\n\n\nr3,+14155552603\n,+1415\n"
    quoted = plain.replace("r3,+14155552603", 'r3,"+14155552603"')
    for text in (plain, quoted):
        path = write(tmp_path / "leads.csv", text)
        items = await CsvStrategy(path).poll()
        assert ids(items) == ["r1", "r3"]
        assert [m.line for m in items if isinstance(m, Malformed)] == [5, 9]
        append(path, "\n,+1999\nr4,+14155552604\n")
        strategy = CsvStrategy(path)
        await strategy.poll()
        append(path, ",+2000\n")
        [late] = await strategy.poll()
        assert isinstance(late, Malformed)
        assert late.line == 13


async def test_times_and_dial_options_come_from_columns(tmp_path: Path) -> None:
    path = write(
        tmp_path / "leads.csv",
        "id,phone,appt,tz,amd\n"
        "r1,+14155552601,2026-12-10 09:30,America/Chicago,yes\n"
        "r2,+14155552602,2026-12-10T09:30:00-05:00,,\n"
        "r3,+14155552603,,,\n",
    )
    strategy = CsvStrategy(
        path,
        timezone="{tz}",
        not_before="{appt}",
        not_after="{appt}",
        config={"detect_turn_end": "{amd}"},
    )
    r1, r2, r3 = await strategy.poll()
    assert isinstance(r1, Record)
    assert isinstance(r2, Record)
    assert isinstance(r3, Record)
    chicago = datetime(2026, 12, 10, 9, 30, tzinfo=ZoneInfo("America/Chicago"))
    assert r1.not_before == r1.not_after == chicago  # the row's own zone
    assert r1.config == {"detect_turn_end": "yes"}
    assert r2.not_after == datetime(2026, 12, 10, 14, 30, tzinfo=UTC)  # its offset
    assert r2.config == {}  # an empty cell leaves the agent's default
    assert (r3.not_before, r3.not_after) == (None, None)


async def test_a_time_that_is_not_one_or_has_no_zone_makes_only_its_row_malformed(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path / "leads.csv",
        "id,phone,appt\nr1,+14155552601,next tuesday\nr2,+14155552602,2026-12-10 09:30\n"
        "r3,+14155552603,2026-12-10T09:30Z\n",
    )
    bad, naive, good = await CsvStrategy(path, not_after="{appt}").poll()
    assert isinstance(bad, Malformed)
    assert "not_after 'next tuesday' is not a date and time" in bad.detail
    assert isinstance(naive, Malformed)
    assert "has no UTC offset and the row no timezone" in naive.detail
    assert isinstance(good, Record)
    assert good.not_after == datetime(2026, 12, 10, 9, 30, tzinfo=UTC)
