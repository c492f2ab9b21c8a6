"""`dispatch dnc` end to end: the real console script in a subprocess, on a copy of the example."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from tests.acceptance.test_cli import FAST, Daemon, dispatch, query

pytestmark = pytest.mark.acceptance


def dnc(*args: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    done = dispatch("dnc", *args, "-c", "config.toml", cwd=cwd, env=env)
    return done.returncode, done.stdout, done.stderr


def listed(cwd: Path, env: dict[str, str] | None = None) -> list[dict[str, str | None]]:
    code, out, err = dnc("list", "--json", cwd=cwd, env=env)
    assert code == 0, err
    rows: list[dict[str, str | None]] = json.loads(out)
    return rows


def one_line(stderr: str) -> str:
    """A first-contact mistake is told in one line, never with a traceback."""
    assert "Traceback" not in stderr
    [line] = stderr.splitlines()
    return line


def test_add_list_and_remove_report_each_number_and_exit_2_for_an_invalid_one(
    workdir: Path,
) -> None:
    # The store does not exist yet: add creates and migrates it.
    code, out, err = dnc("add", "+14155552671", "(415) 555-2672", "abc", "--reason", "asked",
                         cwd=workdir)  # fmt: skip
    assert code == 2
    assert out.splitlines() == ["added +14155552671", "added +14155552672 (from '(415) 555-2672')"]
    assert one_line(err) == "dispatch: invalid phone 'abc': not a phone number"

    code, out, err = dnc("add", "415-555-2671", "--reason", "again", cwd=workdir)
    assert code == 0, err
    assert out.startswith("already listed +14155552671 (from '415-555-2671'), left as it was (")
    assert "source cli, reason 'asked'" in out

    rows = listed(workdir)
    assert [(r["phone"], r["source"], r["reason"]) for r in rows] == [
        ("+14155552671", "cli", "asked"),
        ("+14155552672", "cli", "asked"),
    ]
    code, table, _ = dnc("list", cwd=workdir)
    assert code == 0
    lines = table.splitlines()
    assert lines[0].split() == ["phone", "added", "at", "(UTC)", "source", "strategy", "record",
                                "reason"]  # fmt: skip
    assert lines[1].startswith("+14155552671  ")
    assert lines[-1] == "2 numbers"

    code, out, err = dnc("remove", "+14155552671", "+14155552699", cwd=workdir)
    assert code == 0, err
    assert out.splitlines() == ["removed +14155552671", "not listed +14155552699"]
    assert [r["phone"] for r in listed(workdir)] == ["+14155552672"]
    code, out, err = dnc("remove", "nope", cwd=workdir)
    assert (code, out) == (2, "")
    assert one_line(err) == "dispatch: invalid phone 'nope': not a phone number"


def test_list_export_and_remove_on_a_missing_store_say_so_and_create_nothing(
    workdir: Path,
) -> None:
    for command in (["list"], ["export"], ["remove", "+14155552671"]):
        code, out, err = dnc(*command, cwd=workdir)
        assert (code, out) == (1, "")
        assert one_line(err).startswith(f"dispatch: no store at {workdir / 'dispatch.db'}: ")
    assert not (workdir / "dispatch.db").exists()
    code, out, err = dnc(
        "list", cwd=workdir, env={"DISPATCH_STORE__URL": "postgresql://x@127.0.0.1:9/db"}
    )
    assert code == 1
    assert one_line(err).startswith(
        "dispatch: store unreachable while reading the do-not-call list"
    )


def test_import_skips_bad_rows_naming_their_lines_and_adds_the_rest(workdir: Path) -> None:
    # Excel's "CSV UTF-8" in a locale that separates with ';': a BOM, a capitalised header.
    (workdir / "numbers.csv").write_bytes(
        b"\xef\xbb\xbfName;Number;Reason\n"
        b"Ada;+14155552671;opted out by mail\n"  # line 2
        b"\n"  # a blank line is no row
        b"Bob;(415) 555-2672;\n"  # line 4: no reason of its own, gets --reason
        b"Cy;not a number;x\n"  # line 5
        b'"Di\nDo";+1 415 555 2673;two lines\n'  # lines 6-7
        b"Ed;;empty\n"  # line 8
        b"Flo;415 555 2671;repeated\n"  # line 9: Ada's number again
        b"Gus;12;short\n"  # line 10
    )
    dnc("add", "+14155552673", cwd=workdir)  # already listed before the import

    code, out, err = dnc("import", "numbers.csv", "--reason", "complaint", cwd=workdir)

    assert code == 2
    assert out == "imported 2 numbers (1 already listed, 3 invalid, 1 repeated in the file)\n"
    assert err.splitlines() == [
        "dispatch: numbers.csv line 5: invalid phone 'not a number': not a phone number",
        "dispatch: numbers.csv line 8: no phone number",
        "dispatch: numbers.csv line 10: invalid phone '12': not a valid number",
    ]
    assert {r["phone"]: (r["source"], r["reason"]) for r in listed(workdir)} == {
        "+14155552671": ("import", "opted out by mail"),
        "+14155552672": ("import", "complaint"),
        "+14155552673": ("cli", None),  # left as it was
    }


def test_a_plain_list_of_numbers_without_a_header_is_read_whole(workdir: Path) -> None:
    (workdir / "numbers.csv").write_text("+14155552671\r\n(415) 555-2672\r\n")
    code, out, err = dnc("import", "numbers.csv", cwd=workdir)
    assert code == 0
    assert out == "imported 2 numbers (0 already listed, 0 invalid)\n"
    assert "no header" in one_line(err)


def test_without_a_phone_column_the_first_is_read_and_the_command_says_which(
    workdir: Path,
) -> None:
    (workdir / "numbers.csv").write_text("Telefon,Grund\n+14155552671,x\n")
    code, out, err = dnc("import", "numbers.csv", cwd=workdir)
    assert code == 0
    assert out == "imported 1 number (0 already listed, 0 invalid)\n"
    assert one_line(err) == (
        "dispatch: numbers.csv: no column named phone or number, reading the first ('Telefon')"
    )


def test_past_50_bad_rows_only_how_many_more_is_reported(workdir: Path) -> None:
    (workdir / "numbers.csv").write_text("phone\n" + "nope\n" * 60 + "+14155552671\n")
    code, out, err = dnc("import", "numbers.csv", cwd=workdir)
    assert (code, out) == (2, "imported 1 number (0 already listed, 60 invalid)\n")
    lines = err.splitlines()
    assert len(lines) == 51
    assert lines[0] == "dispatch: numbers.csv line 2: invalid phone 'nope': not a phone number"
    assert lines[49].startswith("dispatch: numbers.csv line 51: ")
    assert lines[50] == "dispatch: numbers.csv: 10 more invalid rows not shown"


def test_an_export_imports_again_into_another_store(workdir: Path, tmp_path: Path) -> None:
    dnc("add", "+14155552671", "+442071838750", "--reason", 'said "never", twice', cwd=workdir)
    # An opt-out the daemon recorded, with its strategy and record.
    (workdir / "optouts.csv").write_text(
        "phone,strategy,record_id,reason\n+14155552680,reminders,appt-012,cancelled\n"
    )
    dnc("import", "optouts.csv", cwd=workdir)
    code, out, err = dnc("export", "dnc.csv", cwd=workdir)
    assert code == 0, err
    assert out == "exported 3 numbers to dnc.csv\n"
    code, stdout_export, _ = dnc("export", cwd=workdir)
    assert code == 0
    assert stdout_export == (workdir / "dnc.csv").read_text()
    with open(workdir / "dnc.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["phone", "added_at", "source", "strategy", "record_id", "reason"]
    assert [r["phone"] for r in rows] == ["+14155552671", "+14155552680", "+442071838750"]

    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(workdir / "config.toml", other / "config.toml")
    code, out, err = dnc("import", str(workdir / "dnc.csv"), cwd=other)
    assert code == 0, err
    assert out == "imported 3 numbers (0 already listed, 0 invalid)\n"
    again = {r["phone"]: r for r in listed(other)}
    for row in rows:
        moved = again[row["phone"]]
        assert moved["source"] == "import"
        assert (moved["strategy"] or "", moved["record_id"] or "", moved["reason"] or "") == (
            row["strategy"],
            row["record_id"],
            row["reason"],
        )
    code, out, _ = dnc("import", str(workdir / "dnc.csv"), cwd=other)
    assert (code, out) == (0, "imported 0 numbers (3 already listed, 0 invalid)\n")


def test_an_export_replaces_its_file_only_once_complete_and_an_unwritable_one_is_one_line(
    workdir: Path,
) -> None:
    dnc("add", "+14155552671", cwd=workdir)
    (workdir / "dnc.csv").write_text("old\n")
    code, _, err = dnc("export", "dnc.csv", cwd=workdir)
    assert code == 0, err
    assert (workdir / "dnc.csv").read_text().startswith("phone,added_at,")
    assert sorted(p.name for p in workdir.iterdir() if p.name.startswith(".")) == []
    code, _, err = dnc("export", "missing/dnc.csv", cwd=workdir)
    assert code == 2
    assert one_line(err) == "dispatch: cannot write missing/dnc.csv: No such file or directory"


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: None, "dispatch: no file numbers.csv: check the path"),
        (lambda d: (d / "numbers.csv").mkdir(), "dispatch: numbers.csv is a directory"),
        (
            lambda d: (d / "numbers.csv").write_bytes(b"phone,reason\n+14155552671,caf\xe9\n"),
            "dispatch: cannot read numbers.csv: it is not utf-8 text",
        ),
    ],
    ids=["missing", "directory", "not-utf-8"],
)
def test_an_unusable_import_file_is_one_line_naming_the_fix_and_writes_nothing(
    workdir: Path, setup: object, message: str
) -> None:
    setup(workdir)  # type: ignore[operator]
    code, out, err = dnc("import", "numbers.csv", cwd=workdir)
    assert (code, out) == (2, "")
    assert one_line(err).startswith(message)
    assert not (workdir / "dispatch.db").exists()


def test_a_latin_1_file_imports_with_its_encoding(workdir: Path) -> None:
    (workdir / "numbers.csv").write_bytes(b"phone,reason\n+14155552671,caf\xe9\n")
    code, _, err = dnc("import", "numbers.csv", "--encoding", "cp1252", cwd=workdir)
    assert code == 0, err
    assert [r["reason"] for r in listed(workdir)] == ["café"]


def test_an_import_of_100_000_numbers_commits_them_all(workdir: Path) -> None:
    with open(workdir / "numbers.csv", "w") as f:
        f.write("phone\n")
        f.writelines(f"+1415{2_000_000 + n:07d}\n" for n in range(100_000))
    code, out, err = dnc("import", "numbers.csv", cwd=workdir)
    assert code == 0, err
    assert out == "imported 100000 numbers (0 already listed, 0 invalid)\n"
    assert query(workdir / "dispatch.db", "SELECT count(*) FROM do_not_call") == [(100_000,)]


def test_a_number_added_while_the_daemon_runs_is_never_dialed(workdir: Path) -> None:
    with open(workdir / "numbers.csv", "w") as f:
        f.write("phone\n")
        f.writelines(f"+1415{2_000_000 + n:07d}\n" for n in range(20_000))
    with Daemon(workdir) as daemon:
        daemon.wait_for("dial.start")
        code, _, err = dnc("add", "+14155559999", "--reason", "called in", cwd=workdir)
        assert code == 0, err
        daemon.wait_for("dnc.reloaded")  # the first change the daemon sees holds the add
        code, out, err = dnc("import", "numbers.csv", cwd=workdir)  # while it dials
        assert code == 0, err
        assert out == "imported 20000 numbers (0 already listed, 0 invalid)\n"
        code, _, err = dnc("remove", "+14152000000", cwd=workdir)
        assert code == 0, err
        assert len(listed(workdir)) == 20_000
        with (workdir / "examples" / "leads.csv").open("a") as leads:  # a row saved meanwhile
            leads.write("appt-013,(415) 555-9999,Lin,eye exam,2026-12-10,10:00\n")
        daemon.wait_for("record.skipped strategy=reminders record=appt-013 reason=dnc")
        assert daemon.stop() == 0, daemon.output
    assert "locked" not in daemon.output
    db = workdir / "dispatch.db"
    assert query(db, "SELECT state, reason FROM records WHERE record_id = 'appt-013'") == [
        ("skipped", "dnc")
    ]
    assert query(db, "SELECT count(*) FROM attempts WHERE record_id = 'appt-013'") == [(0,)]


@pytest.mark.anyio
async def test_the_commands_work_on_postgresql(workdir: Path, postgres_url: str) -> None:
    env = {"DISPATCH_STORE__URL": postgres_url}
    (workdir / "numbers.csv").write_text("phone,reason\n+14155552671,a\n+14155552672,b\nx,c\n")
    code, out, err = dnc("import", "numbers.csv", cwd=workdir, env=env)
    assert (code, out) == (2, "imported 2 numbers (0 already listed, 1 invalid)\n")
    assert "line 4" in err
    code, out, _ = dnc("add", "+14155552672", "+14155552673", cwd=workdir, env=env)
    assert code == 0
    assert out.splitlines()[1] == "added +14155552673"
    code, out, _ = dnc("remove", "+14155552671", cwd=workdir, env=env)
    assert out == "removed +14155552671\n"
    assert [(r["phone"], r["source"]) for r in listed(workdir, env)] == [
        ("+14155552672", "import"),
        ("+14155552673", "cli"),
    ]
    code, exported, _ = dnc("export", cwd=workdir, env=env)
    assert exported.splitlines()[1].startswith("+14155552672,")
    assert not (workdir / "dispatch.db").exists()


def test_numbers_imported_before_a_run_are_skipped_as_dnc_and_never_dialed(
    workdir: Path,
) -> None:
    # appt-002 and appt-003 of the example, written another way than in leads.csv.
    (workdir / "numbers.csv").write_text("phone,reason\n+1 202-555-0143,asked\n415.555.2672,\n")
    code, out, err = dnc("import", "numbers.csv", cwd=workdir)
    assert code == 0, err
    assert out == "imported 2 numbers (0 already listed, 0 invalid)\n"

    run = dispatch("run", "-c", "config.toml", "--exit-when-done", cwd=workdir, env=FAST)

    assert run.returncode == 0, run.stderr + run.stdout
    db = workdir / "dispatch.db"
    skipped = query(
        db, "SELECT record_id, state, reason FROM records WHERE record_id IN "
        "('appt-002', 'appt-003') ORDER BY record_id",
    )  # fmt: skip
    assert skipped == [("appt-002", "skipped", "dnc"), ("appt-003", "skipped", "dnc")]
    assert query(
        db, "SELECT count(*) FROM attempts WHERE record_id IN ('appt-002', 'appt-003')"
    ) == [(0,)]
    # The rest of the campaign is dialed as usual.
    assert query(db, "SELECT count(DISTINCT record_id) FROM attempts") == [(9,)]
