"""The metrics endpoint over real HTTP: /metrics reads the hub, /healthz judges it."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import anyio
import httpx
import pytest
from pydantic import ValidationError

import dispatch.service.backlog
from dispatch import DispatchHub
from dispatch.abc import Record
from dispatch.clock import SystemClock
from dispatch.config import MetricsConfig, Settings
from dispatch.daemon import run_daemon
from dispatch.errors import StoreError
from dispatch.hub import HubStatistics
from dispatch.options import Backoff
from dispatch.service.backlog import OutboxBacklog
from dispatch.service.metrics import (
    HealthLimits,
    MetricsServer,
    agent_connected,
    health_problem,
    parse_listen,
)
from dispatch.store import outbox as ob
from dispatch.store.store import StoreStatistics
from dispatch.testing import ManualClock, ScriptedAgent
from tests.support import ListStrategy, rec, store_for

pytestmark = pytest.mark.anyio

A, B, C = "+14155552671", "+14155552672", "+14155552673"
LIMITS = HealthLimits(store_grace=60.0, agent_grace=120.0, loop_lag=5.0)
HEALTHY = StoreStatistics(commits=3, writes=5)
FAILING = "dispatch_outbox_failing"


@asynccontextmanager
async def serving(
    hub: Any, limits: HealthLimits = LIMITS, backlog: OutboxBacklog | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """``hub``'s endpoint on a free port, and a client pointed at it."""
    async with anyio.create_task_group() as tg:
        port = await tg.start(MetricsServer(hub, "127.0.0.1", 0, limits, backlog).serve)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            yield client
        tg.cancel_scope.cancel()


