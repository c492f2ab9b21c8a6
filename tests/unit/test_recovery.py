"""Restarts and failed writes: the hub never runs ahead of its ledger.

A number left in a call stays held; the rate limit survives a restart; a second daemon is
refused; an outcome the store refuses is never followed by a retry; a failed intent never
dials; an outcome known as the hub is cancelled is still recorded.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from dispatch import (
    Agent,
    AgentContext,
    Call,
    CallEnd,
    DialRequest,
    DispatchHub,
    Pacing,
    RetryPolicy,
    Store,
    StoreInUse,
)
from dispatch.errors import dispatch_error_in
from dispatch.testing import ManualClock, ScriptedAgent, max_in_any_window
from tests.conftest import fetch
from tests.support import PHONES, ListStrategy, rec, store_for
from tests.unit.test_hub import leave_attempt_in_flight

pytestmark = pytest.mark.anyio

A, B, C = PHONES[:3]


def make_hub(
    url: str, agent: Agent, *strategies: ListStrategy, clock: ManualClock, **options: Any
) -> DispatchHub:
    options.setdefault("poll_interval", 5.0)
    store = store_for(url, clock, **options.pop("store_options", {}))
    return DispatchHub(
        agent=agent, strategies=list(strategies), store=store, clock=clock, **options
    )


async def failure_of(hub: DispatchHub, *beside: Callable[[], Awaitable[None]]) -> Exception:
    """Run ``hub`` (with ``beside`` tasks) until it fails; the DispatchError it failed with."""
    try:
        async with anyio.create_task_group() as tg:
            for task in beside:
                tg.start_soon(task)
            await hub.run()
    except BaseException as exc:  # a task group wraps what its tasks raise
        error = dispatch_error_in(exc)
        if error is None:
            raise
        return error
    raise AssertionError("the hub did not fail")


async def create_store(url: str) -> None:
    store = Store(url)
    await store.open()  # migrated: the tables exist
    await store.aclose()


def add_trigger(url: str, sql: str) -> None:
    """A trigger in the store's own database: the store refuses some writes for real."""
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        conn.execute(sql)


async def test_a_number_left_in_a_call_by_a_dead_daemon_is_held_after_recovery(
    sqlite_url: str,
) -> None:
    await leave_attempt_in_flight(sqlite_url, "r1", A)
    clock = ManualClock()
    agent = ScriptedAgent()
    source = ListStrategy([rec("r1", A), rec("r2", A), rec("r3", B)])
    hub = make_hub(sqlite_url, agent, source, clock=clock, exit_when_done=True)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await agent.wait_for_dials(1)
            await clock.wait_for_deadline(600.0)  # the hold: the longest call, by default
            clock.advance(599.0)
            await clock.wait_all_tasks_blocked()
            assert [d.to for d in agent.dials] == [B]  # r2 shares r1's number: it waits
            assert (hub.statistics().pending, hub.statistics().held_numbers) == (1, 1)
            clock.advance(1.0)

    assert [d.to for d in agent.dials] == [B, A]
    assert sorted(await fetch(sqlite_url, "SELECT record_id, state FROM records")) == [
        ("r1", "interrupted"),
        ("r2", "completed"),
        ("r3", "completed"),
    ]


async def test_a_number_whose_dial_outcome_is_unknown_is_held_too(sqlite_url: str) -> None:
    clock = ManualClock()
    agent = ScriptedAgent(script={A: ["unknown"]})
    source = ListStrategy([rec("r1", A), rec("r2", A)])
    hub = make_hub(sqlite_url, agent, source, clock=clock, recover_hold=120.0)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await agent.wait_for_dials(1)
            await clock.wait_for_deadline(120.0)
            await clock.wait_all_tasks_blocked()
            assert hub.statistics().held_numbers == 1
            assert len(agent.dials) == 1
            clock.advance(120.0)
            await agent.wait_for_dials(2)
            hub.stop()


