from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dispatch import Record
from strategies import CsvStrategy

pytestmark = pytest.mark.anyio


def write(tmp_path: Path, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / "leads.csv"
    path.write_bytes(text.encode(encoding))
    return path


async def test_rows_become_records_through_templates(tmp_path: Path) -> None:
    path = write(tmp_path, "id,phone,First Name,plan\nr1,+14155552671,Ada,pro\n")
    strategy = CsvStrategy(
        path,
        greeting="Hi {first_name}",
        metadata={"plan": "{plan}"},
        prompt_vars={"n": "{first_name}"},
    )
    [record] = await strategy.poll()
    assert record == Record(
        id="r1",
        phone="+14155552671",
        greeting="Hi Ada",
        metadata={"plan": "pro"},
        prompt_vars={"n": "Ada"},
    )
    assert strategy.name == "leads"


async def test_bom_crlf_semicolons_and_blank_lines_are_understood(tmp_path: Path) -> None:
    text = "\ufeffID ; Phone\r\n\r\nr1;+14155552671\r\nr2;+14155552672\r\n"
    path = write(tmp_path, text)
    records = await CsvStrategy(path).poll()
    assert [(r.id, r.phone) for r in records] == [("r1", "+14155552671"), ("r2", "+14155552672")]


async def test_without_an_id_column_the_phone_is_the_id_and_the_row_is_metadata(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "phone,name\n+14155552671,Ada\n")
    [record] = await CsvStrategy(path).poll()
    assert record.id == "+14155552671"
    assert record.metadata == {"phone": "+14155552671", "name": "Ada"}


async def test_a_bad_row_is_logged_with_its_line_and_the_rest_still_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(
        tmp_path,
        'id,phone,name\nr1,+14155552671,Ada\n,+14155552672,NoId\nr3\nr4,"+14155552674",Bo\n',
    )
    with caplog.at_level(logging.WARNING):
        records = await CsvStrategy(path, greeting="Hi {name}").poll()
    assert [r.id for r in records] == ["r1", "r4"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("line=3" in m and "id" in m for m in messages)
    assert any("line=4" in m and "no column 'phone'" in m for m in messages)


async def test_a_missing_file_yields_nothing_for_that_poll(tmp_path: Path) -> None:
    assert await CsvStrategy(tmp_path / "gone.csv").poll() == []


async def test_map_row_builds_records_and_may_skip_rows(tmp_path: Path) -> None:
    path = write(tmp_path, "phone,vip\n+14155552671,yes\n+14155552672,no\n")

    def vip_only(row: dict[str, str], line_no: int) -> Record | None:
        return Record(id=f"line{line_no}", phone=row["phone"]) if row["vip"] == "yes" else None

    records = await CsvStrategy(path, map_row=vip_only).poll()
    assert [r.id for r in records] == ["line2"]


def test_a_malformed_template_is_refused_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bad template"):
        CsvStrategy(tmp_path / "x.csv", greeting="Hi {name")
