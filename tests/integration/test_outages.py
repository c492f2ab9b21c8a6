"""The store going away mid-campaign: a TCP proxy in front of PostgreSQL that the test cuts,
and pg_terminate_backend on the daemon's connections. Nothing dialed without a committed
intent, no outcome lost, the daemon never stops, one log line per outage."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from sqlalchemy.engine import make_url

import dispatch.hub
from dispatch import Backoff, DispatchHub, Store, SystemClock
from dispatch.testing import ManualClock, ScriptedAgent
from tests.conftest import fetch
from tests.faults import TcpProxy, tcp_proxy
from tests.support import PHONES, QUIET_HEARTBEAT, ListStrategy, rec

pytestmark = pytest.mark.anyio


@pytest.fixture
async def proxy(postgres_url: str) -> AsyncIterator[TcpProxy]:
    url = make_url(postgres_url)
    async with tcp_proxy(url.host or "127.0.0.1", url.port or 5432) as running:
        yield running


def through(url: str, proxy: TcpProxy) -> str:
    return make_url(url).set(port=proxy.port).render_as_string(hide_password=False)


def outage_store(url: str) -> Store:
    # Real time for the writer's retries (short), a heartbeat out of the way.
    return Store(url, clock=SystemClock(), retry=Backoff(0.02, 0.1), heartbeat=QUIET_HEARTBEAT)


def hub_on(store: Store, agent: ScriptedAgent, source: ListStrategy, **options: Any) -> DispatchHub:
    options.setdefault("clock", ManualClock())  # polls only when asked: the test leads
    options.setdefault("poll_interval", 1000.0)
    return DispatchHub(agent=agent, strategies=[source], store=store, **options)


async def delivered_marks(url: str) -> None:
    """Until the outbox has marked every callback delivered (the daemon's own writes done)."""
    query = "SELECT count(*) FROM outbox WHERE delivered_at IS NULL"
    while await fetch(url, query) != [(0,)]:  # noqa: ASYNC110 - another process's view
        await anyio.sleep(0.01)


def messages(caplog: pytest.LogCaptureFixture, event: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(event)]


async def test_outcomes_of_calls_ended_during_an_outage_are_committed_once_it_is_back(
    postgres_url: str, proxy: TcpProxy, caplog: pytest.LogCaptureFixture
) -> None:
    agent = ScriptedAgent(auto_end=False)
    source = ListStrategy([rec("r0", PHONES[0]), rec("r1", PHONES[1])])
    store = outage_store(through(postgres_url, proxy))
    hub = hub_on(store, agent, source, max_concurrent=4)

    with caplog.at_level(logging.INFO, logger="dispatch"), anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await source.wait_for_events(2)  # both calls up, their call ids committed
            proxy.cut()
            # New records arrive while the store is away: their intents cannot be
            # committed, so they are not dialed.
            source.records += [rec("r2", PHONES[2]), rec("r3", PHONES[3])]
            source.poll_now()
            await store.wait_until(lambda s: s.unavailable_since is not None)
            for call in list(agent.live.values()):
                call.end("hangup", 7.0)  # two outcomes with nowhere to go
            await store.wait_until(lambda s: s.held >= 2)  # (and maybe a delivery mark)
            assert len(agent.dials) == 2
            assert hub.statistics().pending == 2
            await proxy.restore()
            await agent.wait_for_live(2)  # the store is back: the new records are dialed
            for call in list(agent.live.values()):
                call.end("hangup", 3.0)
            await source.wait_for_events(8)
            hub.stop()

    assert sorted(d.to for d in agent.dials) == sorted(PHONES[:4])
    rows = await fetch(
        postgres_url, "SELECT record_id, number, state, duration FROM attempts ORDER BY record_id"
    )
    assert rows == [
        ("r0", 1, "completed", 7.0),
        ("r1", 1, "completed", 7.0),
        ("r2", 1, "completed", 3.0),
        ("r3", 1, "completed", 3.0),
    ]
    assert sorted(e[:2] for e in source.events) == sorted(
        (name, f"r{n}") for n in range(4) for name in ("dispatched", "completed")
    )
    # One line when the outage began, one when it ended: not one per write or per retry.
    assert len(messages(caplog, "store.unavailable")) == 1
    assert len(messages(caplog, "store.available again")) == 1
    assert messages(caplog, "store.intent_failed") == []


async def test_a_store_refusing_connections_for_a_while_stops_nothing(
    postgres_url: str, proxy: TcpProxy
) -> None:
    agent = ScriptedAgent()
    source = ListStrategy()
    store = outage_store(through(postgres_url, proxy))
    hub = hub_on(store, agent, source, max_concurrent=2)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await source.wait_for_polls(1)
            proxy.cut(refuse=True)  # connection refused, as when PostgreSQL is down
            source.records = [rec(f"r{n}", PHONES[n]) for n in range(5)]
            source.poll_now()
            await store.wait_until(lambda s: s.unavailable_since is not None)
            await source.wait_for_polls(2)
            # Nothing is held (the intents failed at once): the writer keeps probing anyway,
            # so the end of a long outage is noticed.
            await store.wait_until(lambda s: s.failed_tries >= 4)
            assert agent.dials == []
            await proxy.restore()
            await source.wait_for_events(10)
            hub.stop()

    assert len(agent.dials) == 5
    assert await fetch(postgres_url, "SELECT state, count(*) FROM records GROUP BY state") == [
        ("completed", 5)
    ]


async def test_terminated_connections_mid_campaign_lose_nothing_and_dial_nobody_twice(
    postgres_url: str,
) -> None:
    async def ringing(_request: object) -> None:
        await anyio.sleep(0.02)  # calls take a moment, so the terminations land mid-campaign

    agent = ScriptedAgent(on_dial=ringing)
    records = [rec(f"r{n}", PHONES[n]) for n in range(40)]
    source = ListStrategy(records)
    store = outage_store(postgres_url)
    hub = hub_on(store, agent, source, max_concurrent=4, exit_when_done=True)
    terminated = 0

    async def terminate_backends() -> None:
        nonlocal terminated
        import asyncpg  # type: ignore[import-untyped]

        admin = await asyncpg.connect(postgres_url.replace("postgresql://", "postgres://", 1))
        await agent.wait_for_dials(1)  # mid-campaign: once the daemon is up and dialing
        try:
            name = make_url(postgres_url).database
            for _ in range(20):  # a storm of terminations, spread over the campaign
                terminated += await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = $1 AND pid <> pg_backend_pid()",
                    name,
                )
                await anyio.sleep(0.05)
        finally:
            await admin.close()

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(terminate_backends)
            await hub.run()

    assert terminated > 0
    assert sorted(d.to for d in agent.dials) == sorted(PHONES[:40])  # each number once
    assert await fetch(postgres_url, "SELECT state, count(*) FROM records GROUP BY state") == [
        ("completed", 40)
    ]
    assert await fetch(
        postgres_url, "SELECT count(*), count(DISTINCT record_id), max(number) FROM attempts"
    ) == [(40, 40, 1)]
    # Every callback at least once: those the storm kept from the last pass come with the
    # next start (which dials nobody).
    again = ScriptedAgent()
    with anyio.fail_after(30):
        await hub_on(outage_store(postgres_url), again, source, exit_when_done=True).run()
    assert again.dials == []
    completed = {e[1] for e in source.named("completed")}
    assert completed == {r.id for r in records}