def samples(text: str) -> dict[str, float]:
    """``{'dispatch_dials_total': 3.0, 'dispatch_outcomes_total{outcome="failed"}': 1.0}``."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


async def test_metrics_count_the_dials_and_outcomes_of_a_running_hub(sqlite_url: str) -> None:
    clock = SystemClock()  # the calls end at once; the hub's own timers need not move
    source = ListStrategy([rec("r1", A), rec("r2", B), rec("r3", C), rec("bad", "12")])
    agent = ScriptedAgent(script={C: ["failed"]})
    hub = DispatchHub(
        agent=agent, strategies=[source], store=store_for(sqlite_url, clock), clock=clock
    )
    with anyio.fail_after(20):
        async with hub:
            await source.signal.wait_until(
                lambda: (s := hub.statistics()).completed + s.failed + s.skipped == 4
            )
            async with serving(hub) as client:
                response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    got = samples(response.text)
    assert got["dispatch_dials_total"] == 3
    assert got['dispatch_outcomes_total{outcome="completed"}'] == 2
    assert got['dispatch_outcomes_total{outcome="failed"}'] == 1
    assert got['dispatch_outcomes_total{outcome="skipped"}'] == 1
    assert got["dispatch_calls_active"] == 0
    assert got['dispatch_strategy_pending{strategy="list"}'] == 0
    assert got["dispatch_store_available"] == 1
    assert got["dispatch_store_commits_total"] > 0
    assert got["dispatch_store_unavailable_seconds"] == 0
    assert "dispatch_agent_connected" not in got  # a scripted agent has no connection


class Unlucky(ListStrategy):
    """Its ``on_completed`` always fails, so that callback stays in the outbox; its first
    polls take 0.3 s of the clock each."""

    def __init__(self, records: list[Record], clock: ManualClock) -> None:
        super().__init__(records)
        self.clock = clock
        self.slow_polls = 2

    async def poll(self) -> list[Record]:
        if self.slow_polls:
            self.slow_polls -= 1
            self.clock.advance(0.3)
        return await super().poll()

    async def on_completed(self, record: Record, call_id: str, reason: str) -> None:
        raise RuntimeError("the CRM is down")


async def test_metrics_show_outcomes_by_reason_polls_commit_latency_and_the_outbox_backlog(
    sqlite_url: str,
) -> None:
    clock = ManualClock()
    source = Unlucky([rec("r1", A), rec("r2", B), rec("bad", "12")], clock)
    source.fail_polls = 1
    hub = DispatchHub(
        agent=ScriptedAgent(script={B: ["busy"]}), strategies=[source], clock=clock,
        store=store_for(sqlite_url, clock), poll_interval=5.0,
        callback_backoff=Backoff(initial=60.0, maximum=60.0),
    )  # fmt: skip
    backlog = OutboxBacklog(hub.store, clock, every=0)  # read at every scrape, for the test

    async def scrape(client: httpx.AsyncClient, until: Any = lambda got: True) -> dict[str, float]:
        while not until(got := samples((await client.get("/metrics")).text)):
            await clock.wait_all_tasks_blocked()  # the outbox is still delivering
        return got

    with anyio.fail_after(20):
        async with hub, serving(hub, backlog=backlog) as client:
            await source.signal.wait_until(lambda: source.polls == 1)  # it failed
            await clock.wait_for_deadline(clock.monotonic() + 5.0)
            clock.advance(5.0)  # the next poll, which reads the records
            await source.signal.wait_until(
                lambda: (s := hub.statistics()).completed + s.failed + s.skipped == 3
            )
            # Until the outbox delivered all it could: r1's on_completed keeps failing.
            got = await scrape(
                client, lambda got: (got.get("dispatch_outbox_pending"), got.get(FAILING)) == (1, 1)
            )
            clock.advance(30.0)
            later = await scrape(client)
    assert got['dispatch_attempt_outcomes_total{reason="hangup",state="completed"}'] == 1
    assert got['dispatch_attempt_outcomes_total{reason="busy",state="rejected"}'] == 1
    assert got['dispatch_skips_total{reason="invalid_phone"}'] == 1
    assert got['dispatch_outcomes_total{outcome="failed"}'] == 1  # the records' view, as before
    assert got['dispatch_poll_failures_total{strategy="list"}'] == 1
    # The good poll took 0.3 s of the clock; the failed one is counted as a failure only.
    assert got['dispatch_poll_duration_seconds_count{strategy="list"}'] == 1
    assert got['dispatch_poll_duration_seconds_sum{strategy="list"}'] == pytest.approx(0.3)
    assert got['dispatch_poll_duration_seconds_bucket{le="0.25",strategy="list"}'] == 0
    assert got['dispatch_poll_duration_seconds_bucket{le="0.5",strategy="list"}'] == 1
    commits = got["dispatch_store_commits_total"]
    assert commits > 0
    assert got["dispatch_store_commit_duration_seconds_count"] == commits
    assert got['dispatch_store_commit_duration_seconds_bucket{le="+Inf"}'] == commits
    assert later["dispatch_outbox_oldest_age_seconds"] == pytest.approx(30.0)


async def test_the_backlog_is_read_at_most_once_per_interval_whoever_asks(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ManualClock()
    hub = DispatchHub(
        agent=ScriptedAgent(), strategies=[ListStrategy()], store=store_for(sqlite_url, clock),
        clock=clock,
    )  # fmt: skip
    backlog = OutboxBacklog(hub.store, clock, every=10.0)
    reads = []

    async def read(engine: Any) -> ob.Backlog:
        reads.append(clock.monotonic())
        return await ob.backlog(engine)

    monkeypatch.setattr(dispatch.service.backlog, "backlog", read)
    with anyio.fail_after(20):
        async with hub:
            async with anyio.create_task_group() as tg:  # two askers at once: one read
                tg.start_soon(backlog.refresh)
                tg.start_soon(backlog.refresh)
            clock.advance(9.0)
            await backlog.refresh()
            clock.advance(1.0)
            await backlog.refresh()
    assert reads == [0.0, 10.0]
    assert backlog.last == ob.Backlog(0, 0, None)


async def test_the_backlog_is_not_read_while_the_store_is_known_to_be_unreachable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = SimpleNamespace(available=False, engine="the engine")
    backlog = OutboxBacklog(store, ManualClock(), every=0)  # type: ignore[arg-type]
    reads = []

    async def read(engine: Any) -> ob.Backlog:
        reads.append(engine)
        return ob.Backlog(3, 1)

    monkeypatch.setattr(dispatch.service.backlog, "backlog", read)
    assert await backlog.refresh() is None  # an outage: not even tried
    store.available = True
    assert await backlog.refresh() == ob.Backlog(3, 1)
    store.available = False
    assert await backlog.refresh() == ob.Backlog(3, 1)  # the last value read
    assert reads == ["the engine"]


async def test_a_failed_read_of_the_backlog_is_tried_again_within_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = ManualClock()
    store = SimpleNamespace(available=True, engine="the engine")
    backlog = OutboxBacklog(store, clock, every=10.0)  # type: ignore[arg-type]
    answers: list[Any] = [StoreError("no such table: outbox"), ob.Backlog(2, 0)]
    reads = []

    async def read(engine: Any) -> ob.Backlog:
        reads.append(clock.monotonic())
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return cast(ob.Backlog, answer)

    monkeypatch.setattr(dispatch.service.backlog, "backlog", read)
    assert await backlog.refresh() is None  # the schema is still being migrated, say
    clock.advance(0.5)
    assert await backlog.refresh() is None  # not yet
    clock.advance(0.5)
    assert await backlog.refresh() == ob.Backlog(2, 0)
    assert reads == [0.0, 1.0]


async def test_healthz_is_ok_and_unknown_paths_are_404(sqlite_url: str) -> None:
    clock = ManualClock()
    hub = DispatchHub(
        agent=ScriptedAgent(), strategies=[ListStrategy()], store=store_for(sqlite_url, clock),
        clock=clock,
    )  # fmt: skip
    with anyio.fail_after(20):
        async with hub, serving(hub) as client:
            health = await client.get("/healthz")
            missing = await client.get("/nope")
            posted = await client.post("/metrics")
    assert (health.status_code, health.text) == (200, "ok\n")
    assert missing.status_code == 404
    assert posted.status_code == 405


@dataclass
class FakeStore:
    stats: StoreStatistics = HEALTHY

    @property
    def available(self) -> bool:
        return self.stats.unavailable_since is None

    @property
    def engine(self) -> Any:
        raise StoreError("the store is not open")  # no backlog to read

    def statistics(self) -> StoreStatistics:
        return self.stats


@dataclass
class FakeHub:
    """What the endpoint reads of a hub, with a store whose outage a test sets."""

    clock: ManualClock = field(default_factory=ManualClock)
    store: FakeStore = field(default_factory=FakeStore)
    agent: Any = field(default_factory=ScriptedAgent)

    def strategy_statistics(self) -> dict[str, Any]:
        return {}

    def statistics(self) -> HubStatistics:
        return HubStatistics(
            pending=0, waiting=0, active=0, dialed=0, completed=0, failed=0, skipped=0,
            already_handled=0,
        )  # fmt: skip


async def test_healthz_answers_503_with_the_reason_once_a_store_outage_outlasts_its_grace() -> None:
    hub = FakeHub()
    with anyio.fail_after(10):
        async with serving(hub) as client:
            start = hub.clock.monotonic()
            hub.store.stats = StoreStatistics(1, 1, held=2, unavailable_since=start, failed_tries=4)
            hub.clock.advance(30)
            within_grace = await client.get("/healthz")
            hub.clock.advance(40)
            past_grace = await client.get("/healthz")
            metrics = samples((await client.get("/metrics")).text)
    assert within_grace.status_code == 200
    assert past_grace.status_code == 503
    assert past_grace.text == "store unreachable for 70s (4 failed tries)\n"
    assert metrics["dispatch_store_available"] == 0
    assert metrics["dispatch_store_unavailable_seconds"] == 70
    assert metrics["dispatch_store_writes_held"] == 2


async def test_healthz_fails_once_the_agent_stays_disconnected_past_its_grace() -> None:
    agent = SimpleNamespace(_ready=anyio.Event())  # a connection-keeping agent, disconnected
    hub = FakeHub(agent=agent)
    with anyio.fail_after(10):
        async with serving(hub) as client:
            first = await client.get("/healthz")  # the disconnection is noticed here
            hub.clock.advance(121)
            second = await client.get("/healthz")
            agent._ready.set()
            third = await client.get("/healthz")
            metrics = samples((await client.get("/metrics")).text)
    assert [first.status_code, second.status_code, third.status_code] == [200, 503, 200]
    assert second.text == "agent disconnected for 121s\n"
    assert metrics["dispatch_agent_connected"] == 1


def test_health_problem_puts_a_lagging_loop_first_and_tolerates_a_store_not_yet_open() -> None:
    outage = StoreStatistics(0, 0, unavailable_since=0.0, failed_tries=1)
    lagging = health_problem(now=100, store=outage, agent_down_since=0, loop_lag=6.5, limits=LIMITS)
    assert lagging == "event loop lagging: a 1s tick came 6.5s late"
    assert (
        health_problem(now=100, store=None, agent_down_since=None, loop_lag=0, limits=LIMITS)
        is None
    )
    assert (
        health_problem(now=59, store=outage, agent_down_since=None, loop_lag=0, limits=LIMITS)
        is None
    )


def test_agent_connected_reads_only_what_the_agent_exposes() -> None:
    assert agent_connected(ScriptedAgent()) is None
    assert agent_connected(SimpleNamespace(_ready=None)) is False
    ready = anyio.Event()
    ready.set()
    assert agent_connected(SimpleNamespace(_ready=ready)) is True


def test_metrics_config_parses_durations_and_rejects_a_listen_address_without_port() -> None:
    config = MetricsConfig(listen="127.0.0.1:9108", health_store_grace="2m")
    assert config.health_store_grace == 120.0
    assert parse_listen("127.0.0.1:9108") == ("127.0.0.1", 9108)
    assert parse_listen("[::1]:9108") == ("::1", 9108)
    assert parse_listen(":9108") == ("0.0.0.0", 9108)
    with pytest.raises(ValidationError):
        MetricsConfig(listen="localhost")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_the_daemon_serves_metrics_on_the_configured_address(
    tmp_path: Path, sqlite_url: str
) -> None:
    (tmp_path / "leads.csv").write_text(f"id,phone\nr1,{A}\n", encoding="utf-8")
    port = free_port()
    settings = Settings(
        store={"url": sqlite_url},
        agent={"kind": "simulated", "time_scale": 0},
        strategies=[{"kind": "csv", "path": "leads.csv", "watch": False}],
        metrics={"listen": f"127.0.0.1:{port}"},
    )
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: run_daemon(settings, base=tmp_path, environ={}))
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                while True:
                    try:
                        health = await client.get("/healthz")
                        break
                    except httpx.ConnectError:
                        await anyio.sleep(0.05)  # the daemon is still binding
                # Up before the hub: the figures read from the store come once it is open.
                while True:
                    metrics = samples((await client.get("/metrics")).text)
                    if "dispatch_outbox_pending" in metrics:
                        break
                    await anyio.sleep(0.05)  # the hub is still opening the store
            # Stopped as systemd stops it (a drain), not cancelled in the middle of a query:
            # a connection cut off there leaves the driver a task the loop cannot close.
            os.kill(os.getpid(), signal.SIGTERM)
    assert health.status_code == 200
    assert "dispatch_dials_total" in metrics
    assert any(name.startswith("dispatch_strategy_pending{") for name in metrics)
    assert metrics["dispatch_outbox_pending"] >= 0
    assert "dispatch_outbox_oldest_age_seconds" in metrics
    assert "dispatch_store_commit_duration_seconds_count" in metrics
    assert any(name.startswith("dispatch_poll_failures_total{") for name in metrics)
