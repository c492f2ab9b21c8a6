from __future__ import annotations

import logging
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from dispatch import DialRequest, DispatchHub, Pacing, RetryPolicy, Store
from dispatch.testing import ManualClock, ScriptedAgent
from tests.conftest import fetch
from tests.support import PHONES, ListStrategy, rec, store_for

pytestmark = pytest.mark.anyio

A, B, C = PHONES[:3]


def make_hub(
    url: str,
    agent: ScriptedAgent,
    *strategies: ListStrategy,
    clock: ManualClock | None = None,
    **options: Any,
) -> DispatchHub:
    options.setdefault("poll_interval", 5.0)
    clock = clock or ManualClock()
    return DispatchHub(
        agent=agent,
        strategies=list(strategies),
        store=store_for(url, clock),
        clock=clock,
        **options,
    )


async def leave_attempt_in_flight(url: str, record_id: str, phone: str) -> None:
    """What a kill -9 between intent and outcome leaves behind: an attempt still `dialing`."""
    store = Store(url)
    await store.open()
    async with anyio.create_task_group() as tg:
        await tg.start(store.run)
        await store.intent(
            attempt_id="crashed",
            strategy="list",
            record_id=record_id,
            number=1,
            phone=phone,
            at=ManualClock().now(),
        )
        store.close()
    await store.aclose()


async def run_to_completion(hub: DispatchHub) -> None:
    with anyio.fail_after(10):
        await hub.run()


async def test_dials_every_record_once_and_exits_when_done(any_store_url: str) -> None:
    sqlite_url = any_store_url  # every backend
    agent = ScriptedAgent()
    source = ListStrategy([rec(f"r{n}", PHONES[n]) for n in range(5)])
    hub = make_hub(sqlite_url, agent, source, exit_when_done=True, max_concurrent=3)

    await run_to_completion(hub)

    assert sorted(d.to for d in agent.dials) == sorted(PHONES[:5])
    assert agent.opened
    assert agent.closed
    assert await fetch(sqlite_url, "SELECT state, count(*) FROM records GROUP BY state") == [
        ("completed", 5)
    ]
    assert await fetch(sqlite_url, "SELECT state, number FROM attempts GROUP BY state, number") == [
        ("completed", 1)
    ]


async def test_intent_is_committed_before_the_agent_dials(sqlite_url: str) -> None:
    seen: list[tuple[str, str]] = []
    database = sqlite_url.removeprefix("sqlite:///")

    def look_in_the_store(request: DialRequest) -> None:
        # A separate connection sees only committed rows.
        with sqlite3.connect(database) as conn:
            row = conn.execute(
                "SELECT state, phone FROM attempts WHERE id = ?", (request.dispatch_id,)
            ).fetchone()
        seen.append(row)

    agent = ScriptedAgent(on_dial=look_in_the_store)
    source = ListStrategy([rec(f"r{n}", PHONES[n]) for n in range(6)])
    await run_to_completion(
        make_hub(sqlite_url, agent, source, exit_when_done=True, max_concurrent=3)
    )

    assert sorted(seen) == sorted(("dialing", p) for p in PHONES[:6])


async def test_records_are_deduplicated_by_id_across_polls(sqlite_url: str) -> None:
    clock = ManualClock()
    agent = ScriptedAgent()
    source = ListStrategy([rec("r1", A), rec("r2", B)])
    hub = make_hub(sqlite_url, agent, source, clock=clock, max_concurrent=2)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await source.wait_for_events(4)  # dispatched + completed, twice
            for polls in (2, 3, 4):
                # The poll loop, waiting for its next poll.
                await clock.wait_for_deadline(clock.monotonic() + 5.0)
                clock.advance(5.0)
                await source.wait_for_polls(polls)
            source.records.append(rec("r1", C))  # the same id again, another phone
            await clock.wait_for_deadline(clock.monotonic() + 5.0)
            clock.advance(5.0)
            await source.wait_for_polls(5)
            hub.stop()

    assert [d.to for d in agent.dials].count(A) == 1
    assert len(agent.dials) == 2


