from __future__ import annotations

import random

import anyio
import pytest

from dispatch.pacing import SlidingWindowLimiter, Slots
from dispatch.testing import ManualClock, max_in_any_window, wait_all_tasks_blocked

pytestmark = pytest.mark.anyio


async def test_never_exceeds_the_limit_in_any_window_under_random_demand() -> None:
    clock = ManualClock()
    limiter = SlidingWindowLimiter(5, 10.0, clock=clock)
    rng = random.Random(42)
    arrivals = sorted(rng.uniform(0, 100) for _ in range(60))
    starts: list[float] = []

    async def caller(arrival: float) -> None:
        await clock.sleep_until(arrival)
        starts.append((await limiter.acquire()).at)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(clock.autojump)
            async with anyio.create_task_group() as callers:
                for arrival in arrivals:
                    callers.start_soon(caller, arrival)
            tg.cancel_scope.cancel()

    assert len(starts) == 60
    assert max_in_any_window(starts, 10.0) == 5


async def test_reaches_full_rate_when_saturated() -> None:
    clock = ManualClock()
    limit, window, demand = 100, 1.0, 10_000
    limiter = SlidingWindowLimiter(limit, window, clock=clock)
    starts: list[float] = []

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(clock.autojump)
            for _ in range(demand):
                starts.append((await limiter.acquire()).at)
            tg.cancel_scope.cancel()

    windows_used = (starts[-1] - starts[0]) / window + 1
    utilisation = demand / (windows_used * limit)
    assert utilisation >= 0.99
    assert max_in_any_window(starts, window) == limit


async def test_a_waiter_sleeps_until_the_exact_moment_a_start_is_allowed() -> None:
    clock = ManualClock()
    limiter = SlidingWindowLimiter(3, 60.0, clock=clock)
    for _ in range(3):
        await limiter.acquire()
    clock.advance(15)

    async with anyio.create_task_group() as tg:
        tg.start_soon(limiter.acquire)
        await clock.wait_for_sleepers(1)
        assert clock.next_deadline == 60.0  # one timer at the exact time, no polling
        assert limiter.statistics().waiting == 1
        clock.advance(44.999)
        assert clock.sleepers == 1
        clock.advance(0.001)
    assert limiter.starts_in_window() == 1


async def test_waiters_are_served_first_come_first_served() -> None:
    clock = ManualClock()
    limiter = SlidingWindowLimiter(1, 1.0, clock=clock)
    order: list[int] = []

    async def caller(n: int) -> None:
        await limiter.acquire()
        order.append(n)

    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.autojump)
        async with anyio.create_task_group() as callers:
            for n in range(5):
                callers.start_soon(caller, n)
                await anyio.lowlevel.checkpoint()
        tg.cancel_scope.cancel()
    assert order == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(("limit", "window"), [(0, 60.0), (-1, 60.0), (5, 0.0), (5, -1.0)])
