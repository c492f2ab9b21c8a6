"""sd_notify over a real unix datagram socket, the watchdog's pace, and the STATUS= line."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from dispatch.hub import HubStatistics
from dispatch.service.notify import Notifier
from dispatch.service.status import status_line
from dispatch.service.watchdog import feed_watchdog, watchdog_interval


class Listener:
    """A bound datagram socket standing in for systemd, recording what arrives and when."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address  # as $NOTIFY_SOCKET would name it
        self.received: list[tuple[float, str]] = []
        self._stopped = threading.Event()
        sock.settimeout(0.05)
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stopped.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received.append((time.monotonic(), data.decode()))

    def close(self) -> None:
        self._stopped.set()
        self._thread.join()
        self.sock.close()

    def messages(self) -> list[str]:
        return [m for _, m in self.received]

    def wait_for(self, count: int, after: float = 0.0, timeout: float = 10.0) -> list[str]:
        """Block until ``count`` datagrams arrived later than ``after`` (monotonic)."""
        deadline = time.monotonic() + timeout
        while sum(t > after for t, _ in self.received) < count:
            assert time.monotonic() < deadline, self.messages()
            time.sleep(0.005)
        return self.messages()


@pytest.fixture
def listener() -> Iterator[Listener]:
    # A short directory of its own: a socket path has room for 107 bytes only.
    with tempfile.TemporaryDirectory(dir="/tmp") as directory:
        path = str(Path(directory) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        listener = Listener(sock, path)
        yield listener
        listener.close()


def test_each_notification_is_one_datagram_of_key_value_lines(listener: Listener) -> None:
    with Notifier(listener.address) as notifier:
        notifier.status("starting")
        notifier.ready("0 calls active")
        notifier.watchdog()
        notifier.stopping("stopping: no new dials")
    assert listener.wait_for(4) == [
        "STATUS=starting",
        "READY=1\nSTATUS=0 calls active",
        "WATCHDOG=1",
        "STOPPING=1\nSTATUS=stopping: no new dials",
    ]


def test_an_abstract_socket_is_named_with_an_at_sign() -> None:
    name = f"dispatch-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    listener = Listener(sock, "@" + name)
    try:
        with Notifier.from_environ({"NOTIFY_SOCKET": listener.address}) as notifier:
            notifier.ready("up")
        assert listener.wait_for(1) == ["READY=1\nSTATUS=up"]
    finally:
        listener.close()


def test_ready_is_sent_once_and_never_after_stopping(listener: Listener) -> None:
    with Notifier(listener.address) as notifier, Notifier(listener.address) as early:
        notifier.ready("a")
        notifier.ready("b")
        notifier.stopping()
        notifier.stopping("draining")
        early.stopping()  # a stop requested while still starting
        early.ready("too late")
    expected = ["READY=1\nSTATUS=a", "STOPPING=1", "STATUS=draining", "STOPPING=1"]
    assert listener.wait_for(4) == expected
    time.sleep(0.05)
    assert listener.messages() == expected


def test_a_status_stays_on_one_line(listener: Listener) -> None:
    with Notifier(listener.address) as notifier:
        notifier.status("store unreachable\n(ConnectionRefusedError)")
    assert listener.wait_for(1) == ["STATUS=store unreachable (ConnectionRefusedError)"]


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    assert notifier.send(READY="1") is False


def test_a_socket_nobody_listens_on_is_logged_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Notifier(str(tmp_path / "gone")) as notifier, caplog.at_level(logging.WARNING):
        assert notifier.send(READY="1") is False
        notifier.watchdog()
    assert [r.getMessage().split(" ", 1)[0] for r in caplog.records] == ["notify.failed"]


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # inherited: not ours
        ({}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_the_watchdog_is_pinged_at_half_its_period_and_only_for_this_process(
    environ: dict[str, str], expected: float | None
) -> None:
    assert watchdog_interval(environ) == expected


def test_a_stuck_event_loop_stops_the_watchdog_pings(listener: Listener) -> None:
    interval = 0.02

    async def main(notifier: Notifier) -> tuple[float, float]:
        async with anyio.create_task_group() as tg:
            tg.start_soon(feed_watchdog, notifier, interval)
            with anyio.fail_after(10):  # the listener waits in a thread; the loop turns
                await anyio.to_thread.run_sync(listener.wait_for, 3)
            stuck_at = time.monotonic()
            time.sleep(0.5)  # noqa: ASYNC251 (the point: a synchronous call hangs the loop)
            freed_at = time.monotonic()
            with anyio.fail_after(10):
                await anyio.to_thread.run_sync(listener.wait_for, 2, freed_at)
            tg.cancel_scope.cancel()
        return stuck_at, freed_at

    with Notifier(listener.address) as notifier:
        stuck_at, freed_at = anyio.run(main, notifier)
    times = [t for t, message in listener.received if message == "WATCHDOG=1"]
    # Not one ping while the loop was stuck (a datagram on its way may land just after the
    # block began), and they come again once it turns.
    assert not [t for t in times if stuck_at + 0.05 < t < freed_at]
    assert sum(t > freed_at for t in times) >= 2
    assert max(b - a for a, b in itertools.pairwise(times)) >= 0.4


def _statistics(**counts: int) -> HubStatistics:
    values = dict.fromkeys(
        ("pending", "waiting", "active", "dialed", "completed", "failed", "skipped"), 0
    )
    return HubStatistics(**{**values, **counts}, already_handled=0)


def test_the_status_line_sums_up_the_hub_and_leads_with_trouble() -> None:
    stats = _statistics(active=2, dialed=5, pending=12, waiting=3)
    figures = {"dialed_today": 40, "callbacks": 5}
    assert status_line(stats, **figures) == (
        "2 calls active, 40 dialed since 00:00 UTC, 12 pending, 3 waiting, 5 callbacks pending"
    )
    assert status_line(stats, **figures, store_available=False) == (
        "store unreachable: no dials until it is back; 2 calls active, 40 dialed since 00:00 "
        "UTC, 12 pending, 3 waiting, 5 callbacks pending"
    )
    assert status_line(stats, **figures, stopping=True) == (
        "stopping: no new dials, 2 calls in flight; 40 dialed since 00:00 UTC, 12 pending, "
        "3 waiting, 5 callbacks pending"
    )


def test_the_status_line_says_one_call_and_leaves_out_what_is_not_known_yet() -> None:
    stats = _statistics(active=1, dialed=1, pending=0, waiting=0)
    assert status_line(stats, dialed_today=1, callbacks=1) == (
        "1 call active, 1 dialed since 00:00 UTC, 0 pending, 0 waiting, 1 callback pending"
    )
    assert status_line(stats) == "1 call active, 0 pending, 0 waiting"
    assert status_line(_statistics(), stopping=True) == (
        "stopping: no new dials, 0 calls in flight; 0 pending, 0 waiting"
    )


def test_the_status_line_says_which_strategies_are_paused() -> None:
    stats = dataclasses.replace(
        _statistics(active=1, dialed=4, pending=2, waiting=0), paused=frozenset({"b", "a"})
    )
    assert status_line(stats, dialed_today=4, callbacks=0) == (
        "paused (a, b): no new dials; 1 call active, 4 dialed since 00:00 UTC, 2 pending, "
        "0 waiting, 0 callbacks pending"
    )


def test_reloading_sends_reloading_with_the_monotonic_time_then_ready_again(
    listener: Listener,
) -> None:
    with Notifier(listener.address) as notifier:
        notifier.ready("up")
        notifier.reloading()
        notifier.reloaded("up again")
        notifier.stopping()
        notifier.reloaded("too late")  # a reload that ends while stopping says nothing
    messages = listener.wait_for(4)
    time.sleep(0.05)
    assert len(listener.messages()) == 4
    assert messages[0] == "READY=1\nSTATUS=up"
    fields = dict(line.split("=", 1) for line in messages[1].split("\n"))
    assert fields["RELOADING"] == "1"
    assert fields["STATUS"] == "reloading the configuration"
    usec = int(fields["MONOTONIC_USEC"])
    assert abs(usec - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 10_000_000
    assert messages[2] == "READY=1\nSTATUS=up again"
    assert messages[3] == "STOPPING=1"