async def test_the_rate_limit_holds_across_a_restart(sqlite_url: str) -> None:
    pacing = Pacing(max_calls_per_minute=3, max_concurrent=3)
    clock = ManualClock()
    agent = ScriptedAgent()
    first = ListStrategy([rec(f"a{n}", PHONES[n]) for n in range(3)])
    with anyio.fail_after(10):
        await make_hub(
            sqlite_url, agent, first, clock=clock, pacing=pacing, exit_when_done=True
        ).run()

    # A crash loop: the next daemon starts 10 s later, within the same window.
    later = ManualClock(wall=clock.now() + timedelta(seconds=10))
    again = ScriptedAgent()
    second = ListStrategy([rec(f"b{n}", PHONES[10 + n]) for n in range(3)])
    hub = make_hub(sqlite_url, again, second, clock=later, pacing=pacing, exit_when_done=True)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            # The first daemon's starts are 10 s old: the window opens in 50 s (plus the
            # margin for the commit that followed each intent).
            await later.wait_for_deadline(51.0)
            later.advance(50.999)
            await later.wait_all_tasks_blocked()
            assert hub.statistics().rate_limited == 1
            assert again.dials == []
            later.advance(0.001)

    assert len(again.dials) == 3
    starts = [
        datetime.fromisoformat(str(t)).timestamp()
        for (t,) in await fetch(sqlite_url, "SELECT dialed_at FROM attempts")
    ]
    assert max_in_any_window(starts, 60.0) == 3


