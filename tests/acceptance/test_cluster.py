"""Three daemons, one campaign, one PostgreSQL, against the fake Pinecall: the fake's own
record of every frame is the ground truth. One daemon joins mid-campaign; one is SIGKILLed
while it has calls in flight.

``DISPATCH_CLUSTER_RECORDS`` sets the campaign's size: 300 by default (under a minute on a
loaded 2-core machine); a larger one runs the same checks longer."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from sqlalchemy import text

from dispatch import Store
from dispatch.rules.caps import Caps
from dispatch.store.cluster import Claimed, ClusterLimits
from dispatch.testing import max_in_any_window
from tests.conftest import fetch

RECORDS = int(os.environ.get("DISPATCH_CLUSTER_RECORDS", "300"))
BUDGET = 60 + RECORDS / 5  # seconds for a stage of the run: the campaign takes RECORDS / 10

pytestmark = [pytest.mark.acceptance, pytest.mark.anyio, pytest.mark.timeout(3 * BUDGET)]

logger = logging.getLogger(__name__)

DISPATCH = str(Path(sys.executable).with_name("dispatch"))
REPO = Path(__file__).resolve().parents[2]
# 10 dial starts a second: a rate each daemon keeps up with alone on a loaded machine, so
# what limits the three is the shared limit, not the CPU (the claims cost little). A window
# of 5 s: a start counts for the window and a margin of a twentieth of it (0.25 s here), how
# late its dial may reach the platform on a machine this loaded.
LIMIT, WINDOW, CONCURRENT = 50, 5.0, 6
RING, TALK = 0.05, 0.25
HOLD = 3.0  # a dead daemon's numbers (and call slots) are held this long
BEAT, EXPIRY = 0.5, 2.0  # heartbeat interval and timeout


def phones() -> Iterator[str]:
    """A number for each record; every tenth number twice (two records, one person)."""
    n = 0
    while True:
        number = f"+1415555{3000 + n:04d}"
        yield number
        if n % 10 == 0:
            yield number
        n += 1


def config(url: str, store: str) -> str:
    return f"""
