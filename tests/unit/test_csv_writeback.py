"""CsvStrategy's outcomes: written into the operator's file without losing edits, or beside it."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from dispatch import CallResult, Record
from strategies import CsvStrategy, WriteBack, WriteBackError, neutralize
from strategies._csvwrite import FileWriteBack

pytestmark = pytest.mark.anyio

TEXT = (
    "\ufeffid,phone,Name\r\nr1,+14155552601,Ada\r\nr2,+14155552602,Bob\r\n"
    "\r\nr3,+14155552603,Cy\r\n"
)
SPEC = WriteBack(status_column="Status", call_id_column="call_id", time_column="called_at")


def rows(path: Path) -> list[list[str]]:
    text = path.read_bytes().decode("utf-8-sig")
    return [r for r in csv.reader(io.StringIO(text, newline="")) if r]


def rec(record_id: str) -> Record:
    return Record(id=record_id, phone="+14155552600")


@pytest.fixture
def leads(tmp_path: Path) -> Path:
    path = tmp_path / "leads.csv"
    path.write_bytes(TEXT.encode())
    return path


async def test_outcomes_are_written_into_their_rows_and_nothing_else_changes(leads: Path) -> None:
    strategy = CsvStrategy(leads, write_back=SPEC)
    await strategy.deliver("on_dispatched", rec("r1"), "call-1")
    await strategy.deliver("on_completed", rec("r1"), "call-1", "hangup")
    await strategy.deliver("on_failed", rec("r2"), "busy")

    table = rows(leads)
    assert table[0] == ["id", "phone", "Name", "Status", "call_id", "called_at"]
    assert [r[:5] for r in table[1:]] == [
        ["r1", "+14155552601", "Ada", "completed: hangup", "call-1"],
        ["r2", "+14155552602", "Bob", "failed: busy", ""],
        ["r3", "+14155552603", "Cy"],
    ]
    assert table[1][5].endswith("+00:00")
    data = leads.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf")  # BOM, CRLF and the blank line kept
    assert b"\r\n\r\nr3," in data
    assert data.count(b"\r\n") == data.count(b"\n")


async def test_a_user_callback_still_runs_after_the_write_back(leads: Path) -> None:
    strategy = CsvStrategy(leads, write_back=SPEC)
    seen: list[tuple[str, str]] = []
    strategy.on_completed = lambda record, call_id, reason: seen.append((record.id, reason))  # type: ignore[method-assign]
    await strategy.deliver("on_completed", rec("r3"), "call-3", "hangup")
    assert seen == [("r3", "hangup")]
    assert rows(leads)[3][3] == "completed: hangup"


def operator_saves_during_the_merge(
    monkeypatch: pytest.MonkeyPatch, leads: Path, edit: Callable[[str], str]
) -> list[int]:
    """Between our read of the file and our replace, the operator saves ``edit(text)`` once;
    the list returned counts those saves."""
    merge = FileWriteBack._merge
    edits: list[int] = []

    def merge_while_the_operator_saves(self: FileWriteBack, *args: Any) -> Any:
        result = merge(self, *args)
        if not edits:
            edits.append(1)
            tmp = leads.with_name("editor.tmp")
            tmp.write_bytes(edit(leads.read_bytes().decode("utf-8-sig")).encode())
            os.replace(tmp, leads)
        return result

    monkeypatch.setattr(FileWriteBack, "_merge", merge_while_the_operator_saves)
    return edits


async def test_an_operator_edit_during_the_write_back_survives(
    leads: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    strategy = CsvStrategy(leads, write_back=SPEC)
    edits = operator_saves_during_the_merge(
        monkeypatch, leads, lambda text: text.replace("Bob", "Robert") + "r4,+14155552604,Di\r\n"
    )
    await strategy.deliver("on_failed", rec("r2"), "no_answer")
    assert edits == [1]

    assert [r[:4] for r in rows(leads)[1:]] == [
        ["r1", "+14155552601", "Ada"],
        ["r2", "+14155552602", "Robert", "failed: no_answer"],
        ["r3", "+14155552603", "Cy"],
        ["r4", "+14155552604", "Di"],
    ]


async def test_a_file_that_never_stops_changing_fails_the_delivery(
    leads: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    strategy = CsvStrategy(leads, write_back=WriteBack(attempts=3))
    merge = FileWriteBack._merge

    def always_edited(self: FileWriteBack, *args: Any) -> Any:
        result = merge(self, *args)
        with open(leads, "a", encoding="utf-8") as f:
            f.write("r9,+14155552609,Zed\r\n")
        return result

    monkeypatch.setattr(FileWriteBack, "_merge", always_edited)
    with pytest.raises(WriteBackError, match="kept changing over 3 attempts"):
        await strategy.deliver("on_failed", rec("r1"), "busy")
    assert "failed" not in leads.read_text()
    assert not [p for p in leads.parent.iterdir() if "dispatch-tmp" in p.name]


async def test_a_missing_file_fails_the_delivery_so_the_outbox_retries_it(leads: Path) -> None:
    strategy = CsvStrategy(leads, write_back=SPEC)
    leads.unlink()
    with pytest.raises(WriteBackError, match="FileNotFoundError"):
        await strategy.deliver("on_failed", rec("r1"), "busy")


async def test_cells_we_write_cannot_run_as_formulas(leads: Path) -> None:
    strategy = CsvStrategy(leads, write_back=SPEC)
    await strategy.deliver("on_completed", rec("r1"), '=HYPERLINK("http://x")', "hangup")
    await strategy.deliver("on_failed", rec("r2"), "-1+1")
    table = rows(leads)
    assert table[1][4] == '\'=HYPERLINK("http://x")'
    assert table[2][3] == "failed: -1+1"  # not first in its cell: harmless
    assert [neutralize(v) for v in ("=1", "+1", "-1", "@x", "\tx", "ok", "")] == [
        "'=1",
        "'+1",
        "'-1",
        "'@x",
        "'\tx",
        "ok",
        "",
    ]


async def test_our_own_write_back_does_not_make_rows_look_changed(leads: Path) -> None:
    strategy = CsvStrategy(leads, write_back=SPEC)
    assert len(await strategy.poll()) == 3
    await strategy.deliver("on_completed", rec("r1"), "call-1", "hangup")
    assert await strategy.poll() == []
    await strategy.deliver("on_completed", rec("r2"), "call-2", "hangup")
    assert await strategy.poll() == []


async def test_concurrent_outcomes_share_one_rewrite(
    leads: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    strategy = CsvStrategy(leads, write_back=SPEC)
    replace = FileWriteBack._replace
    writes = 0

    def counting(self: FileWriteBack, *args: Any) -> bool:
        nonlocal writes
        writes += 1
        return replace(self, *args)

    monkeypatch.setattr(FileWriteBack, "_replace", counting)
    async with anyio.create_task_group() as tg:
        for record_id in ("r1", "r2", "r3"):
            tg.start_soon(strategy.deliver, "on_failed", rec(record_id), "busy")
    assert [r[3] for r in rows(leads)[1:]] == ["failed: busy"] * 3
    assert writes == 1


async def test_an_unknown_id_is_logged_and_the_file_left_alone(
    leads: Path, caplog: pytest.LogCaptureFixture
) -> None:
    strategy = CsvStrategy(leads, write_back=SPEC)
    before = leads.read_bytes()
    await strategy.deliver("on_failed", rec("deleted-row"), "busy")
    assert leads.read_bytes() == before
    assert any("csv.write_back_unmatched" in r.getMessage() for r in caplog.records)


async def test_rows_that_map_to_no_record_do_not_stop_the_write_back(tmp_path: Path) -> None:
    path = tmp_path / "leads.csv"
    path.write_text("id,phone,name\nr1,+14155552601,Ada\n,+14155552602,NoId\n")

    def picky(row: dict[str, str], line_no: int) -> Record:
        if not row["id"]:
            raise ValueError("no id")
        return Record(id=row["id"], phone=row["phone"])

    for strategy in (
        CsvStrategy(path, write_back=SPEC),
        CsvStrategy(path, map_row=picky, write_back=SPEC),
    ):
        await strategy.deliver("on_failed", rec("r1"), "busy")
        assert [r[:4] for r in rows(path)[1:]] == [
            ["r1", "+14155552601", "Ada", "failed: busy"],
            ["", "+14155552602", "NoId"],
        ]


async def test_a_results_file_gets_one_line_per_outcome(leads: Path) -> None:
    results = leads.with_name("results.csv")
    strategy = CsvStrategy(leads, results_path=results)
    before = leads.read_bytes()
    await strategy.deliver("on_dispatched", rec("r1"), "call-1")
    await strategy.deliver("on_completed", rec("r1"), "call-1", "hangup")
    await strategy.deliver("on_skipped", rec("@r2"), "invalid_phone")

    assert leads.read_bytes() == before  # the operator's file is not touched
    table = rows(results)
    assert table[0] == ["record_id", "event", "status", "call_id", "at"]
    assert [r[:4] for r in table[1:]] == [
        ["r1", "dispatched", "dispatched", "call-1"],
        ["r1", "completed", "completed: hangup", "call-1"],
        ["'@r2", "skipped", "skipped: invalid_phone", ""],
    ]


ANSWER = CallResult(
    "confirm_appointment",
    {"status": "reschedule", "notes": "=after 5", "slots": [1, 2]},
    datetime(2026, 1, 5, 15, 0, tzinfo=UTC),
)
RESULTS = WriteBack(
    status_column="Status",
    result_columns={"status": "Appointment", "notes": "Notes", "slots": "Slots"},
)


async def test_results_go_into_their_columns_added_to_the_file_and_the_status_stays(
    leads: Path,
) -> None:
    strategy = CsvStrategy(leads, write_back=RESULTS)
    await strategy.deliver("on_dispatched", rec("r2"), "call-2")
    await strategy.deliver("on_result", rec("r2"), "call-2", ANSWER)
    table = rows(leads)
    assert table[0] == ["id", "phone", "Name", "Status", "Appointment", "Notes", "Slots"]
    assert table[2] == [
        "r2", "+14155552602", "Bob", "dispatched", "reschedule", "'=after 5", "[1, 2]"
    ]  # fmt: skip
    await strategy.deliver("on_completed", rec("r2"), "call-2", "hangup")
    assert rows(leads)[2][3:5] == ["completed: hangup", "reschedule"]


async def test_an_operator_edit_during_a_result_write_survives(
    leads: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    strategy = CsvStrategy(leads, write_back=RESULTS)
    edits = operator_saves_during_the_merge(
        monkeypatch, leads, lambda text: text.replace("Ada", "Augusta")
    )
    await strategy.deliver("on_result", rec("r1"), "call-1", ANSWER)
    assert edits == [1]
    assert rows(leads)[1][:5] == ["r1", "+14155552601", "Augusta", "", "reschedule"]


async def test_a_working_copy_follows_the_source_and_leaves_it_untouched(
    leads: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "out" / "leads.results.csv"
    copy.parent.mkdir()
    spec = WriteBack(
        status_column="Status", result_columns={"status": "Appointment"}, path=str(copy)
    )
    strategy = CsvStrategy(leads, write_back=spec)
    await strategy.deliver("on_result", rec("r1"), "call-1", ANSWER)
    await strategy.deliver("on_completed", rec("r1"), "call-1", "hangup")
    assert leads.read_bytes() == TEXT.encode()  # the source is only read
    # The operator adds a row and fixes a name: the copy takes both, and keeps what we wrote.
    leads.write_bytes(TEXT.replace("Bob", "Robert").encode() + b"r4,+14155552604,Di\r\n")
    await strategy.deliver("on_failed", rec("r4"), "busy")
    assert [r[:5] for r in rows(copy)] == [
        ["id", "phone", "Name", "Status", "Appointment"],
        ["r1", "+14155552601", "Ada", "completed: hangup", "reschedule"],
        ["r2", "+14155552602", "Robert"],
        ["r3", "+14155552603", "Cy"],
        ["r4", "+14155552604", "Di", "failed: busy", ""],
    ]


async def test_a_working_copy_keeps_the_outcomes_of_rows_that_left_the_source(
    leads: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "leads.results.csv"
    spec = WriteBack(status_column="Status", path=str(copy))
    strategy = CsvStrategy(leads, write_back=spec)
    await strategy.deliver("on_completed", rec("r2"), "call-2", "hangup")
    leads.write_bytes(TEXT.replace("r2,+14155552602,Bob\r\n", "").encode())  # r2 deleted
    await strategy.deliver("on_failed", rec("r3"), "busy")
    assert [r[:4] for r in rows(copy)] == [
        ["id", "phone", "Name", "Status"],
        ["r1", "+14155552601", "Ada"],
        ["r3", "+14155552603", "Cy", "failed: busy"],
        ["r2", "+14155552602", "Bob", "completed: hangup"],
    ]
