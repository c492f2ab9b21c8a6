"""The calling rules at the dial: do-not-call, per-number caps, retries by outcome, expiry,
and the per-second smoother."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from dispatch import (
    ActionKind,
    CallEnd,
    CallResult,
    DispatchHub,
    Pacing,
    ResultAction,
    RetryPolicy,
)
from dispatch.options import RetryRule
from dispatch.rules.caps import Caps
from dispatch.rules.gate import CallingRules
from dispatch.store import DoNotCall
from dispatch.testing import ManualClock, ScriptedAgent, max_in_any_window
from strategies import CsvStrategy
from tests.conftest import fetch
from tests.support import ListStrategy, rec
from tests.support import hub_for as make_hub

pytestmark = pytest.mark.anyio

A, B = "+14155552671", "+14155552672"
WALL = ManualClock().now()


async def test_a_number_put_on_the_list_while_its_record_waits_is_never_dialed(
    sqlite_url: str,
) -> None:
    clock = ManualClock()
    agent = ScriptedAgent(script={A: ["busy"]})
    source = ListStrategy([rec("r1", A)])
    hub = make_hub(sqlite_url, agent, source, clock=clock, retry=RetryPolicy(1, 600.0))
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await agent.wait_for_dials(1)
            await clock.wait_until(lambda: hub.statistics().waiting == 1)
            # Another shell: `dispatch dnc add` while r1 waits for its retry.
            await hub.store.add_do_not_call([DoNotCall(A, "cli")], at=clock.now())
            clock.advance(hub.poll_interval)  # the next poll reads the list again
            await clock.wait_until(lambda: hub.statistics().do_not_call == 1)
            clock.advance(600 - hub.poll_interval)
            await source.wait_for_events(1)
            hub.stop()
    assert len(agent.dials) == 1
    assert source.events == [("skipped", "r1", "dnc")]
    assert await fetch(sqlite_url, "SELECT state, reason FROM records") == [("skipped", "dnc")]


async def test_an_opt_out_keeps_every_strategy_from_calling_the_number_again(
    sqlite_url: str,
) -> None:
    said = CallResult("confirm_appointment", {"status": "stop"}, WALL)
    agent = ScriptedAgent(script={A: [CallEnd("hangup", 1.0, (said,))]})
    first = ListStrategy([rec("r1", A)], name="first")
    first.result_actions = (ResultAction(ActionKind.OPT_OUT, when={"status": "stop"}),)
    second = ListStrategy([], name="second")
    hub = make_hub(sqlite_url, agent, first, second, max_concurrent=1)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await first.signal.wait_until(lambda: len(first.named("completed")) == 1)
            second.records = [rec("s1", A)]
            second.poll_now()
            await second.wait_for_events(1)
            hub.stop()
    assert [d.to for d in agent.dials] == [A]
    assert second.events == [("skipped", "s1", "dnc")]


async def test_caps_hold_a_number_across_strategies_until_the_window_allows_it(
    sqlite_url: str,
) -> None:
    clock = ManualClock()
    agent = ScriptedAgent()
    first = ListStrategy([rec("r1", A)], name="first")
    second = ListStrategy([], name="second")
    hub = make_hub(sqlite_url, agent, first, second, clock=clock, caps=Caps(per_24h=1))
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await agent.wait_for_dials(1)
            second.records = [rec("s1", A), rec("s2", B)]
            second.poll_now()
            await agent.wait_for_dials(2)  # B is not capped
            await clock.wait_until(lambda: hub.statistics().waiting == 1)
            clock.advance(86_400 - 1)
            await clock.wait_all_tasks_blocked()
            assert len(agent.dials) == 2  # one second early: still capped
            clock.advance(1)
            await agent.wait_for_dials(3)
            hub.stop()
    assert [d.to for d in agent.dials] == [A, B, A]


async def test_caps_count_the_dials_of_earlier_runs(sqlite_url: str) -> None:
    clock = ManualClock()
    agent = ScriptedAgent()
    first = make_hub(
        sqlite_url, agent, ListStrategy([rec("r1", A)]), clock=clock, caps=Caps(per_24h=1)
    )
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(first.run)
            await agent.wait_for_dials(1)
            first.stop()
    clock.advance(3600)  # a restart an hour later, another record for the same number
    source = ListStrategy([rec("r2", A)])
    second = make_hub(sqlite_url, agent, source, clock=clock, caps=Caps(per_24h=1))
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(second.run)
            await clock.wait_until(lambda: second.statistics().waiting == 1)
            clock.advance(86_400 - 3600 - 1)
            await clock.wait_all_tasks_blocked()
            assert len(agent.dials) == 1  # one second early: the first run's call still counts
            clock.advance(1)
            await agent.wait_for_dials(2)
            second.stop()


async def test_a_retry_counts_against_the_caps(sqlite_url: str) -> None:
    clock = ManualClock()
    agent = ScriptedAgent(script={A: ["busy", "answer"]})
    source = ListStrategy([rec("r1", A)])
    hub = make_hub(
        sqlite_url, agent, source, clock=clock, caps=Caps(per_24h=1), retry=RetryPolicy(1, 60.0)
    )
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await agent.wait_for_dials(1)
            await clock.wait_until(lambda: hub.statistics().waiting == 1)
            clock.advance(60)  # the retry is due, the cap is not
            await clock.wait_all_tasks_blocked()
            assert len(agent.dials) == 1
            clock.advance(86_400 - 60)
            await agent.wait_for_dials(2)
            hub.stop()


async def test_a_record_a_cap_holds_past_its_not_after_is_skipped_as_cap(sqlite_url: str) -> None:
    clock = ManualClock()
    agent = ScriptedAgent()
    soon = WALL + timedelta(hours=2)
    source = ListStrategy([rec("r1", A), rec("r2", A, not_after=soon)])
    hub = make_hub(sqlite_url, agent, source, clock=clock, caps=Caps(per_24h=1))
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await source.wait_for_events(2)
            hub.stop()
    assert [d.to for d in agent.dials] == [A]
    assert ("skipped", "r2", "cap") in source.events
    assert await fetch(sqlite_url, "SELECT state FROM records WHERE record_id = 'r2'") == [
        ("skipped",)
    ]


async def test_each_kind_of_rejection_is_retried_on_its_own_rule(sqlite_url: str) -> None:
    clock = ManualClock()
    agent = ScriptedAgent(script={A: ["busy", "busy", "no_answer", "answer"]})
    source = ListStrategy([rec("r1", A)])
    retry = RetryPolicy(
        attempts=0,
        by_reason={"busy": RetryRule(2, 600.0), "no_answer": RetryRule(1, 7200.0)},
    )
    assert retry.max_dials == 4
    hub = make_hub(sqlite_url, agent, source, clock=clock, retry=retry)
    starts = []
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            for count in range(1, 5):
                await agent.wait_for_dials(count)
                starts.append(clock.monotonic())
                await clock.wait_all_tasks_blocked()
                if count < 4:
                    await clock.wait_until(lambda: hub.statistics().waiting == 1)
                    clock.advance(7200 if count == 3 else 600)
            await source.signal.wait_until(lambda: len(source.named("completed")) == 1)
            hub.stop()
    assert starts == [0.0, 600.0, 1200.0, 8400.0]


async def test_a_third_busy_with_two_busy_retries_fails_the_record(sqlite_url: str) -> None:
    clock = ManualClock()
    agent = ScriptedAgent(script={A: ["busy", "busy", "busy"]})
    source = ListStrategy([rec("r1", A)])
    retry = RetryPolicy(attempts=5, by_reason={"busy": RetryRule(2, 1.0)})
    hub = make_hub(sqlite_url, agent, source, clock=clock, retry=retry, exit_when_done=True)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            for count in (1, 2):
                await agent.wait_for_dials(count)
                await clock.wait_until(lambda: hub.statistics().waiting == 1)
                clock.advance(1.0)
            await source.wait_for_events(1)
    assert source.events == [("failed", "r1", "busy")]
    assert len(agent.dials) == 3


async def test_a_record_that_expires_while_it_waits_is_not_dialed_late(sqlite_url: str) -> None:
    clock = ManualClock()
    agent = ScriptedAgent(script={A: ["busy"]})
    source = ListStrategy([rec("r1", A, not_after=WALL + timedelta(seconds=300))])
    hub = make_hub(sqlite_url, agent, source, clock=clock, retry=RetryPolicy(1, 600.0))
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await agent.wait_for_dials(1)
            await clock.wait_until(lambda: hub.statistics().waiting == 1)
            clock.advance(600)
            await source.wait_for_events(1)
            hub.stop()
    assert len(agent.dials) == 1
    assert source.events == [("skipped", "r1", "expired")]
    assert await fetch(sqlite_url, "SELECT state FROM records") == [("expired",)]


async def test_a_csv_rows_appointment_time_expires_it_and_its_column_sets_a_dial_option(
    sqlite_url: str, tmp_path: Path
) -> None:
    # An appointment reminder whose appointment is over is not dialed: it expires. The next
    # row's answering-machine column reaches the dial as the option it names.
    leads = tmp_path / "leads.csv"
    leads.write_text(
        "id,phone,appt,amd\n"
        f"past,{A},2026-01-05T14:59:00Z,yes\n"
        f"later,{B},2026-01-06T09:00:00-05:00,no\n"
    )
    source = CsvStrategy(
        leads, not_after="{appt}", config={"detect_turn_end": "{amd}"}, watch=False
    )
    agent = ScriptedAgent()
    hub = make_hub(sqlite_url, agent, source, exit_when_done=True)
    with anyio.fail_after(10):
        await hub.run()
    [dial] = agent.dials
    assert (dial.to, dial.detect_turn_end) == (B, False)
    assert "detect_turn_end" not in dial.config  # a dial option, not agent configuration
    states = await fetch(sqlite_url, "SELECT record_id, state FROM records ORDER BY record_id")
    assert states == [("later", "completed"), ("past", "expired")]


async def test_the_per_second_smoother_never_exceeds_its_rate(sqlite_url: str) -> None:
    # Real time: aiolimiter runs on the event loop's clock.
    agent = ScriptedAgent()
    stamps: list[float] = []
    agent.on_dial = lambda request: stamps.append(time.monotonic())
    source = ListStrategy([rec(f"r{n}", f"+1415555{2600 + n:04d}") for n in range(15)])
    hub = DispatchHub(
        agent=agent,
        strategies=[source],
        store=sqlite_url,
        pacing=Pacing(max_concurrent=15, max_calls_per_second=10.0),
        exit_when_done=True,
    )
    with anyio.fail_after(20):
        await hub.run()
    assert len(stamps) == 15
    # 10 a second, smoothed: a start every 100 ms. The dial follows its intent's commit, a
    # few ms later each time, so a window may see one start more than the smoother let out.
    assert max_in_any_window(stamps, 1.0) <= 11
    assert stamps[-1] - stamps[0] >= 1.3


async def test_calling_rules_on_a_strategy_tighten_the_hubs_caps() -> None:
    source = ListStrategy([], name="s")
    source.calling_rules = CallingRules(caps=Caps(per_24h=2, min_gap=60))
    hub = DispatchHub(agent=ScriptedAgent(), strategies=[source], caps=Caps(per_24h=3, per_30d=4))
    assert hub.calling_rules("s").caps == Caps(per_24h=2, per_30d=4, min_gap=60)


NEW_YORK, IDAHO, PARIS = "+12125552671", "+12085552671", "+33142685300"


def us_rules() -> CallingRules:
    from dispatch.rules import load_pack

    return CallingRules(load_pack("us"))


async def test_a_number_of_two_zones_waits_for_the_window_in_both(sqlite_url: str) -> None:
    # Monday 15:00 UTC: 10:00 in New York, 08:00 in Boise, but 07:00 in Los Angeles.
    clock = ManualClock()
    agent = ScriptedAgent()
    source = ListStrategy([rec("ny", NEW_YORK), rec("id", IDAHO)])
    source.calling_rules = us_rules()
    hub = make_hub(sqlite_url, agent, source, clock=clock)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await agent.wait_for_dials(1)
            await clock.wait_until(lambda: hub.statistics().waiting == 1)
            clock.advance(3600 - 1)
            await clock.wait_all_tasks_blocked()
            assert [d.to for d in agent.dials] == [NEW_YORK]  # 07:59:59 in Los Angeles
            clock.advance(1)
            await agent.wait_for_dials(2)
            hub.stop()
    assert [d.to for d in agent.dials] == [NEW_YORK, IDAHO]
    [(evidence,)] = await fetch(sqlite_url, "SELECT evidence FROM attempts WHERE record_id='id'")
    seen = json.loads(evidence)
    assert seen["rules"].startswith("us@")
    assert seen["zones"] == ["America/Boise", "America/Los_Angeles"]
    assert seen["local_time"] == "2026-01-05T09:00:00-07:00"  # Boise, at the dial


async def test_each_attempt_keeps_what_the_rules_saw_at_its_dial(sqlite_url: str) -> None:
    # The ledger's evidence: pack and version, zones and local time, when the do-not-call
    # list was read, the caller id, and the cap counts (the retry counts against them).
    clock = ManualClock()
    agent = ScriptedAgent(script={NEW_YORK: ["busy", "answer"]})
    source = ListStrategy([rec("ny", NEW_YORK, from_="+12125550100")])
    source.calling_rules = CallingRules(us_rules().pack, Caps(per_24h=3))
    hub = make_hub(sqlite_url, agent, source, clock=clock, retry=RetryPolicy(1, 60.0))
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await agent.wait_for_dials(1)
            await clock.wait_until(lambda: hub.statistics().waiting == 1)
            clock.advance(60)
            await agent.wait_for_dials(2)
            hub.stop()
    rows = await fetch(sqlite_url, "SELECT evidence FROM attempts ORDER BY number")
    first, second = (json.loads(evidence) for (evidence,) in rows)
    assert first["rules"].startswith("us@")
    assert first["zones"] == ["America/New_York"]
    assert first["local_time"] == "2026-01-05T10:00:00-05:00"
    assert first["caller_id"] == "+12125550100"
    assert first["dnc_checked_at"] == "2026-01-05T15:00:00+00:00"
    assert first["caps"] == {"24h": 0, "30d": 0}  # before this dial
    assert second["caps"] == {"24h": 1, "30d": 1}  # the first dial counts
    assert second["local_time"] == "2026-01-05T10:01:00-05:00"


async def test_a_retry_that_would_land_outside_the_window_waits_for_the_next_opening(
    sqlite_url: str,
) -> None:
    # Monday 20:30 in New York: the retry an hour later would be at 21:30, after hours.
    clock = ManualClock(wall=datetime(2026, 1, 6, 1, 30, tzinfo=UTC))
    agent = ScriptedAgent(script={NEW_YORK: ["busy", "answer"]})
    source = ListStrategy([rec("ny", NEW_YORK)])
    source.calling_rules = us_rules()
    hub = make_hub(sqlite_url, agent, source, clock=clock, retry=RetryPolicy(1, 3600.0))
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await agent.wait_for_dials(1)
            await clock.wait_until(lambda: hub.statistics().waiting == 1)
            clock.advance(3600)  # the retry is due, but it is 21:30 in New York
            await clock.wait_until(lambda: hub.statistics().waiting == 1)
            clock.advance(10.5 * 3600 - 1)  # 07:59:59 the next morning
            await clock.wait_all_tasks_blocked()
            assert len(agent.dials) == 1
            clock.advance(1)
            await agent.wait_for_dials(2)
            hub.stop()
    assert clock.now() == datetime(2026, 1, 6, 13, 0, tzinfo=UTC)  # 08:00 in New York


async def test_a_french_number_waits_through_the_lunch_break(
    sqlite_url: str,
) -> None:
    from dispatch.rules import load_pack

    # Friday 2026-01-09 12:30 UTC is 13:30 in Paris: the lunch break, then 14:00.
    clock = ManualClock(wall=datetime(2026, 1, 9, 12, 30, tzinfo=UTC))
    agent = ScriptedAgent()
    source = ListStrategy([rec("fr", PARIS)])
    source.calling_rules = CallingRules(load_pack("fr"))
    hub = make_hub(sqlite_url, agent, source, clock=clock)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await clock.wait_until(lambda: hub.statistics().waiting == 1)
            clock.advance(1800 - 1)
            await clock.wait_all_tasks_blocked()
            assert agent.dials == []
            clock.advance(1)
            await agent.wait_for_dials(1)
            hub.stop()


async def test_a_scheduled_strategy_dials_only_while_its_cron_expression_is_open(
    sqlite_url: str,
) -> None:
    from dispatch.rules import Schedule

    # Monday 15:00 UTC, inside "0 9-17 * * mon-fri"; 18:00 is closed until Tuesday 09:00.
    clock = ManualClock()
    agent = ScriptedAgent()
    source = ListStrategy([rec("r1", A)])
    source.calling_rules = CallingRules(schedule=Schedule("0 9-17 * * mon-fri"))
    hub = make_hub(sqlite_url, agent, source, clock=clock)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await agent.wait_for_dials(1)
            clock.advance(3 * 3600)  # 18:00
            await clock.wait_all_tasks_blocked()
            source.records.append(rec("r2", B))
            polls = source.polls
            clock.advance(14 * 3600 + 59 * 60)  # Tuesday 08:59: neither polled nor dialed
            await clock.wait_all_tasks_blocked()
            assert (source.polls, len(agent.dials)) == (polls, 1)
            clock.advance(60)
            await agent.wait_for_dials(2)
            hub.stop()
    assert clock.now() == datetime(2026, 1, 6, 9, 0, tzinfo=UTC)


async def test_an_end_reason_configured_as_an_opt_out_lists_the_number_with_its_attempt(
    sqlite_url: str,
) -> None:
    agent = ScriptedAgent(script={A: [CallEnd("opted_out", 3.0)]})
    source = ListStrategy([rec("r1", A)])
    source.calling_rules = CallingRules(opt_out_reasons=frozenset({"opted_out"}))
    hub = make_hub(sqlite_url, agent, source, exit_when_done=True)
    with anyio.fail_after(10):
        await hub.run()
    [(attempt,)] = await fetch(sqlite_url, "SELECT id FROM attempts")
    assert await fetch(
        sqlite_url, "SELECT phone, source, record_id, attempt_id, reason FROM do_not_call"
    ) == [(A, "result", "r1", attempt, "call ended: opted_out")]


async def test_a_dial_that_waited_for_the_rate_past_the_window_is_held_not_made(
    sqlite_url: str,
) -> None:
    # 20:59 in New York, one dial a minute: the second would start at 21:00, after hours.
    clock = ManualClock(wall=datetime(2026, 1, 6, 1, 59, tzinfo=UTC))
    agent = ScriptedAgent()
    source = ListStrategy([rec("a", NEW_YORK), rec("b", "+12125552672")])
    source.calling_rules = us_rules()
    hub = make_hub(
        sqlite_url,
        agent,
        source,
        clock=clock,
        pacing=Pacing(max_calls_per_minute=1, max_concurrent=2),
    )
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await agent.wait_for_dials(1)
            await clock.wait_for_deadline(60.0)  # the limiter
            clock.advance(60)
            await clock.wait_until(lambda: hub.statistics().waiting == 1)
            assert len(agent.dials) == 1
            clock.advance(11 * 3600)  # 08:00 the next morning
            await agent.wait_for_dials(2)
            hub.stop()
    assert clock.now() == datetime(2026, 1, 6, 13, 0, tzinfo=UTC)


async def test_an_opt_out_reported_late_keeps_every_strategy_from_the_number(
    sqlite_url: str,
) -> None:
    from dispatch import LateOutcome

    said = CallResult("confirm_appointment", {"status": "stop"}, WALL)
    agent = ScriptedAgent(script={A: ["unknown"]})
    first = ListStrategy([rec("r1", A)], name="first")
    first.result_actions = (ResultAction(ActionKind.OPT_OUT, when={"status": "stop"}),)
    second = ListStrategy([], name="second")
    hub = make_hub(sqlite_url, agent, first, second, recover_hold=0.0)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await first.wait_for_events(1)  # failed: unknown
            [dial] = agent.dials
            end = CallEnd("hangup", 5.0, (said,))
            agent.report_late(LateOutcome(dial.dispatch_id, "call-9", True, "hangup", 5.0, end))
            await first.signal.wait_until(lambda: len(first.named("completed")) == 1)
            second.records = [rec("s1", A)]
            second.poll_now()
            await second.wait_for_events(1)
            hub.stop()
    assert [d.to for d in agent.dials] == [A]
    assert second.events == [("skipped", "s1", "dnc")]


async def test_status_says_when_a_strategy_closed_by_its_schedule_opens(sqlite_url: str) -> None:
    from dispatch.rules import Schedule
    from dispatch.store import Store, reports

    # Monday 15:00 UTC, after the "0 9-11 * * mon-fri" hours: it opens Tuesday at 09:00.
    clock = ManualClock()
    source = ListStrategy([rec("r1", A)])
    source.calling_rules = CallingRules(schedule=Schedule("0 9-11 * * mon-fri"))
    hub = make_hub(sqlite_url, ScriptedAgent(), source, clock=clock)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await clock.wait_for_deadline(18 * 3600.0)  # asleep until the opening
            await hub.store.wait_until(lambda s: s.commits > 0 and s.held == 0)
            hub.stop()
    store = Store(sqlite_url)
    await store.open(migrate=False)
    try:
        report = await reports.status(store.engine, clock.now())
    finally:
        await store.aclose()
    assert report.strategies["list"].waiting_reasons == {"schedule: opens 2026-01-06 09:00 UTC": 0}