poll_interval = 0.5
recover_hold = {HOLD}
drain_timeout = 10.0
[store]
url = "{store}"
heartbeat_interval = {BEAT}
heartbeat_timeout = {EXPIRY}
[cluster]
enabled = true
[pacing]
max_calls_per_minute = {LIMIT}
window = {WINDOW}
max_concurrent = {CONCURRENT}
[retry]
attempts = 0
[agent]
kind = "pinecall"
url = "{url}"
agent_id = "dialer"
phone_numbers = ["+13185550100"]
[[strategies]]
kind = "python"
path = "tests.crash_strategy:LoggedCsv"
name = "leads"
options = {{ path = "leads.csv", log = "callbacks.log", pid = true, watch = false }}
"""


class Daemon:
    def __init__(self, workdir: Path, api_key: str, number: int) -> None:
        env = {**os.environ, "PINECALL_API_KEY": api_key, "PYTHONPATH": str(REPO)}
        env.pop("NOTIFY_SOCKET", None)
        self.log = (workdir / f"daemon-{number}.log").open("w")
        self.process = subprocess.Popen(
            [DISPATCH, "run", "-c", str(workdir / "config.toml"), "--exit-when-done"],
            cwd=workdir,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    async def exited(self) -> int:
        return await anyio.to_thread.run_sync(self.process.wait, abandon_on_cancel=True)


@dataclass(frozen=True, slots=True)
class Dial:
    connection: int  # the fake's connection n: daemon n's (they start one after the other)
    at: float  # when the platform received it (monotonic: the same clock in every process)
    record: str
    attempt: str


class Platform:
    """The fake Pinecall, in its process (tests.fake_platform), and the dials it reported."""

    def __init__(self, process: Process, out: Path) -> None:
        self.process = process
        self.out = out
        assert process.stdout is not None
        self._lines = BufferedByteReceiveStream(process.stdout)
        self.dials: list[Dial] = []
        self._changed = anyio.Event()

    @classmethod
    @asynccontextmanager
    async def running(cls, out: Path) -> AsyncIterator[tuple[Platform, str, str]]:
        command = [sys.executable, "-m", "tests.fake_platform", str(out), str(RING), str(TALK)]
        async with await anyio.open_process(command, cwd=REPO, stderr=None) as process:
            platform = cls(process, out)
            hello = json.loads(await platform._line())
            try:
                async with anyio.create_task_group() as tg:
                    # Read all along: a full pipe would stop the fake.
                    tg.start_soon(platform._read)
                    yield platform, hello["url"], hello["api_key"]
                    tg.cancel_scope.cancel()
            finally:
                if process.returncode is None:
                    process.kill()

    async def _line(self) -> bytes:
        return await self._lines.receive_until(b"\n", 1 << 16)

    async def _read(self) -> None:
        with contextlib.suppress(anyio.EndOfStream, anyio.IncompleteRead):
            while True:
                d = json.loads(await self._line())
                self.dials.append(Dial(d["connection"], d["at"], d["id"], d["dispatch_id"]))
                self._changed.set()
                self._changed = anyio.Event()

    async def wait_until(self, predicate: Callable[[list[Dial]], bool]) -> None:
        """Return once ``predicate(dials)`` holds, looked at as dials are reported."""
        while not predicate(self.dials):
            await self._changed.wait()

    async def frames(self) -> tuple[list[Dial], dict[str, tuple[str, float, float]]]:
        """Stop it; every dial, and per call id: (number, when the platform began dialing,
        when the call ended)."""
        assert self.process.stdin is not None
        await self.process.stdin.aclose()
        await self.process.wait()
        recorded = json.loads(self.out.read_text())
        dials = [
            Dial(c, at, f["metadata"]["id"], f["metadata"]["dispatch_id"])
            for c, f, at in recorded["received"]
            if f.get("event") == "call.dial"
        ]
        sent = [(f, at) for _, f, at in recorded["sent"]]
        began = {f["call_id"]: (f["to"], at) for f, at in sent if f.get("event") == "call.dialing"}
        ended = {f["call_id"]: at for f, at in sent if f.get("event") == "call.ended"}
        # A call of the killed daemon ends at the platform all the same, unseen by anyone.
        calls = {cid: (to, at, ended.get(cid, at + RING + TALK)) for cid, (to, at) in began.items()}
        return dials, calls


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    best = live = 0
    for _, step in edges:
        live += step
        best = max(best, live)
    return best


def utilisation(starts: list[float]) -> float:
    """The share of the allowed rate that ``starts`` (a saturated stretch) reached. The limit
    makes any LIMIT + 1 consecutive starts span a window at least; at the full rate they
    span exactly that. Measured over whole such spans, it does not depend on where in the
    stretch the starts bunch (a window's worth may go at once)."""
    ordered = sorted(starts)
    spans = (len(ordered) - 1) // LIMIT
    assert spans >= 3, f"a stretch of {len(ordered)} starts is too short to measure"
    return spans * WINDOW / (ordered[spans * LIMIT] - ordered[0])


async def test_three_daemons_share_one_campaign_one_limit_and_lose_nothing(
    tmp_path: Path, postgres_url: str
) -> None:
    numbers = phones()
    rows = [f"r{n:04d},{next(numbers)}" for n in range(RECORDS)]
    (tmp_path / "leads.csv").write_text("id,phone\n" + "\n".join(rows) + "\n")
    daemons: list[Daemon] = []
    async with Platform.running(tmp_path / "platform.json") as (platform, url, api_key):
        (tmp_path / "config.toml").write_text(config(url, postgres_url))
        try:
            with anyio.fail_after(BUDGET):
                # One after the other, so that the fake's connection n is daemon n's.
                daemons.append(first := Daemon(tmp_path, api_key, 1))
                await platform.wait_until(lambda dials: len(dials) >= 1)
                daemons.append(doomed := Daemon(tmp_path, api_key, 2))
                await platform.wait_until(lambda dials: any(d.connection == 2 for d in dials))
                [(doomed_id,)] = await fetch(
                    postgres_url, f"SELECT id FROM instances WHERE pid = {doomed.process.pid}"
                )
                await platform.wait_until(lambda dials: len(dials) >= RECORDS // 10)
                daemons.append(joiner := Daemon(tmp_path, api_key, 3))  # into a running campaign
            with anyio.fail_after(BUDGET):
                killed_at = await kill_in_a_call(platform, doomed, doomed_id, postgres_url)
            [(last_beat,)] = await fetch(
                postgres_url, f"SELECT heartbeat_at FROM instances WHERE id = '{doomed_id}'"
            )
            with anyio.fail_after(BUDGET):
                codes = [await first.exited(), await joiner.exited()]
        finally:
            for daemon in daemons:
                daemon.kill()
                daemon.log.close()
        dials, calls = await platform.frames()
    logs = {n: (tmp_path / f"daemon-{n}.log").read_text() for n in (1, 2, 3)}
    assert codes == [0, 0], logs

    # No record dialed twice; every one dialed but for the killed daemon's calls in flight,
    # interrupted (some maybe before their dial went out), never dialed again. The killed
    # daemon's queued records were dialed by the others.
    per_record = Counter(dial.record for dial in dials)
    assert max(per_record.values()) == 1, per_record.most_common(3)
    states = dict(await fetch(postgres_url, "SELECT record_id, state FROM records"))
    interrupted = {r for r, state in states.items() if state == "interrupted"}
    assert set(per_record) | interrupted == {row.split(",")[0] for row in rows}
    assert set(states.values()) <= {"completed", "interrupted"}, Counter(states.values())
    assert any(dial.connection != 2 for dial in dials if dial.at > killed_at)

    # The killed daemon's calls in flight, and only its, were interrupted, once its
    # heartbeat had expired (the store's times: one clock).
    recovered = await fetch(
        postgres_url, "SELECT owner, ended_at FROM attempts WHERE state = 'interrupted'"
    )
    assert 1 <= len(recovered) <= CONCURRENT, recovered
    assert {owner for owner, _ in recovered} == {doomed_id}
    assert min(ended for _, ended in recovered) >= last_beat + timedelta(seconds=EXPIRY)
    assert "cluster.instance_lost" in logs[1] + logs[3]

    # No number in two calls at once, never more calls than the cap, never more dial starts
    # in a window than the limit: at the platform.
    by_number: dict[str, list[tuple[float, float]]] = {}
    for number, start, end in calls.values():
        by_number.setdefault(number, []).append((start, end))
    assert max(most_at_once(spans) for spans in by_number.values()) == 1
    assert most_at_once([(s, e) for _, s, e in calls.values()]) <= CONCURRENT
    starts = [dial.at for dial in dials]
    assert max_in_any_window(starts, WINDOW) <= LIMIT

    # While all three ran (the joiner's first dial to the kill), saturated: at least 90 % of
    # the allowed rate, and each daemon a fair share of the dials.
    joined_at = min(dial.at for dial in dials if dial.connection == 3)
    stretch = [dial for dial in dials if joined_at <= dial.at < killed_at]
    used = utilisation([dial.at for dial in stretch])
    shares = Counter(dial.connection for dial in stretch)
    lost = sum(log.count("dial.claimed_elsewhere") for log in logs.values())
    logger.info("cluster figures: utilisation %.1f%% over %d starts, shares %s, max per window "
                "%d, interrupted %d, claims lost %d", 100 * used, len(stretch), dict(shares),
                max_in_any_window(starts, WINDOW), len(recovered), lost)  # fmt: skip
    assert used >= 0.9, (used, len(stretch))
    assert min(shares[n] for n in (1, 2, 3)) >= 0.2 * len(stretch), shares

    # Callbacks: every record's outcome delivered exactly once (a delivery the killed daemon
    # made but had not marked is made again by its adopter: at least once, as promised), in
    # the order of the record's events, and nothing left in the outbox.
    deliveries: dict[str, list[tuple[int, str]]] = {}
    for line in (tmp_path / "callbacks.log").read_text().splitlines():
        pid, name, record_id, *_ = line.split(" ")
        deliveries.setdefault(record_id, []).append((int(pid), name))
    assert set(deliveries) == set(states)
    repeated = 0
    for record_id, delivered in deliveries.items():
        names = [name for _, name in delivered]
        outcomes = [pid for pid, name in delivered if name in ("on_completed", "on_failed")]
        repeated += len(outcomes) - 1
        assert len(outcomes) == 1 or (len(outcomes) == 2 and doomed.process.pid in outcomes), (
            record_id,
            delivered,
        )
        assert names[-1] in ("on_completed", "on_failed"), (record_id, delivered)
        assert set(names) <= {"on_dispatched", "on_completed", "on_failed"}
        if "on_completed" in names:
            assert names.index("on_dispatched") < names.index("on_completed"), delivered
    assert repeated <= CONCURRENT
    undelivered = await fetch(
        postgres_url, "SELECT count(*) FROM outbox WHERE delivered_at IS NULL"
    )
    assert undelivered == [(0,)]


async def kill_in_a_call(platform: Platform, doomed: Daemon, doomed_id: str, url: str) -> float:
    """SIGKILL ``doomed`` (daemon 2) late in the campaign, at one of its dials, once the store
    shows it a call in flight (stopped meanwhile, so that none ends unseen); the time."""
    mark = RECORDS * 4 // 5
    in_flight = (
        f"SELECT count(*) FROM attempts WHERE owner = '{doomed_id}' "
        "AND state IN ('dialing', 'active')"
    )
    while True:
        await platform.wait_until(
            lambda dials: len(dials) > mark and any(d.connection == 2 for d in dials[mark:])  # noqa: B023
        )
        mark = len(platform.dials)
        stopped_at = anyio.current_time()
        doomed.process.send_signal(signal.SIGSTOP)
        if await fetch(url, in_flight) != [(0,)]:
            doomed.kill()
            return stopped_at
        doomed.process.send_signal(signal.SIGCONT)


async def test_status_shows_each_daemon_its_heartbeat_its_share_and_the_global_rate(
    tmp_path: Path, postgres_url: str
) -> None:
    (tmp_path / "leads.csv").write_text("id,phone\n")
    (tmp_path / "config.toml").write_text(config("ws://127.0.0.1:9", postgres_url))
    stores = [Store(postgres_url, cluster=True) for _ in range(3)]
    try:
        for n, store in enumerate(stores):
            await store.open()
            await store.claim()
            for k in range(3 - n):  # 3, 2 and 1 dials
                claim = await store.claim_dial(
                    attempt_id=f"a{n}{k}", strategy="leads", record_id=f"r{n}{k}", number=1,
                    phone=f"+1415555{3000 + 10 * n + k}", at=store.clock.now(),
                    limits=ClusterLimits(10, None, WINDOW, HOLD, Caps()),
                )  # fmt: skip
                assert isinstance(claim, Claimed)
        # A beat committed after `dispatch status` read the clock (a race it always runs,
        # here widened): a fresh heartbeat, not one from the future.
        async with stores[2].engine.begin() as conn:
            await conn.execute(
                text("UPDATE instances SET heartbeat_at = clock_timestamp() + interval '10 s' "
                     "WHERE id = :id"), {"id": stores[2].owner}
            )  # fmt: skip
        command = [DISPATCH, "status", "-c", str(tmp_path / "config.toml")]
        shown = await anyio.to_thread.run_sync(
            lambda: subprocess.run(command, capture_output=True, text=True, check=True)
        )
    finally:
        for store in stores:
            await store.aclose()
    daemon = re.compile(
        rf"daemon: running on {re.escape(socket.gethostname())} \(pid {os.getpid()}\), "
        r"heartbeat (\d+)s ago, (\d) dials in the last hour \((\d+)%\)"
    )
    shown_daemons = [daemon.fullmatch(line) for line in shown.stdout.splitlines()[2:5]]
    ages, dials, shares = zip(*(m.groups() for m in shown_daemons if m), strict=True)
    assert (dials, shares) == (("3", "2", "1"), ("50", "33", "17")), shown.stdout
    assert ages[2] == "0"
    assert all(int(age) < EXPIRY for age in ages)
    rate = "dial starts in the last minute: 6 (3 daemons together; limit 50 per 5s)"
    assert f"calls in flight: 6; {rate};" in shown.stdout
