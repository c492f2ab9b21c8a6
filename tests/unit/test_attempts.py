"""Late outcomes reach the ledger through the agent's context, wrapped agents included, and the
bookkeeping of dials awaiting late news stays bounded."""

from __future__ import annotations

import anyio
import pytest

from dispatch import (
    Agent,
    AgentContext,
    Call,
    DialRequest,
    DialUnknown,
    DispatchHub,
    LateOutcome,
)
from dispatch.attempts import MAX_REASONS, Counters
from dispatch.states import AttemptState
from dispatch.testing import ManualClock
from tests.conftest import fetch
from tests.support import PHONES, ListStrategy, rec, store_for

pytestmark = pytest.mark.anyio

A, B = PHONES[:2]


class TimesOut(Agent):
    """Every dial times out (unknown outcome); the test reports what happened later."""

    def __init__(self) -> None:
        self.requests: list[DialRequest] = []

    async def dial(self, request: DialRequest) -> Call:
        self.requests.append(request)
        raise DialUnknown("no answer from the platform in time")


class Wrapper(Agent):
    """A proxy agent: passes the hub's context on to the agent it wraps (and keeps none)."""

    def __init__(self, inner: Agent) -> None:
        self.inner = inner

    async def open(self, context: AgentContext | None = None) -> None:
        await self.inner.open(context)

    async def dial(self, request: DialRequest) -> Call:
        return await self.inner.dial(request)


async def test_a_wrapped_agents_late_report_is_reconciled_and_frees_the_number(
    sqlite_url: str,
) -> None:
    clock = ManualClock()
    inner = TimesOut()
    source = ListStrategy([rec("r1", A), rec("r2", A)])
    hub = DispatchHub(
        agent=Wrapper(inner),
        strategies=[source],
        store=store_for(sqlite_url, clock),
        clock=clock,
        poll_interval=1000.0,
    )
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await source.wait_for_events(1)  # on_failed: unknown
            assert hub.statistics().held_numbers == 1  # the phone may ring: r2 waits
            [request] = inner.requests
            inner.report_late(LateOutcome(request.dispatch_id, "call-9", True, "hangup", 42.0))
            await source.wait_for_events(2)  # on_completed, from the late report
            await clock.wait_all_tasks_blocked()
            assert hub.statistics().held_numbers == 0  # the call is over: A is free again
            hub.stop()

    assert source.events[:2] == [
        ("failed", "r1", "unknown: no answer from the platform in time"),
        ("completed", "r1", "call-9", "hangup"),
    ]
    assert await fetch(
        sqlite_url, "SELECT state, call_id, duration FROM attempts WHERE record_id = 'r1'"
    ) == [("completed", "call-9", 42.0)]


async def test_dials_awaiting_late_news_are_forgotten_after_the_late_window(
    sqlite_url: str,
) -> None:
    clock = ManualClock()
    inner = TimesOut()
    source = ListStrategy([rec("r1", A)])
    hub = DispatchHub(
        agent=inner,
        strategies=[source],
        store=store_for(sqlite_url, clock),
        clock=clock,
        poll_interval=1000.0,
        recover_hold=0,
    )
    hub._attempts.late_window = 60.0
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            await source.wait_for_events(1)
            assert len(hub._attempts._unknown) == 1
            clock.advance(61.0)
            source.records.append(rec("r2", B))
            source.poll_now()
            await source.wait_for_events(2)
            assert list(hub._attempts._unknown) == [inner.requests[1].dispatch_id]  # r1 gone
            hub.stop()


def test_outcomes_are_counted_by_state_and_the_first_word_of_their_reason() -> None:
    counters = Counters()
    counters.ended_with(AttemptState.COMPLETED, "hangup")
    counters.ended_with(AttemptState.REJECTED, "busy")
    counters.ended_with(AttemptState.REJECTED, "busy")
    counters.ended_with(AttemptState.REJECTED, "call_error: number unreachable")
    counters.ended_with(AttemptState.UNKNOWN, "unknown: RuntimeError: agent bug")
    counters.ended_with(AttemptState.INTERRUPTED, "interrupted: connection lost")
    counters.ended_with(AttemptState.COMPLETED, None)
    assert counters.ended == {
        AttemptState.COMPLETED: {"hangup": 1, "completed": 1},
        AttemptState.REJECTED: {"busy": 2, "call_error": 1},
        AttemptState.UNKNOWN: {"unknown": 1},  # free text: never a label of its own
        AttemptState.INTERRUPTED: {"interrupted": 1},
    }


def test_reasons_past_the_limit_are_counted_as_other() -> None:
    counters = Counters()
    for n in range(MAX_REASONS + 3):
        counters.ended_with(AttemptState.COMPLETED, f"reason-{n}")
    counters.ended_with(AttemptState.COMPLETED, "reason-0")  # known: still its own
    by_reason = counters.ended[AttemptState.COMPLETED]
    assert len(by_reason) == MAX_REASONS + 1
    assert by_reason["other"] == 3
    assert by_reason["reason-0"] == 2
