"""SIGHUP against a running daemon with calls in flight: an invalid file is refused and the
old configuration keeps running; a valid one swaps strategies and pacing, and no call is
dropped."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.acceptance.test_service import (
    DISPATCH,
    NotifySocket,
    Output,
    count,
    notify_socket,  # noqa: F401  (a fixture, used by its name)
    query,
)

pytestmark = [pytest.mark.acceptance, pytest.mark.timeout(120, method="thread")]

PHONES = [f"+1415555{2700 + n:04d}" for n in range(8)]
TALK = 6.0  # long enough for two reloads while the first calls are in flight


def config(*strategies: str, concurrent: int) -> str:
    tables = "".join(
        f'[[strategies]]\nkind = "csv"\nname = "{name}"\npath = "{name}.csv"\n\n'
        for name in strategies
    )
    return f"""
poll_interval = 0.2
drain_timeout = 30.0
[store]
url = "sqlite:///dispatch.db"
[pacing]
max_concurrent = {concurrent}
[retry]
attempts = 0
[agent]
kind = "simulated"
answered = 1
busy = 0
no_answer = 0
failed = 0
time_scale = 1
ring_seconds = [0, 0]
talk_seconds = [{TALK}, {TALK}]

{tables}"""


def csv_file(path: Path, prefix: str, phones: list[str]) -> None:
    rows = "".join(f"{prefix}{n},{phone}\n" for n, phone in enumerate(phones, 1))
    path.write_text("id,phone\n" + rows)


def attempts(db: Path) -> list[tuple[str, str, str]]:
    return query(db, "SELECT strategy, record_id, state FROM attempts ORDER BY strategy, record_id")


def test_sighup_refuses_a_bad_file_then_swaps_strategies_without_dropping_a_call(
    tmp_path: Path,
    notify_socket: NotifySocket,  # noqa: F811  (the fixture imported above)
) -> None:
    csv_file(tmp_path / "first.csv", "f", PHONES[:4])
    csv_file(tmp_path / "second.csv", "s", PHONES[4:6])
    conf = tmp_path / "config.toml"
    conf.write_text(config("first", concurrent=2))
    db = tmp_path / "dispatch.db"
    env = {**os.environ, "NOTIFY_SOCKET": notify_socket.path}
    env.pop("WATCHDOG_USEC", None)
    process = subprocess.Popen(
        [DISPATCH, "run", "-c", str(conf)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = Output(process)
    try:
        output.wait_for("record=f2 call_id=")  # f1 and f2 in their calls; f3, f4 queued

        conf.write_text("[pacing\nmax_concurrent = 4\n")  # not TOML
        process.send_signal(signal.SIGHUP)
        output.wait_for("daemon.reload_refused")
        notify_socket.wait_until(lambda m: count(m, "READY=1") == 2)
        assert "the running configuration is kept" in output.text
        assert count(notify_socket.messages, "RELOADING=1") == 1

        # first removed (f3, f4 released), second added, and room for its two beside the
        # two calls still in flight.
        conf.write_text(config("second", concurrent=4))
        process.send_signal(signal.SIGHUP)
        output.wait_for("daemon.reloaded")
        notify_socket.wait_until(lambda m: count(m, "READY=1") == 3)
        output.wait_for("record=s2 call_id=")
        in_flight = "SELECT count(*) FROM attempts WHERE state IN ('dialing', 'active')"
        assert query(db, in_flight) == [(4,)], output.text  # f1, f2 still in their calls
        output.wait_for("call.ended record=s2", timeout=60)

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, output.finish()
    finally:
        process.kill()
        process.wait()
        text = output.finish()
    assert "strategy removed: first; strategy added: second; pacing" in text
    assert attempts(db) == [
        ("first", "f1", "completed"),
        ("first", "f2", "completed"),
        ("second", "s1", "completed"),
        ("second", "s2", "completed"),
    ], text
    pending = query(db, "SELECT strategy, pending FROM sources ORDER BY strategy")
    assert pending == [("first", 0), ("second", 0)]
