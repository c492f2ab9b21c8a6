"""The hub with incremental strategies: updates, removals, malformed data and poll_now."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import anyio
import pytest

from dispatch import DispatchHub, Malformed, Record, Removed
from dispatch.abc import PollItem
from dispatch.testing import ManualClock, ScriptedAgent
from tests.conftest import fetch
from tests.support import PHONES, ListStrategy, notify_from_anywhere, rec, store_for

pytestmark = pytest.mark.anyio

A, B, C, D = PHONES[:4]


class ChangeFeed(ListStrategy):
    """An incremental strategy: each poll yields the changes queued with :meth:`push`."""

    incremental = True

    def __init__(self, *first: PollItem) -> None:
        super().__init__()
        self.changes: list[PollItem] = list(first)

    async def poll(self) -> list[Any]:
        self.polls += 1
        self.signal.notify()
        changes, self.changes = self.changes, []
        return changes

    def push(self, *items: PollItem) -> None:
        self.changes.extend(items)
        self.poll_now()


def make_hub(url: str, agent: ScriptedAgent, source: ListStrategy, **options: Any) -> DispatchHub:
    options.setdefault("poll_interval", 60.0)
    options.setdefault("clock", ManualClock())
    store = store_for(url, options["clock"])
    return DispatchHub(agent=agent, strategies=[source], store=store, **options)


async def test_poll_now_polls_at_once_without_waiting_for_the_interval(sqlite_url: str) -> None:
    agent = ScriptedAgent()
    source = ChangeFeed()
    hub = make_hub(sqlite_url, agent, source)  # the manual clock never moves: no interval

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await source.wait_for_polls(1)
            source.push(rec("r1", A))
            await agent.wait_for_dials(1)
            source.push(rec("r2", B))
            await agent.wait_for_dials(2)
            hub.stop()

    assert [d.to for d in agent.dials] == [A, B]


async def test_a_changed_record_replaces_the_queued_one_before_it_is_dialed(
    sqlite_url: str,
) -> None:
    agent = ScriptedAgent(auto_end=False)
    source = ChangeFeed(rec("busy", A), rec("fix-me", B))
    hub = make_hub(sqlite_url, agent, source, max_concurrent=1)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await agent.wait_for_live(1)  # "fix-me" waits for the only slot
            source.push(rec("fix-me", C, greeting="fixed"), rec("busy", D))
            await source.wait_for_polls(2)
            next(iter(agent.live.values())).end()
            await agent.wait_for_live(1)
            next(iter(agent.live.values())).end()
            await source.wait_for_events(4)
            hub.stop()

    # The operator's fix is what was dialed; the change to the record in a call was ignored.
    assert [(d.to, d.greeting) for d in agent.dials] == [(A, None), (C, "fixed")]


async def test_removed_drops_a_queued_record_but_not_one_in_a_call(sqlite_url: str) -> None:
    agent = ScriptedAgent(auto_end=False)
    source = ChangeFeed(rec("calling", A), rec("removed", B), rec("kept", C))
    hub = make_hub(sqlite_url, agent, source, max_concurrent=1, exit_when_done=True)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await agent.wait_for_live(1)
            source.push(Removed("calling"), Removed("removed"), Removed("never-seen"))
            await source.wait_for_polls(2)
            assert hub.statistics().pending == 1
            next(iter(agent.live.values())).end()
            await agent.wait_for_live(1)
            next(iter(agent.live.values())).end()

    assert [d.to for d in agent.dials] == [A, C]


async def test_a_removed_retry_keeps_its_due_time_when_it_comes_back(sqlite_url: str) -> None:
    clock = ManualClock()
    agent = ScriptedAgent(script={A: ["busy", "answer"]})
    source = ChangeFeed(rec("r1", A))
    hub = make_hub(sqlite_url, agent, source, clock=clock, retry_attempts=2, retry_delay=30.0)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await agent.wait_for_dials(1)
            await clock.wait_until(lambda: hub.statistics().waiting == 1)
            source.push(rec("r1", A, greeting="edited"))  # an edit while it waits to retry
            await source.wait_for_polls(2)
            await clock.wait_all_tasks_blocked()
            assert hub.statistics().waiting == 1  # the edited record took the retry's place
            clock.advance(29.0)
            await clock.wait_all_tasks_blocked()
            assert hub.statistics().waiting == 1  # and its due time: not before 30 s
            assert len(agent.dials) == 1
            clock.advance(1.0)
            await agent.wait_for_dials(2)
            hub.stop()

    assert agent.dials[1].greeting == "edited"


async def test_malformed_data_is_skipped_and_dialed_once_fixed(sqlite_url: str) -> None:
    agent = ScriptedAgent()
    source = ChangeFeed(Malformed("r1", "no column 'phone'", line=7), rec("r2", "12"))
    hub = make_hub(sqlite_url, agent, source)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await source.wait_for_events(2)
            assert agent.dials == []
            source.push(rec("r1", A), rec("r2", B))  # the operator fixed both rows
            await source.wait_for_events(6)
            hub.stop()

    assert sorted(d.to for d in agent.dials) == [A, B]
    assert sorted(source.events[:2]) == [  # two records' callbacks: in either order
        ("skipped", "r1", "malformed"),
        ("skipped", "r2", "invalid_phone"),
    ]
    assert sorted(await fetch(sqlite_url, "SELECT record_id, state FROM records")) == [
        ("r1", "completed"),
        ("r2", "completed"),
    ]


async def test_a_malformed_record_reaches_on_skipped_with_its_line_and_error(
    sqlite_url: str,
) -> None:
    source = ChangeFeed(Malformed("line:7", "row has no phone", line=7))
    seen: list[dict[str, Any]] = []

    def on_skipped(record: Record, reason: str) -> None:  # runs in a worker thread
        seen.append(record.metadata)
        notify_from_anywhere(source.signal)

    source.on_skipped = on_skipped  # type: ignore[method-assign]
    hub = make_hub(sqlite_url, ScriptedAgent(), source)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await source.signal.wait_until(lambda: bool(seen))
            hub.stop()

    assert seen == [{"error": "row has no phone", "line": 7}]


async def test_a_finished_record_yielded_again_is_not_redialed(sqlite_url: str) -> None:
    agent = ScriptedAgent()
    source = ChangeFeed(rec("r1", A))
    hub = make_hub(sqlite_url, agent, source)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await source.wait_for_events(2)
            source.push(rec("r1", B, greeting="edited after the call"))
            await source.wait_for_polls(2)
            source.push(rec("r2", C))  # a marker: the previous poll has been taken in
            await agent.wait_for_dials(2)
            hub.stop()

    assert [d.to for d in agent.dials] == [A, C]


async def test_a_full_snapshot_strategy_does_not_revisit_skipped_records(sqlite_url: str) -> None:
    clock = ManualClock()
    agent = ScriptedAgent()
    source = ListStrategy([rec("r1", "12")])
    hub = make_hub(sqlite_url, agent, source, clock=clock, poll_interval=5.0)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await source.wait_for_events(1)
            source.records = [rec("r1", A)]
            await clock.wait_for_deadline(5.0)
            clock.advance(5.0)
            await source.wait_for_polls(2)
            hub.stop()

    assert agent.dials == []
    assert source.events == [("skipped", "r1", "invalid_phone")]


async def test_a_record_still_broken_after_a_restart_is_not_reported_again(
    sqlite_url: str,
) -> None:
    def broken() -> ChangeFeed:
        return ChangeFeed(rec("r1", "12"), Malformed("r2", "no column 'phone'", line=3))

    first = broken()
    with anyio.fail_after(10):
        await make_hub(sqlite_url, ScriptedAgent(), first, exit_when_done=True).run()
    assert sorted(e[:3] for e in first.events) == [
        ("skipped", "r1", "invalid_phone"),
        ("skipped", "r2", "malformed"),
    ]

    again = broken()
    hub = make_hub(sqlite_url, ScriptedAgent(), again, exit_when_done=True)
    with anyio.fail_after(10):
        await hub.run()
    assert again.events == []
    assert hub.statistics().already_handled == 2


async def test_an_edit_with_an_earlier_not_before_is_dialed_at_the_new_time(
    sqlite_url: str,
) -> None:
    clock = ManualClock()
    now = clock.now()
    agent = ScriptedAgent()
    source = ChangeFeed(rec("r1", A, not_before=now + timedelta(seconds=600)))
    hub = make_hub(sqlite_url, agent, source, clock=clock)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await clock.wait_for_deadline(600.0)
            source.push(rec("r1", A, not_before=now + timedelta(seconds=10)))  # moved earlier
            await clock.wait_for_deadline(10.0)
            clock.advance(10.0)
            await agent.wait_for_dials(1)
            hub.stop()
