"""DispatchHub.reconfigure: what a SIGHUP applies to a running hub, with calls in flight."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from dispatch import DispatchError, DispatchHub, Pacing, RetryPolicy, StrategyContext
from dispatch.attempts import START_MARGIN
from dispatch.rules.caps import Caps
from dispatch.testing import ManualClock, ScriptedAgent
from tests.support import PHONES, ListStrategy, hub_for, rec

pytestmark = pytest.mark.anyio

A, B, C, D = PHONES[:4]


class BrokenOpen(ListStrategy):
    async def open(self, context: StrategyContext) -> None:
        raise OSError("no such file: leads.csv")


def end_all(agent: ScriptedAgent) -> None:
    for call in list(agent.live.values()):
        call.end()


async def serving(hub: DispatchHub, tg: Any) -> None:
    await tg.start(hub.run)


async def test_a_new_strategy_is_polled_and_dialed_while_calls_go_on(sqlite_url: str) -> None:
    agent = ScriptedAgent(auto_end=False)
    first = ListStrategy([rec("a1", A)], name="first")
    second = ListStrategy([rec("b1", B)], name="second")
    hub = hub_for(sqlite_url, agent, first, max_concurrent=2, exit_when_done=True)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await serving(hub, tg)
            await agent.wait_for_live(1)
            changes = await hub.reconfigure(strategies=[first, second])
            assert changes == ["strategy added: second"]
            await agent.wait_for_live(2)  # the first call goes on beside the new one
            assert [s.name for s in hub.strategies] == ["first", "second"]
            end_all(agent)

    assert [e[:2] for e in first.named("completed")] == [("completed", "a1")]
    assert [e[:2] for e in second.named("completed")] == [("completed", "b1")]


async def test_a_removed_strategy_is_released_and_its_call_ends_normally(
    sqlite_url: str,
) -> None:
    agent = ScriptedAgent(auto_end=False)
    first = ListStrategy([rec("a1", A), rec("a2", B)], name="first")
    second = ListStrategy([rec("c1", C)], name="second")
    hub = hub_for(sqlite_url, agent, first, max_concurrent=1, exit_when_done=True)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await serving(hub, tg)
            await agent.wait_for_live(1)
            assert hub.statistics().pending == 1  # a2 waits for the slot
            changes = await hub.reconfigure(strategies=[second])
            assert changes == ["strategy removed: first", "strategy added: second"]
            stats = hub.statistics()
            assert (stats.pending, stats.active) == (1, 1)  # c1, not a2; a1 still in its call
            polls = first.polls
            end_all(agent)  # a1 ends normally; its slot goes to c1
            await agent.wait_for_live(1)
            end_all(agent)

    assert [d.to for d in agent.dials] == [A, C]  # a2 was never dialed
    assert [e[:2] for e in first.named("completed")] == [("completed", "a1")]
    assert first.polls == polls  # not polled after its removal
    assert [e[:2] for e in second.named("completed")] == [("completed", "c1")]


async def test_a_changed_strategy_takes_its_queued_records_in_again(sqlite_url: str) -> None:
    agent = ScriptedAgent(auto_end=False)
    old = ListStrategy([rec("r1", A, greeting="old"), rec("r2", B, greeting="old")])
    new = ListStrategy([rec("r1", A, greeting="new"), rec("r2", B, greeting="new")])
    hub = hub_for(sqlite_url, agent, old, max_concurrent=1, exit_when_done=True)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await serving(hub, tg)
            await agent.wait_for_live(1)
            assert await hub.reconfigure(strategies=[new]) == ["strategy changed: list"]
            await new.wait_for_polls(1)  # at once, not after the poll interval
            end_all(agent)
            await agent.wait_for_dials(2)
            await agent.wait_for_live(1)
            end_all(agent)

    assert [(d.to, d.greeting) for d in agent.dials] == [(A, "old"), (B, "new")]
    # r1's call, begun by the old strategy, reports to the one now named so.
    assert sorted(e[1] for e in new.named("completed")) == ["r1", "r2"]


async def test_a_higher_concurrency_cap_dials_more_at_once(sqlite_url: str) -> None:
    agent = ScriptedAgent(auto_end=False)
    source = ListStrategy([rec(f"r{n}", PHONES[n]) for n in range(3)])
    hub = hub_for(sqlite_url, agent, source, max_concurrent=1, exit_when_done=True)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await serving(hub, tg)
            await agent.wait_for_live(1)
            assert await hub.reconfigure(pacing=Pacing(max_concurrent=3)) == ["pacing"]
            await agent.wait_for_live(3)
            end_all(agent)
    assert agent.max_active == 3


async def test_a_lower_concurrency_cap_waits_for_calls_to_end(sqlite_url: str) -> None:
    agent = ScriptedAgent(auto_end=False)
    source = ListStrategy([rec(f"r{n}", PHONES[n]) for n in range(4)])
    hub = hub_for(sqlite_url, agent, source, max_concurrent=2, exit_when_done=True)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await serving(hub, tg)
            await agent.wait_for_live(2)
            await hub.reconfigure(pacing=Pacing(max_concurrent=1))
            end_all(agent)  # both slots free, but only one may be taken now
            await agent.wait_for_live(1)
            await hub.clock.wait_all_tasks_blocked()  # type: ignore[attr-defined]
            assert len(agent.live) == 1
            end_all(agent)
            await agent.wait_for_dials(4)
            await agent.wait_for_live(1)
            end_all(agent)
    assert len(agent.dials) == 4


async def test_a_higher_rate_limit_wakes_the_waiting_dial_at_once(sqlite_url: str) -> None:
    clock = ManualClock()
    agent = ScriptedAgent()
    source = ListStrategy([rec(f"r{n}", PHONES[n]) for n in range(3)])
    pacing = Pacing(max_calls_per_minute=1, max_concurrent=3)
    hub = hub_for(sqlite_url, agent, source, clock=clock, pacing=pacing, exit_when_done=True)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await serving(hub, tg)
            await agent.wait_for_dials(1)
            await clock.wait_all_tasks_blocked()
            assert hub.statistics().rate_limited == 1
            await hub.reconfigure(pacing=Pacing(max_calls_per_minute=2, max_concurrent=3))
            await agent.wait_for_dials(2)  # the clock did not move
            await clock.wait_all_tasks_blocked()
            assert len(agent.dials) == 2  # the first dial still counts in the window
            await hub.reconfigure(pacing=Pacing(max_concurrent=3))  # no limit at all
            await agent.wait_for_dials(3)
    assert clock.monotonic() == 0.0


async def test_a_rate_limit_turned_on_counts_the_dials_already_made(sqlite_url: str) -> None:
    clock = ManualClock()
    agent = ScriptedAgent(auto_end=False)
    source = ListStrategy([rec(f"r{n}", PHONES[n]) for n in range(3)])
    hub = hub_for(sqlite_url, agent, source, clock=clock, max_concurrent=1, exit_when_done=True)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await serving(hub, tg)
            await agent.wait_for_live(1)
            await hub.reconfigure(pacing=Pacing(max_calls_per_minute=1, max_concurrent=1))
            end_all(agent)
            await clock.wait_for_deadline(60.0 + START_MARGIN)  # r0's start, from the ledger
            await clock.wait_all_tasks_blocked()
            assert len(agent.dials) == 1  # r0's start, read from the ledger, fills the window
            assert hub.statistics().rate_limited == 1
            clock.advance(61)
            await agent.wait_for_live(1)
            assert len(agent.dials) == 2
            await hub.reconfigure(pacing=Pacing(max_concurrent=1))
            end_all(agent)
            await agent.wait_for_live(1)
            end_all(agent)
    assert len(agent.dials) == 3


async def test_a_strategy_that_fails_to_open_changes_nothing(sqlite_url: str) -> None:
    agent = ScriptedAgent(auto_end=False)
    first = ListStrategy([rec("a1", A), rec("a2", B)], name="first")
    hub = hub_for(sqlite_url, agent, first, max_concurrent=1, exit_when_done=True)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await serving(hub, tg)
            await agent.wait_for_live(1)
            broken = BrokenOpen([rec("x", C)], name="broken")
            with pytest.raises(OSError, match="no such file"):
                await hub.reconfigure(
                    strategies=[broken], pacing=Pacing(max_concurrent=5), retry=RetryPolicy(0)
                )
            assert hub.strategies == [first]
            assert hub.pacing.max_concurrent == 1
            assert hub.statistics().pending == 1  # a2 still queued
            end_all(agent)
            await agent.wait_for_dials(2)
            await agent.wait_for_live(1)
            end_all(agent)
    assert [d.to for d in agent.dials] == [A, B]


async def test_invalid_arguments_are_refused_before_anything_changes(sqlite_url: str) -> None:
    agent = ScriptedAgent(auto_end=False)
    one, two = ListStrategy(name="same"), ListStrategy(name="same")
    hub = hub_for(sqlite_url, agent, ListStrategy([rec("a1", A)]), exit_when_done=True)
    with pytest.raises(DispatchError, match="running hub"):
        await hub.reconfigure(poll_interval=1.0)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await serving(hub, tg)
            await agent.wait_for_live(1)
            with pytest.raises(ValueError, match="unique"):
                await hub.reconfigure(strategies=[one, two])
            with pytest.raises(ValueError, match="poll_interval"):
                await hub.reconfigure(poll_interval=-1)
            assert hub.poll_interval == 5.0
            end_all(agent)


async def test_new_caps_apply_to_the_next_dial(sqlite_url: str) -> None:
    clock = ManualClock()
    agent = ScriptedAgent(script={A: ["busy"]})
    source = ListStrategy([rec("r1", A)])
    hub = hub_for(
        sqlite_url,
        agent,
        source,
        clock=clock,
        retry=RetryPolicy(attempts=1, delay=10.0),
        exit_when_done=True,
    )
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await serving(hub, tg)
            await clock.wait_for_deadline(10.0)  # busy: the retry is due in 10 s
            changes = await hub.reconfigure(caps=Caps(min_gap=3600.0))
            assert changes == ["calling rules"]
            clock.advance(11)  # the retry is due, but the new gap holds it back
            await clock.wait_for_deadline(3600.0)
            await clock.wait_all_tasks_blocked()
            assert len(agent.dials) == 1
            assert hub.statistics().waiting == 1
            clock.advance(3600)
            await agent.wait_for_dials(2)


async def test_a_longer_window_counts_the_starts_it_had_already_let_go(sqlite_url: str) -> None:
    clock = ManualClock()
    agent = ScriptedAgent()
    source = ListStrategy([rec(f"r{n}", PHONES[n]) for n in range(3)])
    pacing = Pacing(max_calls_per_minute=1, max_concurrent=3)
    hub = hub_for(sqlite_url, agent, source, clock=clock, pacing=pacing, exit_when_done=True)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await serving(hub, tg)
            await agent.wait_for_dials(1)  # r0 at 0
            await clock.wait_for_deadline(60.0)
            clock.advance(60)
            await agent.wait_for_dials(2)  # r1 at 60; r0's start left the 60 s window
            clock.advance(1)
            wider = Pacing(max_calls_per_minute=2, max_concurrent=3, window=120.0)
            await hub.reconfigure(pacing=wider)
            # r0 (from the ledger) and r1 are both in the 120 s window: r2 waits.
            await clock.wait_for_deadline(60.0 + START_MARGIN + 60.0)
            await clock.wait_all_tasks_blocked()
            assert len(agent.dials) == 2
            clock.advance(60.0)
            await agent.wait_for_dials(3)


async def test_a_record_held_for_the_rate_when_its_strategy_changes_is_taken_anew(
    sqlite_url: str,
) -> None:
    clock = ManualClock()
    agent = ScriptedAgent()
    old = ListStrategy([rec("r1", A, greeting="old"), rec("r2", B, greeting="old")])
    new = ListStrategy([rec("r1", A, greeting="new"), rec("r2", B, greeting="new")])
    pacing = Pacing(max_calls_per_minute=1, max_concurrent=2)
    hub = hub_for(sqlite_url, agent, old, clock=clock, pacing=pacing, exit_when_done=True)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await serving(hub, tg)
            await agent.wait_for_dials(1)
            await clock.wait_for_deadline(60.0)  # r2 taken, waiting for the rate
            await hub.reconfigure(strategies=[new])
            await new.wait_for_polls(1)
            clock.advance(60)
            await agent.wait_for_dials(2)
    assert [(d.to, d.greeting) for d in agent.dials] == [(A, "old"), (B, "new")]


async def test_a_higher_cap_in_the_same_reload_never_dials_a_removed_strategys_queue(
    sqlite_url: str,
) -> None:
    agent = ScriptedAgent(auto_end=False)
    first = ListStrategy([rec("a1", A), rec("a2", B), rec("a3", C)], name="first")
    second = ListStrategy([rec("c1", D)], name="second")
    hub = hub_for(sqlite_url, agent, first, max_concurrent=1, exit_when_done=True)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await serving(hub, tg)
            await agent.wait_for_live(1)
            await hub.reconfigure(strategies=[second], pacing=Pacing(max_concurrent=3))
            await agent.wait_for_live(2)
            await hub.clock.wait_all_tasks_blocked()  # type: ignore[attr-defined]
            end_all(agent)
    assert [d.to for d in agent.dials] == [A, D]