def test_impossible_limits_are_refused(limit: int, window: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        SlidingWindowLimiter(limit, window)


async def test_repr_shows_live_state() -> None:
    clock = ManualClock()
    limiter = SlidingWindowLimiter(2, 60.0, clock=clock)
    await limiter.acquire()
    assert repr(limiter) == "SlidingWindowLimiter(limit=2, window=60.0, in_window=1, waiting=0)"


async def test_a_start_is_counted_when_it_happens_not_when_it_was_reserved() -> None:
    # The room is reserved before the intent is committed; the start is stamped after. A
    # commit that took 0.5 s moves the start, and the next window, 0.5 s later.
    clock = ManualClock()
    limiter = SlidingWindowLimiter(1, 10.0, clock=clock)
    reservation = await limiter.acquire()
    clock.advance(0.5)
    assert await limiter.start(reservation) == 0.5
    async with anyio.create_task_group() as tg:
        tg.start_soon(limiter.acquire)
        await clock.wait_for_sleepers(1)
        assert clock.deadlines == [10.5]
        clock.advance(10.0)
    assert limiter.starts_in_window() == 1


async def test_a_cancelled_reservation_gives_its_room_back() -> None:
    clock = ManualClock()
    limiter = SlidingWindowLimiter(1, 60.0, clock=clock)
    limiter.cancel(await limiter.acquire())
    with anyio.fail_after(1):
        await limiter.acquire()  # at once: nothing was dialed
    assert clock.monotonic() == 0.0


async def test_a_start_delayed_past_other_starts_waits_for_room_again() -> None:
    # Two rooms per 10 s. A reserves at 0 and its intent takes 10 s to commit; meanwhile B
    # (at 5) and C (at 10, counting A as at 0) start. A starting at 10 would make three in
    # [5, 15): it waits until 15.
    clock = ManualClock()
    limiter = SlidingWindowLimiter(2, 10.0, clock=clock)
    a = await limiter.acquire()
    clock.advance(5.0)
    await limiter.start(await limiter.acquire())
    clock.advance(5.0)
    await limiter.start(await limiter.acquire())
    starts = [0.0, 5.0, 10.0]
    async with anyio.create_task_group() as tg:

        async def late_start() -> None:
            starts[0] = await limiter.start(a)

        tg.start_soon(late_start)
        await clock.wait_for_sleepers(1)
        assert clock.deadlines == [15.0]
        clock.advance(5.0)
    assert starts == [15.0, 5.0, 10.0]
    assert max_in_any_window(starts, 10.0) == 2


async def test_seeded_starts_count_like_starts_of_this_process() -> None:
    clock = ManualClock(start=100.0)
    limiter = SlidingWindowLimiter(2, 60.0, clock=clock)
    limiter.seed([30.0, 90.0, 95.0])  # the first is out of the window already
    assert limiter.starts_in_window() == 2
    async with anyio.create_task_group() as tg:
        tg.start_soon(limiter.acquire)
        await clock.wait_for_sleepers(1)
        assert clock.deadlines == [150.0]  # when the seeded start at 90 leaves the window
        clock.advance(50.0)


async def test_a_reservation_cannot_be_used_twice() -> None:
    limiter = SlidingWindowLimiter(2, 60.0, clock=ManualClock())
    reservation = await limiter.acquire()
    await limiter.start(reservation)
    with pytest.raises(RuntimeError, match="already"):
        limiter.cancel(reservation)


async def test_a_raised_limit_wakes_the_waiter_and_a_lowered_one_holds_in_every_window() -> None:
    clock = ManualClock()
    limiter = SlidingWindowLimiter(1, 60.0, clock=clock)
    starts = [(await limiter.acquire()).at]

    async def take() -> None:
        starts.append((await limiter.acquire()).at)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(take)
            await clock.wait_for_deadline(60.0)  # it sleeps for the old limit's opening
            limiter.reconfigure(3, 60.0)
        assert starts == [0.0, 0.0]  # woken at once, the clock never moved
        limiter.reconfigure(2, 60.0)  # two starts in the window already: the next waits
        async with anyio.create_task_group() as tg:
            tg.start_soon(take)
            await clock.wait_for_deadline(60.0)
            clock.advance(60.0)
    assert starts == [0.0, 0.0, 60.0]
    with pytest.raises(ValueError, match="at least 1"):
        limiter.reconfigure(0, 60.0)


async def test_reseeding_counts_exactly_the_starts_given() -> None:
    clock = ManualClock(start=100.0)
    limiter = SlidingWindowLimiter(2, 60.0, clock=clock)
    limiter.seed([90.0, 95.0])
    limiter.reseed([99.0])
    assert limiter.starts_in_window() == 1
    assert (await limiter.acquire()).at == 100.0


async def test_slots_cap_holders_and_follow_a_resize_while_held() -> None:
    slots = Slots(1)
    await slots.acquire()
    taken: list[int] = []

    async def take(n: int) -> None:
        await slots.acquire()
        taken.append(n)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(take, 1)
            tg.start_soon(take, 2)
            await wait_all_tasks_blocked()
            assert taken == []
            slots.resize(2)  # one more may go now
            await wait_all_tasks_blocked()
            assert len(taken) == 1
            slots.resize(1)  # fewer than held: none until two are released
            slots.release()
            await wait_all_tasks_blocked()
            assert len(taken) == 1
            slots.release()
    assert sorted(taken) == [1, 2]
    assert repr(slots) == "Slots(total=1, held=1)"
    slots.release()
    with pytest.raises(RuntimeError):
        slots.release()
    with pytest.raises(ValueError, match="at least 1"):
        Slots(0)
