"""The command line end to end: the real `dispatch` console script in a subprocess."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dispatch.store.migrate import head_revision

pytestmark = pytest.mark.acceptance

DISPATCH = str(Path(sys.executable).with_name("dispatch"))
FAST = {"DISPATCH_AGENT__TIME_SCALE": "0.001", "DISPATCH_RETRY__DELAY": "0.01"}


def dispatch(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DISPATCH, *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class Daemon:
    """`dispatch run` in the background, its output read line by line as the test waits."""

    def __init__(self, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [DISPATCH, "run", "-c", "config.toml"],
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, count: int = 1) -> None:
        """Read the output until ``text`` has appeared ``count`` times (60 s at most)."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + 60
        while self.output.count(text) < count:
            line = self.process.stdout.readline()
            assert line, self.output
            assert time.monotonic() < deadline, self.output
            self.lines.append(line)

    def stop(self) -> int:
        """SIGTERM, then the exit code once it has drained."""
        self.process.send_signal(signal.SIGTERM)
        rest, _ = self.process.communicate(timeout=60)
        self.lines.append(rest)
        return self.process.returncode

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.process.kill()
        self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def query(db: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def test_run_dials_the_example_campaign_then_a_second_run_dials_nobody(workdir: Path) -> None:
    # Run from another directory: relative paths follow the configuration file.
    first = dispatch(
        "run", "-c", str(workdir / "config.toml"), "--exit-when-done", cwd=Path("/"), env=FAST
    )
    assert first.returncode == 0, first.stderr + first.stdout
    db = workdir / "dispatch.db"
    states = dict(query(db, "SELECT state, count(*) FROM records GROUP BY state"))
    assert sum(states.values()) == 12
    assert states["skipped"] == 1  # appt-009 has no valid number
    assert set(states) <= {"completed", "failed", "skipped"}
    assert query(
        db, "SELECT max(n) FROM (SELECT count(*) AS n FROM attempts GROUP BY record_id)"
    ) == [(2,)]
    assert query(db, "SELECT count(*) FROM attempts WHERE state IN ('dialing', 'active')") == [(0,)]
    assert "dial.start strategy=reminders record=appt-001" in first.stdout
    assert "call.ended record=" in first.stdout
    assert "record.skipped strategy=reminders record=appt-009 reason=invalid_phone" in first.stdout
    attempts = query(db, "SELECT count(*) FROM attempts")

    second = dispatch("run", "-c", "config.toml", "--exit-when-done", cwd=workdir, env=FAST)
    assert second.returncode == 0, second.stderr
    assert query(db, "SELECT count(*) FROM attempts") == attempts
    assert "nobody dialed (12 records already handled)" in second.stdout
    assert "dial.start" not in second.stdout


def test_the_example_campaign_writes_the_answers_into_a_working_copy(workdir: Path) -> None:
    source = (workdir / "examples" / "leads.csv").read_bytes()
    result = dispatch("run", "-c", "config.toml", "--exit-when-done", cwd=workdir, env=FAST)
    assert result.returncode == 0, result.stderr + result.stdout
    assert (workdir / "examples" / "leads.csv").read_bytes() == source  # only read
    with open(workdir / "leads.results.csv", newline="") as f:
        rows = {row["id"]: row for row in csv.DictReader(f)}
    assert list(rows) == [f"appt-{n:03d}" for n in range(1, 13)]
    db = workdir / "dispatch.db"
    completed = {r for (r,) in query(db, "SELECT record_id FROM records WHERE state='completed'")}
    assert completed, result.stdout
    for record_id, row in rows.items():
        if record_id in completed:
            assert row["Status"] == "completed: hangup"
            assert row["Appointment"] in {"confirmed", "cancelled", "reschedule"}
        else:
            assert row["Appointment"] == ""
    # The same answers in the ledger and in `dispatch history`.
    [(results,)] = query(
        db, "SELECT results FROM attempts WHERE record_id='appt-001' AND results IS NOT NULL"
    )
    [answer] = json.loads(results)
    assert answer["arguments"]["status"] == rows["appt-001"]["Appointment"]
    history = dispatch("history", "-c", "config.toml", "--record", "appt-001", cwd=workdir)
    assert f"confirm_appointment(status={answer['arguments']['status']}" in history.stdout


def test_an_invalid_configuration_exits_2_naming_the_key(workdir: Path) -> None:
    config = workdir / "config.toml"
    config.write_text(config.read_text().replace("max_concurrent = 3", "max_concurrent = -3"))
    result = dispatch("run", "-c", str(config), cwd=workdir)
    assert result.returncode == 2
    assert "pacing.max_concurrent" in result.stderr
    assert not (workdir / "dispatch.db").exists()


def test_db_upgrade_creates_the_schema(workdir: Path) -> None:
    result = dispatch("db", "upgrade", "-c", "config.toml", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert query(workdir / "dispatch.db", "SELECT version_num FROM alembic_version") == [
        (head_revision(),)
    ]


def test_sigterm_stops_dialing_drains_and_exits_0(workdir: Path) -> None:
    env = {
        "DISPATCH_AGENT__TIME_SCALE": "1",
        "DISPATCH_AGENT__ANSWERED": "1",
        "DISPATCH_AGENT__RING_SECONDS": "[0, 0]",
        "DISPATCH_AGENT__TALK_SECONDS": "[600, 600]",
        "DISPATCH_DRAIN_TIMEOUT": "0.5",
    }
    with Daemon(workdir, env) as daemon:
        daemon.wait_for("call.started", 3)  # max_concurrent = 3 calls, all live for ten minutes
        # The store can be read while the daemon writes to it.
        live = json.loads(dispatch("status", "-c", "config.toml", "--json", cwd=workdir).stdout)
        assert live["in_flight"] == 3
        assert live["strategies"]["reminders"]["states"]["dialing"] == 3
        running = dispatch("status", "-c", "config.toml", cwd=workdir).stdout
        assert f"daemon: running on {socket.gethostname()} (pid {daemon.process.pid})" in running
        assert daemon.stop() == 0, daemon.output
    after = dispatch("status", "-c", "config.toml", cwd=workdir).stdout
    assert "daemon: not running" in after  # a clean stop unregistered it
    db = workdir / "dispatch.db"
    assert query(db, "SELECT state, count(*) FROM attempts GROUP BY state") == [("interrupted", 3)]
    assert "daemon.signal SIGTERM" in daemon.output


def test_the_custom_strategy_example_runs(repo_root: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(repo_root / "examples" / "custom_strategy.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert re.fullmatch(r"crm-1 called \(hangup, sim-\d\)", lines[0])
    assert re.fullmatch(r"crm-2 called \(hangup, sim-\d\)", lines[1])
    assert lines[2] == "crm-3 skipped (invalid_phone)"


def test_status_and_history_report_what_the_store_holds(workdir: Path) -> None:
    missing = dispatch("status", "-c", "config.toml", cwd=workdir)
    assert missing.returncode == 1
    assert "no store at" in missing.stderr
    assert not (workdir / "dispatch.db").exists()

    assert (
        dispatch("run", "-c", "config.toml", "--exit-when-done", cwd=workdir, env=FAST).returncode
        == 0
    )
    db = workdir / "dispatch.db"

    result = dispatch("status", "-c", "config.toml", "--json", cwd=workdir)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["strategies"]["reminders"]["states"] == dict(
        query(db, "SELECT state, count(*) FROM records GROUP BY state")
    )
    assert report["strategies"]["reminders"]["skipped"] == {"invalid_phone": 1}
    completed = dict(
        query(db, "SELECT reason, count(*) FROM records WHERE state = 'completed' GROUP BY reason")
    )
    assert report["strategies"]["reminders"]["completed"] == completed
    assert report["in_flight"] == 0
    assert report["outbox"] == {"pending": 0, "failing": 0}  # delivered before the exit
    assert (
        report["strategies"]["reminders"]["pending"],
        report["strategies"]["reminders"]["waiting"],
    ) == (
        0,
        0,
    )
    assert report["dials_last_minute"] == query(db, "SELECT count(*) FROM attempts")[0][0]

    table = dispatch("status", "-c", "config.toml", cwd=workdir)
    assert table.stdout.splitlines()[0].split() == [
        "strategy",
        "pending",
        "waiting",
        "completed",
        "failed",
        "skipped",
        "expired",
        "interrupted",
        "dialing",
        "retry",
        "last",
        "poll",
    ]

    result = dispatch(
        "history", "-c", "config.toml", "--phone", "(415) 555-2671", "--json", cwd=workdir
    )
    assert result.returncode == 0, result.stderr
    attempts = json.loads(result.stdout)
    assert [a["record_id"] for a in attempts] == ["appt-001"] * len(attempts)
    assert [a["attempt"] for a in attempts] == list(range(1, len(attempts) + 1))
    assert attempts[-1]["dialed_at"].endswith("+00:00")

    assert attempts[0]["evidence"]["caller_id"] == "+14155550100"  # what the dial used
    by_record = dispatch("history", "-c", "config.toml", "--record", "appt-001", cwd=workdir)
    assert "appt-001" in by_record.stdout
    assert "from +14155550100" in by_record.stdout
    assert (
        dispatch("history", "-c", "config.toml", "--record", "nobody", cwd=workdir).stdout
        == "no attempts\n"
    )


def test_a_row_saved_while_the_daemon_runs_is_dialed_and_written_back(tmp_path: Path) -> None:
    leads = tmp_path / "leads.csv"
    leads.write_text("id,phone,name\nr1,+14155552601,Ada\n")
    (tmp_path / "config.toml").write_text(
        'poll_interval = 3600\n[store]\nurl = "sqlite:///dispatch.db"\n'
        '[agent]\nkind = "simulated"\nanswered = 1\nno_answer = 0\nbusy = 0\nfailed = 0\n'
        "time_scale = 0.001\n"
        '[[strategies]]\nkind = "csv"\npath = "leads.csv"\n'
        '[strategies.write_back]\nstatus_column = "Status"\n'
    )
    with Daemon(tmp_path) as daemon:
        daemon.wait_for("call.ended record=r1")
        daemon.wait_for("csv.watching")
        with leads.open("a") as f:  # the operator saves a new row; the next poll is an hour off
            f.write("r2,+14155552602,Bob\n")
        daemon.wait_for("call.ended record=r2")
        # On SIGTERM the outbox delivers (writes back) every due outcome before exiting.
        assert daemon.stop() == 0, daemon.output
    assert leads.read_text().splitlines() == [
        "id,phone,name,Status",
        "r1,+14155552601,Ada,completed: hangup",
        "r2,+14155552602,Bob,completed: hangup",
    ]


def test_check_dry_runs_the_example_setup(workdir: Path) -> None:
    result = dispatch("check", "-c", "config.toml", "--json", cwd=workdir)
    assert result.returncode == 0, result.stderr + result.stdout
    report = json.loads(result.stdout)
    assert [(p["name"], p["ok"]) for p in report["parts"]] == [("store", True), ("agent", True)]
    [leads] = report["strategies"]
    assert leads["counts"] == {"dial": 11, "skip": 1}
    assert leads["samples"][8][:2] == ["skip", "appt-009"]
    assert not query(workdir / "dispatch.db", "SELECT * FROM attempts")  # nothing dialed
