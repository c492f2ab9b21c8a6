"""Faults an operator meets, through the real `dispatch` command: a second daemon on the same
store, a daemon killed and restarted, a store that cannot be reached, a hostile CSV, and a row
fixed between two runs."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

import pytest

from tests.acceptance.test_cli import Daemon, dispatch, query

pytestmark = pytest.mark.acceptance

LONG_CALLS = (
    'poll_interval = 3600\nrecover_hold = 0\ndrain_timeout = 0\n[store]\nurl = "sqlite:///dispatch.db"\n'
    "[pacing]\nmax_concurrent = 2\n"
    '[agent]\nkind = "simulated"\nanswered = 1\nno_answer = 0\nbusy = 0\nfailed = 0\n'
    "ring_seconds = [0, 0]\ntalk_seconds = [600, 600]\n"
    '[[strategies]]\nkind = "csv"\npath = "leads.csv"\nwatch = false\n'
)


def leads(path: Path, rows: int) -> None:
    path.write_text("id,phone\n" + "".join(f"r{n},+1415555{2600 + n}\n" for n in range(rows)))


def test_a_second_daemon_on_the_same_store_is_refused_and_a_killed_one_is_replaced(
    tmp_path: Path,
) -> None:
    leads(tmp_path / "leads.csv", 4)
    (tmp_path / "config.toml").write_text(LONG_CALLS)
    with Daemon(tmp_path) as first:
        first.wait_for("call.started", 2)
        second = dispatch("run", "-c", "config.toml", "--exit-when-done", cwd=tmp_path)
        assert second.returncode == 1
        refusal = second.stdout + second.stderr
        assert f"store in use by {socket.gethostname()}:{first.process.pid} since " in refusal
        assert "Traceback" not in refusal
        assert refusal.count("\n") == 1, refusal  # one line, not one per record
        assert query(tmp_path / "dispatch.db", "SELECT count(*) FROM attempts") == [(2,)]

        first.process.send_signal(signal.SIGKILL)
        first.process.wait()

    # Killed: its heartbeat is fresh, but its process is gone. The next daemon takes over at
    # once, leaves the two calls it left behind interrupted, and dials the rest.
    with Daemon(tmp_path) as third:
        third.wait_for("store.took_over")
        third.wait_for("call.started", 2)
        assert third.stop() == 0, third.output
    attempts = dict(query(tmp_path / "dispatch.db", "SELECT record_id, state FROM attempts"))
    assert sorted(attempts.values()).count("interrupted") == 4  # two killed, two drained
    assert len(attempts) == 4  # every record dialed once


def test_status_says_the_store_is_unreachable_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "config.toml").write_text(
        f'[store]\nurl = "postgresql://postgres@127.0.0.1:{port}/test"\n'
        '[[strategies]]\nkind = "csv"\npath = "leads.csv"\n'
    )
    result = dispatch("status", "-c", "config.toml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("dispatch: store unreachable while reading the status")
    assert "Connect call failed" in result.stderr or "refused" in result.stderr.lower()
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_a_csv_with_a_huge_cell_dials_every_other_row_and_exits(tmp_path: Path) -> None:
    cell = "x" * 150_000
    (tmp_path / "leads.csv").write_text(
        f"id,phone,notes\nr1,+14155552601,fine\nr2,+14155552602,{cell}\nr3,+14155552603,fine\n"
    )
    (tmp_path / "config.toml").write_text(
        'poll_interval = 0.2\n[store]\nurl = "sqlite:///dispatch.db"\n'
        '[agent]\nkind = "simulated"\nanswered = 1\nno_answer = 0\nbusy = 0\nfailed = 0\n'
        "time_scale = 0.001\n"
        '[[strategies]]\nkind = "csv"\npath = "leads.csv"\nwatch = false\n'
    )
    result = dispatch("run", "-c", "config.toml", "--exit-when-done", cwd=tmp_path)
    assert result.returncode == 0, result.stdout
    db = tmp_path / "dispatch.db"
    assert sorted(query(db, "SELECT record_id, state, reason FROM records")) == [
        ("r1", "completed", "hangup"),
        ("r2", "skipped", "malformed"),
        ("r3", "completed", "hangup"),
    ]
    assert "csv.bad_row strategy=leads line=3 record=r2" in result.stdout
    assert cell not in result.stdout


def test_check_and_run_agree_about_a_row_fixed_after_it_was_skipped(tmp_path: Path) -> None:
    path = tmp_path / "leads.csv"
    path.write_text("id,phone\nr1,+14155552601\nr2,12\n")
    (tmp_path / "config.toml").write_text(
        'poll_interval = 0.2\n[store]\nurl = "sqlite:///dispatch.db"\n'
        '[agent]\nkind = "simulated"\nanswered = 1\nno_answer = 0\nbusy = 0\nfailed = 0\n'
        "time_scale = 0.001\n"
        '[[strategies]]\nkind = "csv"\npath = "leads.csv"\nwatch = false\n'
    )
    assert dispatch("run", "-c", "config.toml", "--exit-when-done", cwd=tmp_path).returncode == 0
    path.write_text("id,phone\nr1,+14155552601\nr2,+14155552602\n")  # the operator fixes r2

    check = dispatch("check", "-c", "config.toml", "--json", cwd=tmp_path)
    [leads_report] = json.loads(check.stdout)["strategies"]
    assert {s[1]: s[0] for s in leads_report["samples"]} == {"r1": "done", "r2": "dial"}

    run = dispatch("run", "-c", "config.toml", "--exit-when-done", cwd=tmp_path)
    assert run.returncode == 0, run.stdout
    assert "dial.start strategy=leads record=r2" in run.stdout
    assert "dial.start strategy=leads record=r1" not in run.stdout