async def test_a_terminal_record_is_never_dialed_again_after_a_restart(any_store_url: str) -> None:
    sqlite_url = any_store_url  # every backend
    records = [rec("r1", A), rec("r2", B), rec("r3", "garbage")]
    first = ScriptedAgent(script={B: ["busy"]})
    hub = make_hub(sqlite_url, first, ListStrategy(records), exit_when_done=True)
    await run_to_completion(hub)
    assert len(first.dials) == 2
    assert hub.statistics().already_handled == 0  # finished by this run, not an earlier one

    second = ScriptedAgent()
    again = ListStrategy(list(reversed(records)))
    hub = make_hub(sqlite_url, second, again, exit_when_done=True)
    await run_to_completion(hub)

    assert second.dials == []
    assert again.events == []
    assert hub.statistics().already_handled == 3


async def test_a_phone_in_a_call_defers_its_next_record_without_dropping_it(
    sqlite_url: str,
) -> None:
    agent = ScriptedAgent(auto_end=False)
    source = ListStrategy([rec("first", A), rec("same-phone", A), rec("other", B)])
    hub = make_hub(sqlite_url, agent, source, max_concurrent=2, exit_when_done=True)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await agent.wait_for_live(2)
            # The second record for A was passed over, not dropped: B went ahead of it.
            assert [d.to for d in agent.dials] == [A, B]
            assert hub.statistics().pending == 1
            first_call = next(c for c in agent.live.values() if c.request.to == A)
            first_call.end()
            await agent.wait_for_live(2)
            assert agent.dials[2].to == A
            for call in list(agent.live.values()):
                call.end()

    assert agent.overlaps == []
    assert sorted(e[1] for e in source.named("completed")) == ["first", "other", "same-phone"]


async def test_rejected_dials_are_retried_up_to_the_limit_then_fail(sqlite_url: str) -> None:
    clock = ManualClock()
    agent = ScriptedAgent(script={A: ["busy", "no_answer", "busy", "answer"]})
    source = ListStrategy([rec("r1", A)])
    hub = make_hub(
        sqlite_url,
        agent,
        source,
        clock=clock,
        exit_when_done=True,
        retry=RetryPolicy(attempts=2, delay=30.0),
    )

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            for dials in (1, 2):
                await agent.wait_for_dials(dials)
                await clock.wait_for_deadline(clock.monotonic() + 30.0)  # the retry timer
                clock.advance(29.0)
                await clock.wait_all_tasks_blocked()
                assert hub.statistics().waiting == 1  # not before the retry delay
                assert len(agent.dials) == dials
                clock.advance(1.0)

    assert len(agent.dials) == 3  # 1 + retry attempts, never the 4th
    assert source.named("failed") == [("failed", "r1", "busy")]
    assert await fetch(
        sqlite_url, "SELECT number, state, reason FROM attempts ORDER BY number"
    ) == [
        (1, "rejected", "busy"),
        (2, "rejected", "no_answer"),
        (3, "rejected", "busy"),
    ]
    assert await fetch(sqlite_url, "SELECT state, attempts FROM records") == [("failed", 3)]


async def test_an_unknown_outcome_is_never_retried(sqlite_url: str) -> None:
    agent = ScriptedAgent(script={A: ["unknown"]})
    source = ListStrategy([rec("r1", A)])
    hub = make_hub(sqlite_url, agent, source, exit_when_done=True, retry_attempts=3, retry_delay=0)
    await run_to_completion(hub)

    assert len(agent.dials) == 1
    [(_, _, error)] = source.named("failed")
    assert error.startswith("unknown")
    assert await fetch(sqlite_url, "SELECT state FROM attempts") == [("unknown",)]


