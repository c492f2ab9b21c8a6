"""`dispatch pause` and `dispatch resume` end to end: a daemon in a subprocess, paused and
resumed from another process through the store."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.acceptance.test_cli import DISPATCH, dispatch

pytestmark = pytest.mark.acceptance

POLL_INTERVAL = 2.0  # config.example.toml's
# One call at a time, each lasting a few seconds: the campaign outlasts the test.
SLOW = {"DISPATCH_AGENT__TIME_SCALE": "0.05", "DISPATCH_PACING__MAX_CONCURRENT": "1"}
# A paused record's `record.held ... why=paused` is a DEBUG line (it comes every poll).
HELD = {**SLOW, "DISPATCH_LOGGING__LEVEL": "DEBUG"}
SETTLE = 1.0  # for a dial already past the check when the flag was read to be logged


class Running:
    """`dispatch run` in the background, its output collected by a thread, so a test can
    also wait for a while and see that nothing happened."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [DISPATCH, "run", "-c", "config.toml"],
            cwd=cwd,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._lock:
                self._lines.append(line)

    @property
    def output(self) -> str:
        with self._lock:
            return "".join(self._lines)

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.output))

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 60.0) -> None:
        """Until ``pattern`` (a regular expression) has appeared ``count`` times."""
        deadline = time.monotonic() + timeout
        while self.count(pattern) < count:
            assert self.process.poll() is None, self.output
            assert time.monotonic() < deadline, f"no {pattern!r} in:\n{self.output}"
            time.sleep(0.05)

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def control(*args: str, cwd: Path) -> str:
    done = dispatch(*args, "-c", "config.toml", cwd=cwd)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "Traceback" not in done.stderr
    return done.stdout


def test_pause_stops_new_dials_of_a_running_daemon_and_resume_dials_again(
    workdir: Path,
) -> None:
    with Running(workdir, HELD) as daemon:
        daemon.wait_for(r"dial\.start ")
        out = control("pause", "--reason", "script fix", cwd=workdir)
        assert out.splitlines()[0] == "paused every strategy"
        daemon.wait_for(r"hub\.paused strategy=\* reason=script fix", timeout=3 * POLL_INTERVAL)
        time.sleep(SETTLE)
        dialed = daemon.count(r"dial\.start ")
        time.sleep(2 * POLL_INTERVAL + 0.5)  # two reads of the flags, and a call's end
        assert daemon.count(r"dial\.start ") == dialed, daemon.output
        held = [line for line in daemon.output.splitlines() if "why=paused" in line]
        assert held  # the queued records wait, they are not skipped
        assert all(" DEBUG " in line for line in held)  # each poll's: not for the journal
        status = control("status", cwd=workdir)
        assert "paused: every strategy since " in status
        assert ": script fix (dispatch resume)" in status

        assert control("resume", cwd=workdir).splitlines()[0] == "resumed every strategy"
        daemon.wait_for(r"hub\.resumed strategy=\*", timeout=3 * POLL_INTERVAL)
        daemon.wait_for(r"dial\.start ", dialed + 1, timeout=3 * POLL_INTERVAL)
    assert daemon.process.returncode == 0, daemon.output
    assert daemon.count(r"hub\.paused ") == 1  # logged once, not at every read
    assert daemon.count(r"hub\.resumed ") == 1


def test_pause_with_strategy_pauses_only_that_one(workdir: Path) -> None:
    config = workdir / "config.toml"
    config.write_text(
        config.read_text()
        + '\n[[strategies]]\nkind = "csv"\nname = "followups"\npath = "examples/leads.csv"\n'
        + 'id = "{id}"\nphone = "{phone}"\n'
    )
    with Running(workdir, SLOW) as daemon:
        daemon.wait_for(r"dial\.start strategy=reminders ")
        control("pause", "--strategy", "reminders", cwd=workdir)
        daemon.wait_for(r"hub\.paused strategy=reminders reason=-", timeout=3 * POLL_INTERVAL)
        time.sleep(SETTLE)
        reminders = daemon.count(r"dial\.start strategy=reminders ")
        followups = daemon.count(r"dial\.start strategy=followups ")
        daemon.wait_for(r"dial\.start strategy=followups ", followups + 1, timeout=30)
        time.sleep(2 * POLL_INTERVAL + 0.5)
        assert daemon.count(r"dial\.start strategy=reminders ") == reminders, daemon.output

        # A strategy that is not paused has nothing to resume.
        assert control("resume", "--strategy", "followups", cwd=workdir) == (
            "strategy followups was not paused\n"
        )
        out = control("resume", "--strategy", "reminders", cwd=workdir)
        assert out.splitlines()[0] == "resumed strategy reminders"
        daemon.wait_for(r"hub\.resumed strategy=reminders", timeout=3 * POLL_INTERVAL)
        daemon.wait_for(r"dial\.start strategy=reminders ", reminders + 1, timeout=30)
    assert daemon.process.returncode == 0, daemon.output


def test_resume_of_one_strategy_says_it_stays_paused_while_every_strategy_is(
    workdir: Path,
) -> None:
    # No daemon, no store yet: pause creates it, so a campaign can start paused.
    assert control("resume", cwd=workdir) == "nothing was paused (there is no store yet)\n"
    control("pause", cwd=workdir)
    assert control("pause", cwd=workdir).startswith("every strategy already paused since ")
    done = dispatch("resume", "--strategy", "reminders", "-c", "config.toml", cwd=workdir)
    assert (done.returncode, done.stdout) == (0, "strategy reminders was not paused\n")
    assert done.stderr.startswith("dispatch: reminders stays paused: every strategy is, since ")
    done = dispatch("pause", "--strategy", "*", "-c", "config.toml", cwd=workdir)
    assert done.returncode == 2
    assert "cannot be a strategy's name" in done.stderr


def test_a_daemon_started_on_a_paused_store_dials_nobody_until_resumed(workdir: Path) -> None:
    # Paused before the campaign's first start: the flag waits in the store.
    assert control("pause", "--reason", "not yet", cwd=workdir).splitlines()[0] == (
        "paused every strategy"
    )
    with Running(workdir, HELD) as daemon:
        daemon.wait_for(r"hub\.paused strategy=\* reason=not yet")
        # Each queued record reached the gate and was held, twice over (two polls).
        daemon.wait_for(r"record\.held strategy=reminders record=appt-012 why=paused", 2)
        assert daemon.count(r"dial\.start ") == 0, daemon.output
        status = control("status", cwd=workdir)
        assert "paused: every strategy since " in status
        assert ": not yet (dispatch resume)" in status

        assert control("resume", cwd=workdir).splitlines()[0] == "resumed every strategy"
        daemon.wait_for(r"hub\.resumed strategy=\*", timeout=3 * POLL_INTERVAL)
        daemon.wait_for(r"dial\.start ", timeout=3 * POLL_INTERVAL)
    assert daemon.process.returncode == 0, daemon.output