async def test_a_daemon_stopped_during_an_outage_exits_and_its_calls_are_recovered(
    postgres_url: str,
    proxy: TcpProxy,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(dispatch.hub, "STORE_GRACE", 0.3)
    agent = ScriptedAgent(auto_end=False)
    source = ListStrategy([rec("r0", PHONES[0])])
    store = outage_store(through(postgres_url, proxy))
    hub = hub_on(store, agent, source, drain_timeout=0.0)

    with caplog.at_level(logging.ERROR, logger="dispatch"), anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await source.wait_for_events(1)  # on_dispatched: the call id is committed
            proxy.cut()
            agent.live["call-1"].end()
            await store.wait_until(lambda s: s.held >= 1)
            began = time.monotonic()
            hub.stop()
    assert time.monotonic() - began < 5  # the drain timeout plus the grace, not for ever
    [lost] = messages(caplog, "store.outcome_lost")
    assert "record=r0" in lost

    await proxy.restore()
    again = ScriptedAgent()
    restarted = hub_on(
        outage_store(postgres_url), again, ListStrategy([rec("r0", PHONES[0])]), exit_when_done=True
    )
    with anyio.fail_after(30):
        await restarted.run()
    assert again.dials == []  # the phone may have rung: never dialed again
    assert await fetch(postgres_url, "SELECT state, reason FROM attempts") == [
        ("interrupted", "process ended")
    ]


async def test_an_intent_whose_commit_reply_was_lost_is_dialed_once_when_the_store_is_back(
    postgres_url: str, proxy: TcpProxy
) -> None:
    # The intent reached the database and was committed, but the connection died before the
    # daemon heard so: it must neither dial (it does not know) nor leave the record stuck on
    # its own attempt number once the store is back.
    agent = ScriptedAgent()
    source = ListStrategy()
    store = outage_store(through(postgres_url, proxy))
    hub = hub_on(store, agent, source)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await source.wait_for_polls(1)
            proxy.lose_commit_reply(b"INSERT INTO attempts")
            source.records = [rec("r1", PHONES[0])]
            source.poll_now()
            await proxy.trapped.wait()
            await store.wait_until(lambda s: s.unavailable_since is not None)
            assert agent.dials == []
            await proxy.restore()
            await source.wait_for_events(2)
            hub.stop()

    assert [d.to for d in agent.dials] == [PHONES[0]]
    assert await fetch(postgres_url, "SELECT record_id, number, state FROM attempts") == [
        ("r1", 1, "completed")
    ]


async def test_an_outbox_read_failing_first_makes_the_writer_probe_not_a_busy_loop(
    postgres_url: str, proxy: TcpProxy
) -> None:
    agent = ScriptedAgent()
    source = ListStrategy([rec("r0", PHONES[0])])
    store = outage_store(through(postgres_url, proxy))
    hub = hub_on(store, agent, source)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await source.wait_for_events(2)
            await delivered_marks(postgres_url)  # the store is idle: nothing held, nothing due
            proxy.cut()  # reset at once: every try is quick
            before = proxy.attempts
            hub._outbox.wake()  # the outbox reads first: the writer has seen nothing yet
            await store.wait_until(lambda s: s.failed_tries >= 4)
            # A few tries with backoff (each try may open a connection or two), not a loop
            # of reads at full speed (over a thousand in a second).
            assert proxy.attempts - before < 40
            await proxy.restore()
            await store.wait_available()
            hub.stop()


async def test_a_stop_during_an_outage_that_drops_packets_ends_in_bounded_time(
    postgres_url: str,
    proxy: TcpProxy,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(dispatch.hub, "STORE_GRACE", 0.5)
    agent = ScriptedAgent(auto_end=False)
    source = ListStrategy([rec("r0", PHONES[0])])
    store = outage_store(through(postgres_url, proxy))
    hub = hub_on(store, agent, source, drain_timeout=0.5)

    with caplog.at_level(logging.ERROR, logger="dispatch"), anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await source.wait_for_events(1)
            proxy.blackhole()  # no error, no answer: every statement just waits
            agent.live["call-1"].end()
            began = time.monotonic()
            hub.stop()
    assert time.monotonic() - began < 8  # drain + grace + goodbyes, not minutes
    assert any("record=r0" in m for m in messages(caplog, "store.outcome_lost"))


async def test_every_caller_refused_during_an_outage_gets_an_error_of_its_own(
    postgres_url: str, proxy: TcpProxy
) -> None:
    import traceback

    from dispatch import StoreUnavailable

    store = outage_store(through(postgres_url, proxy))
    await store.open()
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(store.run)
            proxy.cut()
            errors: list[StoreUnavailable] = []
            for _ in range(50):
                try:
                    await store.polled("s", pending=0, waiting=0, at=store.clock.now())
                except StoreUnavailable as exc:
                    errors.append(exc)
            assert len(errors) == 50
            assert len({id(e) for e in errors}) == 50  # no shared instance collecting frames
            assert max(len(traceback.extract_tb(e.__traceback__)) for e in errors) < 10
            store.stop_retrying(after=0)
            store.close()
    finally:
        await store.aclose()


async def test_a_pooled_connection_the_server_closed_is_replaced_before_a_write(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The server ends the pool's idle connection (a restart, an idle timeout): the next write
    # finds out before it is sent (pre-ping) and takes a new one. No outage, nothing held.
    import asyncpg  # type: ignore[import-untyped]

    from dispatch.store import DoNotCall

    store = outage_store(postgres_url)
    await store.open()
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(store.run)
            now = SystemClock().now()
            await store.add_do_not_call([DoNotCall(PHONES[1], "cli")], at=now)
            admin = await asyncpg.connect(postgres_url.replace("postgresql://", "postgres://", 1))
            try:
                ended = await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = $1 AND pid <> pg_backend_pid()",
                    make_url(postgres_url).database,
                )
            finally:
                await admin.close()
            assert ended >= 1  # the pool's connection
            with caplog.at_level(logging.WARNING), anyio.fail_after(10):
                await store.add_do_not_call([DoNotCall(PHONES[2], "cli")], at=now)
            store.close()
    finally:
        await store.aclose()
    assert "store.unavailable" not in caplog.text
    assert store.statistics().failed_tries == 0
    assert await fetch(postgres_url, "SELECT phone FROM do_not_call ORDER BY phone") == [
        (PHONES[1],),
        (PHONES[2],),
    ]


async def test_what_an_outage_holds_in_memory_stays_bounded(
    postgres_url: str, proxy: TcpProxy
) -> None:
    # However long the outage and however much the polls bring, the daemon holds one write
    # per call that ended, one batch of skips (the poll waits for it) and a delivery mark or
    # two: not a write per polled row.
    agent = ScriptedAgent(auto_end=False)
    calls = [rec(f"r{n}", PHONES[n]) for n in range(3)]
    source = ListStrategy(calls)
    store = outage_store(through(postgres_url, proxy))
    hub = hub_on(store, agent, source, max_concurrent=3)
    most = 0
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await source.wait_for_events(3)  # three calls up
            proxy.cut()
            for call in list(agent.live.values()):
                call.end("hangup", 1.0)
            await store.wait_until(lambda s: s.held >= 3)
            # A big poll of records that would each be skipped: intake waits for its first
            # batch of skips to be committed before it makes the next.
            source.records = calls + [rec(f"bad{n}", "not a number") for n in range(4500)]
            source.poll_now()
            await store.wait_until(lambda s: s.held >= 4)
            tries = store.statistics().failed_tries
            for more in range(1, 6):  # the outage goes on, try after try
                await store.wait_until(lambda s, n=tries + more: s.failed_tries >= n)
                most = max(most, store.statistics().held)
                source.poll_now()
            assert agent.dials[3:] == []
            await proxy.restore()  # then the poll goes on, batch after batch
            await source.signal.wait_until(lambda: len(source.named("skipped")) == 4500)
            hub.stop()
    assert most <= 3 + 3, most  # the outcomes, a batch of skips, a mark and a snapshot
    states = await fetch(postgres_url, "SELECT state, count(*) FROM records GROUP BY state")
    assert sorted(states) == [("completed", 3), ("skipped", 4500)]