async def test_a_dial_start_is_counted_from_the_commit_of_its_intent(sqlite_url: str) -> None:
    clock = ManualClock()
    agent = ScriptedAgent()
    source = ListStrategy()
    pacing = Pacing(max_calls_per_minute=1, max_concurrent=2)
    hub = make_hub(sqlite_url, agent, source, clock=clock, pacing=pacing)
    database = sqlite_url.removeprefix("sqlite:///")

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await clock.wait_for_deadline(5.0)  # the first poll is done, its snapshot written
            blocker = sqlite3.connect(database, isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")  # the disk is slow: the intent waits 5 s
            source.records = [rec("r1", A), rec("r2", B)]
            source.poll_now()
            await clock.wait_all_tasks_blocked()  # r1's intent waits; r2 waits for room
            assert (hub.statistics().active, hub.statistics().rate_limited) == (2, 1)
            clock.advance(5.0)
            blocker.execute("ROLLBACK")
            blocker.close()
            await agent.wait_for_dials(1)
            # r1 started at 5 s, when its intent was committed, not at 0 s when it got its
            # room: the next start is allowed at 65 s, not 60 s.
            await clock.wait_for_deadline(60.0)
            clock.advance(55.0)
            await clock.wait_for_deadline(65.0)
            assert hub.statistics().rate_limited == 1
            clock.advance(5.0)
            await agent.wait_for_dials(2)
            hub.stop()


async def test_a_second_hub_on_the_same_store_is_refused(sqlite_url: str) -> None:
    clock = ManualClock()
    agent = ScriptedAgent(auto_end=False)
    first = make_hub(sqlite_url, agent, ListStrategy([rec("r1", A)]), clock=clock)
    second = make_hub(sqlite_url, ScriptedAgent(), ListStrategy([rec("r1", A)]), clock=clock)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(first.run)
            await agent.wait_for_live(1)
            error = await failure_of(second)
            assert isinstance(error, StoreInUse)
            assert re.match(r"store in use by \S+:\d+ since ", str(error)), error
            agent.live["call-1"].end()
            first.stop()

    assert await fetch(sqlite_url, "SELECT state FROM attempts") == [("completed",)]


async def test_a_hub_whose_store_was_taken_over_stops(sqlite_url: str) -> None:
    from dispatch import Heartbeat

    clock = ManualClock()
    hub = make_hub(
        sqlite_url,
        ScriptedAgent(),
        ListStrategy(),
        clock=clock,
        store_options={"heartbeat": Heartbeat(interval=10.0, timeout=30.0)},
    )

    async def take_over() -> None:
        await clock.wait_for_deadline(10.0)
        # Another daemon judged this one dead and replaced its row.
        with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as conn:
            conn.execute("DELETE FROM instances")
        clock.advance(10.0)

    with anyio.fail_after(10):
        error = await failure_of(hub, take_over)
    assert isinstance(error, StoreInUse)
    assert "took the store over" in str(error)


async def test_an_outcome_the_store_refuses_is_never_followed_by_a_retry(
    sqlite_url: str,
) -> None:
    clock = ManualClock()
    agent = ScriptedAgent(script={A: ["busy", "busy", "busy"]})
    retry = RetryPolicy(attempts=1, delay=10.0)
    await create_store(sqlite_url)
    add_trigger(
        sqlite_url,
        "CREATE TRIGGER refuse BEFORE UPDATE ON attempts WHEN NEW.state = 'rejected' "
        "BEGIN SELECT RAISE(ABORT, 'refused'); END",
    )
    source = ListStrategy([rec("r1", A)])
    hub = make_hub(sqlite_url, agent, source, clock=clock, retry=retry, recover_hold=60)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await agent.wait_for_dials(1)
            # The store refused the outcome: the number is held (the call may go on) ...
            await clock.wait_until(lambda: hub.statistics().held_numbers == 1)
            assert hub.statistics().waiting == 0  # ... and no retry is scheduled
            clock.advance(10.0)  # past the retry delay
            await clock.wait_all_tasks_blocked()
            assert hub.statistics().waiting == 0
            hub.stop()
    assert len(agent.dials) == 1
    assert await fetch(sqlite_url, "SELECT state FROM attempts WHERE record_id = 'r1'") == [
        ("dialing",)  # as the store has it: the next start recovers it
    ]

    # With recover = "retry" the next start may dial it again: once, the last allowed dial.
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as conn:
        conn.execute("DROP TRIGGER refuse")
    again = ScriptedAgent(script={A: ["busy"]})
    restarted = make_hub(
        sqlite_url,
        again,
        ListStrategy([rec("r1", A)]),
        clock=ManualClock(),
        retry=retry,
        recover="retry",
        recover_hold=0,
        exit_when_done=True,
    )
    with anyio.fail_after(10):
        await restarted.run()
    assert len(again.dials) == 1
    assert await fetch(
        sqlite_url, "SELECT number, state FROM attempts WHERE record_id = 'r1' ORDER BY number"
    ) == [(1, "interrupted"), (2, "rejected")]


async def test_a_failed_intent_never_dials(sqlite_url: str) -> None:
    await create_store(sqlite_url)
    add_trigger(
        sqlite_url,
        "CREATE TRIGGER refuse BEFORE INSERT ON attempts "
        "BEGIN SELECT RAISE(ABORT, 'no intents today'); END",
    )
    clock = ManualClock()
    agent = ScriptedAgent()
    source = ListStrategy([rec("r1", A)])
    hub = make_hub(sqlite_url, agent, source, clock=clock)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            # The intent was refused: the record waits a poll interval, and is not dialed.
            await clock.wait_until(lambda: hub.statistics().waiting == 1)
            await clock.wait_all_tasks_blocked()
            hub.stop()
    assert agent.dials == []


class _EndThenCancel(Agent):
    """Wraps a ScriptedAgent; its calls cancel ``scope`` the moment they end, as a hub
    cancelled by its host application at that very moment."""

    def __init__(self, inner: ScriptedAgent) -> None:
        self.inner = inner
        self.scope: anyio.CancelScope | None = None

    async def open(self, context: AgentContext | None = None) -> None:
        await self.inner.open(context)

    async def dial(self, request: DialRequest) -> Call:
        return _Cancelling(await self.inner.dial(request), self)


class _Cancelling(Call):
    def __init__(self, call: Call, agent: _EndThenCancel) -> None:
        self.id = call.id
        self._call = call
        self._agent = agent

    async def wait(self) -> CallEnd:
        end = await self._call.wait()
        assert self._agent.scope is not None
        self._agent.scope.cancel()
        return end


async def test_an_outcome_known_as_the_hub_is_cancelled_is_still_recorded(
    sqlite_url: str,
) -> None:
    agent = _EndThenCancel(ScriptedAgent())
    hub = make_hub(sqlite_url, agent, ListStrategy([rec("r1", A)]), clock=ManualClock())
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            agent.scope = tg.cancel_scope
            tg.start_soon(hub.run)
    assert await fetch(sqlite_url, "SELECT state, reason FROM attempts") == [
        ("completed", "hangup")
    ]


async def test_a_record_waiting_for_the_rate_limit_when_the_hub_stops_is_put_back(
    sqlite_url: str,
) -> None:
    clock = ManualClock()
    agent = ScriptedAgent()
    source = ListStrategy([rec("r1", A), rec("r2", B)])
    pacing = Pacing(max_calls_per_minute=1, max_concurrent=2)
    hub = make_hub(sqlite_url, agent, source, clock=clock, pacing=pacing)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await clock.wait_until(lambda: hub.statistics().rate_limited == 1)
            hub.stop()
    stats = hub.statistics()
    assert (stats.pending, stats.active) == (1, 0)  # not dialed, and not lost: queued
    assert await fetch(sqlite_url, "SELECT pending FROM sources") == [(1,)]


async def test_a_refused_intent_gives_its_room_in_the_rate_limit_back(sqlite_url: str) -> None:
    await create_store(sqlite_url)
    add_trigger(
        sqlite_url,
        "CREATE TRIGGER refuse BEFORE INSERT ON attempts WHEN NEW.record_id = 'r1' "
        "BEGIN SELECT RAISE(ABORT, 'not this one'); END",
    )
    clock = ManualClock()
    agent = ScriptedAgent()
    source = ListStrategy([rec("r1", A), rec("r2", B)])
    pacing = Pacing(max_calls_per_minute=1, max_concurrent=1)
    hub = make_hub(sqlite_url, agent, source, clock=clock, pacing=pacing)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await agent.wait_for_dials(1)  # at once: r1 dialed nothing, so it used no room
            assert clock.monotonic() == 0.0
            hub.stop()
    assert [d.to for d in agent.dials] == [B]


async def test_a_hub_started_as_a_context_manager_on_a_store_in_use_raises_cleanly(
    sqlite_url: str,
) -> None:
    clock = ManualClock()
    agent = ScriptedAgent(auto_end=False)
    first = make_hub(sqlite_url, agent, ListStrategy([rec("r1", A)]), clock=clock)
    with anyio.fail_after(10):
        async with first:
            await agent.wait_for_live(1)
            second = make_hub(sqlite_url, ScriptedAgent(), ListStrategy(), clock=clock)
            with pytest.raises(StoreInUse):
                async with second:
                    pass
            agent.live["call-1"].end()  # the first one runs on, unharmed
            await first.store.wait_until(lambda s: s.commits > 0)
    assert await fetch(sqlite_url, "SELECT state FROM attempts") == [("completed",)]


@contextmanager
def logged(message: str) -> Iterator[anyio.Event]:
    """An event set when the hub logs ``message`` (in the event loop, where it logs)."""
    seen = anyio.Event()

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith(message):
                seen.set()

    handler = Handler()
    logging.getLogger("dispatch").addHandler(handler)
    try:
        yield seen
    finally:
        logging.getLogger("dispatch").removeHandler(handler)


async def test_a_skip_the_store_refuses_leaves_what_was_known_of_the_record(
    sqlite_url: str,
) -> None:
    # r1 was rejected once and waits to retry; the operator breaks its number, the skip
    # cannot be written, then fixes it: r1 still waits out its retry delay, and the retry is
    # attempt 2, not a second attempt 1.
    from tests.unit.test_incremental import ChangeFeed

    await create_store(sqlite_url)
    clock = ManualClock()
    agent = ScriptedAgent(script={A: ["busy", "answer"]})
    source = ChangeFeed(rec("r1", A))
    hub = make_hub(
        sqlite_url, agent, source, clock=clock, retry=RetryPolicy(attempts=1, delay=30.0)
    )
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await agent.wait_for_dials(1)
            await clock.wait_until(lambda: hub.statistics().waiting == 1)
            add_trigger(
                sqlite_url,
                "CREATE TRIGGER refuse BEFORE UPDATE ON records WHEN NEW.state = 'skipped' "
                "BEGIN SELECT RAISE(ABORT, 'no skips'); END",
            )
            with logged("store.skip_failed") as refused:
                source.push(rec("r1", "12"))
                await refused.wait()
            add_trigger(sqlite_url, "DROP TRIGGER refuse")
            source.push(rec("r1", A))
            await source.wait_for_polls(3)
            await clock.wait_all_tasks_blocked()
            assert hub.statistics().waiting == 1  # it still waits out its retry delay
            clock.advance(30.0)
            await agent.wait_for_dials(2)
            hub.stop()
    assert await fetch(sqlite_url, "SELECT number, state FROM attempts ORDER BY number") == [
        (1, "rejected"),
        (2, "completed"),
    ]


async def test_a_slow_intent_commit_moves_the_recorded_start_to_the_dial(
    sqlite_url: str,
) -> None:
    clock = ManualClock()
    agent = ScriptedAgent()
    source = ListStrategy()
    hub = make_hub(sqlite_url, agent, source, clock=clock)
    database = sqlite_url.removeprefix("sqlite:///")
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await clock.wait_for_deadline(5.0)
            blocker = sqlite3.connect(database, isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")
            source.records = [rec("r1", A)]
            source.poll_now()
            await clock.wait_all_tasks_blocked()  # the intent waits for the disk
            assert (hub.statistics().active, agent.dials) == (1, [])
            clock.advance(5.0)  # the commit takes 5 s
            blocker.execute("ROLLBACK")
            blocker.close()
            await agent.wait_for_dials(1)
            hub.stop()
    # A restart seeds its limiter from this time: it must be when the dial started.
    [(dialed_at,)] = await fetch(sqlite_url, "SELECT dialed_at FROM attempts")
    start = datetime.fromisoformat(str(dialed_at)).replace(tzinfo=UTC)
    assert start == ManualClock().now() + timedelta(seconds=5)
