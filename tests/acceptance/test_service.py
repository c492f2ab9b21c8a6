"""The daemon as a systemd service: sd_notify on a real socket, SIGHUP, the unit, and logs
that show no secret even at DEBUG."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from dispatch.testing import Answer, FakePinecall

pytestmark = pytest.mark.acceptance

DISPATCH = str(Path(sys.executable).with_name("dispatch"))
REQUIRE_SERVICES = os.environ.get("DISPATCH_REQUIRE_SERVICES") == "1"
A, B = "+14155552601", "+14155552602"
KEY = "pk_live_" + "Zm9vYmFyYmF6cXV4" * 5  # long: websockets logs long frames shortened
# Three calls that stay live for ten minutes, and a drain that gives up on them at once.
LONG_CALLS = {
    "DISPATCH_AGENT__TIME_SCALE": "1",
    "DISPATCH_AGENT__ANSWERED": "1",
    "DISPATCH_AGENT__RING_SECONDS": "[0, 0]",
    "DISPATCH_AGENT__TALK_SECONDS": "[600, 600]",
    "DISPATCH_DRAIN_TIMEOUT": "0.5",
}


class NotifySocket:
    """What systemd listens on: a unix datagram socket, here in a short directory of its own
    (a socket path has room for 107 bytes)."""

    def __init__(self) -> None:
        self._directory = tempfile.TemporaryDirectory(dir="/tmp")
        self.path = str(Path(self._directory.name) / "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[str] = []

    def wait_until(self, done: Callable[[list[str]], bool], timeout: float = 60) -> list[str]:
        deadline = time.monotonic() + timeout
        self.sock.settimeout(0.1)
        while not done(self.messages):
            assert time.monotonic() < deadline, self.messages
            with contextlib.suppress(TimeoutError):
                self.messages.append(self.sock.recv(4096).decode())
        return self.messages

    async def receive(self) -> str:
        self.sock.setblocking(False)
        await anyio.wait_readable(self.sock)
        message = self.sock.recv(4096).decode()
        self.messages.append(message)
        return message

    def close(self) -> None:
        self.sock.close()
        self._directory.cleanup()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    listener = NotifySocket()
    yield listener
    listener.close()


class Output:
    """A subprocess's output, read line by line in a thread while the test does other things."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        self.stream = process.stdout
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self.stream:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.text:
            assert time.monotonic() < deadline, self.text
            time.sleep(0.01)

    def finish(self) -> str:
        """Everything, once the process closed its output (call after it exited)."""
        self._thread.join(timeout=60)
        self.stream.close()
        return self.text


# The STATUS= line of a running daemon, in full.
LINE = (
    r"\d+ calls? active, \d+ dialed since 00:00 UTC, \d+ pending, \d+ waiting, "
    r"\d+ callbacks? pending"
)


def count(messages: list[str], field: str) -> int:
    return sum(field in m.split("\n") for m in messages)


def statuses(messages: list[str]) -> list[str]:
    return [line[7:] for m in messages for line in m.split("\n") if line.startswith("STATUS=")]