async def test_a_dial_interrupted_by_a_lost_connection_is_never_retried(sqlite_url: str) -> None:
    agent = ScriptedAgent(script={A: ["interrupted"]})
    source = ListStrategy([rec("r1", A)])
    hub = make_hub(sqlite_url, agent, source, exit_when_done=True, retry_attempts=3, retry_delay=0)
    await run_to_completion(hub)

    assert len(agent.dials) == 1
    assert source.named("failed") == [("failed", "r1", "interrupted: connection lost")]
    assert await fetch(sqlite_url, "SELECT state FROM attempts") == [("interrupted",)]
    assert await fetch(sqlite_url, "SELECT state FROM records") == [("interrupted",)]


async def test_callbacks_fire_once_each_with_the_right_arguments(sqlite_url: str) -> None:
    agent = ScriptedAgent(script={B: ["busy"]})
    source = ListStrategy([rec("ok", A), rec("busy", B), rec("bad", "12")])
    assigned: list[tuple[str, str]] = []
    source.on_skipped = lambda record, reason: assigned.append((record.id, reason))  # type: ignore[method-assign]
    await run_to_completion(make_hub(sqlite_url, agent, source, exit_when_done=True))

    [call] = [d for d in agent.dials if d.to == A]
    call_id = "call-1" if agent.dials[0].to == A else "call-2"
    assert call.to == A
    assert sorted(source.events) == sorted(
        [
            ("dispatched", "ok", call_id),
            ("completed", "ok", call_id, "hangup"),
            ("failed", "busy", "busy"),
        ]
    )
    assert assigned == [("bad", "invalid_phone")]  # the instance attribute won


