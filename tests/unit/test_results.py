"""What the callee said: result tools, the ledger, on_result, and the actions results drive."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from dispatch import (
    ActionKind,
    CallEnd,
    CallResult,
    ResultAction,
    ResultTool,
    RetryPolicy,
    SimulatedAgent,
)
from dispatch.results import decide_action
from dispatch.store import Store, reports
from dispatch.testing import ManualClock, ScriptedAgent
from tests.conftest import fetch
from tests.support import ListStrategy, rec
from tests.support import hub_for as make_hub

pytestmark = pytest.mark.anyio

A, B = "+14155552671", "+14155552672"
WALL = ManualClock().now()

CONFIRM = ResultTool(
    "confirm_appointment",
    "Record the callee's answer about the appointment",
    {
        "type": "object",
        "properties": {
            "status": {"type": "string", "enum": ["confirmed", "cancelled", "reschedule"]},
            "notes": {"type": "string"},
            "call_back_at": {"type": "string"},
        },
        "required": ["status"],
        "additionalProperties": False,
    },
)


def said(tool: str = "confirm_appointment", seconds: float = 10.0, **arguments: Any) -> CallResult:
    return CallResult(tool, arguments, WALL + timedelta(seconds=seconds))


def ended(*results: CallResult, transcript: tuple[dict[str, Any], ...] = ()) -> CallEnd:
    return CallEnd("hangup", 42.0, results, transcript, WALL, WALL + timedelta(seconds=42))


# -- the tool and the action rules -------------------------------------------------------------


def test_a_result_tool_names_each_argument_that_does_not_match_its_schema() -> None:
    assert CONFIRM.errors({"status": "confirmed", "notes": "ok"}) == []
    enum = "['confirmed', 'cancelled', 'reschedule']"
    assert CONFIRM.errors({"status": "maybe"}) == [f"status: 'maybe' is not one of {enum}"]
    assert CONFIRM.errors({}) == ["'status' is a required property"]
    assert CONFIRM.errors("confirmed") == ["arguments must be a JSON object, not str"]
    assert CONFIRM.spec()["parameters"]["required"] == ["status"]


def test_a_result_tool_with_an_invalid_schema_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="invalid schema"):
        ResultTool("broken", parameters={"type": "object", "properties": {"a": {"type": 3}}})
    with pytest.raises(ValueError, match="object schema"):
        ResultTool("scalar", parameters={"type": "string"})


def test_an_opt_out_anywhere_in_the_call_wins_and_the_last_call_back_decides() -> None:
    rules = [
        ResultAction(ActionKind.OPT_OUT, when={"status": "cancelled"}),
        ResultAction(ActionKind.CALL_BACK_AT, when={"status": "reschedule"}),
    ]
    later = said(status="reschedule", call_back_at="2026-01-06T09:30:00+01:00")
    assert decide_action([later], rules).at == datetime(2026, 1, 6, 8, 30, tzinfo=UTC)
    assert decide_action([said(status="cancelled"), later], rules).kind is ActionKind.OPT_OUT
    assert decide_action([said(status="confirmed")], rules).kind is ActionKind.DONE
    local = ResultAction(ActionKind.CALL_BACK_AT, timezone="America/New_York")
    naive = said(call_back_at="2026-07-01T09:00")  # summer time: UTC-4
    assert decide_action([naive], [local]).at == datetime(2026, 7, 1, 13, 0, tzinfo=UTC)
    for absurd in ("9999-12-31T23:00:00-05:00", "0001-01-01T00:00+01:00", "1970-01-01T00:00"):
        assert decide_action([said(call_back_at=absurd)], [local]).at is None  # no crash
    broken = decide_action([said(call_back_at="next tuesday")], [local])
    assert (broken.kind, broken.at, broken.problem) == (
        ActionKind.CALL_BACK_AT,
        None,
        "not an ISO 8601 time: 'next tuesday'",
    )


# -- results through the hub ------------------------------------------------------------------


async def test_results_are_committed_with_the_outcome_and_delivered_before_on_completed(
    sqlite_url: str,
) -> None:
    transcript = ({"role": "assistant", "content": "Hi Ada"}, {"role": "user", "content": "Yes"})
    end = ended(said(status="confirmed"), said(seconds=20, status="confirmed", notes="at 3"),
                transcript=transcript)  # fmt: skip
    agent = ScriptedAgent(script={A: [end]})
    source = ListStrategy([rec("r1", A)])
    hub = make_hub(sqlite_url, agent, source, exit_when_done=True)
    with anyio.fail_after(10):
        await hub.run()
    assert source.events == [
        ("dispatched", "r1", "call-1"),
        ("result", "r1", "call-1", "confirm_appointment", {"status": "confirmed"}),
        ("result", "r1", "call-1", "confirm_appointment", {"status": "confirmed", "notes": "at 3"}),
        ("completed", "r1", "call-1", "hangup"),
    ]
    [(results, stored, started_at)] = await fetch(
        sqlite_url, "SELECT results, transcript, started_at FROM attempts"
    )
    assert [r["arguments"] for r in json.loads(results)] == [
        {"status": "confirmed"},
        {"status": "confirmed", "notes": "at 3"},
    ]
    assert json.loads(stored) == list(transcript)
    assert str(started_at).startswith("2026-01-05 15:00:00")
    store = Store(sqlite_url)
    await store.open(migrate=False)
    try:
        [row] = await reports.history(store.engine, record_id="r1", transcripts=True)
    finally:
        await store.aclose()
    assert row.results[1] == {
        "tool": "confirm_appointment",
        "arguments": {"status": "confirmed", "notes": "at 3"},
        "at": (WALL + timedelta(seconds=20)).isoformat(),
    }
    assert row.transcript == list(transcript)


async def test_an_opt_out_puts_the_number_on_the_do_not_call_list_with_the_outcome(
    sqlite_url: str,
) -> None:
    agent = ScriptedAgent(script={A: [ended(said(status="cancelled"))]})
    source = ListStrategy([rec("r1", A), rec("r2", B)])
    source.result_actions = (ResultAction(ActionKind.OPT_OUT, when={"status": "cancelled"}),)
    hub = make_hub(sqlite_url, agent, source, exit_when_done=True)
    with anyio.fail_after(10):
        await hub.run()
    assert await fetch(
        sqlite_url, "SELECT phone, source, strategy, record_id FROM do_not_call"
    ) == [(A, "result", "list", "r1")]
    assert await fetch(sqlite_url, "SELECT record_id, state FROM records ORDER BY 1") == [
        ("r1", "completed"),
        ("r2", "completed"),
    ]


async def test_a_call_back_at_dials_the_record_again_at_that_time_within_the_retry_budget(
    sqlite_url: str,
) -> None:
    at = WALL + timedelta(hours=2)
    again = said(status="reschedule", call_back_at=at.isoformat())
    agent = ScriptedAgent(script={A: [ended(again), ended(again)]})
    source = ListStrategy([rec("r1", A)])
    source.result_actions = (ResultAction(ActionKind.CALL_BACK_AT, when={"status": "reschedule"}),)
    clock = ManualClock()
    hub = make_hub(sqlite_url, agent, source, clock=clock, retry=RetryPolicy(attempts=1))
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await agent.wait_for_dials(1)
            await clock.wait_until(lambda: hub.statistics().waiting == 1)
            clock.advance(2 * 3600 - 1)
            await clock.wait_all_tasks_blocked()
            assert len(agent.dials) == 1  # not a second early
            clock.advance(1)
            await agent.wait_for_dials(2)
            # The second call back would be a third dial: over the budget, so it is done.
            await source.signal.wait_until(lambda: len(source.named("completed")) == 2)
            hub.stop()
    assert await fetch(sqlite_url, "SELECT number, state FROM attempts ORDER BY number") == [
        (1, "completed"),
        (2, "completed"),
    ]
    assert await fetch(sqlite_url, "SELECT state, attempts FROM records") == [("completed", 2)]


async def test_a_call_back_with_no_usable_time_ends_the_record(sqlite_url: str) -> None:
    agent = ScriptedAgent(script={A: [ended(said(status="reschedule", call_back_at="soon"))]})
    source = ListStrategy([rec("r1", A)])
    source.result_actions = (ResultAction(ActionKind.CALL_BACK_AT),)
    hub = make_hub(sqlite_url, agent, source, exit_when_done=True, retry=RetryPolicy(attempts=3))
    with anyio.fail_after(10):
        await hub.run()
    assert await fetch(sqlite_url, "SELECT state, attempts FROM records") == [("completed", 1)]


async def test_the_simulated_agent_answers_from_a_seeded_mix_derived_from_the_tools() -> None:
    agent = SimulatedAgent(answered=1, no_answer=0, busy=0, failed=0, time_scale=0, tools=[CONFIRM])
    statuses = []
    for n in range(60):
        from dispatch import DialRequest

        call = await agent.dial(DialRequest(to=f"+1415555{n:04d}", dispatch_id=str(n)))
        end = await call.wait()
        [result] = end.results
        assert CONFIRM.errors(result.arguments) == []
        statuses.append(result.arguments["status"])
    assert set(statuses) == {"confirmed", "cancelled", "reschedule"}
    again = SimulatedAgent(answered=1, no_answer=0, busy=0, failed=0, time_scale=0, tools=[CONFIRM])
    assert again.plan("+14155550007", 1) == agent.plan("+14155550007", 1)
