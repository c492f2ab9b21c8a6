"""Three daemons, one campaign, one PostgreSQL, against the fake Pinecall: the fake's own
record of every frame is the ground truth. One daemon joins mid-campaign, one is SIGKILLed.

``DISPATCH_CLUSTER_RECORDS`` sets the campaign's size (300 in CI)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from dispatch.testing import Answer, FakePinecall, max_in_any_window
from tests.conftest import fetch

pytestmark = [pytest.mark.acceptance, pytest.mark.anyio, pytest.mark.timeout(240)]

DISPATCH = str(Path(sys.executable).with_name("dispatch"))
RECORDS = int(os.environ.get("DISPATCH_CLUSTER_RECORDS", "300"))
LIMIT, WINDOW, CONCURRENT = 20, 2.0, 6  # 10 dial starts a second, saturated by 3 daemons
RING, TALK = 0.05, 0.4
HOLD = 3.0  # a dead daemon's numbers (and call slots) are held this long
# How late a dial may reach the platform after its start is counted (the commit, the socket).
LATENCY = 0.25


def phones() -> Iterator[str]:
    """A number for each record; every tenth number twice (two records, one person)."""
    n = 0
    while True:
        number = f"+1415555{3000 + n:04d}"
        yield number
        if n % 10 == 0:
            yield number
        n += 1


def config(url: str, store: str, leads: Path) -> str:
    return f"""
poll_interval = 0.5
recover_hold = {HOLD}
drain_timeout = 10.0
[store]
url = "{store}"
heartbeat_interval = 0.5
heartbeat_timeout = 2.0
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
kind = "csv"
name = "leads"
path = "{leads}"
watch = false
"""


class Daemon:
    def __init__(self, workdir: Path, api_key: str, number: int) -> None:
        env = {**os.environ, "PINECALL_API_KEY": api_key}
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


def calls(fake: FakePinecall) -> dict[str, tuple[str, float, float]]:
    """Per call id: (number, when the platform began dialing, when the call ended)."""
    began = {r.frame["call_id"]: r for r in fake.sent if r.event == "call.dialing"}
    ended = {r.frame["call_id"]: r.at for r in fake.sent if r.event == "call.ended"}
    # A call of the killed daemon ends at the platform all the same, unseen by anyone.
    return {
        cid: (r.frame["to"], r.at, ended.get(cid, r.at + RING + TALK)) for cid, r in began.items()
    }


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    best = live = 0
    for _, step in edges:
        live += step
        best = max(best, live)
    return best


async def test_three_daemons_share_one_campaign_one_limit_and_lose_nothing(
    tmp_path: Path, postgres_url: str
) -> None:
    numbers = phones()
    rows = [f"r{n:04d},{next(numbers)}" for n in range(RECORDS)]
    leads = tmp_path / "leads.csv"
    leads.write_text("id,phone\n" + "\n".join(rows) + "\n")
    async with FakePinecall(default=Answer(ring=RING, talk=TALK)) as fake:
        (tmp_path / "config.toml").write_text(config(fake.url, postgres_url, leads))
        first = Daemon(tmp_path, fake.api_key, 1)
        doomed = Daemon(tmp_path, fake.api_key, 2)
        try:
            with anyio.fail_after(120):
                await fake.wait_for("call.dial", RECORDS // 6)
            joiner = Daemon(tmp_path, fake.api_key, 3)  # joins a running campaign
            with anyio.fail_after(120):
                await fake.wait_for("call.dial", RECORDS // 3)
            doomed.kill()
            with anyio.fail_after(180):
                codes = [await first.exited(), await joiner.exited()]
        finally:
            for daemon in (first, doomed, joiner):
                daemon.kill()
                daemon.log.close()
        timeline = calls(fake)
        dial_frames = fake.received("call.dial")
    logs = {n: (tmp_path / f"daemon-{n}.log").read_text() for n in (1, 2, 3)}
    assert codes == [0, 0], logs

    # Every record dialed at most once, and each exactly once but for the killed daemon's
    # calls in flight (interrupted, never re-dialed).
    per_record = Counter(frame.frame["metadata"]["id"] for frame in dial_frames)
    assert max(per_record.values()) == 1, per_record.most_common(3)
    states = dict(await fetch(postgres_url, "SELECT state, count(*) FROM records GROUP BY state"))
    interrupted = states.get("interrupted", 0)
    assert states.get("completed", 0) + interrupted == RECORDS, states
    assert len(per_record) == RECORDS
    assert interrupted <= CONCURRENT  # only the dead daemon's calls in flight

    # No number in two calls at once, never more calls than the cap, never more dial starts
    # in a window than the limit: at the platform.
    by_number: dict[str, list[tuple[float, float]]] = {}
    for number, start, end in timeline.values():
        by_number.setdefault(number, []).append((start, end))
    assert max(most_at_once(spans) for spans in by_number.values()) == 1
    assert most_at_once([(s, e) for _, s, e in timeline.values()]) <= CONCURRENT
    starts = [r.at for r in dial_frames]
    assert max_in_any_window(starts, WINDOW - LATENCY) <= LIMIT

    # Saturated, the three (then two) together reach 90 % of the allowed rate.
    busy = max(starts) - min(starts)
    allowed = LIMIT * (busy / WINDOW + 1)
    outage = 2.0 + HOLD  # the dead daemon's slots are held until its hold ends
    assert len(starts) >= 0.9 * allowed - LIMIT / WINDOW * outage, (len(starts), allowed)

    # Each instance dialed; the killed one's attempts were recovered by the others, after
    # its heartbeat expired, and every callback was delivered.
    owners = await fetch(postgres_url, "SELECT count(DISTINCT owner) FROM attempts")
    assert owners == [(3,)]
    undelivered = await fetch(
        postgres_url, "SELECT count(*) FROM outbox WHERE delivered_at IS NULL"
    )
    assert undelivered == [(0,)]
    assert "cluster.instance_lost" in logs[1] + logs[3]