def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def test_the_daemon_notifies_ready_status_watchdog_reloading_and_stopping(
    workdir: Path, notify_socket: NotifySocket
) -> None:
    env = {
        **os.environ,
        **LONG_CALLS,
        "NOTIFY_SOCKET": notify_socket.path,
        "WATCHDOG_USEC": "200000",  # a ping every 0.1 s
    }
    process = subprocess.Popen(
        [DISPATCH, "run", "-c", "config.toml"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = Output(process)
    try:
        messages = notify_socket.wait_until(lambda m: count(m, "READY=1") == 1)
        assert statuses(messages)[0].startswith("starting")
        assert re.fullmatch(f"READY=1\nSTATUS={LINE}", messages[-1])
        # The example's 11 good rows, 3 at a time; its write-back's callbacks queue up.
        busy = re.compile(
            r"3 calls active, 3 dialed since 00:00 UTC, 8 pending, 0 waiting, "
            r"\d+ callbacks? pending"
        )
        notify_socket.wait_until(lambda m: any(busy.fullmatch(line) for line in statuses(m)))
        notify_socket.wait_until(lambda m: count(m, "WATCHDOG=1") >= 5)

        process.send_signal(signal.SIGHUP)  # the same file: nothing changes, nothing drops
        output.wait_for("daemon.reloaded changes=none")
        pings = count(notify_socket.messages, "WATCHDOG=1")
        notify_socket.wait_until(lambda m: count(m, "WATCHDOG=1") >= pings + 3)
        assert process.poll() is None, output.text  # SIGHUP did not kill it
        in_flight = "SELECT count(*) FROM attempts WHERE state IN ('dialing', 'active')"
        assert query(workdir / "dispatch.db", in_flight) == [(3,)]  # nor any call

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, output.finish()
        messages = notify_socket.wait_until(lambda m: count(m, "STOPPING=1") == 1)
    finally:
        process.kill()
        process.wait()
        text = output.finish()
    assert count(messages, "READY=1") == 2  # started, and reloaded
    assert count(messages, "RELOADING=1") == 1
    stopping = next(m for m in messages if "STOPPING=1" in m.split("\n"))
    assert re.fullmatch(
        r"STOPPING=1\nSTATUS=stopping: no new dials, 3 calls in flight; 3 dialed since 00:00 "
        r"UTC, 8 pending, 0 waiting, \d+ callbacks? pending",
        stopping,
    )
    # Every line the daemon said when running: nothing else slipped in.
    running = [line for line in statuses(messages) if line[0].isdigit()]
    assert running, statuses(messages)
    assert all(re.fullmatch(LINE, line) for line in running), running
    by_state = "SELECT state, count(*) FROM attempts GROUP BY state"
    assert query(workdir / "dispatch.db", by_state) == [("interrupted", 3)]
    assert "daemon.signal SIGTERM" in text


def test_without_notify_socket_the_daemon_runs_as_before(workdir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env |= {"DISPATCH_AGENT__TIME_SCALE": "0.001", "DISPATCH_RETRY__DELAY": "0.01"}
    result = subprocess.run(
        [DISPATCH, "run", "-c", "config.toml", "--exit-when-done"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "notify." not in result.stdout


def pinecall_config(url: str, logging: str = "") -> str:
    return f"""
poll_interval = 3600
[store]
url = "sqlite:///dispatch.db"
[logging]
{logging}
[agent]
kind = "pinecall"
url = "{url}"
agent_id = "dialer"
phone_numbers = ["+13185550100"]
[[strategies]]
kind = "csv"
path = "leads.csv"
watch = false
"""


class HeldRegistration(FakePinecall):
    """A Pinecall that takes the agent's registration and answers it only once released."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.release = anyio.Event()

    async def _handle(self, connection: Any, frame: dict[str, Any]) -> None:
        if frame.get("event") == "agent.create":
            await self.release.wait()
        await super()._handle(connection, frame)


@pytest.mark.anyio
async def test_ready_waits_until_the_agent_is_registered(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    (tmp_path / "leads.csv").write_text(f"id,phone\nr1,{A}\n")
    async with HeldRegistration(api_key=KEY) as fake:
        (tmp_path / "config.toml").write_text(pinecall_config(fake.url))
        env = {**os.environ, "PINECALL_API_KEY": KEY, "NOTIFY_SOCKET": notify_socket.path}
        async with await anyio.open_process(
            [DISPATCH, "run", "-c", "config.toml"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ) as process:
            try:
                with anyio.fail_after(60):
                    await fake.wait_for("agent.create")  # the store is open: it is next
                # The registration is held: no READY, however long that lasts.
                with anyio.move_on_after(1):
                    while True:
                        assert "READY=1" not in (await notify_socket.receive()).split("\n")
                fake.release.set()
                with anyio.fail_after(60):
                    while "READY=1" not in (await notify_socket.receive()).split("\n"):
                        pass
                assert fake.received("channel.add")  # the caller id was registered too
                process.send_signal(signal.SIGTERM)
                with anyio.fail_after(60):
                    assert await process.wait() == 0
            finally:
                fake.release.set()  # or the fake's exit would wait for the held handler
                if process.returncode is None:
                    process.kill()


@pytest.mark.anyio
@pytest.mark.parametrize("format", ["text", "json"])
async def test_no_secret_in_run_and_check_output_at_debug(tmp_path: Path, format: str) -> None:
    (tmp_path / "leads.csv").write_text(f"id,phone\nr1,{A}\nr2,{B}\n")
    script = {A: [Answer(ring=0.01, talk=0.05)], B: ["busy"]}
    async with FakePinecall(api_key=KEY, script=script) as fake:
        logging = f'level = "DEBUG"\nformat = "{format}"'
        (tmp_path / "config.toml").write_text(pinecall_config(fake.url, logging))
        env = {**os.environ, "PINECALL_API_KEY": KEY}
        outputs = []
        for command in (["run", "--exit-when-done"], ["check"]):
            with anyio.fail_after(60):
                result = await anyio.run_process(
                    [DISPATCH, *command[:1], "-c", "config.toml", *command[1:]],
                    cwd=tmp_path,
                    env=env,
                    check=False,
                    stderr=subprocess.STDOUT,
                )
            output = result.stdout.decode()
            assert result.returncode == 0, output
            outputs.append(output)
    assert len(fake.received("call.dial")) == 2
    for output in outputs:
        # Not the key, nor a piece of it (websockets shows long frames by their two ends).
        assert not [KEY[i : i + 12] for i in range(len(KEY) - 11) if KEY[i : i + 12] in output]
        # The frame that carries it was logged all the same, redacted.
        if format == "text":
            assert """websockets.client > TEXT '{"event": "connect", "api_key": "***"}'""" in output
        else:
            lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
            frames = [r["message"] for r in lines if r["logger"] == "websockets.client"]
            connect = """> TEXT '{"event": "connect", "api_key": "***"}'"""
            assert [f for f in frames if f.startswith(connect)], frames


# -- the unit ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    """systemd-analyze, installed from Debian's systemd package if the machine lacks it."""
    found = shutil.which("systemd-analyze")
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "systemd"],
        ):
            subprocess.run(command, env=env, capture_output=True, timeout=900, check=False)
        found = shutil.which("systemd-analyze")
    if found is None:
        message = "systemd-analyze is missing and apt-get could not install systemd"
        if REQUIRE_SERVICES:
            pytest.fail(f"{message} (DISPATCH_REQUIRE_SERVICES=1)")
        pytest.skip(message)
    return found


@pytest.fixture
def unit(repo_root: Path, tmp_path: Path) -> Path:
    """The shipped unit, with ExecStart pointing at this installation's `dispatch` instead of
    /opt/pinecall-dispatch/bin/dispatch: `verify` checks that the binary exists."""
    text = (repo_root / "deploy" / "pinecall-dispatch.service").read_text()
    shipped = "ExecStart=/opt/pinecall-dispatch/bin/dispatch "
    assert shipped in text
    copy = tmp_path / "pinecall-dispatch.service"
    copy.write_text(text.replace(shipped, f"ExecStart={DISPATCH} "))
    return copy


def directives(unit: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_the_unit_is_a_watched_notify_service_with_a_place_for_a_live_csv(unit: Path) -> None:
    found = directives(unit)
    for key, value in {
        "Type": "notify",
        "NotifyAccess": "main",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "Restart": "on-failure",
        "RestartPreventExitStatus": "2",
        "UMask": "0077",
        "DynamicUser": "yes",
        "SupplementaryGroups": "pinecall-csv",
        "ReadWritePaths": "-/srv/pinecall-dispatch",
    }.items():
        assert found.get(key) == [value], key
    assert float(found["WatchdogSec"][0]) > 0
    # Active, by its bare name: systemd looks it up in /etc/credstore/ and skips it when it
    # is not there (a path, NAME:/path, would make a missing file fail the start).
    assert found["LoadCredential"] == ["pinecall_api_key"]


def test_the_unit_passes_systemd_analyze_verify(systemd_analyze: str, unit: Path) -> None:
    result = subprocess.run(
        [systemd_analyze, "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert unit.name not in result.stderr, result.stderr


def test_the_unit_scores_2_or_better_on_systemd_analyze_security(
    systemd_analyze: str, unit: Path
) -> None:
    result = subprocess.run(
        [
            systemd_analyze,
            "security",
            "--offline=true",
            "--threshold=20",  # in tenths: fail above 2.0
            "--no-pager",
            str(unit),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found[1]) <= 2.0, result.stdout
    assert result.returncode == 0, result.stdout + result.stderr