async def test_a_raising_callback_is_logged_and_the_hub_goes_on(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    agent = ScriptedAgent()
    source = ListStrategy([rec(f"r{n}", PHONES[n]) for n in range(3)])

    def explode(record: Any, call_id: str, reason: str) -> None:
        raise RuntimeError(f"CRM down for {record.id}")

    source.on_completed = explode  # type: ignore[assignment, method-assign]
    with caplog.at_level(logging.ERROR, logger="dispatch"):
        await run_to_completion(make_hub(sqlite_url, agent, source, exit_when_done=True))

    assert len(agent.dials) == 3
    failures = [r.getMessage() for r in caplog.records if "callback.failed" in r.getMessage()]
    assert len(failures) == 3
    assert all("callback=on_completed" in m and "RuntimeError" in m for m in failures)
    assert any("record=r1" in m for m in failures)


async def test_stop_dials_nobody_new_and_waits_for_active_calls(sqlite_url: str) -> None:
    agent = ScriptedAgent(auto_end=False)
    source = ListStrategy([rec(f"r{n}", PHONES[n]) for n in range(4)])
    hub = make_hub(sqlite_url, agent, source, max_concurrent=2, drain_timeout=60)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await agent.wait_for_live(2)
            hub.stop()
            await anyio.lowlevel.checkpoint()
            for call in list(agent.live.values()):
                call.end("hangup", 12.5)

    assert len(agent.dials) == 2
    assert await fetch(sqlite_url, "SELECT state, duration FROM attempts") == [
        ("completed", 12.5),
        ("completed", 12.5),
    ]
    assert len(source.named("completed")) == 2


async def test_calls_still_active_after_the_drain_timeout_are_interrupted(sqlite_url: str) -> None:
    agent = ScriptedAgent(auto_end=False)
    source = ListStrategy([rec("r1", A)])
    hub = make_hub(sqlite_url, agent, source, drain_timeout=0.05)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await agent.wait_for_live(1)
            hub.stop()

    assert await fetch(sqlite_url, "SELECT state, call_id FROM attempts") == [
        ("interrupted", "call-1")
    ]
    assert await fetch(sqlite_url, "SELECT state FROM records") == [("interrupted",)]
    assert source.named("failed") == [("failed", "r1", "interrupted")]


async def test_several_strategies_are_served_fairly(sqlite_url: str) -> None:
    agent = ScriptedAgent()
    big = ListStrategy([rec(f"big{n}", PHONES[n]) for n in range(40)], name="big")
    small = ListStrategy([rec(f"small{n}", PHONES[50 + n]) for n in range(3)], name="small")
    await run_to_completion(make_hub(sqlite_url, agent, big, small, exit_when_done=True))

    first_six = [d.to for d in agent.dials[:6]]
    assert sum(1 for p in first_six if p in PHONES[50:53]) == 3


async def test_an_agent_error_fails_that_record_only(sqlite_url: str) -> None:
    agent = ScriptedAgent(script={A: ["error"]})
    source = ListStrategy([rec("broken", A), rec("fine", B)])
    await run_to_completion(make_hub(sqlite_url, agent, source, exit_when_done=True))

    assert source.named("failed") == [
        ("failed", "broken", "unknown: RuntimeError: scripted agent failure")
    ]
    assert [e[1] for e in source.named("completed")] == ["fine"]


async def test_a_failing_poll_is_logged_and_polled_again(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    agent = ScriptedAgent()
    source = ListStrategy([rec("r1", A)])
    source.fail_polls = 1
    hub = make_hub(sqlite_url, agent, source, clock=clock, exit_when_done=True)

    with caplog.at_level(logging.ERROR), anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await source.wait_for_polls(1)
            await clock.wait_for_deadline(5.0)
            clock.advance(5.0)

    assert len(agent.dials) == 1
    assert any(
        "poll.failed strategy=list error=ConnectionError" in r.getMessage() for r in caplog.records
    )


async def test_the_rate_limit_holds_dials_until_the_window_moves(sqlite_url: str) -> None:
    clock = ManualClock()
    agent = ScriptedAgent()
    source = ListStrategy([rec(f"r{n}", PHONES[n]) for n in range(5)])
    hub = make_hub(
        sqlite_url,
        agent,
        source,
        clock=clock,
        exit_when_done=True,
        pacing=Pacing(max_calls_per_minute=3, max_concurrent=5),
    )

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await agent.wait_for_dials(3)
            await clock.wait_for_deadline(60.0)  # the limiter, exactly, no polling
            assert len(agent.dials) == 3
            assert clock.deadlines[:2] == [5.0, 60.0]  # the next poll; the limiter
            clock.advance(59.999)
            await clock.wait_all_tasks_blocked()
            assert hub.statistics().rate_limited == 1  # the fourth still waits
            assert len(agent.dials) == 3
            clock.advance(0.001)

    assert len(agent.dials) == 5


async def test_expired_records_are_skipped_and_future_ones_wait(sqlite_url: str) -> None:
    clock = ManualClock()
    now = clock.now()
    agent = ScriptedAgent()
    source = ListStrategy(
        [
            rec("late", A, not_after=now - timedelta(minutes=1)),
            rec("later", B, not_before=now + timedelta(seconds=90)),
        ]
    )
    hub = make_hub(sqlite_url, agent, source, clock=clock, exit_when_done=True)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await source.wait_for_events(1)
            await clock.wait_for_deadline(90.0)
            clock.advance(89.0)
            await clock.wait_all_tasks_blocked()
            assert hub.statistics().waiting == 1  # not before its not_before
            assert agent.dials == []
            clock.advance(1.0)

    assert [d.to for d in agent.dials] == [B]
    assert source.named("skipped") == [("skipped", "late", "expired")]
    assert ("late", "expired") in await fetch(sqlite_url, "SELECT record_id, state FROM records")


async def test_attempts_left_in_flight_by_a_crash_are_interrupted_not_redialed(
    sqlite_url: str, tmp_path: Path
) -> None:
    await leave_attempt_in_flight(sqlite_url, "r1", A)

    agent = ScriptedAgent()
    await run_to_completion(
        make_hub(sqlite_url, agent, ListStrategy([rec("r1", A)]), exit_when_done=True)
    )
    assert agent.dials == []
    assert await fetch(sqlite_url, "SELECT state FROM attempts") == [("interrupted",)]

    agent = ScriptedAgent()
    hub = make_hub(sqlite_url, agent, ListStrategy([rec("r1", A)]), exit_when_done=True)
    await run_to_completion(hub)
    assert agent.dials == []  # still terminal: the phone may have rung


async def test_recover_retry_redials_an_interrupted_attempt_counting_it(sqlite_url: str) -> None:
    await leave_attempt_in_flight(sqlite_url, "r1", A)

    agent = ScriptedAgent()
    hub = make_hub(
        sqlite_url,
        agent,
        ListStrategy([rec("r1", A)]),
        exit_when_done=True,
        recover="retry",
        recover_hold=0,  # the hold after recovery has its own test
        retry_attempts=1,
    )
    await run_to_completion(hub)
    assert [d.to for d in agent.dials] == [A]
    assert await fetch(sqlite_url, "SELECT number, state FROM attempts ORDER BY number") == [
        (1, "interrupted"),
        (2, "completed"),
    ]


async def test_cancelling_the_hub_still_records_calls_in_flight_as_interrupted(
    sqlite_url: str,
) -> None:
    agent = ScriptedAgent(auto_end=False)
    hub = make_hub(sqlite_url, agent, ListStrategy([rec("r1", A), rec("r2", B)]), max_concurrent=2)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await agent.wait_for_live(2)
            tg.cancel_scope.cancel()

    assert await fetch(sqlite_url, "SELECT state FROM attempts") == [
        ("interrupted",),
        ("interrupted",),
    ]


async def test_the_hub_runs_as_an_async_context_manager(sqlite_url: str) -> None:
    agent = ScriptedAgent()
    source = ListStrategy([rec("r1", A)])
    with anyio.fail_after(10):
        async with make_hub(sqlite_url, agent, source):
            await source.wait_for_events(2)
    assert [e[0] for e in source.events] == ["dispatched", "completed"]


def test_options_come_as_objects_or_flat_keywords_but_not_both() -> None:
    hub = DispatchHub(
        agent=ScriptedAgent(),
        strategies=[ListStrategy()],
        max_calls_per_minute=5,
        max_concurrent=2,
        retry_attempts=1,
    )
    assert hub.pacing == Pacing(max_calls_per_minute=5, max_concurrent=2)
    assert hub.retry.attempts == 1
    with pytest.raises(ValueError, match="not both"):
        DispatchHub(
            agent=ScriptedAgent(), strategies=[ListStrategy()], pacing=Pacing(), max_concurrent=2
        )
    with pytest.raises(ValueError, match="unique"):
        DispatchHub(agent=ScriptedAgent(), strategies=[ListStrategy(), ListStrategy()])


async def test_the_concurrency_cap_is_held_until_calls_end(sqlite_url: str) -> None:
    agent = ScriptedAgent(auto_end=False, script={C: ["busy"]})
    source = ListStrategy([rec("r1", A), rec("r2", B), rec("r3", C), rec("r4", PHONES[3])])
    hub = make_hub(sqlite_url, agent, source, max_concurrent=2, exit_when_done=True)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await agent.wait_for_live(2)
            assert len(agent.dials) == 2  # the cap, while both calls are up
            agent.live["call-1"].end()
            # The freed slot goes to r3, which is rejected at once: the slot comes back too.
            await agent.wait_for_dials(4)
            await agent.wait_for_live(2)
            for call in list(agent.live.values()):
                call.end()

    assert agent.max_active == 2
    assert [d.to for d in agent.dials] == [A, B, C, PHONES[3]]


async def test_status_shows_the_records_queued_in_memory(sqlite_url: str) -> None:
    from dispatch.store import reports

    clock = ManualClock()
    agent = ScriptedAgent(auto_end=False, script={B: ["busy"]})
    source = ListStrategy([rec("r1", A), rec("r2", B), rec("r3", C), rec("r4", PHONES[3])])
    hub = make_hub(sqlite_url, agent, source, clock=clock, max_concurrent=2, retry_attempts=1)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await agent.wait_for_live(2)  # r1 and r3 live; r2 rejected and waiting to retry
            await clock.wait_for_deadline(60.0)  # r2's retry timer
            await clock.wait_for_deadline(5.0)  # the poll loop
            clock.advance(5.0)
            await source.wait_for_polls(2)
            await clock.wait_for_deadline(10.0)  # the second poll done, its snapshot written
            report = await reports.status(hub.store.engine, clock.now())
            hub.stop()
            for call in list(agent.live.values()):
                call.end()

    leads = report.strategies["list"]
    assert (leads.pending, leads.waiting) == (1, 1)  # r4 queued; r2 waiting for its retry
    assert leads.states == {"dialing": 2, "retry": 1}
    assert leads.polled_at == clock.now()


async def test_a_retry_delay_survives_a_restart(sqlite_url: str) -> None:
    clock = ManualClock()
    agent = ScriptedAgent(script={A: ["busy"]})
    hub = make_hub(
        sqlite_url,
        agent,
        ListStrategy([rec("r1", A)]),
        clock=clock,
        retry=RetryPolicy(attempts=1, delay=600.0),
    )
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await agent.wait_for_dials(1)
            await clock.wait_until(lambda: 600.0 in clock.deadlines)  # the retry is scheduled
            hub.stop()

    later = ManualClock(wall=clock.now() + timedelta(seconds=100))
    agent = ScriptedAgent()
    source = ListStrategy([rec("r1", A)])
    hub = make_hub(
        sqlite_url,
        agent,
        source,
        clock=later,
        exit_when_done=True,
        retry=RetryPolicy(attempts=1, delay=600.0),
    )
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            # 100 s of the 600 s delay passed while the daemon was down: 500 s remain.
            await later.wait_until(lambda: 500.0 in later.deadlines)
            assert agent.dials == []
            later.advance(500.0)
    assert [d.to for d in agent.dials] == [A]
    assert await fetch(sqlite_url, "SELECT number, state FROM attempts ORDER BY number") == [
        (1, "rejected"),
        (2, "completed"),
    ]
    assert await fetch(sqlite_url, "SELECT state, retry_at FROM records") == [("completed", None)]


async def test_the_young_gc_generation_is_collected_rarely_while_the_hub_runs(
    sqlite_url: str,
) -> None:
    import gc

    from dispatch._gc import YOUNG_THRESHOLD

    seen: list[int] = []

    class Looking(ListStrategy):
        async def poll(self) -> list[Any]:
            seen.append(gc.get_threshold()[0])
            return await super().poll()

    before = gc.get_threshold()
    clock = ManualClock()
    hub = DispatchHub(
        agent=ScriptedAgent(),
        strategies=[Looking([rec("r1", PHONES[0])])],
        store=store_for(sqlite_url, clock),
        clock=clock,
        exit_when_done=True,
    )
    with anyio.fail_after(10):
        await hub.run()
    assert seen == [YOUNG_THRESHOLD]
    assert gc.get_threshold() == before  # and put back afterwards


async def test_an_agent_may_change_the_dicts_of_its_request(sqlite_url: str) -> None:
    changed: list[str] = []

    class Annotating(ScriptedAgent):
        async def dial(self, request: DialRequest) -> Any:
            request.metadata["seen"] = True  # a record without metadata shares an empty one
            request.config.setdefault("voice", "x")
            changed.append(request.to)
            return await super().dial(request)

    clock = ManualClock()
    hub = DispatchHub(
        agent=Annotating(),
        strategies=[ListStrategy([rec("r1", PHONES[0]), rec("r2", PHONES[1])])],
        store=store_for(sqlite_url, clock),
        clock=clock,
        exit_when_done=True,
    )
    with anyio.fail_after(10):
        await hub.run()
    assert changed == [PHONES[0], PHONES[1]]
    assert rec("r3", PHONES[2]).metadata == {}  # the shared one is still empty
