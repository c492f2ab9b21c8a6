from __future__ import annotations

import anyio
import pytest

from dispatch.queue import LOOKAHEAD, DispatchQueue, Source
from dispatch.testing import ManualClock
from tests.support import PHONES, ListStrategy, rec

pytestmark = pytest.mark.anyio

A, B, C = PHONES[:3]


def queue(*names: str, clock: ManualClock | None = None) -> DispatchQueue:
    return DispatchQueue([Source(ListStrategy(name=n)) for n in names], clock or ManualClock())


async def test_take_alternates_between_sources() -> None:
    q = queue("big", "small")
    big, small = q.sources
    for n in range(3):
        q.admit(big, rec(f"b{n}", PHONES[10 + n]))
    q.admit(small, rec("s0", PHONES[20]))
    order = [(await q.take())[1].id for _ in range(4)]
    assert order == ["b0", "s0", "b1", "b2"]
    assert q.in_flight == 4


async def test_a_record_whose_number_is_in_a_call_is_passed_over_not_dropped() -> None:
    q = queue("s")
    [source] = q.sources
    q.admit(source, rec("first", A))
    q.admit(source, rec("same-number", A))
    q.admit(source, rec("other", B))
    first = (await q.take())[1]
    assert (await q.take())[1].id == "other"

    async with anyio.create_task_group() as tg:
        taken: list[str] = []

        async def take() -> None:
            taken.append((await q.take())[1].id)

        tg.start_soon(take)
        await anyio.lowlevel.checkpoint()
        assert taken == []  # waiting: the only pending record's number is busy
        q.release(source, first)
    assert taken == ["same-number"]


async def test_put_back_returns_a_taken_record_and_frees_its_number() -> None:
    q = queue("s")
    [source] = q.sources
    q.admit(source, rec("r1", A))
    _, record = await q.take()
    q.put_back(source, record)
    assert (q.pending, q.in_flight) == (1, 0)
    assert (await q.take())[1] == record


async def test_delayed_records_enter_the_queue_at_their_time_even_if_added_out_of_order() -> None:
    clock = ManualClock()
    q = queue("s", clock=clock)
    [source] = q.sources
    async with anyio.create_task_group() as tg:
        tg.start_soon(q.run_timers)
        q.delay(source, rec("late", A), 60.0)
        await clock.wait_for_sleepers(1)
        q.delay(source, rec("early", B), 10.0)  # re-arms the timer for the earlier deadline
        await clock.wait_until(lambda: clock.deadlines == [10.0])
        assert source.queued("early")
        clock.advance(10.0)
        assert (await q.take())[1].id == "early"
        assert q.waiting == 1
        clock.advance(50.0)
        assert (await q.take())[1].id == "late"
        assert q.idle() is False  # both in flight
        tg.cancel_scope.cancel()


async def test_a_large_queue_keeps_its_order_while_taken_records_are_compacted_away() -> None:
    q = queue("s")
    [source] = q.sources
    phones = [f"+1415555{n:04d}" for n in range(1000)]
    for n, phone in enumerate(phones):
        q.admit(source, rec(f"r{n}", phone))
    taken = []
    for n in range(1000):
        record = (await q.take())[1]
        taken.append(record.id)
        if n == 400:  # admitted mid-way: goes to the back
            q.admit(source, rec("late", "+14155559999"))
        q.release(source, record)
    assert taken == [f"r{n}" for n in range(1000)]
    assert (await q.take())[1].id == "late"
    assert source.pending == {}


async def test_a_held_number_is_passed_over_until_its_hold_ends() -> None:
    clock = ManualClock()
    q = queue("s", clock=clock)
    [source] = q.sources
    async with anyio.create_task_group() as tg:
        tg.start_soon(q.run_timers)
        q.hold(A, 600.0)
        q.hold(A, 300.0)  # a shorter hold never shortens the one in place
        q.admit(source, rec("same-number", A))
        q.admit(source, rec("other", B))
        assert (await q.take())[1].id == "other"
        await clock.wait_for_deadline(600.0)
        clock.advance(599.0)
        await clock.wait_all_tasks_blocked()
        assert (q.held, q.pending) == (1, 1)
        clock.advance(1.0)
        assert (await q.take())[1].id == "same-number"
        assert q.held == 0
        tg.cancel_scope.cancel()


async def test_an_earlier_deadline_re_arms_a_timer_sleeping_for_a_hold() -> None:
    clock = ManualClock()
    q = queue("s", clock=clock)
    [source] = q.sources
    async with anyio.create_task_group() as tg:
        tg.start_soon(q.run_timers)
        q.hold(A, 600.0)
        await clock.wait_for_deadline(600.0)
        q.delay(source, rec("retry", B), 10.0)
        await clock.wait_for_deadline(10.0)
        clock.advance(10.0)
        assert (await q.take())[1].id == "retry"
        q.unhold(A)
        assert q.held == 0
        tg.cancel_scope.cancel()


def test_waiting_records_are_counted_by_what_they_wait_for() -> None:
    q = queue("a")
    [source] = q.sources
    q.delay(source, rec("r1", PHONES[1]), 10.0, "outside hours until 08:00 America/Chicago (us)")
    q.delay(source, rec("r2", PHONES[2]), 10.0, "outside hours until 09:00 Europe/Paris (fr)")
    q.delay(source, rec("r3", PHONES[3]), 10.0, "cap: 3 calls in 24 h")
    q.delay(source, rec("r4", PHONES[4]), 10.0)  # a retry
    q.withdraw(source, "r2")
    assert source.waiting_reasons() == {"outside hours": 1, "cap": 1, "retry or not_before": 1}


async def test_a_record_withdrawn_and_queued_again_many_times_is_taken_once_in_order() -> None:
    q = queue("s")
    [source] = q.sources
    q.admit(source, rec("first", A))
    for _ in range(500):  # an incremental source replacing a queued row poll after poll
        q.withdraw(source, "again")
        q.admit(source, rec("again", B))
    q.admit(source, rec("last", C))
    assert len(source.order) <= 2 * len(source.pending) + 65  # what was withdrawn is dropped
    assert [(await q.take())[1].id for _ in range(3)] == ["first", "again", "last"]
    assert not source.pending
    assert not source.take_first(set())


async def test_in_a_cluster_a_daemon_takes_its_own_share_first_in_order() -> None:
    q = queue("s")
    [source] = q.sources
    for n in range(9):
        q.admit(source, rec(f"r{n}", PHONES[n]))
    q.prefer = lambda record_id: int(record_id[1:]) % 3 == 1  # this daemon's third
    taken = [(await q.take())[1].id for _ in range(3)]
    assert taken == ["r1", "r4", "r7"]
    # None of its own left: the others' in their order, from the head (their owners may be
    # gone, or slow; nothing waits for ever).
    assert [(await q.take())[1].id for _ in range(6)] == ["r0", "r2", "r3", "r5", "r6", "r8"]


async def test_in_a_cluster_no_record_is_passed_over_by_more_than_the_lookahead() -> None:
    q = queue("s")
    [source] = q.sources
    total = LOOKAHEAD + 5
    for n in range(total):
        q.admit(source, rec(f"r{n}", PHONES[n]))
    q.prefer = lambda record_id: record_id == f"r{total - 1}"  # its only one: far back
    assert (await q.take())[1].id == "r0"  # the head, not a record LOOKAHEAD places behind
    q.prefer = lambda record_id: record_id == f"r{LOOKAHEAD}"  # within reach
    assert (await q.take())[1].id == f"r{LOOKAHEAD}"
